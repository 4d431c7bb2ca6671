//! EDUs received in transactions: typing notifications from a server's own,
//! joined users; read receipts; to-device messages; device-list and signing-key
//! updates. Other EDU types (presence) are not handled yet and are dropped (the
//! transaction still succeeds, as the spec requires).

use std::time::Duration;

use ruma::{ServerName, UserId};
use serde_json::Value;

use crate::{
    app::AppState,
    error::Result,
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
        Some("m.device_list_update" | "m.signing_key_update") => {
            if let Err(e) = super::e2ee::receive_device_list_update(app, origin, content).await {
                tracing::warn!(%origin, error = %e, "recording a device list update failed");
            }
        }
        Some(other) => tracing::debug!(%origin, edu_type = other, "EDU type not handled"),
        None => {}
    }
}

/// `m.receipt`: public read receipts of `origin`'s users in rooms they are in.
async fn receive_receipts(app: &AppState, origin: &ServerName, content: &Value) -> Result<()> {
    for (room, by_type) in content.as_object().into_iter().flatten() {
        let Some(receipts) = by_type["m.read"].as_object() else {
            continue;
        };
        for (user, receipt) in receipts {
            let Ok(user_id) = UserId::parse(user.as_str()) else {
                continue;
            };
            if user_id.server_name() != origin
                || !super::acl::allowed(app, room, origin.as_str()).await?
                || rooms::membership(&app.db, room, user).await?.as_deref() != Some("join")
            {
                continue;
            }
            let Some(event_id) = receipt["event_ids"]
                .as_array()
                .and_then(|ids| ids.last())
                .and_then(Value::as_str)
            else {
                continue;
            };
            let thread_id = receipt["data"]["thread_id"].as_str().unwrap_or("");
            let ts = receipt["data"]["ts"].as_i64().unwrap_or_else(now_ms);
            let mut tx = app.db.begin().await?;
            let (position, guard) = stream::take(&mut tx, app).await?;
            user_streams::set_receipt(
                &mut *tx,
                &user_streams::NewReceipt {
                    room_id: room,
                    user_id: user,
                    receipt_type: "m.read",
                    thread_id,
                    event_id,
                    ts,
                },
                position,
            )
            .await?;
            tx.commit().await?;
            drop(guard);
        }
    }
    Ok(())
}
