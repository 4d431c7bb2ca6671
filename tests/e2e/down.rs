//! Backoff as users see it (issue #20): a destination failing for long is
//! marked down; what is queued for it stays bounded (the newest 50 PDUs of each
//! room; the latest typing, receipt and presence state), new events do not
//! wake retries before the backoff expires, and a server that comes back
//! catches up on what it missed.

use std::collections::BTreeSet;

use lattice::config::Resource;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{Login, Stopped, TestServer, enc, eventually, messages, wait_for_message},
    hostile::{Answer, HostilePeer},
};

/// Down at the first failure, and `/metrics` on the client listener.
async fn start_server() -> TestServer {
    TestServer::start_federating_with(|config| {
        config.federation.destination_down_after_secs = 0;
        config.listeners[0].resources.push(Resource::Metrics);
    })
    .await
}

async fn metrics(server: &TestServer) -> String {
    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The value of the gauge `name{destination="<destination>"}`, if present.
fn gauge(metrics: &str, name: &str, destination: &str) -> Option<f64> {
    let prefix = format!("{name}{{destination=\"{destination}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

const SEND: &str = "/_matrix/federation/v1/send/";

#[tokio::test]
async fn a_down_destination_keeps_the_newest_pdus_per_room_and_the_latest_ephemeral_state() {
    let a = start_server().await;
    let alice = a.register("alice", "password-a").await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let peer = HostilePeer::start().await;
    // Every transaction fails until the peer is back.
    peer.on(
        Method::PUT,
        SEND,
        Answer::Json(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errcode": "M_UNKNOWN", "error": "down"}),
        ),
    );
    peer.join(&a, &room, "mallory").await;
    a.send_message(&alice, &room, json!({"msgtype": "m.text", "body": "one"}))
        .await;
    eventually("the peer marked down", || async {
        gauge(
            &metrics(&a).await,
            "lattice_federation_destination_down",
            peer.name(),
        ) == Some(1.0)
    })
    .await;
    let attempts_when_down = peer.received(SEND).len();
    assert!(attempts_when_down >= 1);

    // While it is down: sixty more messages, typing on and off, a receipt.
    let sent: Vec<String> = (1..=60).map(|i| format!("m{i}")).collect();
    let mut last = String::new();
    for body in &sent {
        last = a
            .send_message(&alice, &room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    let typing = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(&room),
        enc(&alice.user_id)
    );
    for on in [true, false, true, false] {
        let (status, body) = a
            .put(
                &typing,
                Some(&alice.access_token),
                json!({"typing": on, "timeout": 30000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = a
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&last)
            ),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The queue holds the newest 50 PDUs, one typing state, one receipt (and
    // at most the presence queued when the peer joined), not all 66 items.
    let text = metrics(&a).await;
    let depth = gauge(&text, "lattice_federation_queue_depth", peer.name())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(depth <= 53.0, "queue depth {depth}: {text}");
    // 65 new items did not wake 65 retries: the backoff held (at most the
    // retries its 2, 4 and 8 s steps allow while the test ran).
    let attempts = peer.received(SEND).len();
    assert!(
        attempts <= attempts_when_down + 3,
        "{attempts} attempts after {attempts_when_down}"
    );

    // The peer is back and talks to us: the backoff is cleared, and what is
    // delivered is the newest 50 messages, in order, and the latest ephemeral
    // state.
    peer.on(
        Method::PUT,
        SEND,
        Answer::Json(StatusCode::OK, json!({"pdus": {}})),
    );
    let before = peer.received(SEND).len();
    let (status, body) = peer
        .request(
            a.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                enc(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the queue delivered", || async {
        gauge(
            &metrics(&a).await,
            "lattice_federation_queue_depth",
            peer.name(),
        )
        .unwrap_or(0.0)
            == 0.0
            && peer.received(SEND).len() > before
    })
    .await;
    let delivered: Vec<Value> = peer.received(SEND)[before..]
        .iter()
        .map(|r| r.body.clone())
        .collect();
    let pdus: Vec<&Value> = delivered
        .iter()
        .flat_map(|t| t["pdus"].as_array().into_iter().flatten())
        .collect();
    let bodies: Vec<&str> = pdus
        .iter()
        .filter_map(|p| p["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, sent[10..], "{delivered:?}");
    let edus: Vec<&Value> = delivered
        .iter()
        .flat_map(|t| t["edus"].as_array().into_iter().flatten())
        .collect();
    let typing: Vec<&&Value> = edus
        .iter()
        .filter(|e| e["edu_type"] == "m.typing")
        .collect();
    assert_eq!(typing.len(), 1, "{edus:?}");
    assert_eq!(typing[0]["content"]["typing"], false, "{edus:?}");
    let receipts: Vec<&&Value> = edus
        .iter()
        .filter(|e| e["edu_type"] == "m.receipt")
        .collect();
    assert_eq!(receipts.len(), 1, "{edus:?}");
    assert_eq!(
        receipts[0]["content"][&room]["m.read"][&alice.user_id]["event_ids"],
        json!([last])
    );
    // A successful delivery: no longer down.
    eventually("the peer no longer down", || async {
        gauge(
            &metrics(&a).await,
            "lattice_federation_destination_down",
            peer.name(),
        )
        .is_none()
    })
    .await;
    peer.stop();
    a.stop().await;
}

/// The collapsed queue is safe: a Lattice server that was down while a room
/// went on receives the newest event, fetches the ones between, and its user
/// reads all of them.
#[tokio::test]
async fn a_server_back_from_down_catches_up_on_what_it_missed() {
    let (a, b, room, alice, bob) = shared_room(json!({"preset": "public_chat"})).await;
    // B goes away; A keeps sending, fails, marks it down.
    let sent = missed(15);
    let (stopped, b_name) = away_while_a_sends(&a, b, &alice, &room, &sent).await;
    // Fifteen messages, fewer than the 50 kept per room: all still queued
    // (plus at most a few EDUs).
    let text = metrics(&a).await;
    let depth = gauge(&text, "lattice_federation_queue_depth", &b_name).unwrap_or(0.0);
    assert!(
        (15.0..=18.0).contains(&depth),
        "queue depth {depth}: {text}"
    );

    // B is back; its user speaks, so A hears from B and retries at once.
    let b = stopped.start().await;
    b.send_message(&bob, &room, json!({"msgtype": "m.text", "body": "back"}))
        .await;
    eventually("every missed message readable on B", || async {
        let seen: BTreeSet<String> = messages(&b, &bob.access_token, &room)
            .await
            .into_iter()
            .collect();
        sent.iter().all(|m| seen.contains(m))
    })
    .await;
    eventually("B no longer down on A", || async {
        gauge(
            &metrics(&a).await,
            "lattice_federation_destination_down",
            &b_name,
        )
        .is_none()
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Every message body of `room` a user reads by paging `/messages` backwards
/// from the newest event with `limit`, following `end` (as matrix-js-sdk and
/// Element do), oldest first.
async fn page_back_all(server: &TestServer, token: &str, room: &str, limit: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..200 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room)
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        bodies.extend(
            body["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)),
        );
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => {
                bodies.reverse();
                return bodies;
            }
        }
    }
    panic!("paging never reached the start of the room");
}

/// A (marking destinations down at once) and a federating B sharing a room
/// `alice` of A made with `create`; `bob` of B joined and read "before".
async fn shared_room(create: Value) -> (TestServer, TestServer, String, Login, Login) {
    let a = start_server().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a.create_room(&alice, create).await;
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(a.name())
            ),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "before"}),
    )
    .await;
    wait_for_message(&b, &bob, &room, "before").await;

    (a, b, room, alice, bob)
}

/// B is stopped while `alice` sends `sent` into `room`, until A marks B down;
/// B's stopped state and its name.
async fn away_while_a_sends(
    a: &TestServer,
    b: TestServer,
    alice: &Login,
    room: &str,
    sent: &[String],
) -> (Stopped, String) {
    let b_name = b.name().to_owned();
    let stopped = b.stop_for_now().await;
    for body in sent {
        a.send_message(alice, room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    eventually("B marked down", || async {
        gauge(
            &metrics(a).await,
            "lattice_federation_destination_down",
            &b_name,
        ) == Some(1.0)
    })
    .await;
    (stopped, b_name)
}

/// The bodies of `n` messages sent while B is away.
fn missed(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("missed {i}")).collect()
}

/// A and B share a room made with `create` (B's `bob` joined and read
/// "before"); B is stopped while alice sends `sent`, then started, and hears
/// the newest of them (B's typing reaches A, which retries B at once).
async fn b_misses(
    create: Value,
    sent: &[String],
) -> (TestServer, TestServer, String, Login, Login) {
    let (a, b, room, alice, bob) = shared_room(create).await;
    let (stopped, _) = away_while_a_sends(&a, b, &alice, &room, sent).await;

    let b = stopped.start().await;
    // Typing adds no event to the room (no fork); its EDU tells A B is up.
    let (status, body) = b
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
            Some(&bob.access_token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let newest = sent.last().unwrap().clone();
    eventually("the newest message on B", || async {
        let (status, body) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                    enc(&room)
                ),
                Some(&bob.access_token),
            )
            .await;
        status == StatusCode::OK && body["chunk"][0]["content"]["body"] == json!(newest)
    })
    .await;
    (a, b, room, alice, bob)
}

/// The gap left by a long absence (more than the 50 PDUs a down destination
/// keeps, more than `/get_missing_events` reaches) is filled from `/backfill`
/// when B's user pages back to it: all 80 missed messages, in order, each
/// once, paging with `end` as clients do; the room's current state is A's.
#[tokio::test]
async fn a_server_back_from_a_long_absence_backfills_the_gap_in_order() {
    let sent = missed(80);
    let (a, b, room, alice, bob) = b_misses(json!({"preset": "public_chat"}), &sent).await;
    let state_before = crate::harness::current_state(&b, &bob, &room).await;
    for limit in [7, 30] {
        let read = page_back_all(&b, &bob.access_token, &room, limit).await;
        let mut want = vec!["before".to_owned()];
        want.extend(sent.iter().cloned());
        assert_eq!(read, want, "limit {limit}");
    }
    // Filling history changed no current state, and B's current state is A's.
    assert_eq!(
        crate::harness::current_state(&b, &bob, &room).await,
        state_before
    );
    assert_eq!(
        crate::harness::current_state(&a, &alice, &room).await,
        state_before
    );
    a.stop().await;
    b.stop().await;
}

/// History visibility holds for a filled gap: in a `joined` room, carol, who
/// joins on B after the gap, reads nothing from before her join through it,
/// while bob, joined all along, reads all of it.
#[tokio::test]
async fn a_backfilled_gap_keeps_joined_history_visibility() {
    let sent = missed(60);
    let (a, b, room, _alice, bob) = b_misses(
        json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }],
        }),
        &sent,
    )
    .await;
    let carol = b.register("carol", "password-c").await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&carol.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.send_message(
        &carol,
        &room,
        json!({"msgtype": "m.text", "body": "carol here"}),
    )
    .await;
    // Carol pages first, so the gap is filled on her page.
    let read = page_back_all(&b, &carol.access_token, &room, 20).await;
    assert_eq!(read, vec!["carol here".to_owned()]);
    let read = page_back_all(&b, &bob.access_token, &room, 20).await;
    let mut want = vec!["before".to_owned()];
    want.extend(sent.iter().cloned());
    want.push("carol here".to_owned());
    assert_eq!(read, want);
    // And carol still reads none of it now that it is held.
    let read = page_back_all(&b, &carol.access_token, &room, 50).await;
    assert_eq!(read, vec!["carol here".to_owned()]);
    a.stop().await;
    b.stop().await;
}
