//! The deprecated v1 federation membership endpoints (issue #18): `send_join`,
//! `send_leave` and `invite` served with their `[200, {…}]` answers and the
//! same checks as v2; the v2 → v1 fallback when a server does not know v2;
//! `make_join` errors passed through to the client; `make_join` refused for a
//! room this server has left. The hostile peer plays the other servers (and a
//! second one the server whose users a forged event names).

use axum::http::Method;
use reqwest::StatusCode;
use ruma::RoomVersionId;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc},
    hostile::{Answer, HostilePeer, now_ms},
};

async fn membership(server: &TestServer, who: &Login, room: &str, user: &str) -> Option<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            Some(&who.access_token),
        )
        .await;
    (status == StatusCode::OK).then(|| body["membership"].as_str().unwrap().to_owned())
}

fn forbidden(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{what}: {body}");
}

#[tokio::test]
async fn v1_send_join_answers_wrapped_and_refuses_forged_joins() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let other = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "1"}),
        )
        .await;
    let path = |id: &str| {
        format!(
            "/_matrix/federation/v1/send_join/{}/{}",
            enc(&room),
            enc(id)
        )
    };
    let signed = peer.signed_join(&lattice, &room, "mallory").await;

    // Without signatures.
    let mut unsigned = signed.pdu.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &path(&signed.event_id),
            Some(unsigned),
        )
        .await;
    forbidden(status, &body, "unsigned join");

    // With a signature that is not the peer's key's.
    let mut forged = signed.pdu.clone();
    forged["signatures"] = json!({ peer.name(): { "ed25519:hostile": "a".repeat(86) } });
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &path(&signed.event_id),
            Some(forged),
        )
        .await;
    forbidden(status, &body, "badly signed join");

    // Another server's user's join, signed by that server, sent by the peer.
    let theirs = other.signed_join(&lattice, &room, "eve").await;
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &path(&theirs.event_id),
            Some(theirs.pdu.clone()),
        )
        .await;
    forbidden(status, &body, "another server's join");
    for user in [&signed.user_id, &theirs.user_id] {
        assert_eq!(membership(&lattice, &alice, &room, user).await, None);
    }

    // The honest join: v2's checks and answer, wrapped as [200, {…}].
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &path(&signed.event_id),
            Some(signed.pdu.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0], 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    let answer = &body[1];
    assert_eq!(answer["origin"], lattice.name(), "{answer}");
    let state = answer["state"].as_array().unwrap();
    let create = state
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .expect("the create event is in the state");
    assert_eq!(create["room_id"], room.as_str());
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()),
        "{answer}"
    );
    assert!(!answer["auth_chain"].as_array().unwrap().is_empty());
    assert_eq!(
        membership(&lattice, &alice, &room, &signed.user_id)
            .await
            .as_deref(),
        Some("join")
    );
    // Eve never joined.
    assert_eq!(
        membership(&lattice, &alice, &room, &theirs.user_id).await,
        None
    );

    // v2 applies the same signature check (403, not a JSON error).
    let again = peer.signed_join(&lattice, &room, "trudy").await;
    let mut unsigned = again.pdu.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                enc(&room),
                enc(&again.event_id)
            ),
            Some(unsigned),
        )
        .await;
    forbidden(status, &body, "unsigned v2 join");
    other.stop();
    peer.stop();
    lattice.stop().await;
}

#[tokio::test]
async fn make_join_refuses_a_room_every_local_user_left() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let make_join = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
        enc(&room),
        enc(&peer.user("mallory"))
    );
    let (status, body) = peer
        .request(lattice.name(), Method::GET, &make_join, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["content"]["membership"], "join");

    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = peer
        .request(lattice.name(), Method::GET, &make_join, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    peer.stop();
    lattice.stop().await;
}

/// A room of version 1 on the peer: create, its creator's join, power levels,
/// public join rules. Returns the room ID and the four events (in order).
fn peer_room(peer: &HostilePeer) -> (String, Vec<(String, Value)>) {
    let v1 = RoomVersionId::V1;
    let room_id = format!("!v1room:{}", peer.name());
    let creator = peer.user("carol");
    let event = |kind: &str, content: Value, prev: &[&str], auth: &[&str], depth: i64| {
        let state_key = if kind == "m.room.member" {
            creator.as_str()
        } else {
            ""
        };
        peer.pdu(
            &v1,
            json!({
                "room_id": room_id,
                "sender": creator,
                "type": kind,
                "state_key": state_key,
                "content": content,
                "prev_events": prev,
                "auth_events": auth,
                "depth": depth,
            }),
        )
    };
    let create = event("m.room.create", json!({ "creator": creator }), &[], &[], 1);
    let join = event(
        "m.room.member",
        json!({ "membership": "join" }),
        &[&create.0],
        &[&create.0],
        2,
    );
    let power = event(
        "m.room.power_levels",
        json!({ "users": { creator.as_str(): 100 } }),
        &[&join.0],
        &[&create.0, &join.0],
        3,
    );
    let rules = event(
        "m.room.join_rules",
        json!({ "join_rule": "public" }),
        &[&power.0],
        &[&create.0, &join.0, &power.0],
        4,
    );
    (room_id, vec![create, join, power, rules])
}

