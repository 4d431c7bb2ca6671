//! Server ACLs on every federation endpoint (spec: "Server Access Control
//! Lists (ACLs)"): a server the room's `m.room.server_acl` denies has its PDUs
//! in `/send` refused one by one (each answered by event ID) and gets
//! `403 M_FORBIDDEN` from every room endpoint — each checked to work for the
//! same server before the ban, so the refusal is the ACL's doing.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, enc, password_auth},
    hostile::{HostilePeer, JoinedRoom},
};

/// The room endpoints a joined server calls, each with what the server would
/// send; `(name, method, path, body)`.
fn room_requests(
    peer: &HostilePeer,
    room: &JoinedRoom,
) -> Vec<(&'static str, Method, String, Option<Value>)> {
    let r = enc(&room.room_id);
    let latest = enc(&room.latest);
    // A repeated join and a leave of the peer's user: valid events either way.
    let mut join_auth = room.message_auth();
    join_auth.extend(room.state_id("m.room.join_rules", ""));
    let (join_id, join) = peer.event(
        room,
        "m.room.member",
        Some(&room.user_id),
        json!({"membership": "join"}),
        std::slice::from_ref(&room.latest),
        &join_auth,
    );
    let (leave_id, leave) = peer.event(
        room,
        "m.room.member",
        Some(&room.user_id),
        json!({"membership": "leave"}),
        std::slice::from_ref(&room.latest),
        &room.message_auth(),
    );
    vec![
        (
            "make_join",
            Method::GET,
            format!(
                "/_matrix/federation/v1/make_join/{r}/{}?ver={}",
                enc(&room.user_id),
                room.version
            ),
            None,
        ),
        (
            "make_leave",
            Method::GET,
            format!(
                "/_matrix/federation/v1/make_leave/{r}/{}",
                enc(&room.user_id)
            ),
            None,
        ),
        (
            "send_join",
            Method::PUT,
            format!("/_matrix/federation/v2/send_join/{r}/{}", enc(&join_id)),
            Some(join),
        ),
        (
            "state",
            Method::GET,
            format!("/_matrix/federation/v1/state/{r}?event_id={latest}"),
            None,
        ),
        (
            "state_ids",
            Method::GET,
            format!("/_matrix/federation/v1/state_ids/{r}?event_id={latest}"),
            None,
        ),
        (
            "backfill",
            Method::GET,
            format!("/_matrix/federation/v1/backfill/{r}?v={latest}&limit=10"),
            None,
        ),
        (
            "event_auth",
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{r}/{latest}"),
            None,
        ),
        (
            "get_missing_events",
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [room.latest], "limit": 10})),
        ),
        // As SyTest sends it: no fields at all (all of them have defaults).
        (
            "get_missing_events {}",
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({})),
        ),
        // Last: it takes the peer's user out of the room.
        (
            "send_leave",
            Method::PUT,
            format!("/_matrix/federation/v2/send_leave/{r}/{}", enc(&leave_id)),
            Some(leave),
        ),
    ]
}

