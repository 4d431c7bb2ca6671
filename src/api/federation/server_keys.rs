//! `GET /_matrix/federation/v1/version`, `GET /_matrix/key/v2/server`, and the
//! notary endpoints `GET /_matrix/key/v2/query/{serverName}` (and the
//! deprecated `…/{keyId}` form) and `POST /_matrix/key/v2/query`.
//! Unauthenticated, as the spec has them (spec: "Querying Keys Through
//! Another Server").

use std::collections::BTreeMap;

use axum::{
    Router,
    extract::{Path, State},
    routing::{get, post},
};
use ruma::{
    ServerName,
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
    },
};
use serde::Deserialize;

use crate::{
    api::json::Json as JsonBody,
    api::json::Query,
    api::ruma::RumaResponse,
    error::{Error, Result},
    service::AppState,
    service::server_keys,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(own_keys))
        // Older servers still ask with a key ID in the path.
        .route("/_matrix/key/v2/server/{key_id}", get(own_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(query_one))
        .route(
            "/_matrix/key/v2/query/{server_name}/{key_id}",
            get(query_one_key),
        )
        .route("/_matrix/key/v2/query", post(query_batch))
}

async fn version() -> RumaResponse<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Lattice".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    RumaResponse(response)
}

/// Our keys, signed (ruma's raw type keeps the signed JSON as it is). Routed
/// by hand: older servers still ask with a key ID in the path, which ruma's
/// request does not have.
async fn own_keys(
    State(app): State<AppState>,
) -> Result<RumaResponse<get_server_keys::v2::Response>> {
    Ok(RumaResponse(get_server_keys::v2::Response::new(
        server_keys::own_response(&app).await?,
    )))
}

#[derive(Deserialize)]
struct MinimumValidUntil {
    minimum_valid_until_ts: Option<i64>,
}

/// `GET /query/{serverName}`: every key of the server. The query is read
/// here, not as ruma's request, whose absent `minimum_valid_until_ts` becomes
/// "now" (here: any response still valid, else a fetch).
async fn query_one(
    State(app): State<AppState>,
    Path(server_name): Path<String>,
    Query(q): Query<MinimumValidUntil>,
) -> Result<RumaResponse<get_remote_server_keys::v2::Response>> {
    query_get(&app, &server_name, Vec::new(), q.minimum_valid_until_ts).await
}

/// `GET /query/{serverName}/{keyId}` (deprecated; Synapse still serves it):
/// one key of the server.
async fn query_one_key(
    State(app): State<AppState>,
    Path((server_name, key_id)): Path<(String, String)>,
    Query(q): Query<MinimumValidUntil>,
) -> Result<RumaResponse<get_remote_server_keys::v2::Response>> {
    let minimum = q.minimum_valid_until_ts;
    query_get(&app, &server_name, vec![(key_id, minimum)], minimum).await
}

/// The signed key responses, served exactly as their servers signed them.
async fn query_get(
    app: &AppState,
    server_name: &str,
    key_ids: Vec<(String, Option<i64>)>,
    minimum: Option<i64>,
) -> Result<RumaResponse<get_remote_server_keys::v2::Response>> {
    let server =
        ServerName::parse(server_name).map_err(|_| Error::invalid_param("Invalid server name"))?;
    let wanted = [server_keys::NotaryQuery {
        server,
        key_ids,
        minimum,
    }];
    let found = server_keys::notary_responses(app, &wanted).await?;
    Ok(RumaResponse(get_remote_server_keys::v2::Response::new(
        found,
    )))
}

#[derive(Deserialize)]
struct BatchQuery {
    server_keys: BTreeMap<String, BTreeMap<String, Criteria>>,
}

#[derive(Deserialize, Default)]
struct Criteria {
    minimum_valid_until_ts: Option<i64>,
}

/// At most this many servers per batch query (of which at most
/// `keys::MAX_NOTARY_FETCHES` are fetched; the rest come from the store).
const MAX_BATCH: usize = 50;
/// At most this many key IDs per server in a batch query.
const MAX_KEYS_PER_SERVER: usize = 50;

/// `POST /query`: per server, the keys named (each with its minimum
/// validity), or all of them when none is named. The body is read here, not
/// as ruma's request (which refuses the whole query for one bad server name):
/// a server name that does not parse is skipped.
async fn query_batch(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<BatchQuery>,
) -> Result<RumaResponse<get_remote_server_keys_batch::v2::Response>> {
    if body.server_keys.len() > MAX_BATCH
        || body
            .server_keys
            .values()
            .any(|keys| keys.len() > MAX_KEYS_PER_SERVER)
    {
        return Err(Error::bad_json(format!(
            "At most {MAX_BATCH} servers and {MAX_KEYS_PER_SERVER} keys per server per query"
        )));
    }
    let wanted: Vec<_> = body
        .server_keys
        .into_iter()
        .filter_map(|(server_name, criteria)| {
            let server = ServerName::parse(&server_name).ok()?;
            Some(server_keys::NotaryQuery {
                server,
                key_ids: criteria
                    .into_iter()
                    .map(|(id, c)| (id, c.minimum_valid_until_ts))
                    .collect(),
                minimum: None,
            })
        })
        .collect();
    let out = server_keys::notary_responses(&app, &wanted).await?;
    Ok(RumaResponse(
        get_remote_server_keys_batch::v2::Response::new(out),
    ))
}
