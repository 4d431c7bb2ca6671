//! Interop with a real Synapse (the reference homeserver, installed from PyPI by
//! `scripts/synapse-env`) on loopback: Synapse federates over TLS on the port in
//! its server name, trusts the development CA, and may reach loopback.

use std::{path::PathBuf, process::Stdio, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    ClientApi, Login, TestServer, current_state, dev_tls, enc, eventually, free_port, messages,
    wait_for_message,
};

/// A Synapse process with a client listener on plain HTTP (`base`) and a
/// federation listener over TLS on the port in its server name.
pub struct Synapse {
    pub api: ClientApi,
    name: String,
    python: String,
    dir: PathBuf,
    /// Removes `dir` on drop, unless `LATTICE_KEEP_SYNAPSE` is set (for debugging).
    _dir_guard: Option<tempfile::TempDir>,
    child: Option<tokio::process::Child>,
}

impl std::ops::Deref for Synapse {
    type Target = ClientApi;

    fn deref(&self) -> &ClientApi {
        &self.api
    }
}

/// Installs (once) and locates the Synapse venv's python.
fn synapse_python() -> String {
    crate::harness::setup_script("synapse-env")
}

impl Synapse {
    pub async fn start() -> Self {
        let python = tokio::task::spawn_blocking(synapse_python).await.unwrap();
        let guard = tempfile::tempdir().expect("synapse dir");
        let dir = guard.path().to_owned();
        let guard = if std::env::var_os("LATTICE_KEEP_SYNAPSE").is_some() {
            eprintln!("synapse directory: {}", guard.keep().display());
            None
        } else {
            Some(guard)
        };
        let port = free_port();
        let client_port = free_port();
        let name = format!("localhost:{port}");
        let tls = dev_tls();
        let d = dir.display();
        // Every rate limit out of the way: the tests send in bursts.
        let lots = "{per_second: 1000, burst_count: 1000}";
        let config = format!(
            r#"server_name: "{name}"
pid_file: {d}/homeserver.pid
report_stats: false
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    resources: [{{names: [federation], compress: false}}]
  - port: {client_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources: [{{names: [client], compress: false}}]
tls_certificate_path: {cert}
tls_private_key_path: {key}
federation_custom_ca_list: [{ca}]
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
database:
  name: sqlite3
  args: {{database: {d}/homeserver.db}}
media_store_path: {d}/media
signing_key_path: {d}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
macaroon_secret_key: "interop-test-macaroon"
form_secret: "interop-test-form"
presence: {{enabled: false}}
caches: {{sync_response_cache_duration: 0}}
rc_message: {lots}
rc_registration: {lots}
rc_login: {{address: {lots}, account: {lots}, failed_attempts: {lots}}}
rc_joins: {{local: {lots}, remote: {lots}}}
rc_joins_per_room: {lots}
rc_invites: {{per_room: {lots}, per_user: {lots}, per_issuer: {lots}}}
rc_key_requests: {lots}
rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 1, reject_limit: 1000, concurrent: 100}}
federation_rr_transactions_per_room_per_second: 1000
"#,
            cert = tls.cert.display(),
            key = tls.key.display(),
            ca = tls.ca.display(),
        );
        std::fs::write(dir.join("homeserver.yaml"), config).unwrap();
        let keys = tokio::process::Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(dir.join("homeserver.yaml"))
            .output()
            .await
            .unwrap();
        assert!(
            keys.status.success(),
            "synapse --generate-keys: {}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let mut synapse = Self {
            api: ClientApi::new(format!("http://127.0.0.1:{client_port}")),
            name,
            python,
            dir,
            _dir_guard: guard,
            child: None,
        };
        synapse.run().await;
        synapse
    }

    /// Starts the process and waits until it answers.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "synapse already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = tokio::process::Command::new(&self.python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.join("homeserver.yaml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("starting synapse");
        self.child = Some(child);
        for _ in 0..300 {
            if let Ok(resp) = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
                && resp.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("synapse exited ({status}):\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("synapse did not start:\n{}", self.log_tail());
    }

    /// Stops the process (SIGTERM, as an admin would) and waits for it to exit.
    pub async fn halt(&mut self) {
        let mut child = self.child.take().expect("synapse running");
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            child.kill().await.unwrap();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("synapse.log")
    }

    /// The last lines of Synapse's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// Joins `room` (an ID or alias) on `server` as `who`; returns the room ID.
async fn join(server: &ClientApi, who: &Login, room: &str) -> String {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "joining {room}: {body}");
    body["room_id"].as_str().unwrap().to_owned()
}

