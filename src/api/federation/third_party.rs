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
    Router,
    extract::{Path, State},
    routing::{post, put},
};
use ruma::{
    OwnedRoomId,
    api::federation::thirdparty::{bind_callback, exchange_invite},
};
use serde::Deserialize;
use serde_json::Value;

use super::FedRequest;
use crate::{
    api::{auth::ClientIp, json, rate_limited, ruma::RumaResponse},
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

/// The `onbind` body as it is read: only `invites` matters, each invite
/// checked on its own (one bad invite does not refuse the others), where
/// ruma's request refuses the whole body for one malformed invite.
#[derive(Deserialize)]
struct OnBind {
    #[serde(default)]
    invites: Value,
}

/// Routed by hand: identity servers (Sydent) `POST` it, where ruma's type
/// (after the spec) has `PUT`.
async fn on_bind(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    json::Json(body): json::Json<OnBind>,
) -> Result<RumaResponse<bind_callback::v1::Response>> {
    rate_limited(app.client_limiter.check(&ip.unwrap_or_default()))?;
    third_party_invite::on_bind(&app, &body.invites).await?;
    Ok(RumaResponse(bind_callback::v1::Response::new()))
}

/// The body is read as JSON, not as ruma's request: the service checks the
/// invite's signed block exactly as the identity server signed it.
async fn exchange(
    State(app): State<AppState>,
    Path(room_id): Path<OwnedRoomId>,
    request: FedRequest,
) -> Result<RumaResponse<exchange_invite::v1::Response>> {
    let body: Value = request.json()?;
    third_party_invite::on_exchange(&app, &request.origin, &room_id, &body).await?;
    Ok(RumaResponse(exchange_invite::v1::Response::new()))
}
