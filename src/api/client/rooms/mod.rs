//! Rooms: creating them, membership, sending and reading events, state, members
//! and aliases (spec: "Rooms", "Room membership", "Events"), one module per
//! concern: [`create`] (`POST /createRoom`), [`membership`] (join, knock,
//! leave, forget, invite, kick, ban, unban), [`events`] (send, redact, one
//! event, `/messages`), [`state`], [`members`] (`/members`,
//! `/joined_members`, `/joined_rooms`) and [`aliases`].

mod aliases;
mod create;
mod events;
mod members;
mod membership;
mod state;

use axum::Router;
use ruma::OwnedRoomId;
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    service::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(create::router())
        .merge(membership::router())
        .merge(events::router())
        .merge(state::router())
        .merge(members::router())
        .merge(aliases::router())
}

pub(super) fn raw_object(json: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object"))),
    }
}

pub(super) fn parse_room_id(room_id: String) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))
}
