//! The administration use cases behind the Synapse-compatible admin API
//! (`/_synapse/admin/...`): users, rooms and registration tokens. Every change
//! is logged with the acting administrator.

use std::collections::HashMap;

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::{account, profile, session::Session};
use crate::{
    domain::localpart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{devices, now_ms, registration_tokens as tokens, rooms, state, users},
};

fn local_user(app: &AppState, user_id: &str) -> Result<ruma::OwnedUserId> {
    let user = UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if user.server_name() != app.server_name {
        return Err(Error::invalid_param("Can only administer local users"));
    }
    Ok(user)
}

fn user_json(row: &users::AdminRow) -> Value {
    json!({
        "name": row.user_id,
        "admin": row.is_admin,
        "is_guest": row.is_guest,
        "deactivated": row.deactivated,
        "creation_ts": row.created_ts,
        "displayname": row.displayname,
        "avatar_url": row.avatar_url,
        "user_type": null,
        "shadow_banned": false,
        "locked": false,
        "erased": row.erased,
    })
}

/// `GET /_synapse/admin/v2/users`: `from` is an offset token.
pub async fn list_users(
    app: &AppState,
    from: i64,
    limit: i64,
    name: Option<&str>,
    guests: bool,
    deactivated: bool,
) -> Result<Value> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        users::admin_list(&app.db, from.max(0), limit, name, guests, deactivated).await?;
    let mut body = json!({
        "users": rows.iter().map(user_json).collect::<Vec<_>>(),
        "total": total,
    });
    if from + limit < total {
        body["next_token"] = (from + limit).to_string().into();
    }
    Ok(body)
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn user(app: &AppState, user_id: &str) -> Result<Value> {
    let user = local_user(app, user_id)?;
    let (rows, _) = users::admin_list(&app.db, 0, 1, Some(user.as_str()), true, true).await?;
    let row = rows
        .iter()
        .find(|r| r.user_id == user.as_str())
        .ok_or_else(|| Error::not_found("User not found"))?;
    let mut body = user_json(row);
    // Synapse's shape: medium, address, added_at, validated_at.
    let threepids: Vec<Value> = crate::storage::threepids::list(&app.db, user.as_str())
        .await?
        .into_iter()
        .map(|t| {
            json!({
                "medium": t.medium,
                "address": t.address,
                "added_at": t.added_ts,
                "validated_at": t.validated_ts,
            })
        })
        .collect();
    body["threepids"] = json!(threepids);
    let external: Vec<Value> = crate::storage::sso::list_for_user(&app.db, user.as_str())
        .await?
        .into_iter()
        .map(|e| json!({ "auth_provider": e.auth_provider, "external_id": e.external_id }))
        .collect();
    body["external_ids"] = json!(external);
    Ok(body)
}

/// `GET /_synapse/admin/v1/auth_providers/{provider}/users/{externalId}`:
/// the user an identity provider's subject is linked to.
pub async fn user_by_external_id(
    app: &AppState,
    auth_provider: &str,
    external_id: &str,
) -> Result<Value> {
    let user = crate::storage::sso::user_for(&app.db, auth_provider, external_id)
        .await?
        .ok_or_else(|| Error::not_found("User not found"))?;
    Ok(json!({ "user_id": user }))
}

