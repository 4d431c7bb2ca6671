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
    api::federation::discovery::{
        ServerSigningKeys, get_remote_server_keys_batch, get_server_keys,
    },
    serde::{Base64, Raw},
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet, sign_json, verify_json},
};
use serde_json::{Value, json};

use crate::{
    error::{Error, ErrorKind, Result},
    federation::client::FedError,
    service::AppState,
    storage::{now_ms, server_keys, signing_keys},
};

/// How long our published keys are valid for; peers re-fetch after this.
const OWN_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// After a fetch found a server unreachable, it is not asked again this soon
/// (a dead server must not cost a connection attempt per request).
const FETCH_BACKOFF: Duration = Duration::from_secs(60);
/// Fetches of a server that answers may run this many in a row (a notary
/// asked for a newer key, then for one the origin no longer has, …)…
const FETCH_BURST: u32 = 6;
/// …and earn one more per this long: at most six a minute in the long run,
/// whatever requests name keys or validities a server does not have.
const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// Servers whose last fetch is remembered, at most.
const MAX_REMEMBERED: usize = 10_000;
/// Fetches one notary request (unauthenticated) may cause, at most; other
/// servers it names are answered from what is stored.
pub const MAX_NOTARY_FETCHES: usize = 10;
/// Keys fetched are trusted at most this far into the future, whatever
/// `valid_until_ts` says (as Synapse, 7 days).
const MAX_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Recent fetches per server, so that requests naming a server cannot make us
/// fetch its keys at will: a server found unreachable is not asked again
/// within [`FETCH_BACKOFF`]; one that answers (keys or an error) may be asked
/// [`FETCH_BURST`] times in a row, then once per [`REFETCH_AFTER`]. One fetch
/// at a time per server: concurrent requests for the same server wait for the
/// one in flight.
#[derive(Default)]
pub struct FetchState {
    last: Mutex<HashMap<String, Budget>>,
    in_flight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// One server's fetch budget.
struct Budget {
    /// Fetches it may still have now, as of `counted`.
    left: u32,
    counted: Instant,
    /// When a fetch last found it unreachable (cleared by an answer).
    unreachable: Option<Instant>,
}

impl Budget {
    fn full() -> Self {
        Self {
            left: FETCH_BURST,
            counted: Instant::now(),
            unreachable: None,
        }
    }

    /// Adds the fetches earned since `counted`.
    fn refill(&mut self) {
        let earned = (self.counted.elapsed().as_millis() / REFETCH_AFTER.as_millis()) as u32;
        if earned > 0 {
            self.left = (self.left + earned).min(FETCH_BURST);
            self.counted += REFETCH_AFTER * earned;
        }
        if self.left == FETCH_BURST {
            self.counted = Instant::now();
        }
    }

    /// Whether nothing about the server needs remembering any more.
    fn idle(&mut self) -> bool {
        self.refill();
        self.left == FETCH_BURST
            && self
                .unreachable
                .is_none_or(|at| at.elapsed() >= FETCH_BACKOFF)
    }
}

/// Why a server's keys were not fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotNow {
    /// A recent fetch found it unreachable.
    Unreachable,
    /// It answered, but has been asked as often as its budget allows.
    Spent,
}

impl FetchState {
    /// Takes one fetch of `server` from its budget, or says why not.
    fn take(&self, server: &str) -> Result<(), NotNow> {
        let mut last = self.last.lock().expect("key fetch state");
        if last.len() >= MAX_REMEMBERED && !last.contains_key(server) {
            last.retain(|_, b| !b.idle());
            if last.len() >= MAX_REMEMBERED {
                last.clear();
            }
        }
        let budget = last.entry(server.to_owned()).or_insert_with(Budget::full);
        if budget
            .unreachable
            .is_some_and(|at| at.elapsed() < FETCH_BACKOFF)
        {
            return Err(NotNow::Unreachable);
        }
        budget.refill();
        if budget.left == 0 {
            return Err(NotNow::Spent);
        }
        budget.left -= 1;
        Ok(())
    }

    /// Records how a fetch of `server` ended: whether it was reachable.
    fn record(&self, server: &str, reachable: bool) {
        let mut last = self.last.lock().expect("key fetch state");
        if let Some(budget) = last.get_mut(server) {
            budget.unreachable = (!reachable).then(Instant::now);
        }
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

/// Whether a failed fetch reached the server (it answered, if not with keys):
/// only a server that could not be reached at all is backed off.
fn reached(error: &anyhow::Error) -> bool {
    !matches!(
        error.downcast_ref::<FedError>(),
        Some(FedError::Unreachable(_) | FedError::Refused(_))
    )
}

/// Our `/_matrix/key/v2/server` response: the current key, old keys with their
/// expiry, signed by the current key.
pub async fn own_response(app: &AppState) -> Result<Raw<ServerSigningKeys>> {
    let key = &app.signing_key;
    let mut old = serde_json::Map::new();
    for stored in signing_keys::expired(&app.db).await? {
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
        "valid_until_ts": app.clock.now_ms() + OWN_VALIDITY.as_millis() as i64,
    });
    raw_keys(&sign(app, response)?)
}

/// A signed key response as ruma's raw type: served exactly as signed.
fn raw_keys(signed: &Value) -> Result<Raw<ServerSigningKeys>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(signed).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
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
        // Asked as often as it may be lately: what is stored is what it has.
        Err(Fetch::NotNow(NotNow::Spent)) => Ok(set),
        Err(_) => Err(Error::new(
            ErrorKind::Unauthorized,
            format!("Could not fetch the keys of {server}"),
        )),
    }
}

