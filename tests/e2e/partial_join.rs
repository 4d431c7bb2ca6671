//! Faster joins with Lattice as the joining server (MSC3902; spec: `PUT
//! /v2/send_join`'s `omit_members`): `/join` returns once the partial state is
//! stored, the user reads and sends at once, and the full state arrives in the
//! background (`/state_ids`, `/event`) — checked, from another server when
//! the first fails or lies, and resumed after a restart.
//!
//! The resident is another Lattice (which omits members), or a scripted peer
//! hosting a room of its own ([`PeerRoom`]): it answers `make_join`,
//! `send_join` with partial state, and `/state_ids` honestly, never, or with
//! lies, as a test says.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use axum::http::Method;
use reqwest::StatusCode;
use ruma::RoomVersionId;
use serde_json::{Value, json};

use crate::{
    harness::{
        ClientApi, Login, TestServer, current_state, enc, eventually, messages, wait_for_message,
    },
    hostile::{Answer, HostilePeer},
};

/// Members besides the creator, so that leaving them out shows.
const MEMBERS: usize = 12;

fn faster_joins(c: &mut lattice::config::Config) {
    c.federation.faster_joins = true;
}

/// The joined members `/members` lists.
async fn members(server: &ClientApi, who: &Login, room: &str) -> BTreeSet<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/members?membership=join",
                enc(room)
            ),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

/// `/joined_members` as a set of user IDs.
async fn joined_members(server: &ClientApi, who: &Login, room: &str) -> BTreeSet<String> {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["joined"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

async fn join_via(server: &ClientApi, who: &Login, room: &str, via: &str) {
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(via)
            ),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
}

/// Two Lattice servers: the joiner asks for partial state, the resident
/// gives it (counted in its metrics); `/join` returns, the user reads the
/// history and sends at once, messages flow both ways, and the members and
/// the current state converge — `/members` waits for the full list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_join_between_lattices_returns_and_converges() {
    let a = TestServer::start_federating_with(|c| {
        c.listeners[0]
            .resources
            .push(lattice::config::Resource::Metrics);
    })
    .await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "Big"}))
        .await;
    let mut locals = vec![alice.clone()];
    for i in 0..MEMBERS {
        let who = a
            .register(&format!("member{i:02}"), "member-password")
            .await;
        a.join(&who, &room).await;
        locals.push(who);
    }
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "before"}),
    )
    .await;

    join_via(&b, &bob, &room, a.name()).await;
    let (status, metrics) = a.get("/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("lattice_federation_send_joins_total{members_omitted=\"true\"} 1"),
        "{metrics}"
    );
    // Reading and sending at once.
    b.send_message(
        &bob,
        &room,
        json!({"msgtype": "m.text", "body": "from bob"}),
    )
    .await;
    wait_for_message(&a, &alice, &room, "from bob").await;
    a.send_message(
        &locals[3],
        &room,
        json!({"msgtype": "m.text", "body": "from member02"}),
    )
    .await;
    wait_for_message(&b, &bob, &room, "from member02").await;

    // `/members` waits for the full state: every member, at once.
    let want: BTreeSet<String> = locals
        .iter()
        .map(|l| l.user_id.clone())
        .chain([bob.user_id.clone()])
        .collect();
    assert_eq!(members(&b, &bob, &room).await, want);
    eventually("the same joined members on both", || async {
        joined_members(&b, &bob, &room).await == want
            && joined_members(&a, &alice, &room).await == want
    })
    .await;
    eventually("the same current state on both", || async {
        current_state(&b, &bob, &room).await == current_state(&a, &alice, &room).await
    })
    .await;
    // And the room goes on: a member who never spoke is known to B.
    a.send_message(
        &locals[7],
        &room,
        json!({"msgtype": "m.text", "body": "late"}),
    )
    .await;
    wait_for_message(&b, &bob, &room, "late").await;
    b.stop().await;
    a.stop().await;
}

/// A room hosted by a scripted peer: every event built and signed by it.
struct PeerRoom {
    room_id: String,
    version: RoomVersionId,
    /// Every event of the room by ID.
    events: BTreeMap<String, Value>,
    /// The current state: (type, state_key) → ID.
    state: BTreeMap<(String, String), String>,
    latest: String,
    depth: i64,
    creator: String,
    members: Vec<String>,
}

impl PeerRoom {
    /// A public, named room of `peer`'s `creator` with `MEMBERS` more of the
    /// peer's users joined.
    fn build(peer: &HostilePeer) -> Self {
        Self::build_with(peer, MEMBERS)
    }

    /// [`PeerRoom::build`] with `members` more users joined.
    fn build_with(peer: &HostilePeer, members: usize) -> Self {
        let version = RoomVersionId::V10;
        let room_id = format!(
            "!{}:{}",
            lattice::domain::token::random_string(16),
            peer.name()
        );
        let creator = peer.user("creator");
        let mut room = Self {
            room_id,
            version,
            events: BTreeMap::new(),
            state: BTreeMap::new(),
            latest: String::new(),
            depth: 0,
            creator: creator.clone(),
            members: Vec::new(),
        };
        room.add(
            peer,
            &creator,
            "m.room.create",
            "",
            json!({"creator": creator, "room_version": "10"}),
            &[],
        );
        room.add(
            peer,
            &creator,
            "m.room.member",
            &creator,
            json!({"membership": "join"}),
            &[("m.room.create", "")],
        );
        let base = [("m.room.create", ""), ("m.room.member", creator.as_str())];
        room.add(
            peer,
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": {&creator: 100}, "users_default": 0, "state_default": 50,
                   "events_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0}),
            &base,
        );
        let powered = [
            ("m.room.create", ""),
            ("m.room.member", creator.as_str()),
            ("m.room.power_levels", ""),
        ];
        room.add(
            peer,
            &creator,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
            &powered,
        );
        room.add(
            peer,
            &creator,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
            &powered,
        );
        room.add(
            peer,
            &creator,
            "m.room.name",
            "",
            json!({"name": "Peer room"}),
            &powered,
        );
        for i in 0..members {
            let member = peer.user(&format!("m{i:02}"));
            room.add(
                peer,
                &member,
                "m.room.member",
                &member,
                json!({"membership": "join"}),
                &[
                    ("m.room.create", ""),
                    ("m.room.power_levels", ""),
                    ("m.room.join_rules", ""),
                ],
            );
            room.members.push(member);
        }
        room
    }

    /// Builds a state event after the latest, with the current state's events
    /// at `auth` as its auth events, and applies it.
    fn add(
        &mut self,
        peer: &HostilePeer,
        sender: &str,
        kind: &str,
        state_key: &str,
        content: Value,
        auth: &[(&str, &str)],
    ) -> String {
        let (id, pdu) = self.build_event(peer, sender, kind, state_key, content, auth);
        self.state
            .insert((kind.to_owned(), state_key.to_owned()), id.clone());
        self.latest = id.clone();
        self.depth += 1;
        self.events.insert(id.clone(), pdu);
        id
    }

