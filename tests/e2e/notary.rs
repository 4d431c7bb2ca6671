//! Lattice as a key notary (spec: "Querying Keys Through Another Server"),
//! with the hostile peer as an origin server that changes its mind: the
//! notary answers with the responses for the keys asked about, signed by
//! itself; it refetches when they are not valid until the minimum asked, but
//! a later answer of the origin never makes it forget or replace a key it
//! vouched for, and when the origin fails it still returns what it has,
//! expired or not.

use std::collections::BTreeMap;

use axum::http::Method;
use base64::Engine;
use reqwest::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap, sign_json, verify_json},
};
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, dev_tls},
    hostile::{Answer, HostilePeer, now_ms},
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn key_pair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
}

fn public(pair: &Ed25519KeyPair) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key())
}

fn to_object(value: Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).unwrap() {
        CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

/// `server`'s `/_matrix/key/v2/server` answer listing `pair` as its key,
/// valid until `valid_until`, self-signed.
fn key_response(server: &str, pair: &Ed25519KeyPair, valid_until: i64) -> Value {
    let mut object = to_object(json!({
        "server_name": server,
        "valid_until_ts": valid_until,
        "verify_keys": { format!("ed25519:{}", pair.version()): { "key": public(pair) } },
        "old_verify_keys": {},
    }));
    sign_json(server, pair, &mut object).unwrap();
    serde_json::to_value(&object).unwrap()
}

fn https() -> reqwest::Client {
    let pem = std::fs::read(&dev_tls().ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// `POST /_matrix/key/v2/query` for one key of `server`.
async fn query(lattice: &TestServer, server: &str, key_id: &str, minimum: i64) -> Vec<Value> {
    let response = https()
        .post(format!("{}/_matrix/key/v2/query", lattice.federation_url()))
        .json(&json!({
            "server_keys": { server: { key_id: { "minimum_valid_until_ts": minimum } } }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["server_keys"].as_array().unwrap().clone()
}

/// How many times the origin was asked for its keys.
fn fetches(peer: &HostilePeer) -> usize {
    peer.received("/_matrix/key/v2/server").len()
}

/// Checks that `response` carries a valid signature of the notary's.
async fn assert_notary_signed(lattice: &TestServer, response: &Value) {
    let own: Value = https()
        .get(format!(
            "{}/_matrix/key/v2/server",
            lattice.federation_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: BTreeMap<String, Base64> = own["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, k)| {
            (
                id.clone(),
                Base64::parse(k["key"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut object = to_object(response.clone());
    if let Some(CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
        sigs.retain(|name, _| name == lattice.name());
        assert_eq!(sigs.len(), 1, "{response}");
    }
    let mut map = PublicKeyMap::new();
    map.insert(lattice.name().to_owned(), keys);
    verify_json(&map, &object).expect("the notary's signature verifies");
}

/// SyTest "Key notary server must not overwrite a valid key with a spurious
/// result from the origin server", and the attack behind it: the origin
/// later lists another key only, or the same key ID with another key; the
/// notary keeps serving the key it vouched for.
#[tokio::test]
async fn a_later_answer_never_replaces_a_key_the_notary_vouched_for() {
    let lattice = TestServer::start_federating().await;
    let origin = HostilePeer::start().await;
    let name = origin.name().to_owned();
    let key_1 = key_pair("key_1");
    let expiry = now_ms() - DAY_MS;
    let first = key_response(&name, &key_1, expiry);
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::OK, first.clone()),
    );
    let found = query(&lattice, &name, "ed25519:key_1", 0).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["verify_keys"], first["verify_keys"]);
    assert_notary_signed(&lattice, &found[0]).await;
    assert_eq!(fetches(&origin), 1);

    // Asked for key_1 valid until now: the origin is asked again and names
    // only key_2; the notary still answers with key_1.
    let key_2 = key_pair("key_2");
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::OK, key_response(&name, &key_2, expiry + 1000)),
    );
    let found = query(&lattice, &name, "ed25519:key_1", now_ms()).await;
    assert_eq!(fetches(&origin), 2, "a newer key_1 was asked for");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["verify_keys"], first["verify_keys"]);

    // The same key ID with another key, valid for longer and self-signed by
    // that other key: key_1 stays what it was.
    let impostor = key_pair("key_1");
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(
            StatusCode::OK,
            key_response(&name, &impostor, now_ms() + DAY_MS),
        ),
    );
    let found = query(&lattice, &name, "ed25519:key_1", now_ms()).await;
    assert_eq!(fetches(&origin), 3);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["verify_keys"]["ed25519:key_1"]["key"],
        public(&key_1),
        "{found:?}"
    );

    // Asked with the validity key_1 has: answered from the store.
    let found = query(&lattice, &name, "ed25519:key_1", expiry).await;
    assert_eq!(fetches(&origin), 3, "no fetch for a key valid long enough");
    assert_eq!(found[0]["verify_keys"], first["verify_keys"]);
    // key_2 was recorded for itself.
    let found = query(&lattice, &name, "ed25519:key_2", expiry).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["verify_keys"]["ed25519:key_2"]["key"],
        public(&key_2)
    );
    origin.stop();
    lattice.stop().await;
}

/// SyTest "Key notary server should return an expired key if it can't find
/// any others": a newer validity is asked of the origin each time, and when it
/// answers with an error the expired key is returned as it was signed.
#[tokio::test]
async fn the_notary_returns_an_expired_key_when_the_origin_has_no_other() {
    let lattice = TestServer::start_federating().await;
    let origin = HostilePeer::start().await;
    let name = origin.name().to_owned();
    let key_0 = key_pair("key_0");
    let expiry = now_ms() - DAY_MS;
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::OK, key_response(&name, &key_0, expiry)),
    );
    query(&lattice, &name, "ed25519:key_0", 0).await;
    let found = query(&lattice, &name, "ed25519:key_0", expiry + 1000).await;
    assert_eq!(fetches(&origin), 2, "the newer validity was asked for");
    assert_eq!(found[0]["valid_until_ts"], expiry, "{found:?}");
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::BAD_REQUEST, json!({})),
    );
    let found = query(&lattice, &name, "ed25519:key_0", expiry + 1000).await;
    assert_eq!(fetches(&origin), 3, "asked again after an answer");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["server_name"], name.as_str());
    assert_eq!(found[0]["valid_until_ts"], expiry);
    assert_eq!(
        found[0]["verify_keys"]["ed25519:key_0"]["key"],
        public(&key_0)
    );
    assert_notary_signed(&lattice, &found[0]).await;
    origin.stop();
    lattice.stop().await;
}

