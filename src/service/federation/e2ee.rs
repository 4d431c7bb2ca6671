//! End-to-end encryption across servers: remote users' keys asked of their
//! servers (`/user/keys/query`, `/user/keys/claim`), our users' devices served
//! to other servers (`/user/devices`), to-device messages as
//! `m.direct_to_device` EDUs, and device-list changes as `m.device_list_update`
//! EDUs to the servers sharing a room with the user.
//!
//! The device lists of remote users who share a room with one of ours are
//! held (`storage::remote_devices`) and kept current by their servers'
//! `m.device_list_update` / `m.signing_key_update` EDUs, refetched with
//! `/user/devices` when one went missing; `/keys/query` answers from them.
//! Other remote users' keys are asked of their servers each time.

use ruma::{
    OneTimeKeyId, OwnedDeviceId, OwnedUserId, ServerName, UserId,
    api::federation::keys::{claim_keys, get_keys},
    serde::Raw,
};
use serde_json::{Map, Value, json, value::RawValue as RawJsonValue};

use crate::{
    error::Result,
    service::AppState,
    service::stream,
    storage::{
        Postgres, Transaction, devices, e2e_keys, federation as fed_store, now_ms, remote_devices,
        user_streams,
    },
};

/// `POST /_matrix/federation/v1/user/keys/{endpoint}` (`query` or `claim`) on
/// `server`, with `users` under `field` (`device_keys`: user → device IDs;
/// `one_time_keys`: user → device → algorithm).
pub async fn user_keys(
    app: &AppState,
    server: &str,
    endpoint: &str,
    field: &str,
    users: Map<String, Value>,
) -> std::result::Result<Value, String> {
    let server = ServerName::parse(server).map_err(|e| e.to_string())?;
    // Raw, not ruma's `get_keys`/`claim_keys`: the answer is read user by
    // user (one malformed entry does not lose the others' keys).
    app.federation
        .request_json(
            &server,
            http::Method::POST,
            &format!("/_matrix/federation/v1/user/keys/{endpoint}"),
            Some(&json!({ field: users })),
        )
        .await
        .map_err(|e| e.to_string())
}

/// Our users' device and cross-signing keys for another server
/// (`/user/keys/query`): per user, the devices named (all when none is).
pub async fn keys_for_server(
    app: &AppState,
    wanted: Vec<(OwnedUserId, Vec<String>)>,
) -> Result<get_keys::v1::Response> {
    let mut found = crate::service::e2e_keys::KeysFound::default();
    for (user, devices) in wanted {
        crate::service::e2e_keys::local_keys(app, user.as_str(), &devices, None, &mut found)
            .await?;
    }
    let mut response = get_keys::v1::Response::default();
    for (user, devices) in found.device_keys {
        let Ok(user) = UserId::parse(&user) else {
            continue;
        };
        let devices = devices
            .as_object()
            .into_iter()
            .flatten()
            .map(|(device, keys)| Ok((OwnedDeviceId::from(device.as_str()), raw(keys)?)))
            .collect::<Result<_>>()?;
        response.device_keys.insert(user, devices);
    }
    response.master_keys = raw_by_user(found.master)?;
    response.self_signing_keys = raw_by_user(found.self_signing)?;
    Ok(response)
}

/// Claims our users' one-time keys for another server (`/user/keys/claim`):
/// `(user, device, algorithm)` → user → device → key.
pub async fn claim_for_server(
    app: &AppState,
    wanted: Vec<(String, String, String)>,
) -> Result<claim_keys::v1::Response> {
    let claimed = crate::service::e2e_keys::claim_local(app, wanted).await?;
    let mut out = claim_keys::v1::OneTimeKeys::new();
    for (user, devices) in claimed {
        let Ok(user) = UserId::parse(&user) else {
            continue;
        };
        let mut per_device = std::collections::BTreeMap::new();
        for (device, keys) in devices {
            let keys = keys
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(id, key)| {
                    let id = OneTimeKeyId::parse(id).ok()?;
                    Some(raw(key).map(|key| (id, key)))
                })
                .collect::<Result<_>>()?;
            per_device.insert(OwnedDeviceId::from(device.as_str()), keys);
        }
        out.insert(user, per_device);
    }
    Ok(claim_keys::v1::Response::new(out))
}

