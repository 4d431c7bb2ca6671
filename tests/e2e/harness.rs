//! Test harness: a real PostgreSQL and a real Lattice on a random loopback port.
//!
//! The PostgreSQL server is `DATABASE_URL` when set; otherwise a private cluster
//! started once per test binary under a temporary directory (as the `postgres` OS
//! user when running as root), which shuts down when the test process exits. Each
//! test gets a fresh database cloned from a migrated template.

use std::sync::OnceLock;

use lattice::{
    config::{Config, Listener, Resource},
    server::Server,
    service::AppState,
    storage::{Database, embedded_pg::EmbeddedPostgres},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

/// Where the test databases live: connection options for the maintenance database.
struct PgServer {
    admin: PgConnectOptions,
    template: String,
}

static PG: OnceLock<PgServer> = OnceLock::new();
static TEMPLATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_server() -> &'static PgServer {
    PG.get_or_init(|| {
        let admin: PgConnectOptions = match std::env::var("DATABASE_URL") {
            Ok(url) => url.parse().expect("DATABASE_URL parses"),
            Err(_) => start_private_cluster(),
        };
        let template = format!("lattice_tmpl_{}", std::process::id());
        // Build the template on a runtime of its own, once.
        let admin2 = admin.clone();
        let template2 = template.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(prepare_template(admin2, &template2));
        })
        .join()
        .expect("template preparation");
        PgServer { admin, template }
    })
}

/// Starts a private cluster on a thread that lives as long as the test process,
/// so the postmaster (which dies with that thread) outlives every test.
fn start_private_cluster() -> PgConnectOptions {
    remove_stale_clusters();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dir = std::env::temp_dir().join(format!("lattice-test-pg-{}", std::process::id()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pg = rt
            .block_on(EmbeddedPostgres::start_with(&dir, "postgres", true))
            .expect("starting the private test cluster");
        tx.send(pg.connect_options().database("postgres")).unwrap();
        // Park for the rest of the process; the cluster stops when we exit.
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("private cluster started")
}

/// Deletes the private clusters of earlier test processes that are gone. Each
/// holds every database its run made (gigabytes for the e2e suite), and the
/// cluster stops with its process but its directory stays: without this, runs
/// fill the disk, and a full disk fails whatever test comes next.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("lattice-test-pg-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

async fn prepare_template(admin: PgConnectOptions, template: &str) {
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .expect("connect to test PostgreSQL");
    // Drop what earlier, crashed runs left behind (their process is gone).
    let stale: Vec<String> = sqlx::query_scalar(
        // `_` is LIKE's any-character: escaped, so a developer's `lattice_tokens`
        // (the brief's `lattice_NAME`) is not taken for a test database.
        r"select datname from pg_database where datname like 'lattice\_tmpl\_%' or datname like 'lattice\_t\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for db in stale {
        let pid: Option<i32> = db.split('_').nth(2).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = conn
                .execute(format!("drop database if exists \"{db}\" with (force)").as_str())
                .await;
        }
    }
    conn.execute(format!("drop database if exists {template}").as_str())
        .await
        .unwrap();
    conn.execute(
        format!("create database {template} encoding 'UTF8' lc_collate 'C' lc_ctype 'C' template template0")
            .as_str(),
    )
    .await
    .unwrap();
    let mut tmpl = PgConnection::connect_with(&admin.clone().database(template))
        .await
        .unwrap();
    lattice::storage::MIGRATOR
        .run(&mut tmpl)
        .await
        .expect("migrations apply");
    tmpl.close().await.unwrap();
}

/// A fresh database for one test.
pub async fn fresh_database() -> PgConnectOptions {
    let server = pg_server();
    let name = format!(
        "lattice_t_{}_{}",
        std::process::id(),
        lattice::domain::token::random_string(10).to_lowercase()
    );
    let mut conn = PgConnection::connect_with(&server.admin).await.unwrap();
    // CREATE DATABASE … TEMPLATE needs the template to have no other sessions.
    let _guard = TEMPLATE_LOCK.lock().await;
    conn.execute(format!("create database {name} template {}", server.template).as_str())
        .await
        .unwrap();
    server.admin.clone().database(&name)
}

/// A fresh database, as a `database.url`.
pub async fn fresh_database_url() -> String {
    to_url(&fresh_database().await)
}

/// The URL form of connection options, for `database.url`.
pub fn to_url(options: &PgConnectOptions) -> String {
    let host = options.get_host();
    let db = options.get_database().unwrap();
    let user = options.get_username();
    if let Some(socket) = options.get_socket() {
        format!(
            "postgres://{user}@localhost/{db}?host={}&port={}",
            socket.display(),
            options.get_port()
        )
    } else {
        format!("postgres://{user}@{host}:{}/{db}", options.get_port())
    }
}

/// A homeserver's client API at `base`: what tests call, on Lattice or Synapse.
pub struct ClientApi {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct TestServer {
    /// The client API (reached through `Deref`: `server.get(…)`, `server.base`).
    pub api: ClientApi,
    pub state: AppState,
    server: Option<Server>,
    db: Option<Database>,
    /// The data directory (media) of servers started by `start_with`.
    _data: Option<tempfile::TempDir>,
}

pub const SERVER_NAME: &str = "test.local";

/// Settings tests start from: open registration, cheap argon2, no rate limits.
pub fn test_config() -> Config {
    let mut config = Config {
        server_name: SERVER_NAME.into(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
            resources: vec![Resource::Client, Resource::Federation],
            tls_certificate: None,
            tls_private_key: None,
        }],
        ..Default::default()
    };
    config.registration.open = true;
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
    config.rate_limits.enabled = false;
    config
}

/// The development CA and a certificate for `localhost` / `127.0.0.1`, written
/// once per test process; every federating test server uses and trusts them.
pub fn dev_tls() -> &'static lattice::federation::tls::DevCertificates {
    static TLS: OnceLock<(tempfile::TempDir, lattice::federation::tls::DevCertificates)> =
        OnceLock::new();
    &TLS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tls dir");
        let certs = lattice::federation::tls::generate_dev_certificates(
            dir.path(),
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
        )
        .expect("dev certificates");
        (dir, certs)
    })
    .1
}

