//! The public room directory: `GET/POST /_matrix/client/v3/publicRooms`,
//! `GET/PUT /_matrix/client/v3/directory/list/room/{roomId}` (spec: "Room
//! directory"). Only this server's rooms: `server=` for another server is refused
//! until federation lands.

use axum::{Json, Router, extract::State};
use ruma::api::client::{
    directory::{
        get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
    },
    room::Visibility,
};
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::{Error, Result},
    service::directory,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_public_rooms::v3::Request, _, _>(public_rooms)
        .ruma::<get_public_rooms_filtered::v3::Request, _, _>(public_rooms_filtered)
        .ruma::<get_room_visibility::v3::Request, _, _>(get_visibility)
        .ruma::<set_room_visibility::v3::Request, _, _>(set_visibility)
}

fn local_only(app: &AppState, server: Option<&ruma::ServerName>) -> Result<()> {
    match server {
        Some(s) if s != app.server_name => Err(Error::new(
            crate::error::ErrorKind::BadRequest,
            "Querying other servers' directories needs federation, which is not available yet",
        )),
        _ => Ok(()),
    }
}

async fn public_rooms(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_public_rooms::v3::Request>,
) -> Result<Json<Value>> {
    local_only(&app, req.server.as_deref())?;
    let limit = req.limit.map(|l| u64::from(l) as usize);
    Ok(Json(
        directory::public_rooms(&app, limit, req.since.as_deref(), None).await?,
    ))
}

async fn public_rooms_filtered(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Json<Value>> {
    local_only(&app, req.server.as_deref())?;
    let limit = req.limit.map(|l| u64::from(l) as usize);
    let term = req.filter.generic_search_term.as_deref();
    Ok(Json(
        directory::public_rooms(&app, limit, req.since.as_deref(), term).await?,
    ))
}

async fn get_visibility(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> Result<Json<Value>> {
    let public = directory::visibility(&app, &req.room_id).await?;
    Ok(Json(
        json!({ "visibility": if public { "public" } else { "private" } }),
    ))
}

async fn set_visibility(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_room_visibility::v3::Request>,
) -> Result<Json<Value>> {
    directory::set_visibility(
        &app,
        &user,
        &req.room_id,
        req.visibility == Visibility::Public,
    )
    .await?;
    Ok(Json(json!({})))
}