/// `GET /_matrix/key/v2/query/{serverName}/{keyId}` (deprecated, as SyTest and
/// older servers call it) answers like the POST form.
#[tokio::test]
async fn the_notary_answers_get_requests_naming_a_key() {
    let lattice = TestServer::start_federating().await;
    let origin = HostilePeer::start().await;
    let name = origin.name().to_owned();
    let key = key_pair("k");
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::OK, key_response(&name, &key, now_ms() + DAY_MS)),
    );
    for path in [
        format!("/_matrix/key/v2/query/{name}/ed25519:k"),
        format!("/_matrix/key/v2/query/{name}"),
    ] {
        let response = https()
            .get(format!("{}{path}", lattice.federation_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.unwrap();
        let found = body["server_keys"].as_array().unwrap();
        assert_eq!(found.len(), 1, "{path}: {body}");
        assert_eq!(found[0]["verify_keys"]["ed25519:k"]["key"], public(&key));
        assert_notary_signed(&lattice, &found[0]).await;
    }
    // The second request was answered from the store.
    assert_eq!(fetches(&origin), 1);
    origin.stop();
    lattice.stop().await;
}

/// Unauthenticated requests cannot make the notary fetch a live server at
/// will: asking for ever newer validities costs a short burst of fetches, then
/// nothing until the budget refills (about one every ten seconds).
#[tokio::test]
async fn newer_validities_cost_a_bounded_number_of_fetches() {
    let lattice = TestServer::start_federating().await;
    let origin = HostilePeer::start().await;
    let name = origin.name().to_owned();
    let key = key_pair("k");
    origin.on(
        Method::GET,
        "/_matrix/key/v2/server",
        Answer::Json(StatusCode::OK, key_response(&name, &key, now_ms() + 1000)),
    );
    for i in 0..20 {
        let found = query(&lattice, &name, "ed25519:k", now_ms() + DAY_MS + i).await;
        assert_eq!(found.len(), 1, "still answered from the store: {found:?}");
    }
    let fetched = fetches(&origin);
    assert!(
        (1..=6).contains(&fetched),
        "{fetched} fetches for 20 requests"
    );
    origin.stop();
    lattice.stop().await;
}
