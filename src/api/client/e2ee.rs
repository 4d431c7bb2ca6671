//! End-to-end encryption endpoints (spec: "End-to-End Encryption", "Server-side
//! key backups", "Send-to-Device messaging").

use std::collections::BTreeMap;

use axum::{
    Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use ruma::{
    OwnedUserId,
    api::client::{
        backup::{
            RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
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
    api::{OutgoingResponse, OutgoingResponseExt},
    serde::Raw,
};
use serde_json::Value;

use crate::{
    api::{
        auth::{AuthUser, ClientIp, GuestOk},
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, Result},
    service::AppState,
    service::{
        backup, e2e_keys,
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

/// A ruma response with top-level fields that ruma leaves out when empty
/// written as `{}`: Synapse always sends them, SyTest requires `failures` of
/// `/keys/query`, and matrix-nio requires its `device_keys`. The second
/// field names those that are empty in the response (so left out).
struct WithEmpty<R>(R, Vec<&'static str>);

impl<R: OutgoingResponse> IntoResponse for WithEmpty<R> {
    fn into_response(self) -> Response {
        let WithEmpty(response, empty) = self;
        if empty.is_empty() {
            return RumaResponse(response).into_response();
        }
        let http = match response.try_into_http_response::<Vec<u8>>() {
            Ok(http) => http,
            Err(e) => {
                return Error::Internal(anyhow::anyhow!("serialising response: {e}"))
                    .into_response();
            }
        };
        let (mut parts, body) = http.into_parts();
        // ruma writes a JSON object: `{` then its fields, if any, then `}`.
        let Some(rest) = body.strip_prefix(b"{") else {
            return Error::Internal(anyhow::anyhow!("response body is not a JSON object"))
                .into_response();
        };
        let mut out = Vec::with_capacity(body.len() + 16 * empty.len());
        out.push(b'{');
        for (i, field) in empty.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"{field}\":{{}}").as_bytes());
        }
        if rest != b"}" {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(out))
    }
}

/// The names in `fields` whose flag is set.
fn named(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|(_, empty)| *empty)
        .map(|(name, _)| *name)
        .collect()
}

async fn upload(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<upload_keys::v3::Request>,
) -> Result<RumaResponse<upload_keys::v3::Response>> {
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
    let counts = e2e_keys::upload(&app, &session, device_keys, otks, fallback).await?;
    Ok(RumaResponse(upload_keys::v3::Response::new(counts)))
}

async fn query(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<get_keys::v3::Request>,
) -> Result<WithEmpty<get_keys::v3::Response>> {
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
    let response = e2e_keys::query(&app, &session, wanted).await?;
    let empty = named(&[
        ("device_keys", response.device_keys.is_empty()),
        ("failures", response.failures.is_empty()),
        ("master_keys", response.master_keys.is_empty()),
        ("self_signing_keys", response.self_signing_keys.is_empty()),
        ("user_signing_keys", response.user_signing_keys.is_empty()),
    ]);
    Ok(WithEmpty(response, empty))
}

async fn claim(
    State(app): State<AppState>,
    GuestOk(_): GuestOk,
    Ruma(req): Ruma<claim_keys::v3::Request>,
) -> Result<WithEmpty<claim_keys::v3::Response>> {
    let mut wanted = Vec::new();
    for (user, devices) in req.one_time_keys {
        for (device, algorithm) in devices {
            wanted.push((user.to_string(), device.to_string(), algorithm.to_string()));
        }
    }
    let response = e2e_keys::claim(&app, wanted).await?;
    let empty = named(&[("failures", response.failures.is_empty())]);
    Ok(WithEmpty(response, empty))
}

async fn changes(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_key_changes::v3::Request>,
) -> Result<RumaResponse<get_key_changes::v3::Response>> {
    let from = SyncToken::parse(&req.from)?.stream;
    let to = SyncToken::parse(&req.to)?
        .stream
        .min(app.notifier.current());
    let (changed, left) = e2e_keys::changes(&app, &session.user_id, from, to).await?;
    let users = |ids: Vec<String>| -> Vec<OwnedUserId> {
        ids.into_iter()
            .filter_map(|id| OwnedUserId::try_from(id).ok())
            .collect()
    };
    Ok(RumaResponse(get_key_changes::v3::Response::new(
        users(changed),
        users(left),
    )))
}

async fn signing_keys(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<upload_signing_keys::v3::Request>,
) -> Result<RumaResponse<upload_signing_keys::v3::Response>> {
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
    e2e_keys::upload_signing_keys(&app, &session, req.auth.as_ref(), ip.as_deref(), uploaded)
        .await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

async fn signatures(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<upload_signatures::v3::Request>,
) -> Result<WithEmpty<upload_signatures::v3::Response>> {
    let mut signed = Vec::new();
    for (user, keys) in &req.signed_keys {
        for (key, raw) in keys.iter() {
            let object: Value =
                serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(e.to_string()))?;
            signed.push((user.to_string(), key.to_string(), object));
        }
    }
    let response = e2e_keys::upload_signatures(&app, &session, signed).await?;
    let empty = named(&[("failures", response.failures.is_empty())]);
    Ok(WithEmpty(response, empty))
}

async fn send_to_device(
    State(app): State<AppState>,
    GuestOk(session): GuestOk,
    Ruma(req): Ruma<send_event_to_device::v3::Request>,
) -> Result<RumaResponse<send_event_to_device::v3::Response>> {
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
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}

async fn backup_create(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_backup_version::v3::Request>,
) -> Result<RumaResponse<create_backup_version::v3::Response>> {
    let version = backup::create(&app, &session.user_id, &value(&req.algorithm)?).await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(
        version,
    )))
}

