//! Server notices (Synapse's admin API `send_server_notice`): messages from a
//! system user (`server_notices.localpart`) in a room of its own with each
//! recipient. The room is tagged `m.server_notice` for the recipient, who is
//! invited and cannot write in it (power level -10 against 0 for messages). A
//! recipient who left gets a new room with the next notice.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{
    account_data, event,
    room::{self, CreateRoom, Preset},
    session::Session,
};
use crate::{
    domain::pdu::NewEvent,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{profiles, rooms, users},
};

/// The tag clients show server notice rooms under.
pub const TAG: &str = "m.server_notice";

/// `POST /_synapse/admin/v1/send_server_notice` (and `PUT …/{txnId}`, which is
/// idempotent per admin and transaction ID): `user_id`, `content`, optional
/// `type` (default `m.room.message`) and `state_key`. Answers the event ID.
pub async fn send(app: &AppState, by: &Session, body: &Value, txn: Option<&str>) -> Result<Value> {
    let localpart = app.config.server_notices.localpart.as_str();
    if localpart.is_empty() {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "Server notices are not enabled on this server",
        ));
    }
    let user = body["user_id"]
        .as_str()
        .and_then(|u| UserId::parse(u).ok())
        .ok_or_else(|| Error::invalid_param("user_id must be a user ID"))?;
    if user.server_name() != app.server_name {
        return Err(Error::invalid_param(
            "Server notices can only be sent to local users",
        ));
    }
    match users::get(&app.db, user.as_str()).await? {
        Some(u) if !u.deactivated => {}
        _ => return Err(Error::not_found("User not found")),
    }
    let Value::Object(content) = &body["content"] else {
        return Err(Error::bad_json("content must be an object"));
    };
    let kind = match &body["type"] {
        Value::Null => "m.room.message",
        Value::String(t) if !t.is_empty() => t.as_str(),
        _ => return Err(Error::bad_json("type must be a string")),
    };
    let state_key = match &body["state_key"] {
        Value::Null => None,
        Value::String(k) => Some(k.clone()),
        _ => return Err(Error::bad_json("state_key must be a string")),
    };
    let system = system_user(app, localpart).await?;
    let room_id = room_for(app, &system, &user).await?;
    let event = NewEvent {
        origin_server_ts: None,
        kind: kind.into(),
        content: Value::Object(content.clone()),
        state_key,
        redacts: None,
    };
    let txn = txn.map(|t| (by.user_id.as_str(), t));
    let event_id = event::send(app, &room_id, &system, event, txn).await?;
    tracing::info!(admin = %by.user_id, user = %user, room = %room_id, %event_id, "admin API: server notice sent");
    Ok(json!({ "event_id": event_id }))
}

/// The system user, created (without a password: nobody can log in as it)
/// the first time a notice is sent.
async fn system_user(app: &AppState, localpart: &str) -> Result<OwnedUserId> {
    let user = UserId::parse(format!("@{localpart}:{}", app.server_name))
        .map_err(|e| Error::new(ErrorKind::Unknown, format!("server_notices.localpart: {e}")))?;
    if users::insert(
        &app.db,
        user.as_str(),
        None,
        false,
        false,
        app.clock.now_ms(),
    )
    .await?
    {
        let name = app.config.server_notices.display_name.as_str();
        profiles::set_displayname(&app.db, user.as_str(), Some(name)).await?;
        tracing::info!(%user, "server notices: system user created");
    }
    Ok(user)
}

/// The user's notices room: the one recorded while they are still in it (or
/// invited), otherwise a new one.
async fn room_for(app: &AppState, system: &UserId, user: &UserId) -> Result<OwnedRoomId> {
    if let Some(room) = rooms::server_notice_room(&app.db, user.as_str()).await?
        && let Ok(room_id) = RoomId::parse(room.as_str())
    {
        let membership = rooms::membership(&app.db, room.as_str(), user.as_str()).await?;
        if matches!(membership.as_deref(), Some("join" | "invite")) {
            return Ok(room_id);
        }
    }
    let mut power = Map::new();
    power.insert("users_default".into(), json!(-10));
    let room_id = room::create(
        app,
        system,
        CreateRoom {
            room_version: None,
            preset: Some(Preset::PrivateChat),
            public: false,
            creation_content: None,
            power_level_content_override: Some(power),
            initial_state: Vec::new(),
            name: Some(app.config.server_notices.room_name.clone()),
            topic: None,
            room_alias_name: None,
            invite: vec![user.to_owned()],
            is_direct: false,
        },
    )
    .await?;
    let mut tags = Map::new();
    tags.insert(TAG.into(), json!({}));
    account_data::store(app, user, Some(&room_id), "m.tag", &json!({ "tags": tags })).await?;
    rooms::set_server_notice_room(&app.db, user.as_str(), room_id.as_str()).await?;
    tracing::info!(%user, room = %room_id, "server notices: room created");
    Ok(room_id)
}
