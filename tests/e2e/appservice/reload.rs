//! Registrations reloaded on SIGHUP, through the real binary: a registration
//! added to the configuration starts working (tokens and transactions), a bad
//! file or a duplicate token keeps the registrations in use and logs an error
//! naming the file and the field, and a registration removed stops working.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use reqwest::StatusCode;
use serde_json::json;

use super::{
    V3,
    ephemeral::{as_token, listen, registration},
};
use crate::harness::{ClientApi, SERVER_NAME, enc, eventually};

fn write_config(config: &Path, dir: &Path, db: &str, registrations: &[&Path]) {
    let list: Vec<String> = registrations
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    std::fs::write(
        config,
        format!(
            r#"server_name = "{SERVER_NAME}"
data_dir = "{data}"
log = "warn,lattice::server=info"
appservices = [{list}]
[[listeners]]
bind = "127.0.0.1:0"
[database]
url = "{db}"
[registration]
open = true
[auth]
argon2_memory_kib = 64
argon2_iterations = 1
[rate_limits]
enabled = false
"#,
            data = dir.join("data").display(),
            list = list.join(", "),
        ),
    )
    .unwrap();
}

/// The `/register` an appservice makes for a user of its namespace.
async fn register_as(
    api: &ClientApi,
    id: &str,
    localpart: &str,
) -> (StatusCode, serde_json::Value) {
    api.post(
        &format!("{V3}/register"),
        Some(&as_token(id)),
        json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true }),
    )
    .await
}

fn hangup(child: &tokio::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_registrations_and_a_bad_file_keeps_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_one_rec, one_addr) = listen("one").await;
    let (two_rec, two_addr) = listen("two").await;
    let one = registration(dir.path(), "one", one_addr, "", SERVER_NAME);
    let config = dir.path().join("lattice.toml");
    let db = crate::harness::fresh_database_url().await;
    write_config(&config, dir.path(), &db, &[&one]);

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--config")
        .arg(&config)
        .env_remove("LATTICE__DATABASE__URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log, kept for the error lines.
    let (addr, lines) = listening_addr_keeping(child.stderr.take().unwrap()).await;
    let api = Arc::new(ClientApi::new(format!("http://{addr}")));

    let (status, body) = register_as(&api, "one", "one_a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = register_as(&api, "two", "two_a").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")),
        "{body}"
    );

    // Added to the configuration, then SIGHUP: the new appservice's token
    // works and its transactions flow.
    let two = registration(dir.path(), "two", two_addr, "", SERVER_NAME);
    write_config(&config, dir.path(), &db, &[&one, &two]);
    hangup(&child);
    eventually("the second registration in use", || {
        let api = api.clone();
        async move { register_as(&api, "two", "two_a").await.0 == StatusCode::OK }
    })
    .await;
    let alice = api.register("alice", "pw").await;
    let room = api.create_room(&alice, json!({})).await;
    let (status, body) = api
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": format!("@two_a:{SERVER_NAME}") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the invite at the new appservice", || {
        let rec = two_rec.clone();
        let room = room.clone();
        async move {
            rec.all("events")
                .iter()
                .any(|e| e["room_id"] == room.as_str())
        }
    })
    .await;

    // A bad regex: the error names the file and the field; both
    // registrations stay in use.
    let good_two = std::fs::read_to_string(&two).unwrap();
    std::fs::write(&two, good_two.replace("\"@two_.*", "\"@two_(.*")).unwrap();
    hangup(&child);
    eventually("the error naming file and field", || {
        let lines = lines.clone();
        let two = two.display().to_string();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&two) && l.contains("namespaces.users[0].regex"))
        }
    })
    .await;
    let (status, body) = register_as(&api, "two", "two_b").await;
    assert_eq!(status, StatusCode::OK, "the old set stays: {body}");
    let (status, body) = register_as(&api, "one", "one_b").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A third file reusing the first one's as_token: refused, named.
    std::fs::write(&two, &good_two).unwrap();
    let three = dir.path().join("three.yaml");
    std::fs::write(
        &three,
        std::fs::read_to_string(&one)
            .unwrap()
            .replace("id: one", "id: three")
            .replace("hs-one-token", "hs-three-token")
            .replace("sender_localpart: onebot", "sender_localpart: threebot")
            .replace("@one_", "@three_"),
    )
    .unwrap();
    write_config(&config, dir.path(), &db, &[&one, &two, &three]);
    hangup(&child);
    eventually("the duplicate token refused", || {
        let lines = lines.clone();
        let three = three.display().to_string();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&three) && l.contains("`as_token`"))
        }
    })
    .await;
    // Nothing of the third is in use: its exclusive namespace is nobody's,
    // so anyone may register there.
    let (status, body) = api
        .get(&format!("{V3}/register/available?username=three_x"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Removed from the configuration: its token stops working.
    write_config(&config, dir.path(), &db, &[&two]);
    hangup(&child);
    eventually("the first registration gone", || {
        let api = api.clone();
        async move { register_as(&api, "one", "one_c").await.0 == StatusCode::UNAUTHORIZED }
    })
    .await;
    let (status, body) = register_as(&api, "two", "two_c").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// The address the binary reports it listens on (as `listening_addr`
/// reads it), and every log line after it, kept.
async fn listening_addr_keeping(
    stderr: tokio::process::ChildStderr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(90), lines.next_line())
            .await
            .expect("lattice did not report its address in time")
            .expect("reading lattice's log")
            .expect("lattice exited before listening");
        if line.contains("listening")
            && let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
        {
            break addr;
        }
    };
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = kept.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    (addr, kept)
}

