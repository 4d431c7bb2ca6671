//! Login and sessions:
//! `GET/POST /_matrix/client/v3/login`, `POST /_matrix/client/v3/refresh`,
//! `POST /_matrix/client/v3/logout`, `POST /_matrix/client/v3/logout/all`,
//! `GET /_matrix/client/v3/account/whoami` (spec: "Login", "Account management").

use axum::{Router, extract::State};
use ruma::api::client::{
    account::whoami,
    session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
    uiaa::UserIdentifier,
};

use crate::{
    api::{
        auth::{AsToken, AuthUser, ClientIp, GuestOk},
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse, RumaWithObject},
    },
    domain::localpart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::session,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_login_types::v3::Request, _, _>(login_types)
        .ruma::<login::v3::Request, _, _>(login)
        .ruma::<refresh_token::v3::Request, _, _>(refresh)
        .ruma::<logout::v3::Request, _, _>(logout)
        .ruma::<logout_all::v3::Request, _, _>(logout_all)
        .ruma::<whoami::v3::Request, _, _>(whoami)
        .ruma::<get_login_token::v1::Request, _, _>(get_login_token)
}

/// `POST /_matrix/client/v1/login/get_token` (MSC3882; spec v1.7): absent
/// (`404 M_UNRECOGNIZED`) unless `auth.login_via_existing_session` is on.
async fn get_login_token(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<get_login_token::v1::Request>,
) -> Result<RumaResponse<get_login_token::v1::Response>> {
    if !state.config.auth.login_via_existing_session {
        return Err(Error::unrecognized(axum::http::StatusCode::NOT_FOUND));
    }
    let (token, lifetime) =
        session::issue_login_token(&state, &user, req.auth.as_ref(), ip.as_deref()).await?;
    Ok(RumaResponse(get_login_token::v1::Response::new(
        lifetime, token,
    )))
}

/// `m.login.token` is offered when tokens can be had: from
/// `/login/get_token`, or from single sign-on.
fn token_login_enabled(state: &AppState) -> bool {
    state.config.auth.login_via_existing_session || !state.sso.is_empty()
}

async fn login_types(
    State(state): State<AppState>,
    Ruma(_): Ruma<get_login_types::v3::Request>,
) -> RumaResponse<get_login_types::v3::Response> {
    let mut types = vec![get_login_types::v3::LoginType::Password(Default::default())];
    if !state.sso.is_empty() {
        let mut sso = get_login_types::v3::SsoLoginType::new();
        sso.identity_providers = state
            .sso
            .all()
            .iter()
            .map(|p| {
                let mut idp =
                    get_login_types::v3::IdentityProvider::new(p.id.clone(), p.name().to_owned());
                idp.icon = p.config.idp_icon.as_deref().map(Into::into);
                idp.brand = p.config.idp_brand.as_deref().map(Into::into);
                idp
            })
            .collect();
        types.push(get_login_types::v3::LoginType::Sso(sso));
    }
    // Tokens come from /login/get_token and from SSO's redirect.
    if token_login_enabled(&state) {
        let mut token = get_login_types::v3::TokenLoginType::new();
        token.get_login_token = state.config.auth.login_via_existing_session;
        types.push(get_login_types::v3::LoginType::Token(token));
    }
    // Offered when an application service may use it.
    if !state.appservices.current().is_empty() {
        types.push(get_login_types::v3::LoginType::ApplicationService(
            Default::default(),
        ));
    }
    RumaResponse(get_login_types::v3::Response::new(types))
}

