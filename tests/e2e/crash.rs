//! Crash safety: the real binary killed with SIGKILL in the middle of concurrent
//! sends, then started again on the same database.

use std::{collections::HashMap, path::Path, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ClientApi, Login, enc, fresh_database_url, listening_addr};

pub struct Running {
    pub child: tokio::process::Child,
    pub api: ClientApi,
    _log: tokio::task::JoinHandle<()>,
}

/// Starts the real binary with `config`; killed when dropped.
pub async fn run(config: &Path) -> Running {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--config")
        .arg(config)
        .env_remove("LATTICE__DATABASE__URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addr, log) = listening_addr(child.stderr.take().unwrap()).await;
    Running {
        child,
        api: ClientApi::new(format!("http://{addr}")),
        _log: log,
    }
}

/// Every send answered 200 before a SIGKILL is in the room after the restart,
/// in the order each sender sent, exactly once; replaying a transaction ID
/// returns the original event; a sync token from before the crash still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_acknowledged_before_a_kill_survive_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lattice.toml");
    std::fs::write(
        &config,
        format!(
            r#"server_name = "crash.test"
data_dir = "{data}"
log = "warn,lattice::server=info"
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
            data = dir.path().join("data").display(),
            db = fresh_database_url().await,
        ),
    )
    .unwrap();

    let mut server = run(&config).await;
    let mut senders = Vec::new();
    for i in 0..4 {
        senders.push(
            server
                .api
                .register(&format!("sender{i}"), "sender-password")
                .await,
        );
    }
    let room = server
        .api
        .create_room(&senders[0], json!({"preset": "public_chat"}))
        .await;
    for s in &senders[1..] {
        server.api.join(s, &room).await;
    }
    let before = {
        let (status, body) = server
            .api
            .get(
                "/_matrix/client/v3/sync?timeout=0",
                Some(&senders[0].access_token),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        body["next_batch"].as_str().unwrap().to_owned()
    };

    // Four clients send as fast as they can; the server is killed mid-way.
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, String)>>> = Default::default();
    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().cloned().enumerate() {
        let (base, room, acked) = (server.api.base.clone(), room.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}-{n}",
                    enc(&room)
                );
                let sent = http
                    .put(url)
                    .bearer_auth(&sender.access_token)
                    .json(&json!({"msgtype": "m.text", "body": format!("{i}:{n}")}))
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                if resp.status() != StatusCode::OK {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push((i, n, body["event_id"].as_str().unwrap().to_owned()));
            }
        }));
    }
    // Killed once the load is well under way: at least ten sends answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than ten sends answered in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 10,
        "too few sends before the kill: {}",
        acked.len()
    );

    let server = run(&config).await;
    let reader = {
        let (status, body) = server.api.login("sender0", "sender-password").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Login::from_json(&body)
    };
    // The whole room, oldest first.
    let mut bodies: Vec<(String, String)> = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500",
            enc(&room)
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (status, page) = server.api.get(&path, Some(&reader.access_token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let chunk = page["chunk"].as_array().unwrap();
        for e in chunk {
            if e["type"] == "m.room.message" {
                bodies.push((
                    e["content"]["body"].as_str().unwrap().to_owned(),
                    e["event_id"].as_str().unwrap().to_owned(),
                ));
            }
        }
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    bodies.reverse();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (body, _) in &bodies {
        *seen.entry(body.as_str()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "duplicates after the restart"
    );
    let ids: HashMap<&str, &str> = bodies
        .iter()
        .map(|(b, id)| (b.as_str(), id.as_str()))
        .collect();
    for (i, n, event_id) in &acked {
        assert_eq!(
            ids.get(format!("{i}:{n}").as_str()),
            Some(&event_id.as_str()),
            "acknowledged send {i}:{n} missing after the restart"
        );
    }
    // Each sender's messages in the order sent.
    for i in 0..4 {
        let order: Vec<usize> = bodies
            .iter()
            .filter_map(|(b, _)| {
                b.strip_prefix(&format!("{i}:"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender {i} out of order: {order:?}"
        );
    }
    // Replaying an acknowledged transaction returns the original event.
    let (i, n, event_id) = acked.last().unwrap();
    // Transaction IDs are per device: replay on the original device.
    let original = &senders[*i];
    let (status, body) = server
        .api
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}-{n}",
                enc(&room)
            ),
            Some(&original.access_token),
            json!({"msgtype": "m.text", "body": format!("{i}:{n}")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], event_id.as_str());
    // A sync token from before the crash still works.
    let (status, body) = server
        .api
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={before}"),
            Some(&senders[0].access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
}

/// PostgreSQL stopped under a running server: requests get Matrix errors
/// (not hangs) while it is away, and the server recovers by itself, without a
/// restart, once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_survived_without_restarting_lattice() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::Builder::new()
        .prefix("lattice-pg-restart-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg =
        lattice::storage::embedded_pg::EmbeddedPostgres::start_with(root.path(), "postgres", false)
            .await
            .expect("a private cluster for this test");
    let data = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config();
    config.data_dir = data.path().to_owned();
    config.database.url = Some(crate::harness::to_url(&pg.connect_options()));
    config.database.max_connections = 4;
    let server = crate::harness::TestServer::start_config(config).await;
    let alice = server.register("alice", "alice-password").await;
    let room = server.create_room(&alice, json!({})).await;
    server
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "before"}),
        )
        .await;

    pg.stop().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let resp = http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/down",
            server.base,
            enc(&room)
        ))
        .bearer_auth(&alice.access_token)
        .json(&json!({"msgtype": "m.text", "body": "while down"}))
        .send()
        .await
        .expect("an answer, not a hang");
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let body: Value = resp.json().await.unwrap();
    assert!(body["errcode"].is_string(), "a Matrix error: {body}");

    let pg =
        lattice::storage::embedded_pg::EmbeddedPostgres::start_with(root.path(), "postgres", false)
            .await
            .expect("the cluster starts again");
    let mut recovered = false;
    for _ in 0..60 {
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/after",
                    enc(&room)
                ),
                Some(&alice.access_token),
                json!({"msgtype": "m.text", "body": "after"}),
            )
            .await;
        if status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        recovered,
        "the server did not recover after the database came back"
    );
    let (status, body) = server
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
    pg.stop().await;
}
