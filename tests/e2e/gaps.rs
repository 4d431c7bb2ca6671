//! Gaps `/get_missing_events` cannot fill (spec "Checks performed on receipt of
//! a PDU"; SyTest `50federation/36state.pl`): an event fetched to fill a gap
//! whose own prev events stay unknown gets its state from its sender's
//! `/state_ids` — and a sender that lies there (a made-up power levels event,
//! another room's events, the wrong event for an ID) does not take the room.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::http::Method;
use lattice::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc},
    hostile::{Answer, HostilePeer, JoinedRoom},
};

/// Serves `GET /_matrix/federation/v1/event/{id}` from `events`.
/// The peer answers `/get_missing_events` with `missing` and `/state_ids`
/// with `state` (no auth chain): a gap the missing events do not close.
fn answer_gap(peer: &HostilePeer, missing: Vec<Value>, state: Vec<String>) {
    peer.on(
        Method::POST,
        "/_matrix/federation/v1/get_missing_events/",
        Answer::Json(StatusCode::OK, json!({ "events": missing })),
    );
    peer.on(
        Method::GET,
        "/_matrix/federation/v1/state_ids/",
        Answer::Json(
            StatusCode::OK,
            json!({"pdu_ids": state, "auth_chain_ids": []}),
        ),
    );
}

fn serve_events(peer: &HostilePeer, events: HashMap<String, Value>) {
    let origin = peer.name().to_owned();
    peer.on(
        Method::GET,
        "/_matrix/federation/v1/event/",
        Answer::With(Arc::new(move |path, _| {
            let id = path.rsplit('/').next().unwrap_or("");
            let id = urlencoding_decode(id);
            match events.get(&id) {
                Some(pdu) => Answer::Json(
                    StatusCode::OK,
                    json!({"origin": origin, "origin_server_ts": 0, "pdus": [pdu]}),
                ),
                None => Answer::Json(
                    StatusCode::NOT_FOUND,
                    json!({"errcode": "M_NOT_FOUND", "error": "no such event"}),
                ),
            }
        })),
    );
}

/// Undoes the percent-encoding of a path segment.
fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An event ID no server has an event for.
fn unknown_event_id(version: &str, peer: &HostilePeer) -> String {
    if version == "1" {
        format!("$nowhere:{}", peer.name())
    } else {
        "$nowhere0000000000000000000000000000000000000".into()
    }
}

/// The IDs of the room's state as the peer knew it at its join.
fn state_ids(room: &JoinedRoom) -> Vec<String> {
    room.state
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn state_event(server: &TestServer, who: &Login, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{key}?format=event"),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}/{key}: {body}");
    body
}

