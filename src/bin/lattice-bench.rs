//! `lattice-bench`: the event-path benchmark. Not a test: it prints figures.
//!
//! It starts Lattice in-process on a fresh database of the PostgreSQL server given
//! by `--database-url` (rate limits off, cheap password hashing, users registered
//! before any timed phase), then runs, in one invocation:
//!
//! 1. sequential sends into one room (latency p50/p95);
//! 2. 20 clients sending concurrently into one room (events/s, p50/p95);
//! 3. 20 clients sending concurrently, each into its own room;
//! 4. the baseline: one-row INSERT transactions on the same PostgreSQL server,
//!    sequential and with 20 connections, to show how close the send path is to
//!    the database's own write ceiling (ratios printed);
//! 5. state storage: bytes of state tables per state change while 1,000 members
//!    join one room;
//! 6. sync: wake-up latency (a send until another user's long-poll `/sync`
//!    returns it, p50/p95), initial `/sync` and sliding sync for a user in 300
//!    rooms with history, and the cost of an incremental `/sync` call, next to
//!    the baseline of an authenticated `whoami` round trip on the same server;
//! 7. media: upload and download of a 50 MB file next to writing and reading
//!    the same bytes as a plain file in the same directory, and thumbnail
//!    generation for a 12-megapixel JPEG next to decoding it alone; peak RSS of
//!    the process (server and load generator) during the phase.
//!
//! `--phases` picks some (`events,state,sync,media`; default all).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use lattice::{
    config::{Config, Listener, Resource},
    server::Server,
    service::AppState,
    storage::{Database, state},
};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

