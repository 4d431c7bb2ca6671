//! Attacks by a federating server of its own (the hostile peer in `hostile.rs`),
//! each one found by the adversarial review of issue #16: events pointing across
//! rooms, reads past history visibility, remote calls that never answer.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc, eventually},
    hostile::{Answer, HostilePeer},
};

async fn power_levels(server: &TestServer, who: &Login, room: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn rejected(result: &Value, event_id: &str) -> bool {
    result[event_id]["error"].is_string()
}

/// Finding 1: a PDU whose `prev_events` or `auth_events` name events of another
/// room is rejected, whether it arrives in `/send` or through
/// `/get_missing_events`; the victim room keeps its state, its members and its
/// ability to take local events.
#[tokio::test]
async fn events_pointing_into_another_room_are_rejected() {
    for version in ["10", "12"] {
        let lattice = TestServer::start_federating().await;
        let peer = HostilePeer::start().await;
        let alice = lattice.register("alice", "password-a").await;
        let carol = lattice.register("carol", "password-c").await;
        let victim = lattice
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version}),
            )
            .await;
        // The attacker's own room: carol (local) and the attacker are in it,
        // carol has all the power there.
        let other = lattice
            .create_room(
                &carol,
                json!({"preset": "public_chat", "room_version": version}),
            )
            .await;
        let mut v = peer.join(&lattice, &victim, "mallory").await;
        let o = peer.join(&lattice, &other, "mallory").await;
        let pl_before = power_levels(&lattice, &alice, &victim).await;

        // Control: an honest message is accepted (so the rejections below are
        // not the harness failing).
        let (honest, pdu) = peer.message(&v, "hello");
        let result = peer.send(&lattice, vec![pdu]).await;
        assert_eq!(result[&honest], json!({}), "v{version}: {result}");
        v.advance(&honest);

        // prev_events only in the other room.
        let (a, pdu) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "a"}),
            std::slice::from_ref(&o.latest),
            &v.message_auth(),
        );
        // One prev event here, one in the other room.
        let (b, pdu_b) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "b"}),
            &[v.latest.clone(), o.latest.clone()],
            &v.message_auth(),
        );
        // auth_events naming the other room's power levels (where the
        // attacker's friend is admin) and create event.
        let mut foreign_auth: Vec<String> = o.message_auth();
        foreign_auth.retain(|id| *id != o.join_id);
        foreign_auth.push(v.join_id.clone());
        let (c, pdu_c) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "c"}),
            std::slice::from_ref(&v.latest),
            &foreign_auth,
        );
        let result = peer.send(&lattice, vec![pdu, pdu_b, pdu_c]).await;
        for id in [&a, &b] {
            assert!(rejected(&result, id), "v{version}: {id} accepted: {result}");
        }
        // c has a state before it (its prev event is the room's): it is held
        // as rejected, which `/send` reports as handled (no `error`), as
        // Synapse does; it is never used and never shown.
        assert_eq!(result[&c], json!({}), "v{version}: {result}");
        for id in [&a, &b, &c] {
            assert_eq!(
                lattice.event_status(&alice, &victim, id).await,
                StatusCode::NOT_FOUND
            );
        }

        // The same through /get_missing_events: y's prev x is unknown, and the
        // peer's answer for it is an event whose prev is in the other room.
        let (x, pdu_x) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "x"}),
            std::slice::from_ref(&o.latest),
            &v.message_auth(),
        );
        let mut after_x = v.clone();
        after_x.advance(&x);
        let (y, pdu_y) = peer.message(&after_x, "y");
        peer.on(
            Method::POST,
            "/_matrix/federation/v1/get_missing_events/",
            Answer::Json(StatusCode::OK, json!({ "events": [pdu_x] })),
        );
        let result = peer.send(&lattice, vec![pdu_y]).await;
        assert!(rejected(&result, &y), "v{version}: {result}");
        assert!(
            !peer
                .received("/_matrix/federation/v1/get_missing_events/")
                .is_empty(),
            "the gap was asked for"
        );
        for id in [&x, &y] {
            assert_eq!(
                lattice.event_status(&alice, &victim, id).await,
                StatusCode::NOT_FOUND
            );
        }

        // The victim room is intact: same power levels, carol is not a member
        // and cannot read it, alice can still send.
        assert_eq!(power_levels(&lattice, &alice, &victim).await, pl_before);
        let (status, members) = lattice
            .get(
                &format!("/_matrix/client/v3/rooms/{victim}/joined_members"),
                Some(&alice.access_token),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(members["joined"].get(&carol.user_id).is_none(), "{members}");
        let (status, _) = lattice
            .get(
                &format!("/_matrix/client/v3/rooms/{victim}/messages?dir=b"),
                Some(&carol.access_token),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        lattice
            .send_message(
                &alice,
                &victim,
                json!({"msgtype": "m.text", "body": "still mine"}),
            )
            .await;
        peer.stop();
        lattice.stop().await;
    }
}

