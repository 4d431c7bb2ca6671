//! `GET /_matrix/client/v1/mutual_rooms` (spec v1.19: "Mutual Rooms") and its
//! unstable form `GET /_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms`
//! (MSC2666, what Element asks for).

use axum::{Json, Router, extract::State};
use ruma::api::client::membership::get_mutual_rooms;
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::Result,
    service::mutual_rooms,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_mutual_rooms::v1::Request, _, _>(stable)
        .ruma::<get_mutual_rooms::unstable::Request, _, _>(unstable)
}

async fn stable(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_mutual_rooms::v1::Request>,
) -> Result<Json<Value>> {
    respond(&app, &user.user_id, &req.user_id, req.from.as_deref()).await
}

async fn unstable(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_mutual_rooms::unstable::Request>,
) -> Result<Json<Value>> {
    respond(&app, &user.user_id, &req.user_id, req.from.as_deref()).await
}

async fn respond(
    app: &AppState,
    user: &ruma::UserId,
    other: &ruma::UserId,
    from: Option<&str>,
) -> Result<Json<Value>> {
    let (joined, count, next) = mutual_rooms::mutual_rooms(app, user, other, from).await?;
    let mut body = json!({ "joined": joined, "count": count });
    if let Some(next) = next {
        body["next_batch"] = next.into();
    }
    Ok(Json(body))
}
