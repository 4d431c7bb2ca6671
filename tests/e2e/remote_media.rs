//! Remote media fetched from a hostile federation peer (issue #16, F8 and F4):
//! the answer streams to disk under `media.max_upload_bytes`, a copy over it is
//! refused (`502 M_TOO_LARGE`) as soon as it passes it, a trickling or silent
//! peer is cut off at `media.remote_fetch_timeout_secs`, a `Location` leading to
//! a refused address is never followed, and whatever fails leaves no file and no
//! row. Our own media is served to other servers streamed, byte-exact.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::Method};
use lattice::domain::multipart;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    harness::{Login, TestServer},
    hostile::{Answer, HostilePeer},
    outbound::counting_listener,
};

const BOUNDARY: &str = "e2e-b0undary-7f3c";
const DOWNLOAD: &str = "/_matrix/federation/v1/media/download/";

/// The answer's headers: `multipart/mixed` with [`BOUNDARY`].
fn multipart_type() -> Vec<(String, String)> {
    vec![(
        "content-type".into(),
        format!("multipart/mixed; boundary={BOUNDARY}"),
    )]
}

/// A federation media answer up to (not including) the media's bytes.
fn head(content_type: &str, disposition: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n"
    );
    if let Some(d) = disposition {
        out.push_str(&format!("Content-Disposition: {d}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A whole federation media answer carrying `media`.
fn answer(media: &[u8], content_type: &str, disposition: Option<&str>) -> Answer {
    let mut body = head(content_type, disposition);
    body.extend_from_slice(media);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Answer::Raw(StatusCode::OK, multipart_type(), Bytes::from(body))
}

/// A federation media answer in the `Location` form.
fn location(url: &str) -> Answer {
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}\r\nLocation: {url}\r\n\r\n\r\n--{BOUNDARY}--\r\n"
    );
    Answer::Raw(StatusCode::OK, multipart_type(), Bytes::from(body))
}

/// A body that starts with `head` and never ends: `chunk` every `every`.
fn endless(headers: Vec<(String, String)>, head: Vec<u8>, chunk: &[u8], every: Duration) -> Answer {
    Answer::Stream {
        status: StatusCode::OK,
        headers,
        head: Bytes::from(head),
        chunk: Bytes::copy_from_slice(chunk),
        every,
    }
}

/// Bytes of every value, with near-misses of the delimiter in them.
fn media_bytes(len: usize) -> Vec<u8> {
    let near_miss = format!("\r\n--{}!", &BOUNDARY[..BOUNDARY.len() - 1]);
    let mut out: Vec<u8> = near_miss.into_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn download(lattice: &TestServer, who: &Login, server: &str, id: &str) -> reqwest::Response {
    lattice
        .client
        .get(format!(
            "{}/_matrix/client/v1/media/download/{server}/{id}",
            lattice.base
        ))
        .bearer_auth(&who.access_token)
        .send()
        .await
        .unwrap()
}

/// Downloads and expects an error: (status, errcode, seconds taken).
async fn refused(
    lattice: &TestServer,
    who: &Login,
    server: &str,
    id: &str,
) -> (StatusCode, String, f64) {
    let started = Instant::now();
    let response = download(lattice, who, server, id).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["errcode"].as_str().unwrap_or_default().to_owned(),
        started.elapsed().as_secs_f64(),
    )
}

/// Files anywhere under the media directory (temporary ones included).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { vec![p] }
        })
        .collect()
}

/// Nothing of `server`/`id` is kept: no row, and no file at all in the store.
async fn nothing_stored(lattice: &TestServer, server: &str, id: &str) {
    let rows: i64 =
        sqlx::query_scalar("select count(*) from media where server_name = $1 and media_id = $2")
            .bind(server)
            .bind(id)
            .fetch_one(&lattice.state.db)
            .await
            .unwrap();
    assert_eq!(rows, 0, "{id}: a media row was kept");
    let files = files_under(&lattice.state.config.data_dir.join("media"));
    assert!(files.is_empty(), "{id}: files were kept: {files:?}");
}

