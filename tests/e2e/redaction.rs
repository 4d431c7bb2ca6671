//! The authorisation matrix for redactions and relations: actor (the sender,
//! a powered user, an unpowered member, a non-member, a remote server) ×
//! target (same room, other room) × room version (10, 11, 12), asserting what
//! another member then reads: whether the target's content is blanked in
//! `/event` and `/messages`, and which relations are served.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, dev_tls, enc};

const V3: &str = "/_matrix/client/v3";
const V1: &str = "/_matrix/client/v1";

/// Whether `event` reads as redacted to `viewer` in `/event` and in
/// `/messages` (the two must agree).
async fn blanked(server: &TestServer, viewer: &Login, room: &str, event: &str) -> bool {
    let (status, ev) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(room), enc(event)),
            Some(&viewer.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ev}");
    let (status, page) = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=100", enc(room)),
            Some(&viewer.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let in_page = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event)
        .unwrap_or_else(|| panic!("{event} not in /messages: {page}"))
        .clone();
    let by_event = ev["content"] == json!({});
    let by_page = in_page["content"] == json!({});
    assert_eq!(
        by_event, by_page,
        "/event {ev} and /messages {in_page} differ"
    );
    assert_eq!(
        by_event,
        ev["unsigned"]["redacted_because"].is_object(),
        "{ev}"
    );
    by_event
}

