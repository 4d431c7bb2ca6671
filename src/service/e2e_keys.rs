//! End-to-end encryption, server side (spec: "End-to-End Encryption"): the key
//! store behind `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/changes`,
//! cross-signing and signature uploads. The server stores keys verbatim; only the
//! clients can check them, but it does check that a user only uploads keys for
//! themselves and their own device, and that uploaded signatures verify.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId,
    OwnedUserId, UInt, UserId,
    api::client::{
        keys::{claim_keys, get_keys, upload_signatures},
        uiaa::AuthData,
    },
    serde::Raw,
    signatures::verify_json,
};
use serde_json::{Map, Value, json};

use super::{session::Session, stream, uia};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{e2e_keys as keys, remote_devices, user_streams},
};

/// `POST /keys/upload`. `one_time_keys` and `fallback_keys` are keyed
/// `algorithm:key_id`. Returns the one-time key counts per algorithm.
pub async fn upload(
    app: &AppState,
    session: &Session,
    device_keys: Option<Value>,
    one_time_keys: Vec<(String, String)>,
    fallback_keys: Vec<(String, String)>,
) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
    let user = session.user_id.as_str();
    let device = session.device_id.as_str();
    let mut tx = app.db.begin().await?;
    let mut guard = None;
    if let Some(dk) = device_keys {
        // The spec's `DeviceKeys`: `algorithms`, `keys` and `signatures` are
        // required (M_BAD_JSON without them, as Synapse answers).
        if let Err(e) = serde_json::from_value::<ruma::encryption::DeviceKeys>(dk.clone()) {
            return Err(Error::bad_json(format!("Invalid device_keys: {e}")));
        }
        if dk["user_id"].as_str() != Some(user) || dk["device_id"].as_str() != Some(device) {
            return Err(Error::invalid_param(
                "device_keys must be for the logged-in user and device",
            ));
        }
        let text = serde_json::to_string(&dk).map_err(|e| anyhow::anyhow!("{e}"))?;
        if keys::set_device_keys(&mut *tx, user, device, &text).await? {
            guard = Some(
                stream::device_list_changed(
                    &mut tx,
                    app,
                    user,
                    stream::DeviceChange::Devices(&[device.to_owned()]),
                )
                .await?,
            );
        }
    }
    for (id, json) in &one_time_keys {
        let (algorithm, key_id) = split_key_id(id)?;
        keys::add_one_time_key(&mut *tx, user, device, algorithm, key_id, json).await?;
    }
    for (id, json) in &fallback_keys {
        let (algorithm, key_id) = split_key_id(id)?;
        keys::set_fallback_key(&mut *tx, user, device, algorithm, key_id, json).await?;
    }
    let counts = keys::one_time_key_counts(&mut *tx, user, device).await?;
    tx.commit().await?;
    drop(guard);
    Ok(counts
        .into_iter()
        .map(|c| {
            let count = UInt::try_from(c.count).unwrap_or_default();
            (OneTimeKeyAlgorithm::from(c.algorithm), count)
        })
        .collect())
}

/// A device's one-time key counts as `/sync` and sliding sync's e2ee
/// extension carry them, and its unused fallback key types. The
/// `signed_curve25519` count is always there, 0 once none is left, as Synapse
/// sends it: matrix-rust-sdk (and matrix-js-sdk's Rust crypto) only act on a
/// count they are given, so with no entry a client whose keys were all
/// claimed would never upload new ones.
pub async fn sync_key_counts(
    app: &AppState,
    user: &str,
    device: &str,
) -> Result<(
    BTreeMap<OneTimeKeyAlgorithm, UInt>,
    Vec<OneTimeKeyAlgorithm>,
)> {
    let mut counts = BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::MIN)]);
    for c in keys::one_time_key_counts(&app.db, user, device).await? {
        let count = UInt::try_from(c.count).unwrap_or_default();
        counts.insert(OneTimeKeyAlgorithm::from(c.algorithm), count);
    }
    let fallback = keys::unused_fallback_algorithms(&app.db, user, device)
        .await?
        .into_iter()
        .map(OneTimeKeyAlgorithm::from)
        .collect();
    Ok((counts, fallback))
}

