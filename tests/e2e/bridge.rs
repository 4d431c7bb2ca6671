//! A real bridge end to end: heisenbridge (PyPI, an IRC bridge on the mautrix
//! framework) registered with Lattice through the registration file it
//! generates, bridging to a real IRC server (Debian's ngircd) on loopback.
//! `scripts/irc-env` installs both. A Matrix user talks to a raw-socket IRC
//! client through the bridge, both ways: channel joins and messages, and
//! private messages.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, tcp::OwnedWriteHalf},
};

use crate::harness::{Login, SERVER_NAME, TestServer, enc, free_port};

const V3: &str = "/_matrix/client/v3";

/// The IRC server and the bridge's python, installed by `scripts/irc-env`.
fn irc_env() -> (PathBuf, PathBuf) {
    let out = crate::harness::setup_script("irc-env");
    let mut lines = out.lines();
    let ngircd = PathBuf::from(lines.next().expect("ngircd path"));
    let python = PathBuf::from(lines.next().expect("python path"));
    (ngircd, python)
}

/// ngircd on a loopback port, in the foreground, killed with the test.
async fn start_ircd(ngircd: &Path, dir: &Path) -> (tokio::process::Child, u16) {
    let port = free_port();
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.test.local\nInfo = Lattice bridge test\n\
             AdminInfo1 = test\nAdminInfo2 = test\nAdminEMail = test@test.local\n\
             Listen = 127.0.0.1\nPorts = {port}\nMotdPhrase = \"bridge test\"\n\
             PidFile = {pid}\n\
             [Limits]\nMaxConnectionsIP = 0\n\
             [Options]\nPAM = no\nDNS = no\nIdent = no\n",
            pid = dir.join("ngircd.pid").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(ngircd)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ngircd starts");
    crate::harness::eventually("ngircd listening", || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    (child, port)
}

/// Lets heisenbridge write its registration (`--generate`), as an admin would.
fn generate_registration(python: &Path, dir: &Path) -> (PathBuf, u16) {
    let port = free_port();
    let reg = dir.join("heisenbridge.yaml");
    let out = std::process::Command::new(python)
        .args(["-m", "heisenbridge", "-c"])
        .arg(&reg)
        .args(["--generate", "-l", "127.0.0.1", "-p", &port.to_string()])
        .output()
        .expect("heisenbridge --generate runs");
    assert!(
        out.status.success(),
        "heisenbridge --generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (reg, port)
}

/// Runs the bridge against `homeserver`, owned by `owner`; its log goes to
/// `dir/heisenbridge.log`.
fn start_bridge(
    python: &Path,
    reg: &Path,
    homeserver: &str,
    owner: &str,
    dir: &Path,
) -> tokio::process::Child {
    let log = std::fs::File::create(dir.join("heisenbridge.log")).unwrap();
    tokio::process::Command::new(python)
        .args(["-m", "heisenbridge", "-v", "-c"])
        .arg(reg)
        .args(["-o", owner, homeserver])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("heisenbridge starts")
}

/// A Matrix client following `/sync`: every timeline event per room, and
/// the rooms it was invited to, in order.
struct Matrix<'a> {
    server: &'a TestServer,
    user: Login,
    since: Option<String>,
    rooms: HashMap<String, Vec<Value>>,
    invites: Vec<String>,
}

impl<'a> Matrix<'a> {
    fn new(server: &'a TestServer, user: Login) -> Self {
        Self {
            server,
            user,
            since: None,
            rooms: HashMap::new(),
            invites: Vec::new(),
        }
    }

    async fn sync(&mut self) {
        let mut path = format!("{V3}/sync?timeout=500");
        if let Some(since) = &self.since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = self.server.get(&path, Some(&self.user.access_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.since = body["next_batch"].as_str().map(str::to_owned);
        if let Some(invites) = body["rooms"]["invite"].as_object() {
            self.invites.extend(invites.keys().cloned());
        }
        if let Some(joined) = body["rooms"]["join"].as_object() {
            for (room, data) in joined {
                let events = data["timeline"]["events"].as_array().cloned();
                self.rooms
                    .entry(room.clone())
                    .or_default()
                    .extend(events.unwrap_or_default());
            }
        }
    }

    /// Syncs until `check` finds something (60 s at most).
    async fn until<T>(&mut self, what: &str, check: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; rooms: {:#?}",
                self.rooms
            );
            self.sync().await;
        }
    }

    /// The next room invite after the first `seen` ones.
    async fn invite_after(&mut self, seen: usize, what: &str) -> String {
        self.until(what, |m| m.invites.get(seen).cloned()).await
    }

    fn bodies(&self, room: &str) -> Vec<(String, String)> {
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| {
                (
                    e["sender"].as_str().unwrap_or_default().to_owned(),
                    e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn has_body(&self, room: &str, sender: &str, needle: &str) -> bool {
        self.bodies(room)
            .iter()
            .any(|(s, b)| s == sender && b.contains(needle))
    }

    fn membership(&self, room: &str, user: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member" && e["state_key"] == user)
            .map(|e| {
                e["content"]["membership"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    async fn join(&self, room: &str) {
        self.server.join(&self.user, room).await;
    }

    async fn say(&self, room: &str, body: &str) {
        self.server
            .send_message(
                &self.user,
                room,
                json!({ "msgtype": "m.text", "body": body }),
            )
            .await;
    }
}

/// A raw-socket IRC client: every line the server sent, PINGs answered.
struct Irc {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Irc {
    async fn connect(port: u16, nick: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read, writer) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (pong, seen) = (writer.clone(), lines.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(read).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(arg) = line.strip_prefix("PING") {
                    let reply = format!("PONG{arg}\r\n");
                    let _ = pong.lock().await.write_all(reply.as_bytes()).await;
                }
                seen.lock().unwrap().push(line);
            }
        });
        let irc = Self { writer, lines };
        irc.send(&format!("NICK {nick}")).await;
        irc.send(&format!("USER {nick} 0 * :{nick} on IRC")).await;
        irc.wait_for("the welcome", |l| l.contains(" 001 ")).await;
        irc
    }

    async fn send(&self, line: &str) {
        self.writer
            .lock()
            .await
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Waits (60 s at most) for a line from the server matching `check`.
    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        for _ in 0..600 {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| check(l)) {
                return line.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "IRC: timed out waiting for {what}; got {:#?}",
            self.lines.lock().unwrap()
        );
    }
}

/// Everything a bridge test needs, torn down with it.
struct Setup {
    server: TestServer,
    irc_port: u16,
    dir: tempfile::TempDir,
    _ircd: tokio::process::Child,
    bridge: Option<tokio::process::Child>,
}

impl Setup {
    fn bridge_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("heisenbridge.log")).unwrap_or_default()
    }
}

/// ngircd, heisenbridge's registration in Lattice's `appservices` (the file
/// as generated, or as `tamper` changes Lattice's copy), alice registered,
/// then the bridge started with alice as its owner.
async fn setup(tamper: impl FnOnce(String) -> String) -> (Setup, Login) {
    let (ngircd, python) = irc_env();
    let dir = tempfile::tempdir().unwrap();
    let (ircd, irc_port) = start_ircd(&ngircd, dir.path()).await;
    let (reg, _bridge_port) = generate_registration(&python, dir.path());
    let text = std::fs::read_to_string(&reg).unwrap();
    let lattice_copy = dir.path().join("lattice-registration.yaml");
    std::fs::write(&lattice_copy, tamper(text)).unwrap();
    let client_port = free_port();
    let server = TestServer::start_with(|c| {
        c.appservices = vec![lattice_copy];
        // A fixed port: a restarted Lattice is where the bridge expects it.
        c.listeners[0].bind = format!("127.0.0.1:{client_port}").parse().unwrap();
        c.listeners[0]
            .resources
            .push(lattice::config::Resource::Metrics);
    })
    .await;
    let alice = server.register("alice", "pw").await;
    let bridge = start_bridge(&python, &reg, &server.base, &alice.user_id, dir.path());
    (
        Setup {
            server,
            irc_port,
            dir,
            _ircd: ircd,
            bridge: Some(bridge),
        },
        alice,
    )
}

const BOT: &str = "@heisenbridge:test.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heisenbridge_bridges_a_matrix_user_and_an_irc_user_both_ways() {
    let (mut setup, alice) = setup(|t| t).await;
    let result = tokio::time::timeout(Duration::from_secs(240), async {
        let server = &setup.server;
        let mut m = Matrix::new(server, alice.clone());
        // The bridge opens a control room for its owner and explains itself.
        let control = m.invite_after(0, "the control room invite").await;
        m.join(&control).await;
        m.until("the bridge's help", |m| {
            m.has_body(&control, BOT, "ADDNETWORK").then_some(())
        })
        .await;
        // Configure a network with the loopback IRC server and open it.
        m.say(&control, "ADDNETWORK test").await;
        m.say(
            &control,
            &format!("ADDSERVER test 127.0.0.1 {}", setup.irc_port),
        )
        .await;
        let seen = m.invites.len();
        m.say(&control, "OPEN test").await;
        let network = m.invite_after(seen, "the network room invite").await;
        m.join(&network).await;
        m.say(&network, "CONNECT").await;
        m.until("the IRC server's MOTD in the network room", |m| {
            m.has_body(&network, BOT, "End of MOTD").then_some(())
        })
        .await;

        // bob, on IRC, is in #lattice first.
        let bob = Irc::connect(setup.irc_port, "bob").await;
        bob.send("JOIN #lattice").await;
        bob.wait_for("bob's own join", |l| {
            l.starts_with(":bob!") && l.contains("JOIN")
        })
        .await;

        // alice joins #lattice from Matrix: bob sees her join on IRC.
        let seen = m.invites.len();
        m.say(&network, "JOIN #lattice").await;
        let channel = m.invite_after(seen, "the channel room invite").await;
        m.join(&channel).await;
        bob.wait_for("alice's join on IRC", |l| {
            l.starts_with(":alice!") && l.contains("JOIN") && l.contains("#lattice")
        })
        .await;

        // carol joins on IRC while alice is there: her puppet joins the room.
        let carol = Irc::connect(setup.irc_port, "carol").await;
        carol.send("JOIN #lattice").await;
        let carol_mx = format!("@irc_test_carol:{SERVER_NAME}");
        m.until("carol's puppet joining the channel room", |m| {
            m.membership(&channel, &carol_mx)
                .contains(&"join".to_owned())
                .then_some(())
        })
        .await;

        // IRC -> Matrix in the channel, from a puppet of bob's.
        bob.send("PRIVMSG #lattice :hello from irc").await;
        let bob_mx = format!("@irc_test_bob:{SERVER_NAME}");
        m.until("bob's message in the channel room", |m| {
            m.has_body(&channel, &bob_mx, "hello from irc")
                .then_some(())
        })
        .await;
        // Matrix -> IRC in the channel: both IRC users read it.
        m.say(&channel, "hello from matrix").await;
        for irc in [&bob, &carol] {
            irc.wait_for("alice's message on IRC", |l| {
                l.starts_with(":alice!") && l.ends_with("PRIVMSG #lattice :hello from matrix")
            })
            .await;
        }

        // A private message from IRC opens a private room on Matrix.
        let seen = m.invites.len();
        bob.send("PRIVMSG alice :psst, alice").await;
        let private = m.invite_after(seen, "the private chat invite").await;
        m.join(&private).await;
        m.until("bob's private message", |m| {
            m.has_body(&private, &bob_mx, "psst, alice").then_some(())
        })
        .await;
        // The reply goes to bob alone.
        m.say(&private, "psst back").await;
        bob.wait_for("alice's private reply", |l| {
            l.starts_with(":alice!") && l.ends_with("PRIVMSG bob :psst back")
        })
        .await;
        // A private message started from Matrix (QUERY in the network room).
        let seen = m.invites.len();
        m.say(&network, "QUERY carol").await;
        let private2 = m.invite_after(seen, "the private chat with carol").await;
        m.join(&private2).await;
        m.say(&private2, "hi carol, from matrix").await;
        carol
            .wait_for("alice's private message to carol", |l| {
                l.starts_with(":alice!") && l.ends_with("PRIVMSG carol :hi carol, from matrix")
            })
            .await;
        carol.send("PRIVMSG alice :hi alice, from irc").await;
        m.until("carol's private answer", |m| {
            m.has_body(&private2, &carol_mx, "hi alice, from irc")
                .then_some(())
        })
        .await;
        // Nothing private leaked to the other IRC user.
        assert!(
            !carol
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("psst"))
        );
        // Each message once in each room.
        let count = |room: &str, needle: &str| {
            m.bodies(room)
                .iter()
                .filter(|(_, b)| b.contains(needle))
                .count()
        };
        assert_eq!(count(&channel, "hello from irc"), 1);
        assert_eq!(count(&channel, "hello from matrix"), 1);
        assert_eq!(count(&private, "psst, alice"), 1);
        // The bridge never got a request it refused as unauthenticated.
        let (_, metrics) = server.get("/metrics", None).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        assert!(
            metrics.contains("lattice_appservice_events_sent_total{appservice=\"heisenbridge\"}"),
            "{metrics}"
        );
        assert!(
            !metrics.lines().any(|l| l
                .starts_with("lattice_appservice_failures_total{appservice=\"heisenbridge\"}")
                && !l.ends_with(" 0")),
            "{metrics}"
        );
    })
    .await;
    if result.is_err() {
        panic!("timed out; bridge log:\n{}", setup.bridge_log());
    }
    if let Some(mut bridge) = setup.bridge.take() {
        let _ = bridge.kill().await;
    }
}

/// A registration field's value, as the generated YAML writes it
/// (`key: value`).
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .to_owned()
}

/// Lattice holding another `hs_token` than the bridge: the bridge refuses
/// every transaction (and ping) with 401, nothing reaches it, Lattice keeps
/// the events and retries with backoff. Restarted with the right token, Lattice
/// delivers what was queued, once, and the bridge acts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heisenbridge_refuses_a_wrong_hs_token_and_gets_the_queue_once_it_is_right() {
    let (mut setup, alice) = setup(|text| {
        let hs = field(&text, "hs_token");
        text.replace(&hs, "not-the-bridges-hs-token")
    })
    .await;
    let result = tokio::time::timeout(Duration::from_secs(240), async {
        let reg_path = setup.dir.path().join("heisenbridge.yaml");
        let as_token = field(&std::fs::read_to_string(&reg_path).unwrap(), "as_token");
        let mut m = Matrix::new(&setup.server, alice.clone());
        // The bridge's own requests (as_token) work: it opens the control room.
        let control = m.invite_after(0, "the control room invite").await;
        m.join(&control).await;
        m.until("the bridge's help", |m| {
            m.has_body(&control, BOT, "ADDNETWORK").then_some(())
        })
        .await;
        m.say(&control, "ADDNETWORK refused").await;
        // Ping: Lattice reaches the bridge, which refuses the token.
        let (status, body) = setup
            .server
            .post(
                "/_matrix/client/v1/appservice/heisenbridge/ping",
                Some(&as_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["errcode"], "M_BAD_STATUS", "{body}");
        crate::harness::eventually("the bridge refusing transactions", || {
            let log = setup.bridge_log();
            async move {
                log.lines()
                    .any(|l| l.contains("PUT /_matrix/app/v1/transactions/") && l.contains(" 401 "))
            }
        })
        .await;
        let (_, metrics) = setup.server.get("/metrics", None).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{{appservice=\"heisenbridge\"}} ")))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
        };
        assert!(value("lattice_appservice_failures_total") >= 1, "{metrics}");
        assert!(value("lattice_appservice_queue_depth") >= 1, "{metrics}");
        // Nothing was accepted: the bridge never answered the command.
        m.sync().await;
        assert!(!m.has_body(&control, BOT, "Network added"));
        assert!(
            !setup
                .bridge_log()
                .lines()
                .any(|l| l.contains("PUT /_matrix/app/v1/transactions/") && l.contains(" 200 ")),
            "{}",
            setup.bridge_log()
        );

        // The administrator fixes the registration and restarts Lattice.
        let fixed = std::fs::read_to_string(&reg_path).unwrap();
        std::fs::write(setup.dir.path().join("lattice-registration.yaml"), fixed).unwrap();
        setup.server.restart_in_place().await;
        let (status, body) = setup
            .server
            .post(
                "/_matrix/client/v1/appservice/heisenbridge/ping",
                Some(&as_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The queued command reaches the bridge, which answers it once.
        let mut m = Matrix::new(&setup.server, alice.clone());
        m.until("the bridge's answer to the queued command", |m| {
            m.has_body(&control, BOT, "Network added").then_some(())
        })
        .await;
        m.say(&control, "NETWORKS").await;
        m.until("the bridge listing the network", |m| {
            m.bodies(&control)
                .iter()
                .any(|(s, b)| s == BOT && b.contains("refused") && !b.contains("Network added"))
                .then_some(())
        })
        .await;
        let added = m
            .bodies(&control)
            .iter()
            .filter(|(s, b)| s == BOT && b.contains("Network added"))
            .count();
        assert_eq!(added, 1, "{:#?}", m.bodies(&control));
    })
    .await;
    if result.is_err() {
        panic!("timed out; bridge log:\n{}", setup.bridge_log());
    }
    if let Some(mut bridge) = setup.bridge.take() {
        let _ = bridge.kill().await;
    }
}
