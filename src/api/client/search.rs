//! `POST /search` (spec: "Server Side Search") and `POST /user_directory/search`
//! (spec: "User Directory").

use axum::{Json, Router, extract::State};
use ruma::api::client::{search::search_events, user_directory::search_users};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::{search, user_directory},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<search_events::v3::Request, _, _>(search_handler)
        .ruma::<search_users::v3::Request, _, _>(users)
}

async fn search_handler(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<search_events::v3::Request>,
) -> Result<Json<search::Response>> {
    // Not ruma's response type: see `search::Response`.
    let Some(criteria) = &req.search_categories.room_events else {
        return Ok(Json(search::Response::default()));
    };
    Ok(Json(
        search::search(&app, &session, criteria, req.next_batch.as_deref()).await?,
    ))
}

async fn users(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<search_users::v3::Request>,
) -> Result<RumaResponse<search_users::v3::Response>> {
    Ok(RumaResponse(
        user_directory::search(&app, &session, &req.search_term, u64::from(req.limit)).await?,
    ))
}
