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
use serde::Serialize;
use serde_json::Value;

use crate::{
    api::{
        auth::{AsToken, ClientIp},
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse, RumaWithObject},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::account::{self, Registration},
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
    AsToken(appservice): AsToken,
    RumaWithObject(req, body): RumaWithObject<register::v3::Request>,
) -> Result<Json<Registered>> {
    if req.login_type == Some(register::LoginType::ApplicationService) {
        // Application services register without UIA, with their own token.
        let Some(appservice) = appservice? else {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "Appservice token must be provided when using a type of m.login.application_service",
            ));
        };
        if appservice.rate_limited {
            rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
        }
        let (user_id, tokens) = crate::service::appservice::register(
            &state,
            &appservice,
            req.username.as_deref(),
            req.device_id,
            req.initial_device_display_name.as_deref(),
            req.inhibit_login,
            req.refresh_token,
            ip.as_deref(),
        )
        .await?;
        return Ok(Json(registered_body(user_id, tokens)));
    }
    if appservice.is_ok_and(|a| a.is_some()) {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "An application service registers users with type m.login.application_service",
        ));
    }
    rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
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
            // Not in ruma's request type; Synapse and the spec's guest
            // access module take it.
            guest_access_token: body
                .get("guest_access_token")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
    )
    .await?;
    Ok(Json(registered_body(registered.user_id, registered.tokens)))
}

/// The answer to a registration: ruma's response but for `device_id`, which
/// ruma writes as `null` when login is inhibited, where the spec (and Synapse)
/// leave it out.
#[derive(Serialize)]
struct Registered {
    user_id: ruma::OwnedUserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<ruma::OwnedDeviceId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u64>,
}

fn registered_body(
    user_id: ruma::OwnedUserId,
    tokens: Option<crate::service::session::Issued>,
) -> Registered {
    match tokens {
        Some(tokens) => Registered {
            user_id,
            access_token: Some(tokens.access_token),
            device_id: Some(tokens.device_id),
            refresh_token: tokens.refresh_token,
            expires_in_ms: tokens.expires_in.map(|e| e.as_millis() as u64),
        },
        None => Registered {
            user_id,
            access_token: None,
            device_id: None,
            refresh_token: None,
            expires_in_ms: None,
        },
    }
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
    let valid = crate::service::account::registration_token_valid(&state, &req.token).await?;
    Ok(RumaResponse(
        check_registration_token_validity::v1::Response::new(valid),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// With login inhibited the answer has only `user_id`: no `"device_id":
    /// null` (ruma's response would write one).
    #[test]
    fn an_inhibited_login_leaves_the_device_out() {
        let user: ruma::OwnedUserId = "@a:example.org".try_into().unwrap();
        assert_eq!(
            serde_json::to_value(registered_body(user, None)).unwrap(),
            json!({ "user_id": "@a:example.org" })
        );
    }
}
