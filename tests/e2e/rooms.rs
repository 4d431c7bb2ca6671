//! Rooms on the event graph, over HTTP: creation, membership, sending, reading,
//! history visibility, redaction, concurrency.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, user_id};

const V3: &str = "/_matrix/client/v3";

async fn create_room(server: &TestServer, who: &Login, body: Value) -> String {
    let (status, resp) = server
        .post(&format!("{V3}/createRoom"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["room_id"].as_str().unwrap().to_owned()
}

async fn send_text(
    server: &TestServer,
    who: &Login,
    room: &str,
    txn: &str,
    body: &str,
) -> (StatusCode, Value) {
    server
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.access_token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
}

/// All message bodies of a room, newest first, paging backwards `page` at a time.
async fn all_messages(server: &TestServer, who: &Login, room: &str, page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("{V3}/rooms/{room}/messages?dir=b&limit={page}");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, body) = server.get(&path, Some(&who.access_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.extend(body["chunk"].as_array().unwrap().iter().cloned());
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn create_room_sets_up_state_for_the_preset() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({ "name": "Lab", "topic": "chat", "preset": "private_chat", "invite": [bob.user_id],
                "room_alias_name": "lab" }),
    )
    .await;
    // v12 room IDs have no server part.
    assert!(room.starts_with('!') && !room.contains(':'), "{room}");

    let (status, state) = server
        .get(
            &format!("{V3}/rooms/{room}/state"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let find = |t: &str, k: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .cloned()
    };
    let create = find("m.room.create", "").expect("create event");
    assert_eq!(create["content"]["room_version"], "12");
    assert_eq!(create["sender"], alice.user_id);
    assert_eq!(
        find("m.room.join_rules", "").unwrap()["content"]["join_rule"],
        "invite"
    );
    assert_eq!(
        find("m.room.history_visibility", "").unwrap()["content"]["history_visibility"],
        "shared"
    );
    assert_eq!(find("m.room.name", "").unwrap()["content"]["name"], "Lab");
    assert_eq!(
        find("m.room.topic", "").unwrap()["content"]["topic"],
        "chat"
    );
    assert_eq!(
        find("m.room.canonical_alias", "").unwrap()["content"]["alias"],
        "#lab:test.local"
    );
    assert_eq!(
        find("m.room.member", &bob.user_id).unwrap()["content"]["membership"],
        "invite"
    );
    let power = find("m.room.power_levels", "").unwrap();
    assert_eq!(power["content"]["invite"], 0);
    // v12: the creator is privileged by the create event, not listed.
    assert!(
        power["content"]["users"].get(&alice.user_id).is_none(),
        "{power}"
    );

    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.name/"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "name": "Lab" }));

    let (status, body) = server
        .get(&format!("{V3}/directory/room/%23lab:test.local"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
}

/// In v12 the room ID is the create event's hash; the same user creating rooms
/// with the same request at the same moment must still get distinct rooms.
#[tokio::test]
async fn identical_rooms_created_at_once_get_distinct_ids() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let path = format!("{V3}/createRoom");
    let creates = (0..8).map(|_| {
        server.post(
            &path,
            Some(&alice.access_token),
            json!({ "preset": "private_chat" }),
        )
    });
    let mut rooms = Vec::new();
    for (status, body) in futures_util::future::join_all(creates).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        rooms.push(body["room_id"].as_str().unwrap().to_owned());
    }
    rooms.sort();
    rooms.dedup();
    assert_eq!(rooms.len(), 8, "{rooms:?}");
    let (status, joined) = server
        .get(&format!("{V3}/joined_rooms"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn older_room_versions_and_unsupported_ones() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"] {
        let room = create_room(
            &server,
            &alice,
            json!({ "room_version": version, "preset": "public_chat" }),
        )
        .await;
        assert!(room.ends_with(":test.local"), "v{version}: {room}");
        let (status, body) = send_text(&server, &alice, &room, "t1", "hello").await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let (_, create) = server
            .get(
                &format!("{V3}/rooms/{room}/state/m.room.create/"),
                Some(&alice.access_token),
            )
            .await;
        assert_eq!(create["room_version"], version);
        // Before v11 the create event names its creator.
        assert_eq!(
            create.get("creator").is_some(),
            version.parse::<u32>().unwrap() < 11,
            "v{version}: {create}"
        );
    }
    let (status, body) = server
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.access_token),
            json!({ "room_version": "13" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION");
}

#[tokio::test]
async fn two_users_chat_and_page_history() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "pub" }),
    )
    .await;

    let (status, body) = server
        .post(
            &format!("{V3}/join/%23pub:test.local"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);

    for i in 0..5 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        let (status, _) =
            send_text(&server, who, &room, &format!("m{i}"), &format!("msg {i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let events = all_messages(&server, &bob, &room, 2).await;
    let bodies: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["msg 4", "msg 3", "msg 2", "msg 1", "msg 0"]);
    // The oldest event is the create event.
    assert_eq!(events.last().unwrap()["type"], "m.room.create");

    // Forwards from the start gives the same events reversed.
    let (_, fwd) = server
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=f&limit=100"),
            Some(&alice.access_token),
        )
        .await;
    let fwd_ids: Vec<&Value> = fwd["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    let back_ids: Vec<&Value> = events.iter().rev().map(|e| &e["event_id"]).collect();
    assert_eq!(fwd_ids, back_ids);

    let (_, joined) = server
        .get(&format!("{V3}/joined_rooms"), Some(&bob.access_token))
        .await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    let (_, members) = server
        .get(
            &format!("{V3}/rooms/{room}/joined_members"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    let (_, members) = server
        .get(
            &format!("{V3}/rooms/{room}/members?membership=join"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2);

    // Lazy-loading returns the senders' member events.
    let (_, page) = server
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=b&limit=2&filter=%7B%22lazy_load_members%22%3Atrue%7D"),
            Some(&bob.access_token),
        )
        .await;
    let members: Vec<&str> = page["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(
        members.contains(&alice.user_id.as_str()) && members.contains(&bob.user_id.as_str()),
        "{page}"
    );
}

#[tokio::test]
async fn txn_id_replays_return_the_same_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let (_, first) = send_text(&server, &alice, &room, "same", "once").await;
    let (_, again) = send_text(&server, &alice, &room, "same", "once").await;
    assert_eq!(first["event_id"], again["event_id"]);
    let messages: Vec<Value> = all_messages(&server, &alice, &room, 50)
        .await
        .into_iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    assert_eq!(messages.len(), 1);
    // Another device's identical txnId is a different transaction.
    let other = Login::from_json(&server.login("alice", "pw").await.1);
    let (_, third) = send_text(&server, &other, &room, "same", "once").await;
    assert_ne!(third["event_id"], first["event_id"]);
}

#[tokio::test]
async fn private_rooms_are_closed_to_non_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let eve = server.register("eve", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({ "preset": "private_chat", "name": "secret" }),
    )
    .await;
    send_text(&server, &alice, &room, "t", "private words").await;
    let eve_t = Some(eve.access_token.as_str());

    for path in [
        format!("{V3}/rooms/{room}/state"),
        format!("{V3}/rooms/{room}/state/m.room.name/"),
        format!("{V3}/rooms/{room}/messages?dir=b"),
        format!("{V3}/rooms/{room}/members"),
        format!("{V3}/rooms/{room}/joined_members"),
        format!("{V3}/rooms/{room}/aliases"),
    ] {
        let (status, body) = server.get(&path, eve_t).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
    let (status, body) = send_text(&server, &eve, &room, "x", "let me in").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .post(&format!("{V3}/rooms/{room}/join"), eve_t, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.name/"),
            eve_t,
            json!({ "name": "pwned" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // An unknown room looks the same as a private one.
    let (status, body) = server
        .get(&format!("{V3}/rooms/!nope:test.local/state"), eve_t)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Event IDs of the room do not leak through /event either: a real event
    // of the room, an unknown event and an unknown room all answer 404
    // M_NOT_FOUND (as Synapse answers /event).
    let (_, page) = server
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=b&limit=1"),
            Some(&alice.access_token),
        )
        .await;
    let event_id = page["chunk"][0]["event_id"].as_str().unwrap();
    for path in [
        format!("{V3}/rooms/{room}/event/{event_id}"),
        format!("{V3}/rooms/{room}/event/$nosuchevent"),
        format!("{V3}/rooms/!nope:test.local/event/{event_id}"),
    ] {
        let (status, body) = server.get(&path, eve_t).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn joined_history_visibility_hides_events_before_the_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({ "preset": "public_chat",
                "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }] }),
    )
    .await;
    send_text(&server, &alice, &room, "a", "before bob").await;
    server
        .post(
            &format!("{V3}/rooms/{room}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    send_text(&server, &alice, &room, "b", "after bob").await;
    let bodies: Vec<String> = all_messages(&server, &bob, &room, 10)
        .await
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(bodies, vec!["after bob"]);
    let alice_sees: Vec<String> = all_messages(&server, &alice, &room, 10)
        .await
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(alice_sees, vec!["after bob", "before bob"]);
}

#[tokio::test]
async fn kick_ban_unban_and_a_banned_user_cannot_rejoin() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let bob_t = Some(bob.access_token.as_str());
    let alice_t = Some(alice.access_token.as_str());
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
            .await
            .0,
        StatusCode::OK
    );

    // Bob (power 0) cannot kick Alice.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{room}/kick"),
            bob_t,
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/kick"),
            alice_t,
            json!({ "user_id": bob.user_id, "reason": "out" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, m) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.member/{}", bob.user_id),
            alice_t,
        )
        .await;
    assert_eq!(m, json!({ "membership": "leave", "reason": "out" }));
    // A kicked user may rejoin a public room.
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
            .await
            .0,
        StatusCode::OK
    );

    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{room}/ban"),
            alice_t,
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = send_text(&server, &bob, &room, "x", "still here?").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Banned users cannot be invited back either.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{room}/invite"),
            alice_t,
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{room}/unban"),
            alice_t,
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
            .await
            .0,
        StatusCode::OK
    );

    // Leave and forget.
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/leave"), bob_t, json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/forget"), bob_t, json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, joined) = server.get(&format!("{V3}/joined_rooms"), bob_t).await;
    assert_eq!(joined["joined_rooms"], json!([]));
}

#[tokio::test]
async fn invite_only_rooms_need_an_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let bob_t = Some(bob.access_token.as_str());
    assert_eq!(
        server
            .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The invitee may not read history yet under `shared`... but may join.
    let (status, body) = server
        .post(&format!("{V3}/rooms/{room}/join"), bob_t, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn redaction_strips_content_and_needs_power_for_others() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server
        .post(
            &format!("{V3}/rooms/{room}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let (_, sent) = send_text(&server, &alice, &room, "r1", "regret").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();

    // Bob may not redact Alice's event.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{event_id}/x1"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{event_id}/x1"),
            Some(&alice.access_token),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction_id = body["event_id"].as_str().unwrap().to_owned();

    let (status, ev) = server
        .get(
            &format!("{V3}/rooms/{room}/event/{event_id}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ev["content"], json!({}), "{ev}");
    assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], redaction_id);
    // As Synapse: the redaction's ID in `redacted_by` too (SyTest reads it).
    assert_eq!(ev["unsigned"]["redacted_by"], redaction_id);
    let all = all_messages(&server, &bob, &room, 50).await;
    assert!(!all.iter().any(|e| e.to_string().contains("regret")));

    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/$nope/x2"),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_event_content_and_sizes() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let big = "x".repeat(70_000);
    let (status, body) = send_text(&server, &alice, &room, "big", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/arr"),
            Some(&alice.access_token),
            json!([1]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Power levels with a non-integer level are refused by the auth rules.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.power_levels/"),
            Some(&alice.access_token),
            json!({ "users": { "@x:test.local": "lots" } }),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    // Nothing was stored half-way: exactly one message-free history.
    let count: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'm.room.message'")
            .fetch_one(&server.state.db)
            .await
            .unwrap();
    assert_eq!(count, 0);
    let extremities: i64 = sqlx::query_scalar("select count(*) from forward_extremities")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert_eq!(extremities, 1);
}

#[tokio::test]
async fn alias_management() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let alias_path = format!("{V3}/directory/room/%23extra:test.local");
    let (status, _) = server
        .put(
            &alias_path,
            Some(&alice.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .put(
            &alias_path,
            Some(&alice.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Bob is not in the room: may not alias it, nor delete Alice's alias.
    let (status, _) = server
        .put(
            &format!("{V3}/directory/room/%23bobs:test.local"),
            Some(&bob.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        server
            .call(Method::DELETE, &alias_path, Some(&bob.access_token), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    let (_, aliases) = server
        .get(
            &format!("{V3}/rooms/{room}/aliases"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(aliases["aliases"], json!(["#extra:test.local"]));

    // Canonical alias must point here.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&alice.access_token),
            json!({ "alias": "#missing:test.local" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_BAD_ALIAS");

    assert_eq!(
        server
            .call(Method::DELETE, &alias_path, Some(&alice.access_token), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(server.get(&alias_path, None).await.0, StatusCode::NOT_FOUND);
}

/// 20 users send 10 messages each, all at once, into one room: exactly 200
/// messages, one forward extremity (no fork), and pagination returns them all in
/// order, each user's messages in the order that user sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_neither_fork_nor_lose_events() {
    let server = TestServer::start_with(|c| c.database.max_connections = 10).await;
    let owner = server.register("owner", "pw").await;
    let room = create_room(&server, &owner, json!({ "preset": "public_chat" })).await;
    let mut users = Vec::new();
    for i in 0..20 {
        let u = server.register(&format!("u{i}"), "pw").await;
        let (status, _) = server
            .post(
                &format!("{V3}/rooms/{room}/join"),
                Some(&u.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        users.push(u);
    }
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for (i, user) in users.iter().cloned().enumerate() {
        let server = server.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let (status, body) =
                    send_text(&server, &user, &room, &format!("t{n}"), &format!("{i}:{n}")).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = all_messages(&server, &owner, &room, 37).await;
    let bodies: Vec<String> = events
        .iter()
        .rev()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 200);
    for i in 0..20 {
        let mine: Vec<&String> = bodies
            .iter()
            .filter(|b| b.starts_with(&format!("{i}:")))
            .collect();
        let expected: Vec<String> = (0..10).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    let extremities: i64 = sqlx::query_scalar("select count(*) from forward_extremities")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert_eq!(extremities, 1);
    let user_ids: Vec<String> = users.iter().map(|u| u.user_id.clone()).collect();
    assert!(user_ids.contains(&user_id("u0")));
}

/// Enough state changes to pass the state-chain bound several times (deltas,
/// rebases onto the snapshot, new snapshots): the state read back is exact.
#[tokio::test]
async fn state_stays_exact_across_many_state_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let token = Some(alice.access_token.as_str());
    for i in 0..150 {
        let (status, body) = server
            .put(
                &format!("{V3}/rooms/{room}/state/org.example.counter/k{}", i % 70),
                token,
                json!({ "n": i }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, state) = server.get(&format!("{V3}/rooms/{room}/state"), token).await;
    let counters: std::collections::BTreeMap<String, i64> = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "org.example.counter")
        .map(|e| {
            (
                e["state_key"].as_str().unwrap().to_owned(),
                e["content"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counters.len(), 70);
    for k in 0..70 {
        // The last write to k{k} was the largest i with i % 70 == k.
        let last = (0..150).filter(|i| i % 70 == k).max().unwrap();
        assert_eq!(counters[&format!("k{k}")], last as i64, "k{k}");
    }
    // The room's other state survived every rebase.
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.join_rules")
    );
    let snapshots: i64 =
        sqlx::query_scalar("select count(*) from state_groups where parent_group is null")
            .fetch_one(&server.state.db)
            .await
            .unwrap();
    let groups: i64 = sqlx::query_scalar("select count(*) from state_groups")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert!(
        groups > 150 && snapshots < groups / 10,
        "{snapshots} snapshots of {groups} groups"
    );
}

#[tokio::test]
async fn knocking_and_restricted_joins_over_http() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let t = Some(alice.access_token.as_str());

    // Knock: Bob knocks, Alice invites him in, he joins.
    let knock_room = create_room(
        &server,
        &alice,
        json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }),
    )
    .await;
    let (status, body) = server
        .post(
            &format!("{V3}/knock/{knock_room}"),
            Some(&bob.access_token),
            json!({ "reason": "hi" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, m) = server
        .get(
            &format!(
                "{V3}/rooms/{knock_room}/state/m.room.member/{}",
                bob.user_id
            ),
            t,
        )
        .await;
    assert_eq!(m["membership"], "knock");
    assert_eq!(
        server
            .post(
                &format!("{V3}/rooms/{knock_room}/join"),
                Some(&bob.access_token),
                json!({})
            )
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    server
        .post(
            &format!("{V3}/rooms/{knock_room}/invite"),
            t,
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(
        server
            .post(
                &format!("{V3}/rooms/{knock_room}/join"),
                Some(&bob.access_token),
                json!({})
            )
            .await
            .0,
        StatusCode::OK
    );

    // Restricted: members of the allowed room may join; others may not.
    let allowed = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server
        .post(
            &format!("{V3}/rooms/{allowed}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let restricted = create_room(
        &server,
        &alice,
        json!({ "initial_state": [{ "type": "m.room.join_rules",
                "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": allowed }] } }] }),
    )
    .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{restricted}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, m) = server
        .get(
            &format!(
                "{V3}/rooms/{restricted}/state/m.room.member/{}",
                bob.user_id
            ),
            t,
        )
        .await;
    assert_eq!(m["join_authorised_via_users_server"], alice.user_id);
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{restricted}/join"),
            Some(&carol.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn profiles_show_in_member_events_and_follow_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, p) = server
        .get(&format!("{V3}/profile/{}", alice.user_id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p, json!({ "displayname": "alice" }));
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server
        .post(
            &format!("{V3}/rooms/{room}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;

    let (status, _) = server
        .put(
            &format!("{V3}/profile/{}/displayname", alice.user_id),
            Some(&alice.access_token),
            json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!("{V3}/profile/{}/avatar_url", alice.user_id),
            Some(&alice.access_token),
            json!({ "avatar_url": "mxc://test.local/abc" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, name) = server
        .get(&format!("{V3}/profile/{}/displayname", alice.user_id), None)
        .await;
    assert_eq!(name["displayname"], "Alice A.");

    let (_, member) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.member/{}", alice.user_id),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(member["displayname"], "Alice A.");
    assert_eq!(member["avatar_url"], "mxc://test.local/abc");
    let (_, joined) = server
        .get(
            &format!("{V3}/rooms/{room}/joined_members"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(joined["joined"][&bob.user_id]["display_name"], "bob");

    let (status, _) = server
        .put(
            &format!("{V3}/profile/{}/displayname", alice.user_id),
            Some(&bob.access_token),
            json!({ "displayname": "pwned" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = server
        .get(&format!("{V3}/profile/@nobody:test.local"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[tokio::test]
async fn setting_state_to_what_it_is_makes_no_new_event() {
    // Synapse's behaviour (SyTest "Setting state twice is idempotent", "Joining
    // room twice is idempotent"): the same sender, key and content answer
    // with the event already there.
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    let token = Some(alice.access_token.as_str());
    let (status, first) = server.put(&path, token, json!({ "topic": "t" })).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = server.put(&path, token, json!({ "topic": "t" })).await;
    assert_eq!(again["event_id"], first["event_id"]);
    // Other content, or another sender, is a new event.
    let (_, changed) = server.put(&path, token, json!({ "topic": "u" })).await;
    assert_ne!(changed["event_id"], first["event_id"]);
    server.join(&bob, &room).await;
    let member = format!(
        "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
        bob.user_id
    );
    let (_, before) = server
        .get(&format!("{member}?format=event"), Some(&bob.access_token))
        .await;
    server.join(&bob, &room).await;
    let (_, after) = server
        .get(&format!("{member}?format=event"), Some(&bob.access_token))
        .await;
    assert!(before["event_id"].is_string(), "{before}");
    assert_eq!(after["event_id"], before["event_id"]);
    // The timeline holds one topic "t" and one join of bob.
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            token,
        )
        .await;
    let events = page["chunk"].as_array().unwrap();
    let topics_t = events
        .iter()
        .filter(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "t")
        .count();
    let joins_of_bob = events
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .count();
    assert_eq!((topics_t, joins_of_bob), (1, 1), "{page}");
}

/// A join body's keys beyond the spec's go into the member event (as Synapse
/// does; SyTest's "can join a room with custom content"), through both join
/// routes, but the keys the server owns cannot be forged that way.
#[tokio::test]
async fn join_with_custom_content_keeps_it_but_not_server_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "custom" }),
    )
    .await;
    let member = |who: &Login| {
        format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
            who.user_id
        )
    };
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob.access_token),
            json!({
                "foo": "bar",
                "reason": "hello",
                "membership": "leave",
                "join_authorised_via_users_server": alice.user_id,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, content) = server.get(&member(&bob), Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["foo"], "bar", "{content}");
    assert_eq!(content["reason"], "hello", "{content}");
    assert_eq!(content["membership"], "join", "{content}");
    assert!(
        content.get("join_authorised_via_users_server").is_none(),
        "{content}"
    );

    // By alias, the same.
    let alias = format!("%23custom:{}", server.state.server_name);
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{alias}"),
            Some(&carol.access_token),
            json!({ "foo": "baz" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = server.get(&member(&carol), Some(&carol.access_token)).await;
    assert_eq!(
        (&content["foo"], &content["membership"]),
        (&json!("baz"), &json!("join")),
        "{content}"
    );
}

/// A user who left still reads the room as it was up to their leave (the spec:
/// "weren't previously a member"); a banned user reads nothing of it, as on
/// Synapse, whose SyTest checks the ban over federation too.
#[tokio::test]
async fn left_user_reads_up_to_the_leave_and_a_banned_user_reads_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let leaver = server.register("leaver", "pw").await;
    let banned = server.register("banned", "pw").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server.join(&leaver, &room).await;
    server.join(&banned, &room).await;
    server
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "before"}),
        )
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/leave"),
            Some(&leaver.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/ban"),
            Some(&alice.access_token),
            json!({ "user_id": banned.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "after"}))
        .await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.topic/"),
            Some(&alice.access_token),
            json!({ "topic": "set after both were gone" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The leaver: history up to the leave, and the state as it was then.
    let bodies = crate::harness::messages(&server, &leaver.access_token, &room).await;
    assert_eq!(bodies, vec!["before"]);
    let (status, topic) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.topic/"),
            Some(&leaver.access_token),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no topic when they left: {topic}"
    );
    let (status, member) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.member/{}", leaver.user_id),
            Some(&leaver.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "leave");

    // The banned user: nothing, neither history from before the ban nor state.
    for path in [
        format!("{V3}/rooms/{room}/messages?dir=b"),
        format!("{V3}/rooms/{room}/state"),
        format!("{V3}/rooms/{room}/state/m.room.member/{}", banned.user_id),
        format!("{V3}/rooms/{room}/members"),
    ] {
        let (status, body) = server.get(&path, Some(&banned.access_token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{path}");
    }
}
