//! Application services: a real HTTP appservice on loopback (axum) registered
//! through a YAML file, receiving transactions and answering queries.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode as AxStatus},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, SERVER_NAME, TestServer, enc, eventually};

mod botsdk;
mod ephemeral;
mod federation;
mod reload;

const AS_TOKEN: &str = "as-secret-token-0123456789";
const HS_TOKEN: &str = "hs-secret-token-9876543210";

/// One transaction the appservice accepted.
#[derive(Clone, Debug)]
struct Txn {
    id: String,
    events: Vec<Value>,
}

#[derive(Default)]
struct Seen {
    /// Accepted transactions, in arrival order.
    accepted: Mutex<Vec<Txn>>,
    /// Every PUT, accepted or not.
    attempts: AtomicUsize,
    /// Authorization headers that were not `Bearer HS_TOKEN`.
    bad_auth: Mutex<Vec<String>>,
    /// User IDs and aliases asked about.
    queries: Mutex<Vec<String>>,
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Never answer (the transaction is recorded in `held`).
    hold: AtomicBool,
    held: Mutex<Vec<Txn>>,
    /// The homeserver's client API, for the alias query to create the alias.
    hs_base: Mutex<Option<String>>,
    /// The room the alias query maps its alias to.
    alias_room: Mutex<Option<String>>,
}

impl Seen {
    /// Events of accepted transactions, each transaction counted once (the
    /// appservice deduplicates by transaction ID, as the spec asks).
    fn events(&self) -> Vec<Value> {
        let accepted = self.accepted.lock().unwrap();
        let mut ids = std::collections::HashSet::new();
        accepted
            .iter()
            .filter(|t| ids.insert(t.id.clone()))
            .flat_map(|t| t.events.clone())
            .collect()
    }

