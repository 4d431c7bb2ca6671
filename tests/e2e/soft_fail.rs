//! Soft failure (spec: "Soft failure"; SyTest `52soft-fail.pl`), with the
//! hostile peer as the remote server: an event allowed where it was sent but
//! not by the room's current state is kept out of the timeline and current
//! state and is never a forward extremity, yet events after it are accepted,
//! and leave no extremity dangling behind it. Events the auth rules reject are
//! held the same way (as Synapse does), so later events may name them too.

use std::collections::BTreeSet;

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc},
    hostile::{HostilePeer, JoinedRoom},
};

async fn extremities(server: &TestServer, room: &str) -> BTreeSet<String> {
    lattice::storage::rooms::forward_extremities(&server.state.db, room)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn set<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

/// Alice changes the power levels with `change`; returns the event's ID.
async fn change_power(
    server: &TestServer,
    alice: &Login,
    room: &str,
    change: impl FnOnce(&mut Value),
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    let (status, mut levels) = server.get(&path, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    change(&mut levels);
    let (status, body) = server.put(&path, Some(&alice.access_token), levels).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// The prev events of a local event, as the room's servers receive it.
async fn prev_events(server: &TestServer, peer: &HostilePeer, event_id: &str) -> BTreeSet<String> {
    let (status, body) = peer
        .request(
            server.name(),
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", enc(event_id)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pdus"][0]["prev_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// An event of the peer's user of `kind` after `prev`, with the auth events
/// of its own position (the room's state at the peer's join).
fn after(
    peer: &HostilePeer,
    room: &JoinedRoom,
    kind: &str,
    body: &str,
    prev: &[&String],
) -> (String, Value) {
    let prev: Vec<String> = prev.iter().map(|p| (*p).clone()).collect();
    peer.event(
        room,
        kind,
        None,
        json!({"body": body}),
        &prev,
        &room.message_auth(),
    )
}

/// SyTest "Inbound federation correctly soft fails events": a message sent
/// on a branch that does not see the power change forbidding messages is
/// soft-failed; an event after it and the power change is accepted, and the
/// soft-failed one never shows.
#[tokio::test]
async fn an_event_forbidden_by_the_current_state_is_soft_failed() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    let join = v.join_id.clone();
    let blocked = change_power(&lattice, &alice, &room, |pl| {
        pl["events"]["m.room.message"] = 50.into();
    })
    .await;

    // After the join only, with the power levels of that point: allowed there.
    let (denied, pdu) = after(&peer, &v, "m.room.message", "denied", &[&join]);
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(
        result[&denied],
        json!({}),
        "soft failure is no error: {result}"
    );
    assert_eq!(
        lattice.event_status(&alice, &room, &denied).await,
        StatusCode::NOT_FOUND
    );
    let soft_failed: (bool, Option<i64>) =
        sqlx::query_as("select rejected, state_group from outlier_events where event_id = $1")
            .bind(&denied)
            .fetch_one(&lattice.state.db)
            .await
            .unwrap();
    assert!(!soft_failed.0, "soft-failed, not rejected");
    assert!(soft_failed.1.is_some(), "kept with its state");
    assert_eq!(extremities(&lattice, &room).await, set([&blocked]));

    // After the soft-failed event and the power change, with the new levels.
    v.advance(&denied);
    let mut auth = v.message_auth();
    auth.retain(|id| Some(id) != v.state_id("m.room.power_levels", "").as_ref());
    auth.push(blocked.clone());
    let (allowed, pdu) = peer.event(
        &v,
        "m.room.other_message_type",
        None,
        json!({"body": "allowed"}),
        &[denied.clone(), blocked.clone()],
        &auth,
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&allowed], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &allowed).await,
        StatusCode::OK
    );
    assert_eq!(extremities(&lattice, &room).await, set([&allowed]));
    let (status, page) = lattice
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(ids.contains(&allowed.as_str()), "{page}");
    assert!(!ids.contains(&denied.as_str()), "{page}");
    peer.stop();
    lattice.stop().await;
}

/// SyTest "Inbound federation accepts a second soft-failed event" and
/// "correctly handles soft failed events as extremities": soft-failed events
/// are never extremities (the allowed message before them stays one), and an
/// event after them replaces the extremities they were built on.
#[tokio::test]
async fn soft_failed_events_are_never_extremities() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let v = peer.join(&lattice, &room, "mallory").await;
    let join = v.join_id.clone();
    let pl1 = change_power(&lattice, &alice, &room, |pl| {
        pl["events"]["test.sf"] = 50.into();
    })
    .await;

    // M1 forks from the join: allowed, an extremity beside PL1.
    let (m1, pdu) = after(&peer, &v, "m.room.message", "M1", &[&join]);
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&m1], json!({}), "{result}");
    assert_eq!(extremities(&lattice, &room).await, set([&pl1, &m1]));

    // Two soft-failed events after M1, one after the other.
    let (sf1, pdu) = after(&peer, &v, "test.sf", "SF1", &[&m1]);
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&sf1], json!({}), "{result}");
    let (sf2, pdu) = after(&peer, &v, "test.sf", "SF2", &[&sf1]);
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&sf2], json!({}), "{result}");
    for id in [&sf1, &sf2] {
        assert_eq!(
            lattice.event_status(&alice, &room, id).await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(extremities(&lattice, &room).await, set([&pl1, &m1]));

    // M2 after PL1 and SF2: it leaves M1 behind as well (through SF1 and
    // SF2), so it is the one extremity and the next local event follows it
    // alone.
    let mut auth = v.message_auth();
    auth.retain(|id| Some(id) != v.state_id("m.room.power_levels", "").as_ref());
    auth.push(pl1.clone());
    let (m2, pdu) = peer.event(
        &v,
        "m.room.message",
        None,
        json!({"body": "M2"}),
        &[pl1.clone(), sf2.clone()],
        &auth,
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&m2], json!({}), "{result}");
    assert_eq!(extremities(&lattice, &room).await, set([&m2]));
    let m3 = lattice
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "M3"}))
        .await;
    assert_eq!(prev_events(&lattice, &peer, &m3).await, set([&m2]));
    peer.stop();
    lattice.stop().await;
}