/// Stored keys of `server` usable at `valid_at`.
async fn stored_usable(app: &AppState, server: &ServerName, valid_at: i64) -> Result<PublicKeySet> {
    let stored = server_keys::keys_of(&app.db, server.as_str()).await?;
    Ok(usable(&stored, valid_at))
}

/// The keys among `stored` usable at `valid_at`.
fn usable(stored: &[server_keys::ServerKey], valid_at: i64) -> PublicKeySet {
    stored
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
        .collect()
}

/// Servers' stored keys, read once for a batch of events: a join's state
/// and auth chain (tens of thousands of events in a big room) are signed by a
/// few servers, and each event asked the database for its signers' keys.
#[derive(Default)]
pub struct BatchKeys(HashMap<String, Vec<server_keys::ServerKey>>);

/// [`public_keys`] through `batch`: the stored keys are read once per server;
/// a key not among them goes the usual way (fetched when allowed) and the
/// server's stored keys are read again.
pub async fn public_keys_batched(
    app: &AppState,
    server: &ServerName,
    key_ids: &[String],
    valid_at: i64,
    batch: &mut BatchKeys,
) -> Result<PublicKeySet> {
    if server == app.server_name {
        return own_key_set(app).await;
    }
    if let Some(stored) = batch.0.get(server.as_str()) {
        let set = usable(stored, valid_at);
        if key_ids.iter().all(|id| set.contains_key(id)) {
            return Ok(set);
        }
    }
    let set = public_keys(app, server, key_ids, valid_at).await?;
    let stored = server_keys::keys_of(&app.db, server.as_str()).await?;
    batch.0.insert(server.to_string(), stored);
    Ok(set)
}

async fn own_key_set(app: &AppState) -> Result<PublicKeySet> {
    let mut set = PublicKeySet::new();
    set.insert(
        app.signing_key.key_id.clone(),
        Base64::new(app.signing_key.pair.public_key().to_vec()),
    );
    Ok(set)
}

/// Why [`fetch`] brought no keys.
#[derive(Debug)]
enum Fetch {
    /// Not tried: see [`FetchState`].
    NotNow(NotNow),
    /// Tried, directly and through every notary, without success.
    Failed,
}

/// Fetches `server`'s keys: directly, then through each configured notary,
/// when its [`FetchState`] budget allows.
async fn fetch(app: &AppState, server: &ServerName) -> std::result::Result<(), Fetch> {
    app.key_fetch.take(server.as_str()).map_err(Fetch::NotNow)?;
    let direct = fetch_direct(app, server).await;
    let (result, reachable) = match direct {
        Ok(()) => (Ok(()), true),
        Err(e) => {
            tracing::debug!(%server, error = %e, "direct key fetch failed");
            let reachable = reached(&e);
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
            let reachable = reachable || result.is_ok();
            (result, reachable)
        }
    };
    app.key_fetch.record(server.as_str(), reachable);
    result.map_err(|e| {
        tracing::debug!(%server, error = %e, "key fetch failed");
        Fetch::Failed
    })
}

async fn fetch_direct(app: &AppState, server: &ServerName) -> anyhow::Result<()> {
    let response = app
        .federation
        .send(server, get_server_keys::v2::Request::new())
        .await?;
    // Ruma's raw type: the response as the server signed it.
    store_verified(app, server, raw_json(&response.server_key)?, None).await
}

/// A signed key response as the JSON its signatures are checked over.
fn raw_json(raw: &Raw<ServerSigningKeys>) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(raw.json().get())?)
}