/// The `external_ids` of a `PUT /_synapse/admin/v2/users/{userId}` body:
/// `[{"auth_provider": …, "external_id": …}]`, replacing the user's list.
fn parse_external_ids(value: &Value) -> Result<Option<Vec<(String, String)>>> {
    let Some(list) = value.as_array() else {
        return match value {
            Value::Null => Ok(None),
            _ => Err(Error::invalid_param("external_ids must be a list")),
        };
    };
    list.iter()
        .map(
            |e| match (e["auth_provider"].as_str(), e["external_id"].as_str()) {
                (Some(p), Some(id)) if !p.is_empty() && !id.is_empty() => {
                    Ok((p.to_owned(), id.to_owned()))
                }
                _ => Err(Error::invalid_param(
                    "each of external_ids needs auth_provider and external_id",
                )),
            },
        )
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

async fn set_external_ids(
    app: &AppState,
    by: &Session,
    user: &UserId,
    ids: &[(String, String)],
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    crate::storage::sso::delete_for_user(&mut *tx, user.as_str()).await?;
    for (provider, id) in ids {
        if !crate::storage::sso::link(&mut *tx, provider, id, user.as_str(), now_ms()).await? {
            return Err(Error::new(
                ErrorKind::Conflict,
                "External id is already in use",
            ));
        }
    }
    tx.commit().await?;
    tracing::info!(admin = %by.user_id, user = %user, count = ids.len(), "admin API: external IDs set");
    Ok(())
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the user when missing, or
/// changes password, display name, avatar, admin flag, deactivation. Returns
/// whether the user was created, and the user.
pub async fn put_user(
    app: &AppState,
    by: &Session,
    user_id: &str,
    body: &Value,
) -> Result<(bool, Value)> {
    let user = local_user(app, user_id)?;
    let existing = users::get(&app.db, user.as_str()).await?;
    let created = existing.is_none();
    let external_ids = parse_external_ids(&body["external_ids"])?;
    let admin_flag = match &body["admin"] {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        _ => return Err(Error::invalid_param("admin must be a boolean")),
    };
    let password = match &body["password"] {
        Value::Null => None,
        Value::String(p) if !p.is_empty() => Some(p.clone()),
        _ => return Err(Error::invalid_param("password must be a non-empty string")),
    };
    if created {
        localpart::new_user_id(user.localpart(), &app.server_name)
            .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
        let hash = match &password {
            Some(p) => Some(super::session::hash_password(app, p.clone()).await?),
            None => None,
        };
        users::insert(
            &app.db,
            user.as_str(),
            hash.as_deref(),
            admin_flag.unwrap_or(false),
            false,
            now_ms(),
        )
        .await?;
        crate::storage::profiles::set_displayname(&app.db, user.as_str(), Some(user.localpart()))
            .await?;
        tracing::info!(admin = %by.user_id, user = %user, "admin API: user created");
    } else if body["deactivated"] == Value::Bool(false)
        && existing.as_ref().is_some_and(|u| u.deactivated)
    {
        // Reactivation needs a new password, as on Synapse.
        let Some(p) = password else {
            return Err(Error::invalid_param(
                "A password is required to reactivate an account",
            ));
        };
        let hash = super::session::hash_password(app, p).await?;
        users::reactivate(&app.db, user.as_str(), &hash).await?;
        tracing::info!(admin = %by.user_id, user = %user, "admin API: user reactivated");
        if let Some(flag) = admin_flag {
            users::set_admin(&app.db, user.as_str(), flag).await?;
        }
    } else {
        if let Some(p) = password {
            let logout = body["logout_devices"].as_bool().unwrap_or(true);
            reset_password(app, by, user.as_str(), &p, logout).await?;
        }
        if let Some(flag) = admin_flag {
            users::set_admin(&app.db, user.as_str(), flag).await?;
            tracing::info!(admin = %by.user_id, user = %user, flag, "admin API: admin flag set");
        }
        match &body["deactivated"] {
            Value::Bool(true) if !existing.as_ref().is_some_and(|u| u.deactivated) => {
                deactivate(app, by, user.as_str(), false).await?;
            }
            _ => {}
        }
    }
    for (key, field) in [
        ("displayname", profile::Field::DisplayName),
        ("avatar_url", profile::Field::AvatarUrl),
    ] {
        if let Some(value) = body[key].as_str() {
            profile::apply(app, &user, field, Some(value.to_owned())).await?;
        }
    }
    if let Some(ids) = &external_ids {
        set_external_ids(app, by, &user, ids).await?;
    }
    Ok((created, self::user(app, user.as_str()).await?))
}

/// `POST /_synapse/admin/v1/deactivate/{userId}` (body `{"erase": bool}`).
pub async fn deactivate(app: &AppState, by: &Session, user_id: &str, erase: bool) -> Result<()> {
    let user = local_user(app, user_id)?;
    if users::get(&app.db, user.as_str()).await?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    account::deactivate_user(app, &user, erase, None, None).await?;
    tracing::info!(admin = %by.user_id, user = %user, erase, "admin API: user deactivated");
    Ok(())
}

/// `POST /_synapse/admin/v1/users/{userId}/login`: an access token acting as
/// the user, optionally expiring at `valid_until_ms`. Unlike Synapse's puppet
/// tokens it gets a device of its own, named after the admin, so the user sees
/// it in their device list and can log it out.
pub async fn login_as(app: &AppState, by: &Session, user_id: &str, body: &Value) -> Result<Value> {
    let user = local_user(app, user_id)?;
    if user == by.user_id {
        return Err(Error::invalid_param(
            "Cannot use the admin API to log in as yourself",
        ));
    }
    let row = users::get(&app.db, user.as_str())
        .await?
        .ok_or_else(|| Error::not_found("User not found"))?;
    if row.deactivated {
        return Err(Error::invalid_param("The user is deactivated"));
    }
    let now = now_ms();
    let valid_until = match &body["valid_until_ms"] {
        Value::Null => None,
        v => match v.as_i64() {
            Some(ts) if ts > now => Some(ts),
            _ => {
                return Err(Error::invalid_param(
                    "valid_until_ms must be a time in the future, in milliseconds",
                ));
            }
        },
    };
    let device_id = crate::domain::token::new_device_id();
    let access_token = crate::domain::token::new_access_token();
    let mut tx = app.db.begin().await?;
    devices::upsert(
        &mut *tx,
        user.as_str(),
        &device_id,
        Some(&format!("Admin login by {}", by.user_id)),
        None,
        now,
    )
    .await?;
    crate::storage::tokens::insert_access(
        &mut *tx,
        &crate::domain::token::hash(&access_token),
        user.as_str(),
        &device_id,
        valid_until,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(admin = %by.user_id, user = %user, device = %device_id, "admin API: logged in as user");
    Ok(json!({ "access_token": access_token }))
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`.
pub async fn reset_password(
    app: &AppState,
    by: &Session,
    user_id: &str,
    new_password: &str,
    logout_devices: bool,
) -> Result<()> {
    let user = local_user(app, user_id)?;
    if users::get(&app.db, user.as_str()).await?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    if new_password.is_empty() {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            "The password may not be empty",
        ));
    }
    let hash = super::session::hash_password(app, new_password.to_owned()).await?;
    let mut tx = app.db.begin().await?;
    users::set_password_hash(&mut *tx, user.as_str(), Some(&hash)).await?;
    let guard = if logout_devices {
        let gone = devices::delete_all_except(&mut *tx, user.as_str(), None).await?;
        Some(
            super::stream::device_list_changed(
                &mut tx,
                app,
                user.as_str(),
                super::stream::DeviceChange::Devices(&gone),
            )
            .await?,
        )
    } else {
        None
    };
    tx.commit().await?;
    drop(guard);
    tracing::info!(admin = %by.user_id, user = %user, logout_devices, "admin API: password reset");
    Ok(())
}

/// `GET /_synapse/admin/v1/whois/{userId}` and the client API's
/// `GET /_matrix/client/v3/admin/whois/{userId}`: devices and where they were
/// last seen: address, time and user agent (each left out while unknown, as
/// the spec allows).
pub async fn whois(app: &AppState, user_id: &str) -> Result<Value> {
    let user = local_user(app, user_id)?;
    let mut out = serde_json::Map::new();
    for d in devices::list(&app.db, user.as_str()).await? {
        let mut connection = serde_json::Map::new();
        if let Some(ip) = &d.last_seen_ip {
            connection.insert("ip".into(), ip.as_str().into());
        }
        if let Some(ts) = d.last_seen_ts {
            connection.insert("last_seen".into(), ts.into());
        }
        if let Some(agent) = &d.last_seen_user_agent {
            connection.insert("user_agent".into(), agent.as_str().into());
        }
        out.insert(
            d.device_id.clone(),
            json!({ "sessions": [{ "connections": [connection] }] }),
        );
    }
    Ok(json!({ "user_id": user, "devices": out }))
}

/// The client API's whois: the user themself, or a server admin (as Synapse
/// allows); local users only.
pub async fn whois_for(app: &AppState, by: &Session, user_id: &str) -> Result<Value> {
    if by.user_id.as_str() != user_id && !by.is_admin {
        return Err(Error::forbidden("You are not a server admin"));
    }
    whois(app, user_id).await
}

/// `GET /_synapse/admin/v1/rooms`: `from` is an offset.
pub async fn list_rooms(app: &AppState, from: i64, limit: i64) -> Result<Value> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        rooms::admin_list(&app.db, app.server_name.as_str(), from.max(0), limit).await?;
    let mut out = Vec::new();
    for (room_id, version, group, joined, local) in rows {
        out.push(room_json(app, &room_id, &version, group, joined, local).await?);
    }
    let mut body = json!({ "rooms": out, "offset": from, "total_rooms": total });
    if from + limit < total {
        body["next_batch"] = (from + limit).into();
    }
    Ok(body)
}

async fn room_json(
    app: &AppState,
    room_id: &str,
    version: &str,
    group: Option<i64>,
    joined: i64,
    local: i64,
) -> Result<Value> {
    let mut room = match group {
        Some(g) => super::directory::summary(app, room_id, g, joined).await?,
        None => json!({ "room_id": room_id }),
    };
    room["version"] = version.into();
    room["joined_members"] = joined.into();
    room["joined_local_members"] = local.into();
    room["public"] = rooms::is_published(&app.db, room_id)
        .await?
        .unwrap_or(false)
        .into();
    room["state_events"] = match group {
        Some(g) => (state::full_state(&app.db, g).await?.len() as i64).into(),
        None => 0.into(),
    };
    if let Some(rule) = room.get("join_rule").cloned() {
        room["join_rules"] = rule;
    }
    Ok(room)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`.
pub async fn room(app: &AppState, room_id: &str) -> Result<Value> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let room = rooms::get(&app.db, room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let members = rooms::members(&app.db, room_id.as_str(), "join").await?;
    let suffix = format!(":{}", app.server_name);
    let local = members.iter().filter(|(u, _)| u.ends_with(&suffix)).count() as i64;
    room_json(
        app,
        room_id.as_str(),
        &room.room_version,
        room.current_state_group,
        members.len() as i64,
        local,
    )
    .await
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: every local member leaves (joined,
/// invited, knocking), the room's local aliases are removed and it leaves the
/// directory; with `block` local users cannot join it again; with `purge`
/// (the default) everything held about it is deleted — refused while a local
/// user could not be removed, unless `force_purge`. Synapse's replacement room
/// (`new_room_user_id`) is not offered.
pub async fn delete_room(
    app: &AppState,
    by: &Session,
    room_id: &str,
    body: &Value,
) -> Result<Value> {
    let plan = plan_deletion(app, room_id, body).await?;
    run_deletion(app, by, plan).await
}

/// A room deletion, checked and ready to run.
pub struct Deletion {
    room_id: ruma::OwnedRoomId,
    known: bool,
    block: bool,
    purge: bool,
    force_purge: bool,
}

/// The checks of a deletion request, answered before anything runs.
pub async fn plan_deletion(app: &AppState, room_id: &str, body: &Value) -> Result<Deletion> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    if !body["new_room_user_id"].is_null() {
        return Err(Error::invalid_param(
            "new_room_user_id is not supported: Lattice does not create replacement rooms",
        ));
    }
    let flag = |name: &str, default: bool| match &body[name] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(Error::invalid_param(format!("{name} must be a boolean"))),
    };
    let (block, purge, force_purge) = (
        flag("block", false)?,
        flag("purge", true)?,
        flag("force_purge", false)?,
    );
    let known = rooms::get(&app.db, room_id.as_str()).await?.is_some();
    if !known && !block {
        return Err(Error::not_found("Room not found"));
    }
    Ok(Deletion {
        room_id,
        known,
        block,
        purge,
        force_purge,
    })
}

/// Runs a planned deletion; answers what Synapse's `shutdown_room` holds.
pub async fn run_deletion(app: &AppState, by: &Session, plan: Deletion) -> Result<Value> {
    let Deletion {
        room_id,
        known,
        block,
        purge,
        force_purge,
    } = plan;
    if block {
        rooms::block(&app.db, room_id.as_str(), by.user_id.as_str(), now_ms()).await?;
        tracing::info!(admin = %by.user_id, room = %room_id, "admin API: room blocked");
    }
    let (mut kicked, mut failed, mut aliases) = (Vec::new(), Vec::new(), Vec::new());
    if known {
        let suffix = format!(":{}", app.server_name);
        let mut local = Vec::new();
        for membership in ["join", "invite", "knock"] {
            for (user, _) in rooms::members(&app.db, room_id.as_str(), membership).await? {
                if user.ends_with(&suffix) {
                    local.push((user, membership));
                }
            }
        }
        for (user, membership) in local {
            let Ok(uid) = UserId::parse(user.as_str()) else {
                continue;
            };
            let reason = Some("This room was removed by the server administrator".to_owned());
            match super::membership::leave(app, &uid, &room_id, reason).await {
                Ok(()) if membership == "join" => kicked.push(user),
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(room = %room_id, %user, error = %e, "admin API: could not remove member");
                    failed.push(user);
                }
            }
        }
        for alias in rooms::aliases_of(&app.db, room_id.as_str()).await? {
            rooms::delete_alias(&app.db, &alias).await?;
            aliases.push(alias);
        }
        rooms::set_published(&app.db, room_id.as_str(), false).await?;
        tracing::info!(
            admin = %by.user_id, room = %room_id, kicked = kicked.len(), failed = failed.len(),
            "admin API: room emptied"
        );
        if purge && (failed.is_empty() || force_purge) {
            purge_room(app, by, &room_id).await?;
        } else if purge {
            return Err(Error::new(
                ErrorKind::Unknown,
                format!(
                    "Not purged: {} local users could not be removed (force_purge overrides)",
                    failed.len()
                ),
            ));
        }
    }
    Ok(json!({
        "kicked_users": kicked,
        "failed_to_kick_users": failed,
        "local_aliases": aliases,
        "new_room_id": null,
    }))
}

/// Deletes a room's data in one transaction, logging a progress line per table.
async fn purge_room(app: &AppState, by: &Session, room_id: &RoomId) -> Result<()> {
    let started = std::time::Instant::now();
    let mut tx = app.db.begin().await?;
    if rooms::lock(&mut *tx, room_id.as_str()).await?.is_none() {
        return Ok(());
    }
    const TABLES: usize = 18;
    let mut step = 0;
    let total = rooms::purge(&mut tx, room_id.as_str(), |table, rows| {
        step += 1;
        tracing::info!(room = %room_id, "purge {step}/{TABLES}: {rows} rows from {table}");
    })
    .await?;
    tx.commit().await?;
    tracing::info!(
        admin = %by.user_id, room = %room_id, rows = total,
        secs = started.elapsed().as_secs_f64(), "admin API: room purged"
    );
    Ok(())
}

/// Asynchronous room deletions (`DELETE /_synapse/admin/v2/rooms/{roomId}`),
/// kept in memory for a day as Synapse does, by delete ID.
#[derive(Default)]
pub struct Deletions {
    by_id: std::sync::Mutex<HashMap<String, DeletionStatus>>,
}

struct DeletionStatus {
    room_id: String,
    /// `active` (running), `complete` or `failed`.
    status: &'static str,
    result: Option<Value>,
    error: Option<String>,
    started: std::time::Instant,
}

impl DeletionStatus {
    fn json(&self, delete_id: &str) -> Value {
        let mut out = json!({ "delete_id": delete_id, "status": self.status });
        if let Some(result) = &self.result {
            out["shutdown_room"] = result.clone();
        }
        if let Some(error) = &self.error {
            out["error"] = error.clone().into();
        }
        out
    }
}

const DELETION_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: checks the request, starts the
/// deletion in the background and answers its `delete_id`.
pub async fn delete_room_async(
    app: &AppState,
    by: &Session,
    room_id: &str,
    body: &Value,
) -> Result<Value> {
    let plan = plan_deletion(app, room_id, body).await?;
    let delete_id = crate::domain::token::random_string(16);
    {
        let mut all = app.room_deletions.by_id.lock().expect("not poisoned");
        all.retain(|_, d| d.started.elapsed() < DELETION_KEPT);
        if all
            .values()
            .any(|d| d.room_id == plan.room_id.as_str() && d.status == "active")
        {
            return Err(Error::bad_json(format!(
                "A deletion of {} is already running",
                plan.room_id
            )));
        }
        all.insert(
            delete_id.clone(),
            DeletionStatus {
                room_id: plan.room_id.to_string(),
                status: "active",
                result: None,
                error: None,
                started: std::time::Instant::now(),
            },
        );
    }
    let (app2, by, id) = (app.clone(), by.clone(), delete_id.clone());
    tokio::spawn(async move {
        let outcome = run_deletion(&app2, &by, plan).await;
        let mut all = app2.room_deletions.by_id.lock().expect("not poisoned");
        if let Some(d) = all.get_mut(&id) {
            match outcome {
                Ok(result) => {
                    d.status = "complete";
                    d.result = Some(result);
                }
                Err(e) => {
                    tracing::warn!(room = %d.room_id, error = %e, "admin API: room deletion failed");
                    d.status = "failed";
                    d.error = Some(e.to_string());
                }
            }
        }
    });
    Ok(json!({ "delete_id": delete_id }))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
pub fn deletion_status(app: &AppState, delete_id: &str) -> Result<Value> {
    let all = app.room_deletions.by_id.lock().expect("not poisoned");
    all.get(delete_id)
        .map(|d| d.json(delete_id))
        .ok_or_else(|| Error::not_found("No deletion with this ID"))
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`: the room's deletions.
pub fn room_deletion_statuses(app: &AppState, room_id: &str) -> Result<Value> {
    let all = app.room_deletions.by_id.lock().expect("not poisoned");
    let results: Vec<Value> = all
        .iter()
        .filter(|(_, d)| d.room_id == room_id)
        .map(|(id, d)| d.json(id))
        .collect();
    if results.is_empty() {
        return Err(Error::not_found("No deletion for this room"));
    }
    Ok(json!({ "results": results }))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`.
pub async fn block_status(app: &AppState, room_id: &str) -> Result<Value> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    Ok(match rooms::blocked_by(&app.db, room_id.as_str()).await? {
        Some(by) => json!({ "block": true, "user_id": by }),
        None => json!({ "block": false }),
    })
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block` with `{"block": bool}`.
pub async fn set_block(app: &AppState, by: &Session, room_id: &str, body: &Value) -> Result<Value> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let block = body["block"]
        .as_bool()
        .ok_or_else(|| Error::bad_json("block must be a boolean"))?;
    if block {
        rooms::block(&app.db, room_id.as_str(), by.user_id.as_str(), now_ms()).await?;
    } else {
        rooms::unblock(&app.db, room_id.as_str()).await?;
    }
    tracing::info!(admin = %by.user_id, room = %room_id, block, "admin API: room block set");
    Ok(json!({ "block": block }))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`.
pub async fn room_members(app: &AppState, room_id: &str) -> Result<Value> {
    if rooms::get(&app.db, room_id).await?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    let members: Vec<String> = rooms::members(&app.db, room_id, "join")
        .await?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    Ok(json!({ "total": members.len(), "members": members }))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state events.
pub async fn room_state(app: &AppState, room_id: &str) -> Result<Value> {
    let room = rooms::get(&app.db, room_id)
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let ids: Vec<String> = match room.current_state_group {
        Some(g) => state::full_state(&app.db, g)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect(),
        None => Vec::new(),
    };
    let events: Vec<Value> = crate::storage::events::get_many(&app.db, &ids)
        .await?
        .iter()
        .filter_map(|e| {
            let mut pdu: Value = serde_json::from_str(&e.json).ok()?;
            pdu["event_id"] = e.event_id.clone().into();
            Some(pdu)
        })
        .collect();
    Ok(json!({ "state": events }))
}

fn token_json(t: &tokens::RegistrationToken) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": t.pending,
        "completed": t.completed,
        "expiry_time": t.expiry_ts,
    })
}

/// `GET /_synapse/admin/v1/registration_tokens`.
pub async fn list_tokens(app: &AppState) -> Result<Value> {
    let all = tokens::list(&app.db).await?;
    Ok(json!({ "registration_tokens": all.iter().map(token_json).collect::<Vec<_>>() }))
}

pub async fn get_token(app: &AppState, token: &str) -> Result<Value> {
    tokens::get(&app.db, token)
        .await?
        .map(|t| token_json(&t))
        .ok_or_else(|| Error::not_found("No such registration token"))
}

fn uses_and_expiry(body: &Value) -> Result<(Option<i32>, Option<i64>)> {
    let uses = match &body["uses_allowed"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .filter(|n| (0..=i32::MAX as i64).contains(n))
                .ok_or_else(|| {
                    Error::invalid_param("uses_allowed must be a non-negative integer")
                })? as i32,
        ),
    };
    let expiry = match &body["expiry_time"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .filter(|t| *t > now_ms())
                .ok_or_else(|| Error::invalid_param("expiry_time must be a future timestamp"))?,
        ),
    };
    Ok((uses, expiry))
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub async fn create_token(app: &AppState, by: &Session, body: &Value) -> Result<Value> {
    let (uses, expiry) = uses_and_expiry(body)?;
    let token = match &body["token"] {
        Value::Null => {
            let length = body["length"].as_u64().unwrap_or(16).clamp(1, 64) as usize;
            crate::domain::token::random_string(length)
        }
        Value::String(t)
            if !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)) =>
        {
            t.clone()
        }
        _ => {
            return Err(Error::invalid_param(
                "token must be 1-64 of [A-Za-z0-9._~-]",
            ));
        }
    };
    if !tokens::insert(&app.db, &token, uses, expiry, now_ms()).await? {
        return Err(Error::invalid_param("Token already exists"));
    }
    tracing::info!(admin = %by.user_id, "admin API: registration token created");
    get_token(app, &token).await
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn update_token(
    app: &AppState,
    by: &Session,
    token: &str,
    body: &Value,
) -> Result<Value> {
    let current = tokens::get(&app.db, token)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    let (uses, expiry) = uses_and_expiry(body)?;
    let uses = if body.get("uses_allowed").is_some() {
        uses
    } else {
        current.uses_allowed
    };
    let expiry = if body.get("expiry_time").is_some() {
        expiry
    } else {
        current.expiry_ts
    };
    tokens::update(&app.db, token, uses, expiry).await?;
    tracing::info!(admin = %by.user_id, "admin API: registration token updated");
    get_token(app, token).await
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete_token(app: &AppState, by: &Session, token: &str) -> Result<()> {
    if !tokens::delete(&app.db, token).await? {
        return Err(Error::not_found("No such registration token"));
    }
    tracing::info!(admin = %by.user_id, "admin API: registration token deleted");
    Ok(())
}

fn report_json(r: &crate::storage::relations::Report) -> Value {
    json!({
        "id": r.report_id,
        "received_ts": r.created_ts,
        "room_id": r.room_id,
        "event_id": r.event_id,
        "user_id": r.reporter,
        "reason": r.reason,
        "score": r.score,
    })
}

/// `GET /_synapse/admin/v1/event_reports`: newest first, `from` an offset.
pub async fn event_reports(app: &AppState, from: i64, limit: i64) -> Result<Value> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) = crate::storage::relations::reports(&app.db, from.max(0), limit).await?;
    let mut body = json!({
        "event_reports": rows.iter().map(report_json).collect::<Vec<_>>(),
        "total": total,
    });
    if from + limit < total {
        body["next_token"] = (from + limit).into();
    }
    Ok(body)
}

