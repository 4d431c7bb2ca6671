//! Filters (spec: "Filtering"), applied in full: every field of `/sync`'s
//! filter on its section, the `RoomEventFilter` of `/messages` and `/context`,
//! filtering before the limit, `event_fields` and `event_format`, stored
//! filters that are invalid or another user's, and history visibility kept.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const V3: &str = "/_matrix/client/v3";

async fn send(server: &TestServer, who: &Login, room: &str, kind: &str, content: Value) -> String {
    static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/{kind}/f{txn}", enc(room)),
            Some(&who.access_token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn text(server: &TestServer, who: &Login, room: &str, body: &str) -> String {
    send(
        server,
        who,
        room,
        "m.room.message",
        json!({ "msgtype": "m.text", "body": body }),
    )
    .await
}

async fn sync_with(server: &TestServer, who: &Login, filter: Value, since: Option<&str>) -> Value {
    let mut path = format!("{V3}/sync?filter={}", enc(&filter.to_string()));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The `body` of each event of a list.
fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Alice's public room that Bob joined, with their messages interleaved:
/// `a0 b0 a1 b1 … a5 b5`, then an image of Alice's (`url` a string) and one
/// of Bob's whose `url` is not a string.
async fn chatty_room(server: &TestServer) -> (Login, Login, String) {
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Chat" }))
        .await;
    server.join(&bob, &room).await;
    for i in 0..6 {
        text(server, &alice, &room, &format!("a{i}")).await;
        text(server, &bob, &room, &format!("b{i}")).await;
    }
    send(
        server,
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.image", "body": "pic", "url": "mxc://test.local/pic" }),
    )
    .await;
    send(
        server,
        &bob,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "not-a-url", "url": 5 }),
    )
    .await;
    (alice, bob, room)
}

fn timeline<'a>(sync: &'a Value, room: &str) -> &'a Value {
    &sync["rooms"]["join"][room]["timeline"]
}

#[tokio::test]
async fn sync_timeline_filters_apply_before_the_limit() {
    let server = TestServer::start().await;
    let (alice, bob, room) = chatty_room(&server).await;

    // senders + limit: the newest three of Alice's, not Alice's among the newest three.
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 3, "senders": [alice.user_id],
                                        "types": ["m.room.message"] } } }),
        None,
    )
    .await;
    let tl = timeline(&body, &room);
    assert_eq!(bodies(&tl["events"]), ["a4", "a5", "pic"], "{tl}");
    assert_eq!(tl["limited"], true, "{tl}");
    // prev_batch continues where the filtered timeline starts.
    let prev = tl["prev_batch"].as_str().expect("prev_batch");
    let filter = json!({ "senders": [alice.user_id], "types": ["m.room.message"] });
    let (status, page) = server
        .get(
            &format!(
                "{V3}/rooms/{}/messages?dir=b&limit=2&from={prev}&filter={}",
                enc(&room),
                enc(&filter.to_string())
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(bodies(&page["chunk"]), ["a3", "a2"], "{page}");

    // not_senders wins over senders.
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 4, "senders": [alice.user_id, bob.user_id],
                                        "not_senders": [alice.user_id] } } }),
        None,
    )
    .await;
    assert_eq!(
        bodies(&timeline(&body, &room)["events"]),
        ["b3", "b4", "b5", "not-a-url"]
    );

    // contains_url: a string `url` only.
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 5, "contains_url": true } } }),
        None,
    )
    .await;
    assert_eq!(bodies(&timeline(&body, &room)["events"]), ["pic"]);
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 3, "contains_url": false } } }),
        None,
    )
    .await;
    assert_eq!(
        bodies(&timeline(&body, &room)["events"]),
        ["a5", "b5", "not-a-url"]
    );

    // types with a wildcard, and not_types.
    send(
        &server,
        &alice,
        &room,
        "org.example.thing",
        json!({ "n": 1 }),
    )
    .await;
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 5, "types": ["org.example.*"] } } }),
        None,
    )
    .await;
    assert_eq!(
        types(&timeline(&body, &room)["events"]),
        ["org.example.thing"]
    );
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 2, "not_types": ["m.room.message"] } } }),
        None,
    )
    .await;
    let got = types(&timeline(&body, &room)["events"]);
    assert_eq!(got.last().map(String::as_str), Some("org.example.thing"));
    assert!(!got.iter().any(|t| t == "m.room.message"), "{got:?}");

    // Incremental: a room whose new events are all filtered out is not listed.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    text(&server, &bob, &room, "bob-again").await;
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "senders": [alice.user_id] } } }),
        Some(&since),
    )
    .await;
    assert!(body["rooms"]["join"][&room].is_null(), "{body}");
}

