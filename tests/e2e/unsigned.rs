//! What clients rely on beyond the event itself: registration and the other UIA
//! endpoints answering a first `{}` with their flows, and the `unsigned` fields
//! every endpoint serving events adds (`transaction_id` for the sending device
//! only, `prev_content` / `replaces_state` / `prev_sender`, `membership`, `age`)
//! and bundled aggregations (`m.replace`, `m.reference`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc, password_auth, user_id};

const V3: &str = "/_matrix/client/v3";
const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

// ---------------------------------------------------------------------------
// Registration and UIA: flows first.

#[tokio::test]
async fn register_with_empty_body_answers_flows_then_completes_with_the_session() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(&format!("{V3}/register"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    assert_eq!(body["params"], json!({}));
    let session = body["session"].as_str().expect("session").to_owned();
    assert!(!session.is_empty());
    assert!(body.get("errcode").is_none(), "{body}");

    // The stage completed without a password: the password is asked for, and the
    // session stays usable.
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            None,
            json!({ "username": "ada", "auth": { "type": "m.login.dummy", "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");

    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            None,
            json!({
                "username": "ada",
                "password": "pw",
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("ada"));
    let (status, _) = server.login("ada", "pw").await;
    assert_eq!(status, StatusCode::OK);
    // A spent session registers nobody else.
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            None,
            json!({
                "username": "ada2",
                "password": "pw",
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_ne!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn register_with_empty_body_is_forbidden_when_registration_is_closed() {
    let server = TestServer::start_with(|c| c.registration = Default::default()).await;
    let (status, body) = server
        .post(&format!("{V3}/register"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body.get("session").is_none(), "{body}");
}

#[tokio::test]
async fn register_with_empty_body_offers_the_token_flow_when_only_tokens_are_allowed() {
    let server = TestServer::start_with(|c| {
        c.registration.open = false;
        c.registration.tokens = true;
    })
    .await;
    lattice::storage::registration_tokens::insert(&server.state.db, "tok", Some(1), None, 0)
        .await
        .unwrap();
    let (status, body) = server
        .post(&format!("{V3}/register"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.registration_token"] }])
    );
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            None,
            json!({
                "username": "tess",
                "password": "pw",
                "auth": { "type": "m.login.registration_token", "token": "tok", "session": session },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("tess"));
}

#[tokio::test]
async fn guest_and_appservice_registration_skip_uia() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let (status, body) = server
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].is_string(), "{body}");

    // No application service is registered: no UIA flows for that type, but
    // the request's own error.
    let body = json!({ "type": "m.login.application_service", "username": "bridge_x" });
    let (status, answer) = server
        .post(&format!("{V3}/register"), None, body.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.get("flows").is_none(), "{answer}");
    let (status, answer) = server
        .post(&format!("{V3}/register"), Some("not-an-as-token"), body)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["errcode"], "M_UNKNOWN_TOKEN");
    assert!(answer.get("flows").is_none(), "{answer}");
}

/// The 401 body a first UIA request gets: the password flow and a session.
fn assert_password_flows(status: StatusCode, body: &Value, what: &str) -> String {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.password"] }]),
        "{what}: {body}"
    );
    assert!(body.get("errcode").is_none(), "{what}: {body}");
    body["session"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no session in {body}"))
        .to_owned()
}

#[tokio::test]
async fn uia_endpoints_answer_a_first_empty_body_with_their_flows() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let token = Some(alice.access_token.as_str());

    // Password change: `{}` starts UIA; completing it without a new password is
    // a missing parameter; with one, it changes.
    let (status, body) = server
        .post(&format!("{V3}/account/password"), token, json!({}))
        .await;
    let session = assert_password_flows(status, &body, "/account/password");
    let (status, body) = server
        .post(
            &format!("{V3}/account/password"),
            token,
            json!({ "auth": password_auth(&alice.user_id, "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    let (status, body) = server
        .post(
            &format!("{V3}/account/password"),
            token,
            json!({
                "new_password": "pw2",
                "logout_devices": false,
                "auth": password_auth(&alice.user_id, "pw", &session),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.login("alice", "pw2").await.0, StatusCode::OK);
    assert_eq!(server.login("alice", "pw").await.0, StatusCode::FORBIDDEN);
    // An empty body (no JSON at all) is `{}` too.
    let (status, body) = server
        .call(Method::POST, &format!("{V3}/account/password"), token, None)
        .await;
    assert_password_flows(status, &body, "/account/password without a body");

    // Deleting one device.
    let (_, other) = server.login("alice", "pw2").await;
    let other = Login::from_json(&other);
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("{V3}/devices/{}", other.device_id),
            token,
            Some(json!({})),
        )
        .await;
    assert_password_flows(status, &body, "DELETE /devices/{id}");

    // Deleting several: `devices` is required (spec; Synapse answers 400 too),
    // and with it the first request gets the flows.
    let (status, body) = server
        .post(
            &format!("{V3}/delete_devices"),
            token,
            json!({ "devices": [other.device_id] }),
        )
        .await;
    assert_password_flows(status, &body, "/delete_devices");

    // Replacing cross-signing keys (the first upload needs no UIA).
    let master = |key: &str| json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { format!("ed25519:{key}"): key } });
    let (status, body) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            token,
            json!({ "master_key": master("AAA") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            token,
            json!({}),
        )
        .await;
    assert_password_flows(status, &body, "/keys/device_signing/upload");

    // Deactivation.
    let (status, body) = server
        .post(&format!("{V3}/account/deactivate"), token, json!({}))
        .await;
    let session = assert_password_flows(status, &body, "/account/deactivate");
    // Nothing happened: the account still works.
    assert_eq!(server.whoami(&alice.access_token).await.0, StatusCode::OK);
    // A session is bound to its operation: the deactivation session does not
    // change the password.
    let (status, body) = server
        .post(
            &format!("{V3}/account/password"),
            token,
            json!({ "new_password": "x", "auth": password_auth(&alice.user_id, "pw2", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

// ---------------------------------------------------------------------------
// unsigned.transaction_id

/// Sends a message with a chosen transaction ID; returns the event ID.
async fn send_txn(server: &TestServer, who: &Login, room: &str, txn: &str, body: &str) -> String {
    let (status, sent) = server
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.access_token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

fn find<'a>(events: &'a Value, event_id: &str) -> &'a Value {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} not in {events}"))
}

async fn sync_timeline(server: &TestServer, who: &Login, room: &str) -> Value {
    let filter = enc(r#"{"room":{"timeline":{"limit":50}}}"#);
    let (status, body) = server
        .get(
            &format!("{V3}/sync?filter={filter}"),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"]["join"][room]["timeline"]["events"].clone()
}

async fn messages_chunk(server: &TestServer, who: &Login, room: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=b&limit=50"),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"].clone()
}

async fn get_event(server: &TestServer, who: &Login, room: &str, event_id: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{room}/event/{}", enc(event_id)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn context_event(server: &TestServer, who: &Login, room: &str, event_id: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{room}/context/{}?limit=4", enc(event_id)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn sliding_timeline(server: &TestServer, who: &Login, room: &str) -> Value {
    let (status, body) = server
        .post(
            SLIDING,
            Some(&who.access_token),
            json!({
                "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 20, "required_state": [] } },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"][room]["timeline"].clone()
}

#[tokio::test]
async fn transaction_id_is_shown_to_the_sending_device_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (_, other) = server.login("alice", "pw").await;
    let alice_phone = Login::from_json(&other);
    assert_ne!(alice.device_id, alice_phone.device_id);
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let first = send_txn(&server, &alice, &room, "txn-laptop-1", "first").await;
    let second = send_txn(&server, &alice, &room, "txn-laptop-2", "second").await;
    // Bob sends with the same transaction ID: his event is not Alice's.
    let bobs = send_txn(&server, &bob, &room, "txn-laptop-1", "bob's").await;

    let txn = |ev: &Value| ev["unsigned"]["transaction_id"].clone();
    for (who, login, expect_first, expect_second, expect_bobs) in [
        (
            "alice's sending device",
            &alice,
            json!("txn-laptop-1"),
            json!("txn-laptop-2"),
            Value::Null,
        ),
        (
            "alice's other device",
            &alice_phone,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
        ("bob", &bob, Value::Null, Value::Null, json!("txn-laptop-1")),
    ] {
        let timeline = sync_timeline(&server, login, &room).await;
        assert_eq!(txn(find(&timeline, &first)), expect_first, "/sync, {who}");
        assert_eq!(txn(find(&timeline, &second)), expect_second, "/sync, {who}");
        assert_eq!(txn(find(&timeline, &bobs)), expect_bobs, "/sync, {who}");

        let chunk = messages_chunk(&server, login, &room).await;
        assert_eq!(txn(find(&chunk, &first)), expect_first, "/messages, {who}");
        assert_eq!(txn(find(&chunk, &bobs)), expect_bobs, "/messages, {who}");

        let event = get_event(&server, login, &room, &first).await;
        assert_eq!(txn(&event), expect_first, "/event, {who}");

        let context = context_event(&server, login, &room, &second).await;
        assert_eq!(
            txn(&context["event"]),
            expect_second,
            "/context event, {who}"
        );
        assert_eq!(
            txn(find(&context["events_before"], &first)),
            expect_first,
            "/context before, {who}"
        );
        assert_eq!(
            txn(find(&context["events_after"], &bobs)),
            expect_bobs,
            "/context after, {who}"
        );

        let sliding = sliding_timeline(&server, login, &room).await;
        assert_eq!(
            txn(find(&sliding, &first)),
            expect_first,
            "sliding sync, {who}"
        );
        assert_eq!(
            txn(find(&sliding, &bobs)),
            expect_bobs,
            "sliding sync, {who}"
        );
    }

    // Relations and threads serve events too.
    let (status, sent) = server
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/txn-reply"),
            Some(&alice.access_token),
            json!({ "msgtype": "m.text", "body": "in thread",
                    "m.relates_to": { "rel_type": "m.thread", "event_id": first } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let reply = sent["event_id"].as_str().unwrap().to_owned();
    for (login, expect) in [(&alice, json!("txn-reply")), (&alice_phone, Value::Null)] {
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v1/rooms/{room}/relations/{}", enc(&first)),
                Some(&login.access_token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(txn(find(&body["chunk"], &reply)), expect, "/relations");
        // The thread summary's latest event is Alice's reply.
        let event = get_event(&server, login, &room, &first).await;
        let latest = &event["unsigned"]["m.relations"]["m.thread"]["latest_event"];
        assert_eq!(latest["event_id"], reply.as_str(), "{event}");
        assert_eq!(txn(latest), expect, "thread summary");
    }

    // A redaction sent with a transaction ID carries it too.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{}/txn-redact", enc(&second)),
            Some(&alice.access_token),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction = body["event_id"].as_str().unwrap().to_owned();
    let chunk = messages_chunk(&server, &alice, &room).await;
    assert_eq!(txn(find(&chunk, &redaction)), json!("txn-redact"));
    let chunk = messages_chunk(&server, &bob, &room).await;
    assert_eq!(txn(find(&chunk, &redaction)), Value::Null);
}

// ---------------------------------------------------------------------------
// State events: prev_content, replaces_state, prev_sender.

async fn set_state(
    server: &TestServer,
    who: &Login,
    room: &str,
    kind: &str,
    content: Value,
) -> String {
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/{kind}/"),
            Some(&who.access_token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn state_events_carry_what_they_replaced() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    // Joined-only history: Bob may not see what came before he joined.
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Before",
                    "initial_state": [{ "type": "m.room.history_visibility", "state_key": "",
                                        "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    server.join(&bob, &room).await;
    // Bob may change the name too.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.power_levels/"),
            Some(&alice.access_token),
            // (Alice created the room: in v12 rooms creators are not listed.)
            json!({ "users": { bob.user_id.clone(): 50 }, "events": { "m.room.name": 50 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = set_state(
        &server,
        &bob,
        &room,
        "m.room.name",
        json!({ "name": "Second" }),
    )
    .await;
    let third = set_state(
        &server,
        &alice,
        &room,
        "m.room.name",
        json!({ "name": "Third" }),
    )
    .await;

    let chunk = messages_chunk(&server, &alice, &room).await;
    let first_name = chunk
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Before")
        .expect("the first name event")
        .clone();
    let first_id = first_name["event_id"].as_str().unwrap().to_owned();
    // The first name replaced nothing.
    assert!(
        first_name["unsigned"].get("replaces_state").is_none(),
        "{first_name}"
    );
    assert!(
        first_name["unsigned"].get("prev_content").is_none(),
        "{first_name}"
    );

    let check = |ev: &Value, replaced: &str, prev_name: &str, prev_sender: &str| {
        assert_eq!(ev["unsigned"]["replaces_state"], replaced, "{ev}");
        assert_eq!(
            ev["unsigned"]["prev_content"],
            json!({ "name": prev_name }),
            "{ev}"
        );
        assert_eq!(ev["unsigned"]["prev_sender"], prev_sender, "{ev}");
        // Only in `unsigned`, as the spec has it since v1.2.
        assert!(ev.get("prev_content").is_none(), "{ev}");
    };
    check(find(&chunk, &second), &first_id, "Before", &alice.user_id);
    check(find(&chunk, &third), &second, "Second", &bob.user_id);
    let timeline = sync_timeline(&server, &alice, &room).await;
    check(find(&timeline, &third), &second, "Second", &bob.user_id);
    check(
        &get_event(&server, &alice, &room, &third).await,
        &second,
        "Second",
        &bob.user_id,
    );
    let (_, state_event) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.name/?format=event"),
            Some(&alice.access_token),
        )
        .await;
    check(&state_event, &second, "Second", &bob.user_id);

    // A member event's previous membership (the display name change after the join).
    let (status, body) = server
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&bob.user_id)),
            Some(&bob.access_token),
            json!({ "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chunk = messages_chunk(&server, &alice, &room).await;
    let renamed = chunk
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["content"]["displayname"] == "Bobby")
        .expect("the rename");
    assert_eq!(
        renamed["unsigned"]["prev_content"]["membership"], "join",
        "{renamed}"
    );
    assert!(
        renamed["unsigned"]["replaces_state"].is_string(),
        "{renamed}"
    );

    // Bob joined after the first name: he sees that the second replaced
    // something, but not what it was.
    let chunk = messages_chunk(&server, &bob, &room).await;
    let second_for_bob = find(&chunk, &second);
    assert_eq!(
        second_for_bob["unsigned"]["replaces_state"],
        first_id.as_str()
    );
    assert!(
        second_for_bob["unsigned"].get("prev_content").is_none(),
        "{second_for_bob}"
    );
    check(find(&chunk, &third), &second, "Second", &bob.user_id);
}

// ---------------------------------------------------------------------------
// unsigned.membership and age.

#[tokio::test]
async fn events_carry_the_readers_membership_at_them_and_their_age() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    // `shared` history (the default): Bob sees what came before his invite.
    let room = server.create_room(&alice, json!({})).await;
    let before = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "before" }),
        )
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let invited = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "invited" }),
        )
        .await;
    server.join(&bob, &room).await;
    let joined = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "joined" }),
        )
        .await;

    let membership = |ev: &Value| ev["unsigned"]["membership"].clone();
    let chunk = messages_chunk(&server, &bob, &room).await;
    assert_eq!(membership(find(&chunk, &before)), "leave");
    assert_eq!(membership(find(&chunk, &invited)), "invite");
    assert_eq!(membership(find(&chunk, &joined)), "join");
    let timeline = sync_timeline(&server, &bob, &room).await;
    assert_eq!(membership(find(&timeline, &joined)), "join");
    // Bob's own join event: his membership including its change.
    let own_join = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "join"
        })
        .expect("bob's join in his timeline");
    assert_eq!(membership(own_join), "join");
    // The invite before it: Bob's membership after it is "invite".
    let invite = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite")
        .expect("bob's invite in his timeline");
    assert_eq!(membership(invite), "invite");
    let chunk = messages_chunk(&server, &alice, &room).await;
    assert_eq!(membership(find(&chunk, &before)), "join");

    // Bob leaves: what came after is not his to see, what he saw says "join";
    // his leave says "leave".
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{room}/leave"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = get_event(&server, &bob, &room, &joined).await;
    assert_eq!(membership(&event), "join");

    // age: milliseconds since the event was sent, generated now.
    for ev in chunk.as_array().unwrap() {
        let age = ev["unsigned"]["age"]
            .as_i64()
            .unwrap_or_else(|| panic!("no age in {ev}"));
        assert!((0..120_000).contains(&age), "{ev}");
    }
}

// ---------------------------------------------------------------------------
// Bundled aggregations: m.replace and m.reference.

/// Sends an `m.room.message`, a few milliseconds after the one before: the
/// newest edit is chosen by `origin_server_ts`, which must differ between them.
async fn send_content(server: &TestServer, who: &Login, room: &str, content: Value) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    server.send_message(who, room, content).await
}

fn edit_of(original: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": { "msgtype": "m.text", "body": body },
        "m.relates_to": { "rel_type": "m.replace", "event_id": original },
    })
}

#[tokio::test]
async fn edits_and_references_are_bundled_everywhere_events_are_served() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let original = send_content(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "original" }),
    )
    .await;
    let edit1 = send_content(&server, &alice, &room, edit_of(&original, "edit one")).await;
    let edit2 = send_content(&server, &alice, &room, edit_of(&original, "edit two")).await;
    // Edits by someone else are no replacements (spec: same sender), nor is one
    // without m.new_content, however new.
    send_content(&server, &bob, &room, edit_of(&original, "bob's edit")).await;
    let mut bare = edit_of(&original, "bare");
    bare.as_object_mut().unwrap().remove("m.new_content");
    send_content(&server, &alice, &room, bare).await;
    let reference = send_content(
        &server,
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "see above",
                "m.relates_to": { "rel_type": "m.reference", "event_id": original } }),
    )
    .await;
    // An original edited only by another user gets no m.replace.
    let other = send_content(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "untouched" }),
    )
    .await;
    send_content(&server, &bob, &room, edit_of(&other, "hijacked")).await;

    let check = |ev: &Value, edit: &str, where_: &str| {
        let relations = &ev["unsigned"]["m.relations"];
        assert_eq!(relations["m.replace"]["event_id"], edit, "{where_}: {ev}");
        assert_eq!(
            relations["m.replace"]["content"]["m.new_content"]["body"],
            if edit == edit2 {
                "edit two"
            } else {
                "edit one"
            },
            "{where_}: {ev}"
        );
        assert_eq!(relations["m.replace"]["sender"], alice.user_id.as_str());
        // The original's content is left as it was (spec v1.7).
        assert_eq!(ev["content"]["body"], "original", "{where_}: {ev}");
        assert_eq!(
            relations["m.reference"],
            json!({ "chunk": [{ "event_id": reference }] }),
            "{where_}: {ev}"
        );
    };
    for login in [&alice, &bob] {
        check(
            &get_event(&server, login, &room, &original).await,
            &edit2,
            "/event",
        );
        let chunk = messages_chunk(&server, login, &room).await;
        check(find(&chunk, &original), &edit2, "/messages");
        let untouched = find(&chunk, &other);
        assert!(
            untouched["unsigned"]["m.relations"]
                .get("m.replace")
                .is_none(),
            "{untouched}"
        );
        let context = context_event(&server, login, &room, &original).await;
        check(&context["event"], &edit2, "/context");
        let timeline = sync_timeline(&server, login, &room).await;
        check(find(&timeline, &original), &edit2, "/sync");
        let sliding = sliding_timeline(&server, login, &room).await;
        check(find(&sliding, &original), &edit2, "sliding sync");
    }

    // The newest edit redacted: the one before it is the replacement.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{}/r1", enc(&edit2)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    check(
        &get_event(&server, &bob, &room, &original).await,
        &edit1,
        "/event after redaction",
    );
    // A redacted reference no longer counts.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{}/r2", enc(&reference)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = get_event(&server, &bob, &room, &original).await;
    assert!(
        event["unsigned"]["m.relations"]
            .get("m.reference")
            .is_none(),
        "{event}"
    );
    // The original redacted: no edit is bundled with it.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{}/r3", enc(&original)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = get_event(&server, &bob, &room, &original).await;
    assert!(
        event["unsigned"]["m.relations"].get("m.replace").is_none(),
        "{event}"
    );
    assert_eq!(event["content"], json!({}), "{event}");
}
