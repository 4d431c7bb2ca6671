//! The resident server's half of faster joins (spec: `PUT /v2/send_join`'s
//! `omit_members`, MSC3706): a joining server that can take partial state
//! gets the state before its join without most membership events, an auth
//! chain cut to what that smaller state and the join need, and the servers in
//! the room. It fetches the rest later with `/state_ids` and `/state`.
//!
//! What stays in `state`, as Synapse sends it:
//! - every event that is not an `m.room.member`;
//! - the joining user's own membership before the join (an auth event of the
//!   join: an invite, a knock, an earlier leave);
//! - when the room has neither `m.room.name` nor `m.room.canonical_alias`, the
//!   memberships of the room summary's heroes (the joining server names the
//!   room by them, as `/sync`'s `m.heroes`).
//!
//! `auth_chain` is the auth chain of the join and of that state, less the
//! events already in `state` (the spec lets them be left out).

use std::collections::HashSet;

use ruma::{EventId, RoomId, ServerName, UserId};

use super::{state_before, visibility::ServerView};
use crate::{
    domain::pdu::Pdu,
    error::Result,
    service::AppState,
    storage::{events, rooms, state::Entry},
};

/// The reduced `send_join` answer, as event IDs.
pub struct PartialJoin {
    pub state: Vec<String>,
    pub auth_chain: Vec<String>,
    /// The servers with joined members before the join.
    pub servers_in_room: Vec<String>,
}

/// The reduced answer to `joiner`'s join `pdu` (stored, accepted).
pub async fn partial_state_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    join_id: &EventId,
    joiner: &UserId,
    pdu: &Pdu,
) -> Result<PartialJoin> {
    let before = state_before::keyed_state_before(app, rules, room_id, pdu).await?;
    let named = before.iter().any(|((kind, key), _)| {
        key.is_empty() && (kind == "m.room.name" || kind == "m.room.canonical_alias")
    });
    // The heroes as this server's own `/sync` gives them (current state, the
    // joining user left out): Synapse takes them from the current state too;
    // a race with a membership change only costs the joiner an event it gets
    // with the full state anyway.
    let heroes = if named {
        Vec::new()
    } else {
        rooms::summary(&app.db, room_id.as_str(), joiner.as_str())
            .await?
            .2
    };
    let state = kept_state(&before, joiner.as_str(), &heroes);
    let members: Vec<String> = before
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect();
    let mut servers_in_room = rooms::servers_joined_by(&app.db, &members).await?;
    servers_in_room.sort_unstable();
    let mut roots = state.clone();
    roots.push(join_id.to_string());
    let in_state: HashSet<&String> = state.iter().collect();
    let auth_chain = state_before::auth_chain_ids(app, room_id, &roots)
        .await?
        .into_iter()
        .filter(|id| !in_state.contains(id))
        .collect();
    Ok(PartialJoin {
        state,
        auth_chain,
        servers_in_room,
    })
}

/// Whether `origin` (its user now joined) may read the state at each of the
/// join's prev events with `/state_ids` and `/state`, as it must to complete
/// a partial state: the events are in the room's graph (not outliers, not
/// rejected) and visible to it.
pub async fn prev_events_readable(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<bool> {
    let mut prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    prev.sort_unstable();
    prev.dedup();
    let stored = events::get_many(&app.db, &prev).await?;
    if stored.len() != prev.len()
        || stored.iter().any(|e| {
            e.room_id != room_id.as_str()
                || e.rejected
                || (e.stream_ordering == 0 && e.state_group.is_none())
        })
    {
        return Ok(false);
    }
    let mut view = ServerView::new(app, origin, room_id).await?;
    Ok(view.visible(&stored).await?.into_iter().all(|v| v))
}

/// The IDs of the state entries that stay: all but memberships, save the
/// joiner's and the heroes'.
fn kept_state(before: &[Entry], joiner: &str, heroes: &[String]) -> Vec<String> {
    before
        .iter()
        .filter(|((kind, key), _)| {
            kind != "m.room.member" || key == joiner || heroes.iter().any(|h| h == key)
        })
        .map(|(_, id)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, key: &str, id: &str) -> Entry {
        ((kind.into(), key.into()), id.into())
    }

    #[test]
    fn keeps_non_members_the_joiner_and_the_heroes() {
        let before = vec![
            entry("m.room.create", "", "$create"),
            entry("m.room.power_levels", "", "$pl"),
            entry("m.room.member", "@alice:a", "$alice"),
            entry("m.room.member", "@bob:a", "$bob"),
            entry("m.room.member", "@carol:b", "$carol"),
            entry("m.room.member", "@joiner:j", "$invite"),
            // A state key that only looks like a member's is not one.
            entry("m.room.topic", "@bob:a", "$odd"),
        ];
        let kept = kept_state(&before, "@joiner:j", &["@carol:b".into()]);
        assert_eq!(kept, ["$create", "$pl", "$carol", "$invite", "$odd"]);
        let kept = kept_state(&before, "@nobody:j", &[]);
        assert_eq!(kept, ["$create", "$pl", "$odd"]);
    }
}
