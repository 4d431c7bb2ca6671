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
log = "warn,lattice::app=info"
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
