//! Real client SDKs against a real server. matrix-nio comes from PyPI into a venv
//! that `scripts/python-env` creates (outside the clone) on first use.

use std::{path::Path, process::Command};

use crate::harness::{TestServer, user_id};

fn python_with_sdks() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/python-env"))
        .output()
        .expect("running scripts/python-env");
    assert!(
        out.status.success(),
        "python-env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_logs_in_and_whoami() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_login.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([&server.base, "niouser", "hunter2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("ok {}", user_id("niouser"))),
        "{stdout}"
    );
    // Both nio clients left a device behind: the registration's and the login's.
    let devices = lattice::storage::devices::list(&server.state.db, &user_id("niouser"))
        .await
        .unwrap();
    let names: Vec<_> = devices
        .iter()
        .filter_map(|d| d.display_name.clone())
        .collect();
    assert!(names.contains(&"nio-test".to_owned()), "{names:?}");
}

/// Two matrix-nio users chat in a room; each reads the other's message via
/// `/messages` (the rooms issue's acceptance; `/sync` is its own issue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_two_users_chat_in_a_room() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_chat.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio chat failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok !"), "{stdout}");
}

/// matrix-nio's sync: an invite, a join, and a message arriving on a long poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_syncs_invites_and_messages() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_sync.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio sync failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
}

/// matrix-js-sdk (Element Web's SDK) runs its own sync loop against Lattice and
/// sees an invite, joins, and receives another user's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_syncs_joins_and_receives_a_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/node-env"))
        .output()
        .expect("running scripts/node-env");
    assert!(
        out.status.success(),
        "node-env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_dir = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    // ES modules resolve packages next to the script: run a copy placed there.
    let script = node_dir.join(format!("js_sync.{}.mjs", std::process::id()));
    std::fs::copy(root.join("tests/sdk/js_sync.mjs"), &script).unwrap();

    let server = TestServer::start().await;
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "js-sdk failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
}