#[tokio::test]
async fn outbound_join_falls_back_to_v1_and_passes_refusals_through() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let (room, events) = peer_room(&peer);
    let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    let pdus: Vec<Value> = events.iter().map(|(_, pdu)| pdu.clone()).collect();
    let join = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        enc(&room),
        enc(peer.name())
    );
    let make_join = "/_matrix/federation/v1/make_join/";
    let (v1, v2) = (
        "/_matrix/federation/v1/send_join/",
        "/_matrix/federation/v2/send_join/",
    );

    // The room's refusals reach the client as the room's server gave them.
    peer.on(
        Method::GET,
        make_join,
        Answer::Json(
            StatusCode::BAD_REQUEST,
            json!({"errcode": "M_TEST_ERROR_CODE", "error": "denied!"}),
        ),
    );
    let (status, body) = lattice
        .post(&join, Some(&bob.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_TEST_ERROR_CODE", "{body}");
    peer.on(
        Method::GET,
        make_join,
        Answer::Json(
            StatusCode::BAD_REQUEST,
            json!({
                "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                "error": "y u no upgrade",
                "room_version": "sytest-room-ver",
            }),
        ),
    );
    let (status, body) = lattice
        .post(&join, Some(&bob.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION", "{body}");
    assert_eq!(body["room_version"], "sytest-room-ver", "{body}");

    // A template (no room_version: version 1).
    let template = json!({
        "event": {
            "room_id": room,
            "sender": bob.user_id,
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": { "membership": "join" },
            "prev_events": peer.v1_refs(&ids[3..]),
            "auth_events": peer.v1_refs(&[ids[0].clone(), ids[2].clone(), ids[3].clone()]),
            "depth": 5,
            "origin": peer.name(),
            "origin_server_ts": now_ms(),
        }
    });
    peer.on(
        Method::GET,
        make_join,
        Answer::Json(StatusCode::OK, template),
    );

    // A real 404 from v2 (the room is unknown there) is an answer, not a
    // missing endpoint: no v1 request.
    peer.on(
        Method::PUT,
        v2,
        Answer::Json(
            StatusCode::NOT_FOUND,
            json!({"errcode": "M_NOT_FOUND", "error": "Unknown room"}),
        ),
    );
    let (status, body) = lattice
        .post(&join, Some(&bob.access_token), json!({}))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(peer.received(v1).is_empty());

    // v2 unknown (404 M_UNRECOGNIZED): v1, whose answer lacks the create
    // event — refused, nothing joined.
    peer.on(
        Method::PUT,
        v2,
        Answer::Json(
            StatusCode::NOT_FOUND,
            json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
        ),
    );
    peer.on(
        Method::PUT,
        v1,
        Answer::Json(
            StatusCode::OK,
            json!([200, { "origin": peer.name(), "state": pdus[1..], "auth_chain": pdus }]),
        ),
    );
    let (status, body) = lattice
        .post(&join, Some(&bob.access_token), json!({}))
        .await;
    assert!(!status.is_success(), "{status} {body}");
    assert_eq!(peer.received(v1).len(), 1);
    assert_eq!(membership(&lattice, &bob, &room, &bob.user_id).await, None);

    // The whole state: joined, through v1.
    peer.on(
        Method::PUT,
        v1,
        Answer::Json(
            StatusCode::OK,
            json!([200, { "origin": peer.name(), "state": pdus, "auth_chain": pdus }]),
        ),
    );
    let v2_before = peer.received(v2).len();
    let (status, body) = lattice
        .post(&join, Some(&bob.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(peer.received(v2).len(), v2_before + 1);
    let sent = peer.received(v1);
    assert_eq!(sent.len(), 2);
    let ours = &sent[1].body;
    assert_eq!(ours["sender"], bob.user_id.as_str());
    assert!(ours["signatures"][lattice.name()].is_object(), "{ours}");
    assert!(
        sent[1]
            .path
            .ends_with(&enc(ours["event_id"].as_str().unwrap())),
        "{}",
        sent[1].path
    );
    assert_eq!(
        membership(&lattice, &bob, &room, &bob.user_id)
            .await
            .as_deref(),
        Some("join")
    );
    peer.stop();
    lattice.stop().await;
}

#[tokio::test]
async fn v1_invites_are_countersigned_and_unsigned_ones_refused() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let other = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let (room, events) = peer_room(&peer);
    let (create_id, create) = events[0].clone();
    let (join_id, _) = events[1].clone();
    let invite_fields = |sender: &str| {
        json!({
            "room_id": room,
            "sender": sender,
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": { "membership": "invite" },
            "prev_events": [join_id],
            "auth_events": [create_id, join_id],
            "depth": 3,
            "unsigned": { "invite_room_state": [create] },
        })
    };
    let (invite_id, invite) = peer.pdu(&RoomVersionId::V1, invite_fields(&peer.user("carol")));
    let path = |id: &str| format!("/_matrix/federation/v1/invite/{}/{}", enc(&room), enc(id));

    // Not signed by the sender's server.
    let mut unsigned = invite.clone();
    unsigned["signatures"] = json!({});
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &path(&invite_id),
            Some(unsigned),
        )
        .await;
    forbidden(status, &body, "unsigned invite");

    // Another server's user's invite, signed by that server, sent by the peer.
    let (theirs_id, theirs) = other.pdu(&RoomVersionId::V1, invite_fields(&other.user("eve")));
    let (status, body) = peer
        .request(lattice.name(), Method::PUT, &path(&theirs_id), Some(theirs))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (_, synced) = lattice
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.access_token))
        .await;
    assert!(synced["rooms"]["invite"][&room].is_null(), "{synced}");

    // The honest invite: countersigned, answered as [200, {"event": …}].
    let (status, body) = peer
        .request(lattice.name(), Method::PUT, &path(&invite_id), Some(invite))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0], 200, "{body}");
    let event = &body[1]["event"];
    assert_eq!(event["event_id"], invite_id.as_str());
    assert_eq!(event["state_key"], bob.user_id.as_str());
    assert!(event["signatures"][lattice.name()].is_object(), "{event}");
    assert!(event["signatures"][peer.name()].is_object(), "{event}");
    // Bob sees it, with the stripped state that came in the event's unsigned.
    let (status, synced) = lattice
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{synced}");
    let shown = synced["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no invite for {room}: {synced}"));
    assert!(
        shown.iter().any(|e| e["type"] == "m.room.create"),
        "{synced}"
    );

    // Bob rejects it, but the inviting server fails: he leaves here alone.
    peer.on(
        Method::GET,
        "/_matrix/federation/v1/make_leave/",
        Answer::Json(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errcode": "M_UNKNOWN", "error": "down"}),
        ),
    );
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(peer.received("/_matrix/federation/v1/make_leave/").len(), 1);
    let since = synced["next_batch"].as_str().unwrap();
    let (status, synced) = lattice
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{synced}");
    let left = &synced["rooms"]["leave"][&room]["timeline"]["events"];
    let leave = &left[0];
    assert_eq!(leave["type"], "m.room.member", "{synced}");
    assert_eq!(leave["sender"], bob.user_id.as_str(), "{synced}");
    assert_eq!(leave["content"]["membership"], "leave", "{synced}");
    assert!(synced["rooms"]["invite"][&room].is_null(), "{synced}");
    other.stop();
    peer.stop();
    lattice.stop().await;
}