/// The two forms of a federation media answer (the bytes in the answer, or a
/// `Location`) are streamed to the store and served byte-exact with the
/// remote's content type and file name; a cached copy is served without asking
/// again, and concurrent requests for one item fetch it once.
#[tokio::test]
async fn remote_media_streams_and_is_served_byte_exact() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let media = media_bytes(300_000);

    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}direct"),
        answer(
            &media,
            "application/pdf",
            Some("attachment; filename=\"report.pdf\""),
        ),
    );
    let response = download(&lattice, &alice, peer.name(), "direct").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/pdf");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("report.pdf"), "{disposition}");
    assert!(response.bytes().await.unwrap() == media, "bytes differ");
    let asked = peer.received(&format!("{DOWNLOAD}direct")).len();
    assert_eq!(asked, 1);
    let again = download(&lattice, &alice, peer.name(), "direct").await;
    assert!(again.bytes().await.unwrap() == media);
    assert_eq!(
        peer.received(&format!("{DOWNLOAD}direct")).len(),
        1,
        "the cached copy is served"
    );

    let cdn = media_bytes(123_457);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}located"),
        location(&format!("https://{}/cdn/located", peer.name())),
    );
    peer.on(
        Method::GET,
        "/cdn/located",
        Answer::Raw(
            StatusCode::OK,
            vec![
                ("content-type".into(), "image/png".into()),
                (
                    "content-disposition".into(),
                    "inline; filename=\"pic.png\"".into(),
                ),
            ],
            Bytes::from(cdn.clone()),
        ),
    );
    let response = download(&lattice, &alice, peer.name(), "located").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("pic.png"), "{disposition}");
    assert!(response.bytes().await.unwrap() == cdn, "bytes differ");

    // Four requests at once for an item the peer is slow to send.
    let popular = media_bytes(50_000);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}popular"),
        Answer::Delayed(
            Duration::from_millis(500),
            Box::new(answer(&popular, "application/octet-stream", None)),
        ),
    );
    let all = futures_util::future::join_all(
        (0..4).map(|_| download(&lattice, &alice, peer.name(), "popular")),
    )
    .await;
    for response in all {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.bytes().await.unwrap() == popular);
    }
    assert_eq!(
        peer.received(&format!("{DOWNLOAD}popular")).len(),
        1,
        "one download for concurrent requests"
    );
    assert!(lattice.state.remote_fetches.is_empty());
}

/// F8: remote media over `media.max_upload_bytes` is refused with the spec's
/// `502 M_TOO_LARGE` — announced by its length, or found out while streaming an
/// answer that never ends (so refused without reading the rest), in either
/// form — and leaves no file (temporary or not) and no row. An item of exactly
/// the limit is fine.
#[tokio::test]
async fn remote_media_over_the_limit_is_refused_and_leaves_nothing() {
    const LIMIT: usize = 100_000;
    let lattice = TestServer::start_federating_with(|c| {
        c.media.max_upload_bytes = LIMIT as u64;
        c.media.remote_fetch_timeout_secs = 60;
    })
    .await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let flood = vec![b'a'; 64 * 1024];
    let cdn = |path: &str| format!("https://{}/cdn/{path}", peer.name());

    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}sized"),
        // Longer than any answer within the limit: refused by its length.
        answer(&media_bytes(4 * LIMIT), "image/png", None),
    );
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}endless"),
        endless(
            multipart_type(),
            head("image/png", None),
            &flood,
            Duration::ZERO,
        ),
    );
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}located"),
        location(&cdn("big")),
    );
    peer.on(
        Method::GET,
        "/cdn/big",
        Answer::Raw(
            StatusCode::OK,
            Vec::new(),
            Bytes::from(media_bytes(LIMIT + 1)),
        ),
    );
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}located-endless"),
        location(&cdn("endless")),
    );
    peer.on(
        Method::GET,
        "/cdn/endless",
        endless(Vec::new(), Vec::new(), &flood, Duration::ZERO),
    );
    for id in ["sized", "endless", "located", "located-endless"] {
        let (status, errcode, secs) = refused(&lattice, &alice, peer.name(), id).await;
        assert_eq!(
            (status, errcode.as_str()),
            (StatusCode::BAD_GATEWAY, "M_TOO_LARGE"),
            "{id}"
        );
        assert!(secs < 20.0, "{id}: refused only after {secs:.1} s");
        nothing_stored(&lattice, peer.name(), id).await;
    }

    let exact = media_bytes(LIMIT);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}exact"),
        answer(&exact, "application/octet-stream", None),
    );
    let response = download(&lattice, &alice, peer.name(), "exact").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == exact);
}

/// A peer that sends its answer a byte at a time for ever, or never answers at
/// all, is cut off at `media.remote_fetch_timeout_secs` — a request waiting for
/// the same item's fetch too — and leaves nothing behind.
#[tokio::test]
async fn a_trickling_or_silent_remote_is_cut_off_at_the_deadline() {
    let lattice =
        TestServer::start_federating_with(|c| c.media.remote_fetch_timeout_secs = 2).await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let tick = Duration::from_millis(100);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}trickle"),
        endless(multipart_type(), head("image/png", None), b"x", tick),
    );
    peer.on(Method::GET, &format!("{DOWNLOAD}silent"), Answer::Hang);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}located"),
        location(&format!("https://{}/cdn/trickle", peer.name())),
    );
    peer.on(
        Method::GET,
        "/cdn/trickle",
        endless(Vec::new(), b"x".to_vec(), b"x", tick),
    );
    for id in ["trickle", "silent", "located"] {
        let both = futures_util::future::join_all(
            (0..2).map(|_| refused(&lattice, &alice, peer.name(), id)),
        )
        .await;
        for (status, errcode, secs) in both {
            assert_eq!(
                (status, errcode.as_str()),
                (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
                "{id}"
            );
            assert!(
                (1.5..10.0).contains(&secs),
                "{id}: answered after {secs:.1} s"
            );
        }
        nothing_stored(&lattice, peer.name(), id).await;
    }
    assert!(lattice.state.remote_fetches.is_empty());
}