/// C is sent; its prev X is missing and handed over by `/get_missing_events`;
/// X's prev Y is unknown too. Lattice asks for the state at Y, fetches what it
/// lacks (Y and a state event T that only that state holds), and accepts X and
/// C with the resolved state; a pushed event with an open gap is refused
/// without such a request.
#[tokio::test]
async fn a_gap_is_filled_with_the_state_after_the_missing_event() {
    for version in ["10", "1"] {
        let lattice = TestServer::start_federating().await;
        let peer = HostilePeer::start().await;
        let alice = lattice.register("alice", "password-a").await;
        let mallory = peer.user("mallory");
        let room = lattice
            .create_room(
                &alice,
                json!({
                    "preset": "public_chat",
                    "room_version": version,
                    "power_level_content_override": {"users": {alice.user_id.clone(): 100, mallory: 50}},
                }),
            )
            .await;
        let mut v = peer.join(&lattice, &room, "mallory").await;
        let auth = v.message_auth();
        let join = v.latest.clone();

        let (t, pdu_t) = peer.event(
            &v,
            "org.example.state",
            Some("T"),
            json!({"only": "at the gap"}),
            std::slice::from_ref(&join),
            &auth,
        );
        let (y, pdu_y) = peer.event(
            &v,
            "org.example.state",
            Some("Y"),
            json!({"body": "y"}),
            std::slice::from_ref(&join),
            &auth,
        );
        v.advance(&y);
        let (x, pdu_x) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "x"}),
            &[join.clone(), y.clone()],
            &auth,
        );
        v.advance(&x);
        let (c, pdu_c) = peer.message(&v, "c");

        let mut at_y = state_ids(&v);
        at_y.push(t.clone());
        serve_events(
            &peer,
            HashMap::from([(t.clone(), pdu_t), (y.clone(), pdu_y)]),
        );
        answer_gap(&peer, vec![pdu_x], at_y);
        let result = peer.send(&lattice, vec![pdu_c]).await;
        assert_eq!(result[&c], json!({}), "v{version}: {result}");
        let asked = peer.received("/_matrix/federation/v1/state_ids/");
        assert_eq!(asked.len(), 1, "v{version}: {asked:?}");
        assert!(asked[0].path.contains(&enc(&y)), "{asked:?}");
        for id in [&x, &c] {
            assert_eq!(
                lattice.event_status(&alice, &room, id).await,
                StatusCode::OK,
                "v{version}: {id}"
            );
        }
        // The state after the gap holds Y and T; power stays alice's.
        for (key, id) in [("Y", &y), ("T", &t)] {
            let ev = state_event(&lattice, &alice, &room, "org.example.state", key).await;
            assert_eq!(ev["event_id"], json!(id), "v{version}: {ev}");
        }
        let pl = state_event(&lattice, &alice, &room, "m.room.power_levels", "").await;
        assert_eq!(pl["content"]["users"][&alice.user_id], json!(100), "{pl}");
        // Over federation: the state at X holds Y and T (the gap's state
        // counts for the events after it); Y itself, held as an outlier, has
        // no state to give (404, as Synapse answers).
        let (status, body) = peer.state_ids(&lattice, &room, &x).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for id in [&y, &t, &join] {
            assert!(
                body["pdu_ids"].as_array().unwrap().contains(&json!(id)),
                "v{version}: {id} at X: {body}"
            );
        }
        let (status, body) = peer.state_ids(&lattice, &room, &y).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "v{version}: {body}");

        // An event *pushed* with an unknown prev (and nothing to fill it) is
        // refused, and no state is asked for it.
        peer.on(
            Method::POST,
            "/_matrix/federation/v1/get_missing_events/",
            Answer::Json(StatusCode::OK, json!({ "events": [] })),
        );
        let mut pushed_room = v.clone();
        pushed_room.latest = unknown_event_id(version, &peer);
        let (pushed, pdu_pushed) = peer.message(&pushed_room, "after a gap");
        let result = peer.send(&lattice, vec![pdu_pushed]).await;
        assert!(result[&pushed]["error"].is_string(), "v{version}: {result}");
        assert_eq!(
            peer.received("/_matrix/federation/v1/state_ids/").len(),
            1,
            "no state is asked for a pushed event"
        );
        peer.stop();
        lattice.stop().await;
    }
}