/// `user`'s leave of `room` on `lattice`, from `server`: `make_leave`, then
/// the template completed and signed by `server` (not sent).
async fn signed_leave(
    server: &HostilePeer,
    lattice: &TestServer,
    room: &str,
    user: &str,
) -> (String, Value) {
    let (status, body) = server
        .request(
            lattice.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                enc(room),
                enc(user)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut template = body["event"].clone();
    template["origin"] = server.name().into();
    template["origin_server_ts"] = now_ms().into();
    server.pdu(&RoomVersionId::V1, template)
}

#[tokio::test]
async fn outbound_invites_fall_back_to_v1_and_v1_send_leave_checks_the_origin() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let other = HostilePeer::start().await;
    // Neither knows /v2/invite (404 M_UNRECOGNIZED, unscripted).
    peer.accept_v1_invites();
    other.accept_v1_invites();
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "1"}),
        )
        .await;
    let (mallory, eve) = (peer.user("mallory"), other.user("eve"));
    for user in [&mallory, &eve] {
        let (status, body) = lattice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                Some(&alice.access_token),
                json!({ "user_id": user }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            membership(&lattice, &alice, &room, user).await.as_deref(),
            Some("invite")
        );
    }
    assert_eq!(peer.received("/_matrix/federation/v2/invite/").len(), 1);
    let sent = peer.received("/_matrix/federation/v1/invite/");
    assert_eq!(sent.len(), 1);
    // The v1 body is the event, its stripped state in `unsigned`.
    let event = &sent[0].body;
    assert_eq!(event["state_key"], mallory.as_str());
    assert_eq!(event["content"]["membership"], "invite");
    let state = event["unsigned"]["invite_room_state"].as_array().unwrap();
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.create" && e["room_id"] == room.as_str()),
        "{event}"
    );

    // Each rejects: make_leave, then a signed leave through v1/send_leave.
    let send_leave = |id: &str| {
        format!(
            "/_matrix/federation/v1/send_leave/{}/{}",
            enc(&room),
            enc(id)
        )
    };
    // Eve's leave, signed by her server, sent by the peer: refused.
    let (eve_leave_id, eve_leave) = signed_leave(&other, &lattice, &room, &eve).await;
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &send_leave(&eve_leave_id),
            Some(eve_leave),
        )
        .await;
    forbidden(status, &body, "another server's leave");
    assert_eq!(
        membership(&lattice, &alice, &room, &eve).await.as_deref(),
        Some("invite")
    );
    // Mallory's own, unsigned: refused.
    let (leave_id, leave_pdu) = signed_leave(&peer, &lattice, &room, &mallory).await;
    let mut unsigned = leave_pdu.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &send_leave(&leave_id),
            Some(unsigned),
        )
        .await;
    forbidden(status, &body, "unsigned leave");
    // Signed: accepted, answered [200, {}].
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &send_leave(&leave_id),
            Some(leave_pdu),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([200, {}]));
    assert_eq!(
        membership(&lattice, &alice, &room, &mallory)
            .await
            .as_deref(),
        Some("leave")
    );

    // The peer had the invite through /invite: it is not sent again in a
    // transaction (the peer is not in the room). A ban of mallory is (her
    // server must hear of it), after anything queued before it.
    let invite_id = event["event_id"].as_str().unwrap().to_owned();
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": mallory }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pdus_sent = || {
        peer.received("/_matrix/federation/v1/send/")
            .into_iter()
            .flat_map(|r| r.body["pdus"].as_array().cloned().unwrap_or_default())
            .collect::<Vec<Value>>()
    };
    crate::harness::eventually("the ban reaches the peer", || async {
        pdus_sent()
            .iter()
            .any(|p| p["content"]["membership"] == "ban")
    })
    .await;
    assert!(
        pdus_sent()
            .iter()
            .all(|p| p["event_id"] != invite_id.as_str()),
        "the invite was sent again"
    );
    other.stop();
    peer.stop();
    lattice.stop().await;
}

