//! Account management behind user-interactive auth:
//! `POST /_matrix/client/v3/account/password`, `POST /_matrix/client/v3/account/deactivate`
//! (spec: "Account management").

use axum::{Router, extract::State};
use ruma::api::client::account::{ThirdPartyIdRemovalStatus, change_password, deactivate};

use crate::{
    api::{
        auth::{AuthUser, ClientIp},
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    app::AppState,
    error::Result,
    service::account,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<change_password::v3::Request, _, _>(change_password)
        .ruma::<deactivate::v3::Request, _, _>(deactivate)
}

async fn change_password(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<change_password::v3::Request>,
) -> Result<RumaResponse<change_password::v3::Response>> {
    account::change_password(
        &state,
        &user,
        req.new_password,
        req.logout_devices,
        req.auth.as_ref(),
        ip.as_deref(),
    )
    .await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

async fn deactivate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<deactivate::v3::Request>,
) -> Result<RumaResponse<deactivate::v3::Response>> {
    account::deactivate(&state, &user, req.auth.as_ref(), ip.as_deref()).await?;
    // No third-party IDs are ever bound, so there is nothing to unbind.
    Ok(RumaResponse(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    )))
}
