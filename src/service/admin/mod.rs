//! The administration use cases behind the Synapse-compatible admin API
//! (`/_synapse/admin/...`), one module per concern: [`users`] (accounts,
//! passwords, login as a user, whois, external IDs), [`rooms`] (listing,
//! details, members, state, blocking), [`deletion`] (deleting and purging
//! rooms, now or in the background), [`registration_tokens`], [`reports`]
//! (event, room and user reports) and [`media`] (a user's uploads). Every
//! change is logged with the acting administrator.
//!
//! The functions answer typed structs, serialized by the handlers in
//! `api::admin` and `api::synapse_admin`. Synapse's admin API has no ruma
//! types, so these structs are the wire shapes Synapse answers (and tools such
//! as synapse-admin read): the same keys, a `null` where Synapse writes one,
//! and a key left out where Synapse leaves it out.

pub mod deletion;
pub mod media;
pub mod registration_tokens;
pub mod reports;
pub mod rooms;
pub mod users;

use ruma::UserId;

pub use deletion::{
    Deletions, delete_room, delete_room_async, deletion_status, room_deletion_statuses,
};
pub use media::user_media;
pub use registration_tokens::{create_token, delete_token, get_token, list_tokens, update_token};
pub use reports::{
    delete_event_report, delete_user_report, event_report, event_reports, room_report,
    room_reports, user_report, user_reports,
};
pub use rooms::{block_status, list_rooms, room, room_members, room_state, set_block};
pub use users::{
    deactivate, list_users, login_as, put_user, reset_password, user, user_by_external_id, whois,
    whois_for,
};

use crate::{
    error::{Error, Result},
    service::AppState,
};

/// A local user's ID from a path parameter; `M_INVALID_PARAM` for a bad ID or
/// another server's user.
fn local_user(app: &AppState, user_id: &str) -> Result<ruma::OwnedUserId> {
    let user = UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if user.server_name() != app.server_name {
        return Err(Error::invalid_param("Can only administer local users"));
    }
    Ok(user)
}

/// The next page's offset, when there is one (`from + limit < total`).
fn next_offset(from: i64, limit: i64, total: i64) -> Option<i64> {
    (from + limit < total).then_some(from + limit)
}

