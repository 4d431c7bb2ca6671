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

/// A knock, with nothing else new, ends a long-polling `/sync` of the knocker
/// (it is news: `rooms.knock`), as an invite or a leave does.
#[tokio::test]
async fn a_knock_alone_wakes_a_waiting_sync() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(
        &server,
        &alice,
        json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }),
    )
    .await;
    let next = sync(&server, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiter = {
        let (server, bob, next) = (server.clone(), bob.clone(), next.clone());
        // Far longer than the bound below: only a wake-up answers in time.
        tokio::spawn(
            async move { sync(&server, &bob, &format!("since={next}&timeout=600000")).await },
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.state.notifier.waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sync never started waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, body) = server
        .post(
            &format!("{V3}/knock/{r}"),
            Some(&bob.access_token),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let woke = tokio::time::timeout(std::time::Duration::from_secs(60), waiter)
        .await
        .expect("the knock did not end the waiting sync")
        .unwrap();
    let knock_state = &woke["rooms"]["knock"][&r]["knock_state"]["events"];
    assert!(
        knock_state
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.join_rules")),
        "{woke}"
    );
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

/// Ignoring users (spec: "Ignoring Users"): the ignored user's messages leave
/// `/sync` and `/messages`, their invites are not shown, and their state events
/// still are (the room's state must add up). Someone else's ignore list changes
/// nothing for the others.
#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server.join(&bob, &r).await;
    server.join(&carol, &r).await;
    say(&server, &bob, &r, "b1", "from bob").await;
    say(&server, &carol, &r, "c1", "from carol").await;

    let (status, _) = server
        .put(
            &format!(
                "{V3}/user/{}/account_data/m.ignored_user_list",
                alice.user_id
            ),
            Some(&alice.access_token),
            json!({ "ignored_users": { bob.user_id.clone(): {} } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let first = sync(&server, &alice, "").await;
    let section = &first["rooms"]["join"][&r];
    assert_eq!(bodies(section), vec!["from carol"], "{section}");
    // Bob's join (state) is still there, in the timeline or the state.
    let all = section.to_string();
    assert!(all.contains(&format!("\"state_key\":\"{}\"", bob.user_id)));
    let next = first["next_batch"].as_str().unwrap().to_owned();

    // An incremental sync with only Bob's new message leaves the room out.
    say(&server, &bob, &r, "b2", "bob again").await;
    let inc = sync(&server, &alice, &format!("since={next}&timeout=0")).await;
    assert!(inc["rooms"]["join"].get(&r).is_none(), "{inc}");
    // Carol, who ignores nobody, sees both of Bob's messages.
    let carols = sync(&server, &carol, "").await;
    let b = bodies(&carols["rooms"]["join"][&r]);
    assert!(b.contains(&"from bob".to_owned()) && b.contains(&"bob again".to_owned()));

    // /messages leaves them out too.
    let (status, page) = server
        .get(
            &format!("{V3}/rooms/{r}/messages?dir=b&limit=50"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let texts: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(texts, vec!["from carol"], "{page}");

    // An invite from Bob is not shown; one from Carol is.
    let from_bob = room(&server, &bob, json!({ "invite": [alice.user_id] })).await;
    let from_carol = room(&server, &carol, json!({ "invite": [alice.user_id] })).await;
    let again = sync(&server, &alice, "").await;
    let invites = &again["rooms"]["invite"];
    assert!(invites.get(&from_bob).is_none(), "{invites}");
    assert!(invites.get(&from_carol).is_some(), "{invites}");
}

/// `summary` (spec: "/sync", `RoomSummary`): a room with a name or canonical
/// alias gets the member counts and no `m.heroes`; an unnamed one gets heroes.
/// Counts follow joins and leaves.
#[tokio::test]
async fn room_summary_heroes_only_for_unnamed_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let named = room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "name": "Named" }),
    )
    .await;
    let unnamed = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    for r in [&named, &unnamed] {
        server.join(&bob, r).await;
    }
    let body = sync(&server, &alice, "").await;
    assert_eq!(
        body["rooms"]["join"][&named]["summary"],
        json!({ "m.joined_member_count": 2, "m.invited_member_count": 0 })
    );
    assert_eq!(
        body["rooms"]["join"][&unnamed]["summary"],
        json!({ "m.joined_member_count": 2, "m.invited_member_count": 0,
                "m.heroes": [bob.user_id] })
    );
    // An emptied name makes the room unnamed again.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{named}/state/m.room.name/"),
            Some(&alice.access_token),
            json!({ "name": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = body["next_batch"].as_str().unwrap();
    let inc = sync(&server, &alice, &format!("since={next}&timeout=0")).await;
    assert_eq!(
        inc["rooms"]["join"][&named]["summary"]["m.heroes"],
        json!([bob.user_id])
    );
}

/// Timeline limits: `limit: 0` gives no events and the state; a filtered
/// timeline is `limited` only when another event the filter keeps was left
/// out, not when older events of other types exist (SyTest: "A filtered
/// timeline reaches its limit").
#[tokio::test]
async fn timeline_limits_count_only_what_the_filter_keeps() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "private_chat" })).await;
    let first = say(&server, &alice, &r, "m1", "my message").await;
    for i in 0..12 {
        let (status, _) = server
            .put(
                &format!("{V3}/rooms/{r}/send/a.made.up.filler.type/f{i}"),
                Some(&alice.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let filter = json!({ "room": {
        "timeline": { "limit": 1, "types": ["m.room.message"] },
        "state": { "types": [] } } });
    let body = sync(&server, &alice, &format!("filter={}", enc(filter))).await;
    let timeline = &body["rooms"]["join"][&r]["timeline"];
    assert_eq!(
        timeline["events"].as_array().unwrap().len(),
        1,
        "{timeline}"
    );
    assert_eq!(timeline["events"][0]["event_id"], first.as_str());
    assert_eq!(timeline["limited"], false, "{timeline}");
    // A second message: now one is left out, and the timeline is limited.
    say(&server, &alice, &r, "m2", "second").await;
    let body = sync(
        &server,
        &alice,
        &format!(
            "filter={}",
            enc(json!({ "room": {
        "timeline": { "limit": 1, "types": ["m.room.message"] } } }))
        ),
    )
    .await;
    assert_eq!(body["rooms"]["join"][&r]["timeline"]["limited"], true);

    // `limit: 0`: no events, and the state (here only the members).
    let filter = json!({ "room": {
        "timeline": { "limit": 0 }, "state": { "types": ["m.room.member"] } } });
    let body = sync(&server, &alice, &format!("filter={}", enc(filter))).await;
    let section = &body["rooms"]["join"][&r];
    assert_eq!(section["timeline"]["events"], json!([]), "{section}");
    let state = section["state"]["events"].as_array().unwrap();
    assert_eq!(state.len(), 1, "{section}");
    assert_eq!(state[0]["type"], "m.room.member");
    // Still a `prev_batch`, from which `/messages` pages back to the newest.
    let prev = section["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch with an empty timeline");
    let (status, page) = server
        .get(
            &format!("{V3}/rooms/{r}/messages?dir=b&limit=1&from={prev}"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "second", "{page}");
}

/// A state event that is part of the current state shows in the timeline
/// even where history visibility hides it from the user, as Synapse does
/// (SyTest: "Current state appears in timeline in private history"); hidden
/// messages stay hidden.
#[tokio::test]
async fn current_state_shows_through_hidden_history() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server.join(&bob, &r).await;
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{r}/state/m.room.history_visibility/"),
            Some(&alice.access_token),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = sync(&server, &bob, "").await;
    let next = before["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.join(&carol, &r).await;
    say(&server, &alice, &r, "secret", "while bob was away").await;
    server.join(&bob, &r).await;
    let inc = sync(&server, &bob, &format!("since={next}&timeout=0")).await;
    let section = &inc["rooms"]["join"][&r];
    let timeline = section["timeline"]["events"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == carol.user_id.as_str()
            && e["content"]["membership"] == "join"),
        "{section}"
    );
    assert!(
        !section.to_string().contains("while bob was away"),
        "{section}"
    );
}

/// A left room's `state` is the state before its timeline: all of it when the
/// user joined and left within the window, filtered like a joined room's
/// (SyTest: "When user joins and leaves a room in the same batch, the full
/// state is still included in the next sync"). A profile change in a joined
/// room is not a join: with everything filtered out, the room stays out of an
/// incremental sync (SyTest: "A change to displayname should not result in a
/// full state sync").
#[tokio::test]
async fn left_rooms_carry_state_and_profile_changes_are_not_joins() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let filter = enc(json!({ "room": {
        "timeline": { "types": [] },
        "state": { "types": ["a.madeup.test.state"] },
        "ephemeral": { "types": [] },
        "include_leave": true } }));
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{r}/state/a.madeup.test.state/"),
            Some(&alice.access_token),
            json!({ "my_key": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let first = sync(&server, &bob, &format!("filter={filter}")).await;
    let next = first["next_batch"].as_str().unwrap().to_owned();
    server.join(&bob, &r).await;
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let inc = sync(
        &server,
        &bob,
        &format!("filter={filter}&since={next}&timeout=0"),
    )
    .await;
    let state = inc["rooms"]["leave"][&r]["state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{inc}"))
        .clone();
    assert_eq!(state.len(), 1, "{inc}");
    assert_eq!(state[0]["type"], "a.madeup.test.state");
    assert_eq!(state[0]["content"]["my_key"], 1);

    // Alice changes her display name in the room: filtered out, and no join.
    let first = sync(&server, &alice, &format!("filter={filter}")).await;
    assert_eq!(
        first["rooms"]["join"][&r]["state"]["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let next = first["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{r}/state/m.room.member/{}", alice.user_id),
            Some(&alice.access_token),
            json!({ "membership": "join", "displayname": "boris" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    say(&server, &alice, &r, "w", "to wait on").await;
    let inc = sync(
        &server,
        &alice,
        &format!("filter={filter}&since={next}&timeout=0"),
    )
    .await;
    assert!(inc["rooms"]["join"].get(&r).is_none(), "{inc}");
}
