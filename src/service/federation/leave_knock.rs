//! Leaving and knocking on rooms this server is not in: rejecting a remote
//! invite (through the inviting server, or out of band when it cannot be
//! reached), withdrawing a knock, and knocking through a resident server.

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName,
    UserId,
};
use serde_json::{Value, json};

use super::handshake::{JoinError, handshake, record_remote_membership, sign_template};
use super::ingest::Checked;
use crate::{
    domain::pdu::{self, Pdu},
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::event,
    storage::{events, federation as fed_store},
};

fn checked_of(object: CanonicalJsonObject, event_id: OwnedEventId) -> Result<Checked> {
    let text = serde_json::to_string(&object).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pdu = Pdu::from_json(&event_id, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Checked {
        event_id,
        object,
        pdu,
    })
}

/// Rejects an invite to (or withdraws a knock on) a room this server is not
/// in, through the inviting (or knocked-through) server: `make_leave`, sign,
/// `send_leave`; the user's membership becomes `leave` (the leave event kept as
/// an outlier).
pub async fn leave_remote(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    server: &ServerName,
    reason: Option<String>,
) -> Result<()> {
    let mut extra = serde_json::Map::new();
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    let done = handshake(app, server, room_id, user, "leave", extra, false)
        .await
        .map_err(|e| {
            let e = match e {
                JoinError::Refused(e) => e.to_string(),
                JoinError::Failed(e) => e,
            };
            Error::new(
                ErrorKind::Unknown,
                format!("Leaving through {server} failed: {e}"),
            )
        })?;
    let checked = checked_of(done.object, done.event_id)?;
    record_remote_membership(app, &checked, "leave", None).await
}

/// Rejects an invite to (or withdraws a knock on) a room this server is not
/// in when the room's server cannot do it (unreachable, or refusing): a leave
/// of our own after the invite or knock, kept as an outlier, so the user is out
/// of it here; the room's servers never hear of it (Synapse's "out-of-band"
/// leave).
pub async fn leave_out_of_band(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    remote: &fed_store::RemoteMembership,
    reason: Option<String>,
) -> Result<()> {
    let rules = RoomVersionId::try_from(remote.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| anyhow::anyhow!("stored room version {}", remote.room_version))?;
    let before_id = EventId::parse(&remote.event_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = events::get(&app.db, before_id.as_str())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the {} event is gone", remote.membership))?;
    // Event format v1 references events with their reference hashes.
    let reference = if pdu::is_v1_format(&rules) {
        let mut tx = app.db.begin().await?;
        let hashes =
            event::reference_hashes(&mut tx, &rules, std::slice::from_ref(&before_id)).await?;
        drop(tx);
        json!([[before_id, { "sha256": hashes.get(&before_id) }]])
    } else {
        json!([before_id])
    };
    let mut content = json!({ "membership": "leave" });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    let template = json!({
        "type": "m.room.member",
        "state_key": user,
        "sender": user,
        "room_id": room_id,
        "content": content,
        "prev_events": reference,
        "auth_events": reference,
        "depth": before.depth + 1,
    });
    let (object, event_id) =
        sign_template(app, template, &rules).map_err(|e| anyhow::anyhow!(e))?;
    let checked = checked_of(object, event_id)?;
    record_remote_membership(app, &checked, "leave", None).await
}

/// Knocks on a room this server is not in, through the first of `servers`
/// that accepts: `make_knock`, sign, `send_knock`; the knock is kept as an
/// outlier with the stripped state the server sent, and the user's membership
/// becomes `knock`.
pub async fn knock_remote(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    reason: Option<String>,
) -> Result<()> {
    let mut extra = serde_json::Map::new();
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    let mut last_error = String::from("no servers to knock through");
    for server in servers {
        let done = match handshake(app, server, room_id, user, "knock", extra.clone(), false).await
        {
            Ok(done) => done,
            Err(JoinError::Refused(e)) => return Err(e),
            Err(JoinError::Failed(e)) => {
                last_error = format!("{server}: {e}");
                continue;
            }
        };
        let mut state: Vec<Value> = done.reply.knock_room_state;
        state.retain(Value::is_object);
        let remote = fed_store::RemoteMembership {
            membership: "knock".into(),
            event_id: done.event_id.to_string(),
            room_version: done.version.to_string(),
            via_server: server.to_string(),
            stripped_state: Value::Array(state),
        };
        let checked = checked_of(done.object, done.event_id)?;
        return record_remote_membership(app, &checked, "knock", Some(remote)).await;
    }
    Err(Error::not_found(format!(
        "No server could be knocked through ({last_error})"
    )))
}
