//! `GET /_matrix/client/v3/voip/turnServer` (spec: "Voice over IP", "Server
//! behaviour"): TURN credentials from the `[turn]` settings.

use axum::{Json, Router, extract::State};
use ruma::api::client::voip::get_turn_server_info;
use serde_json::Value;

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::Result,
    service::voip,
};

pub fn router() -> Router<AppState> {
    Router::new().ruma::<get_turn_server_info::v3::Request, _, _>(turn_server)
}

async fn turn_server(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_turn_server_info::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(voip::turn_server(&app, &user)?))
}