    /// A state event after the latest, not applied (a lie's material).
    fn build_event(
        &self,
        peer: &HostilePeer,
        sender: &str,
        kind: &str,
        state_key: &str,
        content: Value,
        auth: &[(&str, &str)],
    ) -> (String, Value) {
        let auth: Vec<String> = auth
            .iter()
            .map(|(t, k)| self.state[&((*t).to_owned(), (*k).to_owned())].clone())
            .collect();
        let prev: Vec<String> = if self.latest.is_empty() {
            Vec::new()
        } else {
            vec![self.latest.clone()]
        };
        peer.pdu(
            &self.version,
            json!({
                "room_id": self.room_id, "sender": sender, "type": kind,
                "state_key": state_key, "content": content,
                "prev_events": prev, "auth_events": auth, "depth": self.depth + 1,
            }),
        )
    }

    /// The auth chain of `ids` (not `ids` themselves unless reachable).
    fn auth_chain(&self, ids: &[String]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = ids.to_vec();
        while let Some(id) = todo.pop() {
            let Some(pdu) = self.events.get(&id) else {
                continue;
            };
            for a in pdu["auth_events"].as_array().unwrap() {
                let a = a.as_str().unwrap().to_owned();
                if seen.insert(a.clone()) {
                    todo.push(a);
                }
            }
        }
        seen
    }

    /// The `/state_ids` answer at the latest event for a state of `ids`.
    fn state_ids_answer(&self, ids: &[String]) -> Value {
        let chain: Vec<String> = self.auth_chain(ids).into_iter().collect();
        json!({"pdu_ids": ids, "auth_chain_ids": chain})
    }

    /// The honest `/state_ids` answer.
    fn honest_state_ids(&self) -> Value {
        let ids: Vec<String> = self.state.values().cloned().collect();
        self.state_ids_answer(&ids)
    }
}

/// Scripts `peer` to serve `room` as its resident, for `joiner`: `make_join`,
/// `send_join` with members omitted (naming `servers`), `/event`, `/state`,
/// and `/send` (accepted). `/state_ids` is left to the test.
fn serve_room(peer: &HostilePeer, room: &Arc<Mutex<PeerRoom>>, joiner: &str, servers: Vec<String>) {
    let r = room.lock().unwrap();
    let room_id = r.room_id.clone();
    drop(r);
    let (room2, joiner2) = (room.clone(), joiner.to_owned());
    peer.on(
        Method::GET,
        &format!("/_matrix/federation/v1/make_join/{}/", enc(&room_id)),
        Answer::With(Arc::new(move |_, _| {
            let r = room2.lock().unwrap();
            let auth: Vec<String> = [
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.join_rules", ""),
            ]
            .iter()
            .map(|(t, k)| r.state[&((*t).to_owned(), (*k).to_owned())].clone())
            .collect();
            Answer::Json(
                StatusCode::OK,
                json!({"room_version": "10", "event": {
                    "room_id": r.room_id, "sender": joiner2, "state_key": joiner2,
                    "type": "m.room.member", "content": {"membership": "join"},
                    "prev_events": [r.latest], "auth_events": auth, "depth": r.depth + 1,
                    "origin_server_ts": crate::hostile::now_ms(),
                }}),
            )
        })),
    );
    let room2 = room.clone();
    let name = peer.name().to_owned();
    peer.on(
        Method::PUT,
        &format!("/_matrix/federation/v2/send_join/{}/", enc(&room_id)),
        Answer::With(Arc::new(move |path, body| {
            assert!(path.contains("omit_members=true"), "{path}");
            let r = room2.lock().unwrap();
            let state: Vec<String> = r
                .state
                .iter()
                .filter(|((t, _), _)| t != "m.room.member")
                .map(|(_, id)| id.clone())
                .collect();
            let mut roots = state.clone();
            roots.extend(
                body["auth_events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned()),
            );
            let mut chain = r.auth_chain(&roots);
            chain.extend(roots.iter().filter(|id| !state.contains(id)).cloned());
            let chain: Vec<Value> = chain
                .iter()
                .filter(|id| !state.contains(id))
                .map(|id| r.events[id].clone())
                .collect();
            let state: Vec<Value> = state.iter().map(|id| r.events[id].clone()).collect();
            Answer::Json(
                StatusCode::OK,
                json!({"origin": name, "state": state, "auth_chain": chain,
                       "members_omitted": true, "servers_in_room": servers}),
            )
        })),
    );
    serve_reads(peer, room);
    peer.on(
        Method::PUT,
        "/_matrix/federation/v1/send/",
        Answer::Json(StatusCode::OK, json!({"pdus": {}})),
    );
}

/// Scripts `peer` to serve `/event` and `/state` of `room`'s events.
fn serve_reads(peer: &HostilePeer, room: &Arc<Mutex<PeerRoom>>) {
    let room2 = room.clone();
    let origin = peer.name().to_owned();
    peer.on(
        Method::GET,
        "/_matrix/federation/v1/event/",
        Answer::With(Arc::new(move |path, _| {
            let id = path.trim_start_matches("/_matrix/federation/v1/event/");
            let id = percent_decode(id);
            let r = room2.lock().unwrap();
            match r.events.get(&id) {
                Some(pdu) => Answer::Json(
                    StatusCode::OK,
                    json!({"origin": origin, "origin_server_ts": crate::hostile::now_ms(), "pdus": [pdu]}),
                ),
                None => Answer::Json(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND"})),
            }
        })),
    );
    let room2 = room.clone();
    let r = room.lock().unwrap();
    let room_id = r.room_id.clone();
    drop(r);
    peer.on(
        Method::GET,
        &format!("/_matrix/federation/v1/state/{}", enc(&room_id)),
        Answer::With(Arc::new(move |_, _| {
            let r = room2.lock().unwrap();
            let ids: Vec<String> = r.state.values().cloned().collect();
            let pdus: Vec<Value> = ids.iter().map(|id| r.events[id].clone()).collect();
            let chain: Vec<Value> = r
                .auth_chain(&ids)
                .iter()
                .map(|id| r.events[id].clone())
                .collect();
            Answer::Json(StatusCode::OK, json!({"pdus": pdus, "auth_chain": chain}))
        })),
    );
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn state_ids_prefix(room_id: &str) -> String {
    format!("/_matrix/federation/v1/state_ids/{}", enc(room_id))
}

/// Replaces `server`'s signatures of `pdu` with another key's, in its name
/// (the event ID, a hash of all but the signatures, stays the same).
fn forge_signature(pdu: &mut Value, server: &str) {
    for sig in pdu["signatures"][server]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        *sig = json!(
            "c2lnbmVkIGJ5IHNvbWVib2R5IGVsc2Ugc2lnbmVkIGJ5IHNvbWVib2R5IGVsc2UgISEhISEhISEhISEhISE"
        );
    }
}

/// Every member of the peer's room and `bob`, as `/members` should list them.
fn everyone(room: &PeerRoom, bob: &Login) -> BTreeSet<String> {
    room.members
        .iter()
        .cloned()
        .chain([room.creator.clone(), bob.user_id.clone()])
        .collect()
}

/// The member state keys of a state map.
fn member_keys(state: &BTreeMap<(String, String), String>) -> BTreeSet<String> {
    state
        .keys()
        .filter(|(t, _)| t == "m.room.member")
        .map(|(_, k)| k.clone())
        .collect()
}

/// A restart of the joining server in the middle of the resync (its
/// `/state_ids` request to the resident unanswered): the room stays usable
/// with its partial state, and after the restart the resync resumes by
/// itself and the members arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_resync_completes_it() {
    let peer = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&peer)));
    let room_id = room.lock().unwrap().room_id.clone();
    serve_room(&peer, &room, &bob.user_id, vec![peer.name().to_owned()]);
    peer.on(Method::GET, &state_ids_prefix(&room_id), Answer::Hang);

    join_via(&b, &bob, &room_id, peer.name()).await;
    // Usable at once: bob sends, and the peer receives it.
    b.send_message(
        &bob,
        &room_id,
        json!({"msgtype": "m.text", "body": "partial hello"}),
    )
    .await;
    eventually("bob's message at the peer", || async {
        peer.received("/_matrix/federation/v1/send/")
            .iter()
            .any(|r| r.body.to_string().contains("partial hello"))
    })
    .await;
    eventually("the resync asking for the state", || async {
        !peer.received(&state_ids_prefix(&room_id)).is_empty()
    })
    .await;
    // Mid-resync: the omitted members are not known yet.
    let partial = current_state(&b, &bob, &room_id).await;
    assert_eq!(
        member_keys(&partial),
        BTreeSet::from([bob.user_id.clone()]),
        "{partial:?}"
    );
    assert_eq!(
        partial[&("m.room.name".to_owned(), String::new())],
        room.lock().unwrap().state[&("m.room.name".to_owned(), String::new())]
    );

    // The resident answers from now on; the request in flight stays
    // unanswered, and the server restarts under it.
    let honest = room.lock().unwrap().honest_state_ids();
    peer.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, honest),
    );
    let asked = peer.received(&state_ids_prefix(&room_id)).len();
    let b = b.restart().await;
    let want = everyone(&room.lock().unwrap(), &bob);
    assert_eq!(members(&b, &bob, &room_id).await, want);
    assert!(
        peer.received(&state_ids_prefix(&room_id)).len() > asked,
        "the resync was asked again after the restart"
    );
    let full = current_state(&b, &bob, &room_id).await;
    assert_eq!(member_keys(&full), want);
    assert!(
        messages(&b, &bob.access_token, &room_id)
            .await
            .iter()
            .any(|m| m == "partial hello"),
        "bob's message kept"
    );
    b.stop().await;
    peer.stop();
}