async fn joined(server: &ClientApi, who: &Login, room: &str) -> Vec<String> {
    let (_, members) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)),
            Some(&who.access_token),
        )
        .await;
    members["joined"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The room's current state as a server shows it: (type, state_key) → event ID.
async fn put_state(server: &ClientApi, who: &Login, room: &str, kind: &str, content: Value) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            Some(&who.access_token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "setting {kind}: {body}");
}

/// A user's `/sync` (left rooms included, short timeout).
async fn sync(server: &ClientApi, who: &Login, since: Option<&str>) -> Value {
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    let path = match since {
        Some(s) => format!("/_matrix/client/v3/sync?timeout=0&filter={filter}&since={s}"),
        None => format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
    };
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The message bodies in a room's timeline in one `/sync` response.
fn synced_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Rooms created on each side are joined from the other by alias; messages flow
/// both ways and show in both users' `/sync`; name, topic and power-level
/// changes leave both servers with the same current state; a kick and a ban
/// issued on each side reach the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_messages_and_state_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;

    // A room on Lattice, joined from Synapse by alias.
    let l_room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "lroom", "name": "On Lattice",
                   "visibility": "public"}),
        )
        .await;
    // Synapse lists Lattice's public rooms (federation /publicRooms).
    let (status, listed) = synapse
        .get(
            &format!(
                "/_matrix/client/v3/publicRooms?server={}",
                enc(lattice.name())
            ),
            Some(&sam.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(
        listed["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == l_room.as_str() && r["name"] == "On Lattice"),
        "{listed}"
    );
    let joined_id = join(&synapse, &sam, &format!("#lroom:{}", lattice.name())).await;
    assert_eq!(joined_id, l_room);
    eventually("sam's join on Lattice", || async {
        joined(&lattice, &alice, &l_room)
            .await
            .contains(&sam.user_id)
    })
    .await;

    // A room on Synapse, joined from Lattice by alias.
    let s_room = synapse
        .create_room(
            &sam,
            json!({"preset": "public_chat", "room_alias_name": "sroom", "name": "On Synapse"}),
        )
        .await;
    let joined_id = join(&lattice, &alice, &format!("#sroom:{}", synapse.name())).await;
    assert_eq!(joined_id, s_room);
    eventually("alice's join on Synapse", || async {
        joined(&synapse, &sam, &s_room)
            .await
            .contains(&alice.user_id)
    })
    .await;

    // Messages both ways in both rooms, seen in /messages on both servers.
    let alice_since = sync(&lattice, &alice, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let sam_since = sync(&synapse, &sam, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    for room in [&l_room, &s_room] {
        lattice
            .send_message(
                &alice,
                room,
                json!({"msgtype": "m.text", "body": format!("alice in {room}")}),
            )
            .await;
        synapse
            .send_message(
                &sam,
                room,
                json!({"msgtype": "m.text", "body": format!("sam in {room}")}),
            )
            .await;
    }
    for room in [&l_room, &s_room] {
        for (server, who) in [(&*lattice, &alice), (&*synapse, &sam)] {
            eventually("both messages on both servers", || async {
                let seen = messages(server, &who.access_token, room).await;
                seen.contains(&format!("alice in {room}"))
                    && seen.contains(&format!("sam in {room}"))
            })
            .await;
        }
    }
    // … and in each user's /sync since before they were sent.
    for (server, who, since) in [
        (&*lattice, &alice, alice_since),
        (&*synapse, &sam, sam_since),
    ] {
        let got = sync(server, who, Some(&since)).await;
        for room in [&l_room, &s_room] {
            let bodies = synced_bodies(&got, room);
            assert!(
                bodies.contains(&format!("alice in {room}"))
                    && bodies.contains(&format!("sam in {room}")),
                "{} /sync in {room}: {bodies:?}",
                who.user_id
            );
        }
    }

    // State changes on both sides converge to the same current state.
    put_state(
        &lattice,
        &alice,
        &l_room,
        "m.room.topic",
        json!({"topic": "set on lattice"}),
    )
    .await;
    put_state(
        &lattice,
        &alice,
        &l_room,
        "m.room.name",
        json!({"name": "Renamed on Lattice"}),
    )
    .await;
    let (_, mut power) = lattice
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&l_room)
            ),
            Some(&alice.access_token),
        )
        .await;
    power["users"][&sam.user_id] = json!(50);
    power["events"]["m.room.topic"] = json!(50);
    put_state(&lattice, &alice, &l_room, "m.room.power_levels", power).await;
    // Sam may now set the topic in Lattice's room, from Synapse.
    eventually("sam's power level on Synapse", || async {
        let (_, power) = synapse
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                    enc(&l_room)
                ),
                Some(&sam.access_token),
            )
            .await;
        power["users"][&sam.user_id] == 50
    })
    .await;
    put_state(
        &synapse,
        &sam,
        &l_room,
        "m.room.topic",
        json!({"topic": "set on synapse"}),
    )
    .await;

    put_state(
        &synapse,
        &sam,
        &s_room,
        "m.room.name",
        json!({"name": "Renamed on Synapse"}),
    )
    .await;
    put_state(
        &synapse,
        &sam,
        &s_room,
        "m.room.topic",
        json!({"topic": "synapse topic"}),
    )
    .await;

    for room in [&l_room, &s_room] {
        let mut last = (Default::default(), Default::default());
        for _ in 0..300 {
            last = (
                current_state(&lattice, &alice, room).await,
                current_state(&synapse, &sam, room).await,
            );
            if last.0 == last.1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            last.0,
            last.1,
            "current state of {room} differs:\n{}",
            synapse.log_tail()
        );
    }
    let (_, topic) = lattice
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&l_room)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(topic["topic"], "set on synapse");

    // Alice kicks Sam from her room; Sam's server sees him leave.
    let (status, body) = lattice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&l_room)),
            Some(&alice.access_token),
            json!({"user_id": sam.user_id, "reason": "interop kick"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the kick on Synapse", || async {
        let got = sync(&synapse, &sam, None).await;
        got["rooms"]["leave"].get(&l_room).is_some()
    })
    .await;

    // Sam bans Alice from his room; Alice's server sees the ban.
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&s_room)),
            Some(&sam.access_token),
            json!({"user_id": alice.user_id, "reason": "interop ban"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the ban on Lattice", || async {
        let got = sync(&lattice, &alice, None).await;
        got["rooms"]["leave"][&s_room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == alice.user_id
                        && e["content"]["membership"] == "ban"
                })
            })
    })
    .await;
    // Banned, Alice cannot join again.
    let (status, _) = lattice
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&s_room)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Every message body in a room, oldest first, paging `/messages` backwards ten
/// at a time from the end until the start of the room.
async fn all_messages(server: &ClientApi, who: &Login, room: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            enc(room)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let (status, page) = server.get(&path, Some(&who.access_token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                bodies.push(e["content"]["body"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => {
                from = Some(end.to_owned())
            }
            _ => break,
        }
    }
    bodies.reverse();
    bodies
}

async fn invite(server: &ClientApi, who: &Login, room: &str, user: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            Some(&who.access_token),
            json!({"user_id": user}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "inviting {user}: {body}");
}

/// The room name in an invite's stripped state, once the invite shows in `/sync`.
async fn invited_room_name(server: &ClientApi, who: &Login, room: &str) -> Option<String> {
    let got = sync(server, who, None).await;
    let events = got["rooms"]["invite"][room]["invite_state"]["events"].as_array()?;
    events
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .and_then(|e| e["content"]["name"].as_str().map(str::to_owned))
}

/// An invite from each side is received (with the room's name in its stripped
/// state) and accepted; a user who joins late pages back through the history
/// from before the join, in both directions (Lattice backfilling from Synapse
/// and Synapse backfilling from Lattice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_and_backfill_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;

    // Lattice invites a Synapse user to a private room.
    let l_room = lattice
        .create_room(
            &alice,
            json!({"preset": "private_chat", "name": "Lattice private"}),
        )
        .await;
    invite(&lattice, &alice, &l_room, &sam.user_id).await;
    eventually("the invite in sam's /sync", || async {
        invited_room_name(&synapse, &sam, &l_room).await.as_deref() == Some("Lattice private")
    })
    .await;
    join(&synapse, &sam, &l_room).await;
    eventually("sam's join on Lattice", || async {
        joined(&lattice, &alice, &l_room)
            .await
            .contains(&sam.user_id)
    })
    .await;

    // Synapse invites a Lattice user to a private room.
    let s_room = synapse
        .create_room(
            &sam,
            json!({"preset": "private_chat", "name": "Synapse private"}),
        )
        .await;
    invite(&synapse, &sam, &s_room, &alice.user_id).await;
    eventually("the invite in alice's /sync", || async {
        invited_room_name(&lattice, &alice, &s_room)
            .await
            .as_deref()
            == Some("Synapse private")
    })
    .await;
    join(&lattice, &alice, &s_room).await;
    eventually("alice's join on Synapse", || async {
        joined(&synapse, &sam, &s_room)
            .await
            .contains(&alice.user_id)
    })
    .await;
    for (room, from, to, sender, reader) in [
        (&l_room, &*synapse, &*lattice, &sam, &alice),
        (&s_room, &*lattice, &*synapse, &alice, &sam),
    ] {
        from.send_message(
            sender,
            room,
            json!({"msgtype": "m.text", "body": "after the invite"}),
        )
        .await;
        wait_for_message(to, reader, room, "after the invite").await;
    }

    // History written before the other server's user joins.
    let history: Vec<String> = (0..30).map(|i| format!("history {i}")).collect();
    let b_room = synapse
        .create_room(
            &sam,
            json!({"preset": "public_chat", "room_alias_name": "history"}),
        )
        .await;
    for body in &history {
        synapse
            .send_message(&sam, &b_room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    join(&lattice, &alice, &format!("#history:{}", synapse.name())).await;
    assert_eq!(
        all_messages(&lattice, &alice, &b_room).await,
        history,
        "Lattice backfilling from Synapse"
    );

    let h_room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "history"}),
        )
        .await;
    for body in &history {
        lattice
            .send_message(&alice, &h_room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    join(&synapse, &sam, &format!("#history:{}", lattice.name())).await;
    assert_eq!(
        all_messages(&synapse, &sam, &h_room).await,
        history,
        "Synapse backfilling from Lattice"
    );
}

/// Resilience: with Synapse stopped, 20 messages are sent on Lattice; Lattice
/// restarts; Synapse starts again; all 20 arrive on Synapse, in order, once
/// each (the durable send queue survives the restart and backs off meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_survive_a_peer_outage_and_a_restart() {
    let lattice = TestServer::start_federating().await;
    let mut synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "outage"}),
        )
        .await;
    join(&synapse, &sam, &format!("#outage:{}", lattice.name())).await;
    lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "before"}),
        )
        .await;
    wait_for_message(&synapse, &sam, &room, "before").await;

    synapse.halt().await;
    let sent: Vec<String> = (0..20).map(|i| format!("while down {i}")).collect();
    for body in &sent {
        lattice
            .send_message(&alice, &room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    let lattice = lattice.restart().await;
    synapse.run().await;

    let mut expected = vec!["before".to_owned()];
    expected.extend(sent);
    let mut last = Vec::new();
    for _ in 0..600 {
        last = all_messages(&synapse, &sam, &room).await;
        if last.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, expected, "{}", synapse.log_tail());
    // Lattice still serves the room after its restart.
    assert_eq!(all_messages(&lattice, &alice, &room).await, expected);
}

/// E2EE across servers with matrix-rust-sdk: Alice on Lattice creates an
/// encrypted room and invites Bob on Synapse; each client queries the other's
/// device keys and claims one-time keys over federation, shares its Megolm
/// session in to-device messages (EDUs between the servers), and decrypts the
/// other's message. Both servers only ever hold `m.room.encrypted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chat_across_servers_with_matrix_rust_sdk() {
    let client = tokio::task::spawn_blocking(crate::sdk::rust_sdk_client)
        .await
        .unwrap();
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let bob = synapse.register("bob", "bob-password").await;
    let out = tokio::process::Command::new(client)
        .args([
            &lattice.base,
            "encrypted",
            "alice",
            "alice-password",
            "bob",
            "bob-password",
            &synapse.base,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "matrix-rust-sdk client failed:\n{stdout}\n{}\nsynapse:\n{}",
        String::from_utf8_lossy(&out.stderr),
        synapse.log_tail()
    );
    let room = stdout.strip_prefix("ok ").unwrap().trim().to_owned();
    for (server, who) in [(&*lattice, &alice), (&*synapse, &bob)] {
        let (status, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(&room)
                ),
                Some(&who.access_token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let types: Vec<(String, String)> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e.get("state_key").is_none())
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["sender"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            types.contains(&("m.room.encrypted".into(), alice.user_id.clone()))
                && types.contains(&("m.room.encrypted".into(), bob.user_id.clone()))
                && !types.iter().any(|(t, _)| t == "m.room.message"),
            "{}: {types:?}",
            who.user_id
        );
    }
}

async fn membership_on(server: &ClientApi, who: &Login, room: &str, user: &str) -> Option<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            Some(&who.access_token),
        )
        .await;
    (status == StatusCode::OK).then(|| body["membership"].as_str().unwrap_or_default().to_owned())
}