/// JSON the service holds as ruma's raw type (served exactly as stored).
fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(|e| anyhow::anyhow!("key JSON: {e}"))?,
    ))
}

fn raw_by_user<T>(
    keys: Map<String, Value>,
) -> Result<std::collections::BTreeMap<OwnedUserId, Raw<T>>> {
    keys.iter()
        .filter_map(|(user, key)| Some((UserId::parse(user).ok()?, key)))
        .map(|(user, key)| Ok((user, raw(key)?)))
        .collect()
}

/// One of our users' devices as `/user/devices` lists it. Not ruma's
/// `UserDevice`, which needs `keys`: a device that uploaded none is listed
/// without them, as before.
#[derive(serde::Serialize)]
pub struct ServedDevice {
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Box<RawJsonValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_display_name: Option<String>,
}

/// The `/user/devices` answer for one of our users.
#[derive(serde::Serialize)]
pub struct ServedDevices {
    pub user_id: OwnedUserId,
    pub stream_id: i64,
    pub devices: Vec<ServedDevice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Box<RawJsonValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Box<RawJsonValue>>,
}

/// `GET /user/devices/{userId}` for one of our users.
pub async fn user_devices(app: &AppState, user: &UserId) -> Result<ServedDevices> {
    let mut found = crate::service::e2e_keys::KeysFound::default();
    crate::service::e2e_keys::local_keys(app, user.as_str(), &[], None, &mut found).await?;
    let keys = found.device_keys.remove(user.as_str()).unwrap_or_default();
    let raw_json = |v: &Value| -> Result<Box<RawJsonValue>> {
        Ok(serde_json::value::to_raw_value(v).map_err(|e| anyhow::anyhow!("key JSON: {e}"))?)
    };
    let mut devices = Vec::new();
    for d in devices::list(&app.db, user.as_str()).await? {
        devices.push(ServedDevice {
            keys: keys.get(&d.device_id).map(raw_json).transpose()?,
            device_id: d.device_id,
            device_display_name: d.display_name,
        });
    }
    Ok(ServedDevices {
        user_id: user.to_owned(),
        stream_id: user_streams::device_list_position(&app.db, user.as_str()).await?,
        devices,
        master_key: found
            .master
            .remove(user.as_str())
            .as_ref()
            .map(raw_json)
            .transpose()?,
        self_signing_key: found
            .self_signing
            .remove(user.as_str())
            .as_ref()
            .map(raw_json)
            .transpose()?,
    })
}

/// The servers to tell of a change of `user`'s devices: those of everyone
/// sharing a joined room with them, ours excepted.
pub async fn servers_to_tell(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user: &str,
) -> Result<Vec<String>> {
    if !app.config.federation.enabled {
        return Ok(Vec::new());
    }
    let mut servers = user_streams::servers_sharing_rooms(&mut **tx, user).await?;
    servers.retain(|s| s != app.server_name.as_str());
    Ok(servers)
}

/// Queues the `m.device_list_update` of one local device's change at
/// `position` for `servers`, in the caller's transaction: the device as it is
/// now (keys with their owner's signatures, display name), or `deleted`.
/// `prev_id` is the user's previous change that was federated, so a receiver
/// that missed one fetches the whole list (`/user/devices`).
pub async fn queue_device_update(
    tx: &mut Transaction<'_, Postgres>,
    servers: &[String],
    user: &str,
    device: &str,
    position: i64,
) -> Result<bool> {
    if servers.is_empty() {
        return Ok(false);
    }
    let prev = user_streams::previous_device_list_change(&mut **tx, user, position).await?;
    let mut content = json!({
        "user_id": user,
        "device_id": device,
        "stream_id": position,
        "prev_id": prev.into_iter().collect::<Vec<i64>>(),
    });
    match devices::get(&mut **tx, user, device).await? {
        None => content["deleted"] = true.into(),
        Some(d) => {
            if let Some(name) = d.display_name {
                content["device_display_name"] = name.into();
            }
            let device_ids = [device.to_owned()];
            if let Some(row) = e2e_keys::device_keys(&mut **tx, user, &device_ids)
                .await?
                .into_iter()
                .next()
            {
                let mut keys: Value = serde_json::from_str(&row.json)
                    .map_err(|e| anyhow::anyhow!("stored device keys: {e}"))?;
                owner_signatures(tx, &mut keys, user, device).await?;
                content["keys"] = keys;
            }
        }
    }
    let edu = json!({ "edu_type": "m.device_list_update", "content": content });
    let text = serde_json::to_string(&edu).map_err(|e| anyhow::anyhow!("{e}"))?;
    fed_store::enqueue_edu(&mut **tx, servers, &text, now_ms(), None).await?;
    Ok(true)
}

