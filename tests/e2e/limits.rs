//! Resource limits an attacker runs into: password guessing, token and session
//! reuse, unbounded maps, oversized events and inputs (issue #16).

use lattice::config::Bucket;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, password_auth};

/// Rate limits on, with three failed password checks per bucket and (almost) no
/// refill; the other buckets out of the way. Loopback is a trusted proxy, so a
/// test can speak from any address with `X-Forwarded-For`.
async fn password_limited_server() -> TestServer {
    TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        let roomy = Bucket {
            per_second: 1000.0,
            burst: 1000,
        };
        c.rate_limits.client = roomy;
        c.rate_limits.login = roomy;
        c.rate_limits.password = Bucket {
            per_second: 0.001,
            burst: 3,
        };
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await
}

/// `POST /login` from `ip` (through the trusted proxy).
async fn login_from(
    server: &TestServer,
    ip: &str,
    user: &str,
    password: &str,
) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", server.base))
        .header("x-forwarded-for", ip)
        .json(&json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn assert_limited(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
}

#[tokio::test]
async fn password_guesses_at_login_are_limited_per_user_and_per_ip() {
    let server = password_limited_server().await;
    server.register("eve", "right").await;
    server.register("frank", "right").await;

    // Correct passwords give their token back: logging in often is fine.
    for i in 0..6 {
        let (status, body) = login_from(&server, "10.1.1.1", "frank", "right").await;
        assert_eq!(status, StatusCode::OK, "login {i}: {body}");
    }

    // Per user: three guesses at eve's password, each from a fresh address ...
    for i in 0..3 {
        let (status, body) = login_from(&server, &format!("10.0.0.{i}"), "eve", "guess").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    // ... and the fourth is refused before any check, from any address, even
    // with the right password.
    let (status, body) = login_from(&server, "10.0.0.9", "eve", "guess").await;
    assert_limited(status, &body);
    let (status, body) = login_from(&server, "10.0.0.10", "eve", "right").await;
    assert_limited(status, &body);

    // Per IP: one address guessing at many accounts (known or not).
    for user in ["frank", "nobody1", "nobody2"] {
        let (status, body) = login_from(&server, "192.0.2.7", user, "guess").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = login_from(&server, "192.0.2.7", "nobody3", "guess").await;
    assert_limited(status, &body);
    // frank, from elsewhere, is not locked out by that address.
    let (status, body) = login_from(&server, "10.1.1.2", "frank", "right").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn password_guesses_in_user_interactive_auth_are_limited() {
    let server = password_limited_server().await;
    let eve = server.register("eve", "right").await;
    let other = Login::from_json(&server.login("eve", "right").await.1);
    let token = Some(eve.access_token.as_str());
    let devices = json!([other.device_id]);

    let (status, challenge) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            token,
            json!({ "devices": devices }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = challenge["session"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, body) = server
            .post(
                "/_matrix/client/v3/delete_devices",
                token,
                json!({ "devices": devices, "auth": password_auth("eve", "guess", &session) }),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    }
    let (status, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            token,
            json!({ "devices": devices, "auth": password_auth("eve", "guess", &session) }),
        )
        .await;
    assert_limited(status, &body);

    // The bucket is the user's, whichever operation asks for the password.
    let (_, challenge) = server
        .post(
            "/_matrix/client/v3/account/password",
            token,
            json!({ "new_password": "new" }),
        )
        .await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            token,
            json!({ "new_password": "new", "auth": password_auth("eve", "guess", &session) }),
        )
        .await;
    assert_limited(status, &body);
    // Nothing was deleted or changed.
    assert_eq!(server.whoami(&other.access_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn login_reveals_deactivation_only_to_the_password_holder() {
    let server = TestServer::start().await;
    let quinn = server.register("quinn", "pw").await;
    let (_, challenge) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&quinn.access_token),
            json!({}),
        )
        .await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&quinn.access_token),
            json!({ "auth": password_auth("quinn", "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A guesser learns nothing: the answer of any wrong password.
    let (status, body) = server.login("quinn", "guess").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    let (_, unknown) = server.login("nobody", "guess").await;
    assert_eq!(body["error"], unknown["error"]);
    // The owner is told why.
    let (status, body) = server.login("quinn", "pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED", "{body}");
}

#[tokio::test]
async fn one_single_use_token_registers_one_account_under_concurrency() {
    let server = TestServer::start_with(|c| {
        c.registration.open = false;
        c.registration.tokens = true;
    })
    .await;
    lattice::storage::registration_tokens::insert(&server.state.db, "once", Some(1), None, 0)
        .await
        .unwrap();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "u0", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();

    // Six registrations race on the one session and its one token.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..6 {
        let url = format!("{}/_matrix/client/v3/register", server.base);
        let body = json!({
            "username": format!("u{i}"),
            "password": "pw",
            "auth": { "type": "m.login.registration_token", "token": "once", "session": session },
        });
        racers.spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        });
    }
    let mut ok = 0;
    while let Some(result) = racers.join_next().await {
        let (status, body) = result.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert!(status.is_client_error(), "{status} {body}");
            assert!(body["errcode"].is_string(), "{body}");
        }
    }
    assert_eq!(ok, 1);
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&server.state.db)
        .await
        .unwrap();
    assert_eq!(users, 1);
    let token = lattice::storage::registration_tokens::get(&server.state.db, "once")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((token.pending, token.completed), (0, 1));
}

#[tokio::test]
async fn shared_secret_nonces_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.registration.shared_secret = Some("s3cret".into());
        c.rate_limits.enabled = true;
        c.rate_limits.login = Bucket {
            per_second: 0.001,
            burst: 5,
        };
    })
    .await;
    for _ in 0..5 {
        let (status, body) = server.get("/_synapse/admin/v1/register", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["nonce"].is_string());
    }
    let (status, body) = server.get("/_synapse/admin/v1/register", None).await;
    assert_limited(status, &body);
}