async fn fetch_via_notary(
    app: &AppState,
    notary: &ServerName,
    server: &ServerName,
) -> anyhow::Result<()> {
    // The notary's own keys, to check its signature on what it relays.
    let mut notary_keys = stored_usable(app, notary, app.clock.now_ms())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if notary_keys.is_empty() {
        fetch_direct(app, notary).await?;
        notary_keys = stored_usable(app, notary, app.clock.now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let request = get_remote_server_keys_batch::v2::Request::new(BTreeMap::from([(
        server.to_owned(),
        BTreeMap::new(),
    )]));
    let response = app.federation.send(notary, request).await?;
    let mut stored = false;
    for entry in &response.server_keys {
        let entry = raw_json(entry)?;
        if entry["server_name"].as_str() != Some(server.as_str()) {
            continue;
        }
        store_verified(app, server, entry, Some((notary, &notary_keys))).await?;
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
    let now = app.clock.now_ms();
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
    // The keys this response vouches for (a key ID we hold with another key
    // keeps its key, and the response that listed that one).
    let mut listed = Vec::new();
    for (id, key) in &current {
        let stored = server_keys::upsert(
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
        if stored {
            listed.push(id.clone());
        }
    }
    if let Some(old) = response["old_verify_keys"].as_object() {
        for (id, key) in old {
            let (Some(k), Some(expired)) = (key["key"].as_str(), key["expired_ts"].as_i64()) else {
                continue;
            };
            let Ok(k) = Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(k) else {
                continue;
            };
            let stored = server_keys::upsert(
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
            if stored {
                listed.push(id.clone());
            }
        }
    }
    // The notary signature is not part of what we serve again.
    let mut served = object;
    retain_signatures(&mut served, server.as_str(), None);
    let text = serde_json::to_string(&served)?;
    // Kept per key: a later response that no longer lists a key (the origin
    // forgot it, or answered spuriously) cannot make the notary forget it.
    for id in &listed {
        server_keys::store_response(&mut *tx, server.as_str(), id, &text, valid_until, now).await?;
    }
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

/// What a notary request asks about one server: the keys it names, each with
/// its `minimum_valid_until_ts`, or (none named) all the keys it has, valid
/// until `minimum`.
#[derive(Debug, Clone)]
pub struct NotaryQuery {
    pub server: OwnedServerName,
    pub key_ids: Vec<(String, Option<i64>)>,
    pub minimum: Option<i64>,
}

impl NotaryQuery {
    /// Whether what is stored answers the query: every key named has a
    /// response valid until its minimum (until now when none is given), or —
    /// no key named — some response is.
    fn answered_by(&self, stored: &[server_keys::KeyResponse]) -> bool {
        let valid = |until: i64, minimum: Option<i64>| until >= minimum.unwrap_or_else(now_ms);
        if self.key_ids.is_empty() {
            return stored.iter().any(|r| valid(r.valid_until_ts, self.minimum));
        }
        self.key_ids.iter().all(|(id, minimum)| {
            stored
                .iter()
                .any(|r| &r.key_id == id && valid(r.valid_until_ts, *minimum))
        })
    }

    /// The stored responses that answer it (one per distinct response): those
    /// of the keys named, or all. An expired one is still returned when there
    /// is no other (the requester may need it for old events).
    fn pick(&self, stored: Vec<server_keys::KeyResponse>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in stored {
            let named =
                self.key_ids.is_empty() || self.key_ids.iter().any(|(id, _)| *id == r.key_id);
            if named && !out.contains(&r.json) {
                out.push(r.json);
            }
        }
        out
    }
}

/// The notary answer for each query: the stored responses for the keys asked
/// about, fetched again first when they would not be valid until the
/// minimum (or a key is unknown), with our signature added. The endpoint is
/// unauthenticated, so it costs at most [`MAX_NOTARY_FETCHES`] fetches, run
/// together, each within the server's [`FetchState`] budget; other servers are
/// answered from the store.
pub async fn notary_responses(
    app: &AppState,
    wanted: &[NotaryQuery],
) -> Result<Vec<Raw<ServerSigningKeys>>> {
    let mut stale: Vec<&NotaryQuery> = Vec::new();
    for query in wanted {
        if query.server == app.server_name || stale.len() >= MAX_NOTARY_FETCHES {
            continue;
        }
        let stored = server_keys::responses(&app.db, query.server.as_str()).await?;
        if !query.answered_by(&stored) && !stale.iter().any(|q| q.server == query.server) {
            stale.push(query);
        }
    }
    futures_util::future::join_all(stale.into_iter().map(|query| refresh(app, query))).await;
    let mut out = Vec::new();
    for query in wanted {
        if query.server == app.server_name {
            out.push(own_response(app).await?);
            continue;
        }
        let stored = server_keys::responses(&app.db, query.server.as_str()).await?;
        for json in query.pick(stored) {
            let value: Value = serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push(raw_keys(&sign(app, value)?)?);
        }
    }
    Ok(out)
}

/// Fetches a server's keys directly for the notary, within its budget, unless
/// a fetch that ended while this one waited its turn brought what is asked.
async fn refresh(app: &AppState, query: &NotaryQuery) {
    let server = query.server.as_str();
    let _turn = app.key_fetch.turn(server).await;
    match server_keys::responses(&app.db, server).await {
        Ok(stored) if query.answered_by(&stored) => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%server, error = %e, "reading stored keys failed");
            return;
        }
    }
    if let Err(why) = app.key_fetch.take(server) {
        tracing::debug!(%server, ?why, "notary fetch not tried; serving the cache");
        return;
    }
    let result = fetch_direct(app, &query.server).await;
    if let Err(e) = &result {
        tracing::debug!(%server, error = %e, "notary fetch failed; serving the cache");
    }
    app.key_fetch
        .record(server, result.as_ref().map_or_else(reached, |()| true));
}
