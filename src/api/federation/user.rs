//! Our users' encryption keys and devices, for other servers:
//! `POST /user/keys/query`, `POST /user/keys/claim`, `GET /user/devices/{userId}`.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use ruma::UserId;
use serde_json::{Value, json};

use super::FedRequest;
use crate::{
    error::{Error, Result},
    service::AppState,
    service::{e2e_keys, federation::e2ee},
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
fn ours(app: &AppState, user: &str) -> Option<String> {
    UserId::parse(user)
        .ok()
        .filter(|u| u.server_name() == app.server_name)
        .map(|u| u.to_string())
}

// JSON: ruma's request refuses the whole body for one malformed user ID; other servers' users and bad IDs are skipped, as Synapse does.
async fn keys_query(State(app): State<AppState>, fed: FedRequest) -> Result<Json<Value>> {
    let body: Value = fed.json()?;
    let wanted = body["device_keys"]
        .as_object()
        .ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
    let mut found = e2e_keys::KeysFound::default();
    for (user, devices) in wanted {
        let Some(user) = ours(&app, user) else {
            continue;
        };
        let devices: Vec<String> = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_owned))
            .collect();
        e2e_keys::local_keys(&app, &user, &devices, None, &mut found).await?;
    }
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master,
        "self_signing_keys": found.self_signing,
    })))
}

// JSON: ruma's request refuses the whole body for one malformed user ID; other servers' users and bad IDs are skipped, as Synapse does.
async fn keys_claim(State(app): State<AppState>, fed: FedRequest) -> Result<Json<Value>> {
    let body: Value = fed.json()?;
    let wanted = body["one_time_keys"]
        .as_object()
        .ok_or_else(|| Error::bad_json("one_time_keys must be an object"))?;
    let mut claims = Vec::new();
    for (user, devices) in wanted {
        let Some(user) = ours(&app, user) else {
            continue;
        };
        for (device, algorithm) in devices.as_object().into_iter().flatten() {
            if let Some(algorithm) = algorithm.as_str() {
                claims.push((user.clone(), device.clone(), algorithm.to_owned()));
            }
        }
    }
    let claimed = e2e_keys::claim_local(&app, claims).await?;
    Ok(Json(json!({ "one_time_keys": claimed })))
}

// JSON: not yet ruma's type (issue #20).
async fn devices(
    State(app): State<AppState>,
    Path(user_id): Path<String>,
    _fed: FedRequest,
) -> Result<Json<Value>> {
    let user = UserId::parse(&user_id)
        .ok()
        .filter(|u| u.server_name() == app.server_name)
        .ok_or_else(|| Error::not_found("Not a user of this server"))?;
    Ok(Json(e2ee::user_devices(&app, &user).await?))
}
