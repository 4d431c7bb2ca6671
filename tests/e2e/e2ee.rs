//! The server side of end-to-end encryption and the per-user streams sync carries:
//! keys upload/query/claim, to-device messages, device-list changes, account data
//! and tags, typing and receipts, key backups, cross-signing uploads.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, password_auth};

const V3: &str = "/_matrix/client/v3";

async fn room(server: &TestServer, who: &Login, body: Value) -> String {
    let (status, resp) = server
        .post(&format!("{V3}/createRoom"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["room_id"].as_str().unwrap().to_owned()
}

async fn join(server: &TestServer, who: &Login, room: &str) {
    let (status, resp) = server
        .post(
            &format!("{V3}/rooms/{room}/join"),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

async fn sync(server: &TestServer, who: &Login, since: Option<&str>, timeout: u64) -> Value {
    let path = match since {
        Some(s) => format!("{V3}/sync?since={s}&timeout={timeout}"),
        None => format!("{V3}/sync?timeout={timeout}"),
    };
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn next(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

fn device_keys(who: &Login) -> Value {
    json!({
        "user_id": who.user_id,
        "device_id": who.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", who.device_id): "curve",
            format!("ed25519:{}", who.device_id): "edkey",
        },
        "signatures": { who.user_id.clone(): { format!("ed25519:{}", who.device_id): "sig" } },
    })
}

async fn upload(server: &TestServer, who: &Login, body: Value) -> Value {
    let (status, resp) = server
        .post(&format!("{V3}/keys/upload"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp
}

#[tokio::test]
async fn keys_upload_query_claim_with_fallback() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    let resp = upload(
        &server,
        &alice,
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": {
                "signed_curve25519:AAAA": { "key": "k1", "signatures": {} },
                "signed_curve25519:AAAB": { "key": "k2", "signatures": {} },
            },
            "fallback_keys": {
                "signed_curve25519:FFFF": { "key": "fb", "fallback": true, "signatures": {} },
            },
        }),
    )
    .await;
    assert_eq!(resp["one_time_key_counts"]["signed_curve25519"], 2);

    // Keys for another device (or user) are refused, and nothing is stored.
    let mut other = device_keys(&alice);
    other["device_id"] = json!("NOTMINE");
    let (status, _) = server
        .post(
            &format!("{V3}/keys/upload"),
            Some(&alice.access_token),
            json!({ "device_keys": other }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Device keys without the required `algorithms`, `keys` and `signatures`:
    // M_BAD_JSON, and nothing stored (the one-time key with them neither).
    let (status, body) = server
        .post(
            &format!("{V3}/keys/upload"),
            Some(&alice.access_token),
            json!({
                "device_keys": { "user_id": alice.user_id, "device_id": alice.device_id },
                "one_time_keys": { "signed_curve25519:ZZZZ": { "key": "k9", "signatures": {} } },
            }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")),
        "{body}"
    );

    let (status, q) = server
        .post(
            &format!("{V3}/keys/query"),
            Some(&bob.access_token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{q}");
    let dk = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(dk["keys"][format!("ed25519:{}", alice.device_id)], "edkey");
    // `unsigned` is always there (with the device's display name if it has one).
    assert!(dk["unsigned"].is_object(), "{dk}");
    assert_eq!(
        q["device_keys"][&alice.user_id].as_object().unwrap().len(),
        1
    );

    let claim = || async {
        let (status, c) = server
            .post(
                &format!("{V3}/keys/claim"),
                Some(&bob.access_token),
                json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{c}");
        let keys = c["one_time_keys"][&alice.user_id][&alice.device_id].clone();
        let (id, key) = keys.as_object().unwrap().iter().next().unwrap();
        (id.clone(), key["key"].as_str().unwrap().to_owned())
    };
    let first = claim().await;
    let second = claim().await;
    assert_ne!(first, second);
    assert_eq!(
        claim().await,
        ("signed_curve25519:FFFF".into(), "fb".into())
    );
    // The fallback key stays available once one-time keys run out.
    assert_eq!(claim().await.1, "fb");

    let s = sync(&server, &alice, None, 0).await;
    // Spent: a count of 0, not a missing entry (clients replenish on it).
    assert_eq!(
        s["device_one_time_keys_count"],
        json!({ "signed_curve25519": 0 }),
        "{s}"
    );
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
}

/// The key endpoints answer with every map Synapse sends, empty ones
/// included (SyTest reads `failures` of `/keys/query`, matrix-nio requires
/// its `device_keys`), and keys come back as uploaded, fields beyond the
/// spec's and signatures included.
#[tokio::test]
async fn key_answers_keep_empty_maps_and_unknown_fields() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let post = |path: &'static str, who: &Login, body: Value| {
        let server = &server;
        let token = who.access_token.clone();
        async move {
            let (status, resp) = server
                .post(&format!("{V3}{path}"), Some(&token), body)
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {resp}");
            resp
        }
    };
    assert_eq!(
        post("/keys/query", &bob, json!({ "device_keys": {} })).await,
        json!({ "device_keys": {}, "failures": {}, "master_keys": {},
            "self_signing_keys": {}, "user_signing_keys": {} })
    );
    assert_eq!(
        post("/keys/claim", &bob, json!({ "one_time_keys": {} })).await,
        json!({ "one_time_keys": {}, "failures": {} })
    );
    assert_eq!(
        post("/keys/signatures/upload", &bob, json!({})).await,
        json!({ "failures": {} })
    );

    let mut keys = device_keys(&alice);
    keys["org.example.extra"] = json!({ "nested": [1, "two", { "three": null }] });
    keys["signatures"][&alice.user_id]["ed25519:OTHER"] = json!("sig2");
    upload(
        &server,
        &alice,
        json!({
            "device_keys": keys,
            "one_time_keys": { "signed_curve25519:AAAA":
                { "key": "k1", "signatures": { alice.user_id.clone(): { "ed25519:X": "s" } },
                  "org.example.extra": true } },
        }),
    )
    .await;
    let q = post(
        "/keys/query",
        &bob,
        json!({ "device_keys": { alice.user_id.clone(): [] } }),
    )
    .await;
    let mut got = q["device_keys"][&alice.user_id][&alice.device_id].clone();
    assert!(got["unsigned"].is_object(), "{q}");
    got.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(got, keys);
    assert_eq!(q["failures"], json!({}), "{q}");
    assert_eq!(q["master_keys"], json!({}), "{q}");

    let c = post(
        "/keys/claim",
        &bob,
        json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } }),
    )
    .await;
    assert_eq!(
        c,
        json!({
            "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): {
                "signed_curve25519:AAAA": { "key": "k1",
                    "signatures": { alice.user_id.clone(): { "ed25519:X": "s" } },
                    "org.example.extra": true } } } },
            "failures": {},
        })
    );
}

#[tokio::test]
async fn to_device_messages_are_delivered_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let first = sync(&server, &alice, None, 0).await;
    let since = next(&first);

    let send = |txn: &'static str, device: String| {
        let server = &server;
        let bob = &bob;
        let alice_id = alice.user_id.clone();
        async move {
            let (status, body) = server
                .put(
                    &format!("{V3}/sendToDevice/m.test/{txn}"),
                    Some(&bob.access_token),
                    json!({ "messages": { alice_id: { device: { "n": txn } } } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    send("t1", alice.device_id.clone()).await;
    send("t1", alice.device_id.clone()).await; // a retry of the same transaction
    send("t2", "*".into()).await;

    let s = sync(&server, &alice, Some(&since), 5000).await;
    let events = s["to_device"]["events"].as_array().unwrap();
    let ns: Vec<&str> = events
        .iter()
        .map(|e| e["content"]["n"].as_str().unwrap())
        .collect();
    assert_eq!(ns, vec!["t1", "t2"], "{s}");
    assert_eq!(events[0]["sender"], bob.user_id);
    assert_eq!(events[0]["type"], "m.test");

    // Repeating the same since token re-delivers (not acknowledged yet)...
    let again = sync(&server, &alice, Some(&since), 0).await;
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 2);
    // ...and moving on acknowledges and deletes them.
    let after = sync(&server, &alice, Some(&next(&s)), 0).await;
    assert_eq!(after["to_device"]["events"], json!([]), "{after}");
    let later = sync(&server, &alice, Some(&next(&after)), 0).await;
    assert_eq!(later["to_device"]["events"], json!([]));
}

#[tokio::test]
async fn device_list_changes_reach_users_sharing_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    join(&server, &bob, &r).await;
    let bob_since = next(&sync(&server, &bob, None, 0).await);
    let carol_since = next(&sync(&server, &carol, None, 0).await);

    upload(
        &server,
        &alice,
        json!({ "device_keys": device_keys(&alice) }),
    )
    .await;

    let s = sync(&server, &bob, Some(&bob_since), 5000).await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]), "{s}");
    // Carol shares no room with Alice: nothing for her.
    let c = sync(&server, &carol, Some(&carol_since), 0).await;
    assert!(c["device_lists"]["changed"].is_null(), "{c}");

    let (status, changes) = server
        .get(
            &format!("{V3}/keys/changes?from={bob_since}&to={}", next(&s)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert_eq!(changes["changed"], json!([alice.user_id]));

    // Bob leaves the only shared room: Alice is "left" for him, and Carol, who
    // joins, learns of Alice's devices ("changed").
    let bob_since = next(&s);
    server
        .post(
            &format!("{V3}/rooms/{r}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    join(&server, &carol, &r).await;
    let s = sync(&server, &bob, Some(&bob_since), 0).await;
    let left = s["device_lists"]["left"].as_array().unwrap();
    assert!(left.contains(&json!(alice.user_id)), "{s}");
    let c = sync(&server, &carol, Some(&next(&c)), 0).await;
    assert_eq!(c["device_lists"]["changed"], json!([alice.user_id]), "{c}");

    // A deleted device is a change too.
    let carol_since = next(&c);
    let (status, _) = server
        .post(
            &format!("{V3}/logout"),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let c = sync(&server, &carol, Some(&carol_since), 5000).await;
    assert_eq!(c["device_lists"]["changed"], json!([alice.user_id]), "{c}");
}

#[tokio::test]
async fn account_data_and_tags_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(&server, &alice, json!({})).await;
    let since = next(&sync(&server, &alice, None, 0).await);
    let me = &alice.user_id;

    let (status, _) = server
        .put(
            &format!("{V3}/user/{me}/account_data/org.example.settings"),
            Some(&alice.access_token),
            json!({ "theme": "dark" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = server
        .get(
            &format!("{V3}/user/{me}/account_data/org.example.settings"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(got, json!({ "theme": "dark" }));
    // Others may not read or write it; unknown types are 404.
    let (status, _) = server
        .get(
            &format!("{V3}/user/{me}/account_data/org.example.settings"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = server
        .get(
            &format!("{V3}/user/{me}/account_data/org.example.none"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    // Server-controlled types are refused with 405.
    let (status, body) = server
        .put(
            &format!("{V3}/user/{me}/rooms/{r}/account_data/m.fully_read"),
            Some(&alice.access_token),
            json!({ "event_id": "$x" }),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    let (status, _) = server
        .put(
            &format!("{V3}/user/{me}/rooms/{r}/tags/m.favourite"),
            Some(&alice.access_token),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, tags) = server
        .get(
            &format!("{V3}/user/{me}/rooms/{r}/tags"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(tags, json!({ "tags": { "m.favourite": { "order": 0.5 } } }));

    let s = sync(&server, &alice, Some(&since), 5000).await;
    assert_eq!(
        s["account_data"]["events"],
        json!([{ "type": "org.example.settings", "content": { "theme": "dark" } }]),
        "{s}"
    );
    assert_eq!(
        s["rooms"]["join"][&r]["account_data"]["events"],
        json!([{ "type": "m.tag", "content": { "tags": { "m.favourite": { "order": 0.5 } } } }]),
    );

    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("{V3}/user/{me}/rooms/{r}/tags/m.favourite"),
            Some(&alice.access_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let s2 = sync(&server, &alice, Some(&next(&s)), 5000).await;
    assert_eq!(
        s2["rooms"]["join"][&r]["account_data"]["events"],
        json!([{ "type": "m.tag", "content": { "tags": {} } }]),
    );
    // Initial sync carries the current account data (and the default push rules).
    let full = sync(&server, &alice, None, 0).await;
    let mut types: Vec<&str> = full["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, vec!["m.push_rules", "org.example.settings"]);
}

#[tokio::test]
async fn typing_and_receipts_arrive_as_ephemeral_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    join(&server, &bob, &r).await;
    let (_, sent) = server
        .put(
            &format!("{V3}/rooms/{r}/send/m.room.message/1"),
            Some(&alice.access_token),
            json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let since = next(&sync(&server, &bob, None, 0).await);

    // Bob long-polls; Alice starts typing and wakes him.
    let parked = server.parked();
    let waiter = {
        let base = since.clone();
        let server = &server;
        let bob = &bob;
        async move { sync(server, bob, Some(&base), 10_000).await }
    };
    let typer = async {
        server.until_parked(parked).await;
        let (status, body) = server
            .put(
                &format!("{V3}/rooms/{r}/typing/{}", alice.user_id),
                Some(&alice.access_token),
                json!({ "typing": true, "timeout": 30000 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    let (s, ()) = tokio::join!(waiter, typer);
    let eph = &s["rooms"]["join"][&r]["ephemeral"]["events"];
    assert_eq!(
        eph,
        &json!([{ "type": "m.typing", "content": { "user_ids": [alice.user_id] } }]),
        "{s}"
    );
    // Typing for someone else is refused.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{r}/typing/{}", bob.user_id),
            Some(&alice.access_token),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Alice stops typing and reads the message; a private receipt stays hers.
    server
        .put(
            &format!("{V3}/rooms/{r}/typing/{}", alice.user_id),
            Some(&alice.access_token),
            json!({ "typing": false }),
        )
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{r}/receipt/m.read/{event}"),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/receipt/m.read.private/{event}"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/receipt/m.read/$nope"),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let s2 = sync(&server, &alice, Some(&next(&s)), 0).await;
    let eph = s2["rooms"]["join"][&r]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let typing = eph.iter().find(|e| e["type"] == "m.typing").unwrap();
    assert_eq!(typing["content"]["user_ids"], json!([]));
    // A client syncing from scratch after the stop learns it too (SyTest's
    // "Typing can be explicitly stopped" syncs so; Synapse answers so).
    let fresh = sync(&server, &bob, None, 0).await;
    let typing = fresh["rooms"]["join"][&r]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .cloned();
    assert_eq!(
        typing.map(|t| t["content"]["user_ids"].clone()),
        Some(json!([])),
        "{fresh}"
    );
    let receipt = eph.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(receipt["content"][&event]["m.read"][&alice.user_id]["ts"].is_i64());
    assert!(
        receipt["content"][&event].get("m.read.private").is_none(),
        "{receipt}"
    );

    // read_markers sets m.fully_read (room account data).
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{r}/read_markers"),
            Some(&bob.access_token),
            json!({ "m.fully_read": event, "m.read": event }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, fully) = server
        .get(
            &format!(
                "{V3}/user/{}/rooms/{r}/account_data/m.fully_read",
                bob.user_id
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(fully["event_id"], event);
}

#[tokio::test]
async fn key_backup_versions_and_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let (status, _) = server.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let algorithm = json!({
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": { "public_key": "pk", "signatures": {} },
    });
    let (status, created) = server
        .post(&format!("{V3}/room_keys/version"), t, algorithm.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let version = created["version"].as_str().unwrap().to_owned();

    let key = |index: u64| {
        json!({
            "first_message_index": index,
            "forwarded_count": 0,
            "is_verified": false,
            "session_data": { "ciphertext": format!("c{index}"), "ephemeral": "e", "mac": "m" },
        })
    };
    let room_id = "!r:localhost";
    let (status, put) = server
        .put(
            &format!("{V3}/room_keys/keys?version={version}"),
            t,
            json!({ "rooms": { room_id: { "sessions": { "s1": key(5) } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["count"], 1);
    let etag = put["etag"].clone();
    // A worse key (higher first_message_index) does not replace the better one.
    let (_, put2) = server
        .put(
            &format!("{V3}/room_keys/keys/{room_id}/s1?version={version}"),
            t,
            key(9),
        )
        .await;
    assert_eq!(put2["etag"], etag);
    let (_, got) = server
        .get(
            &format!("{V3}/room_keys/keys/{room_id}/s1?version={version}"),
            t,
        )
        .await;
    assert_eq!(got["first_message_index"], 5);
    let (_, info) = server.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!(
        (info["version"].as_str(), info["count"].as_i64()),
        (Some(version.as_str()), Some(1))
    );

    // A new version makes the old one read-only for uploads.
    let (_, newer) = server
        .post(&format!("{V3}/room_keys/version"), t, algorithm)
        .await;
    let (status, err) = server
        .put(
            &format!("{V3}/room_keys/keys?version={version}"),
            t,
            json!({ "rooms": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["errcode"], "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(err["current_version"], newer["version"]);

    let (status, del) = server
        .call(
            Method::DELETE,
            &format!("{V3}/room_keys/keys?version={version}"),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{del}");
    assert_eq!(del["count"], 0);
}

#[tokio::test]
async fn cross_signing_keys_upload_and_replace_needs_password() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let master = |key: &str| json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { format!("ed25519:{key}"): key } });
    // A self-signing key with no master key to hang off: refused.
    let (status, body) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "self_signing_key": { "user_id": alice.user_id, "usage": ["self_signing"],
                "keys": { "ed25519:SSK": "SSK" } } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_MISSING_PARAM")),
        "{body}"
    );
    let (status, body) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "master_key": master("AAA") }),
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
        q["master_keys"][&alice.user_id]["keys"]["ed25519:AAA"],
        "AAA"
    );

    // Replacing the master key asks for the password.
    let (status, uia) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "master_key": master("BBB") }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    let session = uia["session"].as_str().unwrap();
    let (status, body) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({
                "master_key": master("BBB"),
                "auth": password_auth(&alice.user_id, "pw", session),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A signature that does not verify is reported per key, not stored.
    let (status, resp) = server
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.access_token),
            json!({ alice.user_id.clone(): { "BBB": {
                "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:BBB": "BBB" },
                "signatures": { alice.user_id.clone(): { "ed25519:DEVICE": "bogus" } },
            } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        resp["failures"][&alice.user_id]["BBB"]["errcode"],
        "M_INVALID_SIGNATURE"
    );
}

/// Receipts only move forward (as Synapse's): a receipt for an older event
/// leaves the newer one in place; another user's receipt is their own.
#[tokio::test]
async fn read_receipts_do_not_move_back() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    join(&server, &bob, &r).await;
    let first = server
        .send_message(&alice, &r, json!({ "msgtype": "m.text", "body": "one" }))
        .await;
    let second = server
        .send_message(&alice, &r, json!({ "msgtype": "m.text", "body": "two" }))
        .await;
    let receipt = |who: &Login, event: &str| {
        let path = format!("{V3}/rooms/{r}/receipt/m.read/{event}");
        let token = who.access_token.clone();
        let server = &server;
        async move {
            let (status, body) = server.post(&path, Some(&token), json!({})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    receipt(&alice, &second).await;
    receipt(&alice, &first).await;
    receipt(&bob, &first).await;
    let s = sync(&server, &alice, None, 0).await;
    let eph = s["rooms"]["join"][&r]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let receipts = eph.iter().find(|e| e["type"] == "m.receipt").unwrap();
    let content = &receipts["content"];
    assert!(
        content[&second]["m.read"].get(&alice.user_id).is_some(),
        "{content}"
    );
    assert!(
        content[&first]["m.read"].get(&alice.user_id).is_none(),
        "{content}"
    );
    assert!(
        content[&first]["m.read"].get(&bob.user_id).is_some(),
        "{content}"
    );
}
