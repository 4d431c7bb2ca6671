//! OpenID tokens (`/user/{userId}/openid/request_token`, federation
//! `/openid/userinfo`) and the HTML fallback pages (UIA fallback, login
//! fallback).

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc, password_auth};

async fn request_openid(server: &TestServer, who: &Login, user: &str) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user)),
            Some(&who.access_token),
            json!({}),
        )
        .await
}

async fn userinfo(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                enc(token)
            ),
            None,
        )
        .await
}

#[tokio::test]
async fn openid_token_is_exchanged_for_the_user_id_without_server_auth() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = request_openid(&server, &alice, &alice.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], crate::harness::SERVER_NAME);
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("access_token");
    assert!(token.len() >= 32, "{token}");

    // A third party (no X-Matrix header, no bearer token) learns whose it is.
    let (status, body) = userinfo(&server, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "sub": alice.user_id }));

    // Stored as sha256, never in the clear.
    let clear: i64 = sqlx::query_scalar(
        "select count(*) from openid_tokens where token_hash = convert_to($1, 'UTF8')",
    )
    .bind(token)
    .fetch_one(&server.state.db)
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let hashed: i64 = sqlx::query_scalar(
        "select count(*) from openid_tokens where token_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(token)
    .fetch_one(&server.state.db)
    .await
    .unwrap();
    assert_eq!(hashed, 1);

    // Each request gives a new token; both work.
    let (_, second) = request_openid(&server, &alice, &alice.user_id).await;
    let second = second["access_token"].as_str().unwrap();
    assert_ne!(second, token);
    assert_eq!(userinfo(&server, second).await.1["sub"], alice.user_id);
}

#[tokio::test]
async fn openid_token_only_for_yourself() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    for other in [
        bob.user_id.as_str(),
        "@bob:elsewhere.example",
        "@nobody:test.local",
    ] {
        let (status, body) = request_openid(&server, &alice, other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{other}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    let (status, body) = request_openid(&server, &alice, "not a user id").await;
    assert!(status.is_client_error(), "{body}");
    assert_ne!(body["access_token"].as_str().map(|_| ()), Some(()));
    // No token at all.
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                enc(&alice.user_id)
            ),
            None,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
}