/// Queues `m.signing_key_update` (the user's master and self-signing keys as
/// they are now) for `servers`, in the caller's transaction.
pub async fn queue_signing_key_update(
    tx: &mut Transaction<'_, Postgres>,
    servers: &[String],
    user: &str,
) -> Result<bool> {
    if servers.is_empty() {
        return Ok(false);
    }
    let mut content = json!({ "user_id": user });
    for (kind, field) in [
        ("master", "master_key"),
        ("self_signing", "self_signing_key"),
    ] {
        if let Some(text) = e2e_keys::cross_signing_key(&mut **tx, user, kind).await? {
            let mut key: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("stored cross-signing key: {e}"))?;
            if let Some(public) = key["keys"]
                .as_object()
                .and_then(|k| k.keys().next())
                .map(|id| id.strip_prefix("ed25519:").unwrap_or(id).to_owned())
            {
                owner_signatures(tx, &mut key, user, &public).await?;
            }
            content[field] = key;
        }
    }
    let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
    let text = serde_json::to_string(&edu).map_err(|e| anyhow::anyhow!("{e}"))?;
    fed_store::enqueue_edu(&mut **tx, servers, &text, now_ms(), None).await?;
    Ok(true)
}

/// Adds the owner's stored signatures (uploaded with `/keys/signatures/upload`)
/// to one of their keys, read in the transaction that may have added them.
async fn owner_signatures(
    tx: &mut Transaction<'_, Postgres>,
    value: &mut Value,
    owner: &str,
    target_key: &str,
) -> Result<()> {
    let extra = e2e_keys::signatures(&mut **tx, owner, target_key, owner).await?;
    crate::service::e2e_keys::add_signatures(value, extra);
    Ok(())
}

/// To-device messages for remote users, grouped by server into
/// `m.direct_to_device` EDUs: `messages` is (user, device or `*`, content JSON).
pub async fn send_to_device(
    app: &AppState,
    sender: &str,
    event_type: &str,
    message_id: &str,
    messages: Vec<(String, String, String)>,
) -> Result<()> {
    let mut by_server: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
    for (user, device, content) in messages {
        let Ok(user_id) = UserId::parse(user.as_str()) else {
            continue;
        };
        let content: Value = serde_json::from_str(&content).unwrap_or_default();
        let per_user = by_server
            .entry(user_id.server_name().to_string())
            .or_default()
            .entry(user)
            .or_insert_with(|| json!({}));
        per_user[device] = content;
    }
    for (server, messages) in by_server {
        let edu = json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": event_type,
                "message_id": message_id,
                "messages": messages,
            },
        });
        // To-device messages are each delivered: never collapsed.
        super::enqueue_edu(app, [server], &edu, None).await?;
    }
    Ok(())
}

