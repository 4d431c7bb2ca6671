//! A room's first sync after joining, invites, and lazy-loaded members, over
//! `/sync` and sliding sync:
//! - a newly joined room carries the recent history the joiner may see (per
//!   history visibility), `limited`, and a `prev_batch` that `/messages`
//!   continues; history they may not see never shows, however they read;
//! - an invite's stripped state carries the inviter's member event;
//! - lazy loading sends the member events of the timeline's senders, and not
//!   again to a client that has them.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const V3: &str = "/_matrix/client/v3";
const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn msg(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

/// createRoom with a history visibility.
async fn room_with_history(server: &TestServer, who: &Login, visibility: &str) -> String {
    server
        .create_room(
            who,
            json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility", "state_key": "",
                    "content": { "history_visibility": visibility },
                }],
            }),
        )
        .await
}

async fn sync(server: &TestServer, who: &Login, since: Option<&str>, filter: &Value) -> Value {
    let mut path = format!("{V3}/sync?filter={}", enc(&filter.to_string()));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

fn limit(n: u64) -> Value {
    json!({ "room": { "timeline": { "limit": n } } })
}

fn lazy(n: u64) -> Value {
    json!({ "room": { "timeline": { "limit": n }, "state": { "lazy_load_members": true } } })
}

/// Message bodies among events, in order.
fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The `m.room.member` events among events, by state key.
fn members(events: &Value) -> BTreeMap<String, Value> {
    events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// `/messages` backwards from a token: the chunk.
async fn page_back(server: &TestServer, who: &Login, room: &str, from: &str) -> Value {
    let (status, body) = server
        .get(
            &format!(
                "{V3}/rooms/{}/messages?dir=b&limit=50&from={}",
                enc(room),
                enc(from)
            ),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"].clone()
}

async fn slide(server: &TestServer, who: &Login, pos: Option<&str>, body: Value) -> Value {
    let query = pos.map(|p| format!("?pos={p}")).unwrap_or_default();
    let (status, response) = server
        .post(&format!("{SLIDING}{query}"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

fn sliding_list(conn: &str, timeline_limit: u64, required_state: Value) -> Value {
    json!({
        "conn_id": conn,
        "lists": { "all": {
            "ranges": [[0, 20]],
            "timeline_limit": timeline_limit,
            "required_state": required_state,
        } },
    })
}

async fn set_name(server: &TestServer, who: &Login, name: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&who.user_id)),
            Some(&who.access_token),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn leave(server: &TestServer, who: &Login, room: &str) {
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(room)),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_joiner_sees_shared_history_in_the_first_sync_after_joining() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = room_with_history(&server, &alice, "shared").await;
    for i in 1..=5 {
        server
            .send_message(&alice, &room, msg(&format!("m{i}")))
            .await;
    }
    // Bob has been syncing: his token is from after all of that.
    let t0 = next_batch(&sync(&server, &bob, None, &limit(3)).await);
    server.join(&bob, &room).await;

    let first = sync(&server, &bob, Some(&t0), &limit(3)).await;
    let joined = &first["rooms"]["join"][&room];
    let timeline = &joined["timeline"];
    assert_eq!(bodies(&timeline["events"]), vec!["m4", "m5"], "{joined}");
    let last = timeline["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["state_key"], bob.user_id.as_str(), "{joined}");
    assert_eq!(last["content"]["membership"], "join");
    assert_eq!(timeline["limited"], true, "{joined}");
    // The full state before the timeline.
    let state = joined["state"]["events"].as_array().unwrap();
    assert!(
        state.iter().any(|e| e["type"] == "m.room.create"),
        "{joined}"
    );
    assert!(
        members(&joined["state"]["events"]).contains_key(&alice.user_id),
        "{joined}"
    );

    // prev_batch continues into the earlier history.
    let prev = timeline["prev_batch"].as_str().expect("prev_batch");
    let chunk = page_back(&server, &bob, &room, prev).await;
    assert_eq!(bodies(&chunk), vec!["m3", "m2", "m1"], "{chunk}");

    // The room is new only once: the next sync is an ordinary one.
    let t1 = next_batch(&first);
    server.send_message(&alice, &room, msg("m6")).await;
    let second = sync(&server, &bob, Some(&t1), &limit(3)).await;
    let joined = &second["rooms"]["join"][&room];
    assert_eq!(
        bodies(&joined["timeline"]["events"]),
        vec!["m6"],
        "{joined}"
    );
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["state"]["events"], json!([]));

    // A member changing their profile is not newly joined.
    let t2 = next_batch(&second);
    set_name(&server, &bob, "Bobby").await;
    let third = sync(&server, &bob, Some(&t2), &limit(3)).await;
    let joined = &third["rooms"]["join"][&room];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{joined}");
    assert_eq!(events[0]["content"]["displayname"], "Bobby");
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    assert_eq!(joined["state"]["events"], json!([]));
}

/// The attack: history from before the join in a `joined` room never reaches
/// the joiner — not in the first sync, not by paging from its `prev_batch`,
/// not through sliding sync.
#[tokio::test]
async fn joined_history_never_reaches_the_joiner() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = room_with_history(&server, &alice, "joined").await;
    for i in 1..=3 {
        server
            .send_message(&alice, &room, msg(&format!("secret {i}")))
            .await;
    }
    let t0 = next_batch(&sync(&server, &bob, None, &limit(10)).await);
    server.join(&bob, &room).await;
    server.send_message(&alice, &room, msg("after")).await;

    let first = sync(&server, &bob, Some(&t0), &limit(10)).await;
    assert!(!first.to_string().contains("secret"), "{first}");
    let timeline = &first["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(&timeline["events"]), vec!["after"], "{timeline}");
    // (The room's first events, from before its history visibility was set,
    // are `shared` by default: those show.)
    assert!(
        members(&timeline["events"])
            .get(&bob.user_id)
            .is_some_and(|e| e["content"]["membership"] == "join"),
        "{timeline}"
    );
    assert_eq!(timeline["limited"], true);
    let prev = timeline["prev_batch"].as_str().expect("prev_batch");
    let chunk = page_back(&server, &bob, &room, prev).await;
    assert!(!chunk.to_string().contains("secret"), "{chunk}");
    assert_eq!(
        crate::harness::messages(&server, &bob.access_token, &room).await,
        vec!["after"]
    );

    let sliding = slide(
        &server,
        &bob,
        None,
        sliding_list("joiner", 10, json!([["m.room.member", "$LAZY"]])),
    )
    .await;
    let section = &sliding["rooms"][&room];
    assert_eq!(section["initial"], true, "{sliding}");
    assert!(!sliding.to_string().contains("secret"), "{sliding}");
    assert_eq!(bodies(&section["timeline"]), vec!["after"], "{section}");
    let prev = section["prev_batch"].as_str().expect("prev_batch");
    let chunk = page_back(&server, &bob, &room, prev).await;
    assert!(!chunk.to_string().contains("secret"), "{chunk}");
}

/// Rejoining a `joined` room: what came while the user was away is hidden,
/// and does not crowd out of the timeline what they saw before they left.
#[tokio::test]
async fn a_rejoiner_gets_a_full_timeline_of_what_they_may_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = room_with_history(&server, &alice, "joined").await;
    server.join(&bob, &room).await;
    server.send_message(&alice, &room, msg("seen 1")).await;
    server.send_message(&alice, &room, msg("seen 2")).await;
    leave(&server, &bob, &room).await;
    for i in 1..=12 {
        server
            .send_message(&alice, &room, msg(&format!("away {i}")))
            .await;
    }
    let t0 = next_batch(&sync(&server, &bob, None, &limit(3)).await);
    server.join(&bob, &room).await;

    let first = sync(&server, &bob, Some(&t0), &limit(3)).await;
    assert!(!first.to_string().contains("away"), "{first}");
    let timeline = &first["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        bodies(&timeline["events"]),
        vec!["seen 1", "seen 2"],
        "{timeline}"
    );
    assert_eq!(timeline["events"].as_array().unwrap().len(), 3);
    assert_eq!(timeline["events"][2]["content"]["membership"], "join");
    assert_eq!(timeline["limited"], true);

    // Sliding sync shows the user's own membership changes too.
    let sliding = slide(&server, &bob, None, sliding_list("rejoin", 3, json!([]))).await;
    assert!(!sliding.to_string().contains("away"), "{sliding}");
    let events = sliding["rooms"][&room]["timeline"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{sliding}");
    assert_eq!(events[0]["content"]["body"], "seen 2");
    assert_eq!(events[1]["content"]["membership"], "leave");
    assert_eq!(events[2]["content"]["membership"], "join");
    assert_eq!(sliding["rooms"][&room]["limited"], true);
}

#[tokio::test]
async fn an_invite_carries_the_inviters_member_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    set_name(&server, &alice, "Alice Liddell").await;
    let room = server
        .create_room(
            &alice,
            json!({ "name": "Tea party", "invite": [bob.user_id] }),
        )
        .await;
    let check = |state: &Value| {
        let by_key = members(state);
        let inviter = by_key
            .get(&alice.user_id)
            .unwrap_or_else(|| panic!("{state}"));
        assert_eq!(
            inviter["content"]["displayname"], "Alice Liddell",
            "{state}"
        );
        assert_eq!(inviter["content"]["membership"], "join");
        assert_eq!(inviter["sender"], alice.user_id.as_str());
        let invitee = by_key
            .get(&bob.user_id)
            .unwrap_or_else(|| panic!("{state}"));
        assert_eq!(invitee["content"]["membership"], "invite");
        assert_eq!(invitee["sender"], alice.user_id.as_str());
        // Stripped: no event ID, no timestamp.
        assert!(inviter.get("event_id").is_none(), "{inviter}");
        let types: Vec<&str> = state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"m.room.create") && types.contains(&"m.room.name"),
            "{state}"
        );
    };

    let synced = sync(&server, &bob, None, &limit(10)).await;
    check(&synced["rooms"]["invite"][&room]["invite_state"]["events"]);

    let sliding = slide(
        &server,
        &bob,
        None,
        sliding_list("invites", 1, json!([["m.room.member", "$LAZY"]])),
    )
    .await;
    check(&sliding["rooms"][&room]["invite_state"]);
}

#[tokio::test]
async fn lazy_loaded_members_cover_the_timeline_senders_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    set_name(&server, &alice, "Alice Liddell").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "invite": [bob.user_id] }),
        )
        .await;
    let t0 = next_batch(&sync(&server, &bob, None, &lazy(1)).await);
    server.join(&bob, &room).await;

    // Newly joined, a timeline of one (his join): only his own member event.
    let s1 = sync(&server, &bob, Some(&t0), &lazy(1)).await;
    let joined = &s1["rooms"]["join"][&room];
    let state = members(&joined["state"]["events"]);
    assert!(state.keys().all(|k| *k == bob.user_id), "{joined}");
    let t1 = next_batch(&s1);

    // The inviter speaks: her member event comes with it.
    server.send_message(&alice, &room, msg("hi")).await;
    let s2 = sync(&server, &bob, Some(&t1), &lazy(1)).await;
    let joined = &s2["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), vec!["hi"]);
    assert_eq!(joined["timeline"]["limited"], false);
    let state = members(&joined["state"]["events"]);
    assert_eq!(
        state.keys().collect::<Vec<_>>(),
        vec![&alice.user_id],
        "{joined}"
    );
    assert_eq!(
        state[&alice.user_id]["content"]["displayname"],
        "Alice Liddell"
    );
    // The same request again (as after a lost response): sent again.
    let again = sync(&server, &bob, Some(&t1), &lazy(1)).await;
    assert!(
        members(&again["rooms"]["join"][&room]["state"]["events"]).contains_key(&alice.user_id),
        "{again}"
    );
    let t2 = next_batch(&s2);

    // She speaks again: the client has her member event.
    server.send_message(&alice, &room, msg("again")).await;
    let s3 = sync(&server, &bob, Some(&t2), &lazy(1)).await;
    let joined = &s3["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), vec!["again"]);
    assert_eq!(joined["state"]["events"], json!([]), "{joined}");
    // Unless the filter asks for redundant members.
    let redundant = json!({ "room": {
        "timeline": { "limit": 1 },
        "state": { "lazy_load_members": true, "include_redundant_members": true },
    } });
    let again = sync(&server, &bob, Some(&t2), &redundant).await;
    assert!(
        members(&again["rooms"]["join"][&room]["state"]["events"]).contains_key(&alice.user_id),
        "{again}"
    );
    let t3 = next_batch(&s3);

    // A new member joins and speaks, beyond the timeline's limit: their
    // member event is in the state; Alice's is not sent again.
    server.join(&carol, &room).await;
    server.send_message(&carol, &room, msg("carol here")).await;
    let s4 = sync(&server, &bob, Some(&t3), &lazy(1)).await;
    let joined = &s4["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), vec!["carol here"]);
    assert_eq!(joined["timeline"]["limited"], true);
    let state = members(&joined["state"]["events"]);
    assert!(state.contains_key(&carol.user_id), "{joined}");
    assert!(!state.contains_key(&alice.user_id), "{joined}");

    // Another device of Bob's starts afresh: its initial sync has the members
    // its timeline needs, and its own.
    let (status, login) = server.login("bob", "pw").await;
    assert_eq!(status, StatusCode::OK);
    let other = Login::from_json(&login);
    server.send_message(&alice, &room, msg("to both")).await;
    let initial = sync(&server, &other, None, &lazy(1)).await;
    let state = members(&initial["rooms"]["join"][&room]["state"]["events"]);
    assert_eq!(
        state.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![alice.user_id.clone(), bob.user_id.clone()];
            v.sort();
            v
        },
        "{initial}"
    );
}

#[tokio::test]
async fn lazy_loaded_members_cover_the_timeline_senders_in_sliding_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    set_name(&server, &alice, "Alice Liddell").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "invite": [bob.user_id] }),
        )
        .await;
    let request = || sliding_list("lazy", 1, json!([["m.room.member", "$LAZY"]]));
    let first = slide(&server, &bob, None, request()).await;
    assert!(first["rooms"][&room]["invite_state"].is_array(), "{first}");
    let pos = first["pos"].as_str().unwrap().to_owned();
    server.join(&bob, &room).await;

    let joined = slide(&server, &bob, Some(&pos), request()).await;
    let section = &joined["rooms"][&room];
    assert_eq!(section["initial"], true, "{joined}");
    let state = members(&section["required_state"]);
    assert!(state.keys().all(|k| *k == bob.user_id), "{section}");
    let pos = joined["pos"].as_str().unwrap().to_owned();

    server.send_message(&alice, &room, msg("hi")).await;
    let next = slide(&server, &bob, Some(&pos), request()).await;
    let section = &next["rooms"][&room];
    assert_eq!(bodies(&section["timeline"]), vec!["hi"], "{next}");
    let state = members(&section["required_state"]);
    assert_eq!(
        state
            .get(&alice.user_id)
            .map(|e| e["content"]["displayname"].clone()),
        Some(json!("Alice Liddell")),
        "{section}"
    );
    let pos = next["pos"].as_str().unwrap().to_owned();

    server.send_message(&alice, &room, msg("again")).await;
    let later = slide(&server, &bob, Some(&pos), request()).await;
    let section = &later["rooms"][&room];
    assert_eq!(bodies(&section["timeline"]), vec!["again"], "{later}");
    // No member events: ruma's response type (which matrix-rust-sdk reads)
    // leaves an empty `required_state` out.
    assert!(
        section
            .get("required_state")
            .is_none_or(|s| members(s).is_empty()),
        "{section}"
    );
}
