//! EDUs received in transactions: typing notifications from a server's own,
//! joined users; to-device messages; device-list and signing-key updates. Other
//! EDU types (receipts, presence) are not handled yet and are dropped (the
//! transaction still succeeds, as the spec requires).

use std::time::Duration;

use ruma::{ServerName, UserId};
use serde_json::Value;

use crate::{app::AppState, storage::rooms};

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
            if user.server_name() != origin {
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
