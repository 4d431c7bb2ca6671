//! HTTP only: extract → call a service → render. No SQL here, and no
//! `storage::` either (`tests/layers.rs`).

pub mod admin;
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
    error::{Error, ErrorKind},
    service::AppState,
};

/// The whole HTTP surface of one listener.
pub fn router(state: AppState, client: bool, federation: bool, metrics: bool) -> Router {
    let mut router = Router::new();
    if federation {
        router = router.merge(federation::router());
    }
    if client {
        router = router
            .merge(client::router())
            .merge(media::router())
            .merge(synapse_admin::router())
            .merge(admin::router());
    }
    // Every matched route is counted and timed (after routing, so by route).
    // (axum refuses a route layer on a router without routes.)
    if client || federation {
        router = router.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_request,
        ));
    }
    if metrics {
        router = router.route("/metrics", axum::routing::get(render_metrics));
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

async fn track_request(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    app.metrics
        .observe_request(&method, &route, response.status().as_u16(), start.elapsed());
    response
}

/// `GET /metrics` (listeners with the `metrics` resource).
async fn render_metrics(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> Result<impl IntoResponse, Error> {
    let out = crate::service::metrics::render(&app).await?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
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
