//! The Server-Server API. Every endpoint except the version and key endpoints
//! takes a [`FedRuma`] (ruma's request type, registered on ruma's paths with
//! [`RouterExt::ruma`](super::ruma::RouterExt::ruma)) or, where ruma's parse
//! would refuse requests Lattice (and Synapse) accept, a [`FedRequest`] (raw
//! JSON body, read leniently by the handler). Both exist only once the
//! `X-Matrix` signature of the request has been verified against the origin's
//! keys. Answers are ruma's response types ([`RumaResponse`]), or typed
//! structs where ruma's would change the wire; never `Json<Value>`
//! (`tests/layers.rs`).
//!
//! [`RumaResponse`]: super::ruma::RumaResponse

mod events;
mod media;
mod openid;
mod query;
mod server_keys;
mod third_party;
mod user;

use axum::{
    Router,
    body::Body,
    extract::{FromRef, FromRequest, FromRequestParts, RawPathParams, Request},
};
use ruma::api::{IncomingRequest, IncomingRequestExt};

use crate::{
    error::Error,
    service::{
        AppState,
        federation::{acl, auth},
    },
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
        let (origin, body) = authenticate(&app, &parts, body).await?;
        Ok(Self { origin, body })
    }
}

/// An authenticated federation request of ruma's type `T`: its origin and the
/// request, parsed after the `X-Matrix` signature was verified and — for a
/// request on a room (a `{room_id}` in the path) — after the room's server ACL
/// let the origin in (`403 M_FORBIDDEN`): a denied server learns nothing of the
/// room, not even whether its request was well formed (spec: "Server Access
/// Control Lists"). A path or query parameter that does not parse is
/// `400 M_INVALID_PARAM`, a body of the wrong shape `400 M_BAD_JSON` (as the
/// client API's `Ruma<T>`).
pub struct FedRuma<T> {
    pub origin: ruma::OwnedServerName,
    pub request: T,
}

impl<S, T> FromRequest<S> for FedRuma<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: IncomingRequest,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let (mut parts, body) = req.into_parts();
        let (origin, bytes) = authenticate(&app, &parts, body).await?;
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| Error::invalid_param(format!("Invalid path parameter: {e}")))?;
        if let Some((_, room_id)) = params.iter().find(|(name, _)| *name == "room_id")
            && let Ok(room_id) = ruma::RoomId::parse(room_id)
        {
            acl::check(&app, room_id.as_str(), origin.as_str()).await?;
        }
        let params: Vec<&str> = params.iter().map(|(_, v)| v).collect();
        let request = http::Request::from_parts(parts, bytes.as_ref());
        // As in `Ruma<T>`: a body ruma's parser panics on is malformed input.
        let request = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::try_from_http_request(request, &params)
        }))
        .map_err(|_| Error::bad_json("The request body could not be parsed"))?
        .map_err(super::ruma::request_error)?;
        Ok(Self { origin, request })
    }
}

/// Verifies a federation request's `X-Matrix` authorization and reads its
/// body: the origin and the body (checked to be JSON when not empty).
async fn authenticate(
    app: &AppState,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(ruma::OwnedServerName, bytes::Bytes), Error> {
    // The header and the origin's key first: a request that cannot be
    // authentic costs no body read.
    let claimed = auth::check_header(app, &parts.headers).await?;
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
    let origin = auth::verify_signature(app, claimed, &parts.method, &parts.uri, &bytes)?;
    crate::service::federation::sender::heard_from(app, &origin).await;
    Ok((origin, bytes))
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