/// `GET /_synapse/admin/v1/event_reports/{id}`: the report with the event.
pub async fn event_report(app: &AppState, report_id: i64) -> Result<Value> {
    let report = crate::storage::relations::report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("No such report"))?;
    let mut body = report_json(&report);
    if let Some(ev) = crate::storage::events::get(&app.db, &report.event_id).await? {
        body["event_json"] = serde_json::from_str(&ev.json).unwrap_or_default();
    }
    Ok(body)
}

/// `DELETE /_synapse/admin/v1/event_reports/{id}`.
pub async fn delete_event_report(app: &AppState, by: &Session, report_id: i64) -> Result<()> {
    if !crate::storage::relations::delete_report(&app.db, report_id).await? {
        return Err(Error::not_found("No such report"));
    }
    tracing::info!(admin = %by.user_id, report_id, "admin API: event report deleted");
    Ok(())
}

/// `GET /_synapse/admin/v1/room_reports`: newest first, `from` an offset,
/// optionally of one room (`room_id`) or by one reporter (`user_id`); each with
/// the room's name, topic and canonical alias.
pub async fn room_reports(
    app: &AppState,
    from: i64,
    limit: i64,
    room_id: Option<&str>,
    reporter: Option<&str>,
) -> Result<Value> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::reports::room_reports(&app.db, from.max(0), limit, room_id, reporter)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(room_report_json(app, r).await?);
    }
    let mut body = json!({ "room_reports": out, "total": total });
    if from + limit < total {
        body["next_batch"] = (from + limit).into();
    }
    Ok(body)
}

