//! Authentication as types: a handler that needs a user takes [`AuthUser`] and
//! cannot compile without one; [`AdminUser`] additionally requires a server admin.
//!
//! The access token comes from `Authorization: Bearer …` or the deprecated
//! `access_token` query parameter. The session is also stored in the request
//! extensions, so the `Ruma<T>` extractor (which runs last) can rate-limit by user.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::request::Parts,
};

use crate::{
    app::AppState,
    error::{Error, ErrorKind},
    service::session::{self, Session},
};

/// An authenticated (non-guest or guest) user and their device.
pub struct AuthUser(pub Session);

/// An authenticated server administrator.
pub struct AdminUser(pub Session);

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<Session>() {
            return Ok(Self(session.clone()));
        }
        let app = AppState::from_ref(state);
        let token = access_token(parts)
            .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Missing access token"))?;
        let session = session::authenticate(&app, &token).await?;
        let ip = client_ip(parts).map(|ip| ip.to_string());
        session::touch_device(&app, &session, ip.as_deref()).await;
        parts.extensions.insert(session.clone());
        Ok(Self(session))
    }
}

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AuthUser(session) = AuthUser::from_request_parts(parts, state).await?;
        if !session.is_admin {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Self(session))
    }
}

fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// The peer's IP address. (Trusting `X-Forwarded-For` from configured proxies
/// comes with the deployment work.)
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The caller's IP as a string, for IP-keyed rate limits.
pub struct ClientIp(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts).map(|ip| ip.to_string())))
    }
}
