//! Account registration:
//! `POST /_matrix/client/v3/register`, `GET /_matrix/client/v3/register/available`,
//! `GET /_matrix/client/v1/register/m.login.registration_token/validity`
//! (spec: "Account registration and management"). Registration answers with
//! its UIA flows first (`{}` → 401 with a session), as Synapse does; guests and
//! application services skip UIA.

use axum::{Json, Router, extract::State};
use ruma::api::client::account::{
    check_registration_token_validity, get_username_availability, register,
};
use serde_json::{Value, json};

use crate::{
    api::{
        auth::{ClientIp, TokenGiven},
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    app::AppState,
    error::{Error, ErrorKind, Result},
    service::account::{self, Registration},
    storage::{now_ms, registration_tokens},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<register::v3::Request, _, _>(register)
        .ruma::<get_username_availability::v3::Request, _, _>(available)
        .ruma::<check_registration_token_validity::v1::Request, _, _>(token_validity)
}

async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    TokenGiven(token_given): TokenGiven,
    Ruma(req): Ruma<register::v3::Request>,
) -> Result<Json<Value>> {
    rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
    if req.login_type == Some(register::LoginType::ApplicationService) {
        // Application services register without UIA, with their own token. No
        // application service is registered with Lattice, so no token is one.
        return Err(if token_given {
            Error::new(
                ErrorKind::UnknownToken { soft_logout: false },
                "Unrecognised access token: no application service is registered here",
            )
        } else {
            Error::new(
                ErrorKind::BadRequest,
                "Appservice token must be provided when using a type of m.login.application_service",
            )
        });
    }
    let registered = account::register(
        &state,
        Registration {
            username: req.username,
            password: req.password,
            device_id: req.device_id,
            display_name: req.initial_device_display_name,
            inhibit_login: req.inhibit_login,
            refreshable: req.refresh_token,
            guest: req.kind == register::RegistrationKind::Guest,
            auth: req.auth,
            ip,
        },
    )
    .await?;
    // Built by hand: ruma's response writes `"device_id": null` when login is
    // inhibited, and the spec (and Synapse) leave the field out.
    let mut response = json!({ "user_id": registered.user_id });
    if let Some(tokens) = registered.tokens {
        response["access_token"] = tokens.access_token.into();
        response["device_id"] = tokens.device_id.as_str().into();
        if let Some(refresh) = tokens.refresh_token {
            response["refresh_token"] = refresh.into();
        }
        if let Some(expires) = tokens.expires_in {
            response["expires_in_ms"] = (expires.as_millis() as u64).into();
        }
    }
    Ok(Json(response))
}

async fn available(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<get_username_availability::v3::Request>,
) -> Result<RumaResponse<get_username_availability::v3::Response>> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    account::username_available(&state, &req.username).await?;
    Ok(RumaResponse(get_username_availability::v3::Response::new(
        true,
    )))
}

async fn token_validity(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<check_registration_token_validity::v1::Request>,
) -> Result<RumaResponse<check_registration_token_validity::v1::Response>> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    if !state.config.registration.tokens {
        return Err(Error::forbidden("Registration tokens are not enabled"));
    }
    let valid = registration_tokens::is_valid(&state.db, &req.token, now_ms()).await?;
    Ok(RumaResponse(
        check_registration_token_validity::v1::Response::new(valid),
    ))
}
