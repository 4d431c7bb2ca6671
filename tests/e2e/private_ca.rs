//! Outbound HTTPS to services behind a private certificate authority
//! (`outbound.extra_ca_files`): push gateways and URL previews trust the
//! configured CAs as federation does, the older `federation.extra_ca_files`
//! still counts for all of them, and the outbound address policy is unchanged
//! by trusting a CA.
//!
//! The services present the development certificate (issued by the dev CA for
//! `localhost` and `127.0.0.1`), which no built-in root trusts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    routing::{get, post},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, dev_tls, enc};

/// Serves `app` over TLS with the dev certificate on `ip`.
async fn serve_tls(ip: &str, app: Router) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    let tls = dev_tls();
    let config = lattice::federation::tls::server_config(&tls.cert, &tls.key).unwrap();
    let listener = lattice::federation::tls::TlsListener::new(tcp, config).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An HTTPS push gateway that reports every notification it accepts.
async fn gateway() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
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
    let addr = serve_tls("127.0.0.1", app).await;
    (format!("https://{addr}/_matrix/push/v1/notify"), rx)
}

/// An HTTPS page with Open Graph tags; counts the requests it answers.
async fn site(ip: &str, hits: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/page",
        get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html")],
                    r#"<html><head><meta property="og:title" content="Behind a private CA"></head></html>"#,
                )
            }
        }),
    );
    let addr = serve_tls(ip, app).await;
    format!("https://{addr}/page")
}

/// A server that may reach 127.0.0.1 (not the rest of loopback), with URL
/// previews on; `trust` sets which CA settings it has.
async fn server(trust: impl FnOnce(&mut lattice::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()];
        c.federation.trusted_key_servers = Vec::new();
        c.media.url_preview.enabled = true;
        c.media.url_preview.ip_range_allowlist = vec!["127.0.0.1/32".into()];
        trust(c);
    })
    .await
}

/// Sets an HTTP pusher for `bob` at `url`, has alice message him in a room,
/// and returns the notification the gateway got within `wait`, if any.
async fn push_once(
    server: &TestServer,
    url: &str,
    received: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    wait: Duration,
) -> Option<Value> {
    let alice = server.register("alice", "pw").await;
    let bob: Login = server.register("bob", "pw").await;
    server.set_http_pusher(&bob, url).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "through the private CA" }),
        )
        .await;
    tokio::time::timeout(wait, received.recv())
        .await
        .ok()
        .flatten()
}

async fn preview(server: &TestServer, who: &Login, url: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v1/media/preview_url?url={}", enc(url)),
            Some(&who.access_token),
        )
        .await
}

#[tokio::test]
async fn push_gateways_behind_a_private_ca_are_trusted_with_outbound_extra_ca_files() {
    let (url, mut received) = gateway().await;
    let server = server(|c| c.outbound.extra_ca_files = vec![dev_tls().ca.clone()]).await;
    let got = push_once(&server, &url, &mut received, Duration::from_secs(30))
        .await
        .expect("the gateway behind the private CA was notified");
    assert_eq!(
        got["notification"]["content"]["body"], "through the private CA",
        "{got}"
    );
    assert_eq!(got["notification"]["devices"][0]["pushkey"], "k1");
}

/// Without the CA the same gateway is never notified (the TLS handshake fails):
/// the setting is what makes the difference.
#[tokio::test]
async fn push_gateways_behind_an_untrusted_ca_are_not_notified() {
    let (url, mut received) = gateway().await;
    let server = server(|_| {}).await;
    // The first attempt fails at once; later ones wait for backoff.
    let got = push_once(&server, &url, &mut received, Duration::from_secs(3)).await;
    assert!(got.is_none(), "notified without trusting the CA: {got:?}");
}

/// `federation.extra_ca_files`, the setting's older place, is trusted by the
/// push and preview clients too (existing configurations keep working).
#[tokio::test]
async fn federation_extra_ca_files_still_count_for_every_outbound_client() {
    let (url, mut received) = gateway().await;
    let server = server(|c| c.federation.extra_ca_files = vec![dev_tls().ca.clone()]).await;
    let got = push_once(&server, &url, &mut received, Duration::from_secs(30)).await;
    assert!(got.is_some(), "push gateway not notified");

    let hits = Arc::new(AtomicUsize::new(0));
    let page = site("127.0.0.1", hits.clone()).await;
    let carol = server.register("carol", "pw").await;
    let (status, body) = preview(&server, &carol, &page).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["og:title"], "Behind a private CA", "{body}");
}

#[tokio::test]
async fn url_previews_trust_the_private_ca_and_keep_the_address_policy() {
    let trusted_hits = Arc::new(AtomicUsize::new(0));
    let page = site("127.0.0.1", trusted_hits.clone()).await;
    // The same site on a refused address (loopback other than 127.0.0.1).
    let refused_hits = Arc::new(AtomicUsize::new(0));
    let refused_page = site("127.0.0.2", refused_hits.clone()).await;

    // Without the CA: the handshake fails, no preview.
    let plain = server(|_| {}).await;
    let alice = plain.register("alice", "pw").await;
    let (status, body) = preview(&plain, &alice, &page).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body["errcode"].is_string(), "{body}");
    assert_eq!(trusted_hits.load(Ordering::SeqCst), 0);

    let trusting = server(|c| c.outbound.extra_ca_files = vec![dev_tls().ca.clone()]).await;
    let alice = trusting.register("alice", "pw").await;
    let (status, body) = preview(&trusting, &alice, &page).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["og:title"], "Behind a private CA", "{body}");
    assert_eq!(trusted_hits.load(Ordering::SeqCst), 1);

    // Trusting a CA opens no address: 127.0.0.2 stays refused.
    let (status, body) = preview(&trusting, &alice, &refused_page).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(refused_hits.load(Ordering::SeqCst), 0);
}

/// A CA file that cannot be read stops the server at start, naming the file,
/// rather than leaving push or previews to fail later.
#[tokio::test]
async fn an_unreadable_ca_file_stops_the_start() {
    let mut config = crate::harness::test_config();
    config.outbound.extra_ca_files = vec!["/nonexistent/private-ca.pem".into()];
    config.database.url = Some(crate::harness::fresh_database_url().await);
    let db = lattice::storage::Database::open(&config).await.unwrap();
    db.migrate().await.unwrap();
    let err = match lattice::service::AppState::load(config, db.pool.clone()).await {
        Ok(_) => panic!("started with an unreadable CA file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("/nonexistent/private-ca.pem"), "{err}");
    db.close().await;
}