/// The wire shapes, key by key, against what Synapse answers (and what these
/// endpoints answered when they were built as `serde_json::Value`).
#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{deletion::*, media::*, registration_tokens::*, reports::*, rooms::*, users::*};

    fn wire(value: impl serde::Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    fn alice() -> UserInfo {
        UserInfo {
            name: "@alice:hs".into(),
            admin: false,
            is_guest: false,
            deactivated: false,
            creation_ts: 5,
            displayname: Some("Alice".into()),
            avatar_url: None,
            user_type: None,
            shadow_banned: false,
            locked: false,
            erased: false,
        }
    }

    #[test]
    fn users() {
        let listed = json!({
            "name": "@alice:hs", "admin": false, "is_guest": false, "deactivated": false,
            "creation_ts": 5, "displayname": "Alice", "avatar_url": null, "user_type": null,
            "shadow_banned": false, "locked": false, "erased": false,
        });
        let page = UserList {
            users: vec![alice()],
            total: 3,
            next_token: Some("1".into()),
        };
        assert_eq!(
            wire(page),
            json!({ "users": [listed], "total": 3, "next_token": "1" })
        );
        let last = UserList {
            users: vec![],
            total: 0,
            next_token: None,
        };
        assert_eq!(wire(last), json!({ "users": [], "total": 0 }));
        let details = UserDetails {
            info: alice(),
            threepids: vec![Threepid {
                medium: "email".into(),
                address: "a@example.org".into(),
                added_at: 1,
                validated_at: 2,
            }],
            external_ids: vec![ExternalId {
                auth_provider: "oidc".into(),
                external_id: "x".into(),
            }],
        };
        let mut expected = listed.clone();
        expected["threepids"] = json!([{
            "medium": "email", "address": "a@example.org", "added_at": 1, "validated_at": 2,
        }]);
        expected["external_ids"] = json!([{ "auth_provider": "oidc", "external_id": "x" }]);
        assert_eq!(wire(details), expected);
        assert_eq!(
            wire(ExternalUser {
                user_id: "@alice:hs".into()
            }),
            json!({ "user_id": "@alice:hs" })
        );
        assert_eq!(
            wire(AdminLogin {
                access_token: "t".into()
            }),
            json!({ "access_token": "t" })
        );
    }

    #[test]
    fn whois_leaves_out_what_is_unknown() {
        let device = |connection| WhoisDevice {
            sessions: vec![WhoisSession {
                connections: vec![connection],
            }],
        };
        let whois = Whois {
            user_id: "@alice:hs".try_into().unwrap(),
            devices: [
                (
                    "A".to_owned(),
                    device(Connection {
                        ip: Some("127.0.0.1".into()),
                        last_seen: Some(7),
                        user_agent: Some("ua".into()),
                    }),
                ),
                (
                    "B".to_owned(),
                    device(Connection {
                        ip: None,
                        last_seen: None,
                        user_agent: None,
                    }),
                ),
            ]
            .into(),
        };
        assert_eq!(
            wire(whois),
            json!({
                "user_id": "@alice:hs",
                "devices": {
                    "A": { "sessions": [{ "connections": [
                        { "ip": "127.0.0.1", "last_seen": 7, "user_agent": "ua" }
                    ] }] },
                    "B": { "sessions": [{ "connections": [{}] }] },
                },
            })
        );
    }

    #[test]
    fn rooms() {
        let summary = RoomSummary {
            num_joined_members: 2,
            world_readable: true,
            guest_can_join: false,
            join_rule: "public".into(),
            name: Some("Tea".into()),
            topic: None,
            canonical_alias: None,
            avatar_url: None,
            room_type: None,
        };
        let details = RoomDetails {
            room_id: "!r:hs".into(),
            summary: Some(summary),
            version: "11".into(),
            joined_members: 2,
            joined_local_members: 1,
            public: true,
            state_events: 6,
            join_rules: Some("public".into()),
        };
        let mut expected = json!({
            "room_id": "!r:hs", "num_joined_members": 2, "world_readable": true,
            "guest_can_join": false, "join_rule": "public", "name": "Tea",
        });
        for (key, value) in [
            ("version", json!("11")),
            ("joined_members", json!(2)),
            ("joined_local_members", json!(1)),
            ("public", json!(true)),
            ("state_events", json!(6)),
            ("join_rules", json!("public")),
        ] {
            expected[key] = value;
        }
        assert_eq!(wire(&details), expected);
        // A room without state: its ID and counts only.
        let bare = RoomDetails {
            room_id: "!r:hs".into(),
            summary: None,
            version: "11".into(),
            joined_members: 0,
            joined_local_members: 0,
            public: false,
            state_events: 0,
            join_rules: None,
        };
        let bare_wire = json!({
            "room_id": "!r:hs", "version": "11", "joined_members": 0,
            "joined_local_members": 0, "public": false, "state_events": 0,
        });
        assert_eq!(wire(&bare), bare_wire);
        let page = RoomList {
            rooms: vec![bare],
            offset: 0,
            total_rooms: 2,
            next_batch: Some(1),
        };
        assert_eq!(
            wire(page),
            json!({ "rooms": [bare_wire], "offset": 0, "total_rooms": 2, "next_batch": 1 })
        );
        assert_eq!(
            wire(RoomMembers {
                total: 1,
                members: vec!["@a:hs".into()]
            }),
            json!({ "total": 1, "members": ["@a:hs"] })
        );
        assert_eq!(
            wire(BlockStatus {
                block: false,
                user_id: None
            }),
            json!({ "block": false })
        );
        assert_eq!(
            wire(BlockStatus {
                block: true,
                user_id: Some("@a:hs".into())
            }),
            json!({ "block": true, "user_id": "@a:hs" })
        );
    }

    #[test]
    fn deletions() {
        let shutdown = ShutdownRoom {
            kicked_users: vec!["@a:hs".into()],
            failed_to_kick_users: vec![],
            local_aliases: vec!["#a:hs".into()],
            new_room_id: None,
        };
        let shutdown_wire = json!({
            "kicked_users": ["@a:hs"], "failed_to_kick_users": [],
            "local_aliases": ["#a:hs"], "new_room_id": null,
        });
        assert_eq!(wire(&shutdown), shutdown_wire);
        let done = DeletionProgress {
            delete_id: "d".into(),
            status: "complete",
            shutdown_room: Some(shutdown),
            error: None,
        };
        assert_eq!(
            wire(RoomDeletions {
                results: vec![done]
            }),
            json!({ "results": [
                { "delete_id": "d", "status": "complete", "shutdown_room": shutdown_wire }
            ] })
        );
        let failed = DeletionProgress {
            delete_id: "d".into(),
            status: "failed",
            shutdown_room: None,
            error: Some("no".into()),
        };
        assert_eq!(
            wire(failed),
            json!({ "delete_id": "d", "status": "failed", "error": "no" })
        );
        assert_eq!(
            wire(DeletionStarted {
                delete_id: "d".into()
            }),
            json!({ "delete_id": "d" })
        );
    }

    #[test]
    fn registration_tokens() {
        let token = RegistrationToken {
            token: "abc".into(),
            uses_allowed: None,
            pending: 0,
            completed: 1,
            expiry_time: Some(9),
        };
        assert_eq!(
            wire(RegistrationTokens {
                registration_tokens: vec![token]
            }),
            json!({ "registration_tokens": [{
                "token": "abc", "uses_allowed": null, "pending": 0, "completed": 1,
                "expiry_time": 9,
            }] })
        );
    }

    #[test]
    fn reports() {
        let event = EventReport {
            id: 1,
            received_ts: 2,
            room_id: "!r:hs".into(),
            event_id: "$e".into(),
            user_id: "@a:hs".into(),
            reason: None,
            score: Some(-100),
        };
        let event_wire = json!({
            "id": 1, "received_ts": 2, "room_id": "!r:hs", "event_id": "$e",
            "user_id": "@a:hs", "reason": null, "score": -100,
        });
        assert_eq!(
            wire(EventReportDetails {
                report: event,
                event_json: Some(json!({ "type": "m.room.message" })),
            }),
            {
                let mut w = event_wire.clone();
                w["event_json"] = json!({ "type": "m.room.message" });
                w
            }
        );
        assert_eq!(
            wire(EventReports {
                event_reports: vec![],
                total: 4,
                next_token: Some(2)
            }),
            json!({ "event_reports": [], "total": 4, "next_token": 2 })
        );
        let room = RoomReport {
            id: 1,
            received_ts: 2,
            room_id: "!r:hs".into(),
            user_id: "@a:hs".into(),
            reason: "spam".into(),
            canonical_alias: None,
            name: Some("Tea".into()),
            topic: None,
        };
        assert_eq!(
            wire(RoomReports {
                room_reports: vec![room],
                total: 1,
                next_batch: None
            }),
            json!({ "room_reports": [{
                "id": 1, "received_ts": 2, "room_id": "!r:hs", "user_id": "@a:hs",
                "reason": "spam", "canonical_alias": null, "name": "Tea", "topic": null,
            }], "total": 1 })
        );
        let user = UserReport {
            id: 1,
            received_ts: 2,
            target_user_id: "@b:hs".into(),
            user_id: "@a:hs".into(),
            reason: "rude".into(),
        };
        assert_eq!(
            wire(UserReports {
                user_reports: vec![user],
                total: 1,
                next_token: None
            }),
            json!({ "user_reports": [{
                "id": 1, "received_ts": 2, "target_user_id": "@b:hs", "user_id": "@a:hs",
                "reason": "rude",
            }], "total": 1 })
        );
    }

    #[test]
    fn user_media() {
        let item = UserMedia {
            media_id: "m".into(),
            media_type: Some("image/png".into()),
            media_length: Some(3),
            upload_name: None,
            created_ts: 4,
            quarantined_by: Some("admin"),
            safe_from_quarantine: false,
        };
        assert_eq!(
            wire(UserMediaList {
                media: vec![item],
                total: 2,
                next_token: Some(1)
            }),
            json!({ "media": [{
                "media_id": "m", "media_type": "image/png", "media_length": 3,
                "upload_name": null, "created_ts": 4, "quarantined_by": "admin",
                "safe_from_quarantine": false,
            }], "total": 2, "next_token": 1 })
        );
    }
}