/// An `m.direct_to_device` EDU: messages from a user of `origin` to our users'
/// devices (`*`: all of them).
pub async fn receive_to_device(app: &AppState, origin: &ServerName, content: &Value) -> Result<()> {
    let (Some(sender), Some(event_type)) = (
        content["sender"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok()),
        content["type"].as_str(),
    ) else {
        return Ok(());
    };
    if sender.server_name() != origin {
        return Ok(());
    }
    let mut tx = app.db.begin().await?;
    let (position, guard) = stream::take(&mut tx, app).await?;
    for (user, per_device) in content["messages"].as_object().into_iter().flatten() {
        let Ok(user_id) = UserId::parse(user.as_str()) else {
            continue;
        };
        if user_id.server_name() != app.server_name {
            continue;
        }
        for (device, message) in per_device.as_object().into_iter().flatten() {
            let targets: Vec<String> = if device == "*" {
                devices::list(&mut *tx, user)
                    .await?
                    .into_iter()
                    .map(|d| d.device_id)
                    .collect()
            } else {
                vec![device.clone()]
            };
            let text = serde_json::to_string(message).map_err(|e| anyhow::anyhow!("{e}"))?;
            user_streams::insert_to_device(
                &mut *tx,
                user,
                &targets,
                position,
                sender.as_str(),
                event_type,
                &text,
            )
            .await?;
            crate::service::appservice::ephemeral::on_to_device(
                &mut tx,
                app,
                user,
                &targets,
                sender.as_str(),
                event_type,
                &text,
            )
            .await?;
        }
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// The most devices of one remote user we keep; a longer list is cut.
pub const MAX_REMOTE_DEVICES: usize = 1000;
/// The largest device keys or cross-signing key (JSON bytes) we keep.
const MAX_KEY_BYTES: usize = 16 * 1024;
/// The largest `/user/devices` answer we read.
const MAX_DEVICES_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How long a `/user/devices` request may take.
const DEVICES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `m.device_list_update`: one device of a remote user changed. Only updates
/// from the user's own server, for users sharing a room with one of ours, are
/// looked at. When we hold the user's list and the update follows on from it
/// (its `prev_id`s are all ones we have seen), it is applied; otherwise the
/// whole list is fetched again in the background. Either way our users
/// sharing a room see the user in `device_lists.changed` once the list is
/// current.
pub async fn receive_device_list_update(
    app: &AppState,
    origin: &ServerName,
    content: &Value,
) -> Result<()> {
    let Some(user) = content["user_id"]
        .as_str()
        .and_then(|u| UserId::parse(u).ok())
    else {
        return Ok(());
    };
    let (Some(device), Some(stream_id)) =
        (content["device_id"].as_str(), content["stream_id"].as_i64())
    else {
        return Ok(());
    };
    if user.server_name() != origin
        || device.is_empty()
        || device.len() > 255
        || !remote_devices::tracked(&app.db, user.as_str(), app.server_name.as_str()).await?
    {
        return Ok(());
    }
    let prev_ids: Vec<i64> = content["prev_id"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    let mut tx = app.db.begin().await?;
    let Some(list) = remote_devices::list(&mut *tx, user.as_str()).await? else {
        drop(tx);
        spawn_resync(app, user);
        return Ok(());
    };
    if stream_id <= list.stream_id {
        return Ok(()); // seen already (or older than the list we fetched)
    }
    if prev_ids.iter().any(|p| *p > list.stream_id) {
        // One went missing: the list we hold may be stale.
        drop(tx);
        spawn_resync(app, user);
        return Ok(());
    }
    let deleted = content["deleted"].as_bool() == Some(true);
    let keys = device_keys_of(&user, device, &content["keys"]);
    let name = content["device_display_name"]
        .as_str()
        .filter(|n| n.len() <= 1024);
    if !deleted
        && remote_devices::device_count(&mut *tx, user.as_str()).await? >= MAX_REMOTE_DEVICES as i64
        && !remote_devices::devices(&mut *tx, &[user.to_string()])
            .await?
            .iter()
            .any(|d| d.device_id == device)
    {
        return Ok(());
    }
    remote_devices::apply(
        &mut tx,
        user.as_str(),
        stream_id,
        device,
        (!deleted).then_some((name, keys.as_deref())),
        app.clock.now_ms(),
    )
    .await?;
    let guard = stream::device_list_changed(
        &mut tx,
        app,
        user.as_str(),
        stream::DeviceChange::Devices(&[]),
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// `m.signing_key_update`: a remote user's master or self-signing key changed.
pub async fn receive_signing_key_update(
    app: &AppState,
    origin: &ServerName,
    content: &Value,
) -> Result<()> {
    let Some(user) = content["user_id"]
        .as_str()
        .and_then(|u| UserId::parse(u).ok())
    else {
        return Ok(());
    };
    if user.server_name() != origin
        || !remote_devices::tracked(&app.db, user.as_str(), app.server_name.as_str()).await?
    {
        return Ok(());
    }
    let master = cross_signing_key_of(&user, &content["master_key"]);
    let self_signing = cross_signing_key_of(&user, &content["self_signing_key"]);
    let mut tx = app.db.begin().await?;
    if remote_devices::list(&mut *tx, user.as_str())
        .await?
        .is_none()
    {
        drop(tx);
        spawn_resync(app, user);
        return Ok(());
    }
    if master.is_none() && self_signing.is_none() {
        return Ok(());
    }
    remote_devices::set_signing_keys(
        &mut *tx,
        user.as_str(),
        master.as_deref(),
        self_signing.as_deref(),
        app.clock.now_ms(),
    )
    .await?;
    let guard = stream::device_list_changed(
        &mut tx,
        app,
        user.as_str(),
        stream::DeviceChange::Devices(&[]),
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// Device keys as a remote server sent them for `user`'s `device`: kept
/// verbatim when they are a JSON object of bounded size that names no other
/// user or device.
fn device_keys_of(user: &UserId, device: &str, keys: &Value) -> Option<String> {
    let object = keys.as_object()?;
    if object.get("user_id").is_some_and(|u| u != user.as_str())
        || object.get("device_id").is_some_and(|d| d != device)
    {
        return None;
    }
    serde_json::to_string(keys)
        .ok()
        .filter(|t| t.len() <= MAX_KEY_BYTES)
}

/// A remote user's cross-signing key: an object of bounded size naming the user.
fn cross_signing_key_of(user: &UserId, key: &Value) -> Option<String> {
    if key["user_id"].as_str() != Some(user.as_str()) || !key["keys"].is_object() {
        return None;
    }
    serde_json::to_string(key)
        .ok()
        .filter(|t| t.len() <= MAX_KEY_BYTES)
}

/// Fetches `user`'s device list again, in the background.
fn spawn_resync(app: &AppState, user: OwnedUserId) {
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = resync(&app, &user).await {
            tracing::info!(user_id = %user, error = %e, "device list resync failed");
        }
    });
}

/// Fetches a remote user's whole device list from their server
/// (`GET /user/devices/{userId}`) and stores it, if they still share a room
/// with one of our users; our users sharing a room see them in
/// `device_lists.changed`. No connection is held during the request.
pub async fn resync(app: &AppState, user: &UserId) -> Result<()> {
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        form_urlencoded::byte_serialize(user.as_str().as_bytes()).collect::<String>()
    );
    // Raw, not ruma's `get_devices`: a device without keys, or one entry
    // that does not parse, is kept or skipped alone.
    let reply = app
        .federation
        .request_json_bounded(
            user.server_name(),
            http::Method::GET,
            &path,
            None,
            MAX_DEVICES_ANSWER_BYTES,
            DEVICES_TIMEOUT,
        )
        .await
        .map_err(|e| anyhow::anyhow!("/user/devices: {e}"))?;
    if reply["user_id"].as_str() != Some(user.as_str()) {
        return Err(anyhow::anyhow!("/user/devices answered for another user").into());
    }
    let stream_id = reply["stream_id"].as_i64().unwrap_or(0);
    let mut seen = std::collections::HashSet::new();
    let devices: Vec<remote_devices::RemoteDevice> = reply["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let id = d["device_id"]
                .as_str()
                .filter(|i| !i.is_empty() && i.len() <= 255)?;
            seen.insert(id.to_owned())
                .then(|| remote_devices::RemoteDevice {
                    user_id: user.to_string(),
                    device_id: id.to_owned(),
                    display_name: d["device_display_name"]
                        .as_str()
                        .filter(|n| n.len() <= 1024)
                        .map(str::to_owned),
                    keys: device_keys_of(user, id, &d["keys"]),
                })
        })
        .take(MAX_REMOTE_DEVICES)
        .collect();
    let list = remote_devices::RemoteList {
        user_id: user.to_string(),
        stream_id,
        master_key: cross_signing_key_of(user, &reply["master_key"]),
        self_signing_key: cross_signing_key_of(user, &reply["self_signing_key"]),
    };
    let mut tx = app.db.begin().await?;
    if !remote_devices::tracked(&mut *tx, user.as_str(), app.server_name.as_str()).await? {
        return Ok(());
    }
    if let Some(held) = remote_devices::list(&mut *tx, user.as_str()).await?
        && held.stream_id > stream_id
    {
        return Ok(()); // a later update was applied meanwhile
    }
    remote_devices::replace(&mut tx, &list, &devices, app.clock.now_ms()).await?;
    let guard = stream::device_list_changed(
        &mut tx,
        app,
        user.as_str(),
        stream::DeviceChange::Devices(&[]),
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}