/// The ephemeral events of a room in one `/sync` response.
fn ephemeral<'a>(sync: &'a Value, room: &str) -> Vec<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .map(|events| events.iter().collect())
        .unwrap_or_default()
}

/// `inviter` on `host` invites `invitee` of `guest` to a private room; the
/// invitee rejects it (`make_leave`/`send_leave` to `host`), and the inviter's
/// server sees the leave while the invite is gone from the invitee's `/sync`.
async fn rejected_invite_reaches_the_inviter(
    host: &ClientApi,
    inviter: &Login,
    guest: &ClientApi,
    invitee: &Login,
) {
    let room = host
        .create_room(inviter, json!({"preset": "private_chat"}))
        .await;
    invite(host, inviter, &room, &invitee.user_id).await;
    eventually("the invite on the invitee's server", || async {
        sync(guest, invitee, None).await["rooms"]["invite"]
            .get(&room)
            .is_some()
    })
    .await;
    let (status, body) = guest
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&invitee.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the rejection on the inviter's server", || async {
        membership_on(host, inviter, &room, &invitee.user_id)
            .await
            .as_deref()
            == Some("leave")
    })
    .await;
    assert!(
        sync(guest, invitee, None).await["rooms"]["invite"]
            .get(&room)
            .is_none()
    );
}