#[tokio::test]
async fn outbound_invite_answers_are_checked_without_a_v1_fallback_for_new_rooms() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    peer.accept_v1_invites();
    let alice = lattice.register("alice", "password-a").await;
    let invite = |room: String, user: String| {
        let lattice = &lattice;
        let token = alice.access_token.clone();
        async move {
            lattice
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                    Some(&token),
                    json!({ "user_id": user }),
                )
                .await
        }
    };

    // A room of version 10 cannot go through /v1/invite: the invite fails,
    // and no v1 request is made.
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "10"}),
        )
        .await;
    let (status, body) = invite(room.clone(), peer.user("mallory")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "{body}");
    assert!(peer.received("/_matrix/federation/v1/invite/").is_empty());

    // A countersigned event with a value canonical JSON forbids (a float),
    // in a room of version 6: M_BAD_JSON, no invite stored.
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "6"}),
        )
        .await;
    peer.on(
        Method::PUT,
        "/_matrix/federation/v2/invite/",
        Answer::With(std::sync::Arc::new(|_, body| {
            let mut event = body["event"].clone();
            event["bad_val"] = json!(1.1);
            Answer::Json(StatusCode::OK, json!({ "event": event }))
        })),
    );
    let user = peer.user("trudy");
    let (status, body) = invite(room.clone(), user.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    assert_eq!(membership(&lattice, &alice, &room, &user).await, None);
    peer.stop();
    lattice.stop().await;
}
