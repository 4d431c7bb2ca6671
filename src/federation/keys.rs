//! Server keys: ours as `/_matrix/key/v2/server` publishes them, and other
//! servers' keys, fetched directly or through notary servers, verified, cached in
//! `server_keys` and served again as a notary.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
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
/// Keys fetched are trusted at most this far into the future, whatever
/// `valid_until_ts` says (as Synapse, 7 days).
const MAX_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Failed fetches, to back off servers that do not answer.
#[derive(Default)]
pub struct FetchState {
    failures: Mutex<HashMap<String, Instant>>,
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
    fetch(app, server).await?;
    stored_usable(app, server, valid_at).await
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

/// Fetches `server`'s keys: directly, then through each configured notary. Backs
/// off a server whose fetch failed recently.
pub async fn fetch(app: &AppState, server: &ServerName) -> Result<()> {
    {
        let failures = app.key_fetch.failures.lock().expect("key fetch state");
        if let Some(at) = failures.get(server.as_str())
            && at.elapsed() < FETCH_BACKOFF
        {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                format!("Keys of {server} are unavailable (recent fetch failed)"),
            ));
        }
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
    let mut failures = app.key_fetch.failures.lock().expect("key fetch state");
    match result {
        Ok(()) => {
            failures.remove(server.as_str());
            Ok(())
        }
        Err(e) => {
            failures.insert(server.to_string(), Instant::now());
            Err(Error::new(
                ErrorKind::Unauthorized,
                format!("Could not fetch the keys of {server}: {e}"),
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

/// The notary answer for one server: the stored response (fetched again when it
/// would not be valid until `minimum_valid_until`), with our signature added.
pub async fn notary_response(
    app: &AppState,
    server: &ServerName,
    minimum_valid_until: i64,
) -> Result<Option<Value>> {
    if server == app.server_name {
        return own_response(app).await.map(Some);
    }
    let stored = server_keys::response(&app.db, server.as_str()).await?;
    let fresh = stored
        .as_ref()
        .is_some_and(|(_, until)| *until >= minimum_valid_until.max(now_ms()));
    if !fresh && let Err(e) = fetch_direct(app, server).await {
        tracing::debug!(%server, error = %e, "notary fetch failed; serving the cache");
    }
    let Some((json, _)) = server_keys::response(&app.db, server.as_str()).await? else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
    sign(app, value).map(Some)
}