/// A v10 PDU whose keys are all within limits, with `key` set to `value`.
fn pdu_with(key: &str, value: String) -> Value {
    let mut pdu = json!({
        "type": "m.room.message",
        "room_id": "!room:remote.example",
        "sender": "@mallory:remote.example",
        "content": { "body": "hi" },
        "depth": 5,
        "prev_events": ["$prev"],
        "auth_events": ["$auth"],
        "origin_server_ts": 1_700_000_000_000_u64,
        "hashes": { "sha256": "aGFzaA" },
        "signatures": { "remote.example": { "ed25519:k": "c2ln" } },
    });
    pdu[key] = value.into();
    pdu
}

#[test]
fn check_format_enforces_the_per_key_size_limits() {
    use lattice::service::federation::ingest::check_format;
    let rules = ruma::RoomVersionId::V10.rules().unwrap();
    let ok = check_format(&rules, &pdu_with("state_key", "k".repeat(255)));
    assert!(ok.is_ok(), "{:?}", ok.err());
    let long = |n: usize| "x".repeat(n);
    for (key, value) in [
        ("type", long(256)),
        ("state_key", long(256)),
        ("sender", format!("@{}:remote.example", long(250))),
        ("room_id", format!("!{}:remote.example", long(250))),
        ("event_id", format!("${}", long(255))),
    ] {
        let err = check_format(&rules, &pdu_with(key, value))
            .err()
            .unwrap_or_else(|| panic!("a PDU with a 256-byte {key} passed"));
        assert!(err.contains(key) && err.contains("255"), "{key}: {err}");
    }
    // Exactly at the limit is fine.
    assert!(check_format(&rules, &pdu_with("type", long(255))).is_ok());
}

