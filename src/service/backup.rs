//! Server-side key backups (spec: "Server-side key backups"): versions, and the
//! encrypted session keys in them, with `etag` and `count`.

use std::collections::BTreeMap;

use ruma::UserId;
use serde_json::{Map, Value, json};

use crate::{
    app::AppState,
    error::{Error, ErrorKind, Result},
    storage::e2e_keys::{self as keys, BackupKey},
};

fn parse_version(version: &str) -> Result<i64> {
    version
        .parse()
        .map_err(|_| Error::not_found("Unknown backup version"))
}

fn check_algorithm(algorithm: &Value) -> Result<(String, String)> {
    let name = algorithm["algorithm"]
        .as_str()
        .ok_or_else(|| Error::bad_json("Missing algorithm"))?;
    if !algorithm["auth_data"].is_object() {
        return Err(Error::bad_json("auth_data must be an object"));
    }
    let auth =
        serde_json::to_string(&algorithm["auth_data"]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((name.to_owned(), auth))
}

pub async fn create(app: &AppState, user: &UserId, algorithm: &Value) -> Result<String> {
    let (name, auth) = check_algorithm(algorithm)?;
    Ok(keys::create_backup(&app.db, user.as_str(), &name, &auth)
        .await?
        .to_string())
}

/// `GET /room_keys/version[/{version}]`.
pub async fn info(app: &AppState, user: &UserId, version: Option<&str>) -> Result<Value> {
    let version = version.map(parse_version).transpose()?;
    let backup = keys::backup(&app.db, user.as_str(), version)
        .await?
        .ok_or_else(|| Error::not_found("No backup found"))?;
    let count = keys::backup_key_count(&app.db, user.as_str(), backup.version).await?;
    Ok(json!({
        "algorithm": backup.algorithm,
        "auth_data": serde_json::from_str::<Value>(&backup.auth_data).unwrap_or_default(),
        "count": count,
        "etag": backup.etag.to_string(),
        "version": backup.version.to_string(),
    }))
}

pub async fn update(app: &AppState, user: &UserId, version: &str, algorithm: &Value) -> Result<()> {
    let v = parse_version(version)?;
    let (name, auth) = check_algorithm(algorithm)?;
    if let Some(body_version) = algorithm.get("version").and_then(Value::as_str)
        && body_version != version
    {
        return Err(Error::invalid_param("version does not match the path"));
    }
    let current = keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    if current.algorithm != name {
        return Err(Error::invalid_param(
            "The algorithm of a backup cannot change",
        ));
    }
    keys::update_backup(&app.db, user.as_str(), v, &name, &auth).await?;
    Ok(())
}

pub async fn delete(app: &AppState, user: &UserId, version: &str) -> Result<()> {
    let v = parse_version(version)?;
    if !keys::delete_backup(&app.db, user.as_str(), v).await? {
        return Err(Error::not_found("Unknown backup version"));
    }
    Ok(())
}

/// `PUT /room_keys/keys…`: `sessions` is room → session → key data. Only the
/// current backup accepts keys.
pub async fn put_keys(
    app: &AppState,
    user: &UserId,
    version: &str,
    sessions: Vec<(String, String, Value)>,
) -> Result<Value> {
    let v = parse_version(version)?;
    let current = keys::backup(&app.db, user.as_str(), None).await?;
    if current.as_ref().map(|b| b.version) != Some(v) {
        return Err(Error::new(
            ErrorKind::WrongRoomKeysVersion {
                current_version: current.map(|b| b.version.to_string()),
            },
            "Wrong backup version",
        ));
    }
    let mut parsed = Vec::with_capacity(sessions.len());
    for (room_id, session_id, data) in sessions {
        let int = |k: &str| {
            data[k]
                .as_i64()
                .ok_or_else(|| Error::bad_json(format!("Missing {k} in key data")))
        };
        parsed.push(BackupKey {
            first_message_index: int("first_message_index")?,
            forwarded_count: int("forwarded_count")?,
            is_verified: data["is_verified"]
                .as_bool()
                .ok_or_else(|| Error::bad_json("Missing is_verified in key data"))?,
            session_data: serde_json::to_string(
                data.get("session_data")
                    .filter(|d| d.is_object())
                    .ok_or_else(|| Error::bad_json("Missing session_data in key data"))?,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
            room_id,
            session_id,
        });
    }
    let mut tx = app.db.begin().await?;
    let mut changed = false;
    for key in &parsed {
        changed |= keys::put_backup_key(&mut *tx, user.as_str(), v, key).await?;
    }
    if changed {
        keys::bump_backup_etag(&mut *tx, user.as_str(), v).await?;
    }
    tx.commit().await?;
    counts(app, user, v).await
}

async fn counts(app: &AppState, user: &UserId, v: i64) -> Result<Value> {
    let backup = keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let count = keys::backup_key_count(&app.db, user.as_str(), v).await?;
    Ok(json!({ "etag": backup.etag.to_string(), "count": count }))
}

fn key_json(k: &BackupKey) -> Value {
    json!({
        "first_message_index": k.first_message_index,
        "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified,
        "session_data": serde_json::from_str::<Value>(&k.session_data).unwrap_or_default(),
    })
}

/// `GET /room_keys/keys…`, narrowed to a room and a session when given.
pub async fn get_keys(
    app: &AppState,
    user: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Value> {
    let v = parse_version(version)?;
    keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let rows = keys::backup_keys(&app.db, user.as_str(), v, room_id, session_id).await?;
    if let (Some(_), Some(_)) = (room_id, session_id) {
        return rows
            .first()
            .map(key_json)
            .ok_or_else(|| Error::not_found("No key backed up for this session"));
    }
    let mut rooms: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for k in &rows {
        rooms
            .entry(k.room_id.clone())
            .or_default()
            .insert(k.session_id.clone(), key_json(k));
    }
    if room_id.is_some() {
        let sessions = rooms.into_values().next().unwrap_or_default();
        return Ok(json!({ "sessions": sessions }));
    }
    let rooms: Map<String, Value> = rooms
        .into_iter()
        .map(|(r, s)| (r, json!({ "sessions": s })))
        .collect();
    Ok(json!({ "rooms": rooms }))
}

pub async fn delete_keys(
    app: &AppState,
    user: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Value> {
    let v = parse_version(version)?;
    keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let mut tx = app.db.begin().await?;
    if keys::delete_backup_keys(&mut *tx, user.as_str(), v, room_id, session_id).await? > 0 {
        keys::bump_backup_etag(&mut *tx, user.as_str(), v).await?;
    }
    tx.commit().await?;
    counts(app, user, v).await
}