/// An appservice endpoint whose transactions are refused while `down`,
/// recording the accepted ones (each ID once) and counting every attempt.
struct Endpoint {
    hs_token: String,
    down: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicUsize,
    /// Requests that carried the token as `?access_token=` too (only with
    /// `appservice_legacy_authorization`, off here).
    legacy: std::sync::atomic::AtomicUsize,
    accepted: Mutex<Vec<(String, Vec<serde_json::Value>)>>,
}

impl Endpoint {
    /// The bodies of the `m.room.message` events it accepted, in order.
    fn bodies(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, events)| events.clone())
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn endpoint(hs_token: &str) -> (Arc<Endpoint>, std::net::SocketAddr) {
    use std::sync::atomic::Ordering;
    async fn put(
        axum::extract::State(ep): axum::extract::State<Arc<Endpoint>>,
        axum::extract::Path(txn): axum::extract::Path<String>,
        axum::extract::RawQuery(query): axum::extract::RawQuery,
        headers: axum::http::HeaderMap,
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::http::StatusCode {
        ep.attempts.fetch_add(1, Ordering::SeqCst);
        if query.is_some_and(|q| q.contains("access_token")) {
            ep.legacy.fetch_add(1, Ordering::SeqCst);
        }
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {}", ep.hs_token) {
            return axum::http::StatusCode::FORBIDDEN;
        }
        if ep.down.load(Ordering::SeqCst) {
            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
        }
        let mut accepted = ep.accepted.lock().unwrap();
        if !accepted.iter().any(|(id, _)| *id == txn) {
            let events = body["events"].as_array().cloned().unwrap_or_default();
            accepted.push((txn, events));
        }
        axum::http::StatusCode::OK
    }
    let ep = Arc::new(Endpoint {
        hs_token: hs_token.to_owned(),
        down: Default::default(),
        attempts: Default::default(),
        legacy: Default::default(),
        accepted: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(put),
        )
        .with_state(ep.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (ep, addr)
}

/// Rows waiting for appservice `id`.
async fn depth(server: &crate::harness::TestServer, id: &str) -> i64 {
    lattice::storage::appservice::depth(&server.state.db)
        .await
        .unwrap()
        .into_iter()
        .find(|(a, _)| a == id)
        .map_or(0, |(_, n)| n)
}

/// What happens to queued rows when the registrations change (the reload
/// SIGHUP triggers, called directly): the rows of an appservice removed from
/// the configuration are kept (listed by the admin API as unregistered) and
/// nothing new is queued for it; registered again under the same `id`, with
/// another URL and `hs_token`, it gets them there, with that token, in order
/// and once, and then what came after it was back — not what happened while
/// it was gone. A namespace narrowed on reload decides what is queued from
/// then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_rows_follow_the_registrations_in_use_after_a_reload() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (one_old, one_old_addr) = endpoint("hs-one-token").await;
    one_old.down.store(true, Ordering::SeqCst);
    let (two_ep, two_addr) = endpoint("hs-two-token").await;
    let one = registration(dir.path(), "one", one_old_addr, "", SERVER_NAME);
    let two = registration(dir.path(), "two", two_addr, "", SERVER_NAME);
    let server =
        crate::harness::TestServer::start_with(|c| c.appservices = vec![one.clone(), two.clone()])
            .await;
    let alice = server.register("alice", "pw").await;
    lattice::storage::users::set_admin(&server.state.db, &alice.user_id, true)
        .await
        .unwrap();
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    for (id, ghost) in [("one", "one_a"), ("two", "two_a")] {
        let (status, body) = register_as(&server, id, ghost).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = server
            .post(
                &format!(
                    "{V3}/join/{}?user_id={}",
                    enc(&room),
                    enc(&format!("@{ghost}:{SERVER_NAME}"))
                ),
                Some(&as_token(id)),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let say = |body: &'static str| {
        let (server, alice, room) = (&server, &alice, &room);
        async move {
            server
                .send_message(alice, room, json!({ "msgtype": "m.text", "body": body }))
                .await;
        }
    };
    for body in ["m1", "m2", "m3"] {
        say(body).await;
    }
    let wait_for = |ep: Arc<Endpoint>, body: &'static str| async move {
        eventually(&format!("{body} delivered"), || {
            let ep = ep.clone();
            async move { ep.bodies().iter().any(|b| b == body) }
        })
        .await;
    };
    wait_for(two_ep.clone(), "m3").await;
    eventually("a refused attempt at the first appservice", || {
        let ep = one_old.clone();
        async move { ep.attempts.load(Ordering::SeqCst) > 0 }
    })
    .await;

    // Removed: its rows stay, listed as unregistered; nothing more is queued.
    lattice::service::appservice::reload(&server.state, std::slice::from_ref(&two))
        .await
        .unwrap();
    let kept = depth(&server, "one").await;
    assert!(kept >= 3, "rows kept for the removed appservice: {kept}");
    say("m4 while one is gone").await;
    assert_eq!(depth(&server, "one").await, kept);
    let (status, body) = server
        .get("/_lattice/admin/v1/appservices", Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["unregistered_queues"],
        json!([{ "id": "one", "events": kept }]),
        "{body}"
    );
    assert_eq!(body["total"], 1, "{body}");

    // Back under the same ID, at another URL with another hs_token.
    let (one_new, one_new_addr) = endpoint("hs-one-token-v2").await;
    let text = std::fs::read_to_string(&one)
        .unwrap()
        .replace(&one_old_addr.to_string(), &one_new_addr.to_string())
        .replace("hs-one-token", "hs-one-token-v2");
    std::fs::write(&one, text).unwrap();
    lattice::service::appservice::reload(&server.state, &[one.clone(), two.clone()])
        .await
        .unwrap();
    wait_for(one_new.clone(), "m3").await;
    say("m5").await;
    wait_for(one_new.clone(), "m5").await;
    assert_eq!(one_new.bodies(), ["m1", "m2", "m3", "m5"]);
    assert!(one_old.bodies().is_empty());
    let (_, body) = server
        .get("/_lattice/admin/v1/appservices", Some(&alice.access_token))
        .await;
    assert_eq!(body["unregistered_queues"], json!([]), "{body}");

    // The second appservice's namespace narrowed to `@two_b…`: its ghost
    // `two_a` no longer makes the room interesting.
    let narrowed = std::fs::read_to_string(&two)
        .unwrap()
        .replace("\"@two_.*", "\"@two_b.*");
    std::fs::write(&two, narrowed).unwrap();
    lattice::service::appservice::reload(&server.state, &[one.clone(), two.clone()])
        .await
        .unwrap();
    say("m6 after the narrowing").await;
    let (status, body) = register_as(&server, "two", "two_b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = server
        .post(
            &format!(
                "{V3}/join/{}?user_id={}",
                enc(&other),
                enc(&format!("@two_b:{SERVER_NAME}"))
            ),
            Some(&as_token("two")),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server
        .send_message(&alice, &other, json!({ "msgtype": "m.text", "body": "m7" }))
        .await;
    // Delivered in order: m7 arriving means m6 would have come before it.
    wait_for(two_ep.clone(), "m7").await;
    assert_eq!(
        two_ep.bodies(),
        ["m1", "m2", "m3", "m4 while one is gone", "m5", "m7"]
    );
    // The hs_token went in the Authorization header only.
    for ep in [&one_old, &one_new, &two_ep] {
        assert_eq!(ep.legacy.load(Ordering::SeqCst), 0);
    }
}