async fn room_report_json(app: &AppState, r: &crate::storage::reports::Report) -> Result<Value> {
    let mut body = json!({
        "id": r.report_id,
        "received_ts": r.created_ts,
        "room_id": r.subject,
        "user_id": r.reporter,
        "reason": r.reason,
        "canonical_alias": null,
        "name": null,
        "topic": null,
    });
    if let Some(room) = rooms::get(&app.db, &r.subject).await?
        && let Some(group) = room.current_state_group
    {
        let summary = super::directory::summary(app, &r.subject, group, 0).await?;
        for key in ["canonical_alias", "name", "topic"] {
            if let Some(v) = summary.get(key) {
                body[key] = v.clone();
            }
        }
    }
    Ok(body)
}

/// `GET /_synapse/admin/v1/room_reports/{id}`.
pub async fn room_report(app: &AppState, report_id: i64) -> Result<Value> {
    let report = crate::storage::reports::room_report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("Room report not found"))?;
    room_report_json(app, &report).await
}

fn user_report_json(r: &crate::storage::reports::Report) -> Value {
    json!({
        "id": r.report_id,
        "received_ts": r.created_ts,
        "target_user_id": r.subject,
        "user_id": r.reporter,
        "reason": r.reason,
    })
}

/// `GET /_synapse/admin/v1/user_reports`: newest first, `from` an offset,
/// optionally of one user (`target_user_id`) or by one reporter (`user_id`).
pub async fn user_reports(
    app: &AppState,
    from: i64,
    limit: i64,
    target: Option<&str>,
    reporter: Option<&str>,
) -> Result<Value> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::reports::user_reports(&app.db, from.max(0), limit, target, reporter)
            .await?;
    let mut body = json!({
        "user_reports": rows.iter().map(user_report_json).collect::<Vec<_>>(),
        "total": total,
    });
    if from + limit < total {
        body["next_token"] = (from + limit).into();
    }
    Ok(body)
}

