//! The pre-`/sync` API the spec keeps deprecated and Synapse serves:
//! `GET /events` (and its peeking form with `room_id`), `GET /initialSync`,
//! `GET /rooms/{roomId}/initialSync`, `GET /events/{eventId}`, and the `POST`
//! forms of send and redact without a transaction ID. Old clients, and SyTest's
//! fixtures, use them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const R0: &str = "/_matrix/client/r0";
const V3: &str = "/_matrix/client/v3";

async fn server() -> TestServer {
    TestServer::start_with(|c| c.registration.guests = true).await
}

/// `GET /events` with the given query, asserting 200.
async fn events(server: &TestServer, who: &Login, query: &str) -> Value {
    let (status, body) = server
        .get(&format!("{R0}/events?{query}"), Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for key in ["start", "end"] {
        assert!(body[key].is_string(), "{key}: {body}");
    }
    body
}

/// The current end of the user's stream.
async fn now_token(server: &TestServer, who: &Login) -> String {
    events(server, who, "timeout=0").await["end"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn chunk(body: &Value) -> &Vec<Value> {
    body["chunk"].as_array().expect("chunk")
}

async fn guest(server: &TestServer) -> Login {
    let (status, body) = server
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Login::from_json(&body)
}

async fn set_visibility(server: &TestServer, who: &Login, room: &str, visibility: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.history_visibility/", enc(room)),
            Some(&who.access_token),
            json!({ "history_visibility": visibility }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Everything that happens to a user comes down `/events` after the token it
/// started from, in order and with `room_id` where it belongs to a room; the
/// returned `end` continues without repeating anything.
#[tokio::test]
async fn the_event_stream_carries_events_receipts_typing_and_account_data() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let from = now_token(&server, &alice).await;

    let first = server
        .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": "one" }))
        .await;
    let second = server
        .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": "two" }))
        .await;
    let body = events(&server, &alice, &format!("from={from}&timeout=0")).await;
    assert_eq!(body["start"], from.as_str());
    let messages: Vec<&Value> = chunk(&body)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    assert_eq!(messages.len(), 2, "{body}");
    assert_eq!(messages[0]["event_id"], first.as_str());
    assert_eq!(messages[1]["event_id"], second.as_str());
    assert_eq!(messages[0]["room_id"], room.as_str());
    assert_eq!(messages[0]["content"]["body"], "one");
    // This API's format: the sender also as `user_id`, `age` at the top.
    assert_eq!(messages[0]["user_id"], alice.user_id.as_str());
    assert!(messages[0]["age"].is_u64(), "{body}");
    let from = body["end"].as_str().unwrap().to_owned();

    // Nothing new: an empty chunk, and the same position.
    let body = events(&server, &alice, &format!("from={from}&timeout=0")).await;
    assert_eq!(chunk(&body), &Vec::<Value>::new(), "{body}");

    // Tags, room and global account data, receipts and typing.
    let user = enc(&alice.user_id);
    let (status, _) = server
        .put(
            &format!("{V3}/user/{user}/rooms/{}/tags/u.work", enc(&room)),
            t,
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!(
                "{V3}/user/{user}/rooms/{}/account_data/my.room.type",
                enc(&room)
            ),
            t,
            json!({ "cats_or_rats": "rats" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!("{V3}/user/{user}/account_data/my.global.type"),
            t,
            json!({ "cats_or_rats": "cats" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&second)),
            t,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{}/typing/{user}", enc(&room)),
            t,
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let body = events(&server, &alice, &format!("from={from}&timeout=0")).await;
    let find = |kind: &str| -> Value {
        chunk(&body)
            .iter()
            .find(|e| e["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in {body}"))
    };
    let tag = find("m.tag");
    assert_eq!(tag["room_id"], room.as_str());
    assert_eq!(tag["content"]["tags"]["u.work"]["order"], 0.5);
    let room_data = find("my.room.type");
    assert_eq!(room_data["room_id"], room.as_str());
    assert_eq!(room_data["content"]["cats_or_rats"], "rats");
    let global = find("my.global.type");
    assert!(global.get("room_id").is_none(), "{global}");
    assert_eq!(global["content"]["cats_or_rats"], "cats");
    let receipt = find("m.receipt");
    assert_eq!(receipt["room_id"], room.as_str());
    assert!(
        receipt["content"][&second]["m.read"][&alice.user_id]["ts"].is_i64(),
        "{receipt}"
    );
    let typing = find("m.typing");
    assert_eq!(typing["room_id"], room.as_str());
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    assert!(
        chunk(&body).iter().all(|e| e["type"] != "m.room.message"),
        "messages repeated: {body}"
    );
}

/// With a timeout and nothing to say, `/events` waits for the next event.
#[tokio::test]
async fn the_event_stream_long_polls() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let from = now_token(&server, &alice).await;
    let url = format!("{}{R0}/events?from={from}&timeout=20000", server.base);
    let token = alice.access_token.clone();
    let client = server.client.clone();
    let started = std::time::Instant::now();
    let parked = server.parked();
    let waiting = tokio::spawn(async move {
        client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    server.until_parked(parked).await;
    assert!(!waiting.is_finished(), "returned before anything happened");
    let sent = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "wake" }),
        )
        .await;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the event")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        chunk(&body).iter().any(|e| e["event_id"] == sent.as_str()),
        "{body}"
    );
}

/// `limit` caps the room events of one call, and `end` then stops at the last
/// one given: paging through returns every event once, in order.
#[tokio::test]
async fn the_event_stream_pages_with_limit_without_gaps() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut from = now_token(&server, &alice).await;
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(
            server
                .send_message(
                    &alice,
                    &room,
                    json!({ "msgtype": "m.text", "body": format!("m{i}") }),
                )
                .await,
        );
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        let body = events(&server, &alice, &format!("from={from}&timeout=0&limit=5")).await;
        let ids: Vec<String> = chunk(&body)
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 5, "{body}");
        seen.extend(ids);
        from = body["end"].as_str().unwrap().to_owned();
        if seen.len() >= sent.len() {
            break;
        }
    }
    assert_eq!(seen, sent);
}

/// Bad input is a Matrix error, never a hang or a 500.
#[tokio::test]
async fn the_event_stream_refuses_bad_requests() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let t = Some(alice.access_token.as_str());
    let private = server
        .create_room(&bob, json!({ "preset": "private_chat" }))
        .await;
    let from = now_token(&server, &alice).await;

    for (query, errcode) in [
        (format!("from={from}&limit=hello"), "M_INVALID_PARAM"),
        (format!("from={from}&limit=-2"), "M_INVALID_PARAM"),
        (format!("from={from}&timeout=hello"), "M_INVALID_PARAM"),
        ("from=nonsense&timeout=0".to_owned(), "M_INVALID_PARAM"),
        // A token from beyond the stream's end was never issued.
        (
            "from=s999999999_0_0&timeout=0".to_owned(),
            "M_INVALID_PARAM",
        ),
        ("room_id=not-a-room&timeout=0".to_owned(), "M_INVALID_PARAM"),
    ] {
        let (status, body) = server.get(&format!("{R0}/events?{query}"), t).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], errcode, "{query}: {body}");
    }
    // Another user's private room cannot be streamed (nor can one that does
    // not exist, alike).
    for room in [private.as_str(), "!unknown:test.local"] {
        let (status, body) = server
            .get(&format!("{R0}/events?room_id={}&timeout=0", enc(room)), t)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    // Guests stream one room at a time.
    let guest = guest(&server).await;
    let (status, body) = server
        .get(&format!("{R0}/events?timeout=0"), Some(&guest.access_token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    let (status, body) = server.get(&format!("{R0}/events?timeout=0"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    // Nothing of bob's room reached alice's stream.
    let body = events(&server, &alice, &format!("from={from}&timeout=0")).await;
    assert!(
        chunk(&body)
            .iter()
            .all(|e| e["room_id"] != private.as_str()),
        "{body}"
    );
}

/// Peeking (spec: "Room Previews"): a user or guest who has not joined a
/// world-readable room reads it with the room `initialSync` and then
/// `/events?room_id=…`, and sees only what was world-readable.
#[tokio::test]
async fn world_readable_rooms_can_be_peeked() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "private" }),
        )
        .await;

    // Before the room is world-readable, neither can look.
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/initialSync", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    set_visibility(&server, &alice, &room, "world_readable").await;
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "public" }),
        )
        .await;
    let guest = guest(&server).await;
    for peeker in [&bob, &guest] {
        let t = Some(peeker.access_token.as_str());
        let (status, snapshot) = server
            .get(&format!("{V3}/rooms/{}/initialSync", enc(&room)), t)
            .await;
        assert_eq!(status, StatusCode::OK, "{snapshot}");
        assert_eq!(snapshot["room_id"], room.as_str());
        assert!(snapshot.get("membership").is_none(), "{snapshot}");
        assert!(snapshot["presence"].is_array(), "{snapshot}");
        // From the change to world_readable on (the first peeker's "live"
        // message is there for the second).
        let messages = snapshot["messages"]["chunk"].as_array().unwrap();
        assert_eq!(messages[0]["type"], "m.room.history_visibility");
        assert_eq!(messages[1]["content"]["body"], "public");
        assert!(messages.len() <= 3, "{snapshot}");
        assert!(
            messages.iter().all(|e| e["content"]["body"] != "private"),
            "{snapshot}"
        );
        assert!(
            snapshot["state"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.create"),
            "{snapshot}"
        );
        let from = snapshot["messages"]["end"].as_str().unwrap().to_owned();
        assert!(snapshot["messages"]["start"].is_string(), "{snapshot}");

        let sent = server
            .send_message(
                &alice,
                &room,
                json!({ "msgtype": "m.text", "body": "live" }),
            )
            .await;
        let body = events(
            &server,
            peeker,
            &format!("room_id={}&from={from}&timeout=5000", enc(&room)),
        )
        .await;
        let got: Vec<&Value> = chunk(&body)
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect();
        assert_eq!(got.len(), 1, "{body}");
        assert_eq!(got[0]["event_id"], sent.as_str());

        // Once the room is no longer world-readable, the peeker is refused.
        if peeker.user_id == guest.user_id {
            let from = body["end"].as_str().unwrap().to_owned();
            set_visibility(&server, &alice, &room, "shared").await;
            server
                .send_message(
                    &alice,
                    &room,
                    json!({ "msgtype": "m.text", "body": "hidden" }),
                )
                .await;
            let (status, body) = server
                .get(
                    &format!("{R0}/events?room_id={}&from={from}&timeout=0", enc(&room)),
                    t,
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            let (status, body) = server
                .get(&format!("{V3}/rooms/{}/initialSync", enc(&room)), t)
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        }
    }
}

/// `GET /initialSync`: joined and invited rooms (and, with `archived`, left
/// ones as they were when left), account data, receipts, presence; its `end`
/// continues with `/events`.
#[tokio::test]
async fn initial_sync_snapshots_every_room() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let t = Some(alice.access_token.as_str());
    let joined = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Joined" }))
        .await;
    let message = server
        .send_message(
            &alice,
            &joined,
            json!({ "msgtype": "m.text", "body": "hello" }),
        )
        .await;
    let user = enc(&alice.user_id);
    server
        .put(
            &format!("{V3}/user/{user}/rooms/{}/tags/u.work", enc(&joined)),
            t,
            json!({}),
        )
        .await;
    server
        .put(
            &format!("{V3}/user/{user}/account_data/my.global.type"),
            t,
            json!({ "a": 1 }),
        )
        .await;
    server
        .post(
            &format!(
                "{V3}/rooms/{}/receipt/m.read/{}",
                enc(&joined),
                enc(&message)
            ),
            t,
            json!({}),
        )
        .await;
    let invited = server.create_room(&bob, json!({})).await;
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&invited)),
            Some(&bob.access_token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let left = server
        .create_room(&bob, json!({ "preset": "public_chat" }))
        .await;
    server.join(&alice, &left).await;
    server
        .send_message(
            &bob,
            &left,
            json!({ "msgtype": "m.text", "body": "before" }),
        )
        .await;
    let (status, _) = server
        .post(&format!("{V3}/rooms/{}/leave", enc(&left)), t, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    server
        .send_message(&bob, &left, json!({ "msgtype": "m.text", "body": "after" }))
        .await;

    let (status, body) = server.get(&format!("{V3}/initialSync?limit=5"), t).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    let room = |id: &str| rooms.iter().find(|r| r["room_id"] == id).cloned();
    assert!(room(&left).is_none(), "left room without archived: {body}");
    let j = room(&joined).expect("joined room");
    assert_eq!(j["membership"], "join");
    assert_eq!(j["visibility"], "private");
    let chunk_ = j["messages"]["chunk"].as_array().unwrap();
    assert!(chunk_.len() <= 5);
    assert_eq!(chunk_.last().unwrap()["event_id"], message.as_str(), "{j}");
    assert!(
        j["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Joined"),
        "{j}"
    );
    assert!(
        j["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == alice.user_id.as_str()
                && e["user_id"] == alice.user_id.as_str()),
        "{j}"
    );
    assert!(
        j["account_data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"].is_object()),
        "{j}"
    );
    let i = room(&invited).expect("invited room");
    assert_eq!(i["membership"], "invite");
    assert_eq!(i["inviter"], bob.user_id.as_str());
    assert_eq!(i["invite"]["state_key"], alice.user_id.as_str());
    assert_eq!(i["invite"]["content"]["membership"], "invite");
    assert!(
        body["account_data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "my.global.type" && e["content"]["a"] == 1),
        "{body}"
    );
    assert!(
        body["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == joined.as_str()
                && r["content"][&message]["m.read"][&alice.user_id].is_object()),
        "{body}"
    );
    assert!(
        body["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["content"]["user_id"] == alice.user_id.as_str()),
        "{body}"
    );

    // Archived: the left room, as it was when alice left.
    let (status, body) = server
        .get(&format!("{V3}/initialSync?limit=2&archived=true"), t)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let l = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == left.as_str())
        .cloned()
        .expect("left room with archived");
    assert_eq!(l["membership"], "leave");
    let chunk_ = l["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk_[0]["content"]["body"], "before", "{l}");
    assert_eq!(chunk_[1]["state_key"], alice.user_id.as_str(), "{l}");
    assert!(
        chunk_.iter().all(|e| e["content"]["body"] != "after"),
        "{l}"
    );

    // The end token continues with /events.
    let end = body["end"].as_str().unwrap().to_owned();
    let sent = server
        .send_message(
            &alice,
            &joined,
            json!({ "msgtype": "m.text", "body": "next" }),
        )
        .await;
    let stream = events(&server, &alice, &format!("from={end}&timeout=5000")).await;
    assert!(
        chunk(&stream)
            .iter()
            .any(|e| e["event_id"] == sent.as_str()),
        "{stream}"
    );

    // Guests have no global initialSync; limit must be a number.
    let guest = guest(&server).await;
    let (status, body) = server
        .get(&format!("{V3}/initialSync"), Some(&guest.access_token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_GUEST_ACCESS_FORBIDDEN");
    let (status, body) = server
        .get(&format!("{V3}/initialSync?limit=hello"), t)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A former member's room `initialSync` shows the room as it was when they
/// left: state and messages up to their leave, no presence or receipts.
#[tokio::test]
async fn room_initial_sync_of_a_departed_room_stops_at_the_leave() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&bob, json!({ "preset": "public_chat" }))
        .await;
    server.join(&alice, &room).await;
    let put_state = |body: &'static str| {
        let server = &server;
        let bob = &bob;
        let room = room.clone();
        async move {
            let (status, _) = server
                .put(
                    &format!("{V3}/rooms/{}/state/madeup.test.state/", enc(&room)),
                    Some(&bob.access_token),
                    json!({ "body": body }),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    put_state("before").await;
    server
        .send_message(
            &bob,
            &room,
            json!({ "msgtype": "m.text", "body": "M before" }),
        )
        .await;
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    put_state("after").await;
    server
        .send_message(
            &bob,
            &room,
            json!({ "msgtype": "m.text", "body": "M after" }),
        )
        .await;

    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/initialSync?limit=2", enc(&room)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "leave");
    let chunk_ = body["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk_.len(), 2, "{body}");
    assert_eq!(chunk_[0]["content"]["body"], "M before");
    assert_eq!(chunk_[1]["content"]["membership"], "leave");
    let state = body["state"].as_array().unwrap();
    let made_up = state
        .iter()
        .find(|e| e["type"] == "madeup.test.state")
        .expect("state before leaving");
    assert_eq!(made_up["content"]["body"], "before");
    assert_eq!(body["presence"], json!([]));
    assert_eq!(body["receipts"], json!([]));

    // A member sees the current room.
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/initialSync", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "join");
    let made_up = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "madeup.test.state")
        .cloned()
        .unwrap();
    assert_eq!(made_up["content"]["body"], "after");
    assert!(
        body["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["content"]["user_id"] == bob.user_id.as_str()),
        "{body}"
    );

    // Someone who never was in this (not world-readable) room: forbidden.
    let carol = server.register("carol", "pw").await;
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/initialSync", enc(&room)),
            Some(&carol.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

/// `GET /events/{eventId}`: the event, for those who may see it.
#[tokio::test]
async fn a_single_event_by_id() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let id = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "mine" }),
        )
        .await;
    let (status, body) = server
        .get(
            &format!("{V3}/events/{}", enc(&id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], id.as_str());
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["content"]["body"], "mine");
    assert_eq!(body["user_id"], alice.user_id.as_str());

    let (status, body) = server
        .get(
            &format!("{V3}/events/{}", enc(&id)),
            Some(&carol.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/events/{}", enc("$unknown-event")),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = server
        .get(&format!("{V3}/events/not-an-id"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}

/// `POST /rooms/{roomId}/send/{eventType}` and `POST /rooms/{roomId}/redact/
/// {eventId}`: Synapse's sends without a transaction ID, held to the same rules
/// as the `PUT`s.
#[tokio::test]
async fn send_and_redact_without_a_transaction_id() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let send = |who: &Login, body: Value| {
        let path = format!("{V3}/rooms/{}/send/m.room.message", enc(&room));
        let token = who.access_token.clone();
        let server = &server;
        async move { server.post(&path, Some(&token), body).await }
    };
    let content = json!({ "msgtype": "m.text", "body": "posted" });
    let (status, first) = send(&alice, content.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // No transaction ID, no idempotency: the same body twice is two events.
    let (status, second) = send(&alice, content).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let first = first["event_id"].as_str().unwrap().to_owned();
    let (status, event) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&first)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], "posted");
    assert_eq!(event["sender"], alice.user_id.as_str());

    // Not in the room: refused; bodies that are not objects: M_BAD_JSON / M_NOT_JSON.
    let (status, body) = send(&bob, json!({ "msgtype": "m.text", "body": "x" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(&alice, json!(["not", "an", "object"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
    let resp = server
        .client
        .post(format!(
            "{}{V3}/rooms/{}/send/m.room.message",
            server.base,
            enc(&room)
        ))
        .bearer_auth(&alice.access_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/send/m.room.message", enc("not-a-room")),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Redacting: bob (joined, no power) may not redact alice's event.
    server.join(&bob, &room).await;
    let redact_path = format!("{V3}/rooms/{}/redact/{}", enc(&room), enc(&first));
    let (status, body) = server
        .post(&redact_path, Some(&bob.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Alice may, with no body at all, and with a reason.
    let (status, body) = server
        .call(Method::POST, &redact_path, Some(&alice.access_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction = body["event_id"].as_str().unwrap().to_owned();
    let (_, event) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&first)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(
        event["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );
    let second = second["event_id"].as_str().unwrap();
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/redact/{}", enc(&room), enc(second)),
            Some(&alice.access_token),
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, redaction) = server
        .get(
            &format!(
                "{V3}/rooms/{}/event/{}",
                enc(&room),
                enc(body["event_id"].as_str().unwrap())
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(redaction["content"]["reason"], "spam", "{redaction}");
    // Where the room version puts it: `content.redacts` from v11 on.
    let redacts = redaction["content"]
        .get("redacts")
        .unwrap_or(&redaction["redacts"]);
    assert_eq!(redacts, second, "{redaction}");
    // An event of another room is not found through this one.
    let other = server.create_room(&alice, json!({})).await;
    let elsewhere = server
        .send_message(&alice, &other, json!({ "msgtype": "m.text", "body": "x" }))
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/redact/{}", enc(&room), enc(&elsewhere)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