/// Keys held as JSON, as ruma's raw type (the same JSON).
fn raw<T>(value: &Value) -> Result<Raw<T>> {
    let json = serde_json::value::to_raw_value(value).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Raw::from_json(json))
}

/// Per-user keys, by user ID; an entry whose user ID does not parse (a remote
/// server's answer) is left out.
fn by_user<T>(keys: Map<String, Value>) -> Result<BTreeMap<OwnedUserId, Raw<T>>> {
    let mut out = BTreeMap::new();
    for (user, value) in keys {
        if let Ok(user) = OwnedUserId::try_from(user) {
            out.insert(user, raw(&value)?);
        }
    }
    Ok(out)
}

/// Per-user, per-device keys; a user whose entry is not an object of devices
/// (a remote server's answer) is left out.
fn by_user_and_device<T>(
    keys: Map<String, Value>,
) -> Result<BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<T>>>> {
    let mut out = BTreeMap::new();
    for (user, devices) in keys {
        let (Ok(user), Value::Object(devices)) = (OwnedUserId::try_from(user), devices) else {
            continue;
        };
        let mut per_device = BTreeMap::new();
        for (device, value) in devices {
            per_device.insert(OwnedDeviceId::from(device), raw(&value)?);
        }
        out.insert(user, per_device);
    }
    Ok(out)
}

fn split_key_id(id: &str) -> Result<(&str, &str)> {
    id.split_once(':')
        .filter(|(a, k)| !a.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::invalid_param(format!("Invalid key ID {id:?}")))
}

/// `POST /keys/query`: device and cross-signing keys of the requested users.
/// Remote users sharing a room with one of ours are answered from the device
/// lists we hold (fetched with `/user/devices` when not held yet); the others
/// are asked of their servers (one request per server, in parallel), and
/// servers that fail are listed under `failures`.
pub async fn query(
    app: &AppState,
    session: &Session,
    wanted: Vec<(String, Vec<String>)>,
) -> Result<get_keys::v3::Response> {
    let viewer = session.user_id.as_str();
    let mut out = KeysFound::default();
    let mut failures = Map::new();
    let mut remote_users: Vec<(OwnedUserId, Vec<String>)> = Vec::new();
    for (user, devices) in wanted {
        let Ok(user_id) = UserId::parse(&user) else {
            continue;
        };
        if user_id.server_name() != app.server_name {
            remote_users.push((user_id, devices));
            continue;
        }
        local_keys(app, &user, &devices, Some(viewer), &mut out).await?;
    }
    let remote = cached_remote_keys(app, viewer, remote_users, &mut out, &mut failures).await?;
    let answers = ask_servers(app, remote, "query", "device_keys", &mut failures).await;
    for (server, reply) in &answers {
        for (field, target) in [
            ("device_keys", &mut out.device_keys),
            ("master_keys", &mut out.master),
            ("self_signing_keys", &mut out.self_signing),
        ] {
            target.extend(users_of(server, &reply[field]));
        }
    }
    let mut response = get_keys::v3::Response::new();
    response.device_keys = by_user_and_device(out.device_keys)?;
    response.master_keys = by_user(out.master)?;
    response.self_signing_keys = by_user(out.self_signing)?;
    response.user_signing_keys = by_user(out.user_signing)?;
    response.failures = failures.into_iter().collect();
    Ok(response)
}

/// Remote users at most one `/keys/query` fetches the device lists of.
const MAX_RESYNCS: usize = 100;

