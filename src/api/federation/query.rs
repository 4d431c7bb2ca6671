//! What other servers ask about our users, aliases and rooms:
//! `/query/profile`, `/query/directory`, `/publicRooms` (GET and POST),
//! `/timestamp_to_event` and `/hierarchy/{roomId}` (spec: "Spaces").

use axum::{Json, Router, extract::State, routing::get};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, UInt,
    api::{
        Direction,
        federation::{
            event::get_event_by_timestamp,
            query::{get_profile_information, get_room_information},
        },
    },
};
use serde::Deserialize;
use serde_json::Value;

use super::{FedRequest, FedRuma};
use crate::{
    api::json::Query,
    api::ruma::{RouterExt, RumaResponse},
    error::{Error, Result},
    service::AppState,
    service::{directory, profile},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_profile_information::v1::Request, _, _>(query_profile)
        .ruma::<get_room_information::v1::Request, _, _>(query_directory)
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(public_rooms_get).post(public_rooms_post),
        )
        .ruma::<get_event_by_timestamp::v1::Request, _, _>(timestamp_to_event)
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

/// The event closest to `ts` in a room the requesting server is in.
async fn timestamp_to_event(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let backwards = request.dir == Direction::Backward;
    let ts = i64::from(request.ts.get());
    let (event_id, origin_server_ts) = crate::service::federation::visibility::closest_to_ts(
        &app,
        &origin,
        &request.room_id,
        ts,
        backwards,
    )
    .await?
    .ok_or_else(|| Error::not_found("No event found"))?;
    let event_id =
        EventId::parse(&event_id).map_err(|e| anyhow::anyhow!("stored event ID: {e}"))?;
    let origin_server_ts = MilliSecondsSinceUnixEpoch(
        UInt::try_from(origin_server_ts).map_err(|e| anyhow::anyhow!("stored timestamp: {e}"))?,
    );
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        event_id,
        origin_server_ts,
    )))
}

async fn query_profile(
    State(app): State<AppState>,
    FedRuma { request, .. }: FedRuma<get_profile_information::v1::Request>,
) -> Result<RumaResponse<get_profile_information::v1::Response>> {
    if request.user_id.server_name() != app.server_name {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    // The whole profile, custom fields too (spec v1.16), or the one `field`.
    let mut all = profile::full(&app, &request.user_id).await?;
    Ok(RumaResponse(match &request.field {
        None => all.into_iter().collect(),
        Some(field) => all.remove_entry(field.as_str()).into_iter().collect(),
    }))
}

async fn query_directory(
    State(app): State<AppState>,
    FedRuma { request, .. }: FedRuma<get_room_information::v1::Request>,
) -> Result<RumaResponse<get_room_information::v1::Response>> {
    if request.room_alias.server_name() != app.server_name {
        return Err(Error::invalid_param("The alias is not on this server"));
    }
    // Our alias: the room and its joined servers, this one first.
    let (room_id, servers) = directory::association(&app, &request.room_alias).await?;
    Ok(RumaResponse(get_room_information::v1::Response::new(
        room_id, servers,
    )))
}