/// A resident that lies in the resync — its `/state_ids` names a power
/// levels event of another history (validly signed by the room's creator,
/// but not the one it sent at the join) and a ban of the joiner by a member
/// without power — is refused: nothing of its answer is installed, and the
/// full state comes from the next server in `servers_in_room`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resident_that_lies_in_the_resync_is_refused() {
    let liar = HostilePeer::start().await;
    let honest = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&liar)));
    let room_id = room.lock().unwrap().room_id.clone();

    let (lies, forged_pl, forged_ban) = {
        let r = room.lock().unwrap();
        let creator = r.creator.clone();
        let (forged_pl, pl_pdu) = r.build_event(
            &liar,
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": {&creator: 100, &r.members[0]: 100}, "users_default": 0,
                   "state_default": 50, "events_default": 0, "ban": 50}),
            &[
                ("m.room.create", ""),
                ("m.room.member", creator.as_str()),
                ("m.room.power_levels", ""),
            ],
        );
        let m1 = r.members[1].clone();
        let (forged_ban, ban_pdu) = r.build_event(
            &liar,
            &m1,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "ban"}),
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", m1.as_str()),
            ],
        );
        let mut ids: Vec<String> = r
            .state
            .iter()
            .filter(|((t, _), _)| t != "m.room.power_levels")
            .map(|(_, id)| id.clone())
            .collect();
        ids.push(forged_pl.clone());
        ids.push(forged_ban.clone());
        let lies = r.state_ids_answer(&ids);
        drop(r);
        let mut r = room.lock().unwrap();
        r.events.insert(forged_pl.clone(), pl_pdu);
        r.events.insert(forged_ban.clone(), ban_pdu);
        (lies, forged_pl, forged_ban)
    };
    serve_room(
        &liar,
        &room,
        &bob.user_id,
        vec![liar.name().to_owned(), honest.name().to_owned()],
    );
    liar.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, lies),
    );
    serve_reads(&honest, &room);
    let truth = room.lock().unwrap().honest_state_ids();
    honest.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, truth),
    );

    join_via(&b, &bob, &room_id, liar.name()).await;
    let want = everyone(&room.lock().unwrap(), &bob);
    assert_eq!(members(&b, &bob, &room_id).await, want);
    assert!(!liar.received(&state_ids_prefix(&room_id)).is_empty());
    assert!(!honest.received(&state_ids_prefix(&room_id)).is_empty());
    let full = current_state(&b, &bob, &room_id).await;
    let truth = room.lock().unwrap().state.clone();
    for (key, id) in &truth {
        assert_eq!(full.get(key), Some(id), "{key:?}");
    }
    let ids: BTreeSet<&String> = full.values().collect();
    assert!(
        !ids.contains(&forged_pl),
        "the forged power levels installed"
    );
    assert!(!ids.contains(&forged_ban), "the forged ban installed");
    // Bob is still in, and may still speak.
    b.send_message(
        &bob,
        &room_id,
        json!({"msgtype": "m.text", "body": "still here"}),
    )
    .await;
    b.stop().await;
    liar.stop();
    honest.stop();
}

