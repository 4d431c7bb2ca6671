//! Identity servers and invites by email (spec: client-server "Third-party
//! invites", "Adding Account Administrative Contact Information" (bind,
//! unbind); server-server "Third-party invites"; identity service v2).
//!
//! The identity server here is scripted, not Sydent: it serves the v2
//! endpoints a homeserver calls (`hash_details`, `lookup`, `store-invite`,
//! `3pid/bind`, `3pid/unbind`, `pubkey/isvalid`) over TLS with the dev
//! certificate, signs with real ed25519 keys (a long-term and an ephemeral
//! one, as Sydent does) and calls `onbind` as Sydent does. It checks the
//! access token on every v2 call and the homeserver's X-Matrix signature on
//! unbind.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{CanonicalJsonObject, signatures::Ed25519KeyPair};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, dev_tls, enc, eventually, free_port, password_auth};

const ACCESS_TOKEN: &str = "swordfish";
const PEPPER: &str = "matrixrocks";

struct Keys {
    long_term: Ed25519KeyPair,
    ephemeral: Ed25519KeyPair,
}

/// A stored invite: (room_id, sender, token).
type StoredInvite = (String, String, String);

#[derive(Default)]
struct IsState {
    /// (medium, address) → mxid.
    bindings: HashMap<(String, String), String>,
    /// Validation sessions: sid → (medium, address).
    sessions: HashMap<String, (String, String)>,
    /// Stored invites: (medium, address) → [(room_id, sender, token)].
    invites: HashMap<(String, String), Vec<StoredInvite>>,
    /// Public keys no longer valid.
    revoked: HashSet<String>,
    /// Every request: (path, authorization header, body).
    requests: Vec<(String, Option<String>, Value)>,
    /// The homeserver whose unbind signatures are checked: (name, key id, key).
    homeserver_key: Option<(String, String, Vec<u8>)>,
    next_token: u64,
}

#[derive(Clone)]
pub struct IdentityServer {
    pub name: String,
    keys: Arc<Keys>,
    state: Arc<Mutex<IsState>>,
    http: reqwest::Client,
}

fn pair() -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).unwrap()
}

fn public(pair: &Ed25519KeyPair) -> String {
    STANDARD_NO_PAD.encode(pair.public_key())
}

