//! The media repository: uploads, authenticated downloads, thumbnails, async
//! uploads, limits, URL previews and the admin actions.

use std::io::Cursor;

use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::harness::{Login, TestServer, eventually};

const UPLOAD: &str = "/_matrix/media/v3/upload";
const V1: &str = "/_matrix/client/v1/media";

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(
    server: &TestServer,
    who: &Login,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> (StatusCode, Value) {
    let mut url = format!("{}{UPLOAD}", server.base);
    if let Some(name) = filename {
        url.push_str(&format!("?filename={name}"));
    }
    let resp = server
        .client
        .post(url)
        .bearer_auth(&who.access_token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn path_of(mxc: &str) -> String {
    mxc.strip_prefix("mxc://").unwrap().to_owned()
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = server.client.get(format!("{}{path}", server.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                if p.ends_with("tmp") {
                    0
                } else {
                    files_under(&p)
                }
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn upload_and_authenticated_download_round_trip() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, body) = upload(
        &server,
        &alice,
        bytes.clone(),
        "application/octet-stream",
        Some("data.bin"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    assert!(mxc.starts_with("mxc://test.local/"), "{mxc}");
    let id = path_of(&mxc);

    // Bob downloads through the authenticated endpoint: identical bytes, safe headers.
    let resp = get(
        &server,
        &format!("{V1}/download/{id}"),
        Some(&bob.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(
        h[header::CONTENT_DISPOSITION],
        "attachment; filename=\"data.bin\""
    );
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("sandbox")
    );
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // With a file name in the path.
    let resp = get(
        &server,
        &format!("{V1}/download/{id}/other.bin"),
        Some(&bob.access_token),
    )
    .await;
    assert_eq!(
        resp.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"other.bin\""
    );

    // A byte range.
    let resp = server
        .client
        .get(format!("{}{V1}/download/{id}", server.base))
        .bearer_auth(&bob.access_token)
        .header(header::RANGE, "bytes=1000-1009")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        "bytes 1000-1009/300000"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[1000..1010]);

    // Authentication is required; the legacy endpoint finds nothing.
    let resp = get(&server, &format!("{V1}/download/{id}"), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errcode"], "M_MISSING_TOKEN");
    let resp = get(&server, &format!("/_matrix/media/v3/download/{id}"), None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Unknown media.
    let resp = get(
        &server,
        &format!("{V1}/download/test.local/nosuchmedia"),
        Some(&bob.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errcode"], "M_NOT_FOUND");

    // The same bytes uploaded again are stored once.
    let media_dir = server.state.config.data_dir.join("media");
    let before = files_under(&media_dir);
    let (status, again) = upload(
        &server,
        &bob,
        bytes.clone(),
        "application/octet-stream",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(again["content_uri"], mxc.as_str());
    assert_eq!(files_under(&media_dir), before);

    // The advertised limit.
    let resp = get(&server, &format!("{V1}/config"), Some(&bob.access_token)).await;
    let config: Value = resp.json().await.unwrap();
    assert_eq!(config["m.upload.size"], 50 * 1024 * 1024);
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_and_leave_nothing() {
    let server = TestServer::start_with(|c| c.media.max_upload_bytes = 10_000).await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = upload(&server, &alice, vec![1; 20_000], "text/plain", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")),
        "{body}"
    );
    let media_dir = server.state.config.data_dir.join("media");
    assert_eq!(files_under(&media_dir), 0);
    assert_eq!(
        std::fs::read_dir(media_dir.join("tmp")).map_or(0, |d| d.count()),
        0
    );
    let (status, _) = upload(&server, &alice, vec![1; 5_000], "text/plain", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A PNG whose header declares `w`×`h` pixels, with a one-byte IDAT: decoding it
/// would need gigabytes.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[tokio::test]
async fn thumbnails_at_standard_sizes_and_bombs_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let (_, body) = upload(
        &server,
        &alice,
        png(1000, 500),
        "image/png",
        Some("pic.png"),
    )
    .await;
    let id = path_of(body["content_uri"].as_str().unwrap());

    let thumb = |query: &'static str| {
        let server = &server;
        let id = id.clone();
        async move { get(server, &format!("{V1}/thumbnail/{id}?{query}"), t).await }
    };
    let resp = thumb("width=80&height=80&method=crop").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/png");
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));
    let resp = thumb("width=300&height=200&method=scale").await;
    let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (320, 160));
    // Cached: the same bytes again.
    let a = thumb("width=80&height=80&method=crop")
        .await
        .bytes()
        .await
        .unwrap();
    let b = thumb("width=96&height=96&method=crop")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(a, b);
    // Bad parameters.
    assert_eq!(thumb("width=80").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        thumb("width=80&height=80&method=stretch").await.status(),
        StatusCode::BAD_REQUEST
    );
    // JPEG stays JPEG.
    let mut jpeg = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(640, 480))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let (_, body) = upload(&server, &alice, jpeg.into_inner(), "image/jpeg", None).await;
    let jid = path_of(body["content_uri"].as_str().unwrap());
    let resp = get(
        &server,
        &format!("{V1}/thumbnail/{jid}?width=32&height=32&method=crop"),
        t,
    )
    .await;
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/jpeg");

    // Not an image: no thumbnail.
    let (_, body) = upload(&server, &alice, b"just text".to_vec(), "text/plain", None).await;
    let tid = path_of(body["content_uri"].as_str().unwrap());
    let resp = get(
        &server,
        &format!("{V1}/thumbnail/{tid}?width=32&height=32"),
        t,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A decompression bomb (60000 x 60000 declared) is refused from its header.
    let (status, body) = upload(&server, &alice, png_bomb(60_000, 60_000), "image/png", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bid = path_of(body["content_uri"].as_str().unwrap());
    let resp = get(
        &server,
        &format!("{V1}/thumbnail/{bid}?width=96&height=96&method=crop"),
        t,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // ... and the original is still served as uploaded.
    let resp = get(&server, &format!("{V1}/download/{bid}"), t).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn async_uploads_wait_and_cannot_be_overwritten() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let resp = server
        .client
        .post(format!("{}/_matrix/media/v1/create", server.base))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let created: Value = resp.json().await.unwrap();
    assert!(created["unused_expires_at"].as_i64().unwrap() > 0);
    let id = path_of(created["content_uri"].as_str().unwrap());

    // Not there yet.
    let resp = get(
        &server,
        &format!("{V1}/download/{id}?timeout_ms=100"),
        Some(&bob.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errcode"], "M_NOT_YET_UPLOADED");

    let put = |who: &Login, bytes: &'static [u8]| {
        let server = &server;
        let token = who.access_token.clone();
        let id = id.clone();
        async move {
            server
                .client
                .put(format!(
                    "{}/_matrix/media/v3/upload/{id}?filename=late.txt",
                    server.base
                ))
                .bearer_auth(token)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(bytes)
                .send()
                .await
                .unwrap()
        }
    };
    // Only the creator may fill it.
    assert_eq!(put(&bob, b"mine").await.status(), StatusCode::FORBIDDEN);

    // A waiting download completes when the bytes arrive.
    let wait_path = format!("{V1}/download/{id}?timeout_ms=10000");
    let waiting = get(&server, &wait_path, Some(&bob.access_token));
    let filling = async {
        // The download is waiting for the upload (subscribed to uploads).
        eventually("the download to wait", || async {
            server.state.media_uploaded.receiver_count() > 0
        })
        .await;
        put(&alice, b"arrived later").await
    };
    let (download, filled) = tokio::join!(waiting, filling);
    assert_eq!(filled.status(), StatusCode::OK);
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(
        download.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"late.txt\""
    );
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"arrived later");

    let again = put(&alice, b"again").await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let err: Value = again.json().await.unwrap();
    assert_eq!(err["errcode"], "M_CANNOT_OVERWRITE_MEDIA");
}

/// A web server on `ip` serving a page with OpenGraph tags and an image, and a
/// redirect to `redirect_to`.
async fn web(ip: &str, redirect_to: Option<String>) -> String {
    use axum::{
        Router,
        http::header as h,
        response::{IntoResponse, Redirect},
        routing::get,
    };
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let image = png(200, 100);
    let app = Router::new()
        .route(
            "/page",
            get(|| async {
                (
                    [(h::CONTENT_TYPE, "text/html; charset=utf-8")],
                    r#"<html><head><title>Ignored</title>
                       <meta property="og:title" content="Lattice &amp; friends">
                       <meta property="og:description" content="A test page">
                       <meta property="og:image" content="/image.png"></head></html>"#,
                )
            }),
        )
        .route(
            "/image.png",
            get(move || {
                let image = image.clone();
                async move { ([(h::CONTENT_TYPE, "image/png")], image).into_response() }
            }),
        )
        .route(
            "/big.png",
            get(|| async { ([(h::CONTENT_TYPE, "image/png")], vec![7u8; 64 * 1024]) }),
        )
        .route(
            // No length, no end.
            "/endless.png",
            get(|| async {
                let chunks = futures_util::stream::repeat_with(|| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&[7u8; 8192]))
                });
                (
                    [(h::CONTENT_TYPE, "image/png")],
                    axum::body::Body::from_stream(chunks),
                )
            }),
        )
        .route(
            "/redirect",
            get(move || {
                let to = redirect_to.clone().unwrap_or_default();
                async move { Redirect::temporary(&to) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn url_previews_are_off_by_default_and_refuse_blocked_addresses() {
    let off = TestServer::start().await;
    let alice = off.register("alice", "pw").await;
    let site = web("127.0.0.1", None).await;
    let resp = get(
        &off,
        &format!("{V1}/preview_url?url={site}/page"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Enabled with the default blocklist: loopback is refused.
    let on = TestServer::start_with(|c| c.media.url_preview.enabled = true).await;
    let alice = on.register("alice", "pw").await;
    let resp = get(
        &on,
        &format!("{V1}/preview_url?url={site}/page"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // 127.0.0.1 allowed, 127.0.0.2 not: the page previews (its image stored as
    // media), a redirect to 127.0.0.2 is refused.
    let elsewhere = web("127.0.0.2", None).await;
    let site = web("127.0.0.1", Some(format!("{elsewhere}/page"))).await;
    let allowed = TestServer::start_with(|c| {
        c.media.url_preview.enabled = true;
        c.media.url_preview.ip_range_allowlist = vec!["127.0.0.1/32".into()];
        c.media.url_preview.max_bytes = 50_000;
    })
    .await;
    let alice = allowed.register("alice", "pw").await;
    let resp = get(
        &allowed,
        &format!("{V1}/preview_url?url={site}/page"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let og: Value = resp.json().await.unwrap();
    assert_eq!(og["og:title"], "Lattice & friends", "{og}");
    assert_eq!(og["og:description"], "A test page");
    assert_eq!(og["og:image:width"], 200);
    let image = path_of(og["og:image"].as_str().expect("og:image is mxc"));
    let resp = get(
        &allowed,
        &format!("{V1}/download/{image}"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // An image URL previews as the image, streamed into the store; one over
    // `max_bytes` (announced, or found out from a body that never ends) is
    // refused and leaves nothing.
    let resp = get(
        &allowed,
        &format!("{V1}/preview_url?url={site}/image.png"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let og: Value = resp.json().await.unwrap();
    assert_eq!(og["og:image:height"], 100, "{og}");
    assert_eq!(og["matrix:image:size"], png(200, 100).len(), "{og}");
    let media_dir = allowed.state.config.data_dir.join("media");
    let stored = files_under(&media_dir);
    for big in ["big.png", "endless.png"] {
        let resp = get(
            &allowed,
            &format!("{V1}/preview_url?url={site}/{big}"),
            Some(&alice.access_token),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{big}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errcode"], "M_TOO_LARGE", "{big}");
        assert_eq!(files_under(&media_dir), stored, "{big}");
        assert_eq!(
            std::fs::read_dir(media_dir.join("tmp")).map_or(0, |d| d.count()),
            0,
            "{big}"
        );
    }
    let resp = get(
        &allowed,
        &format!("{V1}/preview_url?url={site}/redirect"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = get(
        &allowed,
        &format!("{V1}/preview_url?url={elsewhere}/page"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admins_quarantine_media_and_purge_a_users_uploads() {
    let server = TestServer::start().await;
    let admin = server.register("admin", "pw").await;
    lattice::storage::users::set_admin(&server.state.db, &admin.user_id, true)
        .await
        .unwrap();
    let alice = server.register("alice", "pw").await;
    let t = Some(admin.access_token.as_str());
    let (_, one) = upload(&server, &alice, b"one".to_vec(), "text/plain", None).await;
    let (_, two) = upload(&server, &alice, b"two".to_vec(), "text/plain", None).await;
    let (one, two) = (
        path_of(one["content_uri"].as_str().unwrap()),
        path_of(two["content_uri"].as_str().unwrap()),
    );

    // Not for ordinary users.
    let resp = server
        .client
        .post(format!(
            "{}/_synapse/admin/v1/media/quarantine/{one}",
            server.base
        ))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Quarantined media is no longer served; releasing it serves it again.
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/media/quarantine/{one}"),
            t,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let resp = get(
        &server,
        &format!("{V1}/download/{one}"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/media/unquarantine/{one}"),
            t,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let resp = get(
        &server,
        &format!("{V1}/download/{one}"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Every item a room refers to.
    let room = server.create_room(&alice, serde_json::json!({})).await;
    server
        .send_message(
            &alice,
            &room,
            serde_json::json!({ "msgtype": "m.file", "body": "two", "url": format!("mxc://{two}") }),
        )
        .await;
    let (status, body) = server
        .post(
            &format!("/_synapse/admin/v1/room/{room}/media/quarantine"),
            t,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["num_quarantined"], 1);
    let resp = get(
        &server,
        &format!("{V1}/download/{two}"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Purging the user's uploads deletes rows and files.
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/_synapse/admin/v1/users/{}/media", alice.user_id),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    assert_eq!(files_under(&server.state.config.data_dir.join("media")), 0);
    let resp = get(
        &server,
        &format!("{V1}/download/{one}"),
        Some(&alice.access_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
