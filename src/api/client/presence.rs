//! `GET/PUT /presence/{userId}/status` (spec: "Presence").

use axum::{Router, extract::State};
use ruma::api::client::presence::{get_presence, set_presence};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::presence,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_presence::v3::Request, _, _>(get)
        .ruma::<set_presence::v3::Request, _, _>(set)
}

async fn get(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> Result<RumaResponse<get_presence::v3::Response>> {
    Ok(RumaResponse(
        presence::get(&app, &session, &req.user_id).await?,
    ))
}

async fn set(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> Result<RumaResponse<set_presence::v3::Response>> {
    presence::set(
        &app,
        &session,
        &req.user_id,
        req.presence.as_str(),
        req.status_msg,
    )
    .await?;
    Ok(RumaResponse(set_presence::v3::Response::new()))
}
