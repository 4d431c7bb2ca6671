//! Registration, login, sessions and account management.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Login, TestServer, password_auth, user_id};

#[tokio::test]
async fn discovery_endpoints() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "v1.1"),
        "{body}"
    );

    let (status, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["m.homeserver"]["base_url"]
            .as_str()
            .unwrap()
            .starts_with("http://test.local:"),
        "{body}"
    );

    // The health check answers plain "OK" while the database does.
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "OK");

    // No delegation configured: 404.
    let (status, body) = server.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["capabilities"]["m.change_password"]["enabled"], true);
    assert_eq!(body["capabilities"]["m.3pid_changes"]["enabled"], false);
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "12");
    assert_eq!(
        body["capabilities"]["m.room_versions"]["available"]["6"],
        "stable"
    );
    // Every version from 1 (event format v1) to 12; none past it.
    assert_eq!(
        body["capabilities"]["m.room_versions"]["available"]["1"],
        "stable"
    );
    assert!(
        body["capabilities"]["m.room_versions"]["available"]
            .get("13")
            .is_none()
    );
}

#[tokio::test]
async fn well_known_server_when_delegated() {
    let server = TestServer::start_with(|c| {
        c.federation_delegate = Some("matrix.test.local:443".into());
        c.public_baseurl = Some("https://matrix.test.local".into());
    })
    .await;
    let (status, body) = server.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], "matrix.test.local:443");
    let (_, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(
        body["m.homeserver"]["base_url"],
        "https://matrix.test.local/"
    );
}

#[tokio::test]
async fn register_with_dummy_two_steps_then_whoami() {
    let server = TestServer::start().await;
    let alice = server.register("Alice", "secret").await;
    assert_eq!(alice.user_id, user_id("alice"));
    let (status, body) = server.whoami(&alice.access_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], user_id("alice"));
    assert_eq!(body["device_id"], alice.device_id);
    assert_eq!(body["is_guest"], json!(null));
}

#[tokio::test]
async fn register_with_bare_dummy_like_matrix_nio() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "nio", "password": "pw", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("nio"));
    assert!(body["access_token"].as_str().unwrap().len() > 20);
}

#[tokio::test]
async fn register_first_step_offers_dummy_flow() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "bob", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    assert!(body["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(body["params"], json!({}));
}

#[tokio::test]
async fn register_without_username_gets_numeric_id_and_inhibit_login() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "password": "pw", "inhibit_login": true, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("1"));
    assert!(body.get("access_token").is_none(), "{body}");
    let (_, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "password": "pw", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(body["user_id"], user_id("2"));
}

#[tokio::test]
async fn register_taken_and_invalid_names() {
    let server = TestServer::start().await;
    server.register("carol", "pw").await;
    for (name, code) in [
        ("carol", "M_USER_IN_USE"),
        ("CAROL", "M_USER_IN_USE"),
        ("car ol", "M_INVALID_USERNAME"),
        ("caröl", "M_INVALID_USERNAME"),
        ("@carol:elsewhere.org", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
    ] {
        let (status, body) = server
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": name, "password": "pw", "auth": { "type": "m.login.dummy" } }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(body["errcode"], code, "{name}: {body}");
    }
    let (status, body) = server
        .get("/_matrix/client/v3/register/available?username=carol", None)
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_USER_IN_USE"))
    );
    let (status, body) = server
        .get("/_matrix/client/v3/register/available?username=dave", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["available"], true);
    let (status, body) = server
        .get(
            "/_matrix/client/v3/register/available?username=d%20ave",
            None,
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_USERNAME"))
    );
}

#[tokio::test]
async fn registration_closed_by_default() {
    let server = TestServer::start_with(|c| c.registration = Default::default()).await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "eve", "password": "pw", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Guests too.
    let (status, body) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test]
async fn guest_registration_when_enabled() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let (status, body) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guest = Login::from_json(&body);
    let (_, me) = server.whoami(&guest.access_token).await;
    assert_eq!(me["is_guest"], true);
}