fn msg(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

/// Gives `user` power level `level` in `room`, keeping the rest of the power
/// levels (in v12 the creator is not listed).
async fn set_power(server: &TestServer, owner: &Login, room: &str, user: &str, level: i64) {
    let path = format!("{V3}/rooms/{}/state/m.room.power_levels/", enc(room));
    let (status, mut power) = server.get(&path, Some(&owner.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{power}");
    power["users"][user] = level.into();
    let (status, body) = server.put(&path, Some(&owner.access_token), power).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// One way of asking for a redaction.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `PUT /rooms/{room}/redact/{event}/{txn}`.
    Redact,
    /// `PUT /rooms/{room}/send/m.room.redaction/{txn}` with `content.redacts`.
    Send,
    /// `PUT /rooms/{room}/state/m.room.redaction/{key}` with `redacts`.
    State,
}

async fn ask(
    server: &TestServer,
    actor: &Login,
    via: Via,
    room: &str,
    target: &str,
    txn: &str,
) -> (StatusCode, Value) {
    let r = enc(room);
    match via {
        Via::Redact => {
            server
                .put(
                    &format!("{V3}/rooms/{r}/redact/{}/{txn}", enc(target)),
                    Some(&actor.access_token),
                    json!({"reason": "matrix"}),
                )
                .await
        }
        Via::Send => {
            server
                .put(
                    &format!("{V3}/rooms/{r}/send/m.room.redaction/{txn}"),
                    Some(&actor.access_token),
                    json!({"redacts": target, "reason": "matrix"}),
                )
                .await
        }
        Via::State => {
            server
                .put(
                    &format!("{V3}/rooms/{r}/state/m.room.redaction/{txn}"),
                    Some(&actor.access_token),
                    json!({"redacts": target}),
                )
                .await
        }
    }
}

#[tokio::test]
async fn redaction_matrix_local_actors_targets_and_room_versions() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let moderator = server.register("moderator", "moderator-password").await;
    let bob = server.register("bob", "bob-password").await;
    let eve = server.register("eve", "eve-password").await;

    for version in ["10", "11", "12"] {
        // Room R: alice created it (100, or a v12 creator), the moderator has
        // the redact level (50), bob has none. Eve is not in it; she owns O.
        let room = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version}),
            )
            .await;
        server.join(&moderator, &room).await;
        server.join(&bob, &room).await;
        set_power(&server, &alice, &room, &moderator.user_id, 50).await;
        let other = server
            .create_room(
                &eve,
                json!({"preset": "public_chat", "room_version": version}),
            )
            .await;

        let mut n = 0;
        let mut case = async |label: &str,
                              actor: &Login,
                              via: Via,
                              through: &str,
                              author: &Login,
                              in_room: &str,
                              viewer: &Login,
                              status: StatusCode,
                              errcode: Option<&str>,
                              applied: bool| {
            n += 1;
            let target = server
                .send_message(author, in_room, msg(&format!("{label} v{version}")))
                .await;
            let (got, body) = ask(
                &server,
                actor,
                via,
                through,
                &target,
                &format!("m{version}-{n}"),
            )
            .await;
            assert_eq!(got, status, "v{version} {label} ({via:?}): {body}");
            if let Some(errcode) = errcode {
                assert_eq!(body["errcode"], errcode, "v{version} {label}: {body}");
            }
            assert_eq!(
                blanked(&server, viewer, in_room, &target).await,
                applied,
                "v{version} {label} ({via:?})"
            );
        };
        let ok = StatusCode::OK;
        let forbidden = StatusCode::FORBIDDEN;
        let not_found = StatusCode::NOT_FOUND;
        let bad = StatusCode::BAD_REQUEST;

        // The sender, same room: allowed, both ways of sending.
        for via in [Via::Redact, Via::Send] {
            case("own", &bob, via, &room, &bob, &room, &alice, ok, None, true).await;
        }
        // Powered, same room: the moderator, and the creator (v12: a creator
        // outranks every level without being listed).
        for via in [Via::Redact, Via::Send] {
            case(
                "powered", &moderator, via, &room, &alice, &room, &bob, ok, None, true,
            )
            .await;
            case(
                "creator", &alice, via, &room, &bob, &room, &bob, ok, None, true,
            )
            .await;
        }
        // Unpowered member, same room: refused, the target intact.
        for via in [Via::Redact, Via::Send] {
            case(
                "unpowered",
                &bob,
                via,
                &room,
                &alice,
                &room,
                &moderator,
                forbidden,
                Some("M_FORBIDDEN"),
                false,
            )
            .await;
        }
        // Non-member, same room: refused.
        for via in [Via::Redact, Via::Send] {
            let (status, body) = {
                let target = server.send_message(&alice, &room, msg("outsider")).await;
                let reply = ask(
                    &server,
                    &eve,
                    via,
                    &room,
                    &target,
                    &format!("o{version}-{via:?}"),
                )
                .await;
                assert!(!blanked(&server, &bob, &room, &target).await, "v{version}");
                reply
            };
            assert!(
                matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
                "v{version} non-member {via:?}: {status} {body}"
            );
        }
        // Another room: through a room the actor owns (eve in O), or where the
        // actor has power (the moderator in R at eve's event in O): not found.
        for via in [Via::Redact, Via::Send] {
            case(
                "other room",
                &eve,
                via,
                &other,
                &alice,
                &room,
                &bob,
                not_found,
                Some("M_NOT_FOUND"),
                false,
            )
            .await;
            case(
                "other room, powered",
                &moderator,
                via,
                &room,
                &eve,
                &other,
                &eve,
                not_found,
                Some("M_NOT_FOUND"),
                false,
            )
            .await;
            case(
                "own event, other room",
                &alice,
                via,
                &other,
                &alice,
                &room,
                &bob,
                not_found,
                Some("M_NOT_FOUND"),
                false,
            )
            .await;
        }
        // `m.room.redaction` as a state event means nothing: refused for
        // everyone, in the same room or through another, and nothing blanked.
        case(
            "state, other room",
            &eve,
            Via::State,
            &other,
            &alice,
            &room,
            &bob,
            bad,
            Some("M_BAD_JSON"),
            false,
        )
        .await;
        case(
            "state, powered",
            &alice,
            Via::State,
            &room,
            &bob,
            &room,
            &bob,
            bad,
            Some("M_BAD_JSON"),
            false,
        )
        .await;
        case(
            "state, own",
            &bob,
            Via::State,
            &room,
            &bob,
            &room,
            &alice,
            bad,
            Some("M_BAD_JSON"),
            false,
        )
        .await;
        // Nor can it be slipped in at creation.
        let (status, body) = server
            .post(
                &format!("{V3}/createRoom"),
                Some(&eve.access_token),
                json!({"room_version": version, "initial_state": [
                    {"type": "m.room.redaction", "state_key": "", "content": {"redacts": "$x"}}
                ]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "v{version}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    }
}

/// A `/send/m.room.redaction` without a valid `redacts` is bad JSON, not a
/// redaction of nothing.
#[tokio::test]
async fn send_redaction_needs_its_target() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let room = server.create_room(&alice, json!({})).await;
    for (txn, content) in [
        ("a", json!({})),
        ("b", json!({"redacts": 5})),
        ("c", json!({"redacts": "not an id"})),
    ] {
        let (status, body) = server
            .put(
                &format!("{V3}/rooms/{}/send/m.room.redaction/{txn}", enc(&room)),
                Some(&alice.access_token),
                content,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    }
    // Unknown event: not found.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/m.room.redaction/d", enc(&room)),
            Some(&alice.access_token),
            json!({"redacts": "$unknown"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Relations name their parent by ID, from any room: a room's `/relations`,
/// `/threads` and bundled thread summaries count only that room's events.
#[tokio::test]
async fn relations_and_threads_stay_in_their_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let eve = server.register("eve", "eve-password").await;
    let private = server
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let root = server
        .send_message(&alice, &private, msg("private root"))
        .await;
    let thread = |body: &str, parent: &str| {
        json!({"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": parent}})
    };
    let reply = server
        .send_message(&alice, &private, thread("real reply", &root))
        .await;

    // Eve, in a room of her own, threads onto and reacts to the private root.
    let own = server.create_room(&eve, json!({})).await;
    server
        .send_message(&eve, &own, thread("eve's reply", &root))
        .await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/m.reaction/r1", enc(&own)),
            Some(&eve.access_token),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Eve's room does not list the private root as a thread of hers.
    let (status, threads) = server
        .get(
            &format!("{V1}/rooms/{}/threads", enc(&own)),
            Some(&eve.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{threads}");
    assert_eq!(threads["chunk"], json!([]), "{threads}");
    assert!(!threads.to_string().contains("private root"), "{threads}");
    // Nor serves the root's relations through her room.
    let (status, body) = server
        .get(
            &format!("{V1}/rooms/{}/relations/{}", enc(&own), enc(&root)),
            Some(&eve.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Alice's room: only its own reply, in /relations, /threads and the
    // bundled summary.
    let (status, relations) = server
        .get(
            &format!("{V1}/rooms/{}/relations/{}", enc(&private), enc(&root)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{relations}");
    let ids: Vec<&str> = relations["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![reply.as_str()], "{relations}");
    let (status, ev) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&private), enc(&root)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ev}");
    let summary = &ev["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 1, "{ev}");
    assert_eq!(summary["latest_event"]["event_id"], reply, "{ev}");
    let (status, threads) = server
        .get(
            &format!("{V1}/rooms/{}/threads", enc(&private)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{threads}");
    assert_eq!(threads["chunk"].as_array().unwrap().len(), 1, "{threads}");
    assert_eq!(
        threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 1,
        "{threads}"
    );
}

// ---- Remote actors: a second server signs PDUs of its user and sends them.

fn https_client() -> reqwest::Client {
    let pem = std::fs::read(&dev_tls().ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// Sends a `/send` transaction from `from` to `to`, signed with from's key.
async fn send_txn(from: &TestServer, to: &TestServer, txn: &str, pdus: Vec<Value>) -> Value {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let body = json!({"origin": from.name(), "origin_server_ts": 1, "pdus": pdus, "edus": []});
    let origin = ruma::ServerName::parse(from.name()).unwrap();
    let destination = ruma::ServerName::parse(to.name()).unwrap();
    let key = &from.state.signing_key.pair;
    let mut object = lattice::domain::xmatrix::request_object(
        "PUT",
        &path,
        &origin,
        &destination,
        Some(body.clone().try_into().unwrap()),
    );
    ruma::signatures::sign_json(origin.as_str(), key, &mut object).unwrap();
    let object = serde_json::to_value(&object).unwrap();
    let sig = object["signatures"][origin.as_str()]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let header = lattice::domain::xmatrix::XMatrix {
        origin: origin.clone(),
        destination: Some(destination),
        key: format!("ed25519:{}", key.version()).try_into().unwrap(),
        sig,
    }
    .to_header();
    let response = https_client()
        .put(format!("{}{}", to.federation_url(), path))
        .header("Authorization", header)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// A PDU from `sender` (a user of `b`) into `room` on `a`, signed by `b`: its
/// prev events `a`'s forward extremities (or `prev`), its auth events the
/// power levels and the sender's membership (plus the create event before v12).
#[allow(clippy::too_many_arguments)]
async fn remote_pdu(
    a: &TestServer,
    alice: &Login,
    b: &TestServer,
    sender: &str,
    room: &str,
    version: &str,
    event: lattice::domain::pdu::NewEvent,
    prev: Option<(Vec<String>, i64)>,
) -> (String, Value) {
    let db = &a.state.db;
    let (status, state) = a
        .get(
            &format!("{V3}/rooms/{}/state", enc(room)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let state_id = |t: &str, k: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let rules = ruma::RoomVersionId::try_from(version)
        .unwrap()
        .rules()
        .unwrap();
    let mut auth = vec![
        state_id("m.room.power_levels", ""),
        state_id("m.room.member", sender),
    ];
    if !rules.authorization.room_create_event_id_as_room_id {
        auth.push(state_id("m.room.create", ""));
    }
    let mut auth: Vec<ruma::OwnedEventId> = auth
        .into_iter()
        .map(|id| ruma::OwnedEventId::try_from(id).unwrap())
        .collect();
    auth.sort();
    let (prev, depth) = match prev {
        Some(p) => p,
        None => (
            sqlx::query_scalar("select event_id from forward_extremities where room_id = $1")
                .bind(room)
                .fetch_all(db)
                .await
                .unwrap(),
            sqlx::query_scalar("select max(depth) from events where room_id = $1")
                .bind(room)
                .fetch_one(db)
                .await
                .unwrap(),
        ),
    };
    let prev: Vec<ruma::OwnedEventId> = prev
        .into_iter()
        .map(|p| ruma::OwnedEventId::try_from(p).unwrap())
        .collect();
    let room_id = ruma::RoomId::parse(room).unwrap();
    let built = lattice::domain::pdu::build(
        &rules,
        &event,
        &ruma::UserId::parse(sender).unwrap(),
        &lattice::domain::pdu::Position {
            room_id: Some(&room_id),
            prev_events: &prev,
            auth_events: &auth,
            reference_hashes: &Default::default(),
            depth: depth + 1,
        },
        ruma::MilliSecondsSinceUnixEpoch::now(),
        b.name(),
        &b.state.signing_key.pair,
    )
    .unwrap();
    (
        built.event_id.to_string(),
        serde_json::to_value(&built.json).unwrap(),
    )
}

fn redaction_of(target: &str) -> lattice::domain::pdu::NewEvent {
    lattice::domain::pdu::NewEvent {
        origin_server_ts: None,
        kind: "m.room.redaction".into(),
        content: json!({}),
        state_key: None,
        redacts: Some(ruma::OwnedEventId::try_from(target).unwrap()),
    }
}

fn message(body: &str) -> lattice::domain::pdu::NewEvent {
    lattice::domain::pdu::NewEvent {
        origin_server_ts: None,
        kind: "m.room.message".into(),
        content: msg(body),
        state_key: None,
        redacts: None,
    }
}

/// Whether `redaction` is served to `viewer` in the room's `/messages`.
async fn served(server: &TestServer, viewer: &Login, room: &str, redaction: &str) -> bool {
    let (status, page) = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=100", enc(room)),
            Some(&viewer.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == redaction)
}

#[tokio::test]
async fn redaction_matrix_remote_actors() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;

    for version in ["10", "11", "12"] {
        let alias = format!("remote{version}");
        let room = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_alias_name": alias,
                       "room_version": version}),
            )
            .await;
        // Another room of alice's, which bob is not in.
        let elsewhere = a
            .create_room(&alice, json!({"room_version": version}))
            .await;
        let (status, body) = b
            .post(
                &format!("{V3}/join/{}", enc(&format!("#{alias}:{}", a.name()))),
                Some(&bob.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut txn = 0;
        let mut send = async |pdu: Value, id: &str| {
            txn += 1;
            let reply = send_txn(&b, &a, &format!("v{version}-{txn}"), vec![pdu]).await;
            assert_eq!(reply["pdus"][id], json!({}), "v{version}: {reply}");
        };

        // Bob (no power) redacts alice's message: accepted by the auth rules,
        // not applied, and not served to clients.
        let victim = a.send_message(&alice, &room, msg("alice's")).await;
        let (rid, pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            redaction_of(&victim),
            None,
        )
        .await;
        send(pdu, &rid).await;
        assert!(
            !blanked(&a, &alice, &room, &victim).await,
            "v{version} unpowered"
        );
        assert!(
            !served(&a, &alice, &room, &rid).await,
            "v{version} withheld"
        );

        // Bob redacts an event of another room through this one: not applied.
        let secret = a.send_message(&alice, &elsewhere, msg("elsewhere")).await;
        let (rid, pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            redaction_of(&secret),
            None,
        )
        .await;
        send(pdu, &rid).await;
        assert!(
            !blanked(&a, &alice, &elsewhere, &secret).await,
            "v{version} other room"
        );

        // Bob redacts his own message: applied and served.
        let (own, pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            message("bob's"),
            None,
        )
        .await;
        send(pdu, &own).await;
        let (rid, pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            redaction_of(&own),
            None,
        )
        .await;
        send(pdu, &rid).await;
        assert!(blanked(&a, &alice, &room, &own).await, "v{version} own");
        assert!(
            served(&a, &alice, &room, &rid).await,
            "v{version} own served"
        );

        // The redaction arrives before the event it names (both on the same
        // prev events): held, then applied when the event arrives.
        let head: Vec<String> =
            sqlx::query_scalar("select event_id from forward_extremities where room_id = $1")
                .bind(&room)
                .fetch_all(&a.state.db)
                .await
                .unwrap();
        let depth: i64 = sqlx::query_scalar("select max(depth) from events where room_id = $1")
            .bind(&room)
            .fetch_one(&a.state.db)
            .await
            .unwrap();
        let (late, late_pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            message("late"),
            Some((head.clone(), depth)),
        )
        .await;
        let (rid, pdu) = remote_pdu(
            &a,
            &alice,
            &b,
            &bob.user_id,
            &room,
            version,
            redaction_of(&late),
            Some((head, depth)),
        )
        .await;
        send(pdu, &rid).await;
        assert!(!served(&a, &alice, &room, &rid).await, "v{version} held");
        send(late_pdu, &late).await;
        assert!(blanked(&a, &alice, &room, &late).await, "v{version} late");
        assert!(
            served(&a, &alice, &room, &rid).await,
            "v{version} applied, served"
        );
    }
    a.stop().await;
    b.stop().await;
}
