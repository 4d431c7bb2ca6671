//! End-to-end encryption endpoints (spec: "End-to-End Encryption", "Server-side
//! key backups", "Send-to-Device messaging").

use axum::{Json, Router, extract::State};
use ruma::{
    api::client::{
        backup::{
            add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
            create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
            delete_backup_keys_for_session, delete_backup_version, get_backup_info,
            get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
            get_latest_backup_info, update_backup_version,
        },
        keys::{
            claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures,
            upload_signing_keys,
        },
        to_device::send_event_to_device,
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    api::{
        auth::{AuthUser, ClientIp, GuestOk},
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::{Error, Result},
    service::{
        backup, e2e,
        sync::SyncToken,
        to_device::{self, Message},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<upload_keys::v3::Request, _, _>(upload)
        .ruma::<get_keys::v3::Request, _, _>(query)
        .ruma::<claim_keys::v3::Request, _, _>(claim)
        .ruma::<get_key_changes::v3::Request, _, _>(changes)
        .ruma::<upload_signing_keys::v3::Request, _, _>(signing_keys)
        .ruma::<upload_signatures::v3::Request, _, _>(signatures)
        .ruma::<send_event_to_device::v3::Request, _, _>(send_to_device)
        .ruma::<create_backup_version::v3::Request, _, _>(backup_create)
        .ruma::<get_latest_backup_info::v3::Request, _, _>(backup_latest)
        .ruma::<get_backup_info::v3::Request, _, _>(backup_info)
        .ruma::<update_backup_version::v3::Request, _, _>(backup_update)
        .ruma::<delete_backup_version::v3::Request, _, _>(backup_delete)
        .ruma::<add_backup_keys::v3::Request, _, _>(put_all)
        .ruma::<add_backup_keys_for_room::v3::Request, _, _>(put_room)
        .ruma::<add_backup_keys_for_session::v3::Request, _, _>(put_session)
        .ruma::<get_backup_keys::v3::Request, _, _>(get_all)
        .ruma::<get_backup_keys_for_room::v3::Request, _, _>(get_room)
        .ruma::<get_backup_keys_for_session::v3::Request, _, _>(get_session)
        .ruma::<delete_backup_keys::v3::Request, _, _>(delete_all)
        .ruma::<delete_backup_keys_for_room::v3::Request, _, _>(delete_room)
        .ruma::<delete_backup_keys_for_session::v3::Request, _, _>(delete_session)
}

fn value<T>(raw: &Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

async fn upload(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<upload_keys::v3::Request>,
) -> Result<Json<Value>> {
    let device_keys = req.device_keys.as_ref().map(value).transpose()?;
    let otks = req
        .one_time_keys
        .iter()
        .map(|(id, raw)| (id.to_string(), raw.json().get().to_owned()))
        .collect();
    let fallback = req
        .fallback_keys
        .iter()
        .map(|(id, raw)| (id.to_string(), raw.json().get().to_owned()))
        .collect();
    let counts = e2e::upload(&app, &session, device_keys, otks, fallback).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

async fn query(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<get_keys::v3::Request>,
) -> Result<Json<Value>> {
    let wanted = req
        .device_keys
        .into_iter()
        .map(|(user, devices)| {
            (
                user.to_string(),
                devices.into_iter().map(|d| d.to_string()).collect(),
            )
        })
        .collect();
    Ok(Json(e2e::query(&app, &session, wanted).await?))
}

async fn claim(
    State(app): State<AppState>,
    GuestOk(_): GuestOk,
    Ruma(req): Ruma<claim_keys::v3::Request>,
) -> Result<Json<Value>> {
    let mut wanted = Vec::new();
    for (user, devices) in req.one_time_keys {
        for (device, algorithm) in devices {
            wanted.push((user.to_string(), device.to_string(), algorithm.to_string()));
        }
    }
    Ok(Json(e2e::claim(&app, wanted).await?))
}

async fn changes(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_key_changes::v3::Request>,
) -> Result<Json<Value>> {
    let from = SyncToken::parse(&req.from)?.stream;
    let to = SyncToken::parse(&req.to)?
        .stream
        .min(app.notifier.current());
    let (changed, left) = e2e::changes(&app, &session.user_id, from, to).await?;
    Ok(Json(json!({ "changed": changed, "left": left })))
}

async fn signing_keys(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<upload_signing_keys::v3::Request>,
) -> Result<Json<Value>> {
    let mut uploaded = Vec::new();
    for (kind, raw) in [
        ("master", &req.master_key),
        ("self_signing", &req.self_signing_key),
        ("user_signing", &req.user_signing_key),
    ] {
        if let Some(raw) = raw {
            uploaded.push((kind, value(raw)?));
        }
    }
    e2e::upload_signing_keys(&app, &session, req.auth.as_ref(), ip.as_deref(), uploaded).await?;
    Ok(Json(json!({})))
}

async fn signatures(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<upload_signatures::v3::Request>,
) -> Result<Json<Value>> {
    let mut signed = Vec::new();
    for (user, keys) in &req.signed_keys {
        for (key, raw) in keys.iter() {
            let object: Value =
                serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(e.to_string()))?;
            signed.push((user.to_string(), key.to_string(), object));
        }
    }
    Ok(Json(e2e::upload_signatures(&app, &session, signed).await?))
}

async fn send_to_device(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<send_event_to_device::v3::Request>,
) -> Result<Json<Value>> {
    let mut messages = Vec::new();
    for (user, devices) in &req.messages {
        for (device, raw) in devices {
            let content = value(raw)?;
            to_device::check_content(&content)?;
            messages.push(Message {
                user_id: user.to_string(),
                device: device.to_string(),
                content: raw.json().get().to_owned(),
            });
        }
    }
    to_device::send(
        &app,
        &session,
        &req.event_type.to_string(),
        req.txn_id.as_str(),
        messages,
    )
    .await?;
    Ok(Json(json!({})))
}

async fn backup_create(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    let version = backup::create(&app, &session.user_id, &value(&req.algorithm)?).await?;
    Ok(Json(json!({ "version": version })))
}

async fn backup_latest(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(_): Ruma<get_latest_backup_info::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(backup::info(&app, &session.user_id, None).await?))
}

async fn backup_info(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::info(&app, &session.user_id, Some(&req.version)).await?,
    ))
}

async fn backup_update(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<update_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    backup::update(
        &app,
        &session.user_id,
        &req.version,
        &value(&req.algorithm)?,
    )
    .await?;
    Ok(Json(json!({})))
}

async fn backup_delete(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    backup::delete(&app, &session.user_id, &req.version).await?;
    Ok(Json(json!({})))
}

async fn put_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys::v3::Request>,
) -> Result<Json<Value>> {
    let mut sessions = Vec::new();
    for (room, backup) in &req.rooms {
        for (id, raw) in &backup.sessions {
            sessions.push((room.to_string(), id.clone(), value(raw)?));
        }
    }
    Ok(Json(
        backup::put_keys(&app, &session.user_id, &req.version, sessions).await?,
    ))
}

async fn put_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    let mut sessions = Vec::new();
    for (id, raw) in &req.sessions {
        sessions.push((req.room_id.to_string(), id.clone(), value(raw)?));
    }
    Ok(Json(
        backup::put_keys(&app, &session.user_id, &req.version, sessions).await?,
    ))
}

async fn put_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    let sessions = vec![(
        req.room_id.to_string(),
        req.session_id.clone(),
        value(&req.session_data)?,
    )];
    Ok(Json(
        backup::put_keys(&app, &session.user_id, &req.version, sessions).await?,
    ))
}

async fn get_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::get_keys(&app, &session.user_id, &req.version, None, None).await?,
    ))
}

async fn get_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::get_keys(
            &app,
            &session.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            None,
        )
        .await?,
    ))
}

async fn get_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::get_keys(
            &app,
            &session.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )
        .await?,
    ))
}

async fn delete_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::delete_keys(&app, &session.user_id, &req.version, None, None).await?,
    ))
}

async fn delete_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::delete_keys(
            &app,
            &session.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            None,
        )
        .await?,
    ))
}

async fn delete_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        backup::delete_keys(
            &app,
            &session.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )
        .await?,
    ))
}
