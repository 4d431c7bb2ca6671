//! The pre-`/sync` reading API, which the spec keeps (deprecated) and Synapse
//! still serves: `GET /events` (spec: "Syncing"; with `room_id`, "Room
//! Previews"), `GET /initialSync` ("Syncing"), `GET /rooms/{roomId}/initialSync`
//! ("Getting events for a room", "Room Previews") and `GET /events/{eventId}`
//! ("Getting events for a room"). Each is served under `r0` and `v3`.
//!
//! ruma types only the peeking form of `/events` (where `room_id` is required)
//! and the room `initialSync` without its `limit`, so these routes take their
//! query with [`Query`] and are registered on the spec's paths here. They
//! answer with JSON too, for the reasons given on each handler.

use std::time::Duration;

use axum::{Json, Router, extract::Path, extract::State, routing::get};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        json::Query,
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{
        event_stream::{self, Params},
        initial_sync, read,
        sync::SyncToken,
    },
};

/// `GET /events` waits this long when the client gives no `timeout` (as Synapse).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events (or messages per room) when the client gives no `limit` (as Synapse).
const DEFAULT_LIMIT: u64 = 10;

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for version in ["r0", "v3"] {
        let base = format!("/_matrix/client/{version}");
        router = router
            .route(&format!("{base}/events"), get(stream))
            .route(&format!("{base}/events/{{event_id}}"), get(one_event))
            .route(&format!("{base}/initialSync"), get(initial_sync_all))
            .route(
                &format!("{base}/rooms/{{room_id}}/initialSync"),
                get(initial_sync_room),
            );
    }
    router
}

#[derive(Deserialize)]
struct StreamQuery {
    from: Option<String>,
    /// Milliseconds.
    timeout: Option<u64>,
    limit: Option<u64>,
    room_id: Option<String>,
}

/// JSON, not ruma's peeking response: that one leaves out an empty `chunk`,
/// which Synapse always sends and pollers read.
async fn stream(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Query(q): Query<StreamQuery>,
) -> Result<Json<Value>> {
    let from = match q.from.as_deref() {
        // "END" is the old spelling of "from now on"; an empty `from=` means
        // none (as Synapse reads it; SyTest's first /events call sends it).
        None | Some("END" | "") => None,
        Some(token) => {
            Some(SyncToken::parse(token).map_err(|_| Error::invalid_param("Invalid from token"))?)
        }
    };
    let room_id = q
        .room_id
        .map(|r| OwnedRoomId::try_from(r).map_err(|_| Error::invalid_param("Invalid room_id")))
        .transpose()?;
    let params = Params {
        from,
        timeout: q.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
        limit: q
            .limit
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, initial_sync::MAX_LIMIT as u64) as usize,
        room_id,
    };
    Ok(Json(event_stream::events(&app, &user, &params).await?))
}

#[derive(Deserialize)]
struct SnapshotQuery {
    limit: Option<u64>,
    #[serde(default)]
    archived: bool,
}

fn snapshot_limit(q: &SnapshotQuery) -> usize {
    q.limit
        .unwrap_or(DEFAULT_LIMIT)
        .min(initial_sync::MAX_LIMIT as u64) as usize
}

/// JSON: ruma has no type for the global `initialSync`.
async fn initial_sync_all(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<Value>> {
    Ok(Json(
        initial_sync::all_rooms(&app, &user, snapshot_limit(&q), q.archived).await?,
    ))
}

/// JSON, not ruma's `get_current_state` response: that one has no
/// `presence` (the spec's, which Synapse sends) and leaves out empty `state`
/// and `account_data`.
async fn initial_sync_room(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Path(room_id): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<Value>> {
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    Ok(Json(
        initial_sync::room(&app, &user, &room_id, snapshot_limit(&q)).await?,
    ))
}

/// `GET /events/{eventId}`: `GET /rooms/{roomId}/event/{eventId}` without the
/// room, which is looked up; the same visibility rules. JSON: ruma has no
/// type for it.
async fn one_event(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(event_id): Path<String>,
) -> Result<Json<Value>> {
    let event_id =
        OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    let not_found = || Error::not_found("Event not found");
    let room_id = read::room_of_event(&app, event_id.as_str())
        .await?
        .ok_or_else(not_found)?;
    // As Synapse: an event the user may not see is 403 here (the room path's
    // `/event` answers 404).
    let event = match read::event(&app, &user, &room_id, event_id.as_str()).await {
        Err(Error::Matrix {
            kind: ErrorKind::NotFound,
            ..
        }) => return Err(Error::forbidden("You may not see this event")),
        other => other?,
    };
    Ok(Json(read::legacy_format(event)))
}