/// Answers from the device lists we hold for the remote users in `wanted`
/// (fetching those of tracked users not held yet, a few at a time); returns
/// the rest, by server, to be asked with `/user/keys/query`.
async fn cached_remote_keys(
    app: &AppState,
    viewer: &str,
    wanted: Vec<(OwnedUserId, Vec<String>)>,
    out: &mut KeysFound,
    failures: &mut Map<String, Value>,
) -> Result<BTreeMap<String, Map<String, Value>>> {
    use futures_util::StreamExt;
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(remote);
    }
    let names: Vec<String> = wanted.iter().map(|(u, _)| u.to_string()).collect();
    let mut held: HashSet<String> = remote_devices::lists(&app.db, &names)
        .await?
        .into_iter()
        .map(|l| l.user_id)
        .collect();
    // Tracked users whose list is not held yet: fetch it now.
    let mut missing = Vec::new();
    for (user, _) in &wanted {
        if !held.contains(user.as_str())
            && missing.len() < MAX_RESYNCS
            && remote_devices::tracked(&app.db, user.as_str(), app.server_name.as_str()).await?
        {
            missing.push(user.clone());
        }
    }
    let fetched: Vec<(OwnedUserId, bool)> = futures_util::stream::iter(missing)
        .map(|user| async move {
            let ok = match super::federation::e2ee::resync(app, &user).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(user_id = %user, error = %e, "device list fetch failed");
                    false
                }
            };
            (user, ok)
        })
        .buffer_unordered(CONCURRENT_REMOTE)
        .collect()
        .await;
    let mut failed = HashSet::new();
    for (user, ok) in fetched {
        if ok {
            held.insert(user.to_string());
        } else {
            failed.insert(user);
        }
    }
    let mut from_cache = Vec::new();
    for (user, devices) in wanted {
        if held.contains(user.as_str()) {
            from_cache.push((user, devices));
        } else if failed.contains(&user) {
            failures.insert(
                user.server_name().to_string(),
                json!({ "errcode": "M_UNAVAILABLE", "error": "The server could not be reached" }),
            );
        } else {
            remote
                .entry(user.server_name().to_string())
                .or_default()
                .insert(user.to_string(), json!(devices));
        }
    }
    if from_cache.is_empty() {
        return Ok(remote);
    }
    let names: Vec<String> = from_cache.iter().map(|(u, _)| u.to_string()).collect();
    let lists = remote_devices::lists(&app.db, &names).await?;
    let mut per_user: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for d in remote_devices::devices(&app.db, &names).await? {
        let Some(keys) = d.keys.as_deref() else {
            continue;
        };
        let mut value: Value = serde_json::from_str(keys).unwrap_or_default();
        if !value.is_object() {
            continue;
        }
        value["unsigned"] = match d.display_name {
            Some(name) => json!({ "device_display_name": name }),
            None => json!({}),
        };
        per_user
            .entry(d.user_id)
            .or_default()
            .insert(d.device_id, value);
    }
    for (user, devices) in &from_cache {
        if !lists.iter().any(|l| l.user_id == user.as_str()) {
            continue; // dropped meanwhile
        }
        let mut found = per_user.remove(user.as_str()).unwrap_or_default();
        if !devices.is_empty() {
            found.retain(|id, _| devices.contains(id));
        }
        out.device_keys
            .insert(user.to_string(), Value::Object(found));
    }
    for list in lists {
        for (text, target) in [
            (&list.master_key, &mut out.master),
            (&list.self_signing_key, &mut out.self_signing),
        ] {
            let Some(mut value) = text
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
            else {
                continue;
            };
            // The viewer's own signatures (with their user-signing key).
            if let Some(public) = first_key(&value) {
                merge_signatures(app, &mut value, &list.user_id, &public, Some(viewer)).await?;
            }
            target.insert(list.user_id.clone(), value);
        }
    }
    Ok(remote)
}

/// Keys found for a `/keys/query`, by user.
#[derive(Default)]
pub struct KeysFound {
    pub device_keys: Map<String, Value>,
    pub master: Map<String, Value>,
    pub self_signing: Map<String, Value>,
    pub user_signing: Map<String, Value>,
}

