//! What other servers ask about our users, aliases and rooms:
//! `/query/profile`, `/query/directory`, `/publicRooms` (GET and POST),
//! `/timestamp_to_event` and `/hierarchy/{roomId}` (spec: "Spaces").

use axum::{Json, Router, extract::State, routing::get};
use ruma::{RoomAliasId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FedRequest;
use crate::{
    api::json::Query,
    error::{Error, Result},
    service::AppState,
    service::{directory, profile},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query_directory),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(public_rooms_get).post(public_rooms_post),
        )
        .route(
            "/_matrix/federation/v1/timestamp_to_event/{room_id}",
            get(timestamp_to_event),
        )
        .route("/_matrix/federation/v1/hierarchy/{room_id}", get(hierarchy))
}

#[derive(Deserialize)]
struct HierarchyQuery {
    #[serde(default)]
    suggested_only: bool,
}

/// A space and its children, as far as the requesting server may see them
/// (and its server ACL lets it ask).
async fn hierarchy(
    State(app): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    Query(q): Query<HierarchyQuery>,
    fed: FedRequest,
) -> Result<Json<crate::service::space::FederationHierarchy>> {
    let room_id =
        ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    crate::service::federation::acl::check(&app, room_id.as_str(), fed.origin.as_str()).await?;
    Ok(Json(
        crate::service::space::federation_hierarchy(&app, &fed.origin, &room_id, q.suggested_only)
            .await?,
    ))
}

#[derive(Deserialize)]
struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
}

async fn public_rooms_get(
    State(app): State<AppState>,
    Query(q): Query<PublicRoomsQuery>,
    _fed: FedRequest,
) -> Result<Json<directory::PublicRooms>> {
    Ok(Json(
        directory::public_rooms(
            &app,
            q.limit,
            q.since.as_deref(),
            None,
            &directory::Network::Matrix,
        )
        .await?,
    ))
}

async fn public_rooms_post(
    State(app): State<AppState>,
    fed: FedRequest,
) -> Result<Json<directory::PublicRooms>> {
    let body: Value = fed.json()?;
    let limit = body["limit"].as_u64().map(|l| l as usize);
    Ok(Json(
        directory::public_rooms(
            &app,
            limit,
            body["since"].as_str(),
            body["filter"]["generic_search_term"].as_str(),
            &network_of(&body),
        )
        .await?,
    ))
}

/// The list a federation `/publicRooms` `POST` asks for.
fn network_of(body: &Value) -> directory::Network {
    match (
        body["include_all_networks"].as_bool(),
        body["third_party_instance_id"].as_str(),
    ) {
        (Some(true), _) => directory::Network::All,
        (_, Some(id)) => directory::Network::ThirdParty(id.to_owned()),
        _ => directory::Network::Matrix,
    }
}

#[derive(Deserialize)]
struct TimestampQuery {
    ts: i64,
    dir: String,
}

/// The event closest to `ts` in a room the requesting server is in.
async fn timestamp_to_event(
    State(app): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    Query(q): Query<TimestampQuery>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let backwards = match q.dir.as_str() {
        "b" => true,
        "f" => false,
        _ => return Err(Error::invalid_param("dir must be b or f")),
    };
    let room_id =
        ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let (event_id, origin_server_ts) = crate::service::federation::visibility::closest_to_ts(
        &app,
        &fed.origin,
        &room_id,
        q.ts,
        backwards,
    )
    .await?
    .ok_or_else(|| Error::not_found("No event found"))?;
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": origin_server_ts }),
    ))
}

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

async fn query_profile(
    State(app): State<AppState>,
    Query(q): Query<ProfileQuery>,
    _fed: FedRequest,
) -> Result<Json<Value>> {
    let user_id = UserId::parse(&q.user_id).map_err(|_| Error::invalid_param("Invalid user_id"))?;
    if user_id.server_name() != app.server_name {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    // The whole profile, custom fields too (spec v1.16), or the one `field`.
    let mut all = profile::full(&app, &user_id).await?;
    Ok(Json(Value::Object(match &q.field {
        None => all,
        Some(field) => all
            .remove_entry(field)
            .into_iter()
            .collect::<serde_json::Map<_, _>>(),
    })))
}

#[derive(Deserialize)]
struct DirectoryQuery {
    room_alias: String,
}

async fn query_directory(
    State(app): State<AppState>,
    Query(q): Query<DirectoryQuery>,
    _fed: FedRequest,
) -> Result<Json<Value>> {
    let alias = RoomAliasId::parse(&q.room_alias)
        .map_err(|_| Error::invalid_param("Invalid room_alias"))?;
    if alias.server_name() != app.server_name {
        return Err(Error::invalid_param("The alias is not on this server"));
    }
    // Our alias: the room and its joined servers, this one first.
    let (room_id, servers) = directory::association(&app, &alias).await?;
    Ok(Json(json!({"room_id": room_id, "servers": servers})))
}