#[tokio::test]
async fn sync_event_fields_and_event_format() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&alice, json!({})).await;
    send(
        &server,
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "hi",
                "a.b": { "c": 1, "d": 2 }, "back\\slash": "x" }),
    )
    .await;

    let body = sync_with(
        &server,
        &alice,
        json!({
            "event_fields": ["type", "content.body", "content.a\\.b.c", "content.back\\\\slash",
                             "content.missing.path"],
            "room": { "timeline": { "limit": 1 } },
        }),
        None,
    )
    .await;
    let event = &timeline(&body, &room)["events"][0];
    assert_eq!(
        event,
        &json!({ "type": "m.room.message",
                 "content": { "body": "hi", "a.b": { "c": 1 }, "back\\slash": "x" } }),
        "{body}"
    );

    // federation format: the PDU's own fields; client format: none of them.
    let body = sync_with(
        &server,
        &alice,
        json!({ "event_format": "federation", "room": { "timeline": { "limit": 1 } } }),
        None,
    )
    .await;
    let event = &timeline(&body, &room)["events"][0];
    for key in [
        "auth_events",
        "prev_events",
        "hashes",
        "signatures",
        "depth",
    ] {
        assert!(event.get(key).is_some(), "{key} missing: {event}");
    }
    assert!(event["event_id"].is_string(), "{event}");
    let body = sync_with(
        &server,
        &alice,
        json!({ "event_format": "client", "room": { "timeline": { "limit": 1 } } }),
        None,
    )
    .await;
    let event = &timeline(&body, &room)["events"][0];
    assert!(event.get("auth_events").is_none(), "{event}");
    assert!(event.get("hashes").is_none(), "{event}");
}

#[tokio::test]
async fn sync_sections_filter_account_data_ephemeral_presence_state_and_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "One" }))
        .await;
    let other = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Two" }))
        .await;
    server.join(&bob, &room).await;
    let last = text(&server, &bob, &room, "hello").await;
    let user = enc(&alice.user_id);
    for (kind, path) in [
        (
            "org.keep",
            format!("{V3}/user/{user}/account_data/org.keep"),
        ),
        (
            "org.drop",
            format!("{V3}/user/{user}/account_data/org.drop"),
        ),
        (
            "org.room.keep",
            format!(
                "{V3}/user/{user}/rooms/{}/account_data/org.room.keep",
                enc(&room)
            ),
        ),
        (
            "org.room.drop",
            format!(
                "{V3}/user/{user}/rooms/{}/account_data/org.room.drop",
                enc(&room)
            ),
        ),
    ] {
        let (status, body) = server
            .put(&path, Some(&alice.access_token), json!({ "kind": kind }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
            Some(&bob.access_token),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let body = sync_with(
        &server,
        &alice,
        json!({
            "account_data": { "types": ["org.*"], "not_types": ["org.drop"] },
            "room": {
                "rooms": [room],
                "timeline": { "limit": 1 },
                "account_data": { "not_types": ["org.room.drop"] },
                "ephemeral": { "not_types": ["m.typing"] },
                "state": { "types": ["m.room.create", "m.room.name"],
                           "not_senders": [bob.user_id] },
            },
        }),
        None,
    )
    .await;
    assert_eq!(
        types(&body["account_data"]["events"]),
        ["org.keep"],
        "{body}"
    );
    let joined = &body["rooms"]["join"];
    assert!(joined[&other].is_null(), "rooms: {joined}");
    let section = &joined[&room];
    assert_eq!(
        types(&section["account_data"]["events"]),
        ["org.room.keep"],
        "{section}"
    );
    assert_eq!(
        types(&section["ephemeral"]["events"]),
        ["m.receipt"],
        "{section}"
    );
    let mut state = types(&section["state"]["events"]);
    state.sort();
    assert_eq!(state, ["m.room.create", "m.room.name"], "{section}");

    // The other way round: not_rooms, only typing, state of Bob only, no presence.
    let body = sync_with(
        &server,
        &alice,
        json!({
            "presence": { "types": [] },
            "account_data": { "not_types": ["*"] },
            "room": {
                "not_rooms": [other],
                "timeline": { "limit": 1 },
                "ephemeral": { "types": ["m.typing"] },
                "state": { "senders": [bob.user_id] },
                "account_data": { "types": ["org.room.drop"] },
            },
        }),
        None,
    )
    .await;
    assert_eq!(body["account_data"]["events"], json!([]), "{body}");
    assert_eq!(body["presence"]["events"], json!([]), "{body}");
    let joined = &body["rooms"]["join"];
    assert!(joined[&other].is_null(), "{joined}");
    let section = &joined[&room];
    assert_eq!(types(&section["ephemeral"]["events"]), ["m.typing"]);
    assert_eq!(types(&section["account_data"]["events"]), ["org.room.drop"]);
    let state = &section["state"]["events"];
    assert_eq!(types(state), ["m.room.member"], "{section}");
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] == bob.user_id.as_str()),
        "{state}"
    );

    // include_leave: a room left before the initial sync shows only when asked.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync_with(&server, &bob, json!({}), None).await;
    assert!(body["rooms"]["leave"][&room].is_null(), "{body}");
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "include_leave": true } }),
        None,
    )
    .await;
    assert!(body["rooms"]["leave"][&room].is_object(), "{body}");
}