/// F4 on the streaming path: a `Location` at a refused address, given directly
/// or reached through a redirect from an allowed host, is never connected to.
#[tokio::test]
async fn a_location_leading_to_a_refused_address_is_not_followed() {
    let hits = Arc::new(AtomicUsize::new(0));
    let internal = counting_listener("127.0.0.2", hits.clone()).await;
    // Of loopback, only 127.0.0.1 (where the peer listens) is allowed.
    let lattice = TestServer::start_federating_with(|c| {
        c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()];
    })
    .await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let secret = format!("https://{internal}/secret");
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}literal"),
        location(&secret),
    );
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}redirected"),
        location(&format!("https://{}/cdn/hop", peer.name())),
    );
    peer.on(
        Method::GET,
        "/cdn/hop",
        Answer::Raw(
            StatusCode::FOUND,
            vec![("location".into(), secret.clone())],
            Bytes::new(),
        ),
    );
    for id in ["literal", "redirected"] {
        let (status, errcode, _) = refused(&lattice, &alice, peer.name(), id).await;
        assert_eq!(
            (status, errcode.as_str()),
            (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
            "{id}"
        );
        nothing_stored(&lattice, peer.name(), id).await;
    }
    assert_eq!(
        peer.received("/cdn/hop").len(),
        1,
        "the allowed hop was asked"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the refused address was reached"
    );
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A 50 MB remote item (the limit raised past it) downloads and is served
/// byte-exact. The test prints how much the process grew meanwhile; the
/// server holds a chunk at a time, not the item (the peer holds it, once).
#[tokio::test]
async fn a_50_mb_remote_item_streams_through() {
    const SIZE: usize = 50 * 1024 * 1024;
    let lattice =
        TestServer::start_federating_with(|c| c.media.max_upload_bytes = 64 * 1024 * 1024).await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let media = media_bytes(SIZE);
    let expected = Sha256::digest(&media);
    peer.on(
        Method::GET,
        &format!("{DOWNLOAD}big"),
        answer(&media, "video/mp4", None),
    );
    drop(media);
    let before = rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut response = download(&lattice, &alice, peer.name(), "big").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut hasher = Sha256::new();
    let mut size = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        size += chunk.len();
        hasher.update(&chunk);
    }
    sampler.abort();
    assert_eq!(size, SIZE);
    assert!(hasher.finalize() == expected, "bytes differ");
    eprintln!(
        "50 MB remote item: RSS {} MB before, peak {} MB during the download",
        before >> 20,
        peak.load(Ordering::Relaxed) >> 20
    );
}

/// Our media served to another server (`/_matrix/federation/v1/media/download`)
/// is streamed from the file: a well-formed multipart answer of the announced
/// length with the exact bytes.
#[tokio::test]
async fn our_media_is_served_to_other_servers_streamed_and_exact() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "pw").await;
    let media = media_bytes(1_000_003);
    let response = lattice
        .client
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=data.bin",
            lattice.base
        ))
        .bearer_auth(&alice.access_token)
        .header("content-type", "application/octet-stream")
        .body(media.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mxc = body["content_uri"].as_str().unwrap();
    let id = mxc.rsplit('/').next().unwrap();

    let response = peer
        .request_raw(
            lattice.name(),
            Method::GET,
            &format!("{DOWNLOAD}{id}"),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), length);
    let boundary = multipart::boundary(&kind).expect("a multipart answer");
    let mut parser = multipart::Parser::new(
        &boundary,
        multipart::Limits {
            parts: vec![1024, 2 << 20],
            head: 1024,
            preamble: 0,
        },
    )
    .unwrap();
    let mut parts: Vec<(multipart::Headers, Vec<u8>)> = Vec::new();
    for event in parser.feed(&body).unwrap() {
        match event {
            multipart::Event::Part { headers, .. } => parts.push((headers, Vec::new())),
            multipart::Event::Body { index, bytes } => parts[index].1.extend_from_slice(&bytes),
            multipart::Event::End { .. } => {}
        }
    }
    parser.finish().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        multipart::header(&parts[0].0, "content-type"),
        Some("application/json")
    );
    assert_eq!(parts[0].1, b"{}");
    assert_eq!(
        multipart::header(&parts[1].0, "content-type"),
        Some("application/octet-stream")
    );
    assert!(
        multipart::header(&parts[1].0, "content-disposition")
            .is_some_and(|d| d.contains("data.bin"))
    );
    assert!(parts[1].1 == media, "bytes differ");
}