/// A resident whose `send_join` answer slips forged events into the state —
/// a topic set by a member without the power to, and a room avatar whose
/// signature is not the sender's server's — has them left out: the partial
/// state the join installs holds neither (else the honest full state would
/// disagree with it and the resync never complete), and neither ever
/// reaches the room's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_in_a_send_join_answer_is_left_out() {
    let liar = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&liar)));
    let room_id = room.lock().unwrap().room_id.clone();
    let truth = room.lock().unwrap().honest_state_ids();
    let honest_state = room.lock().unwrap().state.clone();
    let (forged_topic, forged_avatar) = {
        let mut r = room.lock().unwrap();
        let m0 = r.members[0].clone();
        let (topic, topic_pdu) = r.build_event(
            &liar,
            &m0,
            "m.room.topic",
            "",
            json!({"topic": "set without power"}),
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", m0.as_str()),
            ],
        );
        let creator = r.creator.clone();
        let (avatar, mut avatar_pdu) = r.build_event(
            &liar,
            &creator,
            "m.room.avatar",
            "",
            json!({"url": "mxc://forged/avatar"}),
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", creator.as_str()),
            ],
        );
        forge_signature(&mut avatar_pdu, liar.name());
        // In the state the resident serves at the join (`serve_room` sends
        // `state`'s events), not in the honest `/state_ids`.
        for (key, id, pdu) in [
            ("m.room.topic", topic.clone(), topic_pdu),
            ("m.room.avatar", avatar.clone(), avatar_pdu),
        ] {
            r.state.insert((key.to_owned(), String::new()), id.clone());
            r.events.insert(id, pdu);
        }
        (topic, avatar)
    };
    serve_room(&liar, &room, &bob.user_id, vec![liar.name().to_owned()]);
    liar.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, truth),
    );

    join_via(&b, &bob, &room_id, liar.name()).await;
    // `/members` waits for the full state: the resync completed.
    let want = everyone(&room.lock().unwrap(), &bob);
    assert_eq!(members(&b, &bob, &room_id).await, want);
    let full = current_state(&b, &bob, &room_id).await;
    for (key, id) in &honest_state {
        assert_eq!(full.get(key), Some(id), "{key:?}");
    }
    let ids: BTreeSet<&String> = full.values().collect();
    assert!(
        !ids.contains(&forged_topic),
        "the unauthorised topic installed"
    );
    assert!(!ids.contains(&forged_avatar), "the forged avatar installed");
    assert!(!full.contains_key(&("m.room.topic".to_owned(), String::new())));
    assert!(!full.contains_key(&("m.room.avatar".to_owned(), String::new())));
    b.stop().await;
    liar.stop();
}

/// A room whose state is too big to fetch event by event (more than 50
/// events missing after the join): the resync takes the resident's `/state`
/// answer, checks each event of it, and leaves out what does not hold: a
/// member event whose signature is not its server's (its ID, a hash of all
/// but the signatures, is the honest one) and the topic of another room,
/// named in the state. Every other member arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_resync_through_state_leaves_out_what_does_not_hold() {
    const BIG: usize = 80;
    let liar = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build_with(&liar, BIG)));
    let other = PeerRoom::build_with(&liar, 0);
    let (other_topic, other_pdu) = other.build_event(
        &liar,
        &other.creator,
        "m.room.topic",
        "",
        json!({"topic": "of another room"}),
        &[
            ("m.room.create", ""),
            ("m.room.power_levels", ""),
            ("m.room.member", other.creator.as_str()),
        ],
    );
    let (room_id, forged, want) = {
        let mut r = room.lock().unwrap();
        // Not the latest event (our join's prev event, which must be had).
        let forged = r.members[BIG / 2].clone();
        let id = r.state[&("m.room.member".to_owned(), forged.clone())].clone();
        forge_signature(r.events.get_mut(&id).unwrap(), liar.name());
        r.state.insert(
            ("m.room.topic".to_owned(), String::new()),
            other_topic.clone(),
        );
        r.events.insert(other_topic.clone(), other_pdu);
        // Its auth chain (the other room's events) is served too.
        r.events.extend(other.events.clone());
        let mut want = everyone(&r, &bob);
        want.remove(&forged);
        (r.room_id.clone(), forged, want)
    };
    serve_room(&liar, &room, &bob.user_id, vec![liar.name().to_owned()]);
    let truth = room.lock().unwrap().honest_state_ids();
    assert!(truth["pdu_ids"].as_array().unwrap().len() > 50 + 10);
    liar.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, truth),
    );

    join_via(&b, &bob, &room_id, liar.name()).await;
    // `/members` waits for the full state: the resync completed.
    assert_eq!(members(&b, &bob, &room_id).await, want);
    let full = current_state(&b, &bob, &room_id).await;
    assert!(!member_keys(&full).contains(&forged));
    assert_eq!(member_keys(&full), want);
    assert!(!full.values().any(|id| id == &other_topic));
    assert!(!full.contains_key(&("m.room.topic".to_owned(), String::new())));
    // Through one `/state` request, not event by event.
    let state_path = format!("/_matrix/federation/v1/state/{}", enc(&room_id));
    assert_eq!(liar.received(&state_path).len(), 1);
    assert!(liar.received("/_matrix/federation/v1/event/").len() < 10);
    b.stop().await;
    liar.stop();
}

/// The resident goes away in the middle of the resync (its `/state_ids`
/// never answered, then it stops): the joining server gives up on it and
/// completes the state through the next server in `servers_in_room`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resident_gone_mid_resync_is_replaced_by_another_server() {
    let resident = HostilePeer::start().await;
    let other = HostilePeer::start().await;
    let b = TestServer::start_federating_with(|c| {
        faster_joins(c);
        c.federation.request_timeout_secs = 3;
    })
    .await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&resident)));
    let room_id = room.lock().unwrap().room_id.clone();
    serve_room(
        &resident,
        &room,
        &bob.user_id,
        vec![resident.name().to_owned(), other.name().to_owned()],
    );
    resident.on(Method::GET, &state_ids_prefix(&room_id), Answer::Hang);
    serve_reads(&other, &room);
    let truth = room.lock().unwrap().honest_state_ids();
    other.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::Json(StatusCode::OK, truth),
    );

    join_via(&b, &bob, &room_id, resident.name()).await;
    eventually("the resync asking the resident", || async {
        !resident.received(&state_ids_prefix(&room_id)).is_empty()
    })
    .await;
    resident.stop();
    let want = everyone(&room.lock().unwrap(), &bob);
    assert_eq!(members(&b, &bob, &room_id).await, want);
    assert!(!other.received(&state_ids_prefix(&room_id)).is_empty());
    let full = current_state(&b, &bob, &room_id).await;
    assert_eq!(member_keys(&full), want);
    b.stop().await;
    other.stop();
}

/// Members of the big Synapse room Lattice joins with partial state.
const SYNAPSE_MEMBERS: usize = 40;