#[tokio::test]
async fn openid_and_access_tokens_are_not_interchangeable() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (_, body) = request_openid(&server, &alice, &alice.user_id).await;
    let openid = body["access_token"].as_str().unwrap().to_owned();

    // The OpenID token is no access token: not for /whoami, /sync, nor for
    // another OpenID token.
    let (status, body) = server.whoami(&openid).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, body) = server.get("/_matrix/client/v3/sync", Some(&openid)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let as_login = Login {
        access_token: openid.clone(),
        ..alice.clone()
    };
    let (status, body) = request_openid(&server, &as_login, &alice.user_id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");

    // The access token is no OpenID token.
    let (status, body) = userinfo(&server, &alice.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");

    // A token we never issued, an empty one, none at all.
    let (status, body) = userinfo(&server, "lato_neverissued").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, body) = userinfo(&server, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    let (status, body) = server
        .get("/_matrix/federation/v1/openid/userinfo", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    // In a bearer header instead of the query: the spec's parameter is the query.
    let (status, body) = server
        .get("/_matrix/federation/v1/openid/userinfo", Some(&openid))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn expired_openid_token_and_deactivated_owner_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (_, body) = request_openid(&server, &alice, &alice.user_id).await;
    let expiring = body["access_token"].as_str().unwrap().to_owned();
    let (_, body) = request_openid(&server, &alice, &alice.user_id).await;
    let kept = body["access_token"].as_str().unwrap().to_owned();

    // Age one token past its hour.
    sqlx::query(
        "update openid_tokens set expires_ts = expires_ts - 3600 * 1000 - 1
         where token_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&expiring)
    .execute(&server.state.db)
    .await
    .unwrap();
    let (status, body) = userinfo(&server, &expiring).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_eq!(userinfo(&server, &kept).await.0, StatusCode::OK);

    // Deactivation ends every OpenID token of the account.
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.access_token),
            json!({ "auth": password_auth("alice", "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = userinfo(&server, &kept).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn openid_userinfo_is_rate_limited() {
    let server = TestServer::start_with(|config| {
        config.rate_limits.enabled = true;
        config.rate_limits.client.per_second = 0.01;
        config.rate_limits.client.burst = 5;
    })
    .await;
    let mut limited = None;
    for i in 0..10 {
        let (status, body) = userinfo(&server, &format!("guess{i}")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let body = limited.expect("guessing tokens is rate-limited");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
}

// ---- Fallback pages -------------------------------------------------------

const TOKEN_FALLBACK: &str = "/_matrix/client/v3/auth/m.login.registration_token/fallback/web";

/// A raw request: status, headers and body text.
async fn raw(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    form: Option<&[(&str, &str)]>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().request(method, format!("{}{}", server.api.base, path));
    if let Some(form) = form {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// The headers every fallback page carries, and no resource from elsewhere.
fn assert_safe_page(headers: &reqwest::header::HeaderMap, page: &str) {
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // Self-contained: nothing loaded by URL.
    for needle in [" src=", " href=", "http://", "https://", "@import", "url("] {
        assert!(!page.contains(needle), "{needle} in {page}");
    }
    // Every inline script runs: each is allowed by its hash.
    for script in page.split("<script>").skip(1) {
        let script = script.split("</script>").next().unwrap();
        let hash = base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(script.as_bytes()));
        assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
    }
}

async fn token_server() -> TestServer {
    let server = TestServer::start_with(|c| {
        c.registration.open = false;
        c.registration.tokens = true;
    })
    .await;
    lattice::storage::registration_tokens::insert(&server.state.db, "tok1", Some(1), None, 0)
        .await
        .unwrap();
    server
}

async fn register_with_session(
    server: &TestServer,
    name: &str,
    session: &str,
) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": name, "password": "pw", "auth": { "session": session } }),
        )
        .await
}

#[tokio::test]
async fn registration_token_fallback_completes_the_stage() {
    let server = token_server().await;
    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.registration_token"] }])
    );
    let session = body["session"].as_str().unwrap().to_owned();

    // The session alone, before the stage is done: the flows again.
    let (status, body) = register_with_session(&server, "carol", &session).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["session"], session);
    assert_eq!(body["completed"], json!([]), "{body}");

    // The page: a form that posts the token with the session.
    let (status, headers, page) = raw(
        &server,
        reqwest::Method::GET,
        &format!("{TOKEN_FALLBACK}?session={}", enc(&session)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_safe_page(&headers, &page);
    assert!(page.contains("<form method=\"post\">"), "{page}");
    assert!(page.contains("name=\"token\""), "{page}");
    assert!(
        page.contains(&format!("name=\"session\" value=\"{session}\"")),
        "{page}"
    );

    // A token in the GET query is never taken.
    let (status, _, _) = raw(
        &server,
        reqwest::Method::GET,
        &format!("{TOKEN_FALLBACK}?session={}&token=tok1", enc(&session)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        register_with_session(&server, "carol", &session).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A wrong token: the form again, with the error, nothing completed.
    let (status, headers, page) = raw(
        &server,
        reqwest::Method::POST,
        TOKEN_FALLBACK,
        Some(&[("session", &session), ("token", "wrong")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_safe_page(&headers, &page);
    assert!(page.contains("Invalid registration token"), "{page}");
    assert!(!page.contains("onAuthDone"), "{page}");
    assert_eq!(
        register_with_session(&server, "carol", &session).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The right token: the "done" page with the spec's script.
    let (status, headers, page) = raw(
        &server,
        reqwest::Method::POST,
        TOKEN_FALLBACK,
        Some(&[("session", &session), ("token", "tok1")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_safe_page(&headers, &page);
    assert!(page.contains("window.onAuthDone()"), "{page}");
    assert!(
        page.contains("window.opener.postMessage(\"authDone\", \"*\")"),
        "{page}"
    );

    // The client resubmits with the session only; registration proceeds.
    let (status, body) = register_with_session(&server, "carol", &session).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["user_id"],
        format!("@carol:{}", crate::harness::SERVER_NAME)
    );
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(server.whoami(token).await.0, StatusCode::OK);

    // The session is spent, and the token's single use with it.
    let (status, _) = register_with_session(&server, "dave", &session).await;
    assert_ne!(status, StatusCode::OK);
    let (_, body) = server
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    let other = body["session"].as_str().unwrap().to_owned();
    let (_, _, page) = raw(
        &server,
        reqwest::Method::POST,
        TOKEN_FALLBACK,
        Some(&[("session", &other), ("token", "tok1")]),
    )
    .await;
    assert!(page.contains("Invalid registration token"), "{page}");
    assert_eq!(
        register_with_session(&server, "dave", &other).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn fallback_refuses_hostile_and_foreign_input() {
    let server = token_server().await;
    let script = "<script>alert(1)</script>";

    // A session ID we never issued (with markup): refused, not echoed.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let form = [("session", script), ("token", "tok1")];
        let (status, _, body) = raw(
            &server,
            method.clone(),
            &format!("{TOKEN_FALLBACK}?session={}", enc(script)),
            (method == reqwest::Method::POST).then_some(&form[..]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.contains("<script>"), "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }

    // An auth type with markup, and the stages without a page: 404.
    for auth_type in [
        script,
        "m.login.dummy",
        "m.login.password",
        "m.login.recaptcha",
    ] {
        let (status, _, body) = raw(
            &server,
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/auth/{}/fallback/web?session=x",
                enc(auth_type)
            ),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{auth_type}: {body}");
        assert!(!body.contains("<script>"), "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["errcode"],
            "M_UNRECOGNIZED"
        );
    }

    // No session.
    let (status, _, body) = raw(&server, reqwest::Method::GET, TOKEN_FALLBACK, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["errcode"],
        "M_MISSING_PARAM"
    );

    // A session made for another operation (deactivation) cannot be completed
    // with a registration token.
    lattice::storage::registration_tokens::insert(&server.state.db, "tok2", Some(5), None, 0)
        .await
        .unwrap();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "erin",
                "password": "pw",
                "auth": { "type": "m.login.registration_token", "token": "tok2" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let erin = Login::from_json(&body);
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&erin.access_token),
            json!({}),
        )
        .await;
    let foreign = body["session"].as_str().unwrap().to_owned();
    let (status, _, body) = raw(
        &server,
        reqwest::Method::POST,
        TOKEN_FALLBACK,
        Some(&[("session", &foreign), ("token", "tok2")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&erin.access_token),
            json!({ "auth": { "session": foreign } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(server.whoami(&erin.access_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn registration_token_fallback_needs_tokens_enabled() {
    // Open registration without tokens: the stage is not offered.
    let server = TestServer::start().await;
    let (_, body) = server
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, _, body) = raw(
        &server,
        reqwest::Method::GET,
        &format!("{TOKEN_FALLBACK}?session={}", enc(&session)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn login_fallback_page_logs_in_with_the_login_api() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    for path in [
        "/_matrix/static/client/login/",
        "/_matrix/static/client/login",
    ] {
        let (status, headers, page) = raw(&server, reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_safe_page(&headers, &page);
        assert!(
            page.contains("window.matrixLogin.onLogin(result.json)"),
            "{page}"
        );
        assert!(
            page.contains("fetch(\"/_matrix/client/v3/login\""),
            "{page}"
        );
        assert!(page.contains("\"m.login.password\""), "{page}");
        assert!(page.contains("type=\"password\""), "{page}");
        // The form never submits by GET.
        assert!(page.contains("<form id=\"form\" method=\"post\""), "{page}");
    }

    // Query parameters are not echoed into the page, and credentials in the
    // query log nobody in.
    let (status, _, page) = raw(
        &server,
        reqwest::Method::GET,
        "/_matrix/static/client/login/?device_id=%3Cscript%3Ealert(1)%3C%2Fscript%3E&user=alice&password=pw",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("access_token"), "{page}");
    // Nor does the form posted without its script.
    let (status, _, body) = raw(
        &server,
        reqwest::Method::POST,
        "/_matrix/static/client/login/",
        Some(&[("user", "alice"), ("password", "pw")]),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(!body.contains("access_token"), "{body}");
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&alice.access_token))
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
}
