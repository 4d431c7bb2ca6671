//! EDUs received in transactions: typing notifications from a server's own,
//! joined users; read receipts; to-device messages; device-list and signing-key
//! updates; presence. Other EDU types are dropped (the transaction still
//! succeeds, as the spec requires).

use std::time::Duration;

use ruma::{ServerName, UserId};
use serde_json::Value;

use crate::{
    error::Result,
    service::AppState,
    service::stream,
    storage::{now_ms, rooms, user_streams},
};

/// Remote typing notifications last at most this long without a refresh.
const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn receive(app: &AppState, origin: &ServerName, edu: &Value) {
    let content = &edu["content"];
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let (Some(room), Some(user)) = (
                content["room_id"].as_str(),
                content["user_id"]
                    .as_str()
                    .and_then(|u| UserId::parse(u).ok()),
            ) else {
                return;
            };
            if user.server_name() != origin
                || !super::acl::allowed(app, room, origin.as_str())
                    .await
                    .unwrap_or(false)
            {
                return;
            }
            let joined = rooms::membership(&app.db, room, user.as_str())
                .await
                .ok()
                .flatten();
            if joined.as_deref() != Some("join") {
                return;
            }
            let typing = content["typing"].as_bool().unwrap_or(false);
            app.typing
                .set(room, user.as_str(), typing.then_some(REMOTE_TYPING_TIMEOUT));
        }
        Some("m.receipt") => {
            if let Err(e) = receive_receipts(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "storing receipts failed");
            }
        }
        Some("m.direct_to_device") => {
            if let Err(e) = super::e2ee::receive_to_device(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "storing to-device messages failed");
            }
        }
        Some("m.device_list_update") => {
            if let Err(e) = super::e2ee::receive_device_list_update(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "recording a device list update failed");
            }
        }
        Some("m.signing_key_update") => {
            if let Err(e) = super::e2ee::receive_signing_key_update(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "recording a signing key update failed");
            }
        }
        Some("m.presence") => {
            if let Err(e) = crate::service::presence::receive_edu(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "storing presence failed");
            }
        }
        Some(other) => tracing::debug!(%origin, edu_type = other, "EDU type not handled"),
        None => {}
    }
}

/// The most receipt entries (room × user) one `m.receipt` EDU may make this
/// server look at. Each costs an ACL check, a membership lookup and a write;
/// a server sends one EDU per room with its users' latest receipts, so this is
/// far above what a legitimate EDU holds, and the rest of a larger one is
/// dropped (receipts are best-effort).
pub const MAX_RECEIPTS_PER_EDU: usize = 1000;

/// One read receipt of an `m.receipt` EDU.
#[derive(Debug, PartialEq, Eq)]
pub struct ReceiptEntry<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub event_id: &'a str,
    pub thread_id: &'a str,
    pub ts: Option<i64>,
}

/// The `m.read` receipts of an EDU's content that `origin` may send (its own
/// users'), at most [`MAX_RECEIPTS_PER_EDU`] entries looked at in all. Pure.
pub fn receipt_entries<'a>(origin: &ServerName, content: &'a Value) -> Vec<ReceiptEntry<'a>> {
    let mut out = Vec::new();
    let mut examined = 0;
    for (room, by_type) in content.as_object().into_iter().flatten() {
        let Some(receipts) = by_type["m.read"].as_object() else {
            continue;
        };
        for (user, receipt) in receipts {
            examined += 1;
            if examined > MAX_RECEIPTS_PER_EDU {
                return out;
            }
            let Ok(user_id) = UserId::parse(user.as_str()) else {
                continue;
            };
            if user_id.server_name() != origin {
                continue;
            }
            let Some(event_id) = receipt["event_ids"]
                .as_array()
                .and_then(|ids| ids.last())
                .and_then(Value::as_str)
            else {
                continue;
            };
            out.push(ReceiptEntry {
                room_id: room,
                user_id: user,
                event_id,
                thread_id: receipt["data"]["thread_id"].as_str().unwrap_or(""),
                ts: receipt["data"]["ts"].as_i64(),
            });
        }
    }
    out
}

/// `m.receipt`: public read receipts of `origin`'s users in rooms they are in.
async fn receive_receipts(app: &AppState, origin: &ServerName, content: &Value) -> Result<()> {
    let mut acl: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    for entry in receipt_entries(origin, content) {
        let allowed = match acl.get(entry.room_id) {
            Some(allowed) => *allowed,
            None => {
                let allowed = super::acl::allowed(app, entry.room_id, origin.as_str()).await?;
                acl.insert(entry.room_id, allowed);
                allowed
            }
        };
        if !allowed
            || rooms::membership(&app.db, entry.room_id, entry.user_id)
                .await?
                .as_deref()
                != Some("join")
        {
            continue;
        }
        let mut tx = app.db.begin().await?;
        let (position, guard) = stream::take(&mut tx, app).await?;
        let stored = user_streams::set_receipt(
            &mut *tx,
            &user_streams::NewReceipt {
                room_id: entry.room_id,
                user_id: entry.user_id,
                receipt_type: "m.read",
                thread_id: entry.thread_id,
                event_id: entry.event_id,
                ts: entry.ts.unwrap_or_else(now_ms),
            },
            position,
        )
        .await?;
        if !stored {
            // Older than the user's receipt here: ignored.
            continue;
        }
        crate::service::appservice::ephemeral::on_receipt(
            &mut tx,
            app,
            &crate::service::appservice::ephemeral::Receipt {
                room_id: entry.room_id,
                user_id: entry.user_id,
                receipt_type: "m.read",
                thread_id: entry.thread_id,
                event_id: entry.event_id,
                ts: entry.ts.unwrap_or_else(now_ms),
            },
        )
        .await?;
        tx.commit().await?;
        drop(guard);
    }
    Ok(())
}
