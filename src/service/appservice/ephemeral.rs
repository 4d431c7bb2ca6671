//! What appservices get besides room events: ephemeral events (MSC2409 —
//! typing, read receipts, presence) for registrations with
//! `receive_ephemeral` (or the unstable `de.sorunome.msc2409.push_ephemeral`),
//! to-device messages for their users' devices (MSC4203) and device-list
//! changes (MSC3202) for encrypted bridges.
//!
//! Synapse keeps these in memory until a transaction is formed, so a restart
//! loses them. Here receipts, presence, to-device messages and device-list
//! changes are queued in `appservice_outbox` in the transaction that writes
//! them, like events: they go out in order with the events, once, and survive
//! restarts. Typing exists only in memory (as in Synapse): one task watches
//! the typing serial and queues each change (started, stopped, expired) as it
//! happens.
//!
//! Every function here returns at once when no registration wants the kind
//! of data, so a server without such appservices pays nothing.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::appservice::Registration,
    error::Result,
    service::AppState,
    storage::{self, Postgres, Transaction, presence::Presence},
};

fn with_url(app: &AppState, pred: impl Fn(&Registration) -> bool) -> Vec<Arc<Registration>> {
    app.appservices
        .current()
        .list
        .iter()
        .filter(|r| r.url.is_some() && pred(r))
        .cloned()
        .collect()
}

/// The IDs of `regs` interested in a room: its ID or one of its aliases is
/// in a namespace, or a member (joined or invited) is in a user namespace.
async fn interested_in_room(
    tx: &mut Transaction<'_, Postgres>,
    regs: &[Arc<Registration>],
    room_id: &str,
) -> Result<Vec<String>> {
    let mut chosen = Vec::new();
    let mut undecided = Vec::new();
    for reg in regs {
        if reg.is_interested_in_room(room_id) {
            chosen.push(reg.id.clone());
        } else {
            undecided.push(reg);
        }
    }
    if !undecided.is_empty() {
        let members = storage::appservice::local_members(&mut **tx, room_id).await?;
        let aliases = storage::rooms::aliases_of(&mut **tx, room_id).await?;
        for reg in undecided {
            if members.iter().any(|m| reg.is_interested_in_user(m))
                || aliases.iter().any(|a| reg.is_interested_in_alias(a))
            {
                chosen.push(reg.id.clone());
            }
        }
    }
    Ok(chosen)
}

/// The IDs of `regs` interested in a user: the user is in a namespace, or
/// shares a joined room with one of this server's users who is.
async fn interested_in_user(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    regs: &[Arc<Registration>],
    user_id: &str,
) -> Result<Vec<String>> {
    let mut chosen = Vec::new();
    let mut undecided = Vec::new();
    for reg in regs {
        if reg.is_interested_in_user(user_id) {
            chosen.push(reg.id.clone());
        } else {
            undecided.push(reg);
        }
    }
    if !undecided.is_empty() {
        let suffix = format!(":{}", app.server_name);
        let sharing =
            storage::appservice::local_users_sharing_rooms(&mut **tx, user_id, &suffix).await?;
        for reg in undecided {
            if sharing.iter().any(|u| reg.is_interested_in_user(u)) {
                chosen.push(reg.id.clone());
            }
        }
    }
    Ok(chosen)
}

async fn queue(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    kind: &str,
    json: &Value,
) -> Result<()> {
    if !ids.is_empty() {
        storage::appservice::enqueue_other(&mut **tx, ids, kind, &json.to_string()).await?;
    }
    Ok(())
}

/// A read receipt was stored (in the caller's transaction): `m.receipt` for
/// the appservices interested in the room. Private receipts are nobody
/// else's business (Synapse filters them out too).
pub struct Receipt<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub receipt_type: &'a str,
    pub thread_id: &'a str,
    pub event_id: &'a str,
    pub ts: i64,
}

pub async fn on_receipt(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    r: &Receipt<'_>,
) -> Result<()> {
    if r.receipt_type != "m.read" {
        return Ok(());
    }
    let regs = with_url(app, Registration::wants_ephemeral);
    if regs.is_empty() {
        return Ok(());
    }
    let ids = interested_in_room(tx, &regs, r.room_id).await?;
    let mut receipt = json!({ "ts": r.ts });
    if !r.thread_id.is_empty() {
        receipt["thread_id"] = r.thread_id.into();
    }
    let event = json!({
        "type": "m.receipt",
        "room_id": r.room_id,
        "content": { r.event_id: { "m.read": { r.user_id: receipt } } },
    });
    queue(tx, &ids, "ephemeral", &event).await
}

