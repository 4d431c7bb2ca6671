//! `Json<T>` for endpoints that are not ruma types (Synapse's admin API): the same
//! body rules as `Ruma<T>` (size limit, `M_NOT_JSON`, `M_BAD_JSON`).

use axum::extract::{FromRef, FromRequest, Request};
use serde::de::DeserializeOwned;

use super::ruma::{check_json, read_body};
use crate::{error::Error, service::AppState};

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let bytes = read_body(req.into_body(), app.config.limits.max_request_body_bytes).await?;
        parse(&bytes).map(Json)
    }
}

/// A JSON object body that may be left out: an empty body reads as `{}` (as
/// Synapse reads it for room deletion); otherwise the rules of [`Json`].
pub struct JsonOrEmpty(pub serde_json::Value);

impl<S> FromRequest<S> for JsonOrEmpty
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let bytes = read_body(req.into_body(), app.config.limits.max_request_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(serde_json::json!({})));
        }
        parse(&bytes).map(Self)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    check_json(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| Error::bad_json(format!("Invalid request: {e}")))
}

/// Query parameters for non-ruma endpoints: like axum's `Query`, but a value of
/// the wrong type is `400 M_INVALID_PARAM` (a Matrix error), not plain text.
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| {
                Error::invalid_param(format!("Invalid query parameters: {}", e.body_text()))
            })
    }
}
