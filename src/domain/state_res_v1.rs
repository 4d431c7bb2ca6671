//! State resolution v1 (spec: rooms/v1.md "State resolution"), for room
//! version 1 only; ruma implements v2 alone. Pure: the caller hands in every
//! event the forks reference.
//!
//! The algorithm, as the spec gives it:
//! 1. R = the union of the states, without the conflicted keys (a key is
//!    conflicted when the states hold different event IDs for it; a key some
//!    states lack is not, as in Synapse).
//! 2. Power levels, then join rules, then each member's event, in that order:
//!    sort the conflicted events by ascending `depth`, then descending
//!    `sha1(event_id)`; add the first to R; add each next one while it passes
//!    the auth rules in R, and stop at the first that does not.
//! 3. Every other conflict: the event of highest depth and lowest
//!    `sha1(event_id)` that passes auth in R (the spec is silent when none does;
//!    like Synapse, the one of least depth then).

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BTreeSet, HashMap},
};

use ruma::{
    OwnedEventId, room_version_rules::RoomVersionRules, state_res::check_state_dependent_auth_rules,
};
use sha1::{Digest, Sha1};

use super::{auth::StateMap, pdu::Pdu, state_res::Forks};

type Key = (String, String);

/// Resolves the forks of a room version 1 room's state.
pub fn resolve(
    rules: &RoomVersionRules,
    forks: &Forks,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<HashMap<Key, OwnedEventId>, String> {
    let mut candidates: BTreeMap<Key, BTreeSet<OwnedEventId>> = BTreeMap::new();
    for fork in forks {
        for (key, id) in fork {
            candidates
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
        }
    }
    let event = |id: &OwnedEventId| -> Result<&Pdu, String> {
        events
            .get(id)
            .ok_or_else(|| format!("state resolution needs {id}, which is not held"))
    };

    // Step 1: the unconflicted state.
    let mut resolved: HashMap<Key, OwnedEventId> = HashMap::new();
    let mut r = StateMap::new();
    let mut conflicted: BTreeMap<Key, Vec<&Pdu>> = BTreeMap::new();
    for (key, ids) in &candidates {
        if ids.len() == 1 {
            let id = ids.first().expect("one candidate");
            resolved.insert(key.clone(), id.clone());
            if let Some(pdu) = events.get(id) {
                r.insert(key.clone(), pdu.clone());
            }
        } else {
            let pdus = ids.iter().map(event).collect::<Result<Vec<_>, _>>()?;
            conflicted.insert(key.clone(), pdus);
        }
    }

    // Step 2: the events the auth rules read, in the spec's order.
    let auth_pass = |kind: &str| -> Vec<Key> {
        conflicted
            .keys()
            .filter(|(t, _)| t == kind)
            .cloned()
            .collect()
    };
    let mut order = auth_pass("m.room.power_levels");
    order.extend(auth_pass("m.room.join_rules"));
    order.extend(auth_pass("m.room.member"));
    for key in &order {
        let mut list = conflicted.remove(key).expect("key listed from the map");
        list.sort_by(|a, b| ascending_depth_descending_sha1(a, b));
        let mut chosen = list[0];
        r.insert(key.clone(), chosen.clone());
        for next in &list[1..] {
            if !allowed(rules, next, &r) {
                break;
            }
            chosen = next;
            r.insert(key.clone(), chosen.clone());
        }
        resolved.insert(key.clone(), chosen.event_id.clone());
    }

    // Step 3: everything else, against R as the auth events left it.
    for (key, mut list) in conflicted {
        list.sort_by(|a, b| ascending_depth_descending_sha1(b, a));
        let chosen = list
            .iter()
            .find(|e| allowed(rules, e, &r))
            .or(list.last())
            .expect("a conflict has events");
        resolved.insert(key, chosen.event_id.clone());
    }
    Ok(resolved)
}

/// Whether `pdu` passes the auth rules in state `r`.
fn allowed(rules: &RoomVersionRules, pdu: &Pdu, r: &StateMap) -> bool {
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k| {
        r.get(&(t.to_string(), k.to_owned()))
    })
    .is_ok()
}

fn sha1_hex(pdu: &Pdu) -> String {
    hex::encode(Sha1::digest(pdu.event_id.as_str().as_bytes()))
}