/// What a federation read answered, flattened to text: the body must not
/// contain the secret, whatever the status.
async fn federation_reads(
    peer: &HostilePeer,
    lattice: &TestServer,
    room: &str,
    event: &str,
) -> Vec<(String, StatusCode, String)> {
    let r = enc(room);
    let e = enc(event);
    let gets = [
        format!("/_matrix/federation/v1/event/{e}"),
        format!("/_matrix/federation/v1/state_ids/{r}?event_id={e}"),
        format!("/_matrix/federation/v1/state/{r}?event_id={e}"),
        format!("/_matrix/federation/v1/backfill/{r}?v={e}&limit=20"),
        format!("/_matrix/federation/v1/event_auth/{r}/{e}"),
        format!(
            "/_matrix/federation/v1/timestamp_to_event/{r}?ts={}&dir=b",
            crate::hostile::now_ms() + 60_000
        ),
    ];
    let mut out = Vec::new();
    for path in gets {
        let (status, body) = peer.request(lattice.name(), Method::GET, &path, None).await;
        out.push((path, status, body.to_string()));
    }
    let path = format!("/_matrix/federation/v1/get_missing_events/{r}");
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::POST,
            &path,
            Some(json!({"earliest_events": [], "latest_events": [event], "limit": 20})),
        )
        .await;
    out.push((path, status, body.to_string()));
    out
}

/// Finding 3: a server reads over federation only what one of its users may
/// see. A server whose only user is invited reads nothing of a private room; a
/// server that joined a `joined`-visibility room late gets no earlier history,
/// from any of the federation read endpoints.
#[tokio::test]
async fn federation_reads_follow_history_visibility() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    peer.accept_invites();
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let secret = lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "secret-one"}),
        )
        .await;
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.access_token),
            json!({"user_id": peer.user("mallory")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Only invited: nothing readable, neither the message nor the room's state.
    for (path, status, body) in federation_reads(&peer, &lattice, &room, &secret).await {
        assert!(!body.contains("secret-one"), "{path} leaked: {body}");
        assert_ne!(status, StatusCode::OK, "{path}: {body}");
    }

    // `joined` visibility from here on; a message, then the peer joins.
    let (status, _) = lattice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.access_token),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "secret-two"}),
        )
        .await;
    peer.join(&lattice, &room, "mallory").await;
    let after = lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "after-join"}),
        )
        .await;

    for (path, _, body) in federation_reads(&peer, &lattice, &room, &before).await {
        assert!(!body.contains("secret-two"), "{path} leaked: {body}");
    }
    for (path, _, body) in federation_reads(&peer, &lattice, &room, &after).await {
        assert!(!body.contains("secret-two"), "{path} leaked: {body}");
    }
    // What the joined server may see, it gets: the message after its join, and
    // (shared at the time) the one before the invite.
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", enc(&after)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("after-join"));
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=50",
                enc(&room),
                enc(&after)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("after-join") && text.contains("secret-one"),
        "{text}"
    );
    // The hidden event is there (the graph stays connected), redacted.
    assert!(
        body["pdus"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["type"] == "m.room.message" && p["content"] == json!({})),
        "{text}"
    );
    peer.stop();
    lattice.stop().await;
}