/// Mallory's server builds C (after an event no one has) and a power levels
/// event X that gives mallory all power and alice none, then sends E after D
/// after C, and says the state at C is the create event, mallory's join and X.
/// SyTest's form ("Should not be able to take over the room by pretending
/// there is no PL event") lists the real power levels among X's auth events,
/// so X fails auth against them; the stronger form leaves them out, so X
/// passes that check and state resolution must keep the real power levels.
/// Either way alice keeps her power and the room its state.
#[tokio::test]
async fn a_made_up_power_levels_event_at_a_gap_does_not_take_the_room() {
    for (version, omit_pl) in [("10", false), ("10", true), ("1", false), ("12", true)] {
        let lattice = TestServer::start_federating().await;
        let peer = HostilePeer::start().await;
        let alice = lattice.register("alice", "password-a").await;
        let mallory = peer.user("mallory");
        let room = lattice
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version, "name": "kept"}),
            )
            .await;
        let v = peer.join(&lattice, &room, "mallory").await;
        let pl = state_event(&lattice, &alice, &room, "m.room.power_levels", "").await;
        let real_pl = pl["event_id"].as_str().unwrap().to_owned();
        let mut x_auth = v.message_auth();
        if omit_pl {
            x_auth.retain(|id| *id != real_pl);
        }
        let unknown = unknown_event_id(version, &peer);
        // Depth 0 so that X sorts first where depth orders (state resolution v1).
        let mut early = v.clone();
        early.depth = -1;
        let (x, pdu_x) = peer.event(
            &early,
            "m.room.power_levels",
            Some(""),
            json!({"users": {mallory.clone(): 100, alice.user_id.clone(): 0}}),
            std::slice::from_ref(&unknown),
            &x_auth,
        );
        let mut chain = v.clone();
        chain.depth += 10;
        chain.latest = unknown.clone();
        let (c, pdu_c) = peer.message(&chain, "hehehe");
        chain.advance(&c);
        let (d, pdu_d) = peer.message(&chain, "totes legit");
        chain.advance(&d);
        let (e, pdu_e) = peer.message(&chain, "nothing to see");
        chain.advance(&e);

        let mut at_c: Vec<String> = v.state_id("m.room.create", "").into_iter().collect();
        at_c.push(v.join_id.clone());
        at_c.push(x.clone());
        serve_events(
            &peer,
            HashMap::from([(c.clone(), pdu_c), (x.clone(), pdu_x)]),
        );
        answer_gap(&peer, vec![pdu_d], at_c);
        let result = peer.send(&lattice, vec![pdu_e]).await;
        assert!(
            !peer
                .received("/_matrix/federation/v1/state_ids/")
                .is_empty(),
            "v{version}: the state at C was asked for: {result}"
        );

        // X is not the room's power levels; alice still rules the room.
        let after = state_event(&lattice, &alice, &room, "m.room.power_levels", "").await;
        assert_eq!(
            after["event_id"],
            json!(real_pl),
            "v{version} omit {omit_pl}: {after}"
        );
        assert_eq!(after["content"], pl["content"], "v{version}");
        let (status, body) = lattice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                Some(&alice.access_token),
                json!({"topic": "still alice's"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");

        // Mallory's name change, authorised by X, does not count.
        let (rename, pdu_rename) = peer.event(
            &chain,
            "m.room.name",
            Some(""),
            json!({"name": "taken"}),
            std::slice::from_ref(&e),
            &[
                v.state_id("m.room.create", "")
                    .filter(|_| version != "12")
                    .into_iter()
                    .collect::<Vec<_>>(),
                vec![x.clone(), v.join_id.clone()],
            ]
            .concat(),
        );
        let result = peer.send(&lattice, vec![pdu_rename]).await;
        let name = state_event(&lattice, &alice, &room, "m.room.name", "").await;
        assert_eq!(
            name["content"]["name"],
            json!("kept"),
            "v{version}: {result}"
        );
        let _ = rename;
        peer.stop();
        lattice.stop().await;
    }
}

/// A sender that lies in its gap answers gets nothing in: an `/event` answer
/// that is another event than the one asked for refuses the fetched event
/// (and the one after it); a `/state_ids` answer naming another room's event
/// (mallory's join there) is filled without it, as Synapse ignores such IDs,
/// and that event never becomes part of this room's state.
#[tokio::test]
async fn lies_in_gap_answers_are_refused() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let carol = lattice.register("carol", "password-c").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let other = lattice
        .create_room(
            &carol,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let v = peer.join(&lattice, &room, "mallory").await;
    let o = peer.join(&lattice, &other, "mallory").await;

    let unknown = unknown_event_id("10", &peer);
    let mut chain = v.clone();
    chain.latest = unknown;
    let (c, pdu_c) = peer.message(&chain, "c");
    chain.advance(&c);
    let (d, pdu_d) = peer.message(&chain, "d");
    chain.advance(&d);
    let (e, pdu_e) = peer.message(&chain, "e");
    // The state at C without mallory's join here, with the one in the other
    // room instead.
    let mut crossed: Vec<String> = state_ids(&v)
        .into_iter()
        .filter(|id| *id != v.join_id)
        .collect();
    crossed.push(o.join_id.clone());
    answer_gap(&peer, vec![pdu_d], crossed);

    // 1. Asked for C, it serves another event: C cannot be had.
    let (_, decoy) = peer.message(&v, "not c");
    serve_events(&peer, HashMap::from([(c.clone(), decoy)]));
    let result = peer.send(&lattice, vec![pdu_e.clone()]).await;
    assert!(result[&e]["error"].is_string(), "{result}");
    for id in [&d, &e] {
        assert_eq!(
            lattice.event_status(&alice, &room, id).await,
            StatusCode::NOT_FOUND
        );
    }

    // 2. C served: the state at C has no member event for mallory (the
    // other room's is left out), so D, from mallory, is rejected; E too (held
    // as rejected, which the transaction's answer does not tell).
    serve_events(&peer, HashMap::from([(c.clone(), pdu_c)]));
    peer.send(&lattice, vec![pdu_e]).await;
    for id in [&d, &e] {
        assert_eq!(
            lattice.event_status(&alice, &room, id).await,
            StatusCode::NOT_FOUND
        );
    }
    // The other room's event is nowhere in this room's state; alice sends on.
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.to_string().contains(&o.join_id), "{body}");
    lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "still here"}),
        )
        .await;
    peer.stop();
    lattice.stop().await;
}