/// Signs `value` in place as `entity`, with key ID `ed25519:0` (SyTest's and
/// Sydent's ephemeral signatures also say `ed25519:0`).
fn sign(entity: &str, pair: &Ed25519KeyPair, value: &mut Value) {
    let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
    ruma::signatures::sign_json(entity, pair, &mut object).unwrap();
    *value = serde_json::to_value(object).unwrap();
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl IdentityServer {
    pub async fn start() -> Self {
        let tls = dev_tls();
        let port = free_port();
        let server = Self {
            name: format!("localhost:{port}"),
            keys: Arc::new(Keys {
                long_term: pair(),
                ephemeral: pair(),
            }),
            state: Arc::default(),
            http: {
                let pem = std::fs::read(&tls.ca).unwrap();
                reqwest::Client::builder()
                    .use_rustls_tls()
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap()
            },
        };
        let app = Router::new()
            .route("/_matrix/identity/v2/hash_details", get(hash_details))
            .route("/_matrix/identity/v2/lookup", post(lookup))
            .route("/_matrix/identity/v2/store-invite", post(store_invite))
            .route("/_matrix/identity/v2/3pid/bind", post(bind))
            .route("/_matrix/identity/v2/3pid/unbind", post(unbind))
            .route("/_matrix/identity/v2/pubkey/isvalid", get(is_valid))
            .layer(axum::middleware::from_fn_with_state(server.clone(), record))
            .with_state(server.clone());
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
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("identity server binds");
        tokio::spawn(async move {
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
        server
    }

    /// Unbind requests must carry this homeserver's X-Matrix signature.
    pub fn trust_homeserver(&self, hs: &TestServer) {
        let key = &hs.state.signing_key;
        self.state.lock().unwrap().homeserver_key = Some((
            hs.name().to_owned(),
            key.key_id.clone(),
            key.pair.public_key().to_vec(),
        ));
    }

    /// A validated session for an address (what requestToken and
    /// submitToken at the identity server would leave); returns its sid.
    pub fn validated_session(&self, address: &str) -> String {
        let mut state = self.state.lock().unwrap();
        let sid = format!("sid{}", state.sessions.len());
        state
            .sessions
            .insert(sid.clone(), ("email".into(), address.into()));
        sid
    }

    pub fn bound_to(&self, address: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .bindings
            .get(&("email".to_owned(), address.to_owned()))
            .cloned()
    }

    /// Binds out of band (the user validated the address at the identity
    /// server itself).
    pub fn bind_out_of_band(&self, address: &str, mxid: &str) {
        self.state
            .lock()
            .unwrap()
            .bindings
            .insert(("email".into(), address.into()), mxid.into());
    }

    pub fn requests(&self, path: &str) -> Vec<(Option<String>, Value)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, a, b)| (a.clone(), b.clone()))
            .collect()
    }

    /// Makes every key invalid (as if rotated): `isvalid` says no.
    pub fn revoke_keys(&self) {
        let mut state = self.state.lock().unwrap();
        state.revoked.insert(public(&self.keys.long_term));
        state.revoked.insert(public(&self.keys.ephemeral));
    }

    /// The invites stored for an address, signed for `mxid` as Sydent's
    /// onbind carries them.
    pub fn signed_invites(&self, address: &str, mxid: &str) -> Vec<Value> {
        let stored = self
            .state
            .lock()
            .unwrap()
            .invites
            .get(&("email".to_owned(), address.to_owned()))
            .cloned()
            .unwrap_or_default();
        stored
            .into_iter()
            .map(|(room_id, sender, token)| {
                let mut signed = json!({ "mxid": mxid, "token": token });
                sign(&self.name, &self.keys.long_term, &mut signed);
                json!({
                    "medium": "email", "address": address, "mxid": mxid,
                    "room_id": room_id, "sender": sender, "signed": signed,
                })
            })
            .collect()
    }

    /// Binds `address` to `mxid` and tells the user's homeserver (at
    /// `hs_base`, its federation URL) with `invites`, as Sydent does; returns
    /// the homeserver's answer.
    pub async fn onbind(
        &self,
        hs_base: &str,
        address: &str,
        mxid: &str,
        invites: Vec<Value>,
    ) -> (StatusCode, Value) {
        self.bind_out_of_band(address, mxid);
        let mut body = json!({
            "medium": "email", "address": address, "mxid": mxid, "invites": invites,
        });
        sign(&self.name, &self.keys.long_term, &mut body);
        let response = self
            .http
            .post(format!("{hs_base}/_matrix/federation/v1/3pid/onbind"))
            .json(&body)
            .send()
            .await
            .expect("onbind sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A `third_party_signed` block for `/join`, signed with the ephemeral
    /// key (as SyTest's identity server does).
    pub fn join_block(&self, mxid: &str, sender: &str, token: &str) -> Value {
        let mut block = json!({ "mxid": mxid, "sender": sender, "token": token });
        sign(&self.name, &self.keys.ephemeral, &mut block);
        block
    }
}

async fn record(
    State(is): State<IdentityServer>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    is.state.lock().unwrap().requests.push((path, auth, json));
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ACCESS_TOKEN}"))
}

fn unauthorized() -> Response {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({ "errcode": "M_UNAUTHORIZED", "error": "no token" }),
    )
}

async fn hash_details(headers: HeaderMap) -> Response {
    if !bearer_ok(&headers) {
        return unauthorized();
    }
    reply(
        StatusCode::OK,
        json!({ "lookup_pepper": PEPPER, "algorithms": ["none", "sha256"] }),
    )
}

async fn lookup(
    State(is): State<IdentityServer>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !bearer_ok(&headers) {
        return unauthorized();
    }
    if body["algorithm"] != "sha256" || body["pepper"] != PEPPER {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "errcode": "M_INVALID_PEPPER" }),
        );
    }
    let state = is.state.lock().unwrap();
    let mut mappings = serde_json::Map::new();
    for hash in body["addresses"].as_array().into_iter().flatten() {
        for ((medium, address), mxid) in &state.bindings {
            if lattice::domain::third_party_invite::lookup_hash(address, medium, PEPPER) == *hash {
                mappings.insert(hash.as_str().unwrap().into(), mxid.clone().into());
            }
        }
    }
    reply(StatusCode::OK, json!({ "mappings": mappings }))
}