/// The attack: a state event soft-failed for want of power does not reach the
/// room's state through an allowed event after it.
#[tokio::test]
async fn a_soft_failed_state_event_stays_out_of_the_state() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    change_power(&lattice, &alice, &room, |pl| {
        pl["events"]["m.room.topic"] = 0.into();
    })
    .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    let join = v.join_id.clone();
    let locked = change_power(&lattice, &alice, &room, |pl| {
        pl["events"]["m.room.topic"] = 100.into();
    })
    .await;

    // Allowed where it was sent (topic at level 0 then), not now.
    let (topic, pdu) = peer.event(
        &v,
        "m.room.topic",
        Some(""),
        json!({"topic": "hijacked"}),
        std::slice::from_ref(&join),
        &v.message_auth(),
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&topic], json!({}), "{result}");
    // An allowed message after it and the lock.
    v.advance(&topic);
    let mut auth = v.message_auth();
    auth.retain(|id| Some(id) != v.state_id("m.room.power_levels", "").as_ref());
    auth.push(locked.clone());
    let (message, pdu) = peer.event(
        &v,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "after"}),
        &[topic.clone(), locked.clone()],
        &auth,
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&message], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &message).await,
        StatusCode::OK
    );
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&alice.access_token),
        )
        .await;
    assert_ne!(body["topic"], "hijacked", "{status} {body}");
    peer.stop();
    lattice.stop().await;
}

/// Events the auth rules reject are handled (no `error` in the transaction's
/// answer, as Synapse answers), never shown, never extremities, and an event
/// after one is accepted.
#[tokio::test]
async fn events_after_a_rejected_event_are_accepted() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    // A message naming the join rules among its auth events: not an auth
    // event a message may have (spec: auth events selection), so rejected.
    let mut auth = v.message_auth();
    auth.extend(v.state_id("m.room.join_rules", ""));
    let (bad, pdu) = peer.event(
        &v,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "bad auth"}),
        std::slice::from_ref(&v.latest),
        &auth,
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&bad], json!({}), "handled: {result}");
    let rejected: bool =
        sqlx::query_scalar("select rejected from outlier_events where event_id = $1")
            .bind(&bad)
            .fetch_one(&lattice.state.db)
            .await
            .unwrap();
    assert!(rejected);
    assert_eq!(
        lattice.event_status(&alice, &room, &bad).await,
        StatusCode::NOT_FOUND
    );
    assert!(!extremities(&lattice, &room).await.contains(&bad));
    v.advance(&bad);
    let (good, pdu) = peer.message(&v, "after it");
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&good], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &good).await,
        StatusCode::OK
    );
    assert_eq!(extremities(&lattice, &room).await, set([&good]));
    peer.stop();
    lattice.stop().await;
}

/// The state at an event after a rejected one is the state before the
/// rejected event (it changed nothing), and a rejected event has no state of
/// its own to give: `/state_ids` answers 404 for it (as Synapse).
#[tokio::test]
async fn state_after_a_rejected_event_is_the_state_before_it() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    let before: BTreeSet<String> = v
        .state
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    // A state event from a user who is not in the room: rejected.
    let mut auth = Vec::new();
    auth.extend(v.state_id("m.room.create", ""));
    auth.extend(v.state_id("m.room.power_levels", ""));
    let (bad, pdu) = peer.pdu(
        &v.version,
        json!({
            "room_id": room,
            "sender": peer.user("outsider"),
            "type": "m.room.name",
            "state_key": "",
            "content": { "name": "taken over" },
            "prev_events": [v.latest],
            "auth_events": auth,
            "depth": v.depth + 1,
        }),
    );
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&bad], json!({}), "handled: {result}");
    v.advance(&bad);
    let (good, pdu) = peer.message(&v, "after it");
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&good], json!({}), "{result}");

    let (status, body) = peer.state_ids(&lattice, &room, &bad).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = peer.state_ids(&lattice, &room, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let at_good: BTreeSet<String> = body["pdu_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(at_good, before, "{body}");
    peer.stop();
    lattice.stop().await;
}