/// The message bodies `/messages` gives alice, oldest first (one page).
async fn bodies(lattice: &TestServer, who: &Login, room: &str) -> Vec<String> {
    crate::harness::messages(lattice, &who.access_token, room).await
}

/// A gap left by the state fallback (X accepted, its prev Y never fetched) is
/// filled from `/backfill` when a page reaches it, and only with what checks
/// out: a peer that answers with Y's body under a forged signature, or with
/// another room's event, fills nothing, the gap stays (asked again once its
/// backoff is over) and the page still returns what is held; the honest answer
/// puts Y in its place, before X, and closes the gap.
#[tokio::test]
async fn a_gap_backfill_takes_only_events_that_check_out() {
    // A failed fill backs the gap off: the clock is moved past each wait.
    let clock = ManualClock::new(crate::hostile::now_ms());
    let lattice = TestServer::start_federating_on(&clock).await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let carol = lattice.register("carol", "password-c").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let other = lattice
        .create_room(
            &carol,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    // Before mallory's join, so that it sorts before Y (a fork of the same
    // depth would be ordered by the server).
    lattice
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "a"}))
        .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    let o = peer.join(&lattice, &other, "mallory").await;

    // join → Y → X → C: C pushed, X handed over by /get_missing_events, Y
    // not: X is accepted with the state at Y from /state_ids (Y itself
    // fetched with /event and held outside the timeline).
    let (y, pdu_y) = peer.message(&v, "y");
    v.advance(&y);
    let (x, pdu_x) = peer.message(&v, "x");
    v.advance(&x);
    let (c, pdu_c) = peer.message(&v, "c");
    serve_events(&peer, HashMap::from([(y.clone(), pdu_y.clone())]));
    answer_gap(&peer, vec![pdu_x], state_ids(&v));
    const BACKFILL: &str = "/_matrix/federation/v1/backfill/";
    peer.on(
        Method::GET,
        BACKFILL,
        Answer::Json(
            StatusCode::OK,
            json!({"origin": peer.name(), "origin_server_ts": 0, "pdus": []}),
        ),
    );
    let result = peer.send(&lattice, vec![pdu_c]).await;
    assert_eq!(result[&c], json!({}), "{result}");
    for id in [&x, &c] {
        assert_eq!(
            lattice.event_status(&alice, &room, id).await,
            StatusCode::OK
        );
    }
    let (status, body) = lattice
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Y with a forged signature (same ID: the reference hash leaves
    // signatures out), and an event of the other room.
    let mut forged = pdu_y.clone();
    let key_id = forged["signatures"][peer.name()]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    forged["signatures"][peer.name()][&key_id] = json!(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    let (foreign, pdu_foreign) = peer.message(&o, "from the other room");
    for (failures, (what, pdus)) in [
        ("forged", vec![forged]),
        ("another room's", vec![pdu_foreign]),
    ]
    .into_iter()
    .enumerate()
    {
        peer.on(
            Method::GET,
            BACKFILL,
            Answer::Json(
                StatusCode::OK,
                json!({"origin": peer.name(), "origin_server_ts": 0, "pdus": pdus}),
            ),
        );
        let asked = peer.received(BACKFILL).len();
        // The page returns what is held, in order, the gap passed over.
        assert_eq!(
            bodies(&lattice, &alice, &room).await,
            vec!["a", "x", "c"],
            "{what}"
        );
        let requests = peer.received(BACKFILL);
        assert!(requests.len() > asked, "{what}: the gap was asked for");
        assert!(
            requests[asked..]
                .iter()
                .any(|r| r.path.contains(&format!("v={}", enc(&y)))),
            "{what}: {requests:?}"
        );
        assert_eq!(
            lattice.event_status(&alice, &room, &foreign).await,
            StatusCode::NOT_FOUND,
            "{what}"
        );
        clock.advance(lattice::service::federation::backfill::gap_backoff(
            failures as i32 + 1,
        ));
    }
    // The other room did not get it either.
    assert_eq!(
        lattice.event_status(&carol, &other, &foreign).await,
        StatusCode::NOT_FOUND
    );

    // The honest answer (with the events before Y that Lattice holds, as a
    // server answers): Y in its place, the gap closed.
    peer.on(
        Method::GET,
        BACKFILL,
        Answer::Json(
            StatusCode::OK,
            json!({"origin": peer.name(), "origin_server_ts": 0, "pdus": [pdu_y]}),
        ),
    );
    assert_eq!(
        bodies(&lattice, &alice, &room).await,
        vec!["a", "y", "x", "c"]
    );
    assert_eq!(
        lattice.event_status(&alice, &room, &y).await,
        StatusCode::OK
    );
    let asked = peer.received(BACKFILL).len();
    assert_eq!(
        bodies(&lattice, &alice, &room).await,
        vec!["a", "y", "x", "c"]
    );
    assert_eq!(
        peer.received(BACKFILL).len(),
        asked,
        "a closed gap is not asked for again"
    );
    // Filling history is not news: an incremental /sync does not carry Y.
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&since)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains(&y), "{body}");
    peer.stop();
    lattice.stop().await;
}