/// Interop: a Lattice user joins a Synapse-hosted public room of 40 members
/// with faster joins. Synapse answers with members omitted (Lattice counts a
/// partial-state join, then its resync); messages flow both ways as soon as
/// the join returns; `/members` on Lattice lists every member; both servers
/// end with the same joined members and the same current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_a_big_synapse_room_with_partial_state() {
    let lattice = TestServer::start_federating_with(|c| {
        faster_joins(c);
        c.listeners[0]
            .resources
            .push(lattice::config::Resource::Metrics);
    })
    .await;
    let synapse = crate::synapse::Synapse::start().await;
    let sam = synapse.register("sam", "sam-password").await;
    let alice = lattice.register("alice", "alice-password").await;
    let room = synapse
        .create_room(
            &sam,
            json!({"preset": "public_chat", "name": "Big Synapse room"}),
        )
        .await;
    let numbers: Vec<usize> = (0..SYNAPSE_MEMBERS).collect();
    for chunk in numbers.chunks(8) {
        futures_util::future::join_all(chunk.iter().map(|i| {
            let (synapse, room) = (&synapse, &room);
            async move {
                let who = synapse
                    .register(&format!("member{i:03}"), "member-password")
                    .await;
                synapse.join(&who, room).await;
            }
        }))
        .await;
    }
    synapse
        .send_message(
            &sam,
            &room,
            json!({"msgtype": "m.text", "body": "before the join"}),
        )
        .await;

    join_via(&lattice, &alice, &room, synapse.name()).await;
    let (_, metrics) = lattice.get("/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("lattice_federation_partial_state_joins_total{stage=\"joined\"} 1"),
        "{metrics}"
    );
    let (_, _) = tokio::join!(
        lattice.send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "from lattice"})
        ),
        synapse.send_message(
            &sam,
            &room,
            json!({"msgtype": "m.text", "body": "from synapse"})
        ),
    );
    for (server, who) in [(&*lattice, &alice), (&*synapse, &sam)] {
        eventually("both messages on both servers", || async {
            let seen = messages(server, &who.access_token, &room).await;
            seen.iter().any(|b| b == "from lattice") && seen.iter().any(|b| b == "from synapse")
        })
        .await;
    }
    let everyone = members(&lattice, &alice, &room).await;
    assert_eq!(everyone.len(), SYNAPSE_MEMBERS + 2, "{everyone:?}");
    eventually("the resync counted", || async {
        let (_, metrics) = lattice.get("/metrics", None).await;
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("lattice_federation_partial_state_joins_total{stage=\"resynced\"} 1")
    })
    .await;
    eventually("the same joined members and current state", || async {
        joined_members(&lattice, &alice, &room).await == joined_members(&synapse, &sam, &room).await
            && current_state(&lattice, &alice, &room).await
                == current_state(&synapse, &sam, &room).await
    })
    .await;
    lattice.stop().await;
}

