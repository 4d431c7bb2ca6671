//! `lattice-load`: the side-by-side load generator. Not a test: it prints figures.
//!
//! It speaks only the Client-Server API, so the same workload runs against any
//! homeserver: give it two (`--target lattice=http://127.0.0.1:8008@PID
//! --target synapse=http://127.0.0.1:8009@PID`) and each workload runs against
//! both, one after the other, in this invocation; the table gives every figure
//! for each server and the ratio first/second. With `@PID` the resident set of
//! that process is reported: idle (before any load), after the load, and peak.
//!
//! Every user is registered before anything is timed (open registration with
//! the dummy stage), so password hashing is outside the timed phases. The
//! servers must not rate-limit the load (raise their limits equally).
//!
//! Workloads (`--workloads`, default all):
//! * `send`: sequential sends into one room (latency p50/p95); CLIENTS clients
//!   sending MESSAGES messages each concurrently into one room, and each into a
//!   room of its own (events/s, p50/p95);
//! * `sync`: wake-up latency (a send until another user's long-poll `/sync`
//!   returns it); initial `/sync` of a user in SYNC_ROOMS rooms with history;
//!   incremental `/sync` after EVENTS events in a room;
//! * `messages`: paging back through EVENTS events with `/messages`;
//! * `rooms`: `/createRoom` rate; MEMBERS users joining one room (joins/s and
//!   latency p50/p95; later joins are into a bigger room);
//! * `appservice` (only for the targets given `--appservice NAME=ADDR`):
//!   this program is an application service listening on ADDR that
//!   acknowledges each transaction at once; a user of its namespace is in a
//!   room where CLIENTS clients send MESSAGES messages each concurrently, and
//!   the figures are the events/s sent and the events/s delivered to the
//!   appservice (from the first send until the last event arrived), side by
//!   side. The target must be started with the registration
//!   `benches/side_by_side.py` writes (tokens [`AS_TOKEN`] and [`HS_TOKEN`],
//!   users `@loadas_.*`).
//!
//! `--json FILE` writes the rows as JSON (used by `scripts/bench-synapse`).

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{StreamExt, stream};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// A homeserver to load, as NAME=URL or NAME=URL@PID. Give two for ratios.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrent clients in the send workloads.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Messages per client in the concurrent send workloads.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Sequential sends.
    #[arg(long, default_value_t = 200)]
    sequential: usize,
    /// Sync wake-ups measured.
    #[arg(long, default_value_t = 100)]
    wakeups: usize,
    /// Rooms of the user whose initial sync is timed.
    #[arg(long, default_value_t = 300)]
    sync_rooms: usize,
    /// Messages of history in each of those rooms.
    #[arg(long, default_value_t = 5)]
    sync_history: usize,
    /// Events behind an incremental sync, and paged through with /messages.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Rooms created in the /createRoom workload.
    #[arg(long, default_value_t = 50)]
    create_rooms: usize,
    /// Users joining one room in the join workload.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Repetitions of the single-request figures (median reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Workloads to run: send, sync, messages, rooms, appservice
    /// (comma-separated) or all.
    #[arg(long, default_value = "all")]
    workloads: String,
    /// Where to listen as the appservice of a target, as NAME=ADDR (the
    /// target's registration sends its transactions there). The appservice
    /// workload runs against the targets that have one.
    #[arg(long = "appservice")]
    appservices: Vec<String>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    fn runs(&self, workload: &str) -> bool {
        self.workloads == "all" || self.workloads.split(',').any(|w| w.trim() == workload)
    }
}

/// Requests run at most this many at a time while setting up (registering users,
/// filling rooms), so set-up does not swamp either server.
const SETUP_CONCURRENCY: usize = 8;

/// One homeserver under load.
struct Target {
    name: String,
    base: String,
    pid: Option<u32>,
    http: reqwest::Client,
    /// A prefix making this run's user names unique on a long-lived server.
    run: String,
}

