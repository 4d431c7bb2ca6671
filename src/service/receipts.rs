//! Receipts and read markers (spec: "Receipts", "Fully read markers"), and typing
//! requests. Receipts are durable rows on the global stream; `m.fully_read` is
//! room account data, as the spec defines it.

use std::{collections::HashMap, time::Duration};

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{account_data, session::Session, stream};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, pushers, rooms, user_streams},
};

async fn require_joined(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<()> {
    match rooms::membership(&app.db, room_id.as_str(), user.as_str()).await? {
        Some(m) if m == "join" => Ok(()),
        _ => Err(Error::forbidden("You are not joined to this room")),
    }
}

async fn require_event_in_room(app: &AppState, room_id: &RoomId, event_id: &str) -> Result<()> {
    match events::get(&app.db, event_id).await? {
        Some(ev) if ev.room_id == room_id.as_str() && !ev.rejected => Ok(()),
        _ => Err(Error::not_found("Event not found in this room")),
    }
}

/// The `m.receipt` contents, by room, of stored receipts as `viewer` may see
/// them (others' private receipts left out): `{event_id: {type: {user: {ts,
/// thread_id?}}}}`.
pub fn contents(
    receipts: Vec<user_streams::Receipt>,
    viewer: &UserId,
) -> HashMap<String, Map<String, Value>> {
    let mut by_room: HashMap<String, Map<String, Value>> = HashMap::new();
    for r in receipts {
        if r.receipt_type == "m.read.private" && r.user_id != viewer.as_str() {
            continue;
        }
        let mut receipt = json!({ "ts": r.ts });
        if !r.thread_id.is_empty() {
            receipt["thread_id"] = r.thread_id.clone().into();
        }
        let content = by_room.entry(r.room_id).or_default();
        let by_event = content.entry(r.event_id).or_insert_with(|| json!({}));
        let by_type = &mut by_event[r.receipt_type.as_str()];
        if !by_type.is_object() {
            *by_type = json!({});
        }
        by_type[r.user_id.as_str()] = receipt;
    }
    by_room
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub async fn post(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    receipt_type: &str,
    event_id: &str,
    thread_id: Option<&str>,
) -> Result<()> {
    let user = &session.user_id;
    require_joined(app, user, room_id).await?;
    require_event_in_room(app, room_id, event_id).await?;
    match receipt_type {
        "m.fully_read" => {
            if thread_id.is_some() {
                return Err(Error::invalid_param("m.fully_read cannot be threaded"));
            }
            set_fully_read(app, user, room_id, event_id).await
        }
        "m.read" | "m.read.private" => {
            if let Some(t) = thread_id
                && t != "main"
                && !t.starts_with('$')
            {
                return Err(Error::invalid_param(
                    "thread_id must be \"main\" or an event ID",
                ));
            }
            store(
                app,
                user,
                room_id,
                receipt_type,
                thread_id.unwrap_or(""),
                event_id,
            )
            .await
        }
        _ => Err(Error::invalid_param(format!(
            "Unknown receipt type {receipt_type:?}"
        ))),
    }
}

/// `POST /rooms/{roomId}/read_markers`.
pub async fn read_markers(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    fully_read: Option<&str>,
    read: Option<&str>,
    read_private: Option<&str>,
) -> Result<()> {
    let user = &session.user_id;
    require_joined(app, user, room_id).await?;
    for id in [fully_read, read, read_private].into_iter().flatten() {
        require_event_in_room(app, room_id, id).await?;
    }
    if let Some(id) = fully_read {
        set_fully_read(app, user, room_id, id).await?;
    }
    if let Some(id) = read {
        store(app, user, room_id, "m.read", "", id).await?;
    }
    if let Some(id) = read_private {
        store(app, user, room_id, "m.read.private", "", id).await?;
    }
    Ok(())
}

async fn set_fully_read(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    event_id: &str,
) -> Result<()> {
    account_data::store(
        app,
        user,
        Some(room_id),
        "m.fully_read",
        &json!({ "event_id": event_id }),
    )
    .await
}

async fn store(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    receipt_type: &str,
    thread_id: &str,
    event_id: &str,
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    let (position, guard) = stream::take(&mut tx, app).await?;
    let stored = user_streams::set_receipt(
        &mut *tx,
        &user_streams::NewReceipt {
            room_id: room_id.as_str(),
            user_id: user.as_str(),
            receipt_type,
            thread_id,
            event_id,
            ts: app.clock.now_ms(),
        },
        position,
    )
    .await?;
    if !stored {
        // A receipt for an older event than the user's: ignored, and told to
        // no one.
        return Ok(());
    }
    super::appservice::ephemeral::on_receipt(
        &mut tx,
        app,
        &super::appservice::ephemeral::Receipt {
            room_id: room_id.as_str(),
            user_id: user.as_str(),
            receipt_type,
            thread_id,
            event_id,
            ts: app.clock.now_ms(),
        },
    )
    .await?;
    // The user's unread count may have changed: their phones get a badge.
    pushers::want_badge(&mut *tx, user.as_str()).await?;
    tx.commit().await?;
    drop(guard);
    if receipt_type == "m.read" {
        // Public receipts go to the other servers in the room.
        let mut data = json!({ "ts": app.clock.now_ms() });
        if !thread_id.is_empty() {
            data["thread_id"] = thread_id.into();
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": { room_id.as_str(): { "m.read": { user.as_str(): {
                "event_ids": [event_id],
                "data": data,
            }}}},
        });
        let servers = super::directory::joined_servers(app, room_id).await?;
        // A newer public receipt of the user in the room (and thread) replaces
        // one still queued.
        let key = format!("m.receipt {room_id} {user} {thread_id}");
        super::federation::enqueue_edu(app, servers, &edu, Some(&key)).await?;
    }
    Ok(())
}

/// `PUT /rooms/{roomId}/typing/{userId}`.
pub async fn typing(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    user: &UserId,
    timeout: Option<Duration>,
) -> Result<()> {
    if session.user_id != user {
        return Err(Error::forbidden("Cannot set typing for other users"));
    }
    require_joined(app, user, room_id).await?;
    app.typing.set(room_id.as_str(), user.as_str(), timeout);
    let edu = json!({
        "edu_type": "m.typing",
        "content": {
            "room_id": room_id,
            "user_id": user,
            "typing": timeout.is_some(),
        },
    });
    let servers = super::directory::joined_servers(app, room_id).await?;
    // Only the latest typing state of the user in the room counts.
    let key = format!("m.typing {room_id} {user}");
    super::federation::enqueue_edu(app, servers, &edu, Some(&key)).await?;
    Ok(())
}
