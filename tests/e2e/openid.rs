//! OpenID tokens (`/user/{userId}/openid/request_token`, federation
//! `/openid/userinfo`) and the HTML fallback pages (UIA fallback, login
//! fallback).

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