async fn store_invite(
    State(is): State<IdentityServer>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !bearer_ok(&headers) {
        return unauthorized();
    }
    let mut state = is.state.lock().unwrap();
    state.next_token += 1;
    let token = format!("tok{}", state.next_token);
    state
        .invites
        .entry((
            body["medium"].as_str().unwrap().into(),
            body["address"].as_str().unwrap().into(),
        ))
        .or_default()
        .push((
            body["room_id"].as_str().unwrap().into(),
            body["sender"].as_str().unwrap().into(),
            token.clone(),
        ));
    let url = format!("https://{}/_matrix/identity/v2/pubkey/isvalid", is.name);
    reply(
        StatusCode::OK,
        json!({
            "token": token,
            "display_name": "Bob",
            "public_keys": [
                { "public_key": public(&is.keys.long_term), "key_validity_url": url },
                { "public_key": public(&is.keys.ephemeral), "key_validity_url": url },
            ],
        }),
    )
}

async fn bind(
    State(is): State<IdentityServer>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !bearer_ok(&headers) {
        return unauthorized();
    }
    let mut state = is.state.lock().unwrap();
    let Some((medium, address)) = state
        .sessions
        .get(body["sid"].as_str().unwrap_or(""))
        .cloned()
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "errcode": "M_NO_VALID_SESSION" }),
        );
    };
    let mxid = body["mxid"].as_str().unwrap().to_owned();
    state
        .bindings
        .insert((medium.clone(), address.clone()), mxid.clone());
    let mut answer = json!({
        "medium": medium, "address": address, "mxid": mxid,
        "not_before": 0, "not_after": 4_582_425_849_161_u64, "ts": 0,
    });
    sign(&is.name, &is.keys.long_term, &mut answer);
    reply(StatusCode::OK, answer)
}

/// Unbinding without a session must be signed by the user's server (identity
/// service "Unbind": X-Matrix authentication).
async fn unbind(
    State(is): State<IdentityServer>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut state = is.state.lock().unwrap();
    let Some((hs, key_id, key)) = state.homeserver_key.clone() else {
        return reply(StatusCode::FORBIDDEN, json!({ "errcode": "M_FORBIDDEN" }));
    };
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| lattice::domain::xmatrix::XMatrix::parse(h).ok());
    let Some(header) = header else {
        return reply(StatusCode::FORBIDDEN, json!({ "errcode": "M_FORBIDDEN" }));
    };
    let mut object = json!({
        "method": "POST",
        "uri": "/_matrix/identity/v2/3pid/unbind",
        "origin": header.origin.as_str(),
        "destination": is.name,
        "content": body,
        "signatures": { header.origin.as_str(): { header.key.as_str(): header.sig } },
    });
    let mut keys = ruma::signatures::PublicKeyMap::new();
    keys.insert(
        hs.clone(),
        [(key_id, ruma::serde::Base64::new(key))]
            .into_iter()
            .collect(),
    );
    let object_c: CanonicalJsonObject = serde_json::from_value(object.take()).unwrap();
    if header.origin.as_str() != hs || ruma::signatures::verify_json(&keys, &object_c).is_err() {
        return reply(StatusCode::FORBIDDEN, json!({ "errcode": "M_FORBIDDEN" }));
    }
    let mxid = body["mxid"].as_str().unwrap_or_default();
    if !mxid.ends_with(&format!(":{hs}")) {
        return reply(StatusCode::FORBIDDEN, json!({ "errcode": "M_FORBIDDEN" }));
    }
    let key = (
        body["threepid"]["medium"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["threepid"]["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    if state.bindings.get(&key).map(String::as_str) != Some(mxid) {
        return reply(StatusCode::NOT_FOUND, json!({ "errcode": "M_NOT_FOUND" }));
    }
    state.bindings.remove(&key);
    reply(StatusCode::OK, json!({}))
}

async fn is_valid(State(is): State<IdentityServer>, request: Request) -> Response {
    let key = request
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "public_key")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let state = is.state.lock().unwrap();
    let known = key == public(&is.keys.long_term) || key == public(&is.keys.ephemeral);
    reply(
        StatusCode::OK,
        json!({ "valid": known && !state.revoked.contains(&key) }),
    )
}

// ---------------------------------------------------------------------------

async fn membership(server: &TestServer, who: &Login, room: &str, user: &str) -> Option<Value> {
    let (status, body) = server
        .api
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            Some(&who.access_token),
        )
        .await;
    (status == StatusCode::OK).then_some(body)
}

