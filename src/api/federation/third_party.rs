//! Third-party invites between servers (spec: server-server "Third-party
//! invites"; see [`crate::service::third_party_invite`]):
//!
//! - `POST /_matrix/federation/v1/3pid/onbind`: an identity server tells us an
//!   address was bound to one of our users, with the invites waiting for it.
//!   The caller is an identity server, not a Matrix server, so there is no
//!   X-Matrix authentication (as on Synapse): each invite's block must carry
//!   an identity server signature that a key of the room's own
//!   `m.room.third_party_invite` verifies. Callers are rate-limited by IP.
//! - `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`: the
//!   invited user's server asks the inviter's to make the invite.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{post, put},
};
use ruma::OwnedRoomId;
use serde_json::{Value, json};

use super::FedRequest;
use crate::{
    api::{auth::ClientIp, json, rate_limited},
    error::Result,
    service::AppState,
    service::third_party_invite,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/3pid/onbind", post(on_bind))
        .route(
            "/_matrix/federation/v1/exchange_third_party_invite/{room_id}",
            put(exchange),
        )
}

// JSON: an identity server's call, checked signature by signature over the raw invites; not yet ruma's type (issue #20).
async fn on_bind(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    json::Json(body): json::Json<Value>,
) -> Result<Json<Value>> {
    rate_limited(app.client_limiter.check(&ip.unwrap_or_default()))?;
    third_party_invite::on_bind(&app, &body).await?;
    Ok(Json(json!({})))
}

// JSON: not yet ruma's type (issue #20): the service checks the invite's signed block as JSON.
async fn exchange(
    State(app): State<AppState>,
    Path(room_id): Path<OwnedRoomId>,
    request: FedRequest,
) -> Result<Json<Value>> {
    let body: Value = request.json()?;
    third_party_invite::on_exchange(&app, &request.origin, &room_id, &body).await?;
    Ok(Json(json!({})))
}
