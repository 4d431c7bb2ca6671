//! End-to-end encryption across servers: remote users' keys asked of their
//! servers (`/user/keys/query`, `/user/keys/claim`), our users' devices served
//! to other servers (`/user/devices`), to-device messages as
//! `m.direct_to_device` EDUs, and device-list changes as `m.device_list_update`
//! EDUs to the servers sharing a room with the user.
//!
//! Remote users' keys are not cached: every `/keys/query` for them asks their
//! server, so an `m.device_list_update` only has to tell the local users who
//! share a room (through `device_lists.changed` in their sync).

use ruma::{ServerName, UserId};
use serde_json::{Map, Value, json};

use crate::{
    app::AppState,
    error::Result,
    service::stream,
    storage::{Postgres, Transaction, devices, federation as fed_store, now_ms, user_streams},
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

/// `GET /user/devices/{userId}` for one of our users.
pub async fn user_devices(app: &AppState, user: &UserId) -> Result<Value> {
    let mut found = crate::service::e2e::KeysFound::default();
    crate::service::e2e::local_keys(app, user.as_str(), &[], None, &mut found).await?;
    let keys = found.device_keys.remove(user.as_str()).unwrap_or_default();
    let mut out = Vec::new();
    for d in devices::list(&app.db, user.as_str()).await? {
        let mut entry = json!({ "device_id": d.device_id });
        if let Some(k) = keys.get(&d.device_id) {
            entry["keys"] = k.clone();
        }
        if let Some(name) = d.display_name {
            entry["device_display_name"] = name.into();
        }
        out.push(entry);
    }
    let mut reply = json!({
        "user_id": user,
        "stream_id": user_streams::device_list_position(&app.db, user.as_str()).await?,
        "devices": out,
    });
    if let Some(master) = found.master.remove(user.as_str()) {
        reply["master_key"] = master;
    }
    if let Some(ss) = found.self_signing.remove(user.as_str()) {
        reply["self_signing_key"] = ss;
    }
    Ok(reply)
}

/// Queues `m.device_list_update` for a local user whose devices or keys changed,
/// to every server sharing a room with them, in the caller's transaction. The
/// update names a `prev_id` the receiver has not seen, so it fetches the whole
/// list with `/user/devices` (we do not send per-device deltas).
pub async fn queue_device_list_update(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user: &str,
    position: i64,
) -> Result<bool> {
    if !app.config.federation.enabled {
        return Ok(false);
    }
    let mut servers = user_streams::servers_sharing_rooms(&mut **tx, user).await?;
    servers.retain(|s| s != app.server_name.as_str());
    if servers.is_empty() {
        return Ok(false);
    }
    let device = devices::list(&mut **tx, user)
        .await?
        .into_iter()
        .next()
        .map(|d| d.device_id)
        .unwrap_or_default();
    let edu = json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": user,
            "device_id": device,
            "stream_id": position,
            "prev_id": [position - 1],
            "deleted": false,
        },
    });
    let text = serde_json::to_string(&edu).map_err(|e| anyhow::anyhow!("{e}"))?;
    fed_store::enqueue_edu(&mut **tx, &servers, &text, now_ms()).await?;
    Ok(true)
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
        super::enqueue_edu(app, [server], &edu).await?;
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
        }
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// `m.device_list_update` / `m.signing_key_update`: a remote user's keys changed;
/// our users sharing a room with them see it in `device_lists.changed`.
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
    if user.server_name() != origin {
        return Ok(());
    }
    stream::device_list_changed_now(app, user.as_str()).await
}