/// Invites rejected on each side reach the inviter (`make_leave`/`send_leave`
/// both ways); read receipts and typing notifications cross as EDUs both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_receipts_and_typing_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;

    // Alice rejects Sam's invite; Synapse sees her leave. Then the mirror.
    rejected_invite_reaches_the_inviter(&synapse, &sam, &lattice, &alice).await;
    rejected_invite_reaches_the_inviter(&lattice, &alice, &synapse, &sam).await;

    // A shared room for receipts and typing.
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "edus"}),
        )
        .await;
    join(&synapse, &sam, &format!("#edus:{}", lattice.name())).await;
    let from_sam = synapse
        .send_message(&sam, &room, json!({"msgtype": "m.text", "body": "read me"}))
        .await;
    wait_for_message(&lattice, &alice, &room, "read me").await;
    let from_alice = lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "me too"}),
        )
        .await;
    wait_for_message(&synapse, &sam, &room, "me too").await;
    for (server, who, event) in [
        (&*lattice, &alice, &from_sam),
        (&*synapse, &sam, &from_alice),
    ] {
        let (status, body) = server
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room),
                    enc(event)
                ),
                Some(&who.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (server, who, reader, event) in [
        (&*synapse, &sam, &alice.user_id, &from_sam),
        (&*lattice, &alice, &sam.user_id, &from_alice),
    ] {
        eventually("the other side's read receipt", || async {
            let got = sync(server, who, None).await;
            ephemeral(&got, &room).iter().any(|e| {
                e["type"] == "m.receipt"
                    && e["content"][event.as_str()]["m.read"].get(reader).is_some()
            })
        })
        .await;
    }

    // Typing, both ways.
    for (server, who) in [(&*lattice, &alice), (&*synapse, &sam)] {
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(&room),
                    enc(&who.user_id)
                ),
                Some(&who.access_token),
                json!({"typing": true, "timeout": 20000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (server, who, typist) in [
        (&*synapse, &sam, &alice.user_id),
        (&*lattice, &alice, &sam.user_id),
    ] {
        eventually("the other side typing", || async {
            let got = sync(server, who, None).await;
            ephemeral(&got, &room).iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|u| u == typist.as_str()))
            })
        })
        .await;
    }
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(server: &ClientApi, who: &Login, bytes: Vec<u8>) -> String {
    let resp = server
        .client
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=pic.png",
            server.base
        ))
        .bearer_auth(&who.access_token)
        .header("Content-Type", "image/png")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["content_uri"].as_str().unwrap().to_owned()
}

