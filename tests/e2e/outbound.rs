//! Outbound requests under one address policy (issue #16: F4, F6, F14 and the
//! fan-out findings), tested as an attacker would: a remote server whose media
//! answer points at an internal service, a user whose push gateway is internal
//! or redirects, unauthenticated notary and federation requests naming dead
//! servers, and key queries used as a port scanner.
//!
//! "Internal services" listen on 127.0.0.2 while the server under test allows
//! only 127.0.0.1 (the default blocklist covers all of loopback).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::post};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestServer, dev_tls, eventually};

/// A listener that counts the connections it accepts and drops them: an
/// internal service that records whether it was reached, or a dead server.
pub async fn counting_listener(ip: &str, hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    addr
}

/// An HTTPS client that trusts the development CA (as a peer server would).
fn https_client() -> reqwest::Client {
    let pem = std::fs::read(&dev_tls().ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// A server that only allows 127.0.0.1 out of loopback, trusts the dev CA.
async fn narrow_server() -> TestServer {
    TestServer::start_with(|c| {
        c.federation.extra_ca_files = vec![dev_tls().ca.clone()];
        c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()];
        c.federation.trusted_key_servers = Vec::new();
    })
    .await
}

/// F4: a remote server answers a media download with a `Location` at an
/// internal address (an IP literal, which no resolver sees). Lattice must not
/// connect to it, let alone hand its body to the user.
#[tokio::test]
async fn remote_media_location_at_a_refused_address_is_never_fetched() {
    let internal_hits = Arc::new(AtomicUsize::new(0));
    let internal = counting_listener("127.0.0.2", internal_hits.clone()).await;

    // The hostile remote: TLS with the dev certificate (valid for 127.0.0.1),
    // answering every media download with a Location at the internal service.
    let asked = Arc::new(AtomicUsize::new(0));
    let location = format!("https://{internal}/secret");
    let counted = asked.clone();
    let app = Router::new().route(
        "/_matrix/federation/v1/media/download/{media_id}",
        axum::routing::get(move || {
            let location = location.clone();
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = format!(
                    "--b0undary\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
                     --b0undary\r\nLocation: {location}\r\n\r\n\r\n--b0undary--\r\n"
                );
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "multipart/mixed; boundary=b0undary",
                    )],
                    body,
                )
            }
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = tcp.local_addr().unwrap();
    let tls = dev_tls();
    let config = lattice::federation::tls::server_config(&tls.cert, &tls.key).unwrap();
    let listener = lattice::federation::tls::TlsListener::new(tcp, config).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = narrow_server().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/media/download/{remote}/abcdef"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the remote was asked");
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body["errcode"].is_string(), "{body}");
    assert_eq!(
        internal_hits.load(Ordering::SeqCst),
        0,
        "the internal service was connected to"
    );
}

/// A push gateway that accepts every notification and reports it.
async fn recording_gateway() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/_matrix/push/v1/notify",
        post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                axum::Json(json!({ "rejected": [] }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/_matrix/push/v1/notify"), rx)
}

fn pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.app",
        "app_display_name": "Example", "device_display_name": "Phone",
        "lang": "en", "data": { "url": url },
    })
}

/// F6: a push gateway at a refused address is refused when set, and one stored
/// anyway (set before the address became refused) is never called.
#[tokio::test]
async fn pushers_never_reach_refused_addresses() {
    let internal_hits = Arc::new(AtomicUsize::new(0));
    let internal = counting_listener("127.0.0.2", internal_hits.clone()).await;
    let internal_url = format!("http://{internal}/_matrix/push/v1/notify");
    let (good_url, mut received) = recording_gateway().await;
    let server = narrow_server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let t = Some(bob.access_token.as_str());
    let v3 = "/_matrix/client/v3";

    let (status, body) = server
        .post(
            &format!("{v3}/pushers/set"),
            t,
            pusher("internal", &internal_url),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (_, listed) = server.get(&format!("{v3}/pushers"), t).await;
    assert_eq!(listed["pushers"], json!([]));

    // Stored behind the check's back, like a pusher from before it.
    lattice::storage::pushers::upsert(
        &server.state.db,
        &lattice::storage::pushers::Pusher {
            user_id: bob.user_id.clone(),
            app_id: "org.example.app".into(),
            pushkey: "internal".into(),
            kind: "http".into(),
            app_display_name: "Example".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
            data: json!({ "url": internal_url }).to_string(),
            created_ts: 0,
            last_stream_ordering: server.state.notifier.current(),
            device_id: None,
            badge_wanted: 0,
            badge_sent: 0,
        },
    )
    .await
    .unwrap();
    let (status, body) = server
        .post(&format!("{v3}/pushers/set"), t, {
            let mut p = pusher("good", &good_url);
            p["append"] = json!(true);
            p
        })
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    // Two notifications in turn: when the good gateway has the second, the
    // worker's pass that delivered the first (to every pusher) is over.
    for text in ["one", "two"] {
        let event = server
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": text }))
            .await;
        let got = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .expect("the allowed gateway is called")
            .unwrap();
        assert_eq!(got["notification"]["event_id"], event.as_str(), "{got}");
    }
    assert_eq!(
        internal_hits.load(Ordering::SeqCst),
        0,
        "the internal gateway was connected to"
    );
}

/// F6: a gateway answering 307 does not make Lattice POST the notification to
/// the redirect's target.
#[tokio::test]
async fn pushers_follow_no_redirect() {
    let target_hits = Arc::new(AtomicUsize::new(0));
    let target = counting_listener("127.0.0.1", target_hits.clone()).await;
    let redirected = Arc::new(AtomicUsize::new(0));
    let counted = redirected.clone();
    let app = Router::new().route(
        "/_matrix/push/v1/notify",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                axum::response::Redirect::temporary(&format!(
                    "http://{target}/_matrix/push/v1/notify"
                ))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = narrow_server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&bob.access_token),
            pusher("k", &format!("http://{gateway}/_matrix/push/v1/notify")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server
        .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": "hi" }))
        .await;
    // A redirect is a failed delivery, retried after backoff: the second call
    // shows the first answer was handled.
    eventually("the gateway is called again, or the target", || {
        let (r, t) = (redirected.clone(), target_hits.clone());
        async move { r.load(Ordering::SeqCst) >= 2 || t.load(Ordering::SeqCst) > 0 }
    })
    .await;
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the notification followed the redirect"
    );
}

/// F14: unauthenticated notary requests for a dead server cost one fetch per
/// backoff window, not one per request.
#[tokio::test]
async fn notary_asks_a_dead_server_once_per_backoff_window() {
    let hits = Arc::new(AtomicUsize::new(0));
    let dead = counting_listener("127.0.0.1", hits.clone()).await;
    let server = TestServer::start_federating().await;
    let http = https_client();
    let url = format!("{}/_matrix/key/v2/query/{dead}", server.federation_url());
    let mut first = 0;
    for i in 0..5 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["server_keys"], json!([]), "{body}");
        if i == 0 {
            first = hits.load(Ordering::SeqCst);
            assert!(first >= 1, "the first request fetches");
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        first,
        "later requests fetched again"
    );
}

