//! `GET /_matrix/client/v1/mutual_rooms` (spec v1.19: "Mutual Rooms") and its
//! unstable form `GET /_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms`
//! (MSC2666, what Element asks for).

use axum::{Router, extract::State};
use ruma::{OwnedRoomId, UInt, api::client::membership::get_mutual_rooms};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
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
) -> Result<RumaResponse<get_mutual_rooms::v1::Response>> {
    respond(&app, &user.user_id, &req.user_id, req.from.as_deref()).await
}

async fn unstable(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_mutual_rooms::unstable::Request>,
) -> Result<RumaResponse<get_mutual_rooms::v1::Response>> {
    respond(&app, &user.user_id, &req.user_id, req.from.as_deref()).await
}

/// Both forms answer with the stable body: ruma's unstable response has no
/// `count`, which the unstable form has always carried here too.
async fn respond(
    app: &AppState,
    user: &ruma::UserId,
    other: &ruma::UserId,
    from: Option<&str>,
) -> Result<RumaResponse<get_mutual_rooms::v1::Response>> {
    let (joined, count, next) = mutual_rooms::mutual_rooms(app, user, other, from).await?;
    let joined = joined
        .into_iter()
        .filter_map(|r| OwnedRoomId::try_from(r).ok())
        .collect();
    let count = UInt::try_from(count as u64).unwrap_or(UInt::MAX);
    let mut body = get_mutual_rooms::v1::Response::new(count, joined);
    body.next_batch = next;
    Ok(RumaResponse(body))
}
