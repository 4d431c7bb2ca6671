//! State resolution v2 / v2.1 (spec: room versions' "State resolution") over
//! events held in memory, through ruma's implementation; v1 (room version 1)
//! in [`super::state_res_v1`]. The caller loads the events the forks reference
//! (and their auth chains) first; this module does no I/O.

use std::collections::{HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::pdu::Pdu;

pub type Forks = Vec<HashMap<(String, String), OwnedEventId>>;

/// Resolves the given forks of a room's state. `events` must hold every event the
/// forks reference and their full auth chains.
pub fn resolve(
    rules: &RoomVersionRules,
    forks: &Forks,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<HashMap<(String, String), OwnedEventId>, String> {
    let v2_rules = match &rules.state_res {
        StateResolutionVersion::V2(v2_rules) => v2_rules,
        StateResolutionVersion::V1 => return super::state_res_v1::resolve(rules, forks, events),
        _ => return Err("unknown state resolution version".into()),
    };
    let maps: Vec<StateMap<OwnedEventId>> = forks
        .iter()
        .map(|fork| {
            fork.iter()
                .map(|((t, k), id)| ((StateEventType::from(t.as_str()), k.clone()), id.clone()))
                .collect()
        })
        .collect();
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = forks
        .iter()
        .map(|fork| auth_chain(fork.values(), events).into_iter().collect())
        .collect();
    let resolved = state_res::resolve(
        &rules.authorization,
        v2_rules,
        &maps,
        auth_chains,
        |id: &EventId| events.get(id).cloned(),
        |conflicted: &StateMap<Vec<OwnedEventId>>| {
            let ids: Vec<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            Some(conflicted_subgraph(&ids, events).into_iter().collect())
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id))
        .collect())
}

/// Every event reachable from `start` through `auth_events` (excluding `start`
/// itself unless reachable).
pub fn auth_chain<'a>(
    start: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = start
        .into_iter()
        .filter_map(|id| events.get(id))
        .flat_map(|e| e.auth_events.iter().cloned())
        .collect();
    while let Some(id) = todo.pop() {
        if seen.insert(id.clone())
            && let Some(event) = events.get(&id)
        {
            todo.extend(event.auth_events.iter().cloned());
        }
    }
    seen
}