async fn download(
    server: &ClientApi,
    who: &Login,
    mxc: &str,
    thumbnail: bool,
) -> (StatusCode, Vec<u8>) {
    let rest = mxc.strip_prefix("mxc://").unwrap();
    let url = if thumbnail {
        format!(
            "{}/_matrix/client/v1/media/thumbnail/{rest}?width=32&height=32&method=crop",
            server.base
        )
    } else {
        format!("{}/_matrix/client/v1/media/download/{rest}", server.base)
    };
    let resp = server
        .client
        .get(url)
        .bearer_auth(&who.access_token)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

/// Remote media both ways: a Lattice user downloads (and thumbnails) what a
/// Synapse user uploaded — fetched over federation and cached — and Synapse
/// fetches Lattice's media through `/_matrix/federation/v1/media/download`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_across_servers_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;

    let on_synapse = png(64, 48);
    let remote_mxc = upload(&synapse, &sam, on_synapse.clone()).await;
    let mxc = remote_mxc.clone();
    let (status, bytes) = download(&lattice, &alice, &mxc, false).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(
        bytes, on_synapse,
        "Lattice serves Synapse's bytes unchanged"
    );
    let (status, thumb) = download(&lattice, &alice, &mxc, true).await;
    assert_eq!(status, StatusCode::OK);
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));
    // An ID the remote server does not know is 404 here too.
    let (status, _) = download(
        &lattice,
        &alice,
        &format!("mxc://{}/doesnotexist", synapse.name()),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let on_lattice = png(40, 30);
    let mxc = upload(&lattice, &alice, on_lattice.clone()).await;
    let (status, bytes) = download(&synapse, &sam, &mxc, false).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        String::from_utf8_lossy(&bytes),
        synapse.log_tail()
    );
    assert_eq!(
        bytes, on_lattice,
        "Synapse serves Lattice's bytes unchanged"
    );

    // Retention: cached remote media unread past `media.remote_cache_days` goes,
    // local media stays; the remote item is fetched again when asked for.
    sqlx::query("update media set last_access_ts = 0, created_ts = 0")
        .execute(&lattice.state.db)
        .await
        .unwrap();
    lattice::service::media::collect_garbage(&lattice.state)
        .await
        .unwrap();
    let left: Vec<(String,)> = sqlx::query_as("select server_name from media")
        .fetch_all(&lattice.state.db)
        .await
        .unwrap();
    assert_eq!(left, vec![(lattice.name().to_owned(),)]);
    let (status, bytes) = download(&lattice, &alice, &remote_mxc, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, on_synapse);
}