/// `/sync` for `who`, from `since` (an initial sync without), with a filter.
async fn sync(server: &ClientApi, who: &Login, since: Option<&str>, filter: &Value) -> Value {
    let mut path = format!(
        "/_matrix/client/v3/sync?timeout=0&filter={}",
        enc(&filter.to_string())
    );
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The member state keys of a sync section's `state` events.
fn state_members(section: &Value) -> BTreeSet<String> {
    section["state"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.member")
                .map(|e| e["state_key"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `device_lists.changed` of a sync answer.
fn devices_changed(body: &Value) -> BTreeSet<String> {
    body["device_lists"]["changed"]
        .as_array()
        .map(|l| l.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A message from `sender` (a member of the peer's room) after `prev`, with
/// `auth` (the sender's membership among them) as its auth events.
fn member_message(
    peer: &HostilePeer,
    room: &PeerRoom,
    sender: &str,
    prev: &str,
    depth: i64,
    auth: Vec<String>,
    body: &str,
) -> (String, Value) {
    peer.pdu(
        &room.version,
        json!({
            "room_id": room.room_id, "sender": sender, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body},
            "prev_events": [prev], "auth_events": auth, "depth": depth,
        }),
    )
}

/// Scripts the peer's answers about its users' devices: one device each,
/// `PEERDEVICE`, by `/user/keys/query` and `/user/devices`.
fn serve_devices(peer: &HostilePeer) {
    fn keys(user: &str) -> Value {
        json!({"user_id": user, "device_id": "PEERDEVICE",
               "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
               "keys": {"curve25519:PEERDEVICE": "curve-of-peer",
                        "ed25519:PEERDEVICE": "ed-of-peer"},
               "signatures": {user: {"ed25519:PEERDEVICE": "sig-of-peer"}}})
    }
    peer.on(
        Method::POST,
        "/_matrix/federation/v1/user/keys/query",
        Answer::With(Arc::new(|_, body| {
            let mut out = serde_json::Map::new();
            for user in body["device_keys"].as_object().into_iter().flatten() {
                out.insert(user.0.clone(), json!({"PEERDEVICE": keys(user.0)}));
            }
            Answer::Json(StatusCode::OK, json!({"device_keys": out}))
        })),
    );
    peer.on(
        Method::GET,
        "/_matrix/federation/v1/user/devices/",
        Answer::With(Arc::new(|path, _| {
            let user =
                percent_decode(path.trim_start_matches("/_matrix/federation/v1/user/devices/"));
            Answer::Json(
                StatusCode::OK,
                json!({"user_id": user, "stream_id": 1,
                       "devices": [{"device_id": "PEERDEVICE", "keys": keys(&user)}]}),
            )
        })),
    );
}

/// Scripts `peer` to serve `/event_auth` for `room`'s events (the ones a
/// test sends are added to `room.events` first).
fn serve_event_auth(peer: &HostilePeer, room: &Arc<Mutex<PeerRoom>>) {
    let room2 = room.clone();
    let room_id = room.lock().unwrap().room_id.clone();
    let prefix = format!("/_matrix/federation/v1/event_auth/{}/", enc(&room_id));
    let prefix2 = prefix.clone();
    peer.on(
        Method::GET,
        &prefix,
        Answer::With(Arc::new(move |path, _| {
            // Decoded before the prefix is taken off: servers encode the
            // room ID's `!` and `:` or not.
            let id = percent_decode(path)
                .trim_start_matches(percent_decode(&prefix2).as_str())
                .to_owned();
            let r = room2.lock().unwrap();
            let chain: Vec<Value> = r
                .auth_chain(&[id])
                .iter()
                .map(|id| r.events[id].clone())
                .collect();
            Answer::Json(StatusCode::OK, json!({"auth_chain": chain}))
        })),
    );
}

/// After the resync, a local member's clients catch up as if they had just
/// joined (MSC3902; Synapse treats un-partial-stated rooms as newly joined):
/// in an encrypted room joined with partial state, bob syncs during the
/// partial state (the omitted members unknown), and his next incremental
/// sync after the resync is `limited` with the full state — every member
/// without lazy loading; with lazy loading, the timeline's senders' — and
/// `device_lists.changed` names the members learnt, whose keys `/keys/query`
/// then gives (their lists tracked: fetched with `/user/devices`). Carol, on
/// the same server but not in the room, learns nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_resync_sync_sends_the_full_state_and_the_members_devices() {
    let peer = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let carol = b.register("carol", "password-c").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&peer)));
    let (room_id, m03_join) = {
        let mut r = room.lock().unwrap();
        let creator = r.creator.clone();
        r.add(
            &peer,
            &creator,
            "m.room.encryption",
            "",
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
            &[
                ("m.room.create", ""),
                ("m.room.member", creator.as_str()),
                ("m.room.power_levels", ""),
            ],
        );
        let m03 = r.members[3].clone();
        (
            r.room_id.clone(),
            r.state[&("m.room.member".to_owned(), m03)].clone(),
        )
    };
    serve_room(&peer, &room, &bob.user_id, vec![peer.name().to_owned()]);
    serve_event_auth(&peer, &room);
    serve_devices(&peer);
    // The resync is refused until the partial phase is over.
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (open2, room2) = (open.clone(), room.clone());
    peer.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::With(Arc::new(move |_, _| {
            if open2.load(std::sync::atomic::Ordering::SeqCst) {
                Answer::Json(StatusCode::OK, room2.lock().unwrap().honest_state_ids())
            } else {
                Answer::Json(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND"}))
            }
        })),
    );

    let plain = json!({});
    let lazy = json!({"room": {"state": {"lazy_load_members": true}}});
    let carol_first = sync(&b, &carol, None, &plain).await;
    join_via(&b, &bob, &room_id, peer.name()).await;
    eventually("a refused resync round", || async {
        !peer.received(&state_ids_prefix(&room_id)).is_empty()
    })
    .await;
    let plain_first = sync(&b, &bob, None, &plain).await;
    let lazy_first = sync(&b, &bob, None, &lazy).await;
    let section = &plain_first["rooms"]["join"][&room_id];
    assert!(section.is_object(), "{plain_first}");
    assert!(
        state_members(section).is_empty(),
        "only bob's join is known, in the timeline: {section}"
    );

    // A member the partial state left out speaks: bob reads it at once.
    let bob_join = current_state(&b, &bob, &room_id).await
        [&("m.room.member".to_owned(), bob.user_id.clone())]
        .clone();
    let (spoke, pdu) = {
        let r = room.lock().unwrap();
        let auth = vec![
            r.state[&("m.room.create".to_owned(), String::new())].clone(),
            r.state[&("m.room.power_levels".to_owned(), String::new())].clone(),
            m03_join.clone(),
        ];
        let m03 = r.members[3].clone();
        member_message(&peer, &r, &m03, &bob_join, r.depth + 2, auth, "from m03")
    };
    room.lock()
        .unwrap()
        .events
        .insert(spoke.clone(), pdu.clone());
    let answer = peer.send(&b, vec![pdu]).await;
    assert_eq!(answer[&spoke], json!({}), "{answer}");
    wait_for_message(&b, &bob, &room_id, "from m03").await;
    let plain_partial = sync(&b, &bob, plain_first["next_batch"].as_str(), &plain).await;
    let lazy_partial = sync(&b, &bob, lazy_first["next_batch"].as_str(), &lazy).await;
    assert!(
        lazy_partial["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_id"] == spoke.as_str()),
        "{lazy_partial}"
    );
    // Lazy loading while partial: the sender's membership, from the
    // event's auth events (the state has none yet).
    let m03 = room.lock().unwrap().members[3].clone();
    assert!(
        state_members(&lazy_partial["rooms"]["join"][&room_id]).contains(&m03),
        "{lazy_partial}"
    );
    let learnt: BTreeSet<String> = {
        let r = room.lock().unwrap();
        r.members
            .iter()
            .cloned()
            .chain([r.creator.clone()])
            .collect()
    };
    assert!(
        devices_changed(&plain_partial).is_disjoint(&learnt),
        "{plain_partial}"
    );

    // The full state comes in.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let want = everyone(&room.lock().unwrap(), &bob);
    eventually("the full state on B", || async {
        joined_members(&b, &bob, &room_id).await == want
    })
    .await;

    // Without lazy loading: every member, in a limited sync, and their
    // device lists.
    let plain_after = sync(&b, &bob, plain_partial["next_batch"].as_str(), &plain).await;
    let section = &plain_after["rooms"]["join"][&room_id];
    assert_eq!(section["timeline"]["limited"], true, "{section}");
    let mut seen = state_members(section);
    seen.insert(bob.user_id.clone()); // his join is in the timeline
    assert_eq!(seen, want, "{section}");
    let changed = devices_changed(&plain_after);
    assert!(
        learnt.is_subset(&changed),
        "{changed:?} lacks some of {learnt:?}"
    );
    // Said once: the sync after says nothing more of the room.
    let plain_again = sync(&b, &bob, plain_after["next_batch"].as_str(), &plain).await;
    assert!(
        plain_again["rooms"]["join"].get(&room_id).is_none(),
        "{plain_again}"
    );
    assert!(devices_changed(&plain_again).is_disjoint(&learnt));

    // With lazy loading: the senders' members (m03's, learnt only now).
    let lazy_after = sync(&b, &bob, lazy_partial["next_batch"].as_str(), &lazy).await;
    let section = &lazy_after["rooms"]["join"][&room_id];
    assert_eq!(section["timeline"]["limited"], true, "{section}");
    let lazy_members = state_members(section);
    assert!(lazy_members.contains(&m03), "{section}");
    assert!(
        !lazy_members.contains(&room.lock().unwrap().members[7]),
        "a member who never spoke, lazily left out: {section}"
    );

    // Their keys, from a list now tracked.
    let (status, keys) = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.access_token),
            json!({"device_keys": {&m03: []}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][&m03]["PEERDEVICE"]["keys"]["curve25519:PEERDEVICE"], "curve-of-peer",
        "{keys}"
    );
    assert!(
        !peer
            .received("/_matrix/federation/v1/user/devices/")
            .is_empty(),
        "the learnt member's list is tracked"
    );

    // Carol shares no room with them: nothing.
    let carol_after = sync(&b, &carol, carol_first["next_batch"].as_str(), &plain).await;
    assert!(
        carol_after["rooms"]["join"].get(&room_id).is_none(),
        "{carol_after}"
    );
    assert!(
        devices_changed(&carol_after).is_disjoint(&learnt),
        "{carol_after}"
    );
    b.stop().await;
    peer.stop();
}

/// An event the partial state allowed but the full state forbids is
/// rejected after the resync (as Synapse recomputes events received while
/// partial): m05, banned before bob joined (the ban omitted with the other
/// memberships), speaks citing his old join; B accepts it while partial,
/// and once the full state is in it is gone from `/messages` and `/event`
/// while an honest member's message stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_full_state_forbids_is_rejected_after_the_resync() {
    let peer = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&peer)));
    let (room_id, m05, m05_join, m03, m03_join) = {
        let mut r = room.lock().unwrap();
        let creator = r.creator.clone();
        let (m03, m05) = (r.members[3].clone(), r.members[5].clone());
        let m03_join = r.state[&("m.room.member".to_owned(), m03.clone())].clone();
        let m05_join = r.state[&("m.room.member".to_owned(), m05.clone())].clone();
        r.add(
            &peer,
            &creator,
            "m.room.member",
            &m05,
            json!({"membership": "ban"}),
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", creator.as_str()),
                ("m.room.member", m05.as_str()),
            ],
        );
        (r.room_id.clone(), m05, m05_join, m03, m03_join)
    };
    serve_room(&peer, &room, &bob.user_id, vec![peer.name().to_owned()]);
    serve_event_auth(&peer, &room);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (open2, room2) = (open.clone(), room.clone());
    peer.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::With(Arc::new(move |_, _| {
            if open2.load(std::sync::atomic::Ordering::SeqCst) {
                Answer::Json(StatusCode::OK, room2.lock().unwrap().honest_state_ids())
            } else {
                Answer::Json(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND"}))
            }
        })),
    );

    join_via(&b, &bob, &room_id, peer.name()).await;
    let bob_join = current_state(&b, &bob, &room_id).await
        [&("m.room.member".to_owned(), bob.user_id.clone())]
        .clone();
    let (banned, honest) = {
        let r = room.lock().unwrap();
        let base = [
            r.state[&("m.room.create".to_owned(), String::new())].clone(),
            r.state[&("m.room.power_levels".to_owned(), String::new())].clone(),
        ];
        let with = |join: &str| {
            let mut auth = base.to_vec();
            auth.push(join.to_owned());
            auth
        };
        (
            member_message(
                &peer,
                &r,
                &m05,
                &bob_join,
                r.depth + 2,
                with(&m05_join),
                "banned speaks",
            ),
            member_message(
                &peer,
                &r,
                &m03,
                &bob_join,
                r.depth + 2,
                with(&m03_join),
                "m03 speaks",
            ),
        )
    };
    {
        let mut r = room.lock().unwrap();
        r.events.insert(banned.0.clone(), banned.1.clone());
        r.events.insert(honest.0.clone(), honest.1.clone());
    }
    let answer = peer.send(&b, vec![banned.1, honest.1]).await;
    assert_eq!(answer[&banned.0], json!({}), "{answer}");
    assert_eq!(answer[&honest.0], json!({}), "{answer}");
    // While partial, B cannot tell: both are shown.
    eventually("both messages on B", || async {
        let seen = messages(&b, &bob.access_token, &room_id).await;
        seen.iter().any(|m| m == "banned speaks") && seen.iter().any(|m| m == "m03 speaks")
    })
    .await;

    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let want = everyone(&room.lock().unwrap(), &bob);
    let want: BTreeSet<String> = want.into_iter().filter(|u| *u != m05).collect();
    eventually("the full state on B", || async {
        joined_members(&b, &bob, &room_id).await == want
    })
    .await;
    let seen = messages(&b, &bob.access_token, &room_id).await;
    assert!(!seen.iter().any(|m| m == "banned speaks"), "{seen:?}");
    assert!(seen.iter().any(|m| m == "m03 speaks"), "{seen:?}");
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room_id),
                enc(&banned.0)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room_id),
                enc(&honest.0)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.stop().await;
    peer.stop();
}

