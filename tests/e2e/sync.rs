//! `/sync`: initial and incremental, limits and gaps, long-polling, invites,
//! leaves, filters, lazy-loaded members.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer};

const V3: &str = "/_matrix/client/v3";

async fn room(server: &TestServer, who: &Login, body: Value) -> String {
    let (status, resp) = server
        .post(&format!("{V3}/createRoom"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["room_id"].as_str().unwrap().to_owned()
}

async fn say(server: &TestServer, who: &Login, room: &str, txn: &str, body: &str) -> String {
    let (status, resp) = server
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.access_token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

async fn sync(server: &TestServer, who: &Login, query: &str) -> Value {
    let (status, body) = server
        .get(&format!("{V3}/sync?{query}"), Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn bodies(section: &Value) -> Vec<String> {
    section["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn enc(filter: Value) -> String {
    filter
        .to_string()
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace(':', "%3A")
        .replace(',', "%2C")
        .replace('[', "%5B")
        .replace(']', "%5D")
}

#[tokio::test]
async fn initial_then_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "name": "Chat" }),
    )
    .await;
    server
        .post(
            &format!("{V3}/rooms/{r}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    say(&server, &alice, &r, "1", "one").await;

    let first = sync(&server, &bob, "").await;
    let joined = &first["rooms"]["join"][&r];
    assert_eq!(bodies(joined), vec!["one"]);
    assert_eq!(joined["summary"]["m.joined_member_count"], 2);
    let next = first["next_batch"].as_str().unwrap().to_owned();

    say(&server, &alice, &r, "2", "two").await;
    say(&server, &alice, &r, "3", "three").await;
    let second = sync(&server, &bob, &format!("since={next}")).await;
    let joined = &second["rooms"]["join"][&r];
    assert_eq!(bodies(joined), vec!["two", "three"]);
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["state"]["events"], json!([]));
    let next2 = second["next_batch"].as_str().unwrap().to_owned();
    assert_ne!(next2, next);

    // Nothing new: an immediate sync returns no rooms and the same token.
    let third = sync(&server, &bob, &format!("since={next2}")).await;
    assert!(
        third["rooms"]["join"].as_object().unwrap().is_empty(),
        "{third}"
    );
    assert_eq!(third["next_batch"], next2);

    let (status, body) = server
        .get(&format!("{V3}/sync?since=garbage"), Some(&bob.access_token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn limited_timeline_gives_state_and_a_prev_batch_that_messages_continues() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let r = room(&server, &alice, json!({ "name": "Gap" })).await;
    for i in 0..5 {
        say(&server, &alice, &r, &format!("t{i}"), &format!("m{i}")).await;
    }
    let filter = enc(json!({ "room": { "timeline": { "limit": 2 } } }));
    let first = sync(&server, &alice, &format!("filter={filter}")).await;
    let joined = &first["rooms"]["join"][&r];
    assert_eq!(bodies(joined), vec!["m3", "m4"]);
    assert_eq!(joined["timeline"]["limited"], true);
    // The state before the timeline includes the room's name and creation.
    let types: BTreeSet<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("m.room.create") && types.contains("m.room.name"),
        "{types:?}"
    );
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (_, older) = server
        .get(
            &format!("{V3}/rooms/{r}/messages?dir=b&limit=1&from={prev}"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(older["chunk"][0]["content"]["body"], "m2");

    // A gap after `since`: the state changes in the gap come in `state`.
    let next = first["next_batch"].as_str().unwrap();
    server
        .put(
            &format!("{V3}/rooms/{r}/state/m.room.topic/"),
            Some(&alice.access_token),
            json!({ "topic": "new" }),
        )
        .await;
    for i in 5..9 {
        say(&server, &alice, &r, &format!("t{i}"), &format!("m{i}")).await;
    }
    let gap = sync(&server, &alice, &format!("since={next}&filter={filter}")).await;
    let joined = &gap["rooms"]["join"][&r];
    assert_eq!(joined["timeline"]["limited"], true);
    let state: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(state, vec!["m.room.topic"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_an_event_and_times_out_empty() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server
        .post(
            &format!("{V3}/rooms/{r}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let next = sync(&server, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Times out empty.
    let empty = sync(&server, &bob, &format!("since={next}&timeout=300")).await;
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty());

    // Wakes when Alice speaks (the timeout is far longer than the test).
    let waiter = {
        let server = server.clone();
        let bob = bob.clone();
        let next = next.clone();
        tokio::spawn(
            async move { sync(&server, &bob, &format!("since={next}&timeout=60000")).await },
        )
    };
    // Send once the waiter is parked on the notifier.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.state.notifier.waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sync never started waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    say(&server, &alice, &r, "wake", "wake up").await;
    let woke = waiter.await.unwrap();
    assert_eq!(bodies(&woke["rooms"]["join"][&r]), vec!["wake up"]);
}

#[tokio::test]
async fn invites_joins_and_leaves_move_between_sections() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(
        &server,
        &alice,
        json!({ "name": "Private", "invite": [bob.user_id] }),
    )
    .await;

    let first = sync(&server, &bob, "").await;
    let invite = &first["rooms"]["invite"][&r]["invite_state"]["events"];
    let types: BTreeSet<&str> = invite
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("m.room.name") && types.contains("m.room.member"),
        "{invite}"
    );
    assert!(first["rooms"]["join"].get(&r).is_none());
    let next = first["next_batch"].as_str().unwrap().to_owned();

    server
        .post(
            &format!("{V3}/rooms/{r}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let second = sync(&server, &bob, &format!("since={next}")).await;
    let joined = &second["rooms"]["join"][&r];
    assert!(!joined.is_null(), "{second}");
    // Joined in the window: the full state arrives (before the timeline, or in
    // it: the room's recent history comes along).
    let types: BTreeSet<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains("m.room.create"), "{joined}");
    let next = second["next_batch"].as_str().unwrap().to_owned();

    server
        .post(
            &format!("{V3}/rooms/{r}/kick"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    say(&server, &alice, &r, "after", "bob cannot see this").await;
    let third = sync(&server, &bob, &format!("since={next}")).await;
    let left = &third["rooms"]["leave"][&r];
    let last = left["timeline"]["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"]["membership"], "leave", "{left}");
    assert!(!third.to_string().contains("bob cannot see this"));
    assert!(third["rooms"]["join"].get(&r).is_none());
}

#[tokio::test]
async fn stored_filters_and_lazy_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    for u in [&bob, &carol] {
        server
            .post(
                &format!("{V3}/rooms/{r}/join"),
                Some(&u.access_token),
                json!({}),
            )
            .await;
    }
    say(&server, &bob, &r, "b", "from bob").await;

    let filter =
        json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } });
    let (status, created) = server
        .post(
            &format!("{V3}/user/{}/filter", alice.user_id),
            Some(&alice.access_token),
            filter,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (status, fetched) = server
        .get(
            &format!("{V3}/user/{}/filter/{id}", alice.user_id),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["room"]["timeline"]["limit"], 1);
    // Another user's filters are private.
    let (status, _) = server
        .get(
            &format!("{V3}/user/{}/filter/{id}", alice.user_id),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let synced = sync(&server, &alice, &format!("filter={id}")).await;
    let joined = &synced["rooms"]["join"][&r];
    assert_eq!(bodies(joined), vec!["from bob"]);
    let members: BTreeSet<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    // Bob (the sender) and Alice (the user); not Carol.
    assert_eq!(
        members,
        BTreeSet::from([alice.user_id.as_str(), bob.user_id.as_str()])
    );
}

#[tokio::test]
async fn incremental_sync_across_many_rooms_returns_exactly_the_new_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let mut rooms = Vec::new();
    for _ in 0..20 {
        let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
        server
            .post(
                &format!("{V3}/rooms/{r}/join"),
                Some(&bob.access_token),
                json!({}),
            )
            .await;
        rooms.push(r);
    }
    let next = sync(&server, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sent = BTreeSet::new();
    for (i, r) in rooms.iter().enumerate() {
        for n in 0..10 {
            sent.insert(say(&server, &alice, r, &format!("{i}-{n}"), &format!("{i}-{n}")).await);
        }
    }
    let filter = enc(json!({ "room": { "timeline": { "limit": 50 } } }));
    let delta = sync(&server, &bob, &format!("since={next}&filter={filter}")).await;
    let mut got = BTreeSet::new();
    for (room_id, section) in delta["rooms"]["join"].as_object().unwrap() {
        assert!(rooms.contains(room_id));
        assert_eq!(section["timeline"]["limited"], false);
        for e in section["timeline"]["events"].as_array().unwrap() {
            assert!(
                got.insert(e["event_id"].as_str().unwrap().to_owned()),
                "duplicate {e}"
            );
        }
    }
    assert_eq!(got, sent);
}
