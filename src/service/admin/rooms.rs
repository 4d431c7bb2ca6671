//! Rooms: listing and details (with the public-room summary), members,
//! current state, and blocking.

use ruma::RoomId;
use serde::Serialize;
use serde_json::Value;

use super::next_offset;
use crate::{
    error::{Error, Result},
    service::AppState,
    service::{directory, session::Session},
    storage::{rooms, state},
};

/// A room as Synapse's admin API describes it (`GET /_synapse/admin/v1/rooms`
/// and `…/rooms/{roomId}`).
#[derive(Debug, Serialize)]
pub struct RoomDetails {
    pub room_id: String,
    /// Left out for a room without state (one only known by its ID).
    #[serde(flatten)]
    pub summary: Option<RoomSummary>,
    pub version: String,
    pub joined_members: i64,
    pub joined_local_members: i64,
    pub public: bool,
    pub state_events: i64,
    /// Synapse's name for the join rule; the same as `join_rule`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_rules: Option<String>,
}

/// The public-room summary of a room's current state (the `/publicRooms`
/// chunk, `service::directory::room_entry`), less its `room_id`.
#[derive(Debug, Serialize)]
pub struct RoomSummary {
    pub num_joined_members: i64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub join_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
}

impl From<directory::RoomEntry> for RoomSummary {
    /// The fields of a directory entry (which has a string field only when the
    /// room's state has one).
    fn from(entry: directory::RoomEntry) -> Self {
        Self {
            num_joined_members: i64::try_from(entry.num_joined_members).unwrap_or(i64::MAX),
            world_readable: entry.world_readable,
            guest_can_join: entry.guest_can_join,
            join_rule: entry.join_rule.unwrap_or_else(|| "invite".to_owned()),
            name: entry.name,
            topic: entry.topic,
            canonical_alias: entry.canonical_alias,
            avatar_url: entry.avatar_url,
            room_type: entry.room_type,
        }
    }
}

/// A page of rooms.
#[derive(Debug, Serialize)]
pub struct RoomList {
    pub rooms: Vec<RoomDetails>,
    pub offset: i64,
    pub total_rooms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<i64>,
}

/// A room's joined members.
#[derive(Debug, Serialize)]
pub struct RoomMembers {
    pub total: usize,
    pub members: Vec<String>,
}

/// A room's current state.
#[derive(Debug, Serialize)]
pub struct RoomState {
    /// The events as stored (federation form), each with its `event_id`: event
    /// JSON of any room version, so left untyped.
    pub state: Vec<Value>,
}

/// Whether a room is blocked, and by whom.
#[derive(Debug, Serialize)]
pub struct BlockStatus {
    pub block: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// `GET /_synapse/admin/v1/rooms`: `from` is an offset.
pub async fn list_rooms(app: &AppState, from: i64, limit: i64) -> Result<RoomList> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        rooms::admin_list(&app.db, app.server_name.as_str(), from.max(0), limit).await?;
    let mut out = Vec::new();
    for (room_id, version, group, joined, local) in rows {
        out.push(details(app, room_id, version, group, joined, local).await?);
    }
    Ok(RoomList {
        rooms: out,
        offset: from,
        total_rooms: total,
        next_batch: next_offset(from, limit, total),
    })
}

async fn details(
    app: &AppState,
    room_id: String,
    version: String,
    group: Option<i64>,
    joined: i64,
    local: i64,
) -> Result<RoomDetails> {
    let summary = match group {
        Some(g) => Some(RoomSummary::from(
            directory::room_entry(app, &room_id, g, joined).await?,
        )),
        None => None,
    };
    let public = rooms::is_published(&app.db, &room_id)
        .await?
        .unwrap_or(false);
    let state_events = match group {
        Some(g) => state::full_state(&app.db, g).await?.len() as i64,
        None => 0,
    };
    Ok(RoomDetails {
        join_rules: summary.as_ref().map(|s| s.join_rule.clone()),
        room_id,
        summary,
        version,
        joined_members: joined,
        joined_local_members: local,
        public,
        state_events,
    })
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`.
pub async fn room(app: &AppState, room_id: &str) -> Result<RoomDetails> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let room = rooms::get(&app.db, room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let members = rooms::members(&app.db, room_id.as_str(), "join").await?;
    let suffix = format!(":{}", app.server_name);
    let local = members.iter().filter(|(u, _)| u.ends_with(&suffix)).count() as i64;
    details(
        app,
        room_id.to_string(),
        room.room_version,
        room.current_state_group,
        members.len() as i64,
        local,
    )
    .await
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`.
pub async fn block_status(app: &AppState, room_id: &str) -> Result<BlockStatus> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let by = rooms::blocked_by(&app.db, room_id.as_str()).await?;
    Ok(BlockStatus {
        block: by.is_some(),
        user_id: by,
    })
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block` with `{"block": bool}`.
pub async fn set_block(
    app: &AppState,
    by: &Session,
    room_id: &str,
    body: &Value,
) -> Result<BlockStatus> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let block = body["block"]
        .as_bool()
        .ok_or_else(|| Error::bad_json("block must be a boolean"))?;
    if block {
        rooms::block(
            &app.db,
            room_id.as_str(),
            by.user_id.as_str(),
            app.clock.now_ms(),
        )
        .await?;
    } else {
        rooms::unblock(&app.db, room_id.as_str()).await?;
    }
    tracing::info!(admin = %by.user_id, room = %room_id, block, "admin API: room block set");
    Ok(BlockStatus {
        block,
        user_id: None,
    })
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`.
pub async fn room_members(app: &AppState, room_id: &str) -> Result<RoomMembers> {
    if rooms::get(&app.db, room_id).await?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    let members: Vec<String> = rooms::members(&app.db, room_id, "join")
        .await?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    Ok(RoomMembers {
        total: members.len(),
        members,
    })
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state events.
pub async fn room_state(app: &AppState, room_id: &str) -> Result<RoomState> {
    let room = rooms::get(&app.db, room_id)
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let ids: Vec<String> = match room.current_state_group {
        Some(g) => state::full_state(&app.db, g)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect(),
        None => Vec::new(),
    };
    let state = crate::storage::events::get_many(&app.db, &ids)
        .await?
        .iter()
        .filter_map(|e| {
            let mut pdu: Value = serde_json::from_str(&e.json).ok()?;
            pdu["event_id"] = e.event_id.clone().into();
            Some(pdu)
        })
        .collect();
    Ok(RoomState { state })
}