/// A room where m05, whom the creator gave the power to rename it, was
/// banned before bob's partial join (the ban omitted with the other
/// memberships, the power levels not): m05 renames the room citing his old
/// join, and m03 speaks after the rename. B accepts both while partial.
struct Renamed {
    peer: HostilePeer,
    b: TestServer,
    bob: Login,
    room: Arc<Mutex<PeerRoom>>,
    room_id: String,
    /// Lets the resync through (`/state_ids` answered).
    open: Arc<std::sync::atomic::AtomicBool>,
    /// The creator's `m.room.name` ("Peer room").
    name: String,
    /// m05's rename ("taken").
    rename: String,
    /// m03's message after the rename.
    after: String,
    m03: String,
    m05: String,
}

async fn banned_member_renames_while_partial() -> Renamed {
    let peer = HostilePeer::start().await;
    let b = TestServer::start_federating_with(faster_joins).await;
    let bob = b.register("bob", "password-b").await;
    let room = Arc::new(Mutex::new(PeerRoom::build(&peer)));
    let (room_id, m03, m03_join, m05, m05_join, name) = {
        let mut r = room.lock().unwrap();
        let creator = r.creator.clone();
        let (m03, m05) = (r.members[3].clone(), r.members[5].clone());
        let m03_join = r.state[&("m.room.member".to_owned(), m03.clone())].clone();
        let m05_join = r.state[&("m.room.member".to_owned(), m05.clone())].clone();
        r.add(
            &peer,
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": {&creator: 100, &m05: 50}, "users_default": 0, "state_default": 50,
                   "events_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0}),
            &[
                ("m.room.create", ""),
                ("m.room.member", creator.as_str()),
                ("m.room.power_levels", ""),
            ],
        );
        r.add(
            &peer,
            &creator,
            "m.room.member",
            &m05,
            json!({"membership": "ban"}),
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", creator.as_str()),
                ("m.room.member", m05.as_str()),
            ],
        );
        let name = r.state[&("m.room.name".to_owned(), String::new())].clone();
        (r.room_id.clone(), m03, m03_join, m05, m05_join, name)
    };
    serve_room(&peer, &room, &bob.user_id, vec![peer.name().to_owned()]);
    serve_event_auth(&peer, &room);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (open2, room2) = (open.clone(), room.clone());
    peer.on(
        Method::GET,
        &state_ids_prefix(&room_id),
        Answer::With(Arc::new(move |_, _| {
            if open2.load(std::sync::atomic::Ordering::SeqCst) {
                Answer::Json(StatusCode::OK, room2.lock().unwrap().honest_state_ids())
            } else {
                Answer::Json(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND"}))
            }
        })),
    );

    join_via(&b, &bob, &room_id, peer.name()).await;
    let bob_join = current_state(&b, &bob, &room_id).await
        [&("m.room.member".to_owned(), bob.user_id.clone())]
        .clone();
    let (rename, after) = {
        let r = room.lock().unwrap();
        let base = [
            r.state[&("m.room.create".to_owned(), String::new())].clone(),
            r.state[&("m.room.power_levels".to_owned(), String::new())].clone(),
        ];
        let with = |join: &str| {
            let mut auth = base.to_vec();
            auth.push(join.to_owned());
            auth
        };
        let rename = peer.pdu(
            &r.version,
            json!({
                "room_id": r.room_id, "sender": m05, "type": "m.room.name", "state_key": "",
                "content": {"name": "taken"},
                "prev_events": [bob_join], "auth_events": with(&m05_join), "depth": r.depth + 2,
            }),
        );
        let after = member_message(
            &peer,
            &r,
            &m03,
            &rename.0,
            r.depth + 3,
            with(&m03_join),
            "after the rename",
        );
        (rename, after)
    };
    {
        let mut r = room.lock().unwrap();
        r.events.insert(rename.0.clone(), rename.1.clone());
        r.events.insert(after.0.clone(), after.1.clone());
    }
    let answer = peer.send(&b, vec![rename.1, after.1]).await;
    assert_eq!(answer[&rename.0], json!({}), "{answer}");
    assert_eq!(answer[&after.0], json!({}), "{answer}");
    wait_for_message(&b, &bob, &room_id, "after the rename").await;
    // While partial, B cannot tell: the room is renamed.
    assert_eq!(room_name(&b, &bob, &room_id).await, "taken");
    Renamed {
        peer,
        b,
        bob,
        room,
        room_id,
        open,
        name,
        rename: rename.0,
        after: after.0,
        m03,
        m05,
    }
}

