//! Faster joins with Lattice as the resident server (spec: `PUT
//! /v2/send_join`'s `omit_members`, `members_omitted`, `servers_in_room`;
//! MSC3706), from a peer that speaks the protocol itself: what the reduced
//! answer holds and leaves out, that the rest can be fetched afterwards
//! (`/state_ids`, `/state`, `/event`, `/get_missing_events`, `/backfill`),
//! and that a refused join learns nothing more with the flag than without.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, current_state, enc},
    hostile::{HostilePeer, SignedJoin},
};

/// Local members besides the creator: enough that leaving them out shows.
const MEMBERS: usize = 12;

/// A public room of `alice` with `MEMBERS` more local users joined.
async fn populated_room(lattice: &TestServer, alice: &Login, extra: Value) -> (String, Vec<Login>) {
    let mut body = json!({"preset": "public_chat"});
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            body[k] = v.clone();
        }
    }
    let room = lattice.create_room(alice, body).await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let who = lattice
            .register(&format!("member{i:02}"), "member-password")
            .await;
        lattice.join(&who, &room).await;
        members.push(who);
    }
    (room, members)
}

/// `PUT /v2/send_join` of a signed join, with `query` appended to the path.
async fn send_join(
    peer: &HostilePeer,
    lattice: &TestServer,
    room: &str,
    event_id: &str,
    pdu: &Value,
    query: &str,
) -> (StatusCode, Value) {
    peer.request(
        lattice.name(),
        Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}{query}",
            enc(room),
            enc(event_id)
        ),
        Some(pdu.clone()),
    )
    .await
}

/// The event IDs of a list of PDUs (which carry none in room versions 3 and
/// later), matched by content hash against events read back by ID.
fn ids_of(pdus: &Value, by_id: &BTreeMap<String, Value>) -> BTreeSet<String> {
    pdus.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            by_id
                .iter()
                .find(|(_, known)| known["hashes"] == e["hashes"])
                .map(|(id, _)| id.clone())
                .unwrap_or_else(|| panic!("an event the room does not hold: {e}"))
        })
        .collect()
}