#[tokio::test]
async fn a_denied_server_is_refused_on_every_room_endpoint() {
    let lattice = TestServer::start_federating().await;
    let denied = HostilePeer::start_as("127.0.0.1").await;
    let allowed = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let mut d = denied.join(&lattice, &room, "dan").await;
    let a = allowed.join(&lattice, &room, "amy").await;

    // Before the ban: the denied server's message is accepted, and every room
    // endpoint answers it (the leave is left for after the ban).
    let (before, pdu) = denied.message(&d, "before the ban");
    let result = denied.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&before], json!({}), "{result}");
    d.advance(&before);
    let requests = room_requests(&denied, &d);
    for (name, method, path, body) in &requests {
        if *name == "send_leave" {
            continue;
        }
        let (status, answer) = denied
            .request(lattice.name(), method.clone(), path, body.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{name} before the ban: {answer}");
    }
    assert_eq!(
        denied
            .request(
                lattice.name(),
                Method::POST,
                &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
                Some(json!({})),
            )
            .await
            .1,
        json!({"events": []}),
    );

    // The ban: IP-literal 127.0.0.1 denied by name, everything else allowed.
    let (status, body) = lattice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&alice.access_token),
            json!({"allow": ["*"], "deny": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // /send: the PDU is answered by ID with an error and never stored.
    let (after, pdu) = denied.message(&d, "after the ban");
    let result = denied.send(&lattice, vec![pdu]).await;
    assert!(result[&after]["error"].is_string(), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &after).await,
        StatusCode::NOT_FOUND
    );

    // Every room endpoint, including the join, the leave and the missing
    // events, answers 403 M_FORBIDDEN.
    for (name, method, path, body) in room_requests(&denied, &d) {
        let (status, answer) = denied.request(lattice.name(), method, &path, body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{name} after the ban: {answer}"
        );
        assert_eq!(answer["errcode"], "M_FORBIDDEN", "{name}: {answer}");
    }
    // The refused leave changed nothing: the denied server's user is still
    // a member as far as the room is concerned.
    let (status, member) = lattice
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(&d.user_id)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join", "{member}");

    // /invite of one of our users into a room of the denied server's.
    let bob_id = format!("@bob:{}", lattice.name());
    lattice.register("bob", "password-b").await;
    let (invite_id, invite) = denied.event(
        &d,
        "m.room.member",
        Some(&bob_id),
        json!({"membership": "invite"}),
        std::slice::from_ref(&d.latest),
        &d.message_auth(),
    );
    let (status, answer) = denied
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                enc(&room),
                enc(&invite_id)
            ),
            Some(json!({
                "room_version": d.version.as_str(),
                "event": invite,
                "invite_room_state": [],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "invite: {answer}");
    assert_eq!(answer["errcode"], "M_FORBIDDEN", "{answer}");

    // The allowed server still takes part.
    let (honest, pdu) = allowed.message(&a, "still here");
    let result = allowed.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&honest], json!({}), "{result}");
    let (status, answer) = allowed
        .request(
            lattice.name(),
            Method::POST,
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
            Some(json!({"latest_events": [honest]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    denied.stop();
    allowed.stop();
    lattice.stop().await;
}

/// The ACL is checked before anything of a room request is parsed: a denied
/// server's malformed requests are refused as any of its requests (403), and
/// it cannot tell a well-formed request from a bad one. Each request is
/// checked to be malformed (400) for an allowed server first.
#[tokio::test]
async fn a_denied_server_learns_nothing_from_malformed_requests() {
    let lattice = TestServer::start_federating().await;
    let denied = HostilePeer::start_as("127.0.0.1").await;
    let allowed = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let (status, body) = lattice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&alice.access_token),
            json!({"allow": ["*"], "deny": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = enc(&room);
    let event = enc(&format!("$an-event:{}", allowed.name()));
    let malformed = [
        // No `limit` (required).
        (
            Method::GET,
            format!("/_matrix/federation/v1/backfill/{r}?v={event}"),
            None,
        ),
        // Not an event ID.
        (
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{r}/not-an-event"),
            None,
        ),
        // Not a user ID.
        (
            Method::GET,
            format!("/_matrix/federation/v1/make_join/{r}/not-a-user?ver=10"),
            None,
        ),
        // `omit_members` neither true nor false.
        (
            Method::PUT,
            format!("/_matrix/federation/v2/send_join/{r}/{event}?omit_members=maybe"),
            Some(json!({})),
        ),
        // No `room_version`.
        (
            Method::PUT,
            format!("/_matrix/federation/v2/invite/{r}/{event}"),
            Some(json!({"event": {}, "invite_room_state": []})),
        ),
    ];
    for (method, path, body) in malformed {
        let (status, answer) = allowed
            .request(lattice.name(), method.clone(), &path, body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        let (status, answer) = denied.request(lattice.name(), method, &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
        assert_eq!(answer["errcode"], "M_FORBIDDEN", "{path}: {answer}");
    }
    denied.stop();
    allowed.stop();
    lattice.stop().await;
}

/// An invite of a user this server does not have is countersigned, as Synapse
/// does, and kept nowhere; one of a deactivated user is refused.
#[tokio::test]
async fn invites_of_unknown_users_are_countersigned_but_not_kept() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let room_id = format!("!elsewhere:{}", peer.name());
    let invite = |target: &str| {
        peer.pdu(
            &ruma::RoomVersionId::V10,
            json!({
                "room_id": room_id,
                "sender": peer.user("pat"),
                "type": "m.room.member",
                "state_key": target,
                "content": {"membership": "invite"},
                "prev_events": [],
                "auth_events": [],
                "depth": 3,
            }),
        )
    };
    let ghost = format!("@ghost:{}", lattice.name());
    let (event_id, event) = invite(&ghost);
    let (status, answer) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                enc(&room_id),
                enc(&event_id)
            ),
            Some(json!({"room_version": "10", "event": event, "invite_room_state": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["event"]["signatures"][lattice.name()].is_object(),
        "countersigned: {answer}"
    );
    // Nothing was kept for the name: whoever registers it later has no invite.
    let ghost_login = lattice.register("ghost", "password-g").await;
    let (status, sync) = lattice
        .get("/_matrix/client/v3/sync", Some(&ghost_login.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    // A deactivated user's invites are refused.
    let token = Some(ghost_login.access_token.as_str());
    let (status, body) = lattice
        .post("/_matrix/client/v3/account/deactivate", token, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let auth = password_auth("ghost", "password-g", body["session"].as_str().unwrap());
    let (status, body) = lattice
        .post(
            "/_matrix/client/v3/account/deactivate",
            token,
            json!({ "auth": auth }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (event_id, event) = invite(&ghost);
    let (status, answer) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                enc(&room_id),
                enc(&event_id)
            ),
            Some(json!({"room_version": "10", "event": event, "invite_room_state": []})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    peer.stop();
    lattice.stop().await;
}
