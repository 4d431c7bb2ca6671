//! Restricted rooms joined from another server (spec "Restricted rooms",
//! `make_join`/`send_join`): Lattice as the resident server picks a local
//! member who may invite as `join_authorised_via_users_server`, countersigns
//! the join, and refuses what it cannot vouch for.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc},
    hostile::HostilePeer,
};

async fn restricted_room(lattice: &TestServer, alice: &Login, allow: &str, extra: Value) -> String {
    let mut body = json!({
        "preset": "private_chat",
        "room_version": "10",
        "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": allow}]},
        }],
    });
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            body[k] = v.clone();
        }
    }
    lattice.create_room(alice, body).await
}

async fn make_join(
    peer: &HostilePeer,
    lattice: &TestServer,
    room: &str,
    user: &str,
) -> (StatusCode, Value) {
    peer.request(
        lattice.name(),
        Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=10",
            enc(room),
            enc(user)
        ),
        None,
    )
    .await
}

async fn joined(lattice: &TestServer, alice: &Login, room: &str) -> Value {
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["joined"].clone()
}

#[tokio::test]
async fn a_remote_user_in_an_allowed_room_joins_through_a_local_authoriser() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let space = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let room = restricted_room(&lattice, &alice, &space, json!({})).await;
    peer.join(&lattice, &space, "mallory").await;

    // make_join names alice as the authoriser.
    let mallory = peer.user("mallory");
    let (status, template) = make_join(&peer, &lattice, &room, &mallory).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    assert_eq!(
        template["event"]["content"]["join_authorised_via_users_server"],
        json!(alice.user_id),
        "{template}"
    );

    // send_join: countersigned by Lattice and accepted.
    let signed = peer.signed_join(&lattice, &room, "mallory").await;
    let (status, answer) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                enc(&room),
                enc(&signed.event_id)
            ),
            Some(signed.pdu.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let signatures = answer["event"]["signatures"].as_object().expect("event");
    assert!(signatures.contains_key(lattice.name()), "{answer}");
    assert!(signatures.contains_key(peer.name()), "{answer}");
    assert!(
        joined(&lattice, &alice, &room)
            .await
            .get(&mallory)
            .is_some()
    );
    peer.stop();
    lattice.stop().await;
}

/// What Lattice cannot vouch for it refuses: a user in none of the allowed
/// rooms (403), a join naming alice that `make_join` would have refused (403,
/// not countersigned), an allowed room this server is not in (400
/// `M_UNABLE_TO_AUTHORISE_JOIN`, so the joining server tries another), and
/// a room where no local member may invite (400 `M_UNABLE_TO_GRANT_JOIN`).
#[tokio::test]
async fn restricted_joins_lattice_cannot_vouch_for_are_refused() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let space = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let room = restricted_room(&lattice, &alice, &space, json!({})).await;
    peer.join(&lattice, &space, "mallory").await;
    let eve = peer.user("eve");

    // Eve is in no allowed room.
    let (status, body) = make_join(&peer, &lattice, &room, &eve).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Eve's join built from mallory's template, naming alice: refused.
    let (status, template) = make_join(&peer, &lattice, &room, &peer.user("mallory")).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    let mut forged = template["event"].clone();
    forged["sender"] = eve.clone().into();
    forged["state_key"] = eve.clone().into();
    forged["origin_server_ts"] = crate::hostile::now_ms().into();
    let (event_id, pdu) = peer.pdu(&"10".try_into().unwrap(), forged);
    let (status, answer) = peer
        .request(
            lattice.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                enc(&room),
                enc(&event_id)
            ),
            Some(pdu),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(joined(&lattice, &alice, &room).await.get(&eve).is_none());

    // An allowed room this server is not in.
    let elsewhere =
        restricted_room(&lattice, &alice, "!nowhere:elsewhere.example", json!({})).await;
    let (status, body) = make_join(&peer, &lattice, &elsewhere, &peer.user("mallory")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNABLE_TO_AUTHORISE_JOIN");

    // No local member may invite.
    let locked = restricted_room(
        &lattice,
        &alice,
        &space,
        json!({"power_level_content_override": {"invite": 101}}),
    )
    .await;
    let (status, body) = make_join(&peer, &lattice, &locked, &peer.user("mallory")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNABLE_TO_GRANT_JOIN");
    peer.stop();
    lattice.stop().await;
}
