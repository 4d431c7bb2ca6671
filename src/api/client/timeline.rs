//! Around events: `GET /rooms/{roomId}/context/{eventId}`,
//! `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`,
//! `GET /rooms/{roomId}/threads`, `GET /rooms/{roomId}/timestamp_to_event`,
//! `POST /rooms/{roomId}/report/{eventId}`, `POST /rooms/{roomId}/report`,
//! `POST /users/{userId}/report`, `POST /rooms/{roomId}/upgrade`,
//! `GET /rooms/{roomId}/hierarchy` (spec: "Relationships", "Threading",
//! "Reporting content", "Events", "Room Upgrades", "Spaces").

use axum::{Json, Router, extract::State};
use ruma::api::{
    Direction,
    client::{
        context::get_context,
        relations::{
            get_relating_events, get_relating_events_with_rel_type,
            get_relating_events_with_rel_type_and_event_type,
        },
        reporting::report_user,
        room::{get_event_by_timestamp, report_content, report_room, upgrade_room},
        space::get_hierarchy,
        threads::get_threads,
    },
};
use serde_json::Value;

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        ruma::{RouterExt, Ruma, RumaOrObject, RumaResponse},
    },
    domain::filter::EventFilter,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{reports, space, timeline, upgrade as upgrades},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_context::v3::Request, _, _>(context)
        .ruma::<get_relating_events::v1::Request, _, _>(relations)
        .ruma::<get_relating_events_with_rel_type::v1::Request, _, _>(relations_of_type)
        .ruma::<get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
            relations_of_type_and_event,
        )
        .ruma::<get_threads::v1::Request, _, _>(threads)
        .ruma::<get_event_by_timestamp::v1::Request, _, _>(timestamp_to_event)
        .ruma::<report_content::v3::Request, _, _>(report)
        .ruma::<report_room::v3::Request, _, _>(report_room)
        .ruma::<report_user::v3::Request, _, _>(report_user)
        .ruma::<upgrade_room::v3::Request, _, _>(upgrade)
        .ruma::<get_hierarchy::v1::Request, _, _>(hierarchy)
}

async fn context(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_context::v3::Request>,
) -> Result<Json<timeline::Context>> {
    let filter = EventFilter::from_room_event_filter(&req.filter);
    let body = timeline::context(
        &app,
        &user,
        &req.room_id,
        req.event_id.as_str(),
        u64::from(req.limit) as usize,
        &filter,
    )
    .await?;
    Ok(Json(body))
}

fn limit(limit: Option<ruma::UInt>) -> usize {
    limit.map_or(50, |l| u64::from(l) as usize)
}

async fn relations(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_relating_events::v1::Request>,
) -> Result<RumaResponse<get_relating_events::v1::Response>> {
    let body = timeline::relations(
        &app,
        &user,
        &req.room_id,
        req.event_id.as_str(),
        None,
        None,
        req.from.as_deref(),
        req.to.as_deref(),
        req.dir == Direction::Backward,
        req.recurse,
        limit(req.limit),
    )
    .await?;
    Ok(RumaResponse(body))
}

async fn relations_of_type(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<RumaResponse<get_relating_events_with_rel_type::v1::Response>> {
    let rel_type = req.rel_type.to_string();
    let body = timeline::relations(
        &app,
        &user,
        &req.room_id,
        req.event_id.as_str(),
        Some(&rel_type),
        None,
        req.from.as_deref(),
        req.to.as_deref(),
        req.dir == Direction::Backward,
        req.recurse,
        limit(req.limit),
    )
    .await?;
    let mut out = get_relating_events_with_rel_type::v1::Response::new(body.chunk);
    out.next_batch = body.next_batch;
    out.prev_batch = body.prev_batch;
    out.recursion_depth = body.recursion_depth;
    Ok(RumaResponse(out))
}

async fn relations_of_type_and_event(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<RumaResponse<get_relating_events_with_rel_type_and_event_type::v1::Response>> {
    let rel_type = req.rel_type.to_string();
    let event_type = req.event_type.to_string();
    let body = timeline::relations(
        &app,
        &user,
        &req.room_id,
        req.event_id.as_str(),
        Some(&rel_type),
        Some(&event_type),
        req.from.as_deref(),
        req.to.as_deref(),
        req.dir == Direction::Backward,
        req.recurse,
        limit(req.limit),
    )
    .await?;
    let mut out = get_relating_events_with_rel_type_and_event_type::v1::Response::new(body.chunk);
    out.next_batch = body.next_batch;
    out.prev_batch = body.prev_batch;
    out.recursion_depth = body.recursion_depth;
    Ok(RumaResponse(out))
}

async fn threads(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_threads::v1::Request>,
) -> Result<RumaResponse<get_threads::v1::Response>> {
    let participated = req.include == get_threads::v1::IncludeThreads::Participated;
    let body = timeline::threads(
        &app,
        &user,
        &req.room_id,
        req.from.as_deref(),
        participated,
        limit(req.limit),
    )
    .await?;
    Ok(RumaResponse(body))
}

async fn timestamp_to_event(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let ts = u64::from(req.ts.0) as i64;
    let body = timeline::timestamp_to_event(
        &app,
        &user.user_id,
        &req.room_id,
        ts,
        req.dir == Direction::Backward,
    )
    .await?;
    Ok(RumaResponse(body))
}

async fn report(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<report_content::v3::Request>,
) -> Result<RumaResponse<report_content::v3::Response>> {
    timeline::report(
        &app,
        &user.user_id,
        &req.room_id,
        req.event_id.as_str(),
        req.reason.as_deref(),
    )
    .await?;
    Ok(RumaResponse(report_content::v3::Response::new()))
}

/// Reporting a room needs no membership of it. A missing `reason` reads as
/// empty (it was optional in v1.13).
async fn report_room(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<report_room::v3::Request>,
) -> Result<RumaResponse<report_room::v3::Response>> {
    reports::report_room(&app, &user.user_id, &req.room_id, &req.reason).await?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}

async fn report_user(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<report_user::v3::Request>,
) -> Result<RumaResponse<report_user::v3::Response>> {
    reports::report_user(&app, &user.user_id, &req.user_id, &req.reason).await?;
    Ok(RumaResponse(report_user::v3::Response::new()))
}

async fn upgrade(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    RumaOrObject(req, body): RumaOrObject<upgrade_room::v3::Request>,
) -> Result<RumaResponse<upgrade_room::v3::Response>> {
    // A version string that is not even a room version identifier
    // (`my_bad_version`) is a version this server does not support, as
    // Synapse answers, not a malformed body.
    let req = req.map_err(|e| match body.get("new_version").and_then(Value::as_str) {
        Some(v) if ruma::RoomVersionId::try_from(v).is_err() => Error::new(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {v:?} is not supported"),
        ),
        _ => e,
    })?;
    let additional = req
        .additional_creators
        .iter()
        .map(|u| u.to_string())
        .collect();
    let new_room = upgrades::upgrade(
        &app,
        &user.user_id,
        &req.room_id,
        req.new_version,
        additional,
    )
    .await?;
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}

/// Not ruma's response: ruma's room summary leaves out `"join_rule":
/// "public"` (its default), which this server, like Synapse, always sends;
/// the rooms are the public room directory's entries
/// (`service::directory::RoomEntry`).
async fn hierarchy(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<space::Hierarchy>> {
    let body = space::hierarchy(
        &app,
        &user.user_id,
        &req.room_id,
        req.from.as_deref(),
        limit(req.limit),
        req.max_depth.map(|d| u64::from(d) as usize),
        req.suggested_only,
    )
    .await?;
    Ok(Json(body))
}