/// Finding 5: inviting users of a server that never answers holds neither the
/// room lock nor a database connection: other users' requests, and sends into
/// the same room, go on while the invites wait.
#[tokio::test]
async fn invites_to_a_server_that_never_answers_do_not_block_anyone() {
    let lattice = TestServer::start_federating_with(|c| {
        c.federation.request_timeout_secs = 20;
    })
    .await;
    let peer = HostilePeer::start().await;
    peer.on(Method::PUT, "/_matrix/federation/v2/invite/", Answer::Hang);
    let alice = lattice.register("alice", "password-a").await;
    let bob = lattice.register("bob", "password-b").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    // More hanging invites than the pool has connections (5 in tests).
    let mut invites = Vec::new();
    for i in 0..8 {
        let base = lattice.base.clone();
        let token = alice.access_token.clone();
        let user = peer.user(&format!("victim{i}"));
        let room = room.clone();
        invites.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!(
                    "{base}/_matrix/client/v3/rooms/{}/invite",
                    enc(&room)
                ))
                .bearer_auth(token)
                .json(&json!({"user_id": user}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    eventually("the invites reach the peer", || async {
        peer.received("/_matrix/federation/v2/invite/").len() >= 8
    })
    .await;
    // Meanwhile: a send into the same room, another user's room and profile.
    lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "not blocked"}),
        )
        .await;
    let own = lattice.create_room(&bob, json!({})).await;
    lattice
        .send_message(
            &bob,
            &own,
            json!({"msgtype": "m.text", "body": "me neither"}),
        )
        .await;
    let (status, body) = lattice.whoami(&bob.access_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The invites fail (the invitee's server never answered); nothing half-way.
    for invite in invites {
        let status = invite.await.unwrap().unwrap();
        assert!(!status.is_success(), "{status}");
    }
    let (_, members) = lattice
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members"),
            Some(&alice.access_token),
        )
        .await;
    assert!(
        !members.to_string().contains("victim"),
        "no invite stored: {members}"
    );
    peer.stop();
    lattice.stop().await;
}

/// Lies in answers to our own requests: an auth chain that is not JSON, one far
/// larger than any event needs (and slow to come). The PDU that needed it is
/// rejected; nothing else is disturbed.
#[tokio::test]
async fn lying_auth_chain_answers_reject_only_the_event() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let v = peer.join(&lattice, &room, "mallory").await;
    // An auth event Lattice has never seen, so it asks for the auth chain.
    let (unknown, _) = peer.event(
        &v,
        "m.room.member",
        Some(&v.user_id),
        json!({"membership": "join", "displayname": "never sent"}),
        std::slice::from_ref(&v.latest),
        &v.message_auth(),
    );
    let mut auth = v.message_auth();
    auth.retain(|id| *id != v.join_id);
    auth.push(unknown);
    let answers = [
        Answer::Raw(
            StatusCode::OK,
            vec![("content-type".into(), "application/json".into())],
            "{\"auth_chain\": [not json".into(),
        ),
        Answer::Slow(
            std::time::Duration::from_millis(500),
            json!({ "auth_chain": vec![json!({"type": "m.room.member"}); 2500] }),
        ),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        peer.on(Method::GET, "/_matrix/federation/v1/event_auth/", answer);
        let (id, pdu) = peer.event(
            &v,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": format!("lie {i}")}),
            std::slice::from_ref(&v.latest),
            &auth,
        );
        let result = peer.send(&lattice, vec![pdu]).await;
        assert!(rejected(&result, &id), "{result}");
        let asked = peer.received("/_matrix/federation/v1/event_auth/");
        assert_eq!(asked.len(), i + 1, "the chain was asked for");
        assert_eq!(asked[i].method, Method::GET);
        assert_eq!(asked[i].body, Value::Null);
    }
    // The honest path still works.
    let (honest, pdu) = peer.message(&v, "honest");
    let result = peer.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&honest], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &honest).await,
        StatusCode::OK
    );
    assert!(peer.name().starts_with("localhost:"));
    peer.stop();
    lattice.stop().await;
}

