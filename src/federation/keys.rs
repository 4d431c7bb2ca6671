//! Server keys: ours as `/_matrix/key/v2/server` publishes them, and other
//! servers' keys, fetched directly or through notary servers, verified, cached in
//! `server_keys` and served again as a notary.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName,
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet, sign_json, verify_json},
};
use serde_json::{Value, json};

use crate::{
    app::AppState,
    error::{Error, ErrorKind, Result},
    storage::{keys as own_keys, now_ms, server_keys},
};

/// How long our published keys are valid for; peers re-fetch after this.
const OWN_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// After a failed fetch, a server's keys are not asked for again this soon.
const FETCH_BACKOFF: Duration = Duration::from_secs(60);
/// After a successful fetch, not again this soon either (a request naming a key
/// the server does not have must not cost a fetch each time).
const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// Servers whose last fetch is remembered, at most.
const MAX_REMEMBERED: usize = 10_000;
/// Fetches one notary request (unauthenticated) may cause, at most; other
/// servers it names are answered from what is stored.
pub const MAX_NOTARY_FETCHES: usize = 10;
/// Keys fetched are trusted at most this far into the future, whatever
/// `valid_until_ts` says (as Synapse, 7 days).
const MAX_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Recent fetches, so a server is not asked again too soon (and a dead one
/// costs one attempt per [`FETCH_BACKOFF`]), and one fetch at a time per
/// server: concurrent requests for the same server wait for the one in flight.
#[derive(Default)]
pub struct FetchState {
    /// Server → when its last fetch ended, and whether it succeeded.
    last: Mutex<HashMap<String, (Instant, bool)>>,
    in_flight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl FetchState {
    /// Whether `server` was fetched too recently to be fetched again.
    fn too_soon(&self, server: &str) -> Option<bool> {
        let last = self.last.lock().expect("key fetch state");
        let (at, ok) = last.get(server)?;
        let wait = if *ok { REFETCH_AFTER } else { FETCH_BACKOFF };
        (at.elapsed() < wait).then_some(*ok)
    }

    fn record(&self, server: &str, ok: bool) {
        let mut last = self.last.lock().expect("key fetch state");
        if last.len() >= MAX_REMEMBERED && !last.contains_key(server) {
            last.retain(|_, (at, _)| at.elapsed() < FETCH_BACKOFF);
            if last.len() >= MAX_REMEMBERED {
                last.clear();
            }
        }
        last.insert(server.to_owned(), (Instant::now(), ok));
    }

    /// Waits for the fetch of `server` in flight, if any, and holds the turn.
    async fn turn(&self, server: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut in_flight = self.in_flight.lock().expect("key fetch state");
            match in_flight.get(server).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if in_flight.len() >= MAX_REMEMBERED {
                        in_flight.retain(|_, w| w.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    in_flight.insert(server.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Our `/_matrix/key/v2/server` response: the current key, old keys with their
/// expiry, signed by the current key.
pub async fn own_response(app: &AppState) -> Result<Value> {
    let key = &app.signing_key;
    let mut old = serde_json::Map::new();
    for stored in own_keys::expired(&app.db).await? {
        let version = stored.key_id.trim_start_matches("ed25519:").to_owned();
        let Ok(pair) = Ed25519KeyPair::from_der(&stored.pkcs8, version) else {
            continue;
        };
        old.insert(
            stored.key_id,
            json!({
                "key": Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode(),
                "expired_ts": stored.expired_ts,
            }),
        );
    }
    let response = json!({
        "server_name": app.server_name.as_str(),
        "verify_keys": {
            key.key_id.as_str(): {
                "key": Base64::<ruma::serde::base64::Standard, _>::new(key.pair.public_key().to_vec()).encode(),
            }
        },
        "old_verify_keys": old,
        "valid_until_ts": now_ms() + OWN_VALIDITY.as_millis() as i64,
    });
    sign(app, response)
}

/// Adds our signature to a JSON object.
pub fn sign(app: &AppState, value: Value) -> Result<Value> {
    let mut object: CanonicalJsonObject = match CanonicalJsonValue::try_from(value)
        .map_err(|e| anyhow::anyhow!("canonical json: {e}"))?
    {
        CanonicalJsonValue::Object(o) => o,
        _ => return Err(anyhow::anyhow!("not an object").into()),
    };
    sign_json(app.server_name.as_str(), &app.signing_key.pair, &mut object)
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    Ok(serde_json::to_value(object).map_err(|e| anyhow::anyhow!("{e}"))?)
}

/// The verify keys of `server` usable at `valid_at` (ms): current keys whose
/// validity reaches it, and old keys that expired after it. Fetches when a
/// requested key is unknown or no longer valid.
pub async fn public_keys(
    app: &AppState,
    server: &ServerName,
    key_ids: &[String],
    valid_at: i64,
) -> Result<PublicKeySet> {
    if server == app.server_name {
        return own_key_set(app).await;
    }
    let set = stored_usable(app, server, valid_at).await?;
    if key_ids.iter().all(|id| set.contains_key(id)) {
        return Ok(set);
    }
    let _turn = app.key_fetch.turn(server.as_str()).await;
    // A fetch that ended while we waited may have brought the keys.
    let set = stored_usable(app, server, valid_at).await?;
    if key_ids.iter().all(|id| set.contains_key(id)) {
        return Ok(set);
    }
    match fetch(app, server).await {
        Ok(()) => stored_usable(app, server, valid_at).await,
        // Fetched moments ago: what is stored is what the server has.
        Err(_) if app.key_fetch.too_soon(server.as_str()) == Some(true) => Ok(set),
        Err(e) => Err(e),
    }
}

/// Stored keys of `server` usable at `valid_at`.
async fn stored_usable(app: &AppState, server: &ServerName, valid_at: i64) -> Result<PublicKeySet> {
    let stored = server_keys::keys_of(&app.db, server.as_str()).await?;
    Ok(stored
        .iter()
        .filter(|k| match k.expired_ts {
            Some(expired) => expired > valid_at,
            None => k.valid_until_ts >= valid_at,
        })
        .filter_map(|k| {
            Base64::parse(&k.verify_key)
                .ok()
                .map(|b| (k.key_id.clone(), b))
        })
        .collect())
}

async fn own_key_set(app: &AppState) -> Result<PublicKeySet> {
    let mut set = PublicKeySet::new();
    set.insert(
        app.signing_key.key_id.clone(),
        Base64::new(app.signing_key.pair.public_key().to_vec()),
    );
    Ok(set)
}

/// Fetches `server`'s keys: directly, then through each configured notary. Not
/// again within [`REFETCH_AFTER`] of a success or [`FETCH_BACKOFF`] of a
/// failure.
async fn fetch(app: &AppState, server: &ServerName) -> Result<()> {
    if let Some(ok) = app.key_fetch.too_soon(server.as_str()) {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            if ok {
                format!("Keys of {server} were fetched moments ago")
            } else {
                format!("Keys of {server} are unavailable (recent fetch failed)")
            },
        ));
    }
    let direct = fetch_direct(app, server).await;
    let result = match direct {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(%server, error = %e, "direct key fetch failed");
            let mut result = Err(e);
            for notary in &app.config.federation.trusted_key_servers {
                let Ok(notary) = ServerName::parse(notary) else {
                    continue;
                };
                if notary == server || notary == app.server_name {
                    continue;
                }
                match fetch_via_notary(app, &notary, server).await {
                    Ok(()) => {
                        result = Ok(());
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%server, %notary, error = %e, "notary key fetch failed")
                    }
                }
            }
            result
        }
    };
    app.key_fetch.record(server.as_str(), result.is_ok());
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(%server, error = %e, "key fetch failed");
            Err(Error::new(
                ErrorKind::Unauthorized,
                format!("Could not fetch the keys of {server}"),
            ))
        }
    }
}

async fn fetch_direct(app: &AppState, server: &ServerName) -> anyhow::Result<()> {
    let response = app
        .federation
        .request_json(server, http::Method::GET, "/_matrix/key/v2/server", None)
        .await?;
    store_verified(app, server, response, None).await
}

async fn fetch_via_notary(
    app: &AppState,
    notary: &ServerName,
    server: &ServerName,
) -> anyhow::Result<()> {
    // The notary's own keys, to check its signature on what it relays.
    let mut notary_keys = stored_usable(app, notary, now_ms())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if notary_keys.is_empty() {
        fetch_direct(app, notary).await?;
        notary_keys = stored_usable(app, notary, now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let body = json!({"server_keys": {server.as_str(): {}}});
    let response = app
        .federation
        .request_json(
            notary,
            http::Method::POST,
            "/_matrix/key/v2/query",
            Some(&body),
        )
        .await?;
    let entries = response["server_keys"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no server_keys in the notary's answer"))?;
    let mut stored = false;
    for entry in entries {
        if entry["server_name"].as_str() != Some(server.as_str()) {
            continue;
        }
        store_verified(app, server, entry.clone(), Some((notary, &notary_keys))).await?;
        stored = true;
    }
    if !stored {
        anyhow::bail!("the notary returned no keys for {server}");
    }
    Ok(())
}

/// Checks a key response (names `server`, self-signed by every key it lists,
/// signed by the notary when relayed) and stores its keys and the response.
async fn store_verified(
    app: &AppState,
    server: &ServerName,
    response: Value,
    notary: Option<(&ServerName, &PublicKeySet)>,
) -> anyhow::Result<()> {
    if response["server_name"].as_str() != Some(server.as_str()) {
        anyhow::bail!("the key response names another server");
    }
    let valid_until = response["valid_until_ts"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no valid_until_ts"))?;
    let now = now_ms();
    let valid_until = valid_until.min(now + MAX_VALIDITY_MS);
    let object: CanonicalJsonObject = match CanonicalJsonValue::try_from(response.clone())? {
        CanonicalJsonValue::Object(o) => o,
        _ => anyhow::bail!("the key response is not an object"),
    };
    let mut current = PublicKeySet::new();
    if let Some(keys) = response["verify_keys"].as_object() {
        for (id, key) in keys {
            let key = key["key"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("verify key without `key`"))?;
            current.insert(id.clone(), Base64::parse(key)?);
        }
    }
    if current.is_empty() {
        anyhow::bail!("the key response has no verify keys");
    }
    // Self-signed by every current key (spec: each key must have signed it).
    for (id, key) in &current {
        let mut one = PublicKeyMap::new();
        one.insert(
            server.to_string(),
            BTreeMap::from([(id.clone(), key.clone())]),
        );
        let mut only = object.clone();
        retain_signatures(&mut only, server.as_str(), Some(id));
        verify_json(&one, &only).map_err(|e| anyhow::anyhow!("self-signature {id}: {e}"))?;
    }
    if let Some((notary, keys)) = notary {
        let mut map = PublicKeyMap::new();
        map.insert(notary.to_string(), keys.clone());
        let mut only = object.clone();
        retain_signatures(&mut only, notary.as_str(), None);
        verify_json(&map, &only).map_err(|e| anyhow::anyhow!("notary signature: {e}"))?;
    }
    let mut tx = app.db.begin().await?;
    for (id, key) in &current {
        server_keys::upsert(
            &mut *tx,
            server.as_str(),
            &server_keys::ServerKey {
                key_id: id.clone(),
                verify_key: key.encode(),
                valid_until_ts: valid_until,
                expired_ts: None,
            },
            now,
        )
        .await?;
    }
    if let Some(old) = response["old_verify_keys"].as_object() {
        for (id, key) in old {
            let (Some(k), Some(expired)) = (key["key"].as_str(), key["expired_ts"].as_i64()) else {
                continue;
            };
            let Ok(k) = Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(k) else {
                continue;
            };
            server_keys::upsert(
                &mut *tx,
                server.as_str(),
                &server_keys::ServerKey {
                    key_id: id.clone(),
                    verify_key: k.encode(),
                    valid_until_ts: expired,
                    expired_ts: Some(expired),
                },
                now,
            )
            .await?;
        }
    }
    // The notary signature is not part of what we serve again.
    let mut served = object;
    retain_signatures(&mut served, server.as_str(), None);
    let text = serde_json::to_string(&served)?;
    server_keys::store_response(&mut *tx, server.as_str(), &text, valid_until, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps only `entity`'s signatures (and of those only `key_id`, when given).
fn retain_signatures(object: &mut CanonicalJsonObject, entity: &str, key_id: Option<&str>) {
    if let Some(CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
        sigs.retain(|name, _| name == entity);
        if let (Some(key_id), Some(CanonicalJsonValue::Object(keys))) =
            (key_id, sigs.get_mut(entity))
        {
            keys.retain(|id, _| id == key_id);
        }
    }
}

/// The notary answer for each of `wanted` (server, `minimum_valid_until_ts`):
/// the stored response, fetched again first when it would not be valid until
/// the minimum, with our signature added. The endpoint is unauthenticated, so
/// it costs at most [`MAX_NOTARY_FETCHES`] fetches, run together, each under
/// the per-server backoff; other stale servers are answered from the store.
pub async fn notary_responses(
    app: &AppState,
    wanted: &[(OwnedServerName, i64)],
) -> Result<Vec<Value>> {
    let mut stale = Vec::new();
    for (server, minimum) in wanted {
        if server == &app.server_name || stale.len() >= MAX_NOTARY_FETCHES {
            continue;
        }
        let stored = server_keys::response(&app.db, server.as_str()).await?;
        let fresh = stored
            .as_ref()
            .is_some_and(|(_, until)| *until >= (*minimum).max(now_ms()));
        if !fresh && !stale.contains(&server) {
            stale.push(server);
        }
    }
    futures_util::future::join_all(stale.into_iter().map(|server| refresh(app, server))).await;
    let mut out = Vec::new();
    for (server, _) in wanted {
        if server == &app.server_name {
            out.push(own_response(app).await?);
            continue;
        }
        let Some((json, _)) = server_keys::response(&app.db, server.as_str()).await? else {
            continue;
        };
        let value: Value = serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(sign(app, value)?);
    }
    Ok(out)
}

/// Fetches `server`'s keys directly for the notary, once per backoff window.
async fn refresh(app: &AppState, server: &ServerName) {
    let _turn = app.key_fetch.turn(server.as_str()).await;
    if app.key_fetch.too_soon(server.as_str()).is_some() {
        return;
    }
    let result = fetch_direct(app, server).await;
    if let Err(e) = &result {
        tracing::debug!(%server, error = %e, "notary fetch failed; serving the cache");
    }
    app.key_fetch.record(server.as_str(), result.is_ok());
}