/// A user's presence changed (in the caller's transaction): `m.presence`
/// for the appservices whose users share a room with them, or who have them
/// in a namespace.
pub async fn on_presence(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    p: &Presence,
) -> Result<()> {
    let regs = with_url(app, Registration::wants_ephemeral);
    if regs.is_empty() {
        return Ok(());
    }
    let ids = interested_in_user(tx, app, &regs, &p.user_id).await?;
    let event = crate::service::presence::event(p, app.clock.now_ms());
    queue(tx, &ids, "ephemeral", &event).await
}

/// To-device messages were stored for `user_id`'s `devices` (in the
/// caller's transaction): one entry per device for the appservices with the
/// user in a namespace (MSC4203: the message with `to_user_id` and
/// `to_device_id`). Devices the user does not have are skipped, as they are
/// for the inbox.
pub async fn on_to_device(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user_id: &str,
    devices: &[String],
    sender: &str,
    event_type: &str,
    content: &str,
) -> Result<()> {
    let ids: Vec<String> = with_url(app, Registration::wants_to_device)
        .iter()
        .filter(|r| r.is_interested_in_user(user_id))
        .map(|r| r.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let existing = storage::devices::list(&mut **tx, user_id).await?;
    let content: Value = serde_json::from_str(content).unwrap_or_else(|_| json!({}));
    for device in devices {
        if !existing.iter().any(|d| &d.device_id == device) {
            continue;
        }
        let message = json!({
            "type": event_type,
            "sender": sender,
            "content": content,
            "to_user_id": user_id,
            "to_device_id": device,
        });
        queue(tx, &ids, "to_device", &message).await?;
    }
    Ok(())
}

/// A user's devices or keys changed (in the caller's transaction): MSC3202
/// appservices that have them in a namespace or share a room with them
/// through a namespace user get them in `device_lists.changed`.
pub async fn on_device_list_change(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user_id: &str,
) -> Result<()> {
    let regs = with_url(app, |r| r.msc3202);
    if regs.is_empty() {
        return Ok(());
    }
    let ids = interested_in_user(tx, app, &regs, user_id).await?;
    queue(tx, &ids, "device_list", &json!({ "changed": user_id })).await
}

/// A user left a room (in the caller's transaction): MSC3202 appservices
/// that no longer share any room with them through a namespace user (and do
/// not have them in a namespace) get them in `device_lists.left`, as a
/// client's sync does.
pub async fn on_leave(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room_id: &str,
    user_id: &str,
) -> Result<()> {
    let regs = with_url(app, |r| r.msc3202);
    if regs.is_empty() {
        return Ok(());
    }
    // Appservices that were interested through this room...
    let was = interested_in_room(tx, &regs, room_id).await?;
    if was.is_empty() {
        return Ok(());
    }
    // ...and are not through any other.
    let still = interested_in_user(tx, app, &regs, user_id).await?;
    let gone: Vec<String> = was.into_iter().filter(|id| !still.contains(id)).collect();
    queue(tx, &gone, "device_list", &json!({ "left": user_id })).await
}

/// Queues typing changes for the appservices that want ephemeral events:
/// each change of a room's typing set (a user started or stopped, or timed
/// out) becomes an `m.typing` event with the users typing now, for the
/// appservices interested in the room.
pub async fn forward_typing(app: AppState, shutdown: CancellationToken) {
    let regs = with_url(&app, Registration::wants_ephemeral);
    if regs.is_empty() {
        return;
    }
    let mut wake = app.typing.subscribe();
    let mut since = app.typing.current();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = wake.changed() => if changed.is_err() { return },
        }
        let (serial, rooms) = app.typing.all_changed_since(since);
        since = serial;
        for (room_id, users) in rooms {
            if let Err(e) = queue_typing(&app, &regs, &room_id, &users).await {
                tracing::warn!(room_id, "queueing typing for appservices failed: {e}");
            }
        }
    }
}

async fn queue_typing(
    app: &AppState,
    regs: &[Arc<Registration>],
    room_id: &str,
    users: &[String],
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    let ids = interested_in_room(&mut tx, regs, room_id).await?;
    if ids.is_empty() {
        return Ok(());
    }
    let event = json!({
        "type": "m.typing",
        "room_id": room_id,
        "content": { "user_ids": users },
    });
    queue(&mut tx, &ids, "ephemeral", &event).await?;
    tx.commit().await?;
    app.appservice_wake.send_modify(|n| *n += 1);
    Ok(())
}