/// A local user's device keys (all devices when `devices` is empty) and
/// cross-signing keys. `viewer` sees the signatures they made and, for
/// themselves, their user-signing key; a remote server (`None`) sees only what
/// is public.
pub async fn local_keys(
    app: &AppState,
    user: &str,
    devices: &[String],
    viewer: Option<&str>,
    out: &mut KeysFound,
) -> Result<()> {
    let mut per_device = Map::new();
    for row in keys::device_keys(&app.db, user, devices).await? {
        let mut value: Value = serde_json::from_str(&row.json)
            .map_err(|e| anyhow::anyhow!("stored device keys: {e}"))?;
        merge_signatures(app, &mut value, user, &row.device_id, viewer).await?;
        // `unsigned` is always there, as Synapse sends it (SyTest reads it);
        // the display name when the device has one.
        value["unsigned"] = match row.display_name {
            Some(name) => json!({ "device_display_name": name }),
            None => json!({}),
        };
        per_device.insert(row.device_id, value);
    }
    out.device_keys
        .insert(user.to_owned(), Value::Object(per_device));
    for (kind, target) in [
        ("master", &mut out.master),
        ("self_signing", &mut out.self_signing),
    ] {
        if let Some(text) = keys::cross_signing_key(&app.db, user, kind).await? {
            let mut value: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("stored cross-signing key: {e}"))?;
            if let Some(public) = first_key(&value) {
                merge_signatures(app, &mut value, user, &public, viewer).await?;
            }
            target.insert(user.to_owned(), value);
        }
    }
    if viewer == Some(user)
        && let Some(text) = keys::cross_signing_key(&app.db, user, "user_signing").await?
    {
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("stored cross-signing key: {e}"))?;
        out.user_signing.insert(user.to_owned(), value);
    }
    Ok(())
}

/// The (only) public key of a cross-signing key, without its `ed25519:` prefix.
fn first_key(value: &Value) -> Option<String> {
    let keys = value["keys"].as_object()?;
    let id = keys.keys().next()?;
    Some(id.strip_prefix("ed25519:").unwrap_or(id).to_owned())
}

async fn merge_signatures(
    app: &AppState,
    value: &mut Value,
    owner: &str,
    target_key: &str,
    viewer: Option<&str>,
) -> Result<()> {
    // Signatures by the owner and, for a local viewer, by the viewer.
    let extra = keys::signatures(&app.db, owner, target_key, viewer.unwrap_or(owner)).await?;
    add_signatures(value, extra);
    Ok(())
}

/// Adds stored signatures (uploaded with `/keys/signatures/upload`) to a key's
/// JSON, under `signatures.<signer>.<key id>`.
pub(crate) fn add_signatures(value: &mut Value, extra: Vec<keys::Signature>) {
    if extra.is_empty() {
        return;
    }
    if !value["signatures"].is_object() {
        value["signatures"] = json!({});
    }
    for s in extra {
        let signer = &mut value["signatures"][&s.signer_user_id];
        if !signer.is_object() {
            *signer = json!({});
        }
        signer[&s.signer_key_id] = Value::String(s.signature);
    }
}

/// `POST /keys/claim`: one one-time key per requested device, falling back to the
/// device's fallback key. Remote users' keys are claimed from their servers.
pub async fn claim(
    app: &AppState,
    wanted: Vec<(String, String, String)>,
) -> Result<claim_keys::v3::Response> {
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut local = Vec::new();
    for (user, device, algorithm) in wanted {
        let Ok(user_id) = UserId::parse(&user) else {
            continue;
        };
        if user_id.server_name() == app.server_name {
            local.push((user, device, algorithm));
        } else {
            let per_user = remote
                .entry(user_id.server_name().to_string())
                .or_default()
                .entry(user)
                .or_insert_with(|| json!({}));
            per_user[device] = Value::String(algorithm);
        }
    }
    let mut out = claim_local(app, local).await?;
    let mut failures = Map::new();
    let answers = ask_servers(app, remote, "claim", "one_time_keys", &mut failures).await;
    for (server, reply) in &answers {
        for (user, keys) in users_of(server, &reply["one_time_keys"]) {
            if let Value::Object(keys) = keys {
                out.insert(user, keys);
            }
        }
    }
    // user → device → key ID → key; entries whose IDs do not parse (a
    // remote server's answer) are left out.
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in out {
        let Ok(user) = OwnedUserId::try_from(user) else {
            continue;
        };
        let mut per_device = BTreeMap::new();
        for (device, keys) in devices {
            let mut per_key = BTreeMap::new();
            for (key_id, key) in keys.as_object().into_iter().flatten() {
                if let Ok(key_id) = OwnedOneTimeKeyId::try_from(key_id.as_str()) {
                    per_key.insert(key_id, raw(key)?);
                }
            }
            per_device.insert(OwnedDeviceId::from(device), per_key);
        }
        one_time_keys.insert(user, per_device);
    }
    let mut response = claim_keys::v3::Response::new(one_time_keys);
    response.failures = failures.into_iter().collect();
    Ok(response)
}

