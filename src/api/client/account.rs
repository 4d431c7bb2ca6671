//! Account management behind user-interactive auth:
//! `POST /_matrix/client/v3/account/password`, `POST /_matrix/client/v3/account/deactivate`
//! (spec: "Account management"); and `GET /_matrix/client/v3/admin/whois/{userId}`
//! (spec: "Server administration").

use axum::{Json, Router, extract::State};
use ruma::api::client::{
    account::{ThirdPartyIdRemovalStatus, change_password, deactivate},
    admin::get_user_info,
    uiaa::AuthData,
};
use serde::Deserialize;

use crate::{
    api::{
        auth::{AuthUser, ClientIp, MaybeAuthUser},
        json::JsonOrEmpty,
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, Result},
    service::AppState,
    service::{account, admin, identity},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<change_password::v3::Request, _, _>(change_password)
        .ruma::<deactivate::v3::Request, _, _>(deactivate)
        .ruma::<get_user_info::v3::Request, _, _>(whois)
}

/// The user themself or a server admin; `M_FORBIDDEN` for anyone else.
///
/// Answered as JSON, not ruma's response: ruma's `ConnectionInfo` writes an
/// unknown `ip`, `last_seen` or `user_agent` as `null` where Synapse (and
/// Lattice) leave it out, and ruma drops `devices` when the user has none.
async fn whois(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_user_info::v3::Request>,
) -> Result<Json<admin::users::Whois>> {
    Ok(Json(
        admin::whois_for(&state, &user, req.user_id.as_str()).await?,
    ))
}

/// The body of `POST /account/password`. ruma's type requires `new_password`;
/// this one does not, so a first request of `{}` starts UIA (401 with the
/// flows) as it does on Synapse, and the password is asked for after it.
#[derive(Deserialize)]
struct PasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<AuthData>,
}

fn yes() -> bool {
    true
}

/// With an access token: a password change. Without one: a password reset
/// through an email address validated for it (when email is set up).
async fn change_password(
    State(state): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    ClientIp(ip): ClientIp,
    JsonOrEmpty(body): JsonOrEmpty,
) -> Result<RumaResponse<change_password::v3::Response>> {
    // The spec rate-limits this endpoint (the `Ruma` extractor's rule, by user).
    let limit_key = match &user {
        Some(user) => user.user_id.to_string(),
        None => ip.clone().unwrap_or_default(),
    };
    rate_limited(state.client_limiter.check(&limit_key))?;
    let body: PasswordBody = serde_json::from_value(body)
        .map_err(|e| Error::bad_json(format!("Invalid request: {e}")))?;
    let Some(user) = user else {
        account::reset_password(
            &state,
            body.new_password,
            body.logout_devices,
            body.auth.as_ref(),
            ip.as_deref(),
        )
        .await?;
        return Ok(RumaResponse(change_password::v3::Response::new()));
    };
    account::change_password(
        &state,
        &user,
        body.new_password,
        body.logout_devices,
        body.auth.as_ref(),
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
    let unbound = account::deactivate(
        &state,
        &user,
        req.erase,
        req.auth.as_ref(),
        ip.as_deref(),
        req.id_server.as_deref(),
    )
    .await?;
    // `success` also when nothing was bound (the spec's answer then).
    Ok(RumaResponse(deactivate::v3::Response::new(
        if unbound == identity::Unbound::Success {
            ThirdPartyIdRemovalStatus::Success
        } else {
            ThirdPartyIdRemovalStatus::NoSupport
        },
    )))
}
