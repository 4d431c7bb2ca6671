//! A hostile federation peer: a small signing server of its own, written from the
//! spec (not from Lattice's code), that tests script to lie.
//!
//! It has its own server name (`localhost:<port>`), signing key and TLS
//! certificate from the dev CA, serves its keys at `/_matrix/key/v2/server`, and
//! answers every other request as the test scripted it (a JSON answer, a hang,
//! a slow, trickling, endless or huge body, or a function of the request). It
//! signs X-Matrix requests, builds valid PDUs of any room version (content
//! hash, signature, reference-hash event ID; in room versions 1 and 2 an
//! `$opaque:peer` event ID and `[id, {"sha256": …}]` references), and joins Lattice rooms through
//! `make_join`/`send_join` — after which it can forge, fork, point across rooms
//! or lie in its answers.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash, sign_json},
};
use serde_json::{Value, json};

use crate::harness::{TestServer, dev_tls, enc, free_port};

/// An answer computed from the request's path (with query) and JSON body.
pub type AnswerFn = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

/// What the peer answers to a request it was scripted for.
#[derive(Clone)]
pub enum Answer {
    /// A JSON body with a status.
    Json(StatusCode, Value),
    /// Raw bytes with a status and headers (for media, redirects, bad bodies).
    Raw(StatusCode, Vec<(String, String)>, Bytes),
    /// Never answers (the connection stays open, nothing is sent).
    Hang,
    /// Answers after a delay.
    Slow(Duration, Value),
    /// Another answer, after a delay.
    Delayed(Duration, Box<Answer>),
    /// A body that never ends, with a status and headers: `head`, then `chunk`
    /// every `every` (a trickle, or an endless flood when `every` is zero).
    Stream {
        status: StatusCode,
        headers: Vec<(String, String)>,
        head: Bytes,
        chunk: Bytes,
        every: Duration,
    },
    /// Computed from the request's path (with query) and JSON body.
    With(AnswerFn),
}

/// A request the peer received: method, path with query, JSON body (or null).
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

struct Script {
    /// (method, path prefix, answer); the longest matching prefix wins.
    answers: Vec<(Method, String, Answer)>,
    received: Vec<Received>,
}

pub struct HostilePeer {
    name: String,
    key: Arc<Ed25519KeyPair>,
    script: Arc<Mutex<Script>>,
    /// Reference hashes of the events the peer built or was sent (event format
    /// v1 references events by ID and hash).
    hashes: Mutex<std::collections::HashMap<String, String>>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

/// A room the peer joined on a Lattice server, with what it needs to build
/// events in it.
#[derive(Clone, Debug)]
pub struct JoinedRoom {
    pub room_id: String,
    pub version: RoomVersionId,
    pub user_id: String,
    /// The peer's own join event.
    pub join_id: String,
    /// The room's state at the join (`send_join`'s answer plus the join), as PDUs.
    pub state: Vec<Value>,
    /// The latest event the peer knows of (its join, then what it sent).
    pub latest: String,
    pub depth: i64,
}

impl JoinedRoom {
    /// The ID of a state event at the join.
    pub fn state_id(&self, kind: &str, state_key: &str) -> Option<String> {
        self.state
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == state_key)
            .and_then(|e| e["event_id"].as_str().map(str::to_owned))
    }

    /// The auth events of a message from the peer's user: create (where the
    /// room version lists it), power levels, the user's membership.
    pub fn message_auth(&self) -> Vec<String> {
        let mut ids = Vec::new();
        if !self.version_has_room_id_as_create()
            && let Some(id) = self.state_id("m.room.create", "")
        {
            ids.push(id);
        }
        ids.extend(self.state_id("m.room.power_levels", ""));
        ids.push(self.join_id.clone());
        ids
    }

    /// Records an event the peer sent as its latest.
    pub fn advance(&mut self, event_id: &str) {
        self.latest = event_id.to_owned();
        self.depth += 1;
    }

    fn version_has_room_id_as_create(&self) -> bool {
        self.version
            .rules()
            .is_some_and(|r| r.authorization.room_create_event_id_as_room_id)
    }
}