/// A peer that forks the room: its state event after an older event joins the
/// room's extremities and the current state is resolved (worked out before the
/// room is locked); the next local event merges both branches. A forged fork (a
/// power change by a member without power) is rejected.
#[tokio::test]
async fn forks_from_a_peer_resolve_into_the_current_state() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let v = peer.join(&lattice, &room, "mallory").await;
    lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "meanwhile"}),
        )
        .await;
    // After its join, not after alice's message: a fork.
    let mut member_auth = v.message_auth();
    member_auth.extend(v.state_id("m.room.join_rules", ""));
    let (rename, pdu) = peer.event(
        &v,
        "m.room.member",
        Some(&v.user_id),
        json!({"membership": "join", "displayname": "Forked Mallory"}),
        std::slice::from_ref(&v.latest),
        &member_auth,
    );
    let mut power = v
        .state
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .unwrap()["content"]
        .clone();
    power["users"][&v.user_id] = 100.into();
    let (grab, pdu_grab) = peer.event(
        &v,
        "m.room.power_levels",
        Some(""),
        power,
        std::slice::from_ref(&v.latest),
        &v.message_auth(),
    );
    let result = peer.send(&lattice, vec![pdu, pdu_grab]).await;
    assert_eq!(result[&rename], json!({}), "{result}");
    // Rejected by the auth rules: handled (held as rejected, no `error`, as
    // Synapse answers), never visible, never in the state (checked below).
    assert_eq!(result[&grab], json!({}), "{result}");
    assert_eq!(
        lattice.event_status(&alice, &room, &grab).await,
        StatusCode::NOT_FOUND
    );

    let (status, member) = lattice
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(&v.user_id)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["displayname"], "Forked Mallory");
    let pl = power_levels(&lattice, &alice, &room).await;
    assert!(pl["users"].get(&v.user_id).is_none(), "{pl}");

    // The next local event references both branches.
    let merge = lattice
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "merge"}))
        .await;
    let (status, body) = peer
        .request(
            lattice.name(),
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", enc(&merge)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let prevs = body["pdus"][0]["prev_events"].as_array().unwrap();
    assert_eq!(prevs.len(), 2, "{body}");
    assert!(prevs.iter().any(|p| p == &rename), "{body}");
    peer.stop();
    lattice.stop().await;
}

/// The room's server ACL holds for events fetched on another server's word: an
/// event by a server the ACL now denies, handed over in a `/get_missing_events`
/// answer by a server it allows, is refused, and so is the event that needed it.
#[tokio::test]
async fn server_acls_hold_for_events_fetched_through_another_server() {
    let lattice = TestServer::start_federating().await;
    let allowed = HostilePeer::start().await;
    let denied = HostilePeer::start_as("127.0.0.1").await;
    let alice = lattice.register("alice", "password-a").await;
    let room = lattice
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let a = allowed.join(&lattice, &room, "amy").await;
    let d = denied.join(&lattice, &room, "dan").await;
    // IP-literal servers are denied from now on (the allowed peer is a name).
    let (status, body) = lattice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&alice.access_token),
            json!({"allow": ["*"], "deny": [], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The denied server cannot send directly.
    let (direct, pdu) = denied.message(&d, "direct");
    let result = denied.send(&lattice, vec![pdu]).await;
    assert!(
        result.get(&direct).is_none_or(|r| r["error"].is_string()),
        "{result}"
    );
    // x: the denied server's message (its user is still joined); y: the
    // allowed server's message after x, sent alone, x given on request.
    let (x, pdu_x) = denied.message(&d, "smuggled");
    let mut after_x = a.clone();
    after_x.latest = x.clone();
    after_x.depth = after_x.depth.max(d.depth + 1);
    let (y, pdu_y) = allowed.message(&after_x, "carrier");
    allowed.on(
        Method::POST,
        "/_matrix/federation/v1/get_missing_events/",
        Answer::Json(StatusCode::OK, json!({ "events": [pdu_x] })),
    );
    let result = allowed.send(&lattice, vec![pdu_y]).await;
    assert!(
        !allowed
            .received("/_matrix/federation/v1/get_missing_events/")
            .is_empty(),
        "the gap was asked for"
    );
    assert!(rejected(&result, &y), "{result}");
    for id in [&x, &y, &direct] {
        assert_eq!(
            lattice.event_status(&alice, &room, id).await,
            StatusCode::NOT_FOUND,
            "{id}"
        );
    }
    // The allowed server still takes part.
    let (honest, pdu) = allowed.message(&a, "honest");
    let result = allowed.send(&lattice, vec![pdu]).await;
    assert_eq!(result[&honest], json!({}), "{result}");
    allowed.stop();
    denied.stop();
    lattice.stop().await;
}
