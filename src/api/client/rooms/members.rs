//! Members: `GET /rooms/{roomId}/members`, `GET /rooms/{roomId}/joined_members`,
//! `GET /joined_rooms` (spec: "Room membership", "Getting events for a room").

use axum::{Json, Router, extract::State};
use ruma::{
    OwnedRoomId,
    api::client::membership::{get_member_events, joined_members, joined_rooms},
};

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::read,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_member_events::v3::Request, _, _>(members)
        .ruma::<joined_members::v3::Request, _, _>(joined_members)
        .ruma::<joined_rooms::v3::Request, _, _>(joined_rooms)
}

async fn members(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_member_events::v3::Request>,
) -> Result<RumaResponse<get_member_events::v3::Response>> {
    let chunk = read::members(
        &app,
        &user,
        &req.room_id,
        req.at.as_deref(),
        req.membership.as_ref().map(|m| m.as_str()),
        req.not_membership.as_ref().map(|m| m.as_str()),
    )
    .await?;
    Ok(RumaResponse(get_member_events::v3::Response::new(chunk)))
}

/// ruma's response leaves out a member's unset `display_name` and
/// `avatar_url`; they stay `null` (see [`read::JoinedMember`]).
#[derive(serde::Serialize)]
struct JoinedMembers {
    joined: std::collections::BTreeMap<String, read::JoinedMember>,
}

async fn joined_members(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<joined_members::v3::Request>,
) -> Result<Json<JoinedMembers>> {
    let joined = read::joined_members(
        &app,
        &user.user_id,
        user.appservice.as_deref(),
        &req.room_id,
    )
    .await?;
    Ok(Json(JoinedMembers { joined }))
}

async fn joined_rooms(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> Result<RumaResponse<joined_rooms::v3::Response>> {
    let rooms = read::joined_rooms(&app, &user.user_id).await?;
    Ok(RumaResponse(joined_rooms::v3::Response::new(
        rooms
            .into_iter()
            .filter_map(|r| OwnedRoomId::try_from(r).ok())
            .collect(),
    )))
}
