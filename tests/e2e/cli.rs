//! The `lattice` binary's commands, run as a user would.

use std::process::Command;

use reqwest::StatusCode;

use crate::harness::{TestServer, fresh_database_url, test_config, user_id};

fn lattice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lattice"));
    cmd.env_remove("LATTICE_CONFIG").env("LATTICE__LOG", "warn");
    cmd
}

#[tokio::test]
async fn admin_register_user_then_login_over_http() {
    let url = fresh_database_url().await;
    let out = lattice()
        .args([
            "admin",
            "register-user",
            "boss",
            "--password",
            "pw",
            "--admin",
        ])
        .env("LATTICE__DATABASE__URL", &url)
        .env("LATTICE__SERVER_NAME", "test.local")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("@boss:test.local (admin)"));

    // Registering the same name again fails with a message.
    let out = lattice()
        .args(["admin", "register-user", "boss", "--password", "pw"])
        .env("LATTICE__DATABASE__URL", &url)
        .env("LATTICE__SERVER_NAME", "test.local")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already taken"));

    let mut config = test_config();
    config.database.url = Some(url);
    let server = TestServer::start_config(config).await;
    let (status, body) = server.login("boss", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("boss"));
    let user = lattice::storage::users::get(&server.state.db, &user_id("boss"))
        .await
        .unwrap()
        .unwrap();
    assert!(user.is_admin);
}

#[tokio::test]
async fn registration_token_commands() {
    let url = fresh_database_url().await;
    let run = |args: &[&str]| {
        lattice()
            .args(args)
            .env("LATTICE__DATABASE__URL", &url)
            .output()
            .unwrap()
    };
    let out = run(&["admin", "registration-token", "create", "--uses", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 16);
    let out = run(&["admin", "registration-token", "list"]);
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains(&token) && listing.contains("uses_allowed=2"),
        "{listing}"
    );
    let out = run(&["admin", "registration-token", "delete", &token]);
    assert!(out.status.success());
    let out = run(&["admin", "registration-token", "list"]);
    assert!(!String::from_utf8(out.stdout).unwrap().contains(&token));
}

#[test]
fn generate_config_output_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lattice.toml");
    let out = lattice()
        .args(["generate-config", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = lattice::config::Config::load(Some(&path)).unwrap();
    assert_eq!(config.server_name, "example.org");
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[rate_limits]\nenabled = \"yes please\"\n").unwrap();
    let out = lattice()
        .arg("--config")
        .arg(&path)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rate_limits.enabled"), "{stderr}");

    // Environment overrides are checked the same way.
    let out = lattice()
        .arg("migrate")
        .env("LATTICE__DATABASE__MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("database.max_connections"), "{stderr}");
}

/// The README's run command in miniature: the binary with no database configured
/// starts its own cluster, answers `/versions`, and on SIGTERM stops the cluster
/// and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_with_embedded_database_and_stops_on_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("lattice-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .env_remove("LATTICE_CONFIG")
        .env_remove("LATTICE__DATABASE__URL")
        .env_remove("RUST_LOG")
        .env("LATTICE__DATA_DIR", dir.path().join("data"))
        .env("LATTICE__LISTENERS", "[{bind=\"127.0.0.1:0\"}]")
        .env("LATTICE__LOG", "warn,lattice::server=info")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addr, _log) = crate::harness::listening_addr(child.stderr.take().unwrap()).await;

    let url = format!("http://{addr}/_matrix/client/versions");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body: serde_json::Value = loop {
        match reqwest::get(&url).await {
            Ok(resp) if resp.status().is_success() => break resp.json().await.unwrap(),
            _ if std::time::Instant::now() < deadline => {
                assert!(child.try_wait().unwrap().is_none(), "lattice exited early");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("server did not come up: {other:?}"),
        }
    };
    assert!(
        body["versions"].as_array().is_some_and(|v| !v.is_empty()),
        "{body}"
    );
    assert!(dir.path().join("data/postgres/postmaster.pid").exists());

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("lattice stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("data/postgres/postmaster.pid").exists());
}

/// `lattice-load` (the side-by-side benchmark's load generator) runs every
/// workload against a server over the Client-Server API and reports each
/// figure; a small run, so a broken workload shows here and not first in a
/// benchmark run.
#[tokio::test]
async fn load_generator_runs_every_workload() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("load.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice-load"))
        .args([
            "--target",
            &format!("lattice={}@{}", server.base, std::process::id()),
        ])
        .args(["--clients", "3", "--messages", "3", "--sequential", "5"])
        .args(["--wakeups", "3", "--sync-rooms", "4", "--sync-history", "1"])
        .args(["--events", "30", "--create-rooms", "3", "--members", "5"])
        .args(["--repeat", "2", "--json"])
        .arg(&report)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let workloads: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    for w in [
        "memory",
        "send, sequential",
        "send, concurrent",
        "sync wake-up",
        "sync, initial",
        "sync, incremental",
        "/messages",
        "rooms",
    ] {
        assert!(workloads.contains(w), "{w} missing from {workloads:?}");
    }
    for row in rows {
        let v = row["values"][0].as_f64();
        assert!(v.is_some_and(|v| v > 0.0), "{row}");
    }
    assert_eq!(doc["rate_limited"], 0);
    // The table on stdout names the target.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| lattice |"));
}
