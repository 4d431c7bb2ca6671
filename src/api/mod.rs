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
use tower::Layer;
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
    served(router, state)
}

/// The routes, with the fallbacks, CORS and the request span: what a listener
/// serves.
///
/// CORS and the span wrap the routed service once, not each route:
/// `Router::layer` would wrap (and clone the layer into) every route, over a
/// quarter of the idle heap with ~300 routes. Outside the router the matched
/// route is not known yet, so the span's `route` is recorded once routing has
/// found it ([`record_route`], by the per-route middleware or a fallback).
fn served<S: Clone + Send + Sync + 'static>(routes: Router<S>, state: S) -> Router {
    let routes = routes
        .fallback(|req: axum::extract::Request| async move {
            record_route(&route_of(&req));
            Error::unrecognized(StatusCode::NOT_FOUND)
        })
        // A known path with another method: the span names the path's route.
        .method_not_allowed_fallback(|req: axum::extract::Request| async move {
            record_route(&route_of(&req));
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(state);
    let service = TraceLayer::new_for_http()
        .make_span_with(|req: &http::Request<_>| {
            // Spans are named by the matched route (low cardinality), never the
            // raw path, which may carry IDs and tokens.
            tracing::info_span!(
                "request",
                method = %req.method(),
                route = tracing::field::Empty
            )
        })
        .layer(cors().layer(routes));
    Router::new().fallback_service(service)
}

/// The route a request matched (its template, as `/rooms/{room_id}/…`).
fn route_of(req: &axum::extract::Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into())
}

/// Names the route in the request span [`served`] opened.
fn record_route(route: &str) {
    tracing::Span::current().record("route", route);
}

async fn track_request(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = route_of(&req);
    record_route(&route);
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
    record_route("/metrics");
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{body::Body, routing::get};
    use tower::ServiceExt;
    use tracing::{
        field::{Field, Visit},
        span,
    };
    use tracing_subscriber::{layer::Context, prelude::*};

    use super::*;

    /// Collects the `route` values recorded on spans.
    struct Routes(Arc<Mutex<Vec<String>>>);

    struct RouteField<'a>(&'a Mutex<Vec<String>>);

    impl Visit for RouteField<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "route" {
                self.0.lock().unwrap().push(value.to_owned());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "route" {
                self.0.lock().unwrap().push(format!("{value:?}"));
            }
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Routes {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            attrs.record(&mut RouteField(&self.0));
        }
        fn on_record(&self, _: &span::Id, values: &span::Record<'_>, _: Context<'_, S>) {
            values.record(&mut RouteField(&self.0));
        }
    }

    #[tokio::test]
    async fn spans_name_the_matched_route_never_the_path_and_cors_covers_everything() {
        let routes = Arc::new(Mutex::new(Vec::new()));
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(Routes(routes.clone())),
        );
        let app = served(
            Router::new()
                .route("/rooms/{room_id}/state", get(|| async { "ok" }))
                .route_layer(axum::middleware::from_fn(
                    |req: axum::extract::Request, next: axum::middleware::Next| async move {
                        record_route(&route_of(&req));
                        next.run(req).await
                    },
                )),
            (),
        );
        let call = |method: Method, uri: &str| {
            let req = http::Request::builder()
                .method(method)
                .uri(uri)
                .header("origin", "https://app.element.io")
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
        let ok = call(Method::GET, "/rooms/!secret:example.org/state")
            .await
            .unwrap();
        let missing = call(Method::GET, "/no/such/path?access_token=secret")
            .await
            .unwrap();
        let wrong = call(Method::DELETE, "/rooms/!secret:example.org/state")
            .await
            .unwrap();
        assert_eq!(
            [ok.status(), missing.status(), wrong.status()],
            [
                StatusCode::OK,
                StatusCode::NOT_FOUND,
                StatusCode::METHOD_NOT_ALLOWED
            ]
        );
        for response in [&ok, &missing, &wrong] {
            assert_eq!(response.headers()["access-control-allow-origin"], "*");
        }
        assert_eq!(
            *routes.lock().unwrap(),
            [
                "/rooms/{room_id}/state",
                "unmatched",
                "/rooms/{room_id}/state"
            ]
        );
    }
}