impl HostilePeer {
    pub async fn start() -> Self {
        Self::start_as("localhost").await
    }

    /// A peer named `<host>:<port>`; the dev certificate covers `localhost`
    /// and `127.0.0.1` (an IP-literal server name, which ACLs can tell apart).
    pub async fn start_as(host: &str) -> Self {
        let tls = dev_tls();
        let port = free_port();
        let name = format!("{host}:{port}");
        let doc = Ed25519KeyPair::generate();
        let key = Arc::new(Ed25519KeyPair::from_der(&doc, "hostile".into()).expect("key parses"));
        let script = Arc::new(Mutex::new(Script {
            answers: Vec::new(),
            received: Vec::new(),
        }));

        let acceptor = {
            let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
                std::fs::File::open(&tls.cert).unwrap(),
            ))
            .collect::<Result<_, _>>()
            .unwrap();
            let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
                std::fs::File::open(&tls.key).unwrap(),
            ))
            .unwrap()
            .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        };
        let app = Router::new().fallback({
            let script = script.clone();
            let key = key.clone();
            let name = name.clone();
            move |request: Request| {
                let script = script.clone();
                let key = key.clone();
                let name = name.clone();
                async move { answer(&script, &key, &name, request).await }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("hostile peer binds");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });

        let pem = std::fs::read(&tls.ca).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            name,
            key,
            script,
            hashes: Mutex::default(),
            http,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Scripts the answer to `method` requests whose path starts with `prefix`.
    pub fn on(&self, method: Method, prefix: &str, answer: Answer) {
        let mut script = self.script.lock().unwrap();
        script
            .answers
            .retain(|(m, p, _)| !(m == method && p == prefix));
        script.answers.push((method, prefix.to_owned(), answer));
    }

    /// The requests received so far whose path starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.script
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| same_prefix(&r.path, prefix))
            .cloned()
            .collect()
    }

    /// Countersigns invites of its users (`PUT /_matrix/federation/v2/invite`),
    /// as an honest invitee's server would.
    pub fn accept_invites(&self) {
        let key = self.key.clone();
        let name = self.name.clone();
        self.on(
            Method::PUT,
            "/_matrix/federation/v2/invite/",
            Answer::With(Arc::new(move |_, body| {
                let version = RoomVersionId::try_from(body["room_version"].as_str().unwrap_or(""))
                    .expect("room version");
                let object = countersign(&name, &key, &version, body["event"].clone());
                Answer::Json(StatusCode::OK, json!({ "event": object }))
            })),
        );
    }

    /// Countersigns invites of its users through the deprecated
    /// `PUT /_matrix/federation/v1/invite` (the body is the event, the room
    /// version 1 or 2), answering `[200, {"event": …}]` as old servers do.
    pub fn accept_v1_invites(&self) {
        let key = self.key.clone();
        let name = self.name.clone();
        self.on(
            Method::PUT,
            "/_matrix/federation/v1/invite/",
            Answer::With(Arc::new(move |_, body| {
                let object = countersign(&name, &key, &RoomVersionId::V1, body.clone());
                Answer::Json(StatusCode::OK, json!([200, { "event": object }]))
            })),
        );
    }

    /// `[id, {"sha256": hash}]` references (event format v1) to events the
    /// peer built or was sent.
    pub fn v1_refs(&self, ids: &[String]) -> Vec<Value> {
        let hashes = self.hashes.lock().unwrap();
        ids.iter()
            .map(|id| json!([id, { "sha256": hashes.get(id).cloned().unwrap_or_default() }]))
            .collect()
    }

    /// `GET /state_ids/{room}?event_id=…` on `server`'s federation API.
    pub async fn state_ids(
        &self,
        server: &TestServer,
        room: &str,
        event: &str,
    ) -> (StatusCode, Value) {
        self.request(
            server.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                enc(room),
                enc(event)
            ),
            None,
        )
        .await
    }

    /// A signed X-Matrix request to `server`'s federation API.
    pub async fn request(
        &self,
        server: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.request_raw(server, method, path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A signed X-Matrix request to `server`'s federation API; the answer as it
    /// is (for bodies that are not JSON).
    pub async fn request_raw(
        &self,
        server: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut object = CanonicalJsonObject::new();
        object.insert("method".into(), method.as_str().into());
        object.insert("uri".into(), path.into());
        object.insert("origin".into(), self.name.as_str().into());
        object.insert("destination".into(), server.into());
        if let Some(body) = &body {
            object.insert("content".into(), to_value(body.clone()));
        }
        sign_json(&self.name, self.key.as_ref(), &mut object).unwrap();
        let sig = match &object["signatures"] {
            CanonicalJsonValue::Object(s) => match &s[self.name.as_str()] {
                CanonicalJsonValue::Object(k) => match &k["ed25519:hostile"] {
                    CanonicalJsonValue::String(s) => s.clone(),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        let header = format!(
            "X-Matrix origin=\"{}\",destination=\"{server}\",key=\"ed25519:hostile\",sig=\"{sig}\"",
            self.name
        );
        let mut request = self
            .http
            .request(method, format!("https://{server}{path}"))
            .header("authorization", header);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request to the server")
    }

    /// A PDU of `version` from `fields` (everything but hashes and signatures;
    /// `origin_server_ts` defaults to now): hashed and signed by the peer.
    /// Returns its event ID and the PDU as sent over federation.
    ///
    /// In room versions 1 and 2 (event format v1) the event gets an ID of the
    /// peer unless `fields` has one, and `prev_events` / `auth_events` given as
    /// IDs become `[id, {"sha256": hash}]` pairs.
    pub fn pdu(&self, version: &RoomVersionId, mut fields: Value) -> (String, Value) {
        let rules = version.rules().expect("known room version");
        if fields.get("origin_server_ts").is_none() {
            fields["origin_server_ts"] = now_ms().into();
        }
        let v1 = rules.event_format.require_event_id;
        if v1 {
            if fields.get("event_id").is_none() {
                fields["event_id"] = format!(
                    "${}:{}",
                    lattice::domain::token::random_string(18),
                    self.name
                )
                .into();
            }
            let hashes = self.hashes.lock().unwrap();
            for key in ["prev_events", "auth_events"] {
                if let Some(list) = fields[key].as_array_mut() {
                    for entry in list.iter_mut() {
                        if let Some(id) = entry.as_str().map(str::to_owned) {
                            let hash = hashes.get(&id).cloned().unwrap_or_default();
                            *entry = json!([id, { "sha256": hash }]);
                        }
                    }
                }
            }
        }
        let mut object = to_object(fields);
        hash_and_sign_event(&self.name, self.key.as_ref(), &mut object, &rules.redaction)
            .expect("hash and sign");
        let hash = reference_hash(&object, &rules).expect("reference hash");
        let id = if v1 {
            object["event_id"].as_str().unwrap().to_owned()
        } else {
            format!("${hash}")
        };
        self.hashes.lock().unwrap().insert(id.clone(), hash);
        (id, serde_json::to_value(&object).unwrap())
    }

    /// Records the reference hashes of events the peer was sent (event format
    /// v1 references them).
    fn learn(&self, pdus: &[Value], rules: &ruma::room_version_rules::RoomVersionRules) {
        let mut hashes = self.hashes.lock().unwrap();
        for pdu in pdus {
            let object = to_object(pdu.clone());
            if let (Some(id), Ok(hash)) = (pdu["event_id"].as_str(), reference_hash(&object, rules))
            {
                hashes.insert(id.to_owned(), hash);
            }
        }
    }

    /// An event in a joined room from the peer's user, after `prev` with
    /// `auth` as auth events (the caller picks both, to lie with them).
    pub fn event(
        &self,
        room: &JoinedRoom,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[String],
        auth: &[String],
    ) -> (String, Value) {
        let mut fields = json!({
            "room_id": room.room_id,
            "sender": room.user_id,
            "type": kind,
            "content": content,
            "prev_events": prev,
            "auth_events": auth,
            "depth": room.depth + 1,
        });
        if let Some(k) = state_key {
            fields["state_key"] = k.into();
        }
        self.pdu(&room.version, fields)
    }

    /// A plain message after the peer's latest event, with honest auth events.
    pub fn message(&self, room: &JoinedRoom, body: &str) -> (String, Value) {
        self.event(
            room,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
            std::slice::from_ref(&room.latest),
            &room.message_auth(),
        )
    }

    /// Sends PDUs in one transaction; returns the `pdus` result map.
    pub async fn send(&self, server: &TestServer, pdus: Vec<Value>) -> Value {
        let txn = lattice::domain::token::random_string(12);
        let (status, body) = self
            .request(
                server.name(),
                Method::PUT,
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(json!({
                    "origin": self.name,
                    "origin_server_ts": now_ms(),
                    "pdus": pdus,
                    "edus": [],
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "/send answered {body}");
        body["pdus"].clone()
    }

    /// Joins `room_id` on `server` as `@localpart:<peer>` through
    /// `make_join`/`send_join`, as an honest server would.
    pub async fn join(&self, server: &TestServer, room_id: &str, localpart: &str) -> JoinedRoom {
        let signed = self.signed_join(server, room_id, localpart).await;
        let (status, body) = self
            .request(
                server.name(),
                Method::PUT,
                &format!(
                    "/_matrix/federation/v2/send_join/{}/{}",
                    enc(room_id),
                    enc(&signed.event_id)
                ),
                Some(signed.pdu.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "send_join: {body}");
        self.joined(room_id, signed, &body["state"])
    }

    /// The peer's side of a join sent and answered: the room as it knows it
    /// from `state` (a `send_join` answer's) and its join.
    pub fn joined(&self, room_id: &str, signed: SignedJoin, state: &Value) -> JoinedRoom {
        let rules = signed.version.rules().unwrap();
        let mut state: Vec<Value> = state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| with_event_id(e, &rules))
            .collect();
        self.learn(&state, &rules);
        state.push(with_event_id(&signed.pdu, &rules));
        JoinedRoom {
            room_id: room_id.to_owned(),
            version: signed.version,
            user_id: signed.user_id,
            join_id: signed.event_id.clone(),
            state,
            latest: signed.event_id,
            depth: signed.depth,
        }
    }

    /// The first half of a join of `room_id` on `server` as
    /// `@localpart:<peer>`: `make_join`, then the template completed and
    /// signed (not yet sent).
    pub async fn signed_join(
        &self,
        server: &TestServer,
        room_id: &str,
        localpart: &str,
    ) -> SignedJoin {
        let user_id = self.user(localpart);
        let versions: String = [
            "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
        ]
        .iter()
        .map(|v| format!("ver={v}"))
        .collect::<Vec<_>>()
        .join("&");
        let (status, body) = self
            .request(
                server.name(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?{versions}",
                    enc(room_id),
                    enc(&user_id)
                ),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "make_join: {body}");
        let version =
            RoomVersionId::try_from(body["room_version"].as_str().unwrap()).expect("version");
        let mut template = body["event"].clone();
        template["origin_server_ts"] = now_ms().into();
        // In event format v1 the join is the peer's: it gets the peer's ID
        // (the template's references stay the resident server's pairs).
        if let Some(o) = template.as_object_mut() {
            o.remove("event_id");
        }
        template["origin"] = self.name.as_str().into();
        let depth = template["depth"].as_i64().unwrap();
        let (event_id, pdu) = self.pdu(&version, template);
        SignedJoin {
            version,
            user_id,
            event_id,
            pdu,
            depth,
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A join the peer signed, not yet sent (`HostilePeer::signed_join`).
#[derive(Clone, Debug)]
pub struct SignedJoin {
    pub version: RoomVersionId,
    pub user_id: String,
    pub event_id: String,
    pub pdu: Value,
    pub depth: i64,
}

/// `event` with `name`'s signature added (over its redacted form, as event
/// signatures are), as the invitee's server countersigns an invite.
fn countersign(name: &str, key: &Ed25519KeyPair, version: &RoomVersionId, event: Value) -> Value {
    let rules = version.rules().expect("rules");
    let mut object = to_object(event);
    let mut redacted =
        ruma::canonical_json::redact(object.clone(), &rules.redaction, None).unwrap();
    sign_json(name, key, &mut redacted).unwrap();
    let ours = match redacted.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s[name].clone(),
        _ => unreachable!(),
    };
    if let Some(CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
        sigs.insert(name.to_owned(), ours);
    }
    serde_json::to_value(&object).unwrap()
}

/// A PDU with its `event_id` field added (computed), for lookups in tests.
fn with_event_id(pdu: &Value, rules: &ruma::room_version_rules::RoomVersionRules) -> Value {
    let mut pdu = pdu.clone();
    if rules.event_format.require_event_id {
        // Event format v1 carries its ID.
        return pdu;
    }
    let object = to_object(pdu.clone());
    let hash = reference_hash(&object, rules).expect("reference hash");
    pdu["event_id"] = format!("${hash}").into();
    pdu
}

async fn answer(
    script: &Mutex<Script>,
    key: &Ed25519KeyPair,
    name: &str,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let scripted = {
        let mut script = script.lock().unwrap();
        script.received.push(Received {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        });
        script
            .answers
            .iter()
            .filter(|(m, p, _)| *m == method && same_prefix(&path, p))
            .max_by_key(|(_, p, _)| p.len())
            .map(|(_, _, a)| a.clone())
    };
    // Its own keys, unless a test scripted other key answers.
    if scripted.is_none() && path == "/_matrix/key/v2/server" {
        return Json(StatusCode::OK, server_keys(key, name)).into_response();
    }
    let mut answer = scripted.unwrap_or(Answer::Json(
        StatusCode::NOT_FOUND,
        json!({"errcode": "M_UNRECOGNIZED", "error": "not scripted"}),
    ));
    loop {
        match answer {
            Answer::With(f) => answer = f(&path, &body),
            Answer::Json(status, value) => return Json(status, value).into_response(),
            Answer::Raw(status, headers, bytes) => {
                return (status, header_map(headers), Body::from(bytes)).into_response();
            }
            Answer::Hang => std::future::pending::<()>().await,
            Answer::Slow(delay, value) => {
                tokio::time::sleep(delay).await;
                return Json(StatusCode::OK, value).into_response();
            }
            Answer::Delayed(delay, then) => {
                tokio::time::sleep(delay).await;
                answer = *then;
            }
            Answer::Stream {
                status,
                headers,
                head,
                chunk,
                every,
            } => {
                let rest = futures_util::stream::unfold((), move |()| {
                    let chunk = chunk.clone();
                    async move {
                        if every.is_zero() {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(every).await;
                        }
                        Some((Ok::<_, std::io::Error>(chunk), ()))
                    }
                });
                let body = futures_util::stream::once(async move { Ok(head) }).chain(rest);
                return (status, header_map(headers), Body::from_stream(body)).into_response();
            }
        }
    }
}

fn header_map(headers: Vec<(String, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            axum::http::HeaderName::try_from(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

struct Json(StatusCode, Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            self.0,
            [("content-type", "application/json")],
            self.1.to_string(),
        )
            .into_response()
    }
}

/// The peer's `/_matrix/key/v2/server` answer, self-signed.
fn server_keys(key: &Ed25519KeyPair, name: &str) -> Value {
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.public_key());
    let mut object = to_object(json!({
        "server_name": name,
        "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        "verify_keys": { "ed25519:hostile": { "key": public } },
        "old_verify_keys": {},
    }));
    sign_json(name, key, &mut object).unwrap();
    serde_json::to_value(&object).unwrap()
}

fn to_value(v: Value) -> CanonicalJsonValue {
    CanonicalJsonValue::try_from(v).expect("canonical JSON")
}

fn to_object(v: Value) -> CanonicalJsonObject {
    match to_value(v) {
        CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Whether `path` starts with `prefix`, both percent-decoded: servers encode
/// path segments differently (`!room%3Aserver` or `!room:server`), and the
/// tests write prefixes with `enc`.
fn same_prefix(path: &str, prefix: &str) -> bool {
    percent_decoded(path).starts_with(&percent_decoded(prefix))
}

/// `s` with its `%XX` escapes decoded (a `+` is kept: in a path it is itself).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
