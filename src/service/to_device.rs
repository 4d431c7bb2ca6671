//! Send-to-device messaging (spec: "Send-to-Device messaging"). Messages are
//! stored per target device and deleted once that device's next sync
//! acknowledges them.

use serde_json::Value;

use super::{session::Session, stream};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{devices, user_streams},
};

/// One target: a user and a device ID, or `*` for all their devices.
pub struct Message {
    pub user_id: String,
    pub device: String,
    pub content: String,
}

/// Remote servers one request may send to, at most: each costs an outbound
/// transaction to a server the user names. (Clients send room keys in requests
/// of at most 250 messages, so this never bites them.)
pub const MAX_REMOTE_SERVERS: usize = 1000;

pub async fn send(
    app: &AppState,
    session: &Session,
    event_type: &str,
    txn_id: &str,
    messages: Vec<Message>,
) -> Result<()> {
    let sender = session.user_id.as_str();
    let servers: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.user_id.split_once(':').map(|(_, server)| server))
        .filter(|server| *server != app.server_name.as_str())
        .collect();
    if servers.len() > MAX_REMOTE_SERVERS {
        return Err(Error::invalid_param(format!(
            "To-device messages for at most {MAX_REMOTE_SERVERS} servers per request"
        )));
    }
    let mut tx = app.db.begin().await?;
    if !user_streams::claim_to_device_txn(
        &mut *tx,
        sender,
        session.device_id.as_str(),
        txn_id,
        app.clock.now_ms(),
    )
    .await?
    {
        // Seen before: the first request already delivered it.
        return Ok(());
    }
    let (position, guard) = stream::take(&mut tx, app).await?;
    let mut remote = Vec::new();
    for m in messages {
        let Ok(user) = ruma::UserId::parse(&m.user_id) else {
            return Err(Error::invalid_param(format!(
                "Invalid user ID {:?}",
                m.user_id
            )));
        };
        if user.server_name() != app.server_name {
            remote.push((m.user_id, m.device, m.content));
            continue;
        }
        let targets: Vec<String> = if m.device == "*" {
            devices::list(&mut *tx, user.as_str())
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .collect()
        } else {
            vec![m.device]
        };
        user_streams::insert_to_device(
            &mut *tx,
            user.as_str(),
            &targets,
            position,
            sender,
            event_type,
            &m.content,
        )
        .await?;
        super::appservice::ephemeral::on_to_device(
            &mut tx,
            app,
            user.as_str(),
            &targets,
            sender,
            event_type,
            &m.content,
        )
        .await?;
    }
    tx.commit().await?;
    drop(guard);
    if !remote.is_empty() {
        // Remote users' servers get them as m.direct_to_device EDUs.
        let message_id = format!("{}{}", session.device_id, txn_id);
        crate::service::federation::e2ee::send_to_device(
            app,
            sender,
            event_type,
            &message_id,
            remote,
        )
        .await?;
    }
    Ok(())
}

/// Content must be a JSON object.
pub fn check_content(content: &Value) -> Result<()> {
    if content.is_object() {
        Ok(())
    } else {
        Err(Error::bad_json(
            "To-device message content must be an object",
        ))
    }
}