impl Target {
    fn parse(spec: &str, run: &str) -> anyhow::Result<Self> {
        let (name, rest) = spec
            .split_once('=')
            .context("a target is NAME=URL or NAME=URL@PID")?;
        let (base, pid) = match rest.rsplit_once('@') {
            Some((base, pid)) => (base, Some(pid.parse().context("PID")?)),
            None => (rest, None),
        };
        Ok(Self {
            name: name.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            pid,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .timeout(Duration::from_secs(300))
                .build()?,
            run: run.to_owned(),
        })
    }

    /// Resident set and its peak, in MiB, of the target's process.
    fn memory(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let field = |key: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The anonymous part of the target's resident set (`RssAnon`), in MiB.
    fn anonymous_memory(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    async fn register(&self, local: &str) -> anyhow::Result<Client> {
        let url = format!("{}/_matrix/client/v3/register", self.base);
        let username = format!("{}{local}", self.run);
        let body = json!({ "username": username, "password": "bench-password" });
        let first: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let session = first["session"]
            .as_str()
            .with_context(|| format!("register {username}: {first}"))?;
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        let resp: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let token = resp["access_token"]
            .as_str()
            .with_context(|| format!("register {username}: {resp}"))?;
        Ok(Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: token.to_owned(),
        })
    }

    async fn register_many(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<Arc<Client>>> {
        let mut users: Vec<(usize, Arc<Client>)> = stream::iter(0..n)
            .map(|i| async move {
                self.register(&format!("{prefix}{i}"))
                    .await
                    .map(|c| (i, Arc::new(c)))
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        users.sort_by_key(|(i, _)| *i);
        Ok(users.into_iter().map(|(_, c)| c).collect())
    }
}

/// A logged-in user of one target.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Times a server answered 429 (it should not: limits must be raised).
static RATE_LIMITED: AtomicUsize = AtomicUsize::new(0);

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        loop {
            let mut req = self
                .http
                .request(
                    method.clone(),
                    format!("{}/_matrix/client/v3{path}", self.base),
                )
                .bearer_auth(&self.token);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if status.as_u16() == 429 {
                RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
                let wait = value["retry_after_ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            if !status.is_success() {
                bail!("{method} {path}: {status} {value}");
            }
            return Ok(value);
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(&body)).await
    }

    async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let resp = self.post("/createRoom", body).await?;
        Ok(resp["room_id"].as_str().context("room_id")?.to_owned())
    }

    async fn join(&self, room: &str) -> anyhow::Result<()> {
        self.post(&format!("/join/{}", enc(room)), json!({}))
            .await?;
        Ok(())
    }

    /// Sends a message; returns how long the server took to answer.
    async fn send(&self, room: &str, txn: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let body = json!({ "msgtype": "m.text", "body": format!("load message {txn}") });
        let path = format!("/rooms/{}/send/m.room.message/{txn}", enc(room));
        self.call(Method::PUT, &path, Some(&body)).await?;
        Ok(start.elapsed())
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Which way a figure should move.
#[derive(Clone, Copy, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Better {
    Lower,
    Higher,
}

#[derive(serde::Serialize)]
struct Row {
    workload: String,
    figure: String,
    unit: &'static str,
    better: Better,
    /// One value per target, in target order (`None`: the target failed).
    values: Vec<Option<f64>>,
}

/// The figures of one workload, as one target produced them.
type Figures = Vec<(String, &'static str, Better, f64)>;

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, workload: &str, target: usize, targets: usize, figures: Figures) {
        for (figure, unit, better, value) in figures {
            let at = match self
                .rows
                .iter()
                .position(|r| r.workload == workload && r.figure == figure)
            {
                Some(at) => at,
                None => {
                    self.rows.push(Row {
                        workload: workload.to_owned(),
                        figure,
                        unit,
                        better,
                        values: vec![None; targets],
                    });
                    self.rows.len() - 1
                }
            };
            self.rows[at].values[target] = Some(value);
        }
    }

    fn render(&self, names: &[String]) -> String {
        let mut out = String::new();
        let _ = write!(out, "| workload | figure |");
        for n in names {
            let _ = write!(out, " {n} |");
        }
        if names.len() == 2 {
            let _ = write!(out, " {}/{} | better |", names[0], names[1]);
        }
        out.push('\n');
        out.push_str("|---|---|");
        for _ in names {
            out.push_str("---:|");
        }
        if names.len() == 2 {
            out.push_str("---:|---|");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} | {} ({}) |", row.workload, row.figure, row.unit);
            for v in &row.values {
                match v {
                    Some(v) => {
                        let _ = write!(out, " {} |", number(*v));
                    }
                    None => out.push_str(" failed |"),
                }
            }
            if let [Some(a), Some(b)] = row.values[..] {
                let better = match row.better {
                    Better::Lower => "lower",
                    Better::Higher => "higher",
                };
                let ratio = if b == 0.0 { f64::NAN } else { a / b };
                let _ = write!(out, " {ratio:.2} | {better} |");
            } else if names.len() == 2 {
                out.push_str(" | |");
            }
            out.push('\n');
        }
        out
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    millis(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

/// p50 and p95 figures of a set of latencies, named after `what`.
fn latency_figures(what: &str, mut lat: Vec<Duration>) -> Figures {
    lat.sort();
    vec![
        (
            format!("{what} p50"),
            "ms",
            Better::Lower,
            percentile(&lat, 0.5),
        ),
        (
            format!("{what} p95"),
            "ms",
            Better::Lower,
            percentile(&lat, 0.95),
        ),
    ]
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    percentile(&v, 0.5)
}

/// The users one target's workloads share, registered before anything is timed.
struct Users {
    clients: Vec<Arc<Client>>,
    members: Vec<Arc<Client>>,
    syncer: Arc<Client>,
    /// The target, for the appservice workload: its HTTP client and base URL,
    /// this run's prefix, and where to listen as its appservice.
    http: reqwest::Client,
    base: String,
    run: String,
    appservice: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = format!("load{:06x}", rand::random::<u32>() & 0xff_ffff);
    let targets = args
        .targets
        .iter()
        .map(|t| Target::parse(t, &run))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let mut table = Table::default();
    let n = targets.len();

    for (i, t) in targets.iter().enumerate() {
        if let Some((rss, _)) = t.memory() {
            let mut rows = vec![("idle RSS".into(), "MiB", Better::Lower, rss)];
            // The process's own memory, without the pages of mapped files
            // (the binary's code, shared libraries), which idle RSS counts
            // and the kernel's page cache mostly decides.
            if let Some(anon) = t.anonymous_memory() {
                rows.push(("idle RSS, anonymous".into(), "MiB", Better::Lower, anon));
            }
            table.add("memory", i, n, rows);
        }
    }

    let mut listen = std::collections::HashMap::new();
    for spec in &args.appservices {
        let (name, addr) = spec.split_once('=').context("--appservice is NAME=ADDR")?;
        anyhow::ensure!(
            names.iter().any(|n| n == name),
            "--appservice {name}: no such target"
        );
        listen.insert(
            name.to_owned(),
            addr.parse::<std::net::SocketAddr>()
                .context("--appservice address")?,
        );
    }

    let mut users = Vec::new();
    for t in &targets {
        let start = Instant::now();
        let clients = t.register_many("c", args.clients.max(2)).await?;
        let members = if args.runs("rooms") {
            t.register_many("m", args.members).await?
        } else {
            Vec::new()
        };
        let syncer = Arc::new(t.register("syncer").await?);
        eprintln!(
            "{}: {} users registered in {:.1} s (not timed)",
            t.name,
            clients.len() + members.len() + 1,
            start.elapsed().as_secs_f64()
        );
        users.push(Users {
            clients,
            members,
            syncer,
            http: t.http.clone(),
            base: t.base.clone(),
            run: t.run.clone(),
            appservice: listen.get(&t.name).copied(),
        });
    }

    type Workload = for<'a> fn(
        &'a Args,
        &'a Users,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<Figures>> + 'a>,
    >;
    let workloads: [(&str, &str, Workload); 8] = [
        ("send", "send, sequential", |a, u| {
            Box::pin(send_sequential(a, u))
        }),
        ("send", "send, concurrent", |a, u| {
            Box::pin(send_concurrent(a, u))
        }),
        ("sync", "sync wake-up", |a, u| Box::pin(sync_wakeup(a, u))),
        ("sync", "sync, initial", |a, u| Box::pin(initial_sync(a, u))),
        ("sync", "sync, incremental", |a, u| {
            Box::pin(incremental_sync(a, u))
        }),
        ("messages", "/messages", |a, u| Box::pin(pagination(a, u))),
        ("rooms", "rooms", |a, u| Box::pin(rooms(a, u))),
        ("appservice", "appservice delivery", |a, u| {
            Box::pin(appservice_delivery(a, u))
        }),
    ];
    for (group, name, workload) in workloads {
        if !args.runs(group) {
            continue;
        }
        for (i, t) in targets.iter().enumerate() {
            if group == "appservice" && users[i].appservice.is_none() {
                continue;
            }
            let start = Instant::now();
            match workload(&args, &users[i]).await {
                Ok(figures) => table.add(name, i, n, figures),
                Err(e) => eprintln!("{}: {name} failed: {e:#}", t.name),
            }
            eprintln!("{}: {name}: {:.1} s", t.name, start.elapsed().as_secs_f64());
        }
    }

    // Let both servers settle, then read their memory again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (i, t) in targets.iter().enumerate() {
        if let Some((rss, peak)) = t.memory() {
            table.add(
                "memory",
                i,
                n,
                vec![
                    ("RSS after the load".into(), "MiB", Better::Lower, rss),
                    ("peak RSS".into(), "MiB", Better::Lower, peak),
                ],
            );
        }
    }

    println!("{}", table.render(&names));
    let limited = RATE_LIMITED.load(Ordering::Relaxed);
    if limited > 0 {
        println!("warning: {limited} requests were rate-limited (429) and retried");
    }
    if let Some(path) = &args.json {
        let doc = json!({ "targets": names, "rows": table.rows, "rate_limited": limited });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}

/// One room all `clients` are in, created for a workload.
async fn shared_room(clients: &[Arc<Client>]) -> anyhow::Result<String> {
    let room = clients[0]
        .create_room(json!({ "preset": "public_chat" }))
        .await?;
    for c in &clients[1..] {
        c.join(&room).await?;
    }
    Ok(room)
}

async fn send_sequential(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let room = shared_room(&users.clients[..1]).await?;
    let sender = &users.clients[0];
    let start = Instant::now();
    let mut lat = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        lat.push(sender.send(&room, &format!("seq{i}")).await?);
    }
    let rate = args.sequential as f64 / start.elapsed().as_secs_f64();
    let mut figures = latency_figures("latency", lat);
    figures.push(("throughput".into(), "events/s", Better::Higher, rate));
    Ok(figures)
}

/// Every client sends `messages` messages at once, client `i` into `rooms[i]`.
async fn send_all(
    clients: &[Arc<Client>],
    rooms: &[String],
    messages: usize,
    tag: &str,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .zip(rooms)
        .enumerate()
        .map(|(i, (c, room))| {
            let (c, room, tag) = (c.clone(), room.clone(), tag.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(messages);
                for m in 0..messages {
                    lat.push(c.send(&room, &format!("{tag}{i}-{m}")).await?);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((lat, start.elapsed()))
}

async fn send_concurrent(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let clients = &users.clients;
    let n = clients.len();
    let mut figures = Figures::new();

    let room = shared_room(clients).await?;
    let (lat, elapsed) = send_all(clients, &vec![room; n], args.messages, "one").await?;
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    figures.push((
        format!("{n} clients, one room"),
        "events/s",
        Better::Higher,
        rate,
    ));
    figures.extend(latency_figures("one room, latency", lat));

    let mut rooms = Vec::with_capacity(n);
    for c in clients {
        rooms.push(c.create_room(json!({})).await?);
    }
    let (lat, elapsed) = send_all(clients, &rooms, args.messages, "many").await?;
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    figures.push((
        format!("{n} clients, own rooms"),
        "events/s",
        Better::Higher,
        rate,
    ));
    figures.extend(latency_figures("own rooms, latency", lat));
    Ok(figures)
}

/// A sync filter for one room's timeline, with presence left out.
fn room_filter(room: &str, limit: usize) -> String {
    enc(&json!({
        "room": { "rooms": [room], "timeline": { "limit": limit } },
        "presence": { "types": [] },
    })
    .to_string())
}

fn next_batch(body: &Value) -> anyhow::Result<String> {
    Ok(body["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned())
}

/// Whether a sync response holds a message with this transaction's body.
fn holds(body: &Value, room: &str, txn: &str) -> bool {
    let want = format!("load message {txn}");
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| {
            events
                .iter()
                .any(|e| e["content"]["body"].as_str() == Some(want.as_str()))
        })
}

async fn sync_wakeup(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let (sender, reader) = (users.clients[0].clone(), users.clients[1].clone());
    let room = shared_room(&users.clients[..2]).await?;
    let filter = room_filter(&room, 10);
    let mut since = next_batch(&reader.get(&format!("/sync?filter={filter}")).await?)?;
    let mut lat = Vec::with_capacity(args.wakeups);
    for i in 0..args.wakeups {
        let txn = format!("wake{i}");
        let poll = {
            let (reader, room, txn, filter) =
                (reader.clone(), room.clone(), txn.clone(), filter.clone());
            let mut since = since.clone();
            tokio::spawn(async move {
                // Anything else (receipts, typing) may wake it first: poll on.
                loop {
                    let path = format!("/sync?since={since}&timeout=30000&filter={filter}");
                    let body = reader.get(&path).await?;
                    since = next_batch(&body)?;
                    if holds(&body, &room, &txn) {
                        return anyhow::Ok((Instant::now(), since));
                    }
                }
            })
        };
        // Give the long poll time to park on the server.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        sender.send(&room, &txn).await?;
        let (woke, next) = poll.await??;
        lat.push(woke - start);
        since = next;
    }
    Ok(latency_figures("send to long-poll return", lat))
}

async fn initial_sync(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let syncer = &users.syncer;
    let setup = Instant::now();
    stream::iter(0..args.sync_rooms)
        .map(|r| async move {
            let room = syncer
                .create_room(json!({ "name": format!("room {r}"), "topic": "load" }))
                .await?;
            for m in 0..args.sync_history {
                syncer.send(&room, &format!("h{r}-{m}")).await?;
            }
            anyhow::Ok(())
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    eprintln!(
        "  set-up: {} rooms x {} messages in {:.1} s (not timed)",
        args.sync_rooms,
        args.sync_history,
        setup.elapsed().as_secs_f64()
    );
    // A different filter each time: servers that cache a response per request
    // (Synapse does, for two minutes) must compute every one.
    let mut times = Vec::new();
    for i in 0..args.repeat {
        let filter = enc(&json!({ "room": { "timeline": { "limit": 10 + i } } }).to_string());
        let start = Instant::now();
        let body = syncer.get(&format!("/sync?filter={filter}")).await?;
        times.push(start.elapsed());
        let rooms = body["rooms"]["join"].as_object().map_or(0, |r| r.len());
        anyhow::ensure!(rooms >= args.sync_rooms, "initial sync held {rooms} rooms");
    }
    Ok(vec![(
        format!("{} rooms, median of {}", args.sync_rooms, args.repeat),
        "ms",
        Better::Lower,
        median(times),
    )])
}

/// Sends `events` messages into `room` from all clients at once (not timed).
async fn fill(clients: &[Arc<Client>], room: &str, events: usize, tag: &str) -> anyhow::Result<()> {
    let per = events.div_ceil(clients.len());
    let mut left = events;
    let mut rooms = Vec::new();
    let mut senders = Vec::new();
    for c in clients {
        if left == 0 {
            break;
        }
        senders.push(c.clone());
        rooms.push(room.to_owned());
        left = left.saturating_sub(per);
    }
    // The last sender may send a few more than `events` in all; fine for load.
    send_all(&senders, &rooms, per, tag).await?;
    Ok(())
}

async fn incremental_sync(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let clients = &users.clients;
    let reader = &clients[1];
    let room = shared_room(clients).await?;
    let mut times = Vec::new();
    for i in 0..args.repeat {
        let filter = enc(&json!({ "room": { "timeline": { "limit": 10 + i } } }).to_string());
        let since = next_batch(&reader.get(&format!("/sync?filter={filter}")).await?)?;
        fill(clients, &room, args.events, &format!("inc{i}-")).await?;
        let start = Instant::now();
        let body = reader
            .get(&format!("/sync?since={since}&timeout=0&filter={filter}"))
            .await?;
        times.push(start.elapsed());
        anyhow::ensure!(
            body["rooms"]["join"][&room]["timeline"]["limited"] == json!(true),
            "incremental sync after {} events is not limited",
            args.events
        );
    }
    Ok(vec![(
        format!("after {} events, median of {}", args.events, args.repeat),
        "ms",
        Better::Lower,
        median(times),
    )])
}

async fn pagination(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let clients = &users.clients;
    let room = shared_room(clients).await?;
    fill(clients, &room, args.events, "page").await?;
    let reader = &clients[1];
    let mut times = Vec::new();
    for _ in 0..args.repeat {
        let start = Instant::now();
        let mut seen = 0;
        let mut from: Option<String> = None;
        while seen < args.events {
            let mut path = format!("/rooms/{}/messages?dir=b&limit=100", enc(&room));
            if let Some(from) = &from {
                path.push_str(&format!("&from={}", enc(from)));
            }
            let page = reader.get(&path).await?;
            let chunk = page["chunk"].as_array().map_or(0, |c| c.len());
            seen += chunk;
            if seen >= args.events {
                break;
            }
            match page["end"].as_str() {
                Some(end) if chunk > 0 => from = Some(end.to_owned()),
                _ => bail!("/messages ended after {seen} events"),
            }
        }
        times.push(start.elapsed());
    }
    Ok(vec![(
        format!(
            "{} events in pages of 100, median of {}",
            args.events, args.repeat
        ),
        "ms",
        Better::Lower,
        median(times),
    )])
}

async fn rooms(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let creator = &users.clients[2 % users.clients.len()];
    let start = Instant::now();
    let mut lat = Vec::with_capacity(args.create_rooms);
    for i in 0..args.create_rooms {
        let t = Instant::now();
        creator
            .create_room(json!({ "preset": "private_chat", "name": format!("created {i}") }))
            .await?;
        lat.push(t.elapsed());
    }
    let rate = args.create_rooms as f64 / start.elapsed().as_secs_f64();
    let mut figures: Figures = vec![(
        "/createRoom, sequential".into(),
        "rooms/s",
        Better::Higher,
        rate,
    )];
    figures.extend(latency_figures("/createRoom latency", lat));

    let room = creator
        .create_room(json!({ "preset": "public_chat" }))
        .await?;
    let start = Instant::now();
    let lat: Vec<Duration> = stream::iter(&users.members)
        .map(|m| {
            let room = room.clone();
            async move {
                let t = Instant::now();
                m.join(&room).await?;
                anyhow::Ok(t.elapsed())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let n = users.members.len();
    figures.push((
        format!("{n} users join one room, {SETUP_CONCURRENCY} at a time"),
        "joins/s",
        Better::Higher,
        rate,
    ));
    figures.extend(latency_figures("join latency", lat));
    // A member's view of the full room.
    let mut times = Vec::new();
    for _ in 0..args.repeat {
        let start = Instant::now();
        let joined = creator
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await?;
        times.push(start.elapsed());
        let members = joined["joined"].as_object().map_or(0, |j| j.len());
        anyhow::ensure!(members == n + 1, "{members} joined members, not {}", n + 1);
    }
    figures.push((
        format!(
            "/joined_members of {} members, median of {}",
            n + 1,
            args.repeat
        ),
        "ms",
        Better::Lower,
        median(times),
    ));
    Ok(figures)
}

/// The tokens of the appservice registration `benches/side_by_side.py` writes
/// for the `appservice` workload (users `@loadas_.*`).
const AS_TOKEN: &str = "lattice-load-appservice-as-token";
const HS_TOKEN: &str = "lattice-load-appservice-hs-token";

/// The appservice's side of the `appservice` workload: transactions
/// acknowledged at once, each ID counted once.
#[derive(Default)]
struct Receiver {
    state: std::sync::Mutex<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    transactions: std::collections::HashSet<String>,
    /// This workload's messages received, in how many transactions, and when
    /// the last one came.
    messages: usize,
    with_messages: usize,
    last: Option<Instant>,
}

async fn receive(
    axum::extract::State(receiver): axum::extract::State<Arc<Receiver>>,
    axum::extract::Path(txn): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {HS_TOKEN}").as_str());
    if !authorized {
        return (axum::http::StatusCode::FORBIDDEN, axum::Json(json!({})));
    }
    let mut state = receiver.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.transactions.insert(txn) {
        let ours = body["events"].as_array().map_or(0, |events| {
            events
                .iter()
                .filter(|e| {
                    e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.starts_with("load message appservice"))
                })
                .count()
        });
        if ours > 0 {
            state.messages += ours;
            state.with_messages += 1;
            state.last = Some(Instant::now());
        }
    }
    (axum::http::StatusCode::OK, axum::Json(json!({})))
}

/// Events/s sent into a room with a user of the appservice's namespace, and
/// events/s delivered to the appservice, from the first send until the last
/// of those events arrived.
async fn appservice_delivery(args: &Args, users: &Users) -> anyhow::Result<Figures> {
    let addr = users
        .appservice
        .context("no --appservice for this target")?;
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(receive),
        )
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let result = appservice_load(args, users, &receiver).await;
    server.abort();
    result
}

async fn appservice_load(
    args: &Args,
    users: &Users,
    receiver: &Receiver,
) -> anyhow::Result<Figures> {
    // Not timed: the namespace user, registered by the appservice, joins a
    // room all clients are in.
    let register: Value = users
        .http
        .post(format!("{}/_matrix/client/v3/register", users.base))
        .bearer_auth(AS_TOKEN)
        .json(&json!({
            "type": "m.login.application_service",
            "username": format!("loadas_{}", users.run),
            "inhibit_login": true,
        }))
        .send()
        .await?
        .json()
        .await?;
    let ghost = register["user_id"]
        .as_str()
        .with_context(|| format!("appservice registration: {register}"))?
        .to_owned();
    let clients = &users.clients;
    let room = shared_room(clients).await?;
    let joined = users
        .http
        .post(format!(
            "{}/_matrix/client/v3/join/{}?user_id={}",
            users.base,
            enc(&room),
            enc(&ghost)
        ))
        .bearer_auth(AS_TOKEN)
        .json(&json!({}))
        .send()
        .await?;
    anyhow::ensure!(
        joined.status().is_success(),
        "the appservice's join: {}",
        joined.text().await.unwrap_or_default()
    );
    let settle = Instant::now();
    while receiver
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .transactions
        .is_empty()
    {
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(60),
            "no transaction reached the appservice"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let n = clients.len();
    let total = n * args.messages;
    let start = Instant::now();
    let (_, elapsed) = send_all(clients, &vec![room; n], args.messages, "appservice").await?;
    let sent_at = start + elapsed;
    let deadline = Duration::from_secs(600);
    let (last, transactions) = loop {
        {
            let state = receiver.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.messages >= total {
                break (state.last.unwrap_or(sent_at), state.with_messages);
            }
            anyhow::ensure!(
                start.elapsed() < deadline,
                "{} of {total} events delivered after {deadline:?}",
                state.messages
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let delivered = last.duration_since(start);
    Ok(vec![
        (
            format!("{n} clients, one room: sent"),
            "events/s",
            Better::Higher,
            total as f64 / elapsed.as_secs_f64(),
        ),
        (
            "delivered to the appservice".into(),
            "events/s",
            Better::Higher,
            total as f64 / delivered.as_secs_f64(),
        ),
        (
            "last delivery after the last send".into(),
            "ms",
            Better::Lower,
            millis(last.saturating_duration_since(sent_at)),
        ),
        (
            "events per transaction".into(),
            "events",
            Better::Higher,
            total as f64 / transactions.max(1) as f64,
        ),
    ])
}
