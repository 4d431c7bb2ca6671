//! `m.login.token` through `POST /_matrix/client/v1/login/get_token` (MSC3882,
//! spec v1.7): off by default; behind UIA with the password; tokens single-use
//! and short-lived.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, password_auth, user_id},
    sdk::rust_sdk_run,
};

async fn token_login(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.token", "token": token }),
        )
        .await
}

/// Gets a login token for `who` (password `password`) through UIA.
async fn get_token(server: &TestServer, who: &Login, password: &str) -> Value {
    let path = "/_matrix/client/v1/login/get_token";
    let (status, body) = server.post(path, Some(&who.access_token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .post(
            path,
            Some(&who.access_token),
            json!({ "auth": password_auth(&who.user_id, password, session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn off_by_default() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v1/login/get_token",
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (_, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.access_token))
        .await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], false);
    let (_, flows) = server.get("/_matrix/client/v3/login", None).await;
    assert!(
        !flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.token"),
        "{flows}"
    );
    let (status, _) = token_login(&server, "anything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_token_signs_in_another_device_once() {
    let server = TestServer::start_with(|c| c.auth.login_via_existing_session = true).await;
    let alice = server.register("alice", "pw-a").await;
    let bob = server.register("bob", "pw-b").await;

    let (_, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.access_token))
        .await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);
    let (_, flows) = server.get("/_matrix/client/v3/login", None).await;
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{flows}"
    );

    // Bob's password does not get Alice a token (another user's credentials).
    let path = "/_matrix/client/v1/login/get_token";
    let (_, body) = server
        .post(path, Some(&alice.access_token), json!({}))
        .await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .post(
            path,
            Some(&alice.access_token),
            json!({ "auth": password_auth(&bob.user_id, "pw-b", session) }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A wrong password: the stage fails.
    let (status, body) = server
        .post(
            path,
            Some(&alice.access_token),
            json!({ "auth": password_auth(&alice.user_id, "wrong", session) }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body.get("login_token").is_none());

    let body = get_token(&server, &alice, "pw-a").await;
    assert_eq!(body["expires_in_ms"], 120_000);
    let token = body["login_token"].as_str().unwrap().to_owned();

    let (status, body) = token_login(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    assert_ne!(body["device_id"], alice.device_id.as_str());
    let (status, who) = server.whoami(body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["user_id"], alice.user_id);

    // Used up: a replay, and a made-up token, are refused alike.
    let (status, replay) = token_login(&server, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(replay["errcode"], "M_FORBIDDEN");
    let (status, forged) = token_login(&server, "forged-token").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(forged, replay);

    // A deactivated account's token logs nobody in.
    let body = get_token(&server, &bob, "pw-b").await;
    lattice::service::account::deactivate_user(
        &server.state,
        &ruma::UserId::parse(&bob.user_id).unwrap(),
        false,
        None,
        None,
    )
    .await
    .unwrap();
    let (status, _) = token_login(&server, body["login_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let server = TestServer::start_with(|c| {
        c.auth.login_via_existing_session = true;
        c.auth.login_token_lifetime_secs = 1;
    })
    .await;
    let alice = server.register("alice", "pw-a").await;
    let body = get_token(&server, &alice, "pw-a").await;
    assert_eq!(body["expires_in_ms"], 1000);
    // The token's lifetime has to pass: there is no condition to wait on.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, body) = token_login(&server, body["login_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// matrix-rust-sdk signs in a second device with a login token: the signed-in
/// device reads the `m.get_login_token` capability and asks
/// `POST /login/get_token` through the SDK, whose UIA refuses Bob's password
/// and a wrong one before Alice's own; the new device logs in with the
/// SDK's `login_token` as Alice, and its message reaches her first device.
/// The used token, replayed through the SDK, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_signs_in_a_second_device_with_a_token() {
    let server = TestServer::start_with(|c| c.auth.login_via_existing_session = true).await;
    let alice = server.register("alice", "pw-a").await;
    server.register("bob", "pw-b").await;
    let out = rust_sdk_run(&server, &["get-token", "alice", "pw-a", "bob", "pw-b", "0"]).await;
    assert_eq!(
        out,
        format!(
            "ok {} TOKENNEW other=M_FORBIDDEN wrong=M_FORBIDDEN replay=M_FORBIDDEN",
            alice.user_id
        )
    );
    let devices = lattice::storage::devices::list(&server.state.db, &alice.user_id)
        .await
        .unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d.device_id == "TOKENNEW"
                && d.display_name.as_deref() == Some("rust-sdk by token")),
        "{devices:?}"
    );
    // Bob got no device out of it.
    let bobs = lattice::storage::devices::list(&server.state.db, &user_id("bob"))
        .await
        .unwrap();
    assert_eq!(bobs.len(), 1, "{bobs:?}");
}

/// Through matrix-rust-sdk: with the server's default (off) the capability
/// says so and `get_token` is unrecognised; a token used after its lifetime
/// logs nobody in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_token_login_off_by_default_and_expiring() {
    let server = TestServer::start().await;
    server.register("alice", "pw-a").await;
    server.register("bob", "pw-b").await;
    let args = ["get-token", "alice", "pw-a", "bob", "pw-b", "0"];
    assert_eq!(rust_sdk_run(&server, &args).await, "off M_UNRECOGNIZED");

    let server = TestServer::start_with(|c| {
        c.auth.login_via_existing_session = true;
        c.auth.login_token_lifetime_secs = 1;
    })
    .await;
    let alice = server.register("alice", "pw-a").await;
    server.register("bob", "pw-b").await;
    // The token's lifetime has to pass: there is no condition to wait on.
    let args = ["get-token", "alice", "pw-a", "bob", "pw-b", "1500"];
    assert_eq!(rust_sdk_run(&server, &args).await, "refused M_FORBIDDEN");
    let devices = lattice::storage::devices::list(&server.state.db, &alice.user_id)
        .await
        .unwrap();
    assert!(
        !devices.iter().any(|d| d.device_id == "TOKENNEW"),
        "{devices:?}"
    );
}