#[allow(deprecated)] // the legacy top-level `user` field is still sent by old clients
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AsToken(appservice): AsToken,
    RumaWithObject(mut req, body): RumaWithObject<login::v3::Request>,
) -> Result<RumaResponse<login::v3::Response>> {
    // MSC2778's unstable name for the appservice login, still sent by older
    // bridge frameworks (matrix-bot-sdk 0.6); Synapse accepts both.
    if body.get("type").and_then(|t| t.as_str())
        == Some("uk.half-shot.msc2778.login.application_service")
    {
        let mut stable = body.clone();
        stable.insert("type".into(), "m.login.application_service".into());
        req.login_info = serde_json::from_value(serde_json::Value::Object(stable))
            .map_err(|_| Error::bad_json("Invalid login body"))?;
    }
    let info = match req.login_info {
        login::v3::LoginInfo::Password(info) => info,
        login::v3::LoginInfo::ApplicationService(info) => {
            // A device for a user of the appservice's namespace, with its token.
            let appservice = appservice?.ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingToken,
                    "Missing the appservice's access token",
                )
            })?;
            if appservice.rate_limited {
                rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
            }
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => return Err(Error::bad_json("Missing identifier")),
            };
            let user_id = localpart::login_user_id(&user, &state.server_name)
                .filter(|u| u.server_name() == state.server_name)
                .ok_or_else(|| Error::invalid_param("Invalid user ID"))?;
            let issued = crate::service::appservice::login(
                &state,
                &appservice,
                &user_id,
                req.device_id,
                req.initial_device_display_name.as_deref(),
                req.refresh_token,
                ip.as_deref(),
            )
            .await?;
            let mut response =
                login::v3::Response::new(user_id, issued.access_token, issued.device_id);
            response.refresh_token = issued.refresh_token;
            response.expires_in = issued.expires_in;
            return Ok(RumaResponse(response));
        }
        login::v3::LoginInfo::Token(info) if token_login_enabled(&state) => {
            rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
            let (user_id, issued) = session::login_token(
                &state,
                &info.token,
                req.device_id,
                req.initial_device_display_name.as_deref(),
                req.refresh_token,
                ip.as_deref(),
            )
            .await?;
            let mut response =
                login::v3::Response::new(user_id, issued.access_token, issued.device_id);
            response.refresh_token = issued.refresh_token;
            response.expires_in = issued.expires_in;
            return Ok(RumaResponse(response));
        }
        _ => return Err(Error::new(ErrorKind::BadRequest, "Unsupported login type")),
    };
    rate_limited(state.login_limiter.check(&ip.clone().unwrap_or_default()))?;
    let user = match (&info.identifier, &info.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        // An email address bound to an account (as Synapse accepts); an
        // unknown one fails like a wrong password.
        (Some(UserIdentifier::Email(email)), _) => {
            match crate::service::threepid::user_for_email(&state, &email.address).await? {
                Some(user) => user,
                None => return Err(session::unknown_login(&state).await),
            }
        }
        (Some(_), _) => {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "Unsupported identifier type",
            ));
        }
        // The spec's deprecated top-level `medium` and `address` (older
        // clients), as Synapse still reads them.
        (None, None) => match (body.get("medium"), body.get("address")) {
            (Some(medium), Some(serde_json::Value::String(address))) if medium == "email" => {
                match crate::service::threepid::user_for_email(&state, address).await? {
                    Some(user) => user,
                    None => return Err(session::unknown_login(&state).await),
                }
            }
            _ => return Err(Error::bad_json("Missing identifier")),
        },
    };
    let user_id = localpart::login_user_id(&user, &state.server_name)
        .filter(|u| u.server_name() == state.server_name)
        .ok_or_else(|| Error::forbidden("Invalid username or password"))?;
    let issued = session::login_password(
        &state,
        &user_id,
        info.password,
        req.device_id,
        req.initial_device_display_name.as_deref(),
        req.refresh_token,
        ip.as_deref(),
    )
    .await?;
    let mut response = login::v3::Response::new(user_id, issued.access_token, issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in;
    Ok(RumaResponse(response))
}

async fn refresh(
    State(state): State<AppState>,
    Ruma(req): Ruma<refresh_token::v3::Request>,
) -> Result<RumaResponse<refresh_token::v3::Response>> {
    let issued = session::refresh(&state, &req.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(issued.access_token);
    response.refresh_token = issued.refresh_token;
    response.expires_in_ms = issued.expires_in;
    Ok(RumaResponse(response))
}

async fn logout(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<logout::v3::Request>,
) -> Result<RumaResponse<logout::v3::Response>> {
    session::logout(&state, &user).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

async fn logout_all(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> Result<RumaResponse<logout_all::v3::Response>> {
    session::logout_all(&state, &user).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

async fn whoami(
    GuestOk(user): GuestOk,
    Ruma(_): Ruma<whoami::v3::Request>,
) -> RumaResponse<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(user.user_id, user.is_guest);
    response.device_id = Some(user.device_id);
    RumaResponse(response)
}