/// Remote servers one `/keys/query` or `/keys/claim` asks, at most; the others
/// are listed under `failures` (a client asks again for what it still lacks).
pub const MAX_REMOTE_SERVERS: usize = 250;
/// Of those, at most this many are asked at once.
const CONCURRENT_REMOTE: usize = 20;

/// Asks each server, `CONCURRENT_REMOTE` at a time,
/// `POST /_matrix/federation/v1/user/keys/{endpoint}` with its users under
/// `field`; returns the answers, and records the servers that failed in
/// `failures` (as `/keys/query` and `/keys/claim` report them). Every failure
/// reads the same, whatever the cause (refused, timed out, TLS, an error
/// answer), so the endpoint tells nothing about hosts and ports.
async fn ask_servers(
    app: &AppState,
    remote: BTreeMap<String, Map<String, Value>>,
    endpoint: &str,
    field: &str,
    failures: &mut Map<String, Value>,
) -> Vec<(String, Value)> {
    use futures_util::StreamExt;
    let mut remote = remote.into_iter();
    let asked: Vec<_> = remote.by_ref().take(MAX_REMOTE_SERVERS).collect();
    for (server, _) in remote {
        failures.insert(
            server,
            json!({ "errcode": "M_LIMIT_EXCEEDED", "error": "Too many servers in one request" }),
        );
    }
    let replies: Vec<_> =
        futures_util::stream::iter(asked.into_iter().map(|(server, users)| async {
            let reply =
                super::federation::e2ee::user_keys(app, &server, endpoint, field, users).await;
            (server, reply)
        }))
        .buffer_unordered(CONCURRENT_REMOTE)
        .collect()
        .await;
    let mut answers = Vec::new();
    for (server, reply) in replies {
        match reply {
            Ok(reply) => answers.push((server, reply)),
            Err(e) => {
                tracing::info!(%server, error = %e, "remote keys {endpoint} failed");
                failures.insert(
                    server,
                    json!({ "errcode": "M_UNAVAILABLE", "error": "The server could not be reached" }),
                );
            }
        }
    }
    answers
}

/// The entries of a per-user object that belong to users of `server` (a server
/// answers for its own users only).
fn users_of(server: &str, per_user: &Value) -> Vec<(String, Value)> {
    per_user
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(user, _)| {
            UserId::parse(user.as_str()).is_ok_and(|u| u.server_name().as_str() == server)
        })
        .map(|(user, v)| (user.clone(), v.clone()))
        .collect()
}

/// Claims local users' keys: `(user, device, algorithm)` → user → device → key.
pub async fn claim_local(
    app: &AppState,
    wanted: Vec<(String, String, String)>,
) -> Result<BTreeMap<String, Map<String, Value>>> {
    let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, device, algorithm) in wanted {
        let claimed = match keys::claim_one_time_key(&app.db, &user, &device, &algorithm).await? {
            Some(k) => Some(k),
            None => keys::claim_fallback_key(&app.db, &user, &device, &algorithm).await?,
        };
        if let Some(k) = claimed {
            let value: Value = serde_json::from_str(&k.json)
                .map_err(|e| anyhow::anyhow!("stored one-time key: {e}"))?;
            out.entry(user).or_default().insert(
                device,
                json!({ format!("{algorithm}:{}", k.key_id): value }),
            );
        }
    }
    Ok(out)
}

/// `GET /keys/changes`: users whose keys changed between two sync tokens, and
/// users who no longer share a room.
pub async fn changes(
    app: &AppState,
    user: &UserId,
    from: i64,
    to: i64,
) -> Result<(Vec<String>, Vec<String>)> {
    device_list_delta(app, user, from, to).await
}

/// [`device_lists`] with the user's memberships read here.
pub async fn device_list_delta(
    app: &AppState,
    user: &UserId,
    after: i64,
    upto: i64,
) -> Result<(Vec<String>, Vec<String>)> {
    let rooms: Vec<String> = crate::storage::sync::memberships(&app.db, user.as_str())
        .await?
        .into_iter()
        .map(|m| m.room_id)
        .collect();
    let delta = member_delta(app, user, &rooms, after, upto).await?;
    device_lists(app, user, &delta, after, upto).await
}