async fn invite_by_email(
    server: &TestServer,
    who: &Login,
    room: &str,
    is: &IdentityServer,
    address: &str,
) -> (StatusCode, Value) {
    server
        .api
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            Some(&who.access_token),
            json!({
                "id_server": is.name, "id_access_token": ACCESS_TOKEN,
                "medium": "email", "address": address,
            }),
        )
        .await
}

async fn third_party_invites(server: &TestServer, who: &Login, room: &str) -> Vec<Value> {
    let (status, state) = server
        .api
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
        .filter(|e| e["type"] == "m.room.third_party_invite")
        .cloned()
        .collect()
}

#[tokio::test]
async fn binding_through_the_homeserver_and_unbinding_where_it_was_bound() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    is.trust_homeserver(&server);
    let alice = server.api.register("alice", "pw-alice").await;

    let sid = is.validated_session("alice@example.org");
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(&alice.access_token),
            json!({
                "id_server": is.name, "id_access_token": ACCESS_TOKEN,
                "sid": sid, "client_secret": "secret",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        is.bound_to("alice@example.org").as_deref(),
        Some(alice.user_id.as_str())
    );
    let (auth, request) = is.requests("/_matrix/identity/v2/3pid/bind").remove(0);
    assert_eq!(auth.as_deref(), Some("Bearer swordfish"));
    assert_eq!(request["mxid"], alice.user_id.as_str());

    // A session the identity server never validated binds nothing.
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(&alice.access_token),
            json!({
                "id_server": is.name, "id_access_token": ACCESS_TOKEN,
                "sid": "made-up", "client_secret": "secret",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Unbinding without naming the identity server: the one it was bound on
    // (the request signed by the homeserver, which the identity server checks).
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&alice.access_token),
            json!({ "medium": "email", "address": "alice@example.org" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);

    // Bound out of band: /account/3pid/delete with the identity server named.
    is.bind_out_of_band("alice2@example.org", &alice.user_id);
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&alice.access_token),
            json!({ "medium": "email", "address": "alice2@example.org", "id_server": is.name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice2@example.org"), None);

    // Nothing recorded and no server named: nothing to ask.
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&alice.access_token),
            json!({ "medium": "email", "address": "nobody@example.org" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
}

#[tokio::test]
async fn deactivation_unbinds_what_was_bound_through_the_homeserver() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    is.trust_homeserver(&server);
    let alice = server.api.register("alice", "pw-alice").await;
    let sid = is.validated_session("alice@example.org");
    let (status, _) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(&alice.access_token),
            json!({ "id_server": is.name, "id_access_token": ACCESS_TOKEN, "sid": sid, "client_secret": "s" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.access_token),
            json!({ "auth": password_auth(&alice.user_id, "pw-alice", session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
}

#[tokio::test]
async fn inviting_a_bound_address_invites_its_user() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let bob = server.api.register("bob", "pw").await;
    is.bind_out_of_band("bob@example.org", &bob.user_id);

    let room = server.api.create_room(&alice, json!({})).await;
    let (status, body) = invite_by_email(&server, &alice, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = membership(&server, &alice, &room, &bob.user_id)
        .await
        .unwrap();
    assert_eq!(member["membership"], "invite");
    // Looked up hashed (v2, sha256), with the client's token.
    let (auth, lookup) = is.requests("/_matrix/identity/v2/lookup").remove(0);
    assert_eq!(auth.as_deref(), Some("Bearer swordfish"));
    assert_eq!(lookup["algorithm"], "sha256");
    assert!(!lookup.to_string().contains("bob@example.org"), "{lookup}");

    // createRoom's invite_3pid does the same.
    let (status, created) = server
        .api
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.access_token),
            json!({ "invite_3pid": [{
                "id_server": is.name, "id_access_token": ACCESS_TOKEN,
                "medium": "email", "address": "bob@example.org",
            }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room2 = created["room_id"].as_str().unwrap();
    let member = membership(&server, &alice, room2, &bob.user_id)
        .await
        .unwrap();
    assert_eq!(member["membership"], "invite");
}

#[tokio::test]
async fn an_unbound_address_is_invited_once_bound_and_the_user_joins() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let carol = server.api.register("carol", "pw").await;
    let bob = server.api.register("bob", "pw").await;
    let room = server
        .api
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Lemurs" }),
        )
        .await;
    // carol invites (private_chat: members may invite), then leaves before
    // the address is bound: her invite still stands.
    let (status, _) = server
        .api
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.api.join(&carol, &room).await;

    let (status, body) = invite_by_email(&server, &carol, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pending = third_party_invites(&server, &alice, &room).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["sender"], carol.user_id.as_str());
    assert_eq!(pending[0]["content"]["display_name"], "Bob");
    assert_eq!(
        pending[0]["content"]["public_keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, stored) = is.requests("/_matrix/identity/v2/store-invite").remove(0);
    assert_eq!(stored["room_id"], room.as_str());
    assert_eq!(stored["sender"], carol.user_id.as_str());
    assert_eq!(stored["room_name"], "Lemurs");

    let (status, _) = server
        .api
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&carol.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let invites = is.signed_invites("bob@example.org", &bob.user_id);
    let (status, body) = is
        .onbind(
            &server.federation_url(),
            "bob@example.org",
            &bob.user_id,
            invites,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = membership(&server, &alice, &room, &bob.user_id)
        .await
        .unwrap();
    assert_eq!(member["membership"], "invite", "{member}");
    assert_eq!(member["third_party_invite"]["display_name"], "Bob");
    server.api.join(&bob, &room).await;
    let member = membership(&server, &alice, &room, &bob.user_id)
        .await
        .unwrap();
    assert_eq!(member["membership"], "join");
}

/// onbind is unauthenticated (any caller): only blocks an identity server
/// signed with a key of the room's own invite event, for that room's token,
/// and still valid, make invites.
#[tokio::test]
async fn onbind_makes_no_invite_from_a_forged_misplaced_or_revoked_block() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let bob = server.api.register("bob", "pw").await;
    let room = server.api.create_room(&alice, json!({})).await;
    let other_room = server.api.create_room(&alice, json!({})).await;
    let (status, _) = invite_by_email(&server, &alice, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK);
    let genuine = is.signed_invites("bob@example.org", &bob.user_id).remove(0);

    // Forged: signed by someone else's key, or not signed.
    let attacker = pair();
    let mut forged = genuine.clone();
    let mut block = json!({ "mxid": bob.user_id, "token": genuine["signed"]["token"] });
    sign(&is.name, &attacker, &mut block);
    forged["signed"] = block;
    let mut unsigned = genuine.clone();
    unsigned["signed"] = json!({ "mxid": bob.user_id, "token": genuine["signed"]["token"] });
    // The genuine block for another user (mallory claims bob's invite).
    let mallory = server.api.register("mallory", "pw").await;
    let mut stolen = genuine.clone();
    stolen["mxid"] = mallory.user_id.clone().into();
    // The genuine block, presented for another room (whose state has no
    // invite with this token).
    let mut misplaced = genuine.clone();
    misplaced["room_id"] = other_room.clone().into();
    // Each is refused (the answer is the last one's error, as Synapse's).
    for invite in [forged, unsigned, stolen, misplaced] {
        let (status, body) = is
            .onbind(
                &server.federation_url(),
                "bob@example.org",
                &bob.user_id,
                vec![invite],
            )
            .await;
        assert!(status.is_client_error(), "{status} {body}");
    }
    assert_eq!(membership(&server, &alice, &room, &bob.user_id).await, None);
    assert_eq!(
        membership(&server, &alice, &room, &mallory.user_id).await,
        None
    );
    assert_eq!(
        membership(&server, &alice, &other_room, &bob.user_id).await,
        None
    );

    // Too many invites in one onbind: refused whole, nothing attempted.
    let (status, body) = is
        .onbind(
            &server.federation_url(),
            "bob@example.org",
            &bob.user_id,
            vec![genuine.clone(); lattice::service::third_party_invite::MAX_ONBIND_INVITES + 1],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(membership(&server, &alice, &room, &bob.user_id).await, None);

    // Genuine, but the identity server no longer calls the key valid.
    is.revoke_keys();
    let (status, body) = is
        .onbind(
            &server.federation_url(),
            "bob@example.org",
            &bob.user_id,
            vec![genuine],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(membership(&server, &alice, &room, &bob.user_id).await, None);
    let (status, _) = server
        .api
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn joining_with_a_signed_block_needs_the_identity_servers_signature() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let bob = server.api.register("bob", "pw").await;
    let room = server.api.create_room(&alice, json!({})).await;
    let (status, _) = invite_by_email(&server, &alice, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK);
    let token = third_party_invites(&server, &alice, &room).await[0]["state_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let join = |signed: Value| {
        let server = &server;
        let bob = &bob;
        let room = &room;
        async move {
            server
                .api
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
                    Some(&bob.access_token),
                    json!({ "third_party_signed": signed }),
                )
                .await
        }
    };
    let mut forged = json!({ "mxid": bob.user_id, "sender": alice.user_id, "token": token });
    sign(&is.name, &pair(), &mut forged);
    let (status, body) = join(forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A genuine block for someone else.
    let (status, body) = join(is.join_block("@carol:localhost", &alice.user_id, &token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(membership(&server, &alice, &room, &bob.user_id).await, None);

    let (status, body) = join(is.join_block(&bob.user_id, &alice.user_id, &token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = membership(&server, &alice, &room, &bob.user_id)
        .await
        .unwrap();
    assert_eq!(member["membership"], "join");
}

#[tokio::test]
async fn only_members_who_may_invite_reach_the_identity_server() {
    let server = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let dave = server.api.register("dave", "pw").await;
    let outsider = server.api.register("outsider", "pw").await;
    let room = server
        .api
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "power_level_content_override": { "invite": 50 } }),
        )
        .await;
    server.api.join(&dave, &room).await;
    for who in [&dave, &outsider] {
        let (status, body) = invite_by_email(&server, who, &room, &is, "bob@example.org").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert!(is.requests("/_matrix/identity/v2/hash_details").is_empty());
    assert!(is.requests("/_matrix/identity/v2/store-invite").is_empty());
    assert!(third_party_invites(&server, &alice, &room).await.is_empty());
}

#[tokio::test]
async fn identity_servers_on_private_addresses_or_with_paths_are_refused() {
    // Default outbound policy: loopback and private ranges refused.
    let server = TestServer::start().await;
    let is = IdentityServer::start().await;
    let alice = server.api.register("alice", "pw").await;
    let room = server.api.create_room(&alice, json!({})).await;
    let (status, body) = invite_by_email(&server, &alice, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(is.requests("/_matrix/identity/v2/hash_details").is_empty());
    for id_server in ["10.1.2.3", "127.0.0.1:8090", "[::1]:8090"] {
        let (status, body) = server
            .api
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                Some(&alice.access_token),
                json!({ "id_server": id_server, "id_access_token": "t", "medium": "email", "address": "b@example.org" }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{id_server}: {body}");
    }
    for id_server in [
        "https://id.example.org",
        "id.example.org/path",
        "user@id.example.org",
    ] {
        let (status, body) = server
            .api
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                Some(&alice.access_token),
                json!({ "id_server": id_server, "id_access_token": "t", "medium": "email", "address": "b@example.org" }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id_server}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }
    // Binding likewise.
    let (status, body) = server
        .api
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(&alice.access_token),
            json!({ "id_server": is.name, "id_access_token": ACCESS_TOKEN, "sid": "s", "client_secret": "c" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(is.requests("/_matrix/identity/v2/3pid/bind").is_empty());
}

/// The invitee's server is not in the room: it asks the inviter's server to
/// make the invite (`exchange_third_party_invite`), which sends it over.
#[tokio::test]
async fn an_invite_by_email_reaches_a_user_of_another_server() {
    let hs1 = TestServer::start_federating().await;
    let hs2 = TestServer::start_federating().await;
    let is = IdentityServer::start().await;
    let alice = hs1.api.register("alice", "pw").await;
    let bob = hs2.api.register("bob", "pw").await;
    let room = hs1.api.create_room(&alice, json!({})).await;
    let (status, body) = invite_by_email(&hs1, &alice, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let invites = is.signed_invites("bob@example.org", &bob.user_id);
    let (status, body) = is
        .onbind(
            &hs2.federation_url(),
            "bob@example.org",
            &bob.user_id,
            invites,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("bob's invite on hs1", || async {
        membership(&hs1, &alice, &room, &bob.user_id)
            .await
            .is_some_and(|m| m["membership"] == "invite")
    })
    .await;
    let (status, body) = hs2
        .api
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("bob joined on hs1", || async {
        membership(&hs1, &alice, &room, &bob.user_id)
            .await
            .is_some_and(|m| m["membership"] == "join")
    })
    .await;
}