/// Every event of the room by ID, as `/state` at `at` returns them (state and
/// auth chain), for matching PDUs (which carry no ID) to IDs.
async fn events_by_id(
    peer: &HostilePeer,
    lattice: &TestServer,
    room: &str,
    at: &str,
) -> BTreeMap<String, Value> {
    let (status, ids) = peer.state_ids(lattice, room, at).await;
    assert_eq!(status, StatusCode::OK, "{ids}");
    let (status, state) = peer
        .request(
            lattice.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/state/{}?event_id={}",
                enc(room),
                enc(at)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut out = BTreeMap::new();
    for list in ["pdu_ids", "auth_chain_ids"] {
        for id in ids[list].as_array().unwrap() {
            let id = id.as_str().unwrap();
            let (status, got) = peer
                .request(
                    lattice.name(),
                    Method::GET,
                    &format!("/_matrix/federation/v1/event/{}", enc(id)),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{id}: {got}");
            out.insert(id.to_owned(), got["pdus"][0].clone());
        }
    }
    out
}

fn members_in(pdus: &Value) -> BTreeSet<String> {
    pdus.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

/// With `omit_members=true` the answer leaves out the other members'
/// memberships but keeps every other state event, the joiner's own earlier
/// membership (its invite) and, in a room without a name or alias, five
/// heroes; the auth chain covers the join and that state and repeats none of
/// it; `servers_in_room` names the servers joined before. Without the flag (or
/// with `false`) the answer is whole, as before; a bad value is refused.
#[tokio::test]
async fn send_join_omits_members_when_asked() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    peer.accept_invites();
    let alice = lattice.register("alice", "password-a").await;
    let (room, members) = populated_room(&lattice, &alice, json!({})).await;
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({"user_id": peer.user("mallory")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = current_state(&lattice, &alice, &room).await;
    let invite = before[&("m.room.member".to_owned(), peer.user("mallory"))].clone();

    let signed = peer.signed_join(&lattice, &room, "mallory").await;
    let (status, body) = send_join(
        &peer,
        &lattice,
        &room,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=maybe",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    assert!(body.get("state").is_none(), "{body}");

    let (status, partial) = send_join(
        &peer,
        &lattice,
        &room,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{partial}");
    assert_eq!(partial["members_omitted"], true, "{partial}");
    assert_eq!(partial["servers_in_room"], json!([lattice.name()]));

    // Everything the room holds before the join, by ID, read back from the
    // server as the joiner would complete its state.
    let by_id = events_by_id(&peer, &lattice, &room, &signed.event_id).await;
    let state = ids_of(&partial["state"], &by_id);
    let chain = ids_of(&partial["auth_chain"], &by_id);
    assert_eq!(
        state.len(),
        partial["state"].as_array().unwrap().len(),
        "every state PDU is one the room holds"
    );
    // Every non-member state event, and of the members: the joiner's invite
    // and five heroes (the room has no name), all joined.
    for ((kind, key), id) in &before {
        if kind != "m.room.member" {
            assert!(state.contains(id), "{kind}/{key} left out");
        }
    }
    assert!(state.contains(&invite), "the joiner's invite left out");
    let kept = members_in(&partial["state"]);
    let joined: BTreeSet<String> = std::iter::once(alice.user_id.clone())
        .chain(members.iter().map(|m| m.user_id.clone()))
        .collect();
    let heroes: Vec<&String> = kept
        .iter()
        .filter(|u| **u != peer.user("mallory"))
        .collect();
    assert_eq!(heroes.len(), 5, "{kept:?}");
    assert!(heroes.iter().all(|h| joined.contains(*h)), "{kept:?}");
    // The auth chain: nothing in both lists, and closed over the auth events
    // of the state and of the join.
    assert!(
        state.is_disjoint(&chain),
        "state repeated in the auth chain"
    );
    let have: BTreeSet<&String> = state.iter().chain(chain.iter()).collect();
    let mut needed: Vec<String> = signed.pdu["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    for id in have.iter() {
        needed.extend(
            by_id[*id]["auth_events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned()),
        );
    }
    for id in &needed {
        assert!(have.contains(id), "auth event {id} missing");
    }
    // Members who authorise nothing there are nowhere in the answer.
    let text = partial.to_string();
    let absent: Vec<&Login> = members
        .iter()
        .filter(|m| !kept.contains(&m.user_id))
        .collect();
    assert!(absent.len() >= MEMBERS - 5);
    for m in absent {
        assert!(!text.contains(&m.user_id), "{} sent", m.user_id);
    }

    // Named, without the flag, with `false`: the whole state.
    let room2 = lattice
        .create_room(&alice, json!({"preset": "public_chat", "name": "Named"}))
        .await;
    for m in members.iter().take(3) {
        lattice.join(m, &room2).await;
    }
    for (who, query) in [("trent", ""), ("walter", "?omit_members=false")] {
        let signed = peer.signed_join(&lattice, &room2, who).await;
        let (status, whole) = send_join(
            &peer,
            &lattice,
            &room2,
            &signed.event_id,
            &signed.pdu,
            query,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        assert_eq!(whole["members_omitted"], false, "{whole}");
        assert!(whole.get("servers_in_room").is_none(), "{whole}");
        let kept = members_in(&whole["state"]);
        for m in members.iter().take(3) {
            assert!(kept.contains(&m.user_id), "{query}: {kept:?}");
        }
    }
    // A named room: no heroes, only the joiner's own earlier membership
    // (none here), and the servers now include the peer's.
    let signed = peer.signed_join(&lattice, &room2, "victor").await;
    let (status, partial) = send_join(
        &peer,
        &lattice,
        &room2,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{partial}");
    assert_eq!(partial["members_omitted"], true);
    assert!(members_in(&partial["state"]).is_empty(), "{partial}");
    let mut servers = vec![lattice.name().to_owned(), peer.name().to_owned()];
    servers.sort();
    assert_eq!(partial["servers_in_room"], json!(servers));
    peer.stop();
    lattice.stop().await;
}

/// What a joiner with partial state asks next, it gets: the full state at its
/// join's prev events (`/state_ids`, `/state`), the omitted events one by one
/// (`/event`), and the history around its join (`/get_missing_events`,
/// `/backfill`).
#[tokio::test]
async fn a_partial_state_joiner_can_fetch_the_rest() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let (room, members) = populated_room(&lattice, &alice, json!({"name": "Big"})).await;
    let hello = lattice
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "hello"}))
        .await;
    let before = current_state(&lattice, &alice, &room).await;
    let signed = peer.signed_join(&lattice, &room, "mallory").await;
    let (status, partial) = send_join(
        &peer,
        &lattice,
        &room,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{partial}");
    assert_eq!(partial["members_omitted"], true);
    assert!(members_in(&partial["state"]).is_empty(), "{partial}");
    // A retry of the same join (the answer lost on the way) is answered again.
    let (status, again) = send_join(
        &peer,
        &lattice,
        &room,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], partial["state"]);

    let prev: Vec<String> = signed.pdu["prev_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    // The join follows the message: the state at it is the state before the
    // join, every member included.
    assert_eq!(prev, std::slice::from_ref(&hello));
    let want: BTreeSet<String> = before.values().cloned().collect();
    for p in &prev {
        let (status, ids) = peer.state_ids(&lattice, &room, p).await;
        assert_eq!(status, StatusCode::OK, "{ids}");
        let got: BTreeSet<String> = ids["pdu_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "state at {p}");
        let (status, state) = peer
            .request(
                lattice.name(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/state/{}?event_id={}",
                    enc(&room),
                    enc(p)
                ),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{state}");
        let listed = members_in(&state["pdus"]);
        for m in &members {
            assert!(listed.contains(&m.user_id), "/state lacks {}", m.user_id);
        }
    }
    // Each omitted membership, by ID.
    for m in &members {
        let id = &before[&("m.room.member".to_owned(), m.user_id.clone())];
        let (status, got) = peer
            .request(
                lattice.name(),
                Method::GET,
                &format!("/_matrix/federation/v1/event/{}", enc(id)),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["pdus"][0]["state_key"], m.user_id.as_str());
    }
    // The history before the join.
    let (status, missing) = peer
        .request(
            lattice.name(),
            Method::POST,
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
            Some(json!({"earliest_events": [], "latest_events": [signed.event_id], "limit": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{missing}");
    assert!(missing.to_string().contains("hello"), "{missing}");
    let (status, back) = peer
        .request(
            lattice.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=100",
                enc(&room),
                enc(&signed.event_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    let backfilled = members_in(&back["pdus"]);
    for m in &members {
        assert!(
            backfilled.contains(&m.user_id),
            "backfill lacks {}",
            m.user_id
        );
    }
    peer.stop();
    lattice.stop().await;
}

/// A join the peer built itself from a `make_join` template of another of its
/// users, re-signed as `localpart` (a user `make_join` would refuse).
fn forged_join(peer: &HostilePeer, template: &SignedJoin, localpart: &str) -> (String, Value) {
    let mut fields = template.pdu.clone();
    let o = fields.as_object_mut().unwrap();
    for k in ["signatures", "hashes", "unsigned", "event_id"] {
        o.remove(k);
    }
    fields["sender"] = peer.user(localpart).into();
    fields["state_key"] = peer.user(localpart).into();
    peer.pdu(&template.version, fields)
}

/// The flag changes nothing for a join that is refused: a banned user's join,
/// a join that the join rules no longer allow, a join of another room sent to
/// this one. Each is refused as without it, with no state, auth chain or
/// servers in the answer and no member named. And a room where the joiner may
/// not read the state before its join (`joined` history visibility) answers
/// whole: the joiner could not complete a partial state there.
#[tokio::test]
async fn omit_members_leaks_nothing_to_refused_joins() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let (room, members) = populated_room(&lattice, &alice, json!({})).await;
    let refused = |status: StatusCode, body: &Value, what: &str| {
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::BAD_REQUEST,
            "{what}: {status} {body}"
        );
        for key in ["state", "auth_chain", "servers_in_room", "members_omitted"] {
            assert!(body.get(key).is_none(), "{what}: {body}");
        }
        let text = body.to_string();
        for m in &members {
            assert!(!text.contains(&m.user_id), "{what} named {}", m.user_id);
        }
    };

    // A banned user.
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&alice.access_token),
            json!({"user_id": peer.user("eve"), "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let template = peer.signed_join(&lattice, &room, "mallory").await;
    let (eve_id, eve_join) = forged_join(&peer, &template, "eve");
    for query in ["?omit_members=true", ""] {
        let (status, body) = send_join(&peer, &lattice, &room, &eve_id, &eve_join, query).await;
        refused(status, &body, &format!("banned{query}"));
    }

    // A join of another room (public, the peer may join it) sent to this one.
    let other = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let theirs = peer.signed_join(&lattice, &other, "mallory").await;
    for (path_room, query) in [(&room, "?omit_members=true"), (&room, "")] {
        let (status, body) = send_join(
            &peer,
            &lattice,
            path_room,
            &theirs.event_id,
            &theirs.pdu,
            query,
        )
        .await;
        refused(status, &body, &format!("other room{query}"));
    }

    // A join the join rules refuse by the time it is sent.
    let (status, body) = lattice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.join_rules/",
                enc(&room)
            ),
            Some(&alice.access_token),
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send_join(
        &peer,
        &lattice,
        &room,
        &template.event_id,
        &template.pdu,
        "?omit_members=true",
    )
    .await;
    refused(status, &body, "invite-only");
    for who in ["eve", "mallory"] {
        let (status, m) = lattice
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&peer.user(who))
                ),
                Some(&alice.access_token),
            )
            .await;
        assert!(
            status == StatusCode::NOT_FOUND || m["membership"] != "join",
            "{who}: {m}"
        );
    }

    // `joined` visibility, history before the join: the whole state.
    let hidden = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    lattice.join(&members[0], &hidden).await;
    lattice
        .send_message(
            &alice,
            &hidden,
            json!({"msgtype": "m.text", "body": "before"}),
        )
        .await;
    let signed = peer.signed_join(&lattice, &hidden, "mallory").await;
    let (status, whole) = send_join(
        &peer,
        &lattice,
        &hidden,
        &signed.event_id,
        &signed.pdu,
        "?omit_members=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["members_omitted"], false, "{whole}");
    let kept = members_in(&whole["state"]);
    assert!(
        kept.contains(&alice.user_id) && kept.contains(&members[0].user_id),
        "{kept:?}"
    );
    assert!(!whole.to_string().contains("\"before\""), "{whole}");
    peer.stop();
    lattice.stop().await;
}