async fn knock(server: &ClientApi, who: &Login, room: &str, via: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={}", enc(room), enc(via)),
            Some(&who.access_token),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "knocking on {room}: {body}");
}

/// Knocks across servers (`make_knock`/`send_knock` both ways): the knock
/// reaches the room's members, shows in the knocker's `/sync`, and an invite
/// then lets the knocker in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knocks_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;
    let knock_rule =
        json!([{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]);

    // Sam knocks on Alice's room.
    let l_room = lattice
        .create_room(
            &alice,
            json!({"preset": "private_chat", "initial_state": knock_rule}),
        )
        .await;
    knock(&synapse, &sam, &l_room, lattice.name()).await;
    eventually("sam's knock on Lattice", || async {
        membership_on(&lattice, &alice, &l_room, &sam.user_id)
            .await
            .as_deref()
            == Some("knock")
    })
    .await;
    invite(&lattice, &alice, &l_room, &sam.user_id).await;
    eventually("the invite after the knock on Synapse", || async {
        sync(&synapse, &sam, None).await["rooms"]["invite"]
            .get(&l_room)
            .is_some()
    })
    .await;
    join(&synapse, &sam, &l_room).await;
    eventually("sam in Alice's room", || async {
        joined(&lattice, &alice, &l_room)
            .await
            .contains(&sam.user_id)
    })
    .await;

    // Alice knocks on Sam's room.
    let s_room = synapse
        .create_room(
            &sam,
            json!({"preset": "private_chat", "initial_state": knock_rule}),
        )
        .await;
    knock(&lattice, &alice, &s_room, synapse.name()).await;
    let knocked = sync(&lattice, &alice, None).await;
    assert!(
        knocked["rooms"]["knock"][&s_room]["knock_state"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "m.room.join_rules")),
        "{knocked}"
    );
    eventually("alice's knock on Synapse", || async {
        membership_on(&synapse, &sam, &s_room, &alice.user_id)
            .await
            .as_deref()
            == Some("knock")
    })
    .await;
    invite(&synapse, &sam, &s_room, &alice.user_id).await;
    eventually("the invite after the knock on Lattice", || async {
        sync(&lattice, &alice, None).await["rooms"]["invite"]
            .get(&s_room)
            .is_some()
    })
    .await;
    join(&lattice, &alice, &s_room).await;
    eventually("alice in Sam's room", || async {
        joined(&synapse, &sam, &s_room)
            .await
            .contains(&alice.user_id)
    })
    .await;
}

/// Local members of the big room Synapse joins with partial state.
const BIG_ROOM_MEMBERS: usize = 120;

