//! What Element, matrix-js-sdk and matrix-rust-sdk ask of a server besides the
//! core API (issue #17): the unstable flags of `/versions` (each one's feature
//! called), aliases leaving `m.room.canonical_alias` when deleted, room
//! summaries (MSC3266), `/thirdparty/*` without appservices, `/.well-known/matrix/support`
//! mutual rooms (MSC2666) and TURN credentials that a real coturn accepts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const V1: &str = "/_matrix/client/v1";
const V3: &str = "/_matrix/client/v3";

async fn canonical_alias(server: &TestServer, who: &Login, room: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&who.access_token),
        )
        .await
}

async fn put_alias(server: &TestServer, who: &Login, alias: &str, room: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/directory/room/{}", enc(alias)),
            Some(&who.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn delete_alias(server: &TestServer, who: &Login, alias: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::DELETE,
            &format!("{V3}/directory/room/{}", enc(alias)),
            Some(&who.access_token),
            None,
        )
        .await
}

/// Calls the feature behind one advertised unstable flag and checks it works.
async fn probe(server: &TestServer, n: usize, flag: &str) {
    let alice = server.register(&format!("a{n}"), "pw").await;
    let bob = server.register(&format!("b{n}"), "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let root = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "root" }),
        )
        .await;
    let t = Some(alice.access_token.as_str());
    match flag {
        "org.matrix.e2e_cross_signing" => {
            let master = json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:MK": "MK" } });
            let (status, body) = server
                .post(
                    &format!("{V3}/keys/device_signing/upload"),
                    t,
                    json!({ "master_key": master }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (_, q) = server
                .post(
                    &format!("{V3}/keys/query"),
                    Some(&bob.access_token),
                    json!({ "device_keys": { alice.user_id.clone(): [] } }),
                )
                .await;
            assert_eq!(
                q["master_keys"][&alice.user_id]["keys"]["ed25519:MK"], "MK",
                "{q}"
            );
        }
        "org.matrix.msc2432" => {
            let (status, body) = server
                .put(
                    &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
                    t,
                    json!({ "alias": "#nowhere:test.local" }),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["errcode"], "M_BAD_ALIAS");
        }
        "org.matrix.msc2285.stable" => {
            let (status, body) = server
                .post(
                    &format!("{V3}/rooms/{room}/receipt/m.read.private/{root}"),
                    t,
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            // Private: bob's sync shows no receipt of alice's.
            let (_, sync) = server
                .get(&format!("{V3}/sync"), Some(&bob.access_token))
                .await;
            let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
            assert!(
                !ephemeral.to_string().contains(&alice.user_id),
                "{ephemeral}"
            );
        }
        "org.matrix.msc3440.stable" | "org.matrix.msc3771" | "org.matrix.msc3773" => {
            let reply = server
                .send_message(
                    &bob,
                    &room,
                    json!({ "msgtype": "m.text", "body": "in thread",
                            "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
                )
                .await;
            let (status, threads) = server.get(&format!("{V1}/rooms/{room}/threads"), t).await;
            assert_eq!(status, StatusCode::OK, "{threads}");
            assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");
            let filter = enc(
                &json!({ "room": { "timeline": { "unread_thread_notifications": true } } })
                    .to_string(),
            );
            let (_, sync) = server.get(&format!("{V3}/sync?filter={filter}"), t).await;
            assert_eq!(
                sync["rooms"]["join"][&room]["unread_thread_notifications"][&root]["notification_count"],
                1,
                "{sync}"
            );
            let (status, body) = server
                .post(
                    &format!("{V3}/rooms/{room}/receipt/m.read/{reply}"),
                    t,
                    json!({ "thread_id": root }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        "org.matrix.msc3266" => {
            let (status, summary) = server.get(&format!("{V1}/room_summary/{room}"), None).await;
            assert_eq!(status, StatusCode::OK, "{summary}");
            assert_eq!(summary["room_id"], room.as_str());
        }
        "uk.half-shot.msc2666.query_mutual_rooms"
        | "uk.half-shot.msc2666.query_mutual_rooms.stable" => {
            for path in [
                "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms",
                "/_matrix/client/v1/mutual_rooms",
            ] {
                let (status, body) = server
                    .get(&format!("{path}?user_id={}", enc(&bob.user_id)), t)
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["joined"], json!([room]), "{path}: {body}");
            }
        }
        "org.matrix.simplified_msc3575" => {
            let (status, body) = server
                .post(
                    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                    t,
                    json!({ "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 1 } } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body["pos"].is_string(), "{body}");
            assert!(body["rooms"][&room].is_object(), "{body}");
        }
        "org.matrix.msc3391" => {
            let path = format!(
                "{V3}/user/{}/account_data/org.example.probe",
                enc(&alice.user_id)
            );
            let (status, _) = server.put(&path, t, json!({ "on": true })).await;
            assert_eq!(status, StatusCode::OK);
            let (status, body) = server
                .call(
                    reqwest::Method::DELETE,
                    &format!(
                        "/_matrix/client/unstable/org.matrix.msc3391/user/{}/account_data/org.example.probe",
                        enc(&alice.user_id)
                    ),
                    t,
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, body) = server.get(&path, t).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
            );
        }
        "uk.tcpip.msc4133.stable" => {
            let path = format!("{V3}/profile/{}/org.example.pronouns", enc(&alice.user_id));
            let (status, body) = server
                .put(&path, t, json!({ "org.example.pronouns": "she/her" }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, body) = server.get(&path, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body, json!({ "org.example.pronouns": "she/her" }));
        }
        other => panic!("/versions advertises {other}, which no test calls"),
    }
}

#[tokio::test]
async fn versions_advertises_cross_signing_and_only_working_unstable_features() {
    let server = TestServer::start().await;
    let (status, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let features = versions["unstable_features"]
        .as_object()
        .expect("unstable_features");
    // Element 1.11 sets up cross-signing only when this is advertised.
    assert_eq!(features["org.matrix.e2e_cross_signing"], true, "{versions}");
    for (n, (flag, on)) in features.iter().enumerate() {
        assert_eq!(on, &Value::Bool(true), "{flag} is listed but off");
        probe(&server, n, flag).await;
    }
}

#[tokio::test]
async fn deleting_an_alias_removes_it_from_the_canonical_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "main" }),
        )
        .await;
    server.join(&bob, &room).await;
    for alias in ["#alt:test.local", "#other:test.local"] {
        put_alias(&server, &alice, alias, &room).await;
    }
    // Bob (no power over the canonical alias) creates an alias of his own.
    put_alias(&server, &bob, "#bobs:test.local", &room).await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&alice.access_token),
            json!({ "alias": "#main:test.local",
                    "alt_aliases": ["#alt:test.local", "#other:test.local", "#bobs:test.local"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Deleting the canonical alias: it no longer resolves and the event drops it.
    let (status, body) = delete_alias(&server, &alice, "#main:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#main:test.local")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(
        content,
        json!({ "alt_aliases": ["#alt:test.local", "#other:test.local", "#bobs:test.local"] })
    );

    // An alternative alias: removed from alt_aliases, the others kept.
    let (status, body) = delete_alias(&server, &alice, "#alt:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(
        content,
        json!({ "alt_aliases": ["#other:test.local", "#bobs:test.local"] })
    );
    // The update is alice's own state event.
    let (_, event) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/?format=event"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(event["sender"], alice.user_id.as_str(), "{event}");

    // Bob may delete the alias he created, but deleting is no way to change
    // state he has no power over: the event stays as it is (as in Synapse).
    let (status, body) = delete_alias(&server, &bob, "#bobs:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, after) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/?format=event"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(after["event_id"], event["event_id"], "{after}");
    // Nor may he delete alice's alias.
    let (status, body) = delete_alias(&server, &bob, "#other:test.local").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(content["alt_aliases"][0], "#other:test.local");

    // Once he may send the canonical alias, he may delete others' aliases of
    // the room (as Synapse allows; SyTest: "Users with sufficient power-level
    // can delete other's aliases"), but not those of a room he has no power in.
    let elsewhere = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &elsewhere).await;
    put_alias(&server, &alice, "#elsewhere:test.local", &elsewhere).await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.power_levels/"),
            Some(&alice.access_token),
            // (Alice created the room: in room version 12 that is power enough.)
            json!({ "users": { bob.user_id.clone(): 50 }, "state_default": 50 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = delete_alias(&server, &bob, "#elsewhere:test.local").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = delete_alias(&server, &bob, "#other:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn room_summary_for_those_who_may_preview() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let public = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby",
                    "topic": "Hello", "initial_state": [{ "type": "m.room.encryption",
                    "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        )
        .await;

    // Public: to anyone, by ID or alias, with or without a token, on every path.
    for path in [
        format!("{V1}/room_summary/{public}"),
        format!("{V1}/room_summary/{}", enc("#lobby:test.local")),
        format!("/_matrix/client/unstable/im.nheko.summary/rooms/{public}/summary"),
        format!("/_matrix/client/unstable/im.nheko.summary/summary/{public}"),
    ] {
        let (status, summary) = server.get(&path, Some(&bob.access_token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {summary}");
        assert_eq!(
            summary,
            json!({
                "room_id": public, "name": "Lobby", "topic": "Hello",
                "canonical_alias": "#lobby:test.local", "num_joined_members": 1,
                "world_readable": false, "guest_can_join": false, "join_rule": "public",
                "room_version": "12", "encryption": "m.megolm.v1.aes-sha2", "membership": "leave",
            }),
            "{path}"
        );
    }
    let (status, summary) = server
        .get(&format!("{V1}/room_summary/{public}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert!(summary.get("membership").is_none(), "{summary}");
    let (_, summary) = server
        .get(
            &format!("{V1}/room_summary/{public}"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(summary["membership"], "join");
    // A token that is given must be valid.
    let (status, body) = server
        .get(&format!("{V1}/room_summary/{public}"), Some("not-a-token"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");

    // Private: nothing for outsiders, exactly as for a room that does not exist.
    let private = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Secret" }),
        )
        .await;
    for token in [Some(bob.access_token.as_str()), None] {
        let (status, body) = server
            .get(&format!("{V1}/room_summary/{private}"), token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
        assert!(!body.to_string().contains("Secret"), "{body}");
    }
    let (status, body) = server
        .get(
            &format!("{V1}/room_summary/!unknown:test.local"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = server
        .get(
            &format!("{V1}/room_summary/{}", enc("#nope:test.local")),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // Once invited, bob may look.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{private}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, summary) = server
        .get(
            &format!("{V1}/room_summary/{private}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["name"], "Secret");
    assert_eq!(summary["membership"], "invite");
    assert_eq!(summary["join_rule"], "invite");
    // ... and, once he left, no more.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{private}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .get(
            &format!("{V1}/room_summary/{private}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // World-readable history: anyone, even without a token.
    let readable = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "initial_state": [{ "type": "m.room.history_visibility",
                    "state_key": "", "content": { "history_visibility": "world_readable" } }] }),
        )
        .await;
    let (status, summary) = server
        .get(&format!("{V1}/room_summary/{readable}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["world_readable"], true);

    // Knock: anyone may see what they would knock on.
    let knock = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "initial_state": [{ "type": "m.room.join_rules",
                    "state_key": "", "content": { "join_rule": "knock" } }] }),
        )
        .await;
    let (status, summary) = server
        .get(&format!("{V1}/room_summary/{knock}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["join_rule"], "knock");

    // Restricted: members of an allowed room may look; others may not.
    let space = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{space}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.join(&bob, &space).await;
    let restricted = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "initial_state": [{ "type": "m.room.join_rules",
                    "state_key": "", "content": { "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }),
        )
        .await;
    let (status, summary) = server
        .get(
            &format!("{V1}/room_summary/{restricted}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["join_rule"], "restricted");
    assert_eq!(summary["allowed_room_ids"], json!([space]));
    for token in [Some(carol.access_token.as_str()), None] {
        let (status, body) = server
            .get(&format!("{V1}/room_summary/{restricted}"), token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
}

#[tokio::test]
async fn thirdparty_without_appservices_is_empty() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .get(
            &format!("{V3}/thirdparty/protocols"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (status, body) = server
        .get(&format!("{V3}/thirdparty/protocols"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    // No appservice lists the protocol.
    let (status, body) = server
        .get(
            &format!("{V3}/thirdparty/protocol/irc"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // Lookups find nothing (the appservice tests cover answers).
    for path in [
        "thirdparty/user/irc?nick=x",
        "thirdparty/user?userid=%40x%3Ay",
        "thirdparty/location?alias=%23x%3Ay",
    ] {
        let (status, body) = server
            .get(&format!("{V3}/{path}"), Some(&alice.access_token))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body, json!([]), "{path}");
    }
}

#[tokio::test]
async fn well_known_support_from_configuration() {
    let unset = TestServer::start().await;
    let (status, body) = unset.get("/.well-known/matrix/support", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    unset.stop().await;

    let server = TestServer::start_with(|config| {
        config.support.contacts = vec![
            lattice::config::SupportContact {
                matrix_id: Some("@admin:example.org".into()),
                email_address: Some("admin@example.org".into()),
                role: "m.role.admin".into(),
            },
            lattice::config::SupportContact {
                matrix_id: None,
                email_address: Some("security@example.org".into()),
                role: "m.role.security".into(),
            },
        ];
        config.support.support_page = Some("https://example.org/support".into());
    })
    .await;
    let (status, body) = server.get("/.well-known/matrix/support", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "contacts": [
                { "matrix_id": "@admin:example.org", "email_address": "admin@example.org", "role": "m.role.admin" },
                { "email_address": "security@example.org", "role": "m.role.security" },
            ],
            "support_page": "https://example.org/support",
        })
    );
}

#[tokio::test]
async fn mutual_rooms_only_rooms_both_are_joined_to() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let shared = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &shared).await;
    // Bob's private room, with alice only invited; a room bob left.
    let bobs = server
        .create_room(&bob, json!({ "preset": "private_chat" }))
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{bobs}/invite"),
            Some(&bob.access_token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &left).await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{left}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let ask = |who: &Login, query: String| {
        let token = who.access_token.clone();
        let server = &server;
        async move {
            server
                .get(&format!("{V1}/mutual_rooms?{query}"), Some(&token))
                .await
        }
    };
    let (status, body) = ask(&alice, format!("user_id={}", enc(&bob.user_id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "joined": [shared], "count": 1 }));
    // Carol shares nothing with bob and learns nothing of his rooms.
    let (status, body) = ask(&carol, format!("user_id={}", enc(&bob.user_id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "joined": [], "count": 0 }));
    // An unknown user: an empty list.
    let (status, body) = ask(&alice, format!("user_id={}", enc("@ghost:test.local"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["joined"], json!([]));
    // Oneself, a bad user ID, a token not ours: 400 M_INVALID_PARAM.
    for query in [
        format!("user_id={}", enc(&alice.user_id)),
        format!("user_id={}&from=garbage", enc(&bob.user_id)),
        "user_id=not-a-user".to_owned(),
    ] {
        let (status, body) = ask(&alice, query.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}");
    }
}

#[tokio::test]
async fn mutual_rooms_pages_with_next_batch() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let mut rooms = Vec::new();
    for _ in 0..101 {
        let room = server
            .create_room(&alice, json!({ "preset": "public_chat" }))
            .await;
        server.join(&bob, &room).await;
        rooms.push(room);
    }
    rooms.sort();
    let query = format!("{V1}/mutual_rooms?user_id={}", enc(&bob.user_id));
    let (status, first) = server.get(&query, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["count"], 101);
    assert_eq!(first["joined"].as_array().unwrap().len(), 100);
    let next = first["next_batch"].as_str().expect("next_batch");
    let (status, second) = server
        .get(
            &format!("{query}&from={}", enc(next)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(second.get("next_batch").is_none(), "{second}");
    let mut seen: Vec<String> = first["joined"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["joined"].as_array().unwrap())
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, rooms);
}

const TURN_SECRET: &str = "a shared secret";

fn with_turn(config: &mut lattice::config::Config, port: u16) {
    config.turn.uris = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
    config.turn.shared_secret = Some(TURN_SECRET.into());
    config.turn.user_lifetime_secs = 600;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn turn_server_credentials_in_coturns_form() {
    use base64::Engine;
    use hmac::{Hmac, Mac};

    // Not configured: {} (as Synapse), so clients call without TURN.
    let unset = TestServer::start().await;
    let alice = unset.register("alice", "pw").await;
    let (status, body) = unset
        .get(&format!("{V3}/voip/turnServer"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    unset.stop().await;

    let server = TestServer::start_with(|config| {
        with_turn(config, 3478);
        config.turn.allow_guests = false;
        config.registration.guests = true;
    })
    .await;
    let alice = server.register("alice", "pw").await;
    let before = unix_now();
    let (status, body) = server
        .get(&format!("{V3}/voip/turnServer"), Some(&alice.access_token))
        .await;
    let after = unix_now();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["uris"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    assert_eq!(body["ttl"], 600);
    let username = body["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("expiry:user_id");
    assert_eq!(user, alice.user_id);
    let expiry: u64 = expiry.parse().expect("unix seconds");
    assert!((before + 600..=after + 600).contains(&expiry), "{expiry}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TURN_SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(body["password"], expected);

    // Without a token: 401; guests when not allowed: 403.
    let (status, body) = server.get(&format!("{V3}/voip/turnServer"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    let (status, guest) = server
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    let (status, body) = server
        .get(
            &format!("{V3}/voip/turnServer"),
            guest["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_GUEST_ACCESS_FORBIDDEN");
}

/// coturn, stopped when dropped.
struct Coturn(std::process::Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs coturn's test client against the TURN server: an allocation with
/// these credentials, then a message relayed to a peer and back.
fn turn_client(bin: &std::path::Path, port: u16, username: &str, password: &str) -> (bool, String) {
    let out = std::process::Command::new(bin.join("turnutils_uclient"))
        .args(["-p", &port.to_string(), "-u", username, "-w", password])
        .args(["-n", "1", "-m", "1", "-y", "-e", "127.0.0.1", "127.0.0.1"])
        .output()
        .expect("turnutils_uclient runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The credentials Lattice hands out are accepted by a real coturn configured
/// with `use-auth-secret` and the same secret; tampered ones are refused.
#[tokio::test]
async fn coturn_accepts_the_turn_credentials() {
    let bin = std::path::PathBuf::from(crate::harness::setup_script("coturn-env"));
    let port = crate::harness::free_port();
    let dir = tempfile::tempdir().unwrap();
    let _coturn = Coturn(
        std::process::Command::new(bin.join("turnserver"))
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args(["--use-auth-secret", "--realm=test.local"])
            .arg(format!("--static-auth-secret={TURN_SECRET}"))
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .arg(format!("--pidfile={}", dir.path().join("pid").display()))
            .arg(format!("--log-file={}", dir.path().join("log").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("turnserver starts"),
    );
    crate::harness::eventually("coturn listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;

    let server = TestServer::start_with(|config| with_turn(config, port)).await;
    let alice = server.register("alice", "pw").await;
    let (status, creds) = server
        .get(&format!("{V3}/voip/turnServer"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    let username = creds["username"].as_str().unwrap().to_owned();
    let password = creds["password"].as_str().unwrap().to_owned();
    let (ok, out) = tokio::task::spawn_blocking({
        let (bin, username, password) = (bin.clone(), username.clone(), password.clone());
        move || turn_client(&bin, port, &username, &password)
    })
    .await
    .unwrap();
    assert!(ok, "coturn refused Lattice's credentials:\n{out}");
    assert!(out.contains("Total lost packets 0"), "{out}");

    // Another user's name with alice's password, or a later expiry: refused.
    let forged_user = username.replace(&alice.user_id, "@mallory:test.local");
    let (ok, out) = tokio::task::spawn_blocking({
        let bin = bin.clone();
        let password = password.clone();
        move || turn_client(&bin, port, &forged_user, &password)
    })
    .await
    .unwrap();
    assert!(!ok, "coturn accepted a forged username:\n{out}");
    let (expiry, user) = username.split_once(':').unwrap();
    let extended = format!("{}:{user}", expiry.parse::<u64>().unwrap() + 86_400);
    let (ok, out) = tokio::task::spawn_blocking({
        let bin = bin.clone();
        move || turn_client(&bin, port, &extended, &password)
    })
    .await
    .unwrap();
    assert!(!ok, "coturn accepted an extended expiry:\n{out}");
}
