//! Authorization rules (spec: room versions' "Authorization rules"), run through
//! ruma's implementation against the state before the event.

use std::collections::HashMap;

use ruma::{
    EventId,
    room_version_rules::RoomVersionRules,
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
};

use super::pdu::Pdu;

/// State keyed by `(event_type, state_key)`.
pub type StateMap = HashMap<(String, String), Pdu>;

/// Checks `pdu` against the room version's rules: first against its own
/// `auth_events` (looked up in `state_before`), then against `state_before`.
/// `Err` carries the failed rule, for the client's error message.
pub fn authorize(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state_before: &StateMap,
) -> Result<(), String> {
    let by_id: HashMap<&EventId, &Pdu> = state_before.values().map(|p| (&*p.event_id, p)).collect();
    check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
        by_id.get(id).copied()
    })?;
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k| {
        state_before.get(&(t.to_string(), k.to_owned()))
    })
}

/// Like [`authorize`], with the event's auth events looked up in `auth_events`
/// (received events reference their own, which need not be in `state`).
pub fn authorize_with(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth_events: &HashMap<ruma::OwnedEventId, Pdu>,
    state: &StateMap,
) -> Result<(), String> {
    check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
        auth_events
            .get(id)
            .or_else(|| state.values().find(|p| &*p.event_id == id))
    })?;
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k| {
        state.get(&(t.to_string(), k.to_owned()))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    //! Auth-rule cases per room version, on rooms built in memory with real signed
    //! PDUs (no database).

    use ruma::{
        MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, UserId,
        signatures::Ed25519KeyPair,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::pdu::{NewEvent, Position, build};

    /// A room held in memory: its state, extremity and every event, a signing key,
    /// and a clock for deterministic timestamps. Cloning forks it.
    #[derive(Clone)]
    pub struct MemRoom {
        pub rules: RoomVersionRules,
        pub room_id: Option<ruma::OwnedRoomId>,
        pub state: StateMap,
        pub prev: Vec<OwnedEventId>,
        pub depth: i64,
        pub all: HashMap<OwnedEventId, Pdu>,
        /// Reference hashes of every event (event format v1 references them).
        pub hashes: HashMap<OwnedEventId, String>,
        pub clock: u64,
        key: std::sync::Arc<Ed25519KeyPair>,
    }

    pub fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap()
    }

    impl MemRoom {
        /// The room's state as event IDs (a fork's state map for resolution).
        pub fn state_ids(&self) -> HashMap<(String, String), OwnedEventId> {
            self.state
                .iter()
                .map(|(k, p)| (k.clone(), p.event_id.clone()))
                .collect()
        }

        /// Creates a room of `version` whose creator is `@alice:x`.
        pub fn new(version: &str) -> Self {
            let version = RoomVersionId::try_from(version).unwrap();
            let rules = version.rules().unwrap();
            let room_id = (!rules.authorization.room_create_event_id_as_room_id)
                .then(|| RoomId::parse("!room:x").unwrap());
            let mut room = Self {
                rules,
                room_id,
                state: StateMap::new(),
                prev: vec![],
                depth: 0,
                all: HashMap::new(),
                hashes: HashMap::new(),
                clock: 1_700_000_000_000,
                key: std::sync::Arc::new(key()),
            };
            let mut content = json!({ "room_version": version.as_str() });
            if !room.rules.authorization.use_room_create_sender {
                content["creator"] = "@alice:x".into();
            }
            room.send("@alice:x", "m.room.create", Some(""), content)
                .unwrap();
            room.send(
                "@alice:x",
                "m.room.member",
                Some("@alice:x"),
                json!({ "membership": "join" }),
            )
            .unwrap();
            let mut users = json!({});
            if !room.rules.authorization.explicitly_privilege_room_creators {
                users["@alice:x"] = 100.into();
            }
            room.send(
                "@alice:x",
                "m.room.power_levels",
                Some(""),
                json!({ "users": users, "state_default": 50, "invite": 50, "ban": 50, "kick": 50 }),
            )
            .unwrap();
            room.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "invite" }),
            )
            .unwrap();
            room
        }

        /// Builds, authorises and (if allowed) applies an event.
        pub fn send(
            &mut self,
            sender: &str,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
        ) -> Result<Pdu, String> {
            let sender = UserId::parse(sender).unwrap();
            let content_raw = serde_json::value::to_raw_value(&content).unwrap();
            let types = ruma::state_res::auth_types_for_event(
                &kind.into(),
                &sender,
                state_key,
                &content_raw,
                &self.rules.authorization,
            )?;
            let mut auth: Vec<OwnedEventId> = types
                .iter()
                .filter_map(|(t, k)| self.state.get(&(t.to_string(), k.clone())))
                .map(|p| p.event_id.clone())
                .collect();
            auth.sort();
            let event = NewEvent {
                origin_server_ts: None,
                kind: kind.into(),
                content,
                state_key: state_key.map(str::to_owned),
                redacts: None,
            };
            let built = build(
                &self.rules,
                &event,
                &sender,
                &Position {
                    room_id: self.room_id.as_deref(),
                    prev_events: &self.prev,
                    auth_events: &auth,
                    reference_hashes: &self.hashes,
                    depth: self.depth + 1,
                },
                {
                    self.clock += 1;
                    MilliSecondsSinceUnixEpoch(self.clock.try_into().unwrap())
                },
                "x",
                &self.key,
            )
            .map_err(|e| e.to_string())?;
            authorize(&self.rules, &built.pdu, &self.state)?;
            if self.room_id.is_none() {
                self.room_id = Some(built.room_id.clone());
            }
            self.all.insert(built.event_id.clone(), built.pdu.clone());
            let hash = ruma::signatures::reference_hash(&built.json, &self.rules)
                .map_err(|e| e.to_string())?;
            self.hashes.insert(built.event_id.clone(), hash);
            self.prev = vec![built.event_id.clone()];
            self.depth += 1;
            if let Some(key) = state_key {
                self.state
                    .insert((kind.to_owned(), key.to_owned()), built.pdu.clone());
            }
            Ok(built.pdu)
        }

        fn member(&mut self, sender: &str, target: &str, content: Value) -> Result<Pdu, String> {
            self.send(sender, "m.room.member", Some(target), content)
        }
    }

    const ALL: &[&str] = &["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

    #[test]
    fn invite_only_rooms_refuse_uninvited_joins_and_accept_invited_ones() {
        for v in ALL {
            let mut room = MemRoom::new(v);
            let err = room
                .member("@bob:x", "@bob:x", json!({ "membership": "join" }))
                .unwrap_err();
            assert!(err.contains("join"), "v{v}: {err}");
            room.member("@alice:x", "@bob:x", json!({ "membership": "invite" }))
                .unwrap();
            room.member("@bob:x", "@bob:x", json!({ "membership": "join" }))
                .unwrap();
        }
    }

    #[test]
    fn power_levels_gate_state_events_and_moderation() {
        for v in ALL {
            let mut room = MemRoom::new(v);
            room.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "public" }),
            )
            .unwrap();
            room.member("@bob:x", "@bob:x", json!({ "membership": "join" }))
                .unwrap();
            room.member("@carol:x", "@carol:x", json!({ "membership": "join" }))
                .unwrap();
            // state_default is 50; bob has 0.
            assert!(
                room.send("@bob:x", "m.room.name", Some(""), json!({ "name": "b" }))
                    .is_err(),
                "v{v}"
            );
            room.send("@alice:x", "m.room.name", Some(""), json!({ "name": "a" }))
                .unwrap();
            // Messages are allowed at events_default 0.
            room.send("@bob:x", "m.room.message", None, json!({ "body": "hi" }))
                .unwrap();
            // Bob cannot kick or ban; Alice can.
            assert!(
                room.member("@bob:x", "@carol:x", json!({ "membership": "leave" }))
                    .is_err(),
                "v{v}"
            );
            assert!(
                room.member("@bob:x", "@carol:x", json!({ "membership": "ban" }))
                    .is_err(),
                "v{v}"
            );
            room.member("@alice:x", "@carol:x", json!({ "membership": "ban" }))
                .unwrap();
            // A banned user cannot rejoin, even in a public room.
            assert!(
                room.member("@carol:x", "@carol:x", json!({ "membership": "join" }))
                    .is_err(),
                "v{v}"
            );
            // Nobody can raise themselves above their own level.
            let err = room
                .send(
                    "@bob:x",
                    "m.room.power_levels",
                    Some(""),
                    json!({ "users": { "@bob:x": 100 } }),
                )
                .unwrap_err();
            assert!(!err.is_empty(), "v{v}");
        }
    }

    #[test]
    fn v12_creators_outrank_everyone_and_cannot_be_listed_in_power_levels() {
        let mut room = MemRoom::new("12");
        let err = room
            .send(
                "@alice:x",
                "m.room.power_levels",
                Some(""),
                json!({ "users": { "@alice:x": 100 } }),
            )
            .unwrap_err();
        assert!(err.contains("creator"), "{err}");
        // Before v12 the creator must be listed to have power.
        let mut old = MemRoom::new("11");
        old.send(
            "@alice:x",
            "m.room.power_levels",
            Some(""),
            json!({ "users": { "@alice:x": 100 } }),
        )
        .unwrap();
    }

    #[test]
    fn knocking_exists_from_v7() {
        let mut v6 = MemRoom::new("6");
        v6.send(
            "@alice:x",
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "knock" }),
        )
        .unwrap();
        assert!(
            v6.member("@bob:x", "@bob:x", json!({ "membership": "knock" }))
                .is_err()
        );
        for v in &["7", "8", "9", "10", "11", "12"] {
            let mut room = MemRoom::new(v);
            room.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "knock" }),
            )
            .unwrap();
            room.member("@bob:x", "@bob:x", json!({ "membership": "knock" }))
                .unwrap();
            // A knock is not a join.
            assert!(
                room.member("@bob:x", "@bob:x", json!({ "membership": "join" }))
                    .is_err(),
                "v{v}"
            );
        }
    }

    #[test]
    fn restricted_joins_need_an_authorising_member_from_v8() {
        for v in ["8", "9", "10", "11", "12"] {
            let mut room = MemRoom::new(v);
            room.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": "!other:x" }] }),
            )
            .unwrap();
            assert!(
                room.member("@bob:x", "@bob:x", json!({ "membership": "join" }))
                    .is_err(),
                "v{v}"
            );
            // Authorised by a member who may invite (Alice).
            room.member(
                "@bob:x",
                "@bob:x",
                json!({ "membership": "join", "join_authorised_via_users_server": "@alice:x" }),
            )
            .unwrap();
            // Not by a member without invite power.
            assert!(
                room.member(
                    "@carol:x",
                    "@carol:x",
                    json!({ "membership": "join", "join_authorised_via_users_server": "@bob:x" })
                )
                .is_err(),
                "v{v}"
            );
        }
        // v7 has no restricted rule: such a join is refused.
        let mut v7 = MemRoom::new("7");
        v7.send(
            "@alice:x",
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "restricted", "allow": [] }),
        )
        .unwrap();
        assert!(
            v7.member(
                "@bob:x",
                "@bob:x",
                json!({ "membership": "join", "join_authorised_via_users_server": "@alice:x" })
            )
            .is_err()
        );
    }

    #[test]
    fn third_party_invites_without_a_token_event_are_rejected() {
        for v in ALL {
            let mut room = MemRoom::new(v);
            let content = json!({
                "membership": "invite",
                "third_party_invite": { "display_name": "b", "signed": { "mxid": "@bob:x", "token": "abc", "signatures": {} } }
            });
            assert!(room.member("@alice:x", "@bob:x", content).is_err(), "v{v}");
        }
    }

    #[test]
    fn only_the_sender_may_set_their_own_membership_to_join() {
        for v in ALL {
            let mut room = MemRoom::new(v);
            room.send(
                "@alice:x",
                "m.room.join_rules",
                Some(""),
                json!({ "join_rule": "public" }),
            )
            .unwrap();
            assert!(
                room.member("@alice:x", "@bob:x", json!({ "membership": "join" }))
                    .is_err(),
                "v{v}"
            );
        }
    }
}
