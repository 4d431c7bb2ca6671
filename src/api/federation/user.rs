//! Our users' encryption keys and devices, for other servers:
//! `POST /user/keys/query`, `POST /user/keys/claim`, `GET /user/devices/{userId}`.
//!
//! The requests are read leniently, not as ruma's types (which refuse the
//! whole body for one malformed user ID): other servers' users and bad IDs are
//! skipped, as Synapse does. The answers are ruma's.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use ruma::{
    OwnedUserId, UserId,
    api::federation::keys::{claim_keys, get_keys},
};
use serde::Deserialize;
use serde_json::Value;

use super::FedRequest;
use crate::{
    api::ruma::RumaResponse,
    error::{Error, Result},
    service::AppState,
    service::federation::e2ee,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/user/keys/query", post(keys_query))
        .route("/_matrix/federation/v1/user/keys/claim", post(keys_claim))
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(devices),
        )
}

/// A user ID of this server, or `None` for anyone else's (skipped, as Synapse does).
fn ours(app: &AppState, user: &str) -> Option<OwnedUserId> {
    UserId::parse(user)
        .ok()
        .filter(|u| u.server_name() == app.server_name)
}

/// The `/user/keys/query` body: user → device IDs (all devices when empty).
#[derive(Deserialize)]
struct KeysQuery {
    device_keys: BTreeMap<String, Value>,
}

async fn keys_query(
    State(app): State<AppState>,
    fed: FedRequest,
) -> Result<RumaResponse<get_keys::v1::Response>> {
    let body: KeysQuery = fed
        .json()
        .map_err(|_| Error::bad_json("device_keys must be an object"))?;
    let wanted = body
        .device_keys
        .into_iter()
        .filter_map(|(user, devices)| {
            let devices = devices
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect();
            Some((ours(&app, &user)?, devices))
        })
        .collect();
    Ok(RumaResponse(e2ee::keys_for_server(&app, wanted).await?))
}

/// The `/user/keys/claim` body: user → device → algorithm.
#[derive(Deserialize)]
struct KeysClaim {
    one_time_keys: BTreeMap<String, Value>,
}

async fn keys_claim(
    State(app): State<AppState>,
    fed: FedRequest,
) -> Result<RumaResponse<claim_keys::v1::Response>> {
    let body: KeysClaim = fed
        .json()
        .map_err(|_| Error::bad_json("one_time_keys must be an object"))?;
    let mut claims = Vec::new();
    for (user, devices) in &body.one_time_keys {
        let Some(user) = ours(&app, user) else {
            continue;
        };
        for (device, algorithm) in devices.as_object().into_iter().flatten() {
            if let Some(algorithm) = algorithm.as_str() {
                claims.push((user.to_string(), device.clone(), algorithm.to_owned()));
            }
        }
    }
    Ok(RumaResponse(e2ee::claim_for_server(&app, claims).await?))
}

/// `GET /user/devices/{userId}`: an ID that is not one of our users' (or not
/// a user ID) is `404`, as Synapse answers, not ruma's `400`.
async fn devices(
    State(app): State<AppState>,
    Path(user_id): Path<String>,
    _fed: FedRequest,
) -> Result<Json<e2ee::ServedDevices>> {
    let user = ours(&app, &user_id).ok_or_else(|| Error::not_found("Not a user of this server"))?;
    Ok(Json(e2ee::user_devices(&app, &user).await?))
}