const BACKFILL: &str = "/_matrix/federation/v1/backfill/";

/// A room on Lattice with a gap in the middle of its timeline: alice's "a",
/// mallory's join, then mallory's Y → X → C; C pushed, X handed over by
/// `/get_missing_events`, Y never (X accepted with the state at Y from
/// `/state_ids`): the gap is Y, just before X. `/backfill` is the test's.
struct GapRoom {
    lattice: TestServer,
    peer: HostilePeer,
    alice: Login,
    room: String,
    a: String,
    y: String,
    pdu_y: Value,
    c: String,
}

async fn gap_room(lattice: TestServer) -> GapRoom {
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let a = lattice
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "a"}))
        .await;
    let mut v = peer.join(&lattice, &room, "mallory").await;
    let (y, pdu_y) = peer.message(&v, "y");
    v.advance(&y);
    let (x, pdu_x) = peer.message(&v, "x");
    v.advance(&x);
    let (c, pdu_c) = peer.message(&v, "c");
    serve_events(&peer, HashMap::from([(y.clone(), pdu_y.clone())]));
    answer_gap(&peer, vec![pdu_x], state_ids(&v));
    let result = peer.send(&lattice, vec![pdu_c]).await;
    assert_eq!(result[&c], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &x).await,
        StatusCode::OK
    );
    GapRoom {
        lattice,
        peer,
        alice,
        room,
        a,
        y,
        pdu_y,
        c,
    }
}

impl GapRoom {
    /// Scripts the peer's `/backfill` to answer with Y, honestly.
    fn answer_honestly(&self, delay: Option<Duration>) {
        let honest = Answer::Json(
            StatusCode::OK,
            json!({"origin": self.peer.name(), "origin_server_ts": 0, "pdus": [self.pdu_y]}),
        );
        self.peer.on(
            Method::GET,
            BACKFILL,
            match delay {
                Some(delay) => Answer::Delayed(delay, Box::new(honest)),
                None => honest,
            },
        );
    }

