//! Server-side key backups (spec: "Server-side key backups"): versions, and the
//! encrypted session keys in them, with `etag` and `count`.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
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

/// JSON held for a backup, as ruma's raw type (the same JSON).
fn raw<T>(value: &Value) -> Result<Raw<T>> {
    let json = serde_json::value::to_raw_value(value).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Raw::from_json(json))
}

fn uint(n: i64) -> UInt {
    UInt::try_from(n).unwrap_or_default()
}

/// A backup version, as `GET /room_keys/version[/{version}]` describes it.
pub struct Info {
    /// `algorithm` and `auth_data`, as uploaded.
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: UInt,
    pub etag: String,
    pub version: String,
}

/// `GET /room_keys/version[/{version}]`.
pub async fn info(app: &AppState, user: &UserId, version: Option<&str>) -> Result<Info> {
    let version = version.map(parse_version).transpose()?;
    let backup = keys::backup(&app.db, user.as_str(), version)
        .await?
        .ok_or_else(|| Error::not_found("No backup found"))?;
    let count = keys::backup_key_count(&app.db, user.as_str(), backup.version).await?;
    Ok(Info {
        algorithm: raw(&json!({
            "algorithm": backup.algorithm,
            "auth_data": serde_json::from_str::<Value>(&backup.auth_data).unwrap_or_default(),
        }))?,
        count: uint(count),
        etag: backup.etag.to_string(),
        version: backup.version.to_string(),
    })
}

/// A backup's `etag` and key `count`, the answer to changing its keys.
pub struct Counts {
    pub etag: String,
    pub count: UInt,
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
) -> Result<Counts> {
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

async fn counts(app: &AppState, user: &UserId, v: i64) -> Result<Counts> {
    let backup = keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let count = keys::backup_key_count(&app.db, user.as_str(), v).await?;
    Ok(Counts {
        etag: backup.etag.to_string(),
        count: uint(count),
    })
}

fn key_json(k: &BackupKey) -> Value {
    json!({
        "first_message_index": k.first_message_index,
        "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified,
        "session_data": serde_json::from_str::<Value>(&k.session_data).unwrap_or_default(),
    })
}

/// Backed-up keys: room → session → key data.
pub type Keys = BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>;

/// `GET /room_keys/keys…`, narrowed to a room and a session when given
/// (`M_NOT_FOUND` when that session has no key).
pub async fn get_keys(
    app: &AppState,
    user: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Keys> {
    let v = parse_version(version)?;
    keys::backup(&app.db, user.as_str(), Some(v))
        .await?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let rows = keys::backup_keys(&app.db, user.as_str(), v, room_id, session_id).await?;
    if room_id.is_some() && session_id.is_some() && rows.is_empty() {
        return Err(Error::not_found("No key backed up for this session"));
    }
    let mut rooms = Keys::new();
    for k in &rows {
        let room = OwnedRoomId::try_from(k.room_id.as_str()).map_err(|e| anyhow::anyhow!("{e}"))?;
        rooms
            .entry(room)
            .or_default()
            .insert(k.session_id.clone(), raw(&key_json(k))?);
    }
    Ok(rooms)
}

pub async fn delete_keys(
    app: &AppState,
    user: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Counts> {
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