async fn backup_latest(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(_): Ruma<get_latest_backup_info::v3::Request>,
) -> Result<RumaResponse<get_latest_backup_info::v3::Response>> {
    let info = backup::info(&app, &session.user_id, None).await?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        info.algorithm,
        info.count,
        info.etag,
        info.version,
    )))
}

async fn backup_info(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> Result<RumaResponse<get_backup_info::v3::Response>> {
    let info = backup::info(&app, &session.user_id, Some(&req.version)).await?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        info.algorithm,
        info.count,
        info.etag,
        info.version,
    )))
}

async fn backup_update(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<update_backup_version::v3::Request>,
) -> Result<RumaResponse<update_backup_version::v3::Response>> {
    backup::update(
        &app,
        &session.user_id,
        &req.version,
        &value(&req.algorithm)?,
    )
    .await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

async fn backup_delete(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_version::v3::Request>,
) -> Result<RumaResponse<delete_backup_version::v3::Response>> {
    backup::delete(&app, &session.user_id, &req.version).await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

async fn put_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys::v3::Request>,
) -> Result<RumaResponse<add_backup_keys::v3::Response>> {
    let mut sessions = Vec::new();
    for (room, backup) in &req.rooms {
        for (id, raw) in &backup.sessions {
            sessions.push((room.to_string(), id.clone(), value(raw)?));
        }
    }
    let counts = backup::put_keys(&app, &session.user_id, &req.version, sessions).await?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(
        counts.etag,
        counts.count,
    )))
}

async fn put_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let mut sessions = Vec::new();
    for (id, raw) in &req.sessions {
        sessions.push((req.room_id.to_string(), id.clone(), value(raw)?));
    }
    let counts = backup::put_keys(&app, &session.user_id, &req.version, sessions).await?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(
        counts.etag,
        counts.count,
    )))
}

async fn put_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let sessions = vec![(
        req.room_id.to_string(),
        req.session_id.clone(),
        value(&req.session_data)?,
    )];
    let counts = backup::put_keys(&app, &session.user_id, &req.version, sessions).await?;
    Ok(RumaResponse(
        add_backup_keys_for_session::v3::Response::new(counts.etag, counts.count),
    ))
}

async fn get_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> Result<RumaResponse<get_backup_keys::v3::Response>> {
    let keys = backup::get_keys(&app, &session.user_id, &req.version, None, None).await?;
    Ok(RumaResponse(get_backup_keys::v3::Response::new(
        keys.into_iter()
            .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
            .collect(),
    )))
}

async fn get_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let keys = backup::get_keys(
        &app,
        &session.user_id,
        &req.version,
        Some(req.room_id.as_str()),
        None,
    )
    .await?;
    let sessions = keys.into_values().next().unwrap_or_default();
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(
        sessions,
    )))
}

async fn get_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let keys = backup::get_keys(
        &app,
        &session.user_id,
        &req.version,
        Some(req.room_id.as_str()),
        Some(&req.session_id),
    )
    .await?;
    let key = keys
        .into_values()
        .flat_map(BTreeMap::into_values)
        .next()
        .ok_or_else(|| Error::not_found("No key backed up for this session"))?;
    Ok(RumaResponse(
        get_backup_keys_for_session::v3::Response::new(key),
    ))
}

async fn delete_all(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys::v3::Response>> {
    let counts = backup::delete_keys(&app, &session.user_id, &req.version, None, None).await?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(
        counts.etag,
        counts.count,
    )))
}

async fn delete_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let counts = backup::delete_keys(
        &app,
        &session.user_id,
        &req.version,
        Some(req.room_id.as_str()),
        None,
    )
    .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_room::v3::Response::new(counts.etag, counts.count),
    ))
}

async fn delete_session(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let counts = backup::delete_keys(
        &app,
        &session.user_id,
        &req.version,
        Some(req.room_id.as_str()),
        Some(&req.session_id),
    )
    .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_session::v3::Response::new(counts.etag, counts.count),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The fields ruma leaves out when empty are written as `{}`, beside
    /// ruma's own, whether or not it wrote any.
    #[tokio::test]
    async fn empty_fields_are_written_as_empty_objects() {
        let none = WithEmpty(upload_signatures::v3::Response::new(), vec!["failures"]);
        assert_eq!(body(none.into_response()).await, json!({ "failures": {} }));

        let mut query = get_keys::v3::Response::new();
        query.failures.insert(
            "remote.example".into(),
            json!({ "errcode": "M_UNAVAILABLE" }),
        );
        let some = WithEmpty(query, vec!["device_keys", "master_keys"]);
        assert_eq!(
            body(some.into_response()).await,
            json!({
                "device_keys": {},
                "master_keys": {},
                "failures": { "remote.example": { "errcode": "M_UNAVAILABLE" } },
            })
        );
    }
}
