//! Deleting rooms (`DELETE /_synapse/admin/v1/rooms/{roomId}`, and in the
//! background with `/v2/`): members removed, aliases and the directory entry
//! dropped, optionally blocked and purged.

use std::collections::HashMap;

use ruma::{RoomId, UserId};
use serde::Serialize;
use serde_json::Value;

use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{membership, session::Session},
    storage::rooms,
};

/// What a deletion did (Synapse's `shutdown_room` answer).
#[derive(Debug, Clone, Serialize)]
pub struct ShutdownRoom {
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    /// Always `null`: no replacement room is made.
    pub new_room_id: Option<String>,
}

/// The ID of a deletion started in the background.
#[derive(Debug, Serialize)]
pub struct DeletionStarted {
    pub delete_id: String,
}

/// A background deletion's progress.
#[derive(Debug, Serialize)]
pub struct DeletionProgress {
    pub delete_id: String,
    /// `active` (running), `complete` or `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_room: Option<ShutdownRoom>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The deletions of one room.
#[derive(Debug, Serialize)]
pub struct RoomDeletions {
    pub results: Vec<DeletionProgress>,
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
) -> Result<ShutdownRoom> {
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
pub async fn run_deletion(app: &AppState, by: &Session, plan: Deletion) -> Result<ShutdownRoom> {
    let Deletion {
        room_id,
        known,
        block,
        purge,
        force_purge,
    } = plan;
    if block {
        rooms::block(
            &app.db,
            room_id.as_str(),
            by.user_id.as_str(),
            app.clock.now_ms(),
        )
        .await?;
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
            match membership::leave(app, &uid, &room_id, reason).await {
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
    Ok(ShutdownRoom {
        kicked_users: kicked,
        failed_to_kick_users: failed,
        local_aliases: aliases,
        new_room_id: None,
    })
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
    result: Option<ShutdownRoom>,
    error: Option<String>,
    started: std::time::Instant,
}

impl DeletionStatus {
    fn progress(&self, delete_id: &str) -> DeletionProgress {
        DeletionProgress {
            delete_id: delete_id.to_owned(),
            status: self.status,
            shutdown_room: self.result.clone(),
            error: self.error.clone(),
        }
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
) -> Result<DeletionStarted> {
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
    Ok(DeletionStarted { delete_id })
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
pub fn deletion_status(app: &AppState, delete_id: &str) -> Result<DeletionProgress> {
    let all = app.room_deletions.by_id.lock().expect("not poisoned");
    all.get(delete_id)
        .map(|d| d.progress(delete_id))
        .ok_or_else(|| Error::not_found("No deletion with this ID"))
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`: the room's deletions.
pub fn room_deletion_statuses(app: &AppState, room_id: &str) -> Result<RoomDeletions> {
    let all = app.room_deletions.by_id.lock().expect("not poisoned");
    let results: Vec<DeletionProgress> = all
        .iter()
        .filter(|(_, d)| d.room_id == room_id)
        .map(|(id, d)| d.progress(id))
        .collect();
    if results.is_empty() {
        return Err(Error::not_found("No deletion for this room"));
    }
    Ok(RoomDeletions { results })
}
