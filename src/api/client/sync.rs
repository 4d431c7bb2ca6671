//! `GET /_matrix/client/v3/sync`, `POST /_matrix/client/v3/user/{userId}/filter`,
//! `GET /_matrix/client/v3/user/{userId}/filter/{filterId}` (spec: "Syncing",
//! "Filtering"), and simplified sliding sync
//! (`POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`, MSC4186).

use std::time::Duration;

use axum::{Json, Router, extract::State};
use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::filter::{Filter as DomainFilter, InvalidFilter},
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{
        presence, sliding_sync,
        sync::{self, Params},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<sync_events::v3::Request, _, _>(sync_handler)
        .ruma::<create_filter::v3::Request, _, _>(create)
        .ruma::<get_filter::v3::Request, _, _>(get)
        .ruma::<sync_events::v5::Request, _, _>(sliding)
}

/// Simplified sliding sync (MSC4186), which Element X uses.
async fn sliding(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<sync_events::v5::Request>,
) -> Result<RumaResponse<sync_events::v5::Response>> {
    Ok(RumaResponse(sliding_sync::sync(&app, &user, &req).await?))
}

async fn sync_handler(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<sync_events::v3::Request>,
) -> Result<Json<sync::Response>> {
    // Not ruma's response type: see `sync::response` for what it would leave
    // out.
    let definition = match req.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(def)) => def,
        // Another user's filter, or none: as Synapse answers.
        Some(Filter::FilterId(id)) => load_filter(&app, user.user_id.as_str(), &id)
            .await
            .map_err(|e| match e.kind() {
                Some(ErrorKind::NotFound) => Error::invalid_param("No such filter"),
                _ => e,
            })?,
        Some(_) => FilterDefinition::default(),
    };
    let filter = checked(&definition)?;
    let since = req
        .since
        .as_deref()
        .map(sync::SyncToken::parse)
        .transpose()?;
    let timeout = req.timeout.unwrap_or(Duration::ZERO);
    let params = Params::new(filter, since, timeout, req.full_state);
    presence::on_sync(&app, &user.user_id, req.set_presence.as_str()).await?;
    Ok(Json(sync::sync(&app, &user, &params).await?))
}

/// A filter definition as the one domain type, or `M_BAD_JSON` when it does
/// not hold together (malformed IDs and wrong types are refused earlier, when
/// the request is parsed).
fn checked(definition: &FilterDefinition) -> Result<DomainFilter> {
    DomainFilter::new(definition).map_err(|InvalidFilter(e)| Error::bad_json(e))
}

async fn load_filter(app: &AppState, user: &str, id: &str) -> Result<FilterDefinition> {
    let id: i64 = id
        .parse()
        .map_err(|_| Error::invalid_param("Unknown filter"))?;
    let json = crate::service::sync::stored_filter(app, user, id)
        .await?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    serde_json::from_str(&json).map_err(|e| Error::Internal(anyhow::anyhow!("stored filter: {e}")))
}

async fn create(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<create_filter::v3::Request>,
) -> Result<RumaResponse<create_filter::v3::Response>> {
    if req.user_id != user.user_id {
        return Err(Error::forbidden("Cannot create filters for other users"));
    }
    checked(&req.filter)?;
    let json = serde_json::to_string(&req.filter).map_err(|e| Error::bad_json(e.to_string()))?;
    let id = crate::service::sync::store_filter(&app, user.user_id.as_str(), &json).await?;
    Ok(RumaResponse(create_filter::v3::Response::new(
        id.to_string(),
    )))
}

async fn get(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_filter::v3::Request>,
) -> Result<RumaResponse<get_filter::v3::Response>> {
    if req.user_id != user.user_id {
        return Err(Error::forbidden("Cannot read other users' filters"));
    }
    let definition = load_filter(&app, user.user_id.as_str(), &req.filter_id).await?;
    Ok(RumaResponse(get_filter::v3::Response::new(definition)))
}
