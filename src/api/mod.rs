//! HTTP only: extract → call a service → render. No SQL here.

pub mod auth;
pub mod client;
pub mod federation;
pub mod json;
pub mod media;
pub mod ruma;
pub mod synapse_admin;

use std::time::Duration;

use axum::{
    Router,
    http::{Method, StatusCode},
    response::IntoResponse,
};
use tower_http::{cors::CorsLayer, trace::TraceLayer};

use crate::{
    app::AppState,
    error::{Error, ErrorKind},
};

/// The whole HTTP surface of one listener.
pub fn router(state: AppState, client: bool, federation: bool) -> Router {
    let mut router = Router::new();
    if federation {
        router = router.merge(federation::router());
    }
    if client {
        router = router
            .merge(client::router())
            .merge(media::router())
            .merge(synapse_admin::router());
    }
    router
        .fallback(|| async { Error::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(cors())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                // Spans are named by the matched route (low cardinality), never the raw
                // path, which may carry IDs and tokens.
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .with_state(state)
}

/// CORS as the Client-Server API requires (spec "Web Browser Clients").
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            http::header::HeaderName::from_static("x-requested-with"),
            http::header::CONTENT_TYPE,
            http::header::AUTHORIZATION,
        ])
}

/// Maps a rate limiter's verdict to `429 M_LIMIT_EXCEEDED`.
pub fn rate_limited(verdict: Result<(), Duration>) -> Result<(), Error> {
    verdict.map_err(|wait| {
        Error::new(
            ErrorKind::LimitExceeded {
                retry_after_ms: wait.as_millis().max(1) as u64,
            },
            "Too many requests",
        )
    })
}

/// `{}`: the body of many successful responses.
pub fn empty_object() -> impl IntoResponse {
    axum::Json(serde_json::json!({}))
}