    /// A `/messages` or `/context` answer for alice.
    async fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .lattice
            .get(
                &format!("/_matrix/client/v3/rooms/{}/{path}", enc(&self.room)),
                Some(&self.alice.access_token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn stop(self) {
        self.peer.stop();
        self.lattice.stop().await;
    }
}

/// The bodies of the messages among `events`, in their order.
fn message_bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// Two pages reaching the same gap at once (two clients of alice's, or a
/// client's retry while its first request still waits on a slow server):
/// both answer with the history in order, each event once, and the gap is
/// asked for once — the second page waits for the first one's fill instead
/// of fetching and storing the same events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_reaching_a_gap_at_once_fill_it_once() {
    let g = gap_room(TestServer::start_federating().await).await;
    // A slow server: the second page reaches the gap while the first waits.
    g.answer_honestly(Some(Duration::from_millis(500)));
    let page = || g.get("messages?dir=b&limit=10");
    let (one, two) = tokio::join!(page(), page());
    for page in [one, two] {
        let mut bodies = message_bodies(&page["chunk"]);
        bodies.reverse();
        assert_eq!(bodies, ["a", "y", "x", "c"], "{page}");
    }
    assert_eq!(g.peer.received(BACKFILL).len(), 1);
    assert_eq!(
        g.lattice.event_status(&g.alice, &g.room, &g.y).await,
        StatusCode::OK
    );
    g.stop().await;
}

/// A gap whose fill fails (its server answers `/backfill` with errors) is
/// not asked for on every page: it waits 30 s after the first failure, and
/// twice as long after each one after (a clock the test moves); pages
/// meanwhile return what is held without asking. Once the server answers,
/// the first page after the wait fills the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_fill_fails_backs_off() {
    let clock = ManualClock::new(crate::hostile::now_ms());
    let g = gap_room(TestServer::start_federating_on(&clock).await).await;
    g.peer.on(
        Method::GET,
        BACKFILL,
        Answer::Json(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errcode": "M_UNKNOWN", "error": "down"}),
        ),
    );
    let asked = || g.peer.received(BACKFILL).len();
    assert_eq!(bodies(&g.lattice, &g.alice, &g.room).await, ["a", "x", "c"]);
    assert_eq!(asked(), 1);
    assert_eq!(bodies(&g.lattice, &g.alice, &g.room).await, ["a", "x", "c"]);
    assert_eq!(asked(), 1, "the next page does not ask again");
    for (failures, secs) in [(1, 30), (2, 60), (3, 120)] {
        clock.advance(Duration::from_millis(secs * 1000 - 1));
        assert_eq!(bodies(&g.lattice, &g.alice, &g.room).await, ["a", "x", "c"]);
        assert_eq!(asked(), failures, "asked again before {secs} s");
        clock.advance(Duration::from_millis(1));
        assert_eq!(bodies(&g.lattice, &g.alice, &g.room).await, ["a", "x", "c"]);
        assert_eq!(asked(), failures + 1, "not asked again after {secs} s");
    }
    // The server is back: the page after the next wait (240 s) fills it.
    g.answer_honestly(None);
    clock.advance(Duration::from_secs(239));
    assert_eq!(bodies(&g.lattice, &g.alice, &g.room).await, ["a", "x", "c"]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        bodies(&g.lattice, &g.alice, &g.room).await,
        ["a", "y", "x", "c"]
    );
    g.stop().await;
}

/// Paging forwards fills a gap before the event it reaches: a client opens
/// a permalink to "a" (`/context`, one event after it: mallory's join) and
/// reads on with `end` (`dir=f`), getting y, x and c in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_forwards_fills_a_gap() {
    let g = gap_room(TestServer::start_federating().await).await;
    g.answer_honestly(None);
    let context = g.get(&format!("context/{}?limit=2", enc(&g.a))).await;
    assert_eq!(
        context["events_after"].as_array().unwrap().len(),
        1,
        "{context}"
    );
    assert!(
        g.peer.received(BACKFILL).is_empty(),
        "the gap is not reached yet"
    );
    let end = context["end"].as_str().unwrap();
    let page = g
        .get(&format!("messages?dir=f&limit=10&from={}", enc(end)))
        .await;
    assert_eq!(message_bodies(&page["chunk"]), ["y", "x", "c"], "{page}");
    assert_eq!(g.peer.received(BACKFILL).len(), 1);
    g.stop().await;
}

/// `/context` fills the gaps it meets: the events before C are x, then y
/// from the gap before x; the events after "a" are mallory's join, y, x, c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_fills_the_gaps_around_an_event() {
    for backwards in [true, false] {
        let g = gap_room(TestServer::start_federating().await).await;
        g.answer_honestly(None);
        if backwards {
            let context = g.get(&format!("context/{}?limit=8", enc(&g.c))).await;
            assert_eq!(
                message_bodies(&context["events_before"]),
                ["x", "y", "a"],
                "{context}"
            );
        } else {
            let context = g.get(&format!("context/{}?limit=10", enc(&g.a))).await;
            assert_eq!(
                message_bodies(&context["events_after"]),
                ["y", "x", "c"],
                "{context}"
            );
        }
        assert_eq!(g.peer.received(BACKFILL).len(), 1, "backwards {backwards}");
        g.stop().await;
    }
}