#[tokio::test]
async fn messages_filters_senders_not_senders_contains_url_before_limit() {
    let server = TestServer::start().await;
    let (alice, bob, room) = chatty_room(&server).await;
    let page = |filter: Value, limit: u32| {
        let path = format!(
            "{V3}/rooms/{}/messages?dir=b&limit={limit}&filter={}",
            enc(&room),
            enc(&filter.to_string())
        );
        let token = bob.access_token.clone();
        let server = &server;
        async move {
            let (status, body) = server.get(&path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let body = page(json!({ "senders": [bob.user_id] }), 3).await;
    assert_eq!(bodies(&body["chunk"]), ["not-a-url", "b5", "b4"]);
    assert!(body["end"].is_string(), "{body}");
    let body = page(
        json!({ "not_senders": [bob.user_id], "types": ["m.room.message"] }),
        2,
    )
    .await;
    assert_eq!(bodies(&body["chunk"]), ["pic", "a5"]);
    let body = page(json!({ "contains_url": true }), 10).await;
    assert_eq!(bodies(&body["chunk"]), ["pic"]);
    let body = page(
        json!({ "contains_url": false, "types": ["m.room.message"] }),
        2,
    )
    .await;
    assert_eq!(bodies(&body["chunk"]), ["not-a-url", "b5"]);
    // The filter's own limit wins over the query's.
    let body = page(json!({ "senders": [alice.user_id], "limit": 1 }), 10).await;
    assert_eq!(bodies(&body["chunk"]), ["pic"]);
}

#[tokio::test]
async fn context_applies_the_whole_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let carol = server.register("carol", "pw-carol-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    for i in 0..4 {
        text(&server, &bob, &room, &format!("before-b{i}")).await;
        text(&server, &carol, &room, &format!("before-c{i}")).await;
    }
    send(
        &server,
        &carol,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.file", "body": "file-before", "url": "mxc://test.local/f" }),
    )
    .await;
    let target = text(&server, &alice, &room, "target").await;
    for i in 0..4 {
        text(&server, &bob, &room, &format!("after-b{i}")).await;
        text(&server, &carol, &room, &format!("after-c{i}")).await;
    }
    let context = |filter: Value, limit: u32| {
        let path = format!(
            "{V3}/rooms/{}/context/{}?limit={limit}&filter={}",
            enc(&room),
            enc(&target),
            enc(&filter.to_string())
        );
        let token = alice.access_token.clone();
        let server = &server;
        async move {
            let (status, body) = server.get(&path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };

    // senders, before the limit, split in halves; the event itself always.
    let body = context(
        json!({ "senders": [bob.user_id], "lazy_load_members": true }),
        4,
    )
    .await;
    assert_eq!(body["event"]["content"]["body"], "target", "{body}");
    assert_eq!(
        bodies(&body["events_before"]),
        ["before-b3", "before-b2"],
        "{body}"
    );
    assert_eq!(bodies(&body["events_after"]), ["after-b0", "after-b1"]);
    // Lazy loading: the members of the senders shown (Bob, and Alice for the event).
    let mut members: Vec<String> = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let mut want = vec![alice.user_id.clone(), bob.user_id.clone()];
    want.sort();
    assert_eq!(members, want, "{body}");
    // `end` continues after the last event shown, with the same filter.
    let end = body["end"].as_str().unwrap();
    let filter = json!({ "senders": [bob.user_id] });
    let (status, page) = server
        .get(
            &format!(
                "{V3}/rooms/{}/messages?dir=f&limit=1&from={end}&filter={}",
                enc(&room),
                enc(&filter.to_string())
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(bodies(&page["chunk"]), ["after-b2"]);

    // not_senders, contains_url, types.
    let body = context(json!({ "not_senders": [bob.user_id] }), 2).await;
    assert_eq!(bodies(&body["events_before"]), ["file-before"]);
    assert_eq!(bodies(&body["events_after"]), ["after-c0"]);
    let body = context(json!({ "contains_url": true }), 6).await;
    assert_eq!(bodies(&body["events_before"]), ["file-before"]);
    assert_eq!(body["events_after"], json!([]), "{body}");
    let body = context(json!({ "types": ["m.room.member"] }), 2).await;
    assert_eq!(types(&body["events_before"]), ["m.room.member"]);
    assert_eq!(body["events_after"], json!([]), "{body}");
    // Without lazy loading, the full state.
    let body = context(json!({ "senders": [bob.user_id] }), 2).await;
    let members = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .count();
    assert_eq!(members, 3, "{body}");
}

#[tokio::test]
async fn filters_never_reveal_hidden_history() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    for i in 0..5 {
        text(&server, &alice, &room, &format!("secret{i}")).await;
    }
    server.join(&bob, &room).await;
    let first = text(&server, &alice, &room, "open0").await;
    text(&server, &alice, &room, "open1").await;

    let only_alice = json!({ "senders": [alice.user_id], "types": ["m.room.message"] });
    let body = sync_with(
        &server,
        &bob,
        json!({ "room": { "timeline": { "limit": 5, "senders": [alice.user_id],
                                        "types": ["m.room.message"] } } }),
        None,
    )
    .await;
    assert_eq!(
        bodies(&timeline(&body, &room)["events"]),
        ["open0", "open1"]
    );
    let (status, page) = server
        .get(
            &format!(
                "{V3}/rooms/{}/messages?dir=b&limit=10&filter={}",
                enc(&room),
                enc(&only_alice.to_string())
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(bodies(&page["chunk"]), ["open1", "open0"]);
    let (status, body) = server
        .get(
            &format!(
                "{V3}/rooms/{}/context/{}?limit=10&filter={}",
                enc(&room),
                enc(&first),
                enc(&only_alice.to_string())
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events_before"], json!([]), "{body}");
    assert_eq!(bodies(&body["events_after"]), ["open1"]);
}

#[tokio::test]
async fn invalid_filters_and_other_users_filter_ids() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let create = |who: &Login, filter: Value| {
        let path = format!("{V3}/user/{}/filter", enc(&who.user_id));
        let token = who.access_token.clone();
        let server = &server;
        async move { server.post(&path, Some(&token), filter).await }
    };
    for bad in [
        json!({ "event_format": "xml" }),
        json!({ "event_fields": "content.body" }),
        json!({ "room": { "timeline": { "senders": ["not a user id"] } } }),
        json!({ "room": { "rooms": ["not-a-room"] } }),
        json!({ "room": { "timeline": { "types": [1] } } }),
        json!({ "room": { "timeline": { "limit": "ten" } } }),
        json!({ "room": { "include_leave": "yes" } }),
        json!({ "presence": { "not_senders": [7] } }),
    ] {
        let (status, body) = create(&alice, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{bad}: {body}");
    }
    // The same as an inline filter of /sync.
    let (status, body) = server
        .get(
            &format!(
                "{V3}/sync?filter={}",
                enc(&json!({ "event_format": "xml" }).to_string())
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = create(
        &alice,
        json!({ "room": { "timeline": { "limit": 1 } }, "event_format": "federation" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["filter_id"].as_str().unwrap().to_owned();
    // Alice's own: used by /sync, read back.
    let (status, body) = server
        .get(&format!("{V3}/sync?filter={id}"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/user/{}/filter/{id}", enc(&alice.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_format"], "federation", "{body}");

    // Bob may not use or read it: 400 M_INVALID_PARAM on /sync, as Synapse.
    let (status, body) = server
        .get(&format!("{V3}/sync?filter={id}"), Some(&bob.access_token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/user/{}/filter/{id}", enc(&alice.user_id)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/user/{}/filter/{id}", enc(&bob.user_id)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    // A filter ID that was never issued.
    let (status, body) = server
        .get(
            &format!("{V3}/sync?filter=999999"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

#[tokio::test]
async fn search_takes_the_same_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    text(&server, &alice, &room, "apple plain").await;
    send(
        &server,
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.image", "body": "apple picture", "url": "mxc://test.local/p" }),
    )
    .await;
    text(&server, &bob, &room, "apple from bob").await;
    let search = |filter: Value| {
        let token = alice.access_token.clone();
        let server = &server;
        async move {
            let (status, body) = server
                .post(
                    &format!("{V3}/search"),
                    Some(&token),
                    json!({ "search_categories": { "room_events": {
                        "search_term": "apple", "order_by": "recent", "filter": filter } } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let mut found: Vec<String> = body["search_categories"]["room_events"]["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["result"]["content"]["body"].as_str().map(str::to_owned))
                .collect();
            found.sort();
            found
        }
    };
    assert_eq!(search(json!({})).await.len(), 3);
    assert_eq!(
        search(json!({ "senders": [bob.user_id] })).await,
        ["apple from bob"]
    );
    assert_eq!(
        search(json!({ "contains_url": true })).await,
        ["apple picture"]
    );
    assert_eq!(
        search(json!({ "contains_url": false, "not_senders": [bob.user_id] })).await,
        ["apple plain"]
    );
    assert!(search(json!({ "not_rooms": [room] })).await.is_empty());
}
