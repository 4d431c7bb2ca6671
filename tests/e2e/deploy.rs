//! Deployment files, checked with what runs without a Docker engine: the proxy
//! configs by the real nginx, HAProxy and Caddy, the compose file parsed, and
//! the container entrypoint run as a plain process against the test PostgreSQL.

use std::{path::Path, time::Duration};

use crate::harness::{free_port, fresh_database_url};

#[test]
fn proxy_configs_and_compose_file_check_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/check-deploy"))
        .output()
        .expect("running scripts/check-deploy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/check-deploy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for checked in ["nginx:", "haproxy:", "caddy:", "compose:"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(checked) && (l.contains(" ok") || l.contains("parses"))),
            "{checked} not checked:\n{stdout}"
        );
    }
}

/// `docker/entrypoint.sh` (the image's entrypoint) reads the mounted config
/// file, serves `/health`, and stops cleanly on SIGTERM (what `docker stop`
/// sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_entrypoint_serves_and_stops_outside_a_container() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"server_name = "deploy.test"
data_dir = "{data}"
log = "warn,lattice::server=info"
[[listeners]]
bind = "127.0.0.1:0"
resources = ["client", "federation"]
[database]
url = "{db}"
"#,
        data = dir.path().join("data").display(),
        db = fresh_database_url().await,
    );
    let config_path = dir.path().join("lattice.toml");
    std::fs::write(&config_path, config).unwrap();
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_lattice")).parent().unwrap();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = tokio::process::Command::new(root.join("docker/entrypoint.sh"))
        .arg("serve")
        .env("PATH", path)
        .env("LATTICE_CONFIG", &config_path)
        .env_remove("LATTICE__DATABASE__URL")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addr, _log) = crate::harness::listening_addr(child.stderr.take().unwrap()).await;
    let url = format!("http://{addr}/health");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match reqwest::get(&url).await {
            Ok(resp) if resp.status().is_success() => {
                assert_eq!(resp.text().await.unwrap(), "OK");
                break;
            }
            _ if std::time::Instant::now() < deadline => {
                assert!(child.try_wait().unwrap().is_none(), "lattice exited early");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("server did not come up: {other:?}"),
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("lattice stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Behind a trusted proxy the client's address comes from `X-Forwarded-For`
/// (a device's `last_seen_ip` shows it); from anyone else the header is ignored.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    for (trusted, expected) in [
        (vec![], "127.0.0.1"),
        (vec!["127.0.0.1/32".to_owned()], "203.0.113.7"),
    ] {
        let server = crate::harness::TestServer::start_with(|c| c.trusted_proxies = trusted).await;
        let alice = server.register("alice", "alice-password").await;
        let resp = server
            .client
            .get(format!("{}/_matrix/client/v3/devices", server.base))
            .bearer_auth(&alice.access_token)
            .header("X-Forwarded-For", "198.51.100.9, 203.0.113.7")
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        let device = body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == alice.device_id.as_str())
            .unwrap()
            .clone();
        assert_eq!(device["last_seen_ip"], expected, "{device}");
    }
}

/// `/metrics` on a listener of its own: request counts and latencies by route,
/// events persisted, sync waiters, pool connections; not on the client listener.
#[tokio::test]
async fn metrics_are_served_on_their_own_listener() {
    let metrics_port = free_port();
    let server = crate::harness::TestServer::start_with(|c| {
        c.listeners.push(lattice::config::Listener {
            bind: format!("127.0.0.1:{metrics_port}").parse().unwrap(),
            resources: vec![lattice::config::Resource::Metrics],
            tls_certificate: None,
            tls_private_key: None,
        });
    })
    .await;
    let alice = server.register("alice", "alice-password").await;
    let room = server.create_room(&alice, serde_json::json!({})).await;
    server
        .send_message(
            &alice,
            &room,
            serde_json::json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    let (status, _) = server.get("/metrics", None).await;
    assert_eq!(
        status,
        reqwest::StatusCode::NOT_FOUND,
        "not on the client listener"
    );

    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "lattice_http_requests_total{method=\"POST\",route=\"/_matrix/client/v3/createRoom\",status=\"200\"} 1",
        "lattice_http_request_duration_seconds_count{method=\"PUT\",route=\"/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}\"} 1",
        "lattice_sync_waiters ",
        "lattice_db_pool_connections{state=\"idle\"}",
        "# TYPE lattice_federation_queue_depth gauge",
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
    let persisted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("lattice_events_persisted_total "))
        .unwrap()
        .parse()
        .unwrap();
    // The room's creation events and the message.
    assert!(persisted >= 6, "{persisted}");
}