/// Ascending `depth`, then descending `sha1(event_id)`.
fn ascending_depth_descending_sha1(a: &Pdu, b: &Pdu) -> Ordering {
    (a.depth, Reverse(sha1_hex(a))).cmp(&(b.depth, Reverse(sha1_hex(b))))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::auth::tests::MemRoom;

    fn key(t: &str, k: &str) -> Key {
        (t.to_owned(), k.to_owned())
    }

    fn both(a: &MemRoom, b: &MemRoom) -> HashMap<OwnedEventId, Pdu> {
        let mut events = a.all.clone();
        events.extend(b.all.clone());
        events
    }

    fn with_bob(version: &str) -> MemRoom {
        let mut base = MemRoom::new(version);
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
        base
    }

    /// Step 3: of two topics, the one of greater depth wins, whatever the
    /// order of the forks and whichever fork's timestamp is later.
    #[test]
    fn the_deeper_topic_wins() {
        // (Alice sends both: Bob may not set state.)
        let base = with_bob("1");
        let mut fork1 = base.clone();
        fork1.clock += 10_000;
        fork1
            .send(
                "@alice:x",
                "m.room.topic",
                Some(""),
                json!({ "topic": "a" }),
            )
            .unwrap();
        let mut fork2 = base.clone();
        fork2
            .send("@bob:x", "m.room.message", None, json!({ "body": "hi" }))
            .unwrap();
        let deeper = fork2
            .send(
                "@alice:x",
                "m.room.topic",
                Some(""),
                json!({ "topic": "b" }),
            )
            .unwrap();
        let events = both(&fork1, &fork2);
        let forks = vec![fork1.state_ids(), fork2.state_ids()];
        let resolved = resolve(&base.rules, &forks, &events).unwrap();
        assert_eq!(resolved[&key("m.room.topic", "")], deeper.event_id);
        let reversed = vec![forks[1].clone(), forks[0].clone()];
        assert_eq!(resolve(&base.rules, &reversed, &events).unwrap(), resolved);
        // Everything unconflicted is kept as it was.
        assert_eq!(
            resolved[&key("m.room.create", "")],
            base.state[&key("m.room.create", "")].event_id
        );
    }

    /// Step 3 at equal depth: the lowest sha1(event_id) that passes auth.
    #[test]
    fn equal_depth_topics_resolve_by_lowest_sha1() {
        let base = with_bob("1");
        let mut fork1 = base.clone();
        let a = fork1
            .send(
                "@alice:x",
                "m.room.topic",
                Some(""),
                json!({ "topic": "a" }),
            )
            .unwrap();
        let mut fork2 = base.clone();
        let b = fork2
            .send(
                "@alice:x",
                "m.room.topic",
                Some(""),
                json!({ "topic": "b" }),
            )
            .unwrap();
        assert_eq!(a.depth, b.depth);
        let expected = if sha1_hex(&a) < sha1_hex(&b) { &a } else { &b };
        let resolved = resolve(
            &base.rules,
            &vec![fork1.state_ids(), fork2.state_ids()],
            &both(&fork1, &fork2),
        )
        .unwrap();
        assert_eq!(resolved[&key("m.room.topic", "")], expected.event_id);
    }

    /// Step 2 on power levels: Alice makes Bob an admin on one fork, and later
    /// (deeper) on the other fork demotes him without having seen that. Sorted
    /// by ascending depth the promotion goes into R first; the demotion is then
    /// checked in R, where Bob's level equals Alice's: it fails, and the pass
    /// stops. The shallower promotion wins (a deepest-wins rule would differ).
    #[test]
    fn power_levels_apply_in_ascending_depth_until_one_fails_auth() {
        let base = with_bob("1");
        let mut fork1 = base.clone();
        let promote = fork1
            .send(
                "@alice:x",
                "m.room.power_levels",
                Some(""),
                json!({ "users": { "@alice:x": 100, "@bob:x": 100 }, "state_default": 50 }),
            )
            .unwrap();
        let mut fork2 = base.clone();
        fork2
            .send("@alice:x", "m.room.message", None, json!({ "body": "x" }))
            .unwrap();
        let demote = fork2
            .send(
                "@alice:x",
                "m.room.power_levels",
                Some(""),
                json!({ "users": { "@alice:x": 100, "@bob:x": 0 }, "state_default": 50 }),
            )
            .unwrap();
        assert!(demote.depth > promote.depth);
        let resolved = resolve(
            &base.rules,
            &vec![fork1.state_ids(), fork2.state_ids()],
            &both(&fork1, &fork2),
        )
        .unwrap();
        assert_eq!(resolved[&key("m.room.power_levels", "")], promote.event_id);
    }

    /// Step 2 on members, after join rules: Alice bans Bob on one fork; Bob
    /// changes his display name later on the other. The ban is shallower so it
    /// goes into R first; Bob's rename is then a banned user's join: it fails,
    /// and the ban stands.
    #[test]
    fn a_ban_beats_a_deeper_rename_by_the_banned_user() {
        let base = with_bob("1");
        let mut fork1 = base.clone();
        let ban = fork1
            .send(
                "@alice:x",
                "m.room.member",
                Some("@bob:x"),
                json!({ "membership": "ban" }),
            )
            .unwrap();
        let mut fork2 = base.clone();
        fork2
            .send("@bob:x", "m.room.message", None, json!({ "body": "x" }))
            .unwrap();
        fork2
            .send(
                "@bob:x",
                "m.room.member",
                Some("@bob:x"),
                json!({ "membership": "join", "displayname": "Bob" }),
            )
            .unwrap();
        let resolved = resolve(
            &base.rules,
            &vec![fork1.state_ids(), fork2.state_ids()],
            &both(&fork1, &fork2),
        )
        .unwrap();
        assert_eq!(resolved[&key("m.room.member", "@bob:x")], ban.event_id);
    }

    /// A key only some forks hold is not a conflict: it is kept.
    #[test]
    fn a_key_on_one_fork_only_is_unconflicted() {
        let base = with_bob("1");
        let mut fork1 = base.clone();
        let name = fork1
            .send("@alice:x", "m.room.name", Some(""), json!({ "name": "n" }))
            .unwrap();
        let resolved = resolve(
            &base.rules,
            &vec![fork1.state_ids(), base.state_ids()],
            &fork1.all,
        )
        .unwrap();
        assert_eq!(resolved[&key("m.room.name", "")], name.event_id);
    }
}