#[derive(Parser)]
struct Args {
    /// PostgreSQL server to create the benchmark database on (maintenance DB URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Messages per client in the concurrent phases.
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Sequential sends in phase 1.
    #[arg(long, default_value_t = 300)]
    sequential: usize,
    /// Members joining the room in the state-storage phase.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Rooms of the user whose initial sync is timed.
    #[arg(long, default_value_t = 300)]
    sync_rooms: usize,
    /// Messages of history per room in the sync phase.
    #[arg(long, default_value_t = 10)]
    sync_history: usize,
    /// Wake-ups measured in the sync phase.
    #[arg(long, default_value_t = 100)]
    wakeups: usize,
    /// Phases to run: events (1-4), state (5), sync (6), media (7), or all.
    #[arg(long, default_value = "all")]
    phases: String,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.phases == "all" || self.phases.split(',').any(|p| p.trim() == phase)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    async fn post_raw(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}/_matrix/client/v3{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn send(&self, room: &str, txn: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let resp = self
            .http
            .put(format!(
                "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                self.base
            ))
            .bearer_auth(&self.token)
            .json(&json!({ "msgtype": "m.text", "body": format!("benchmark message {txn}") }))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "send: {}", resp.status());
        Ok(start.elapsed())
    }
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<Client> {
    let resp: Value = http
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(
            &json!({ "username": name, "password": "bench", "auth": { "type": "m.login.dummy" } }),
        )
        .send()
        .await?
        .json()
        .await?;
    let token = resp["access_token"]
        .as_str()
        .with_context(|| format!("register {name}: {resp}"))?;
    Ok(Client {
        http: http.clone(),
        base: base.to_owned(),
        token: token.to_owned(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> f64 {
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<44} {:>6} events  {:>8.1} ev/s  p50 {:>7.2} ms  p95 {:>7.2} ms",
        latencies.len(),
        rate,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
    );
    rate
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin: PgConnectOptions = args.database_url.parse()?;
    let db_name = format!("lattice_bench_{}", std::process::id());
    let mut conn = PgConnection::connect_with(&admin).await?;
    conn.execute(format!("create database {db_name} encoding 'UTF8' lc_collate 'C' lc_ctype 'C' template template0").as_str())
        .await?;
    let result = run(&args, &admin, &db_name).await;
    conn.execute(format!("drop database if exists {db_name} with (force)").as_str())
        .await?;
    result
}

async fn run(args: &Args, admin: &PgConnectOptions, db_name: &str) -> anyhow::Result<()> {
    let options = admin.clone().database(db_name);
    let mut config = Config {
        server_name: "bench.local".into(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse()?,
            resources: vec![Resource::Client],
            tls_certificate: None,
            tls_private_key: None,
        }],
        ..Default::default()
    };
    config.registration.open = true;
    config.rate_limits.enabled = false;
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
    config.database.max_connections = (args.clients as u32).max(10);
    let data_dir = std::env::temp_dir().join(format!("lattice-bench-{}", std::process::id()));
    config.data_dir = data_dir.clone();
    config.database.url = Some(match options.get_socket() {
        Some(socket) => format!(
            "postgres://{}@localhost/{db_name}?host={}&port={}",
            options.get_username(),
            socket.display(),
            options.get_port()
        ),
        None => format!(
            "postgres://{}@{}:{}/{db_name}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        ),
    });
    let db = Database::open(&config).await?;
    db.migrate().await?;
    let state_app = AppState::load(config, db.pool.clone()).await?;
    let server = Server::start(state_app.clone()).await?;
    let base = format!("http://{}", server.addrs[0]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;

    println!(
        "lattice-bench: {} clients x {} messages; PostgreSQL at {}",
        args.clients,
        args.messages,
        options.get_host()
    );

    // Register everyone before timing anything.
    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(Arc::new(register(&http, &base, &format!("c{i}")).await?));
    }
    let owner = &clients[0];
    let room = owner
        .post("/createRoom", json!({ "preset": "public_chat" }))
        .await?["room_id"]
        .as_str()
        .context("room_id")?
        .to_owned();
    for c in &clients[1..] {
        c.post(&format!("/rooms/{room}/join"), json!({})).await?;
    }

    if args.runs("events") {
        events_phase(args, &state_app, &clients, &room).await?;
    }
    if args.runs("state") {
        state_phase(args, &state_app, &http, &base, owner).await?;
    }
    if args.runs("sync") {
        sync_phase(args, &state_app, &http, &base, &clients).await?;
    }
    if args.runs("media") {
        media_phase(&state_app, &http, &base, owner).await?;
    }

    server.stop().await;
    db.close().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

async fn events_phase(
    args: &Args,
    state_app: &AppState,
    clients: &[Arc<Client>],
    room: &str,
) -> anyhow::Result<()> {
    let owner = &clients[0];
    // 1. Sequential sends.
    let start = Instant::now();
    let mut lat = Vec::new();
    for i in 0..args.sequential {
        lat.push(owner.send(room, &format!("seq{i}")).await?);
    }
    let seq_rate = report("1. sequential sends, one room", lat, start.elapsed());

    // 2. Concurrent, one room.
    let (lat, elapsed) = concurrent(clients, |_| room.to_owned(), args.messages, "one").await?;
    let one_room_rate = report("2. concurrent sends, one room", lat, elapsed);

    // 3. Concurrent, one room per client.
    let mut rooms = Vec::new();
    for c in clients {
        let r = c.post("/createRoom", json!({})).await?["room_id"]
            .as_str()
            .context("room_id")?
            .to_owned();
        rooms.push(r);
    }
    let (lat, elapsed) = concurrent(clients, |i| rooms[i].clone(), args.messages, "many").await?;
    let many_rooms_rate = report("3. concurrent sends, one room per client", lat, elapsed);

    // 4. Baseline: PostgreSQL one-row insert transactions on the same server.
    let (pg_seq, pg_conc) =
        pg_baseline(&state_app.db, args.sequential, args.clients, args.messages).await?;
    println!(
        "4. baseline: PostgreSQL one-row INSERT commits: sequential {pg_seq:.1}/s, {} connections {pg_conc:.1}/s",
        args.clients
    );
    println!(
        "   ratios send/insert: sequential {:.3}, one room {:.3}, many rooms {:.3}",
        seq_rate / pg_seq,
        one_room_rate / pg_conc,
        many_rooms_rate / pg_conc
    );
    Ok(())
}

async fn state_phase(
    args: &Args,
    state_app: &AppState,
    http: &reqwest::Client,
    base: &str,
    owner: &Client,
) -> anyhow::Result<()> {
    // 5. State storage per state change: members join one room.
    let big = owner
        .post("/createRoom", json!({ "preset": "public_chat" }))
        .await?["room_id"]
        .as_str()
        .context("room_id")?
        .to_owned();
    let before = state::room_state_bytes(&state_app.db, &big).await?;
    let mut joiners = Vec::new();
    for i in 0..args.members {
        joiners.push(register(http, base, &format!("m{i}")).await?);
    }
    let start = Instant::now();
    for j in &joiners {
        j.post(&format!("/rooms/{big}/join"), json!({})).await?;
    }
    let join_elapsed = start.elapsed();
    let after = state::room_state_bytes(&state_app.db, &big).await?;
    let per_change = (after - before) as f64 / args.members as f64;
    println!(
        "5. state storage: {} joins in {:.1} s ({:.1} joins/s); {} bytes of state rows for {} state changes = {:.0} bytes/change",
        args.members,
        join_elapsed.as_secs_f64(),
        args.members as f64 / join_elapsed.as_secs_f64(),
        after - before,
        args.members,
        per_change
    );
    let (groups, snapshots, entries) = state::room_state_shape(&state_app.db, &big).await?;
    println!(
        "   {groups} state groups, {snapshots} of them full snapshots (chains of at most {} deltas), {entries} entry rows",
        lattice::service::event::MAX_STATE_CHAIN
    );
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.95))
}

/// Phase 6, sync: wake-up latency, initial sync of a user in many rooms, and
/// incremental sync cost, against a `whoami` round trip as the baseline.
async fn sync_phase(
    args: &Args,
    app: &AppState,
    http: &reqwest::Client,
    base: &str,
    clients: &[Arc<Client>],
) -> anyhow::Result<()> {
    let sender = clients[0].clone();
    let reader = clients[1].clone();
    let room = sender
        .post("/createRoom", json!({ "preset": "public_chat" }))
        .await?["room_id"]
        .as_str()
        .context("room_id")?
        .to_owned();
    reader
        .post(&format!("/rooms/{room}/join"), json!({}))
        .await?;
    let filter = format!(r#"{{"room":{{"rooms":["{room}"]}},"presence":{{"types":[]}}}}"#);
    let mut since = reader
        .get(&format!("/_matrix/client/v3/sync?filter={filter}"))
        .await?["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();
    let mut wake = Vec::new();
    for i in 0..args.wakeups {
        let poll = {
            let reader = reader.clone();
            let path = format!(
                "/_matrix/client/v3/sync?since={since}&timeout=30000&set_presence=offline&filter={filter}"
            );
            tokio::spawn(async move { reader.get(&path).await })
        };
        // Wait until the long-poll is parked on the notifier.
        let parked = Instant::now();
        while app.notifier.waiting() == 0 {
            anyhow::ensure!(
                parked.elapsed() < Duration::from_secs(10),
                "sync never parked"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let start = Instant::now();
        sender.send(&room, &format!("wake{i}")).await?;
        let body = poll.await??;
        wake.push(start.elapsed());
        since = body["next_batch"]
            .as_str()
            .context("next_batch")?
            .to_owned();
    }
    let (p50, p95) = summary(wake);
    println!(
        "6. sync wake-up (send until the other user's long-poll returns): {} samples, p50 {:.2} ms, p95 {:.2} ms",
        args.wakeups,
        millis(p50),
        millis(p95)
    );

    // A user in many rooms, each with some history.
    let many = register(http, base, "syncer").await?;
    let setup = Instant::now();
    for r in 0..args.sync_rooms {
        let id = many
            .post("/createRoom", json!({ "name": format!("room {r}") }))
            .await?["room_id"]
            .as_str()
            .context("room_id")?
            .to_owned();
        for m in 0..args.sync_history {
            many.send(&id, &format!("h{r}-{m}")).await?;
        }
    }
    println!(
        "   set-up: {} rooms x {} messages in {:.1} s",
        args.sync_rooms,
        args.sync_history,
        setup.elapsed().as_secs_f64()
    );
    let mut initial = Vec::new();
    let mut token = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        let body = many
            .get("/_matrix/client/v3/sync?set_presence=offline")
            .await?;
        initial.push(start.elapsed());
        let joined = body["rooms"]["join"].as_object().map_or(0, |j| j.len());
        anyhow::ensure!(joined >= args.sync_rooms, "initial sync saw {joined} rooms");
        token = body["next_batch"]
            .as_str()
            .context("next_batch")?
            .to_owned();
    }
    let (initial_p50, _) = summary(initial.clone());
    let mut sliding = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let body = many
            .post_raw(
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                json!({ "conn_id": "bench", "lists": { "all": {
                    "ranges": [[0, 19]], "timeline_limit": 1,
                    "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
                } } }),
            )
            .await?;
        sliding.push(start.elapsed());
        anyhow::ensure!(
            body["lists"]["all"]["count"].as_u64() == Some(args.sync_rooms as u64),
            "sliding sync count: {}",
            body["lists"]["all"]
        );
    }
    let (sliding_p50, _) = summary(sliding);
    println!(
        "   initial /sync, {} rooms (timeline 10 each): median of 3 {:.1} ms; sliding sync, first 20 rooms of {}: median of 3 {:.1} ms",
        args.sync_rooms,
        millis(initial_p50),
        args.sync_rooms,
        millis(sliding_p50)
    );

    // Incremental sync with nothing new, and the whoami baseline.
    let n = 100;
    let mut incremental = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        many.get(&format!(
            "/_matrix/client/v3/sync?since={token}&timeout=0&set_presence=offline"
        ))
        .await?;
        incremental.push(start.elapsed());
    }
    let mut whoami = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        many.get("/_matrix/client/v3/account/whoami").await?;
        whoami.push(start.elapsed());
    }
    let (inc50, inc95) = summary(incremental);
    let (who50, who95) = summary(whoami);
    println!(
        "   incremental /sync, nothing new, {} rooms: p50 {:.2} ms p95 {:.2} ms; baseline whoami p50 {:.2} ms p95 {:.2} ms; ratio p50 {:.1}",
        args.sync_rooms,
        millis(inc50),
        millis(inc95),
        millis(who50),
        millis(who95),
        inc50.as_secs_f64() / who50.as_secs_f64()
    );
    Ok(())
}

async fn concurrent(
    clients: &[Arc<Client>],
    room_of: impl Fn(usize) -> String,
    messages: usize,
    tag: &str,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let room = room_of(i);
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for n in 0..messages {
                lat.push(c.send(&room, &format!("{tag}{i}-{n}")).await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

async fn pg_baseline(
    pool: &sqlx::PgPool,
    sequential: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<(f64, f64)> {
    sqlx::query(
        "create table if not exists bench_baseline (id bigserial primary key, body text not null)",
    )
    .execute(pool)
    .await?;
    let start = Instant::now();
    for i in 0..sequential {
        sqlx::query("insert into bench_baseline (body) values ($1)")
            .bind(format!("row {i}"))
            .execute(pool)
            .await?;
    }
    let seq = sequential as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                sqlx::query("insert into bench_baseline (body) values ($1)")
                    .bind(format!("row {c}-{i}"))
                    .execute(&pool)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let conc = (clients * per_client) as f64 / start.elapsed().as_secs_f64();
    Ok((seq, conc))
}

/// Peak resident set size of this process (kB), from /proc (Linux).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Phase 7, media: 50 MB upload and download against plain file I/O, thumbnail
/// generation for a 12-megapixel JPEG against decoding it alone, peak RSS.
async fn media_phase(
    app: &AppState,
    http: &reqwest::Client,
    base: &str,
    owner: &Client,
) -> anyhow::Result<()> {
    // Reset the peak RSS counter so it covers this phase only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_rss_kb();
    let size = 50 * 1024 * 1024;
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let data = bytes::Bytes::from(data);
    let mb = size as f64 / (1024.0 * 1024.0);

    let start = Instant::now();
    let resp: Value = http
        .post(format!("{base}/_matrix/media/v3/upload?filename=big.bin"))
        .bearer_auth(&owner.token)
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await?
        .json()
        .await?;
    let upload = start.elapsed();
    let mxc = resp["content_uri"]
        .as_str()
        .context("content_uri")?
        .to_owned();
    let path = mxc.trim_start_matches("mxc://").to_owned();
    let start = Instant::now();
    let mut resp = http
        .get(format!("{base}/_matrix/client/v1/media/download/{path}"))
        .bearer_auth(&owner.token)
        .send()
        .await?;
    let mut got = 0usize;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len();
    }
    let download = start.elapsed();
    anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");

    // Baseline: the same bytes as a plain file in the same directory.
    let plain = app.config.data_dir.join("baseline.bin");
    let start = Instant::now();
    {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&plain).await?;
        f.write_all(&data).await?;
        f.flush().await?;
    }
    let write_plain = start.elapsed();
    let start = Instant::now();
    let read_back = tokio::fs::read(&plain).await?;
    let read_plain = start.elapsed();
    anyhow::ensure!(read_back.len() == size);
    drop(read_back);
    let _ = tokio::fs::remove_file(&plain).await;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "7. media: 50 MB upload {:.0} MB/s, download {:.0} MB/s; baseline file write {:.0} MB/s, read {:.0} MB/s; ratios upload/write {:.2}, download/read {:.2}",
        rate(upload),
        rate(download),
        rate(write_plain),
        rate(read_plain),
        write_plain.as_secs_f64() / upload.as_secs_f64(),
        read_plain.as_secs_f64() / download.as_secs_f64()
    );

    // A 12-megapixel JPEG, thumbnailed under several media ids (the file is
    // stored once; thumbnails are per id).
    let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg)?;
    let jpeg = bytes::Bytes::from(jpeg.into_inner());
    let runs = 5;
    let mut thumbs = Vec::new();
    let mut decodes = Vec::new();
    for i in 0..runs {
        let resp: Value = http
            .post(format!("{base}/_matrix/media/v3/upload?filename=p{i}.jpg"))
            .bearer_auth(&owner.token)
            .header("content-type", "image/jpeg")
            .body(jpeg.clone())
            .send()
            .await?
            .json()
            .await?;
        let path = resp["content_uri"]
            .as_str()
            .context("content_uri")?
            .trim_start_matches("mxc://")
            .to_owned();
        let start = Instant::now();
        let resp = http
            .get(format!(
                "{base}/_matrix/client/v1/media/thumbnail/{path}?width=320&height=240&method=scale"
            ))
            .bearer_auth(&owner.token)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "thumbnail: {}", resp.status());
        resp.bytes().await?;
        thumbs.push(start.elapsed());
        let bytes = jpeg.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || image::load_from_memory(&bytes)).await??;
        decodes.push(start.elapsed());
    }
    let (thumb50, _) = summary(thumbs);
    let (decode50, _) = summary(decodes);
    println!(
        "   12-megapixel JPEG ({} KB): thumbnail 320x240 p50 {:.0} ms over {runs}; baseline decode alone p50 {:.0} ms; ratio {:.2}",
        jpeg.len() / 1024,
        millis(thumb50),
        millis(decode50),
        thumb50.as_secs_f64() / decode50.as_secs_f64()
    );
    if let (Some(before), Some(peak)) = (rss_before, peak_rss_kb()) {
        println!(
            "   peak RSS during the phase {:.0} MB (at its start {:.0} MB; the load generator holds the 50 MB body and the decoded image too)",
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        );
    }
    Ok(())
}
