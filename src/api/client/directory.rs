//! The public room directory: `GET/POST /_matrix/client/v3/publicRooms`,
//! `GET/PUT /_matrix/client/v3/directory/list/room/{roomId}` (spec: "Room
//! directory"). `server=` another server relays that server's federation
//! `/publicRooms` (checked and trimmed; an access token is needed).
//!
//! Room summaries: `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (spec:
//! "Room Summaries", MSC3266) and its unstable paths
//! `/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary` and
//! `/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}`; the
//! access token is optional.
//!
//! Directory pages and summaries are answered with this server's own types
//! (`service::directory::{PublicRooms, RoomEntry}`), not ruma's
//! `PublicRoomsChunk` / `RoomSummary`: those leave out `"join_rule":
//! "public"` (their default), which this server, like Synapse, always sends,
//! and a relayed answer is rebuilt field by field (`service::directory`).

use axum::{Json, Router, extract::State};
use ruma::{
    RoomId,
    api::client::{
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::{Visibility, get_summary},
    },
    directory::RoomNetwork,
};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::directory,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_public_rooms::v3::Request, _, _>(public_rooms)
        .ruma::<get_public_rooms_filtered::v3::Request, _, _>(public_rooms_filtered)
        .ruma::<get_room_visibility::v3::Request, _, _>(get_visibility)
        .ruma::<set_room_visibility::v3::Request, _, _>(set_visibility)
        .ruma::<get_summary::v1::Request, _, _>(room_summary)
        // MSC3266's later unstable path, which ruma does not list (same
        // parameter, so the same request type parses it).
        .route(
            "/_matrix/client/unstable/im.nheko.summary/summary/{room_id_or_alias}",
            axum::routing::get(room_summary),
        )
}

/// The access token is optional: without one, only rooms anyone may preview
/// are summarised; a token that is given must be valid. Not ruma's response:
/// see the module header.
async fn room_summary(
    State(app): State<AppState>,
    auth: std::result::Result<AuthUser, Error>,
    Ruma(req): Ruma<get_summary::v1::Request>,
) -> Result<Json<directory::RoomEntry>> {
    let requester = match auth {
        Ok(AuthUser(session)) => Some(session.user_id),
        Err(Error::Matrix {
            kind: ErrorKind::MissingToken,
            ..
        }) => None,
        Err(e) => return Err(e),
    };
    let (room_id, mut via) = match <&RoomId>::try_from(&*req.room_id_or_alias) {
        Ok(room_id) => (room_id.to_owned(), Vec::new()),
        Err(alias) => directory::resolve(&app, alias).await?,
    };
    via.extend(req.via);
    Ok(Json(
        directory::room_summary(&app, requester.as_deref(), &room_id, &via).await?,
    ))
}

/// The server a `/publicRooms` request names, when it is another one. Asking
/// another server needs an access token (as on Synapse): an anonymous caller
/// may not make this server send requests.
fn remote(app: &AppState, server: Option<&ruma::ServerName>) -> Option<ruma::OwnedServerName> {
    server
        .filter(|s| *s != app.server_name)
        .map(ToOwned::to_owned)
}

/// Not ruma's response: see the module header.
async fn public_rooms(
    State(app): State<AppState>,
    auth: std::result::Result<AuthUser, Error>,
    Ruma(req): Ruma<get_public_rooms::v3::Request>,
) -> Result<Json<directory::PublicRooms>> {
    let limit = req.limit.map(|l| u64::from(l) as usize);
    if let Some(server) = remote(&app, req.server.as_deref()) {
        auth?;
        let query = directory::RemotePublicRooms {
            limit,
            since: req.since.as_deref(),
            filter: None,
            network: None,
            post: false,
        };
        return Ok(Json(
            directory::remote_public_rooms(&app, &server, query).await?,
        ));
    }
    Ok(Json(
        directory::public_rooms(
            &app,
            limit,
            req.since.as_deref(),
            None,
            &directory::Network::Matrix,
        )
        .await?,
    ))
}

/// Not ruma's response: see the module header.
async fn public_rooms_filtered(
    State(app): State<AppState>,
    auth: std::result::Result<AuthUser, Error>,
    Ruma(req): Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Json<directory::PublicRooms>> {
    let limit = req.limit.map(|l| u64::from(l) as usize);
    auth?;
    let Some(server) = remote(&app, req.server.as_deref()) else {
        let term = req.filter.generic_search_term.as_deref();
        let network = match &req.room_network {
            RoomNetwork::All => directory::Network::All,
            RoomNetwork::ThirdParty(id) => directory::Network::ThirdParty(id.to_string()),
            _ => directory::Network::Matrix,
        };
        return Ok(Json(
            directory::public_rooms(&app, limit, req.since.as_deref(), term, &network).await?,
        ));
    };
    let mut network = serde_json::Map::new();
    match &req.room_network {
        RoomNetwork::Matrix => {}
        RoomNetwork::All => {
            network.insert("include_all_networks".into(), true.into());
        }
        RoomNetwork::ThirdParty(id) => {
            network.insert("third_party_instance_id".into(), id.as_str().into());
        }
        _ => {}
    }
    let filter = (!req.filter.is_empty())
        .then(|| serde_json::to_value(&req.filter))
        .transpose()
        .map_err(|e| Error::bad_json(e.to_string()))?;
    let query = directory::RemotePublicRooms {
        limit,
        since: req.since.as_deref(),
        filter,
        network: Some(network),
        post: true,
    };
    Ok(Json(
        directory::remote_public_rooms(&app, &server, query).await?,
    ))
}

async fn get_visibility(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> Result<RumaResponse<get_room_visibility::v3::Response>> {
    let public = directory::visibility(&app, &req.room_id).await?;
    Ok(RumaResponse(get_room_visibility::v3::Response::new(
        if public {
            Visibility::Public
        } else {
            Visibility::Private
        },
    )))
}

async fn set_visibility(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_room_visibility::v3::Request>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    directory::set_visibility(
        &app,
        &user,
        &req.room_id,
        req.visibility == Visibility::Public,
    )
    .await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}