/// The room's current name as `who` reads it.
async fn room_name(server: &ClientApi, who: &Login, room: &str) -> String {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(room)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["name"].as_str().unwrap().to_owned()
}

impl Renamed {
    /// Lets the resync through and waits for the full state (m05 not joined).
    async fn resync(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        let want: BTreeSet<String> = everyone(&self.room.lock().unwrap(), &self.bob)
            .into_iter()
            .filter(|u| *u != self.m05)
            .collect();
        eventually("the full state on B", || async {
            joined_members(&self.b, &self.bob, &self.room_id).await == want
        })
        .await;
    }

    async fn stop(self) {
        self.b.stop().await;
        self.peer.stop();
    }
}

/// A state event the partial state allowed but the full state forbids is
/// rejected after the resync and leaves the room's state, as Synapse
/// recomputes the state of events received while partial: m05, banned (the
/// ban omitted), renames the room with the power the power levels gave him;
/// once the full state is in, the room's name is the creator's again, the
/// rename is gone, m03's message after it stays with the state at it
/// recomputed without it, bob's next `/sync` gives the creator's name in the
/// full state, and the room's later events build on that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_event_the_full_state_forbids_leaves_the_state_after_the_resync() {
    let s = banned_member_renames_while_partial().await;
    let (b, bob, room_id) = (&s.b, &s.bob, &s.room_id);
    let filter = json!({"room": {"timeline": {"limit": 1}}});
    let partial = sync(b, bob, None, &filter).await;
    assert!(
        partial["rooms"]["join"][room_id]
            .to_string()
            .contains(&s.rename),
        "the rename is the room's name while partial: {partial}"
    );

    s.resync().await;
    // The current state: the creator's name.
    assert_eq!(room_name(b, bob, room_id).await, "Peer room");
    let state = current_state(b, bob, room_id).await;
    assert_eq!(
        state[&("m.room.name".to_owned(), String::new())],
        s.name,
        "{state:?}"
    );
    // The rename is rejected: not served, not in the timeline.
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room_id),
                enc(&s.rename)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // m03's message stays, and the state at it no longer holds the rename.
    let (status, context) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
                enc(room_id),
                enc(&s.after)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["event"]["content"]["body"], "after the rename");
    assert_eq!(context["event"]["sender"], s.m03.as_str());
    let names: Vec<&Value> = context["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1, "{context}");
    assert_eq!(names[0]["event_id"], s.name.as_str(), "{context}");
    assert!(!context.to_string().contains(&s.rename), "{context}");

    // Bob's clients are told: the next sync treats the room as newly
    // joined, with the creator's name in its full state.
    let after = sync(b, bob, partial["next_batch"].as_str(), &filter).await;
    let section = &after["rooms"]["join"][room_id];
    assert_eq!(section["timeline"]["limited"], true, "{section}");
    let named: Vec<&Value> = section["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(section["timeline"]["events"].as_array().unwrap())
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(named.len(), 1, "{section}");
    assert_eq!(named[0]["event_id"], s.name.as_str(), "{section}");
    assert_eq!(named[0]["content"]["name"], "Peer room");
    assert!(!section.to_string().contains(&s.rename), "{section}");

    // The attack fails for good: the room goes on from the full state.
    b.send_message(
        bob,
        room_id,
        json!({"msgtype": "m.text", "body": "bob after the resync"}),
    )
    .await;
    assert_eq!(room_name(b, bob, room_id).await, "Peer room");
    let again = sync(b, bob, after["next_batch"].as_str(), &filter).await;
    assert!(
        !again.to_string().contains(&s.rename),
        "the rename never comes back: {again}"
    );
    s.stop().await;
}

/// Sliding sync after the resync (MSC4186, as `/sync` treats the room as
/// newly joined): a connection that sent the room while partial gets it
/// again with `initial`, all of its required state (the creator's name,
/// not the rename the full state forbids) and its `$LAZY` members afresh
/// (m03, learnt only now), once; the response after says nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_resync_sliding_sync_sends_the_room_afresh() {
    const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let s = banned_member_renames_while_partial().await;
    let (b, bob, room_id) = (&s.b, &s.bob, &s.room_id);
    let request = json!({
        "conn_id": "room-list",
        "lists": {"all": {
            "ranges": [[0, 10]],
            "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
        }},
    });
    let slide = |pos: Option<String>| {
        let request = request.clone();
        async move {
            let path = match pos {
                Some(pos) => format!("{SLIDING}?pos={}", enc(&pos)),
                None => SLIDING.to_owned(),
            };
            let (status, body) = b.post(&path, Some(&bob.access_token), request).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let first = slide(None).await;
    let section = &first["rooms"][room_id];
    assert_eq!(section["initial"], true, "{first}");
    assert_eq!(section["name"], "taken", "{section}");
    let lazy = |section: &Value| -> BTreeSet<String> {
        section["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        !lazy(section).contains(&s.m03),
        "m03's membership is not known while partial: {section}"
    );
    // Nothing new: the room is not sent again.
    let quiet = slide(first["pos"].as_str().map(str::to_owned)).await;
    assert!(quiet["rooms"].get(room_id).is_none(), "{quiet}");

    s.resync().await;
    let next = slide(quiet["pos"].as_str().map(str::to_owned)).await;
    let section = &next["rooms"][room_id];
    assert_eq!(section["initial"], true, "{next}");
    assert_eq!(section["name"], "Peer room", "{section}");
    let names: Vec<&Value> = section["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1, "{section}");
    assert_eq!(names[0]["event_id"], s.name.as_str(), "{section}");
    assert!(lazy(section).contains(&s.m03), "{section}");
    assert_eq!(
        section["timeline"][0]["event_id"],
        s.after.as_str(),
        "{section}"
    );
    assert!(!next.to_string().contains(&s.rename), "{next}");
    // Said once.
    let later = slide(next["pos"].as_str().map(str::to_owned)).await;
    assert!(later["rooms"].get(room_id).is_none(), "{later}");
    s.stop().await;
}