/// A free loopback port for a listener started later (a federating server's
/// name carries its port, so it must be known before the server starts).
/// Taken below Linux's ephemeral range (32768+), where `bind(…:0)` — every other
/// test server's way of listening — never lands, and handed out once per test
/// process, so nothing else takes it in the window before it is bound.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a per-process offset, so consecutive runs use different ports.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % 12_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl TestServer {
    /// A server named `localhost:<port>` that federates: client API on plain HTTP
    /// (`base`), federation over TLS on `<port>` with the dev certificate, peers'
    /// certificates checked against the dev CA, loopback allowed.
    pub async fn start_federating() -> Self {
        Self::start_federating_with(|_| {}).await
    }

    pub async fn start_federating_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::federating(tweak, None).await
    }

    /// [`start_federating`](Self::start_federating) on a clock the test moves
    /// (backoff schedules walked without waiting for them).
    pub async fn start_federating_on(clock: &lattice::clock::ManualClock) -> Self {
        Self::federating(|_| {}, Some(clock.clock())).await
    }

    async fn federating(
        tweak: impl FnOnce(&mut Config),
        clock: Option<lattice::clock::Clock>,
    ) -> Self {
        let tls = dev_tls();
        let port = free_port();
        Self::start_with_clock(clock, |config| {
            config.server_name = format!("localhost:{port}");
            config.listeners = vec![
                Listener {
                    bind: "127.0.0.1:0".parse().unwrap(),
                    resources: vec![Resource::Client],
                    tls_certificate: None,
                    tls_private_key: None,
                },
                Listener {
                    bind: format!("127.0.0.1:{port}").parse().unwrap(),
                    resources: vec![Resource::Federation],
                    tls_certificate: Some(tls.cert.clone()),
                    tls_private_key: Some(tls.key.clone()),
                },
            ];
            config.federation.extra_ca_files = vec![tls.ca.clone()];
            config.federation.ip_range_allowlist = vec!["127.0.0.0/8".into(), "::1/128".into()];
            config.federation.trusted_key_servers = Vec::new();
            tweak(config);
        })
        .await
    }

    /// The server name (`localhost:<port>` for federating servers).
    pub fn name(&self) -> &str {
        self.state.server_name.as_str()
    }

    /// An HTTPS client for this server's federation port, trusting the dev CA.
    pub fn federation_url(&self) -> String {
        format!("https://{}", self.name())
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_clock(None, tweak).await
    }

    async fn start_with_clock(
        clock: Option<lattice::clock::Clock>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let data = tempfile::tempdir().expect("data dir");
        let mut config = test_config();
        config.data_dir = data.path().to_owned();
        tweak(&mut config);
        config.database.url = Some(fresh_database_url().await);
        config.database.max_connections = 5;
        let mut server = Self::start_config_on(config, clock).await;
        server._data = Some(data);
        server
    }

    pub async fn start_config(config: Config) -> Self {
        Self::start_config_on(config, None).await
    }

    async fn start_config_on(config: Config, clock: Option<lattice::clock::Clock>) -> Self {
        let db = Database::open(&config).await.expect("database opens");
        db.migrate().await.expect("migrations");
        let mut state = AppState::load(config, db.pool.clone())
            .await
            .expect("state loads");
        if let Some(clock) = clock {
            state.clock = clock;
        }
        let server = Server::start(state.clone()).await.expect("server starts");
        let addr = server.addrs[0];
        Self {
            api: ClientApi::new(format!("http://{addr}")),
            state,
            server: Some(server),
            db: Some(db),
            _data: None,
        }
    }

    /// Stops the server and starts it again on the same database and settings
    /// (the client listener gets a new port; fixed ports are bound again).
    pub async fn restart(mut self) -> Self {
        let config = Config::clone(&self.state.config);
        let data = self._data.take();
        self.stop().await;
        let mut server = Self::start_config(config).await;
        server._data = data;
        server
    }

    /// [`restart`](Self::restart) through a reference, for a server kept in
    /// a struct.
    pub async fn restart_in_place(&mut self) {
        let config = Config::clone(&self.state.config);
        let data = self._data.take();
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if let Some(db) = self.db.take() {
            db.close().await;
        }
        *self = Self::start_config(config).await;
        self._data = data;
    }

    /// Stops the server, keeping its database and settings, to be started again
    /// later with [`Stopped::start`] (a server that was down for a while).
    pub async fn stop_for_now(mut self) -> Stopped {
        let config = Config::clone(&self.state.config);
        let data = self._data.take();
        self.stop().await;
        Stopped { config, data }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if let Some(db) = self.db.take() {
            db.close().await;
        }
    }

    /// How many waits are parked on new events right now: long-polls (`/sync`,
    /// sliding sync, `/events`) and the push worker's idle wait. Take it before
    /// sending a long-poll, then [`TestServer::until_parked`].
    pub fn parked(&self) -> usize {
        self.state.notifier.waiting()
    }

    /// Waits (up to 30 s) until more waits are parked on new events than
    /// `before`: the long-poll sent since is waiting, so what happens next
    /// wakes it rather than being found when it starts.
    pub async fn until_parked(&self, before: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.parked() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no long-poll parked within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// A server stopped by [`TestServer::stop_for_now`].
pub struct Stopped {
    config: Config,
    data: Option<tempfile::TempDir>,
}

impl Stopped {
    /// Starts it again on the same database, settings and fixed ports.
    pub async fn start(self) -> TestServer {
        let mut server = TestServer::start_config(self.config).await;
        server._data = self.data;
        server
    }
}

impl std::ops::Deref for TestServer {
    type Target = ClientApi;

    fn deref(&self) -> &ClientApi {
        &self.api
    }
}

impl ClientApi {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request; returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// The status of `GET /rooms/{room}/event/{event_id}` for `who`: whether
    /// the event is in the room and visible to them.
    pub async fn event_status(&self, who: &Login, room: &str, event_id: &str) -> StatusCode {
        self.get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(event_id)),
            Some(&who.access_token),
        )
        .await
        .0
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    /// Registers with open registration (two-step UIA, as Element does) and returns
    /// the login.
    pub async fn register(&self, username: &str, password: &str) -> Login {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let session = body["session"].as_str().expect("UIA session").to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": username,
                    "password": password,
                    "auth": { "type": "m.login.dummy", "session": session },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Login::from_json(&body)
    }

    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": username },
                "password": password,
            }),
        )
        .await
    }

    pub async fn whoami(&self, token: &str) -> (StatusCode, Value) {
        self.get("/_matrix/client/v3/account/whoami", Some(token))
            .await
    }

    /// Creates a room (asserting success) and returns its id.
    pub async fn create_room(&self, who: &Login, body: Value) -> String {
        let (status, created) = self
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&who.access_token),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        created["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Joins a room (asserting success).
    pub async fn join(&self, who: &Login, room: &str) {
        let (status, body) = self
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&who.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Sets an HTTP pusher with pushkey `k1` for the push gateway at `url`
    /// (asserting success).
    pub async fn set_http_pusher(&self, who: &Login, url: &str) {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/pushers/set",
                Some(&who.access_token),
                json!({
                    "pushkey": "k1", "kind": "http", "app_id": "org.example.app",
                    "app_display_name": "Example", "device_display_name": "Phone",
                    "lang": "en", "data": { "url": url },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Sends an `m.room.message` (asserting success) and returns its event id.
    pub async fn send_message(&self, who: &Login, room: &str, content: Value) -> String {
        let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/h{txn}"),
                Some(&who.access_token),
                content,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["event_id"].as_str().expect("event_id").to_owned()
    }
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Login {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

impl Login {
    pub fn from_json(body: &Value) -> Self {
        Self {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            access_token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }
}

pub fn user_id(localpart: &str) -> String {
    format!("@{localpart}:{SERVER_NAME}")
}

/// The body of a password UIA stage for `user`.
pub fn password_auth(user: &str, password: &str, session: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
        "session": session,
    })
}

/// Percent-encodes a path segment (room IDs, aliases, user IDs).
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Polls `check` every 100 ms for up to 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The room's current state as `who` reads it: (type, state_key) → event ID.
pub async fn current_state(
    server: &ClientApi,
    who: &Login,
    room: &str,
) -> std::collections::BTreeMap<(String, String), String> {
    let (status, state) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["state_key"].as_str().unwrap().to_owned(),
                ),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The bodies of the `m.room.message` events a user's server shows in a room.
pub async fn messages(server: &ClientApi, token: &str, room: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(room)
            ),
            Some(token),
        )
        .await;
    if status != StatusCode::OK {
        return Vec::new();
    }
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

/// Waits until `reader` on `server` reads a message with `body` in `room`
/// (through `/messages`, as a client would).
pub async fn wait_for_message(server: &ClientApi, reader: &Login, room: &str, body: &str) {
    eventually(&format!("{body:?} readable"), || async {
        messages(server, &reader.access_token, room)
            .await
            .iter()
            .any(|m| m == body)
    })
    .await;
}

/// Reads a spawned `lattice` binary's log (stderr, with `lattice::server=info`)
/// until it reports the address it listens on. Listening on port 0 and reading
/// the address back avoids racing other tests for a "free" port.
pub async fn listening_addr(
    stderr: tokio::process::ChildStderr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(stderr).lines();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
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
            // Keep draining the log so the child never blocks on a full pipe.
            let drain =
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (addr, drain);
        }
    }
}

/// Runs one of the project's set-up scripts (`scripts/<name>`: installs a tool
/// on first use and prints where it is) and returns its trimmed output.
pub fn setup_script(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts").join(name))
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
