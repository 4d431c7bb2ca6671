//! Matrix errors for bad input, unknown endpoints, CORS, body limits, rate limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");

    let (status, body) = server.whoami("not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);

    // The deprecated query parameter still works.
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/account/whoami?access_token={}",
                alice.access_token
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn not_json_and_bad_json() {
    let server = TestServer::start().await;
    let resp = server
        .client
        .post(format!("{}/_matrix/client/v3/login", server.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
    // Invalid UTF-8 inside a JSON string is not JSON (SyTest "POST rejects
    // invalid utf-8 in JSON").
    let resp = server
        .client
        .post(format!("{}/_matrix/client/v3/register", server.base))
        .header("content-type", "application/json")
        .body(b"{ \"username\": \"a\x81\" }".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");

    // Valid JSON, wrong types.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "password": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");

    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!([1, 2]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");

    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .put(
            "/_matrix/client/v3/devices/X",
            Some(&alice.access_token),
            json!({ "display_name": 7 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_BAD_JSON");

    // Missing required query parameter.
    let (status, body) = server
        .get("/_matrix/client/v3/register/available", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["errcode"].as_str().unwrap().starts_with("M_"),
        "{body}"
    );

    // Nothing half-way: no account was created by any of this.
    let count: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn unknown_endpoints_and_methods() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/v3/no/such/thing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = server.get("/", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");

    let (status, body) = server
        .call(Method::DELETE, "/_matrix/client/v3/login", None, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let server = TestServer::start().await;
    let resp = server
        .client
        .request(
            Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", server.base),
        )
        .header("origin", "https://app.element.io")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["x-requested-with", "content-type", "authorization"] {
        assert!(headers.contains(name), "{headers}");
    }

    let resp = server
        .client
        .get(format!("{}/_matrix/client/versions", server.base))
        .header("origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    // Errors a browser client must be able to read carry the headers too:
    // an unknown endpoint, a known one with the wrong method, a refused token.
    for (method, path, status) in [
        (Method::GET, "/_matrix/client/v3/no_such_endpoint", 404),
        (Method::DELETE, "/_matrix/client/v3/login", 405),
        (Method::GET, "/_matrix/client/v3/account/whoami", 401),
    ] {
        let resp = server
            .client
            .request(method.clone(), format!("{}{path}", server.base))
            .header("origin", "https://app.element.io")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "*",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let server = TestServer::start_with(|c| c.limits.max_request_body_bytes = 4096).await;
    let big = "x".repeat(10_000);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "password": big }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["errcode"], "M_TOO_LARGE");
}

/// Bodies nested deeper than 128 levels are refused before any parser walks
/// them; content nested less deeply is an ordinary event.
#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let nested = |depth: usize| -> serde_json::Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!([v]);
        }
        json!({ "msgtype": "m.text", "body": "deep", "deep": v })
    };
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message");
    let (status, body) = server
        .put(
            &format!("{path}/t1"),
            Some(&alice.access_token),
            nested(200),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
    let (status, body) = server
        .put(
            &format!("{path}/t2"),
            Some(&alice.access_token),
            nested(100),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, event) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                body["event_id"].as_str().unwrap()
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["deep"], nested(100)["deep"]);
}

#[tokio::test]
async fn login_rate_limit_trips_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login = lattice::config::Bucket {
            per_second: 0.01,
            burst: 3,
        };
    })
    .await;
    for _ in 0..3 {
        let (status, _) = server.login("nobody", "x").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let resp = server
        .client
        .post(format!("{}/_matrix/client/v3/login", server.base))
        .json(&json!({ "type": "m.login.password", "user": "nobody", "password": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 1000, "{body}");
}

#[tokio::test]
async fn per_user_rate_limit_on_rate_limited_endpoints() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.client = lattice::config::Bucket {
            per_second: 0.01,
            burst: 2,
        };
    })
    .await;
    let alice = server.register("alice", "pw").await;
    // PUT /devices/{id} is not rate-limited by the spec; POST /account/password is.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _) = server
            .post(
                "/_matrix/client/v3/account/password",
                Some(&alice.access_token),
                json!({ "new_password": "n" }),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // Endpoints the spec does not mark rate-limited are not limited.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            Some(&alice.access_token),
            json!({ "display_name": "ok" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Slowloris: a connection that never finishes its request head is closed
/// after `limits.header_read_timeout_secs`; one that finishes it is served.
#[tokio::test]
async fn idle_and_slow_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.limits.header_read_timeout_secs = 1).await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for (name, conn) in [("slow", &mut slow), ("idle", &mut idle)] {
        let mut buf = Vec::new();
        // Generous bound: the point is that it ends, not how fast.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            conn.read_to_end(&mut buf),
        )
        .await;
        assert!(read.is_ok(), "the {name} connection was left open");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{name}: {text}"
        );
    }

    let mut ok = tokio::net::TcpStream::connect(&addr).await.unwrap();
    ok.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    ok.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}