/// Who came to share, or stopped sharing, a room with a user over a window
/// of the stream, from the membership changes in the rooms they are or were
/// in, taken in order (a user who left and came back counts as come, one who
/// came and left as gone), as Synapse counts them.
#[derive(Debug, Default)]
pub struct MemberDelta {
    /// Others who joined, were invited to or knocked on one of the user's
    /// rooms, and the members of the rooms the user joined.
    pub arrived: HashSet<String>,
    /// Of those, the ones joined: whose presence the user now sees.
    pub joined: HashSet<String>,
    /// Others who left one of the user's rooms, and the members of rooms the
    /// user left (some may still share another room).
    pub departed: HashSet<String>,
}

impl MemberDelta {
    pub fn is_empty(&self) -> bool {
        self.arrived.is_empty() && self.departed.is_empty()
    }
}

/// The [`MemberDelta`] of `user` over `(after, upto]`; `rooms` are the rooms
/// they have a membership in.
pub async fn member_delta(
    app: &AppState,
    user: &UserId,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> Result<MemberDelta> {
    let me = user.as_str();
    let mut delta = MemberDelta::default();
    if after >= upto || rooms.is_empty() {
        return Ok(delta);
    }
    // My joins and leaves, the last of each room winning.
    let mut mine: BTreeMap<String, bool> = BTreeMap::new();
    for c in user_streams::member_changes_since(&app.db, rooms, after, upto).await? {
        let came = matches!(c.membership.as_str(), "join" | "invite" | "knock");
        if c.user_id == me {
            match c.membership.as_str() {
                "join" => {
                    mine.insert(c.room_id, true);
                }
                "leave" | "ban" => {
                    mine.insert(c.room_id, false);
                }
                _ => {}
            }
        } else if came {
            delta.departed.remove(&c.user_id);
            if c.membership == "join" {
                delta.joined.insert(c.user_id.clone());
            }
            delta.arrived.insert(c.user_id);
        } else {
            delta.arrived.remove(&c.user_id);
            delta.joined.remove(&c.user_id);
            delta.departed.insert(c.user_id);
        }
    }
    // Rooms joined with partial state whose full state came in the window
    // (faster joins): their members, learnt only now, arrive as if the user
    // had just joined (as Synapse counts its un-partial-stated rooms).
    for room in
        crate::storage::partial_state::completed_between(&app.db, rooms, after, upto).await?
    {
        if mine.contains_key(&room) {
            continue;
        }
        let members = crate::storage::rooms::members(&app.db, &room, "join").await?;
        if members.iter().any(|(m, _)| m == me) {
            for (member, _) in members {
                delta.joined.insert(member.clone());
                delta.arrived.insert(member);
            }
        }
    }
    for (room, joined) in mine {
        for (member, _) in crate::storage::rooms::members(&app.db, &room, "join").await? {
            if joined {
                delta.joined.insert(member.clone());
                delta.arrived.insert(member);
            } else {
                delta.departed.insert(member);
            }
        }
    }
    delta.arrived.remove(me);
    delta.joined.remove(me);
    delta.departed.remove(me);
    Ok(delta)
}

/// `device_lists` between two stream positions: `changed` are users sharing a
/// room now whose devices changed (and users whose keys only `user` sees
/// changed), plus those who came to share a room; `left` are users who no
/// longer share any room with `user`.
pub async fn device_lists(
    app: &AppState,
    user: &UserId,
    delta: &MemberDelta,
    after: i64,
    upto: i64,
) -> Result<(Vec<String>, Vec<String>)> {
    let me = user.as_str();
    let mut changed: BTreeSet<String> =
        user_streams::device_lists_changed_since(&app.db, me, after, upto)
            .await?
            .into_iter()
            .collect();
    changed.extend(delta.arrived.iter().cloned());
    let mut left = Vec::new();
    let gone: Vec<String> = delta
        .departed
        .iter()
        .filter(|u| !changed.contains(*u))
        .cloned()
        .collect();
    if !gone.is_empty() {
        let sharing: HashSet<String> = user_streams::sharing_a_room(&app.db, me, &gone)
            .await?
            .into_iter()
            .collect();
        left = gone.into_iter().filter(|u| !sharing.contains(u)).collect();
        left.sort();
    }
    Ok((changed.into_iter().collect(), left))
}

/// `POST /keys/device_signing/upload`. The first upload needs no UIA (spec
/// v1.11, MSC3967); replacing existing keys does.
pub async fn upload_signing_keys(
    app: &AppState,
    session: &Session,
    auth: Option<&AuthData>,
    ip: Option<&str>,
    uploaded: Vec<(&'static str, Value)>,
) -> Result<()> {
    let user = session.user_id.as_str();
    let existing = keys::cross_signing_key(&app.db, user, "master").await?;
    // Self- and user-signing keys hang off a master key: one in this upload
    // or one already held (spec: `POST /keys/device_signing/upload`).
    if existing.is_none() && !uploaded.iter().any(|(k, _)| *k == "master") && !uploaded.is_empty() {
        return Err(Error::new(
            ErrorKind::MissingParam,
            "No master key: upload one with the other keys",
        ));
    }
    let replacing = match (&existing, uploaded.iter().find(|(k, _)| *k == "master")) {
        (None, _) => false,
        (Some(old), Some((_, new))) => {
            serde_json::from_str::<Value>(old).ok().as_ref() != Some(new)
        }
        (Some(_), None) => true,
    };
    let completed = if replacing {
        let requirement = uia::Requirement {
            kind: "device_signing_upload",
            flows: uia::reauth_flows(app, &session.user_id).await?,
            user: Some(&session.user_id),
            ip,
            operation: None,
        };
        Some(uia::authenticate(app, &requirement, auth).await?)
    } else {
        None
    };
    for (kind, value) in &uploaded {
        if value["user_id"].as_str() != Some(user) {
            return Err(Error::invalid_param(format!(
                "The {kind} key must belong to the uploading user"
            )));
        }
        if first_key(value).is_none() {
            return Err(Error::invalid_param(format!(
                "The {kind} key has no public key"
            )));
        }
    }
    let mut tx = app.db.begin().await?;
    for (kind, value) in &uploaded {
        let text = serde_json::to_string(value).map_err(|e| anyhow::anyhow!("{e}"))?;
        keys::set_cross_signing_key(&mut *tx, user, kind, &text).await?;
    }
    // The master and self-signing keys are public; the user-signing key is
    // the user's alone (spec: only they are told it changed).
    let mut guards = Vec::new();
    if uploaded.iter().any(|(k, _)| *k != "user_signing") {
        guards.push(
            stream::device_list_changed(&mut tx, app, user, stream::DeviceChange::SigningKeys)
                .await?,
        );
    }
    if uploaded.iter().any(|(k, _)| *k == "user_signing") {
        guards.push(
            stream::device_list_changed(
                &mut tx,
                app,
                user,
                stream::DeviceChange::Private { viewer: user },
            )
            .await?,
        );
    }
    if let Some(c) = completed {
        uia::consume(&mut tx, &c).await?;
    }
    tx.commit().await?;
    drop(guards);
    Ok(())
}

/// `POST /keys/signatures/upload`: signatures by the uploader's keys on their own
/// devices and master key, or on other users' master keys. Each signature must
/// verify against the signing key the uploader holds; failures are per key.
pub async fn upload_signatures(
    app: &AppState,
    session: &Session,
    signed: Vec<(String, String, Value)>,
) -> Result<upload_signatures::v3::Response> {
    let me = session.user_id.as_str();
    let mut failures: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut changed_keys = BTreeSet::new();
    let mut tx = app.db.begin().await?;
    for (target_user, target_key, object) in signed {
        let result = check_signatures(app, me, &target_user, &target_key, &object).await;
        match result {
            Ok(sigs) => {
                for (key_id, sig) in sigs {
                    keys::add_signature(&mut *tx, &target_user, &target_key, me, &key_id, &sig)
                        .await?;
                }
                changed_keys.insert((target_user, target_key));
            }
            Err(reason) => {
                failures.entry(target_user).or_default().insert(
                    target_key,
                    json!({ "errcode": "M_INVALID_SIGNATURE", "error": reason }),
                );
            }
        }
    }
    // A signature on one of my devices changes that device; on my master
    // key, my signing keys; on another user's key, only what I see of them.
    let mut guards = Vec::new();
    for (user, key) in &changed_keys {
        let change = if user != me {
            stream::DeviceChange::Private { viewer: me }
        } else if crate::storage::devices::get(&mut *tx, me, key)
            .await?
            .is_some()
        {
            stream::DeviceChange::Devices(std::slice::from_ref(key))
        } else {
            stream::DeviceChange::SigningKeys
        };
        guards.push(stream::device_list_changed(&mut tx, app, user, change).await?);
    }
    tx.commit().await?;
    drop(guards);
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let Ok(user) = OwnedUserId::try_from(user) else {
            continue;
        };
        let mut per_key = BTreeMap::new();
        for (key, failure) in keys {
            // ruma's `Failure` has no constructor: it is read from its JSON.
            let failure = serde_json::from_value(failure).map_err(|e| anyhow::anyhow!("{e}"))?;
            per_key.insert(key, failure);
        }
        response.failures.insert(user, per_key);
    }
    Ok(response)
}

/// The uploader's new, valid signatures on one key: `(key_id, signature)`.
async fn check_signatures(
    app: &AppState,
    me: &str,
    target_user: &str,
    target_key: &str,
    object: &Value,
) -> std::result::Result<Vec<(String, String)>, String> {
    let db_err = |e: crate::storage::DbError| format!("database error: {e}");
    let Some(mine) = object["signatures"][me].as_object() else {
        return Err("No signatures by the uploading user".into());
    };
    // Which of my keys may sign this target?
    let signer_key: Option<Value> = if target_user == me {
        let master = keys::cross_signing_key(&app.db, me, "master")
            .await
            .map_err(db_err)?;
        let master_id = master
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok())
            .and_then(|m| first_key(&m));
        if master_id.as_deref() == Some(target_key) {
            // My master key, signed by one of my devices: check against the device keys.
            None
        } else {
            keys::cross_signing_key(&app.db, me, "self_signing")
                .await
                .map_err(db_err)?
                .and_then(|s| serde_json::from_str(&s).ok())
        }
    } else {
        keys::cross_signing_key(&app.db, me, "user_signing")
            .await
            .map_err(db_err)?
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let mut public_keys: BTreeMap<String, ruma::signatures::PublicKeySet> = BTreeMap::new();
    let mut set = ruma::signatures::PublicKeySet::new();
    match signer_key {
        Some(key) => {
            for (id, k) in key["keys"].as_object().into_iter().flatten() {
                if let Some(k) = k.as_str() {
                    set.insert(
                        id.clone(),
                        ruma::serde::Base64::parse(k).map_err(|e| e.to_string())?,
                    );
                }
            }
        }
        None => {
            for row in keys::device_keys(&app.db, me, &[]).await.map_err(db_err)? {
                let v: Value = serde_json::from_str(&row.json).unwrap_or_default();
                for (id, k) in v["keys"].as_object().into_iter().flatten() {
                    if id.starts_with("ed25519:")
                        && let Some(k) = k.as_str()
                    {
                        set.insert(
                            id.clone(),
                            ruma::serde::Base64::parse(k).map_err(|e| e.to_string())?,
                        );
                    }
                }
            }
        }
    }
    public_keys.insert(me.to_owned(), set);
    let mut out = Vec::new();
    for (key_id, sig) in mine {
        let Some(sig) = sig.as_str() else { continue };
        // Verify this one signature on its own.
        let mut single = object.clone();
        single["signatures"] = json!({ me: { key_id: sig } });
        single.as_object_mut().map(|o| o.remove("unsigned"));
        let canonical: CanonicalJsonObject =
            match serde_json::from_value::<CanonicalJsonValue>(single) {
                Ok(CanonicalJsonValue::Object(o)) => o,
                _ => return Err("The signed object is not valid canonical JSON".into()),
            };
        verify_json(&public_keys, &canonical)
            .map_err(|e| format!("Signature {key_id} does not verify: {e}"))?;
        out.push((key_id.clone(), sig.to_owned()));
    }
    Ok(out)
}
