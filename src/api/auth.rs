//! Authentication as types: a handler that needs a user takes [`AuthUser`] and
//! cannot compile without one; [`AdminUser`] additionally requires a server admin.
//!
//! Guests are refused by [`AuthUser`] (`403 M_GUEST_ACCESS_FORBIDDEN`), so every
//! endpoint is closed to them by default. Only the endpoints the spec's guest
//! access module lists take [`GuestOk`] instead.
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
    error::{Error, ErrorKind},
    service::AppState,
    service::session::{self, Session},
};

/// An authenticated user (not a guest) and their device.
pub struct AuthUser(pub Session);

/// An authenticated user or guest: for the endpoints the spec's "Guest access"
/// module allows guests (reading rooms, joining, leaving and sending, to-device,
/// display name, their devices, whoami, E2EE keys, media downloads).
pub struct GuestOk(pub Session);

/// An authenticated server administrator.
pub struct AdminUser(pub Session);

/// A user when the request carries an access token (which must then be valid),
/// `None` when it carries none: for `POST /account/password`, which resets a
/// forgotten password without one.
pub struct MaybeAuthUser(pub Option<Session>);

impl<S> FromRequestParts<S> for MaybeAuthUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if access_token(parts).is_none() {
            return Ok(Self(None));
        }
        let AuthUser(session) = AuthUser::from_request_parts(parts, state).await?;
        Ok(Self(Some(session)))
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = session_of(parts, &AppState::from_ref(state)).await?;
        if session.is_guest {
            return Err(Error::new(
                ErrorKind::GuestAccessForbidden,
                "Guest access is not allowed here",
            ));
        }
        Ok(Self(session))
    }
}

impl<S> FromRequestParts<S> for GuestOk
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(session_of(parts, &AppState::from_ref(state)).await?))
    }
}

/// The request's session (guest or not), resolved once per request.
async fn session_of(parts: &mut Parts, app: &AppState) -> Result<Session, Error> {
    if let Some(session) = parts.extensions.get::<Session>() {
        return Ok(session.clone());
    }
    let token = access_token(parts)
        .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Missing access token"))?;
    // An application service's token: it acts as `user_id` (default: its
    // sender) and, with MSC3202, as one of that user's devices. Others'
    // `user_id` parameters are ignored.
    let appservice = if app.appservices.current().is_empty() {
        None
    } else {
        let masquerade = query_param(parts, "user_id");
        let device = query_param(parts, "org.matrix.msc3202.device_id")
            .or_else(|| query_param(parts, "device_id"));
        crate::service::appservice::authenticate(
            app,
            &crate::domain::token::hash(&token),
            masquerade.as_deref(),
            device.as_deref(),
        )
        .await?
    };
    let session = match appservice {
        Some(session) => session,
        None => session::authenticate(app, &token).await?,
    };
    let ip = client_ip(parts, app).map(|ip| ip.to_string());
    // Kept short: a header is the client's to fill.
    let user_agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect::<String>());
    session::touch_device(app, &session, ip.as_deref(), user_agent.as_deref()).await;
    parts.extensions.insert(session.clone());
    Ok(session)
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

fn query_param(parts: &Parts, name: &str) -> Option<String> {
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
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

/// The client's IP address: the peer's, or — when the peer is one of the
/// configured `trusted_proxies` — the right-most `X-Forwarded-For` address that
/// is not itself a trusted proxy.
pub fn client_ip(parts: &Parts, app: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    Some(forwarded_client(
        peer,
        parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
        &app.trusted_proxies,
    ))
}

fn forwarded_client<'a>(
    peer: IpAddr,
    headers: impl Iterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| crate::outbound::ranges_contain(trusted, ip);
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers.flat_map(|h| h.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// The caller's IP as a string, for IP-keyed rate limits.
pub struct ClientIp(pub Option<String>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        Ok(Self(client_ip(parts, &app).map(|ip| ip.to_string())))
    }
}

/// The application service whose `as_token` the request carries: `Ok(None)`
/// without a token, `Err(M_UNKNOWN_TOKEN)` when the token is no appservice's
/// (`POST /register` with `m.login.application_service`, `/login` with it).
pub struct AsToken(
    pub Result<Option<std::sync::Arc<crate::domain::appservice::Registration>>, Error>,
);

impl<S> FromRequestParts<S> for AsToken
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let Some(token) = access_token(parts) else {
            return Ok(Self(Ok(None)));
        };
        Ok(Self(
            match app
                .appservices
                .current()
                .by_token(&crate::domain::token::hash(&token))
            {
                Some(reg) => Ok(Some(reg)),
                None => Err(Error::new(
                    ErrorKind::UnknownToken { soft_logout: false },
                    "Unrecognised access token: not an application service's",
                )),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ip_range;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = vec![ip_range("10.0.0.0/8").unwrap()];
        let xff = ["203.0.113.7, 10.1.1.1"];
        // A direct client cannot forge its address.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), xff.into_iter(), &trusted),
            ip("198.51.100.1")
        );
        // Through the proxy chain: the right-most untrusted hop.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), xff.into_iter(), &trusted),
            ip("203.0.113.7")
        );
        // A spoofed left-most entry does not win over the real client.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.2"),
                ["1.2.3.4, 203.0.113.7"].into_iter(),
                &trusted
            ),
            ip("203.0.113.7")
        );
        // No proxies configured: the peer.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), xff.into_iter(), &[]),
            ip("10.0.0.2")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), ["junk"].into_iter(), &trusted),
            ip("10.0.0.2")
        );
    }
}
