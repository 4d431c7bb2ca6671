//! The Server-Server API. Every endpoint except the version and key endpoints
//! takes a [`FedRequest`], which exists only once the `X-Matrix` signature of the
//! request has been verified against the origin's keys.

mod events;
mod media;
mod openid;
mod query;
mod server_keys;
mod third_party;
mod user;

use axum::{
    Router,
    extract::{FromRef, FromRequest, Request},
};

use crate::{
    error::Error,
    service::{AppState, federation::auth},
};

/// An authenticated federation request: its origin and its body (already
/// checked to be JSON when not empty).
pub struct FedRequest {
    pub origin: ruma::OwnedServerName,
    pub body: bytes::Bytes,
}

impl FedRequest {
    /// The body parsed as `T` (`400 M_BAD_JSON` when it does not fit).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_json(format!("Invalid body: {e}")))
    }
}

impl<S> FromRequest<S> for FedRequest
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let (parts, body) = req.into_parts();
        // The header and the origin's key first: a request that cannot be
        // authentic costs no body read.
        let claimed = auth::check_header(&app, &parts.headers).await?;
        // Transactions carry up to 50 PDUs of 64 KiB and 100 EDUs.
        let limit = app
            .config
            .limits
            .max_request_body_bytes
            .max(8 * 1024 * 1024);
        let bytes = super::ruma::read_body(body, limit).await?;
        if !bytes.is_empty() {
            super::ruma::check_json(&bytes)?;
        }
        let origin = auth::verify_signature(&app, claimed, &parts.method, &parts.uri, &bytes)?;
        crate::service::federation::sender::heard_from(&app, &origin).await;
        Ok(Self {
            origin,
            body: bytes,
        })
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(server_keys::router())
        .merge(query::router())
        .merge(events::router())
        .merge(user::router())
        .merge(media::router())
        .merge(openid::router())
        .merge(third_party::router())
}