#[tokio::test]
async fn registration_token_flow_and_use_limit() {
    let server = TestServer::start_with(|c| {
        c.registration.open = false;
        c.registration.tokens = true;
    })
    .await;
    lattice::storage::registration_tokens::insert(&server.state.db, "tok1", Some(1), None, 0)
        .await
        .unwrap();

    let (_, body) = server
        .get(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=tok1",
            None,
        )
        .await;
    assert_eq!(body["valid"], true);
    let (_, body) = server
        .get(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=nope",
            None,
        )
        .await;
    assert_eq!(body["valid"], false);

    // Step 1: the flows offer only the token.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "tina", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.registration_token"] }])
    );
    let session = body["session"].as_str().unwrap().to_owned();

    // Dummy is not offered.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "tina", "password": "pw", "auth": { "type": "m.login.dummy", "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.get("access_token").is_none());

    // A wrong token is refused within UIA.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "tina", "password": "pw",
                    "auth": { "type": "m.login.registration_token", "token": "wrong", "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "tina", "password": "pw",
                    "auth": { "type": "m.login.registration_token", "token": "tok1", "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("tina"));

    // The single use is spent.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "tom", "password": "pw",
                    "auth": { "type": "m.login.registration_token", "token": "tok1" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    let tokens = lattice::storage::registration_tokens::list(&server.state.db)
        .await
        .unwrap();
    assert_eq!((tokens[0].pending, tokens[0].completed), (0, 1));
}

#[tokio::test]
async fn login_right_wrong_unknown_and_legacy_user_field() {
    let server = TestServer::start().await;
    server.register("frank", "pw1").await;

    let (status, body) = server.login("frank", "pw1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("frank"));
    let login = Login::from_json(&body);
    assert_eq!(
        server.whoami(&login.access_token).await.1["user_id"],
        user_id("frank")
    );

    let (status, body) = server.login("@frank:test.local", "pw1").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = server.login("frank", "wrong").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = server.login("nobody", "pw1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "frank", "password": "pw1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.token", "token": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_UNKNOWN");

    let (status, body) = server.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flows"], json!([{ "type": "m.login.password" }]));
}

#[tokio::test]
async fn login_with_existing_device_id_replaces_its_token() {
    let server = TestServer::start().await;
    let first = server.register("gina", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "gina" },
                    "password": "pw", "device_id": first.device_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], first.device_id);
    let (status, body) = server.whoami(&first.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (_, devices) = server
        .get(
            "/_matrix/client/v3/devices",
            Some(body_token(&server, "gina").await.as_str()),
        )
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
}

async fn body_token(server: &TestServer, user: &str) -> String {
    let (_, body) = server.login(user, "pw").await;
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn logout_invalidates_token_and_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (_, other) = server.login("alice", "pw").await;
    let other = Login::from_json(&other);

    let (status, _) = server
        .post(
            "/_matrix/client/v3/logout",
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.whoami(&alice.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);
    // The other session is untouched, and the logged-out device is gone.
    let (status, devices) = server
        .get("/_matrix/client/v3/devices", Some(&other.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(other.device_id)]);
}

#[tokio::test]
async fn logout_all_invalidates_every_token() {
    let server = TestServer::start().await;
    let a = server.register("alice", "pw").await;
    let b = Login::from_json(&server.login("alice", "pw").await.1);
    let (status, _) = server
        .post(
            "/_matrix/client/v3/logout/all",
            Some(&b.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for token in [&a.access_token, &b.access_token] {
        assert_eq!(server.whoami(token).await.0, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_expired_tokens_soft_logout() {
    // Lifetime 0: a refreshable access token is expired as soon as it is issued.
    let server = TestServer::start_with(|c| c.auth.refreshable_token_lifetime_secs = 0).await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "rita", "password": "pw", "refresh_token": true,
                    "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 0);
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let (status, body) = server.whoami(&access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], true);

    let (status, body) = server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, refresh);
    assert_ne!(body["access_token"].as_str().unwrap(), access);

    // A used refresh token is dead.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn refresh_keeps_a_working_token_with_a_normal_lifetime() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "x" }, "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    server.register("sam", "pw").await;
    let (_, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "sam" },
                    "password": "pw", "refresh_token": true }),
        )
        .await;
    assert_eq!(body["expires_in_ms"], 300_000);
    let (_, body) = server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": body["refresh_token"] }),
        )
        .await;
    let token = body["access_token"].as_str().unwrap();
    let (status, me) = server.whoami(token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], user_id("sam"));
}

#[tokio::test]
async fn password_change_requires_uia_and_logs_out_other_devices() {
    let server = TestServer::start().await;
    let main = server.register("pat", "old").await;
    let other = Login::from_json(&server.login("pat", "old").await.1);

    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&main.access_token),
            json!({ "new_password": "new" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap().to_owned();

    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&main.access_token),
            json!({ "new_password": "new", "auth": password_auth("pat", "wrong", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&main.access_token),
            json!({ "new_password": "new", "auth": password_auth("pat", "old", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_eq!(server.whoami(&main.access_token).await.0, StatusCode::OK);
    assert_eq!(
        server.whoami(&other.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.login("pat", "old").await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.login("pat", "new").await.0, StatusCode::OK);
}

#[tokio::test]
async fn password_uia_cannot_authenticate_as_someone_else() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "a").await;
    server.register("bob", "b").await;
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&alice.access_token),
            json!({ "new_password": "x" }),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&alice.access_token),
            json!({ "new_password": "x", "auth": password_auth("bob", "b", &session) }),
        )
        .await;
    // Refused outright (Synapse: 403), not a stage to retry.
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(server.login("alice", "a").await.0, StatusCode::OK);
}

#[tokio::test]
async fn deactivate_locks_the_account_for_good() {
    let server = TestServer::start().await;
    let quinn = server.register("quinn", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&quinn.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&quinn.access_token),
            json!({ "auth": password_auth("quinn", "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(
        server.whoami(&quinn.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = server.login("quinn", "pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED");
    let (_, body) = server
        .get("/_matrix/client/v3/register/available?username=quinn", None)
        .await;
    assert_eq!(body["errcode"], "M_USER_IN_USE");
}

#[tokio::test]
async fn tokens_are_stored_hashed() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from access_tokens")
        .fetch_all(&server.state.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], alice.access_token.as_bytes());
    assert_eq!(
        stored[0],
        lattice::domain::token::hash(&alice.access_token).to_vec()
    );
    let hash: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[tokio::test]
async fn shared_secret_registration_like_synapse() {
    use hmac::{Hmac, Mac};
    let server = TestServer::start_with(|c| {
        c.registration = Default::default();
        c.registration.shared_secret = Some("s3cret".into());
    })
    .await;
    let mac = |nonce: &str, user: &str, pw: &str, admin: bool| {
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        m.update(
            format!(
                "{nonce}\0{user}\0{pw}\0{}",
                if admin { "admin" } else { "notadmin" }
            )
            .as_bytes(),
        );
        hex::encode(m.finalize().into_bytes())
    };
    let (status, body) = server.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(status, StatusCode::OK);
    let nonce = body["nonce"].as_str().unwrap().to_owned();

    let (status, body) = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": nonce, "username": "root", "password": "pw", "admin": true,
                    "mac": mac(&nonce, "root", "pw", false) }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The nonce was consumed by the failed attempt.
    let (status, body) = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": nonce, "username": "root", "password": "pw", "admin": true,
                    "mac": mac(&nonce, "root", "pw", true) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let nonce = server.get("/_synapse/admin/v1/register", None).await.1["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = server
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": nonce, "username": "root", "password": "pw", "admin": true,
                    "mac": mac(&nonce, "root", "pw", true) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("root"));
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(server.whoami(token).await.1["user_id"], user_id("root"));
    let user = lattice::storage::users::get(&server.state.db, &user_id("root"))
        .await
        .unwrap()
        .unwrap();
    assert!(user.is_admin);
}

#[tokio::test]
async fn shared_secret_registration_disabled_without_secret() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_UNKNOWN");
}

/// Starts a registration with `params` (no `auth`): the 401's session.
async fn start_registration(server: &TestServer, params: serde_json::Value) -> String {
    let (status, body) = server
        .post("/_matrix/client/v3/register", None, params)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    body["session"].as_str().unwrap().to_owned()
}

async fn complete_registration(
    server: &TestServer,
    session: &str,
    mut params: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    params["auth"] = json!({ "type": "m.login.dummy", "session": session });
    server
        .post("/_matrix/client/v3/register", None, params)
        .await
}

#[tokio::test]
async fn registration_remembers_the_parameters_of_its_session() {
    // Synapse's behaviour (SyTest "registration remembers parameters"): the
    // request that completes the last stage may carry only `auth`.
    let server = TestServer::start().await;
    let session = start_registration(
        &server,
        json!({
            "username": "remy", "password": "übers3kr1t", "device_id": "XYZZY",
            "initial_device_display_name": "Remy's phone",
        }),
    )
    .await;
    let (status, body) = complete_registration(&server, &session, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("remy"));
    assert_eq!(body["device_id"], "XYZZY");
    let token = body["access_token"].as_str().unwrap();
    let (status, device) = server
        .get("/_matrix/client/v3/devices/XYZZY", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["display_name"], "Remy's phone");
    // The remembered (non-ASCII) password is the account's password.
    let (status, body) = server.login("remy", "übers3kr1t").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.login("remy", "wrong").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn registration_remembers_inhibit_login() {
    let server = TestServer::start().await;
    let session = start_registration(
        &server,
        json!({ "username": "ivy", "password": "pw", "inhibit_login": true }),
    )
    .await;
    let (status, body) = complete_registration(&server, &session, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("ivy"));
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
}

#[tokio::test]
async fn a_later_request_overrides_what_the_session_remembers() {
    let server = TestServer::start().await;
    let session =
        start_registration(&server, json!({ "username": "first", "password": "one" })).await;
    let (status, body) = complete_registration(
        &server,
        &session,
        json!({ "username": "second", "password": "two" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("second"));
    assert_eq!(server.login("second", "two").await.0, StatusCode::OK);
    assert_eq!(server.login("first", "one").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_retried_registration_answers_with_the_same_account() {
    // A client whose response was lost retries the request: Synapse answers
    // with the account the session already registered (SyTest "registration
    // is idempotent"), logged in again.
    let server = TestServer::start().await;
    let params = json!({ "username": "ida", "password": "pw" });
    let session = start_registration(&server, params.clone()).await;
    let (status, first) = complete_registration(&server, &session, params.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = complete_registration(&server, &session, params).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user_id"], first["user_id"]);
    let token = again["access_token"].as_str().unwrap();
    assert_eq!(server.whoami(token).await.1["user_id"], user_id("ida"));
    // Without a username too (the numeric-ID flow).
    let session = start_registration(&server, json!({ "password": "pw" })).await;
    let (_, first) = complete_registration(&server, &session, json!({})).await;
    let (status, again) = complete_registration(&server, &session, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user_id"], first["user_id"]);
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert_eq!(users, 2);
}

#[tokio::test]
async fn a_spent_registration_session_cannot_register_or_log_in_another_account() {
    let server = TestServer::start().await;
    let session =
        start_registration(&server, json!({ "username": "owner", "password": "pw" })).await;
    let (status, _) = complete_registration(&server, &session, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Another name with the spent session: refused, nothing created.
    let (status, body) = complete_registration(
        &server,
        &session,
        json!({ "username": "intruder", "password": "pw" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(
        server.login("intruder", "pw").await.0,
        StatusCode::FORBIDDEN
    );
    // A made-up session remembers nothing and logs no one in.
    let (status, body) =
        complete_registration(&server, "not-a-session", json!({ "username": "owner" })).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    // Once the owner is deactivated, a retry of the session gives no login.
    let (_, login) = server.login("owner", "pw").await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({ "auth": { "type": "m.login.password", "password": "pw",
                               "identifier": { "type": "m.id.user", "user": "owner" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = complete_registration(&server, &session, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn a_wrong_password_stage_answers_with_the_whole_challenge() {
    // SyTest "Can't deactivate account with wrong password": 401 with
    // `error`, `errcode` (M_FORBIDDEN), `params`, `completed` and `flows`.
    let server = TestServer::start().await;
    let gil = server.register("gil", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&gil.access_token),
            json!({ "auth": { "type": "m.login.password", "password": "wrong",
                               "identifier": { "type": "m.id.user", "user": "gil" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["completed"], json!([]), "{body}");
    assert!(body["params"].is_object(), "{body}");
    assert!(body["flows"].is_array(), "{body}");
    assert_eq!(server.whoami(&gil.access_token).await.0, StatusCode::OK);
}