    fn bodies_in(&self, room: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["room_id"] == room && e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn authorized(seen: &Seen, headers: &HeaderMap) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if auth != format!("Bearer {HS_TOKEN}") {
        seen.bad_auth.lock().unwrap().push(auth);
        return false;
    }
    true
}

async fn transaction(
    State(seen): State<Arc<Seen>>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (AxStatus, axum::Json<Value>) {
    seen.attempts.fetch_add(1, Ordering::SeqCst);
    if !authorized(&seen, &headers) {
        return (
            AxStatus::FORBIDDEN,
            axum::Json(json!({"errcode": "M_FORBIDDEN"})),
        );
    }
    if seen.down.load(Ordering::SeqCst) {
        return (AxStatus::SERVICE_UNAVAILABLE, axum::Json(json!({})));
    }
    let events = body["events"].as_array().cloned().unwrap_or_default();
    if seen.hold.load(Ordering::SeqCst) {
        seen.held.lock().unwrap().push(Txn { id: txn, events });
        return std::future::pending().await;
    }
    seen.accepted.lock().unwrap().push(Txn { id: txn, events });
    (AxStatus::OK, axum::Json(json!({})))
}

async fn query_user(
    State(seen): State<Arc<Seen>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> (AxStatus, axum::Json<Value>) {
    if !authorized(&seen, &headers) {
        return (AxStatus::FORBIDDEN, axum::Json(json!({})));
    }
    seen.queries.lock().unwrap().push(user.clone());
    // Users whose localpart says so exist; others do not.
    if user.starts_with("@irc_known") {
        (AxStatus::OK, axum::Json(json!({})))
    } else {
        (
            AxStatus::NOT_FOUND,
            axum::Json(json!({"errcode": "M_NOT_FOUND"})),
        )
    }
}

async fn query_alias(
    State(seen): State<Arc<Seen>>,
    Path(alias): Path<String>,
    headers: HeaderMap,
) -> (AxStatus, axum::Json<Value>) {
    if !authorized(&seen, &headers) {
        return (AxStatus::FORBIDDEN, axum::Json(json!({})));
    }
    seen.queries.lock().unwrap().push(alias.clone());
    let base = seen.hs_base.lock().unwrap().clone();
    let room = seen.alias_room.lock().unwrap().clone();
    let (Some(base), Some(room)) = (base, room) else {
        return (AxStatus::NOT_FOUND, axum::Json(json!({})));
    };
    // As a bridge does: create the alias, then answer.
    let status = reqwest::Client::new()
        .put(format!(
            "{base}/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "room_id": room }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        status.is_success(),
        "the appservice could not create {alias}"
    );
    (AxStatus::OK, axum::Json(json!({})))
}

async fn ping(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (AxStatus, axum::Json<Value>) {
    if !authorized(&seen, &headers) {
        return (AxStatus::FORBIDDEN, axum::Json(json!({})));
    }
    seen.queries.lock().unwrap().push(format!(
        "ping {}",
        body["transaction_id"].as_str().unwrap_or_default()
    ));
    (AxStatus::OK, axum::Json(json!({})))
}

async fn protocol(
    State(seen): State<Arc<Seen>>,
    Path(protocol): Path<String>,
    headers: HeaderMap,
) -> (AxStatus, axum::Json<Value>) {
    if !authorized(&seen, &headers) || protocol != "irc" {
        return (AxStatus::NOT_FOUND, axum::Json(json!({})));
    }
    seen.queries
        .lock()
        .unwrap()
        .push(format!("protocol {protocol}"));
    (
        AxStatus::OK,
        axum::Json(json!({
            "user_fields": ["network", "nickname"],
            "location_fields": ["network", "channel"],
            "icon": "mxc://example.org/irc",
            "field_types": {},
            "instances": [{ "desc": "Libera", "network_id": "libera", "fields": {} }],
        })),
    )
}

async fn third_party_user(
    State(seen): State<Arc<Seen>>,
    Path(protocol): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::BTreeMap<String, String>>,
    headers: HeaderMap,
) -> (AxStatus, axum::Json<Value>) {
    if !authorized(&seen, &headers) {
        return (AxStatus::FORBIDDEN, axum::Json(json!([])));
    }
    // The client's token is not passed on.
    if query.contains_key("access_token") {
        return (AxStatus::BAD_REQUEST, axum::Json(json!([])));
    }
    let nick = query.get("nickname").cloned().unwrap_or_default();
    (
        AxStatus::OK,
        axum::Json(json!([
            { "protocol": protocol, "fields": { "nickname": nick }, "userid": format!("@irc_{nick}:{SERVER_NAME}") },
            { "protocol": protocol, "fields": {}, "no_userid": true },
        ])),
    )
}

/// Starts the appservice on loopback and writes its registration.
async fn appservice(dir: &std::path::Path) -> (Arc<Seen>, PathBuf) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(transaction),
        )
        .route(
            "/_matrix/app/v1/users/{user}",
            axum::routing::get(query_user),
        )
        .route(
            "/_matrix/app/v1/rooms/{alias}",
            axum::routing::get(query_alias),
        )
        .route("/_matrix/app/v1/ping", axum::routing::post(ping))
        .route(
            "/_matrix/app/v1/thirdparty/protocol/{protocol}",
            axum::routing::get(protocol),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user/{protocol}",
            axum::routing::get(third_party_user),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let path = dir.join("irc.yaml");
    std::fs::write(
        &path,
        format!(
            r##"# as a bridge writes it
id: irc
url: "http://{addr}"
as_token: "{AS_TOKEN}"
hs_token: "{HS_TOKEN}"
sender_localpart: ircbot
rate_limited: false
protocols: ["irc"]
namespaces:
  users:
    - exclusive: true
      regex: "@irc_.*:{SERVER_NAME}"
  aliases:
    - exclusive: true
      regex: "#irc_.*:{SERVER_NAME}"
  rooms: []
"##
        ),
    )
    .unwrap();
    (seen, path)
}

async fn start() -> (TestServer, Arc<Seen>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (seen, path) = appservice(dir.path()).await;
    // No outbound allowance for loopback: the registration's host is trusted.
    let server = TestServer::start_with(|c| {
        c.appservices = vec![path];
        c.listeners[0]
            .resources
            .push(lattice::config::Resource::Metrics);
    })
    .await;
    *seen.hs_base.lock().unwrap() = Some(server.base.clone());
    (server, seen, dir)
}

const V3: &str = "/_matrix/client/v3";

/// The appservice registers a user of its namespace and returns its login.
async fn register_ghost(server: &TestServer, localpart: &str) -> Login {
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            Some(AS_TOKEN),
            json!({ "type": "m.login.application_service", "username": localpart }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Login::from_json(&body)
}

fn as_user(user: &str) -> String {
    format!("user_id={}", enc(user))
}

#[tokio::test]
async fn transactions_arrive_in_order_exactly_once_with_the_hs_token() {
    let (server, seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let ghost = register_ghost(&server, "irc_bob").await;
    assert_eq!(ghost.user_id, format!("@irc_bob:{SERVER_NAME}"));
    // Alice invites the ghost; the appservice joins as it.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": ghost.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/join/{}?{}", enc(&room), as_user(&ghost.user_id)),
            Some(AS_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent: Vec<String> = (0..25).map(|i| format!("message {i}")).collect();
    for body in &sent {
        server
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
            .await;
    }
    eventually("every message at the appservice", || {
        let seen = seen.clone();
        let room = room.clone();
        let n = sent.len();
        async move { seen.bodies_in(&room).len() >= n }
    })
    .await;
    assert_eq!(seen.bodies_in(&room), sent, "in order, each once");
    // The invite of the namespace user and its join were sent too.
    let members: Vec<Value> = seen
        .events()
        .into_iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == ghost.user_id.as_str())
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[0]["content"]["membership"], "invite");
    assert_eq!(members[1]["content"]["membership"], "join");
    assert!(seen.bad_auth.lock().unwrap().is_empty());
    // No event twice, even across transactions.
    let ids: Vec<String> = seen
        .events()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    // A room with no namespace member sends nothing.
    let quiet = server.create_room(&alice, json!({})).await;
    server
        .send_message(
            &alice,
            &quiet,
            json!({ "msgtype": "m.text", "body": "private" }),
        )
        .await;
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "marker" }),
        )
        .await;
    eventually("the marker", || {
        let seen = seen.clone();
        let room = room.clone();
        async move { seen.bodies_in(&room).last().map(String::as_str) == Some("marker") }
    })
    .await;
    assert!(seen.events().iter().all(|e| e["room_id"] != quiet.as_str()));
}

#[tokio::test]
async fn an_appservice_down_then_back_gets_everything_in_order_across_a_restart() {
    let (server, seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let ghost = register_ghost(&server, "irc_carol").await;
    server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": ghost.user_id }),
        )
        .await;
    seen.down.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for i in 0..10 {
        let body = format!("while down {i}");
        server
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
            .await;
        sent.push(body);
    }
    eventually("a failed attempt", || {
        let seen = seen.clone();
        async move { seen.attempts.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    assert!(seen.bodies_in(&room).is_empty());
    // `/metrics` shows the queue and the failures.
    let (_, metrics) = server.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let depth: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lattice_appservice_queue_depth{appservice=\"irc\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(depth >= 10, "{metrics}");
    assert!(
        metrics.contains("lattice_appservice_failures_total{appservice=\"irc\"}"),
        "{metrics}"
    );
    // The admin API lists the appservice and its stuck queue; others may not.
    let (status, body) = server
        .get("/_lattice/admin/v1/appservices", Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    lattice::storage::users::set_admin(&server.state.db, &alice.user_id, true)
        .await
        .unwrap();
    let (status, body) = server
        .get("/_lattice/admin/v1/appservices", Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1, "{body}");
    let irc = &body["appservices"][0];
    assert_eq!(irc["id"], "irc");
    assert_eq!(irc["sender"], format!("@ircbot:{SERVER_NAME}"));
    assert_eq!(
        irc["namespaces"]["users"][0],
        json!({ "regex": format!("@irc_.*:{SERVER_NAME}"), "exclusive": true })
    );
    assert!(irc["queue"]["events"].as_i64().unwrap() >= 10, "{body}");
    assert!(
        irc["queue"]["failed_transactions"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(
        irc["queue"]["transaction_in_flight"]["txn_id"].is_string(),
        "{body}"
    );
    // No token of either side is shown.
    let text = body.to_string();
    assert!(
        !text.contains(AS_TOKEN) && !text.contains(HS_TOKEN),
        "{text}"
    );
    // The homeserver restarts while the appservice is still down.
    let server = server.restart().await;
    *seen.hs_base.lock().unwrap() = Some(server.base.clone());
    let (status, body) = server.login("alice", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = Login::from_json(&body);
    for i in 0..5 {
        let body = format!("after restart {i}");
        server
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
            .await;
        sent.push(body);
    }
    seen.down.store(false, Ordering::SeqCst);
    eventually("everything after the appservice is back", || {
        let seen = seen.clone();
        let room = room.clone();
        let n = sent.len();
        async move { seen.bodies_in(&room).len() >= n }
    })
    .await;
    assert_eq!(
        seen.bodies_in(&room),
        sent,
        "in order, none twice, none lost"
    );
    // Backoff: a dead appservice is not hammered.
    assert!(seen.attempts.load(Ordering::SeqCst) < 40);
}

#[tokio::test]
async fn the_as_token_authenticates_and_a_wrong_one_is_refused() {
    let (server, _seen, _dir) = start().await;
    let (status, body) = server.whoami(AS_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], format!("@ircbot:{SERVER_NAME}"));
    // The token in the query works too.
    let (status, body) = server
        .get(
            &format!("{V3}/account/whoami?access_token={}", enc(AS_TOKEN)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for wrong in [
        "as-secret-token-012345678",
        HS_TOKEN,
        "as-secret-token-0123456789x",
    ] {
        let (status, body) = server.whoami(wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        let (status, body) = server
            .post(
                &format!("{V3}/register"),
                Some(wrong),
                json!({ "type": "m.login.application_service", "username": "irc_x" }),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    }
    // The sender user exists from the start and can act.
    let (status, body) = server
        .post(&format!("{V3}/createRoom"), Some(AS_TOKEN), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Appservice login for a namespace user (offered when appservices exist).
    let (_, flows) = server.get(&format!("{V3}/login"), None).await;
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.application_service"),
        "{flows}"
    );
    register_ghost(&server, "irc_dave").await;
    let (status, body) = server
        .post(
            &format!("{V3}/login"),
            Some(AS_TOKEN),
            json!({
                "type": "m.login.application_service",
                "identifier": { "type": "m.id.user", "user": "irc_dave" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (_, me) = server.whoami(&token).await;
    assert_eq!(me["user_id"], format!("@irc_dave:{SERVER_NAME}"));
    // Without the appservice's token, that login type is refused.
    let (status, body) = server
        .post(
            &format!("{V3}/login"),
            None,
            json!({
                "type": "m.login.application_service",
                "identifier": { "type": "m.id.user", "user": "irc_dave" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn namespaces_are_enforced() {
    let (server, _seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    // Others cannot register in an exclusive namespace, nor check it is free.
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            None,
            json!({ "username": "irc_mallory", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE");
    let (status, body) = server
        .get(
            &format!("{V3}/register/available?username=irc_mallory"),
            None,
        )
        .await;
    assert_eq!(body["errcode"], "M_EXCLUSIVE", "{status} {body}");
    // The appservice cannot register outside its namespace.
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            Some(AS_TOKEN),
            json!({ "type": "m.login.application_service", "username": "mallory" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE");
    // inhibit_login: the user, no token.
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            Some(AS_TOKEN),
            json!({ "type": "m.login.application_service", "username": "irc_quiet",
                    "inhibit_login": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], format!("@irc_quiet:{SERVER_NAME}"));
    assert!(body.get("access_token").is_none() && body.get("device_id").is_none());
    // Masquerading outside the namespace, or as a namespace user not registered.
    for user in [alice.user_id.clone(), format!("@irc_nobody:{SERVER_NAME}")] {
        let (status, body) = server
            .get(
                &format!("{V3}/account/whoami?{}", as_user(&user)),
                Some(AS_TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{user}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    let (status, body) = server
        .get(
            &format!(
                "{V3}/account/whoami?{}",
                as_user(&format!("@irc_quiet:{SERVER_NAME}"))
            ),
            Some(AS_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], format!("@irc_quiet:{SERVER_NAME}"));
    // A user's own `user_id` parameter changes nothing.
    let (status, body) = server
        .get(
            &format!(
                "{V3}/account/whoami?{}",
                as_user(&format!("@irc_quiet:{SERVER_NAME}"))
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    let room = server.create_room(&alice, json!({})).await;
    let (status, body) = server
        .post(
            &format!(
                "{V3}/rooms/{}/send/m.room.message?{}",
                enc(&room),
                as_user(&format!("@irc_quiet:{SERVER_NAME}"))
            ),
            Some(&alice.access_token),
            json!({ "msgtype": "m.text", "body": "as myself" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap();
    let (_, event) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&room), enc(event_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(event["sender"], alice.user_id);
    // Aliases: others cannot take the namespace; the appservice cannot go
    // outside it.
    let alias = format!("#irc_chan:{SERVER_NAME}");
    let (status, body) = server
        .put(
            &format!("{V3}/directory/room/{}", enc(&alias)),
            Some(&alice.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE");
    let (status, body) = server
        .put(
            &format!(
                "{V3}/directory/room/{}",
                enc(&format!("#plain:{SERVER_NAME}"))
            ),
            Some(AS_TOKEN),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE");
    let (status, body) = server
        .put(
            &format!("{V3}/directory/room/{}", enc(&alias)),
            Some(AS_TOKEN),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn timestamps_are_massaged_for_appservices_only() {
    let (server, _seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .post(
            &format!("{V3}/createRoom"),
            Some(AS_TOKEN),
            json!({ "preset": "public_chat", "power_level_content_override": {
                "users": { alice.user_id.clone(): 100 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    server.join(&alice, &room).await;
    let ts = 1_500_000_000_000u64;
    let sent = |token: String, kind: &'static str| {
        let server = &server;
        let room = room.clone();
        async move {
            let path = match kind {
                "message" => format!(
                    "{V3}/rooms/{}/send/m.room.message/t{ts}?ts={ts}",
                    enc(&room)
                ),
                _ => format!("{V3}/rooms/{}/state/m.room.topic/?ts={ts}", enc(&room)),
            };
            let content = match kind {
                "message" => json!({ "msgtype": "m.text", "body": "old" }),
                _ => json!({ "topic": format!("set by {token:.4}") }),
            };
            let (status, body) = server.put(&path, Some(&token), content).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let id = body["event_id"].as_str().unwrap().to_owned();
            let (_, event) = server
                .get(
                    &format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&id)),
                    Some(&token),
                )
                .await;
            event["origin_server_ts"].as_u64().unwrap()
        }
    };
    assert_eq!(sent(AS_TOKEN.into(), "message").await, ts);
    assert_eq!(sent(AS_TOKEN.into(), "state").await, ts);
    assert_ne!(sent(alice.access_token.clone(), "message").await, ts);
    assert_ne!(sent(alice.access_token.clone(), "state").await, ts);
}

#[tokio::test]
async fn unknown_namespace_users_and_aliases_are_asked_of_the_appservice() {
    let (server, seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    // A profile lookup of an unknown namespace user asks the appservice; a
    // 2xx answer makes the user.
    let known = format!("@irc_known1:{SERVER_NAME}");
    let (status, body) = server
        .get(
            &format!("{V3}/profile/{}", enc(&known)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unknown = format!("@irc_unknown:{SERVER_NAME}");
    let (status, _) = server
        .get(
            &format!("{V3}/profile/{}", enc(&unknown)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Outside every namespace: nobody is asked.
    let (status, _) = server
        .get(
            &format!("{V3}/profile/{}", enc(&format!("@stranger:{SERVER_NAME}"))),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An invite of an unknown namespace user asks too.
    let known2 = format!("@irc_known2:{SERVER_NAME}");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": known2 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An unknown alias in the namespace: the appservice creates it on demand.
    *seen.alias_room.lock().unwrap() = Some(room.clone());
    let alias = format!("#irc_ondemand:{SERVER_NAME}");
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc(&alias)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    let queries = seen.queries.lock().unwrap().clone();
    assert_eq!(queries, vec![known, unknown, known2, alias]);
    assert!(seen.bad_auth.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_bad_registration_stops_the_server_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = appservice(dir.path()).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("\"@irc_.*", "\"@irc_(.*")).unwrap();
    let mut config = crate::harness::test_config();
    config.appservices = vec![bad.clone()];
    let err = lattice::service::appservice::load(&config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.yaml") && err.contains("namespaces.users[0].regex"),
        "{err}"
    );
    // The same registration twice: refused.
    config.appservices = vec![path.clone(), path];
    let err = lattice::service::appservice::load(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`id`"), "{err}");
}

#[tokio::test]
async fn ping_room_lists_third_party_and_deactivation() {
    let (server, seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    // Ping: the homeserver calls the appservice with the transaction ID.
    let (status, body) = server
        .post(
            "/_matrix/client/v1/appservice/irc/ping",
            Some(AS_TOKEN),
            json!({ "transaction_id": "t1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert!(seen.queries.lock().unwrap().contains(&"ping t1".to_owned()));
    for (token, id) in [(AS_TOKEN, "other"), (alice.access_token.as_str(), "irc")] {
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v1/appservice/{id}/ping"),
                Some(token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    // Room lists: the appservice's own, apart from the main one.
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let list = format!("{V3}/directory/list/appservice/libera/{}", enc(&room));
    let (status, body) = server
        .put(
            &list,
            Some(&alice.access_token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .put(&list, Some(AS_TOKEN), json!({ "visibility": "public" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rooms_in = |filter: Value| {
        let server = &server;
        let token = alice.access_token.clone();
        async move {
            let (status, body) = server
                .post(&format!("{V3}/publicRooms"), Some(&token), filter)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["room_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert!(!rooms_in(json!({})).await.contains(&room));
    assert!(
        rooms_in(json!({ "third_party_instance_id": "irc|libera" }))
            .await
            .contains(&room)
    );
    assert!(
        !rooms_in(json!({ "third_party_instance_id": "irc|other" }))
            .await
            .contains(&room)
    );
    assert!(
        rooms_in(json!({ "include_all_networks": true }))
            .await
            .contains(&room)
    );
    let (status, _) = server
        .call(reqwest::Method::DELETE, &list, Some(AS_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !rooms_in(json!({ "third_party_instance_id": "irc|libera" }))
            .await
            .contains(&room)
    );
    // Third-party protocols come from the appservice, with instance IDs.
    let (status, body) = server
        .get(
            &format!("{V3}/thirdparty/protocols"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["irc"]["user_fields"], json!(["network", "nickname"]));
    assert_eq!(body["irc"]["instances"][0]["instance_id"], "irc|libera");
    let (status, body) = server
        .get(
            &format!("{V3}/thirdparty/protocol/irc"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["icon"], "mxc://example.org/irc");
    let (status, _) = server
        .get(
            &format!("{V3}/thirdparty/protocol/xmpp"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server
        .get(
            &format!(
                "{V3}/thirdparty/user/irc?nickname=bob&access_token={}",
                enc(&alice.access_token)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body.as_array().unwrap().len(),
        1,
        "invalid results dropped: {body}"
    );
    assert_eq!(body[0]["userid"], format!("@irc_bob:{SERVER_NAME}"));
    // The metadata is cached: one question for the three answers above.
    let asked = seen
        .queries
        .lock()
        .unwrap()
        .iter()
        .filter(|q| q.starts_with("protocol"))
        .count();
    assert_eq!(asked, 1);
    // Deactivating its own user needs no UIA.
    let ghost = register_ghost(&server, "irc_gone").await;
    let (status, body) = server
        .post(
            &format!("{V3}/account/deactivate?{}", as_user(&ghost.user_id)),
            Some(AS_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.whoami(&ghost.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The real binary is killed (SIGKILL) while a transaction is in flight (sent,
/// not answered): after the restart the same transaction ID comes again with
/// the same events, then the rest, so the appservice (deduplicating by
/// transaction ID) has every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lattice_killed_mid_transaction_resends_it_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, reg) = appservice(dir.path()).await;
    // Every room interests this appservice.
    let text = std::fs::read_to_string(&reg).unwrap();
    std::fs::write(
        &reg,
        text.replace(
            "  rooms: []",
            "  rooms:\n    - exclusive: false\n      regex: \"!.*\"",
        ),
    )
    .unwrap();
    seen.hold.store(true, Ordering::SeqCst);
    let config = dir.path().join("lattice.toml");
    std::fs::write(
        &config,
        format!(
            r#"server_name = "{SERVER_NAME}"
data_dir = "{data}"
log = "warn,lattice::server=info"
appservices = ["{reg}"]
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
            reg = reg.display(),
            db = crate::harness::fresh_database_url().await,
        ),
    )
    .unwrap();
    let mut lattice = crate::crash::run(&config).await;
    let alice = lattice.api.register("alice", "pw").await;
    let room = lattice.api.create_room(&alice, json!({})).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let body = format!("before the kill {i}");
        lattice
            .api
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
            .await;
        sent.push(body);
    }
    eventually("a transaction in flight", || {
        let seen = seen.clone();
        async move { !seen.held.lock().unwrap().is_empty() }
    })
    .await;
    lattice.child.start_kill().unwrap();
    lattice.child.wait().await.unwrap();
    let in_flight = seen.held.lock().unwrap()[0].clone();
    assert!(seen.accepted.lock().unwrap().is_empty());
    seen.hold.store(false, Ordering::SeqCst);

    let lattice = crate::crash::run(&config).await;
    let (status, body) = lattice.api.login("alice", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = Login::from_json(&body);
    for i in 0..5 {
        let body = format!("after the restart {i}");
        lattice
            .api
            .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
            .await;
        sent.push(body);
    }
    eventually("every message at the appservice", || {
        let seen = seen.clone();
        let room = room.clone();
        let n = sent.len();
        async move { seen.bodies_in(&room).len() >= n }
    })
    .await;
    // The first transaction accepted is the one that was in flight, unchanged.
    let first = seen.accepted.lock().unwrap()[0].clone();
    assert_eq!(first.id, in_flight.id);
    let ids = |t: &Txn| -> Vec<Value> { t.events.iter().map(|e| e["event_id"].clone()).collect() };
    assert_eq!(ids(&first), ids(&in_flight));
    assert_eq!(
        seen.bodies_in(&room),
        sent,
        "in order, none lost, none twice"
    );
    let all: Vec<Value> = seen
        .events()
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    let unique: std::collections::HashSet<String> = all.iter().map(Value::to_string).collect();
    assert_eq!(unique.len(), all.len(), "an event in two transactions");
    assert!(seen.bad_auth.lock().unwrap().is_empty());
}

/// What bridge frameworks lean on, as Synapse allows it: the appservice
/// reads the joined members of a room one of its users is in without being
/// in it itself (not of another room, and not with a normal user's token);
/// and it logs a user in with MSC2778's unstable login type
/// (matrix-bot-sdk 0.6 sends it), inside its namespace only.
#[tokio::test]
async fn an_appservice_reads_members_where_its_users_are_and_logs_in_with_the_unstable_type() {
    let (server, _seen, _dir) = start().await;
    let alice = server.register("alice", "pw").await;
    let mallory = server.register("mallory", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let ghost = register_ghost(&server, "irc_bob").await;
    let (status, body) = server
        .post(
            &format!("{V3}/join/{}?{}", enc(&room), as_user(&ghost.user_id)),
            Some(AS_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let members = |token: &'static str, room: String| {
        let server = &server;
        async move {
            server
                .get(
                    &format!("{V3}/rooms/{}/joined_members", enc(&room)),
                    Some(token),
                )
                .await
        }
    };
    // As the sender, who is not in the room.
    let (status, body) = members(AS_TOKEN, room.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let joined = body["joined"].as_object().unwrap();
    assert!(joined.contains_key(&ghost.user_id), "{body}");
    assert!(joined.contains_key(&alice.user_id), "{body}");
    // A room without any of its users.
    let other = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = members(AS_TOKEN, other.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // A normal user outside the room gets no more than before.
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/joined_members", enc(&room)),
            Some(&mallory.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // MSC2778's unstable name: a device for the ghost.
    let unstable = "uk.half-shot.msc2778.login.application_service";
    let (status, body) = server
        .post(
            &format!("{V3}/login"),
            Some(AS_TOKEN),
            json!({ "type": unstable, "identifier": { "type": "m.id.user", "user": ghost.user_id } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], ghost.user_id.as_str());
    let token = body["access_token"].as_str().unwrap().to_owned();
    let device = body["device_id"].clone();
    assert!(device.is_string(), "{body}");
    let (status, body) = server.whoami(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], ghost.user_id.as_str());
    assert_eq!(body["device_id"], device);
    // Outside the namespace, and without the as_token: refused.
    let (status, body) = server
        .post(
            &format!("{V3}/login"),
            Some(AS_TOKEN),
            json!({ "type": unstable, "identifier": { "type": "m.id.user", "user": alice.user_id } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE");
    let (status, body) = server
        .post(
            &format!("{V3}/login"),
            None,
            json!({ "type": unstable, "identifier": { "type": "m.id.user", "user": ghost.user_id } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
}
