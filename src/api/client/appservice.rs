//! Endpoints only application services call (spec: Application Service API,
//! "Client-Server API extensions"):
//! `POST /_matrix/client/v1/appservice/{appserviceId}/ping` and
//! `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`
//! (and its `DELETE`, which Synapse serves too).

use axum::{Router, extract::State};
use ruma::api::client::{
    appservice::{request_ping, set_room_visibility},
    room::Visibility,
};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::appservice::Registration,
    error::{Error, Result},
    service::AppState,
    service::{appservice, session::Session},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<request_ping::v1::Request, _, _>(ping)
        .ruma::<set_room_visibility::v3::Request, _, _>(set_listed)
        .route(
            "/_matrix/client/v3/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::delete(unlist),
        )
}

fn appservice_of(session: &Session) -> Result<&Registration> {
    session
        .appservice
        .as_deref()
        .ok_or_else(|| Error::forbidden("Only application services may do this"))
}

async fn ping(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<request_ping::v1::Request>,
) -> Result<RumaResponse<request_ping::v1::Response>> {
    let reg = appservice_of(&session)?;
    if reg.id != req.appservice_id {
        return Err(Error::forbidden(
            "The appservice ID does not match the access token",
        ));
    }
    let took = appservice::ping(&app, reg, req.transaction_id.as_ref().map(|t| t.as_str())).await?;
    Ok(RumaResponse(request_ping::v1::Response::new(took)))
}

async fn set_listed(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_room_visibility::v3::Request>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    let reg = appservice_of(&session)?;
    let listed = match req.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("Unknown visibility")),
    };
    appservice::set_listed(&app, reg, &req.network_id, &req.room_id, listed).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

/// ruma has no request type for the `DELETE` (Synapse's extension); it
/// answers as the `PUT` does, with an empty object.
async fn unlist(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    axum::extract::Path((network_id, room_id)): axum::extract::Path<(String, String)>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    let reg = appservice_of(&session)?;
    let room_id =
        ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    appservice::set_listed(&app, reg, &network_id, &room_id, false).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}
