//! `GET /_matrix/client/v3/voip/turnServer` (spec: "Voice over IP", "Server
//! behaviour"): TURN credentials from the `[turn]` settings.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use ruma::api::client::voip::get_turn_server_info;

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::voip,
};

pub fn router() -> Router<AppState> {
    Router::new().ruma::<get_turn_server_info::v3::Request, _, _>(turn_server)
}

async fn turn_server(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_turn_server_info::v3::Request>,
) -> Result<Response> {
    Ok(match voip::turn_server(&app, &user)? {
        Some(turn) => RumaResponse(turn).into_response(),
        // No TURN server: `{}`, as Synapse answers, which ruma's response
        // (every field required) cannot express.
        None => Json(serde_json::json!({})).into_response(),
    })
}