/// F14: one notary request naming many servers makes a bounded number of
/// fetches.
#[tokio::test]
async fn notary_batch_queries_fetch_a_bounded_number_of_servers() {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut wanted = serde_json::Map::new();
    for last in 2..=41 {
        let addr = counting_listener(&format!("127.0.0.{last}"), hits.clone()).await;
        wanted.insert(addr.to_string(), json!({}));
    }
    let server = TestServer::start_federating().await;
    let response = https_client()
        .post(format!("{}/_matrix/key/v2/query", server.federation_url()))
        .json(&json!({ "server_keys": wanted }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["server_keys"], json!([]), "{body}");
    let fetched = hits.load(Ordering::SeqCst);
    assert!(
        (1..=lattice::service::server_keys::MAX_NOTARY_FETCHES).contains(&fetched),
        "{fetched} servers fetched for one request"
    );
}

/// Suspected: `/keys/query` as a port scanner. Failures read the same whatever
/// the cause (connection refused, connection dropped during TLS, a refused
/// address), and one request asks a bounded number of servers.
#[tokio::test]
async fn remote_key_failures_are_uniform_and_bounded() {
    let dropped = counting_listener("127.0.0.1", Arc::default()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = narrow_server().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/query",
            t,
            json!({ "device_keys": {
                format!("@a:{dropped}"): [],
                format!("@b:{closed}"): [],
                "@c:127.0.0.2:8448": [],
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let failures = body["failures"].as_object().expect("failures");
    assert_eq!(failures.len(), 3, "{body}");
    let first = failures.values().next().unwrap();
    assert_eq!(first["errcode"], "M_UNAVAILABLE", "{body}");
    assert!(failures.values().all(|f| f == first), "{body}");

    // Many servers in one request: a bounded number is asked, the rest listed.
    let max = lattice::service::e2e_keys::MAX_REMOTE_SERVERS;
    let users: serde_json::Map<String, Value> = (1..=max + 10)
        .map(|port| (format!("@u:127.0.0.2:{port}"), json!([])))
        .collect();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/query",
            t,
            json!({ "device_keys": users }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let failures = body["failures"].as_object().expect("failures");
    assert_eq!(failures.len(), max + 10);
    let skipped = failures
        .values()
        .filter(|f| f["errcode"] == "M_LIMIT_EXCEEDED")
        .count();
    assert_eq!(skipped, 10, "servers past the cap are not asked");
}

/// Suspected: unauthenticated federation requests cost work before the
/// signature check. A request whose origin's key cannot be had is refused
/// before its body is read (here the body never comes), and a bogus origin costs
/// one key fetch per backoff window.
#[tokio::test]
async fn unauthenticated_federation_requests_are_refused_before_the_body() {
    let hits = Arc::new(AtomicUsize::new(0));
    let origin = counting_listener("127.0.0.1", hits.clone()).await;
    let server = TestServer::start_federating().await;
    let port: u16 = server.name().rsplit_once(':').unwrap().1.parse().unwrap();

    let pem = std::fs::read(&dev_tls().ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    for attempt in 0..3 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let head = format!(
            "PUT /_matrix/federation/v1/send/t{attempt} HTTP/1.1\r\n\
             Host: {name}\r\n\
             Authorization: X-Matrix origin=\"{origin}\",destination=\"{name}\",key=\"ed25519:k\",sig=\"c2lnbmF0dXJl\"\r\n\
             Content-Type: application/json\r\n\
             Content-Length: 8000000\r\n\r\n{{",
            name = server.name(),
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // The body (8 MB announced, one byte sent) never comes: the answer must.
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                answer.extend_from_slice(&chunk[..n]);
                if n == 0 || String::from_utf8_lossy(&answer).contains("M_UNAUTHORIZED") {
                    return answer;
                }
            }
        })
        .await
        .expect("answered without waiting for the body");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("M_UNAUTHORIZED"), "{answer}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one key fetch for the origin"
    );
}
