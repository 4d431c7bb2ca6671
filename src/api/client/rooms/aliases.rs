//! Aliases: `PUT/GET/DELETE /directory/room/{roomAlias}`,
//! `GET /rooms/{roomId}/aliases` (spec: "Room aliases").

use axum::{Router, extract::State};
use ruma::{
    OwnedRoomAliasId,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        room::aliases,
    },
};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::directory,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .ruma::<create_alias::v3::Request, _, _>(put_alias)
        .ruma::<get_alias::v3::Request, _, _>(get_alias)
        .ruma::<delete_alias::v3::Request, _, _>(remove_alias)
        .ruma::<aliases::v3::Request, _, _>(room_aliases)
}

async fn put_alias(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<create_alias::v3::Request>,
) -> Result<RumaResponse<create_alias::v3::Response>> {
    directory::create_alias(&app, &user, req.room_alias.as_str(), &req.room_id).await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

async fn get_alias(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> Result<RumaResponse<get_alias::v3::Response>> {
    let (room_id, servers) = directory::association(&app, &req.room_alias).await?;
    Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)))
}

async fn remove_alias(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> Result<RumaResponse<delete_alias::v3::Response>> {
    directory::delete_alias(&app, &user, req.room_alias.as_str()).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

async fn room_aliases(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> Result<RumaResponse<aliases::v3::Response>> {
    let aliases = directory::room_aliases(&app, &user.user_id, &req.room_id).await?;
    Ok(RumaResponse(aliases::v3::Response::new(
        aliases
            .into_iter()
            .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
            .collect(),
    )))
}