/// `GET /_synapse/admin/v1/user_reports/{id}`.
pub async fn user_report(app: &AppState, report_id: i64) -> Result<Value> {
    let report = crate::storage::reports::user_report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("User report not found"))?;
    Ok(user_report_json(&report))
}

/// `DELETE /_synapse/admin/v1/user_reports/{id}`.
pub async fn delete_user_report(app: &AppState, by: &Session, report_id: i64) -> Result<()> {
    if !crate::storage::reports::delete_user_report(&app.db, report_id).await? {
        return Err(Error::not_found("User report not found"));
    }
    tracing::info!(admin = %by.user_id, report_id, "admin API: user report deleted");
    Ok(())
}

/// `GET /_synapse/admin/v1/users/{userId}/media`: a local user's uploads.
pub async fn user_media(app: &AppState, user_id: &str, from: i64, limit: i64) -> Result<Value> {
    let user = local_user(app, user_id)?;
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::media::by_user(&app.db, user.as_str(), from.max(0), limit).await?;
    let media: Vec<Value> = rows
        .iter()
        .map(|m| {
            json!({
                "media_id": m.media_id,
                "media_type": m.content_type,
                "media_length": m.size,
                "upload_name": m.upload_name,
                "created_ts": m.created_ts,
                "quarantined_by": if m.quarantined { Some("admin") } else { None },
                "safe_from_quarantine": false,
            })
        })
        .collect();
    let mut body = json!({ "media": media, "total": total });
    if from + limit < total {
        body["next_token"] = (from + limit).into();
    }
    Ok(body)
}