#[tokio::test]
async fn local_events_keep_the_per_key_size_limits() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let token = Some(alice.access_token.as_str());
    let room = server.create_room(&alice, json!({})).await;

    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/send/{}/t1",
                "t".repeat(256)
            ),
            token,
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE", "{body}");
    assert!(body["error"].as_str().unwrap().contains("type"), "{body}");

    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.custom/{}",
                "k".repeat(256)
            ),
            token,
            json!({ "a": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("state_key"),
        "{body}"
    );

    // createRoom's initial state is held to the same limits.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/createRoom",
            token,
            json!({ "initial_state": [{ "type": "t".repeat(256), "state_key": "", "content": {} }] }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // 255 bytes is within the limit.
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/send/{}/t2",
                "t".repeat(255)
            ),
            token,
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.custom/{}",
                "k".repeat(255)
            ),
            token,
            json!({ "a": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn thumbnails_beyond_the_decode_budget_are_refused_and_the_original_served() {
    use std::io::Cursor;
    let server = TestServer::start_with(|c| c.media.max_image_pixels = 1_000_000).await;
    let alice = server.register("alice", "pw").await;
    let upload = |bytes: Vec<u8>| {
        let server = &server;
        let token = alice.access_token.clone();
        async move {
            let resp = server
                .client
                .post(format!("{}/_matrix/media/v3/upload", server.base))
                .bearer_auth(token)
                .header("content-type", "image/png")
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.unwrap();
            body["content_uri"].as_str().unwrap()["mxc://".len()..].to_owned()
        }
    };
    let get = |path: String| {
        let server = &server;
        let token = alice.access_token.clone();
        async move {
            server
                .client
                .get(format!("{}/_matrix/client/v1/media/{path}", server.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let encode = |img: image::DynamicImage| {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };

    // Within the pixel limit, but 16-bit RGBA needs 8 bytes a pixel to decode.
    let deep = encode(image::DynamicImage::ImageRgba16(
        image::ImageBuffer::from_pixel(1000, 1000, image::Rgba([9, 9, 9, 9])),
    ));
    // Few pixels, one very long side.
    let long = encode(image::DynamicImage::ImageRgb8(image::RgbImage::new(
        20_000, 1,
    )));
    for bytes in [deep, long] {
        let id = upload(bytes.clone()).await;
        let resp = get(format!("thumbnail/{id}?width=96&height=96&method=crop")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
        let resp = get(format!("download/{id}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap(), bytes);
    }
    // An ordinary picture still gets its thumbnail.
    let id = upload(encode(image::DynamicImage::ImageRgb8(
        image::RgbImage::new(900, 900),
    )))
    .await;
    let resp = get(format!("thumbnail/{id}?width=96&height=96&method=crop")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn guests_may_do_only_what_the_guest_access_module_lists() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guest = Login::from_json(&body);
    let g = Some(guest.access_token.as_str());
    let closed = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let open = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [
                { "type": "m.room.guest_access", "state_key": "", "content": { "guest_access": "can_join" } }
            ] }),
        )
        .await;
    let media = {
        let resp = server
            .client
            .post(format!("{}/_matrix/media/v3/upload", server.base))
            .bearer_auth(&alice.access_token)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        body["content_uri"].as_str().unwrap()["mxc://".len()..].to_owned()
    };

    // Refused: a public room without guest_access can_join, and everything the
    // module does not list.
    let forbidden = |status: StatusCode, body: &Value, what: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(
            body["errcode"], "M_GUEST_ACCESS_FORBIDDEN",
            "{what}: {body}"
        );
    };
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{closed}/join"),
            g,
            json!({}),
        )
        .await;
    forbidden(status, &body, "join without can_join");
    let (status, body) = server
        .post(&format!("/_matrix/client/v3/join/{closed}"), g, json!({}))
        .await;
    forbidden(status, &body, "join by alias route without can_join");
    let resp = server
        .client
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&guest.access_token)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    forbidden(status, &resp.json().await.unwrap(), "media upload");
    let pusher = json!({ "kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "a",
                         "device_display_name": "d", "lang": "en", "data": { "url": "https://push.example/_matrix/push/v1/notify" } });
    let (status, body) = server
        .post("/_matrix/client/v3/pushers/set", g, pusher)
        .await;
    forbidden(status, &body, "set pusher");
    let (status, body) = server
        .post("/_matrix/client/v3/createRoom", g, json!({}))
        .await;
    forbidden(status, &body, "createRoom");
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/x.y", guest.user_id),
            g,
            json!({}),
        )
        .await;
    forbidden(status, &body, "account data");
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", guest.user_id),
            g,
            json!({ "avatar_url": "mxc://x/y" }),
        )
        .await;
    forbidden(status, &body, "avatar");
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{open}/invite"),
            g,
            json!({ "user_id": alice.user_id }),
        )
        .await;
    forbidden(status, &body, "invite");

    // Allowed: what the module lists.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{open}/join"),
            g,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "join with can_join: {body}");
    server
        .send_message(&guest, &open, json!({ "msgtype": "m.text", "body": "hi" }))
        .await;
    for path in [
        "/_matrix/client/v3/sync".to_owned(),
        "/_matrix/client/v3/account/whoami".to_owned(),
        "/_matrix/client/v3/devices".to_owned(),
        format!("/_matrix/client/v3/rooms/{open}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{open}/state"),
        format!("/_matrix/client/v3/rooms/{open}/members"),
        format!("/_matrix/client/v1/media/download/{media}"),
    ] {
        let (status, body) = server.get(&path, g).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/query",
            g,
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/query: {body}");
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", guest.user_id),
            g,
            json!({ "displayname": "Visitor" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "displayname: {body}");
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{open}/leave"),
            g,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "leave: {body}");
}

#[test]
fn generated_private_keys_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A key file left world-readable by an earlier run is tightened too.
    std::fs::write(dir.path().join("srv.key"), "old").unwrap();
    std::fs::set_permissions(
        dir.path().join("srv.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let certs = lattice::federation::tls::generate_dev_certificates(
        dir.path(),
        "srv",
        &["localhost".into()],
    )
    .unwrap();
    for key in [certs.key, dir.path().join("ca.key")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", key.display());
    }
}

#[test]
fn one_receipt_edu_costs_bounded_work() {
    use lattice::service::federation::edu::{MAX_RECEIPTS_PER_EDU, receipt_entries};
    let origin = ruma::ServerName::parse("evil.example").unwrap();
    // 50 rooms × 1000 users of the origin: 50 000 entries in one EDU.
    let mut content = serde_json::Map::new();
    for r in 0..50 {
        let mut users = serde_json::Map::new();
        for u in 0..1000 {
            users.insert(
                format!("@u{u}:evil.example"),
                json!({ "event_ids": ["$e"], "data": { "ts": 1 } }),
            );
        }
        content.insert(format!("!r{r}:x"), json!({ "m.read": users }));
    }
    let content = Value::Object(content);
    assert_eq!(
        receipt_entries(&origin, &content).len(),
        MAX_RECEIPTS_PER_EDU
    );

    // Other servers' users are skipped but still count as looked at.
    let mut users = serde_json::Map::new();
    for u in 0..5000 {
        users.insert(
            format!("@u{u}:victim.example"),
            json!({ "event_ids": ["$e"] }),
        );
    }
    users.insert("@me:evil.example".into(), json!({ "event_ids": ["$e"] }));
    let content = json!({ "!r:x": { "m.read": users } });
    assert!(receipt_entries(&origin, &content).len() <= 1);
    // A small, honest EDU passes whole.
    let content = json!({ "!r:x": { "m.read": {
        "@a:evil.example": { "event_ids": ["$1"], "data": { "ts": 5, "thread_id": "main" } },
        "@b:evil.example": { "event_ids": ["$2"] },
    } } });
    let entries = receipt_entries(&origin, &content);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].event_id, "$1");
    assert_eq!(entries[0].thread_id, "main");
    assert_eq!(entries[0].ts, Some(5));
}

#[tokio::test]
async fn push_rules_per_user_are_bounded() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let mut refused = None;
    for i in 0..lattice::service::push::MAX_RULES {
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/pushrules/global/content/r{i}"),
                t,
                json!({ "pattern": format!("word{i}"), "actions": ["notify"] }),
            )
            .await;
        if status != StatusCode::OK {
            refused = Some((i, status, body));
            break;
        }
    }
    let (i, status, body) = refused.expect("no push rule was ever refused");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    assert!(i > 400, "refused after only {i} rules");
    // One huge rule is refused too.
    let (status, body) = server
        .put(
            "/_matrix/client/v3/pushrules/global/override/huge",
            t,
            json!({ "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "x".repeat(200_000) }],
                    "actions": ["notify"] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