/// v2.1: the events that are both auth-ancestors of a conflicted event and
/// auth-descendants of a conflicted event (conflicted events included).
pub fn conflicted_subgraph(
    conflicted: &[OwnedEventId],
    events: &HashMap<OwnedEventId, Pdu>,
) -> HashSet<OwnedEventId> {
    let set: HashSet<&OwnedEventId> = conflicted.iter().collect();
    let mut candidates: HashSet<OwnedEventId> = auth_chain(conflicted, events);
    candidates.extend(conflicted.iter().cloned());
    candidates
        .into_iter()
        .filter(|x| {
            set.contains(x)
                || auth_chain(std::iter::once(x), events)
                    .iter()
                    .any(|a| set.contains(a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::auth::tests::MemRoom;

    fn content(room_events: &HashMap<OwnedEventId, Pdu>, id: &OwnedEventId) -> serde_json::Value {
        serde_json::from_str(room_events[id].content.get()).unwrap()
    }

    /// Fork 1 raises Bob to moderator and Bob renames the room; fork 2 bans Bob.
    /// Power events resolve first (both by Alice, both pass), then Bob's rename is
    /// checked against the result, in which Bob is banned: it is dropped.
    #[test]
    fn a_ban_on_one_fork_defeats_a_rename_by_the_banned_user_on_the_other() {
        for v in ["6", "10", "11", "12"] {
            let mut base = MemRoom::new(v);
            base.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "public" }),
            )
            .unwrap();
            base.send(
                "@bob:x",
                "m.room.member",
                Some("@bob:x"),
                json!({ "membership": "join" }),
            )
            .unwrap();

            let mut fork1 = base.clone();
            let mut users = json!({ "@bob:x": 50 });
            if v != "12" {
                users["@alice:x"] = 100.into();
            }
            let power = fork1
                .send(
                    "@alice:x",
                    "m.room.power_levels",
                    Some(""),
                    json!({ "users": users, "state_default": 50 }),
                )
                .unwrap();
            fork1
                .send(
                    "@bob:x",
                    "m.room.name",
                    Some(""),
                    json!({ "name": "bob's room" }),
                )
                .unwrap();

            let mut fork2 = base.clone();
            let ban = fork2
                .send(
                    "@alice:x",
                    "m.room.member",
                    Some("@bob:x"),
                    json!({ "membership": "ban" }),
                )
                .unwrap();

            let mut events = fork1.all.clone();
            events.extend(fork2.all.clone());
            let resolved = resolve(
                &base.rules,
                &vec![fork1.state_ids(), fork2.state_ids()],
                &events,
            )
            .unwrap();

            assert_eq!(
                resolved[&("m.room.member".into(), "@bob:x".into())],
                ban.event_id,
                "v{v}"
            );
            assert_eq!(
                resolved[&("m.room.power_levels".into(), String::new())],
                power.event_id,
                "v{v}"
            );
            assert!(
                !resolved.contains_key(&("m.room.name".into(), String::new())),
                "v{v}: {resolved:?}"
            );
        }
    }

    /// Two topic changes by equally powerful users on two forks: both pass auth;
    /// with the same mainline position the later timestamp wins.
    #[test]
    fn concurrent_topics_resolve_by_mainline_then_timestamp() {
        for v in ["10", "12"] {
            let mut base = MemRoom::new(v);
            let mut fork1 = base.clone();
            let mut fork2 = base.clone();
            let early = fork1
                .send(
                    "@alice:x",
                    "m.room.topic",
                    Some(""),
                    json!({ "topic": "early" }),
                )
                .unwrap();
            fork2.clock += 1000;
            let late = fork2
                .send(
                    "@alice:x",
                    "m.room.topic",
                    Some(""),
                    json!({ "topic": "late" }),
                )
                .unwrap();
            assert!(late.origin_server_ts > early.origin_server_ts);
            let mut events = fork1.all.clone();
            events.extend(fork2.all.clone());
            let forks = vec![fork1.state_ids(), fork2.state_ids()];
            let resolved = resolve(&base.rules, &forks, &events).unwrap();
            let topic = &resolved[&("m.room.topic".into(), String::new())];
            assert_eq!(content(&events, topic)["topic"], "late", "v{v}");
            // The order of the forks does not matter.
            let reversed = vec![forks[1].clone(), forks[0].clone()];
            assert_eq!(resolve(&base.rules, &reversed, &events).unwrap(), resolved);
            base.clock = 0;
        }
    }

    /// A join on one fork and a join-rule change to invite-only on the other: the
    /// join-rule change is a power event and applies first, so the join (which
    /// needed a public room) is rejected.
    #[test]
    fn a_join_racing_a_switch_to_invite_only_loses() {
        let mut base = MemRoom::new("12");
        base.send(
            "@alice:x",
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "public" }),
        )
        .unwrap();
        let mut fork1 = base.clone();
        fork1
            .send(
                "@carol:x",
                "m.room.member",
                Some("@carol:x"),
                json!({ "membership": "join" }),
            )
            .unwrap();
        let mut fork2 = base.clone();
        let rule = fork2
            .send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "invite" }),
            )
            .unwrap();
        let mut events = fork1.all.clone();
        events.extend(fork2.all.clone());
        let resolved = resolve(
            &base.rules,
            &vec![fork1.state_ids(), fork2.state_ids()],
            &events,
        )
        .unwrap();
        assert_eq!(
            resolved[&("m.room.join_rules".into(), String::new())],
            rule.event_id
        );
        assert!(
            !resolved.contains_key(&("m.room.member".into(), "@carol:x".into())),
            "{resolved:?}"
        );
    }

    /// A member changes their display name on a fork whose other side only
    /// went on with messages (same state): the rename is the later state.
    #[test]
    fn a_rename_on_one_fork_wins_over_the_unchanged_other() {
        for v in ["10", "12"] {
            let mut base = MemRoom::new(v);
            base.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "public" }),
            )
            .unwrap();
            base.send(
                "@bob:x",
                "m.room.member",
                Some("@bob:x"),
                json!({ "membership": "join" }),
            )
            .unwrap();
            let mut fork2 = base.clone();
            fork2.clock += 1000;
            let rename = fork2
                .send(
                    "@bob:x",
                    "m.room.member",
                    Some("@bob:x"),
                    json!({ "membership": "join", "displayname": "Bob" }),
                )
                .unwrap();
            let events = fork2.all.clone();
            let resolved = resolve(
                &base.rules,
                &vec![base.state_ids(), fork2.state_ids()],
                &events,
            )
            .unwrap();
            assert_eq!(
                resolved[&("m.room.member".into(), "@bob:x".into())],
                rename.event_id,
                "v{v}"
            );
        }
    }
}