/// Faster joins against Lattice (spec: `send_join`'s `omit_members`; MSC3706):
/// a Synapse user joins a public Lattice room of 120 local members by alias.
/// Synapse asks every resident for partial state, and Lattice gives it: it
/// counts the join in `lattice_federation_send_joins_total{members_omitted="true"}`
/// and Synapse logs the state resync it then runs against Lattice
/// (`/state_ids`, `/state`, `/event`). Messages sent on both sides as soon as
/// the join returns reach the other server, Synapse pages back through the
/// history from before the join, and once Synapse has the full state both
/// servers list the same joined members and the same current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_joins_a_big_lattice_room_with_partial_state() {
    let lattice = TestServer::start_federating_with(|c| {
        c.listeners[0]
            .resources
            .push(lattice::config::Resource::Metrics);
    })
    .await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let sam = synapse.register("sam", "sam-password").await;
    let room = lattice
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "big", "name": "Big room"}),
        )
        .await;
    let numbers: Vec<usize> = (0..BIG_ROOM_MEMBERS).collect();
    for chunk in numbers.chunks(8) {
        futures_util::future::join_all(chunk.iter().map(|i| {
            let (lattice, room) = (&lattice, &room);
            async move {
                let who = lattice
                    .register(&format!("member{i:03}"), "member-password")
                    .await;
                lattice.join(&who, room).await;
            }
        }))
        .await;
    }
    lattice
        .send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "before the join"}),
        )
        .await;

    assert_eq!(
        join(&synapse, &sam, &format!("#big:{}", lattice.name())).await,
        room
    );
    // At once, from both sides (Synapse completes the state meanwhile).
    let (_, _) = tokio::join!(
        lattice.send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "from lattice during the resync"}),
        ),
        synapse.send_message(
            &sam,
            &room,
            json!({"msgtype": "m.text", "body": "from synapse during the resync"}),
        ),
    );
    for (server, who) in [(&*lattice, &alice), (&*synapse, &sam)] {
        eventually("both messages on both servers", || async {
            let seen = messages(server, &who.access_token, &room).await;
            seen.iter().any(|b| b == "from lattice during the resync")
                && seen.iter().any(|b| b == "from synapse during the resync")
        })
        .await;
    }

    // Synapse joined with partial state and completed it from Lattice (its
    // log); Sam's message was sent, and Lattice's transaction with Alice's
    // received, after the partial-state join began.
    eventually("Synapse's state resync", || async {
        synapse_log(&synapse).contains(&format!("State resync complete for {room}"))
    })
    .await;
    let log = synapse_log(&synapse);
    let line = |needle: &dyn Fn(&str) -> bool| log.lines().position(needle);
    let started = line(&|l| {
        l.contains(&format!(
            "Syncing state for room {room} via {}",
            lattice.name()
        ))
    });
    let sent = line(&|l| {
        l.contains("Processed request")
            && l.contains(&format!(
                "PUT /_matrix/client/v3/rooms/{room}/send/m.room.message"
            ))
    });
    let received = line(&|l| {
        l.contains("Received txn")
            && l.contains(&format!("from {}.", lattice.name()))
            && !l.contains("(PDUs: 0,")
    });
    let complete = line(&|l| l.contains(&format!("State resync complete for {room}")));
    assert!(
        started.is_some() && sent.is_some() && received.is_some(),
        "{started:?} {sent:?} {received:?}: {}",
        synapse.log_tail()
    );
    // Sam sent once his join returned, which is after the partial-state join
    // began. Whether both messages also crossed before the resync ended
    // depends on timing (about 0.4 s of margin on a loaded 2-core machine),
    // so it is reported, not asserted: a flaky assertion proves nothing.
    assert!(
        started < sent && started < received,
        "the messages crossed before the partial-state join began \
         (started {started:?}, sent {sent:?}, received {received:?})"
    );
    eprintln!(
        "faster join: messages during the resync: sent {}, received {}",
        sent < complete,
        received < complete
    );
    // Lattice's side: one send_join answered with members omitted, then the
    // state at the join served (`/state_ids`, `/state`).
    let (_, metrics) = lattice.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for series in [
        "lattice_federation_send_joins_total{members_omitted=\"true\"} 1".to_owned(),
        "lattice_federation_send_joins_total{members_omitted=\"false\"} 0".to_owned(),
    ] {
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
    for route in ["state_ids/{room_id}", "state/{room_id}"] {
        let served = format!(
            "lattice_http_requests_total{{method=\"GET\",route=\"/_matrix/federation/v1/{route}\",status=\"200\"}}"
        );
        assert!(metrics.contains(&served), "{served}: {metrics}");
    }

    // Converged: the same members and the same current state on both.
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let mut l = joined(&lattice, &alice, &room).await;
        let mut s = joined(&synapse, &sam, &room).await;
        l.sort();
        s.sort();
        last = (l, s);
        if last.0 == last.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, last.1, "joined members differ");
    assert_eq!(last.0.len(), BIG_ROOM_MEMBERS + 2);
    assert_eq!(
        current_state(&lattice, &alice, &room).await,
        current_state(&synapse, &sam, &room).await,
        "current state differs"
    );
    // The history from before the join, backfilled from Lattice.
    let history = all_messages(&synapse, &sam, &room).await;
    assert!(
        history.iter().any(|b| b == "before the join"),
        "{history:?}"
    );
}

/// Synapse's whole log so far.
fn synapse_log(synapse: &Synapse) -> String {
    std::fs::read_to_string(synapse.log_path()).unwrap_or_default()
}

