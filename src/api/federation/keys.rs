//! `GET /_matrix/federation/v1/version`, `GET /_matrix/key/v2/server`, and the
//! notary endpoints `GET /_matrix/key/v2/query/{serverName}` and
//! `POST /_matrix/key/v2/query`. Unauthenticated, as the spec has them.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use ruma::ServerName;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::json::Json as JsonBody,
    api::json::Query,
    app::AppState,
    error::{Error, Result},
    federation::keys,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(server_keys))
        // Older servers still ask with a key ID in the path.
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(query_one))
        .route("/_matrix/key/v2/query", post(query_batch))
}

async fn version() -> Json<Value> {
    Json(json!({"server": {"name": "Lattice", "version": env!("CARGO_PKG_VERSION")}}))
}

async fn server_keys(State(app): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(keys::own_response(&app).await?))
}

#[derive(Deserialize)]
struct MinimumValidUntil {
    minimum_valid_until_ts: Option<i64>,
}

async fn query_one(
    State(app): State<AppState>,
    Path(server_name): Path<String>,
    Query(q): Query<MinimumValidUntil>,
) -> Result<Json<Value>> {
    let server =
        ServerName::parse(&server_name).map_err(|_| Error::invalid_param("Invalid server name"))?;
    let wanted = [(server, q.minimum_valid_until_ts.unwrap_or(0))];
    let found = keys::notary_responses(&app, &wanted).await?;
    Ok(Json(json!({"server_keys": found})))
}

#[derive(Deserialize)]
struct BatchQuery {
    server_keys: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Criteria>>,
}

#[derive(Deserialize, Default)]
struct Criteria {
    minimum_valid_until_ts: Option<i64>,
}

/// At most this many servers per batch query (of which at most
/// `keys::MAX_NOTARY_FETCHES` are fetched; the rest come from the store).
const MAX_BATCH: usize = 50;

async fn query_batch(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<BatchQuery>,
) -> Result<Json<Value>> {
    if body.server_keys.len() > MAX_BATCH {
        return Err(Error::bad_json(format!(
            "At most {MAX_BATCH} servers per query"
        )));
    }
    let wanted: Vec<_> = body
        .server_keys
        .iter()
        .filter_map(|(server_name, criteria)| {
            let server = ServerName::parse(server_name).ok()?;
            let minimum = criteria
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .max()
                .unwrap_or(0);
            Some((server, minimum))
        })
        .collect();
    let out = keys::notary_responses(&app, &wanted).await?;
    Ok(Json(json!({"server_keys": out})))
}