/// Joins `room` through `via` as `who`: the status and body of `/join`.
async fn join_via(server: &ClientApi, who: &Login, room: &str, via: &str) -> (StatusCode, Value) {
    server
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(via)
            ),
            Some(&who.access_token),
            json!({}),
        )
        .await
}

/// The content of `user`'s member event in `room`, as `server` holds it.
async fn member_content(server: &ClientApi, who: &Login, room: &str, user: &str) -> Value {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}'s member event: {body}");
    body
}

/// A public space and a room restricted to the space's members (room version
/// 10), created by `owner` on `server`.
async fn restricted_pair(server: &ClientApi, owner: &Login) -> (String, String) {
    let space = server
        .create_room(
            owner,
            json!({"preset": "public_chat", "room_version": "10",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
    let room = server
        .create_room(
            owner,
            json!({"preset": "private_chat", "room_version": "10", "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted",
                            "allow": [{"type": "m.room_membership", "room_id": space}]},
            }]}),
        )
        .await;
    (space, room)
}

/// Restricted joins across servers, both roles (spec: "Restricted rooms",
/// `join_authorised_via_users_server`): a Synapse user who is in the allowed
/// space joins a Lattice room through Lattice, which names its member as the
/// authoriser and countersigns; a Lattice user joins a Synapse room the same
/// way, Synapse authorising. Users of either server who are not in the space
/// are refused, and end up with no membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_joins_with_synapse() {
    let lattice = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let alice = lattice.register("alice", "alice-password").await;
    let bob = lattice.register("bob", "bob-password").await;
    let sam = synapse.register("sam", "sam-password").await;
    let tom = synapse.register("tom", "tom-password").await;

    // Lattice is the resident: Sam joins the space, then the room.
    let (l_space, l_room) = restricted_pair(&lattice, &alice).await;
    let (status, body) = join_via(&synapse, &tom, &l_room, lattice.name()).await;
    assert!(
        status.is_client_error(),
        "tom, in no allowed room, joins Lattice's restricted room: {status} {body}"
    );
    let (status, body) = join_via(&synapse, &sam, &l_space, lattice.name()).await;
    assert_eq!(status, StatusCode::OK, "sam joins the space: {body}");
    eventually("sam in Lattice's space", || async {
        joined(&lattice, &alice, &l_space)
            .await
            .contains(&sam.user_id)
    })
    .await;
    let (status, body) = join_via(&synapse, &sam, &l_room, lattice.name()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "sam joins the restricted room: {body}"
    );
    eventually("sam in Lattice's restricted room", || async {
        joined(&lattice, &alice, &l_room)
            .await
            .contains(&sam.user_id)
    })
    .await;
    let content = member_content(&lattice, &alice, &l_room, &sam.user_id).await;
    assert_eq!(
        content["join_authorised_via_users_server"], alice.user_id,
        "{content}"
    );
    assert_eq!(
        membership_on(&lattice, &alice, &l_room, &tom.user_id).await,
        None
    );

    // Synapse is the resident: Alice joins Sam's space, then the room.
    let (s_space, s_room) = restricted_pair(&synapse, &sam).await;
    let (status, body) = join_via(&lattice, &bob, &s_room, synapse.name()).await;
    assert!(
        status.is_client_error(),
        "bob, in no allowed room, joins Synapse's restricted room: {status} {body}"
    );
    let (status, body) = join_via(&lattice, &alice, &s_space, synapse.name()).await;
    assert_eq!(status, StatusCode::OK, "alice joins the space: {body}");
    let (status, body) = join_via(&lattice, &alice, &s_room, synapse.name()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "alice joins the restricted room: {body}"
    );
    eventually("alice in Synapse's restricted room", || async {
        joined(&synapse, &sam, &s_room)
            .await
            .contains(&alice.user_id)
    })
    .await;
    let content = member_content(&synapse, &sam, &s_room, &alice.user_id).await;
    assert_eq!(
        content["join_authorised_via_users_server"], sam.user_id,
        "{content}"
    );
    // Lattice holds the same countersigned join.
    let content = member_content(&lattice, &alice, &s_room, &alice.user_id).await;
    assert_eq!(
        content["join_authorised_via_users_server"], sam.user_id,
        "{content}"
    );
    assert_eq!(
        membership_on(&synapse, &sam, &s_room, &bob.user_id).await,
        None
    );
    // A message crosses once Alice is in.
    let (status, body) = lattice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&s_room)
            ),
            Some(&alice.access_token),
            json!({"msgtype": "m.text", "body": "hello from a restricted join"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("alice's message on Synapse", || async {
        all_messages(&synapse, &sam, &s_room)
            .await
            .iter()
            .any(|b| b == "hello from a restricted join")
    })
    .await;
}
