//! Events between servers: `PUT /send/{txnId}`, joins (`make_join`,
//! `send_join` v2 and the deprecated v1), invites (v2 and v1), leaves
//! (`make_leave`, `send_leave` v2 and v1), knocks, and reading the graph
//! (`/event`, `/event_auth`, `/state`, `/state_ids`, `/get_missing_events`).
//!
//! The deprecated v1 `send_join`, `send_leave` and `invite` (spec: "Joining
//! Rooms", "Leaving Rooms", "Inviting to a room"; v1 `send_join`/`send_leave`
//! removed in v1.18 but still sent by older servers) answer `[200, {…}]`, a
//! historical accident kept on the wire.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    routing::{get, post, put},
};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, RoomId, UserId,
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_room_state, get_room_state_ids},
    },
};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use super::{FedRequest, FedRuma};
use crate::{
    api::ruma::{RouterExt, RumaResponse},
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::federation::{
        acl, ingest, invite, reads, resident, state_before, visibility::ServerView,
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(send_transaction),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(make_join),
        )
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(send_join_v1),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(send_join),
        )
        .route(
            "/_matrix/federation/v1/invite/{room_id}/{event_id}",
            put(invite_v1),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(invite_v2),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(make_leave),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(send_knock),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(send_leave_v1),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(send_leave),
        )
        .ruma::<get_event::v1::Request, _, _>(get_event)
        .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
        .ruma::<get_event_authorization::v1::Request, _, _>(event_auth)
        .ruma::<get_room_state_ids::v1::Request, _, _>(state_ids)
        .ruma::<get_room_state::v1::Request, _, _>(state)
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(get_missing_events),
        )
}

/// `PUT /v2/invite/{roomId}/{eventId}`: countersign an invite of one of our users.
// JSON: not yet ruma's type (issue #20): the service checks and countersigns the body's event as canonical JSON.
async fn invite_v2(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let (room_id, event_id) = invite_path(&app, &room_id, &event_id, &fed).await?;
    let body: Value = fed.json()?;
    let room_version = body["room_version"]
        .as_str()
        .ok_or_else(|| Error::bad_json("room_version is required"))?;
    let incoming = invite::Incoming {
        api: invite::InviteApi::V2,
        room_version,
        event: &body["event"],
        invite_room_state: body["invite_room_state"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    let event = invite::receive(&app, &fed.origin, &room_id, &event_id, incoming).await?;
    Ok(Json(json!({ "event": event })))
}

/// `PUT /v1/invite/{roomId}/{eventId}` (deprecated): the body is the event,
/// its stripped state in `unsigned.invite_room_state`; the room version is not
/// given, so it is taken to be "1" (the spec: "1" or "2", which differ only in
/// state resolution, not used here), as Synapse does.
// JSON: the deprecated v1 answer `[200, {…}]`, kept as JSON like v2 (issue #20).
async fn invite_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let (room_id, event_id) = invite_path(&app, &room_id, &event_id, &fed).await?;
    let event: Value = fed.json()?;
    let incoming = invite::Incoming {
        api: invite::InviteApi::V1,
        room_version: "1",
        event: &event,
        invite_room_state: event["unsigned"]["invite_room_state"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    let event = invite::receive(&app, &fed.origin, &room_id, &event_id, incoming).await?;
    Ok(Json(json!([200, { "event": event }])))
}

/// An invite's room and event IDs, the room one the origin's ACL lets it act in.
async fn invite_path(
    app: &AppState,
    room_id: &str,
    event_id: &str,
    fed: &FedRequest,
) -> Result<(ruma::OwnedRoomId, ruma::OwnedEventId)> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::bad_json("Bad room ID"))?;
    let event_id = EventId::parse(event_id).map_err(|_| Error::bad_json("Bad event ID"))?;
    acl::check(app, room_id.as_str(), fed.origin.as_str()).await?;
    Ok((room_id, event_id))
}

/// `GET /backfill/{roomId}?v=…&limit=…`: the given events and those before them,
/// newest (deepest) first, walking `prev_events`.
// JSON: not yet ruma's type (issue #20).
async fn backfill(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let mut from = Vec::new();
    let mut limit = 10usize;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "v" => from.push(v.into_owned()),
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| Error::new(ErrorKind::InvalidParam, "limit must be a number"))?
            }
            _ => {}
        }
    }
    if from.is_empty() {
        return Err(Error::new(ErrorKind::MissingParam, "v is required"));
    }
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let pdus = reads::backfill(&app, &fed.origin, &room_id, from, limit).await?;
    Ok(Json(json!({
        "origin": app.server_name.as_str(),
        "origin_server_ts": crate::clock::now_ms(),
        "pdus": pdus,
    })))
}

// JSON: not yet ruma's type (issue #20).
async fn make_leave(
    State(app): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let user_id = path_user(&user_id)?;
    Ok(Json(
        resident::make_leave(&app, &fed.origin, &room_id, &user_id).await?,
    ))
}

// JSON: not yet ruma's type (issue #20).
async fn make_knock(
    State(app): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let user_id = path_user(&user_id)?;
    let versions = ver_params(query);
    Ok(Json(
        resident::make_knock(&app, &fed.origin, &room_id, &user_id, &versions).await?,
    ))
}

// JSON: not yet ruma's type (issue #20).
async fn send_knock(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    Ok(Json(
        resident::send_knock(&app, &fed.origin, &room_id, &event_id, &body).await?,
    ))
}

// JSON: not yet ruma's type (issue #20).
async fn send_leave(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    resident::send_leave(&app, &fed.origin, &room_id, &event_id, &body).await?;
    Ok(Json(json!({})))
}

/// `PUT /v1/send_leave/{roomId}/{eventId}` (deprecated): v2's, as `[200, {}]`.
// JSON: the deprecated v1 answer `[200, {}]`, an accident of history kept on the wire.
async fn send_leave_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    resident::send_leave(&app, &fed.origin, &room_id, &event_id, &body).await?;
    Ok(Json(json!([200, {}])))
}

/// A room ID from the path, in which the requesting server's ACL lets it act.
async fn acl_room(
    app: &AppState,
    room_id: &str,
    origin: &ruma::ServerName,
) -> Result<ruma::OwnedRoomId> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    acl::check(app, room_id.as_str(), origin.as_str()).await?;
    Ok(room_id)
}

fn path_user(user_id: &str) -> Result<ruma::OwnedUserId> {
    UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))
}

fn path_event(event_id: &str) -> Result<ruma::OwnedEventId> {
    EventId::parse(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))
}

/// The room versions a `make_join`/`make_knock` caller supports (`ver=`).
fn ver_params(query: Option<String>) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v.into_owned())
        .collect()
}

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

// JSON: not yet ruma's type (issue #20): its answer is the reply kept for retries of the same transaction.
async fn send_transaction(
    State(app): State<AppState>,
    Path(txn_id): Path<String>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    if let Some(reply) = reads::transaction_reply(&app, &fed.origin, &txn_id).await? {
        return Ok(Json(reply));
    }
    let body: Value = fed.json()?;
    if body["origin"]
        .as_str()
        .is_some_and(|o| o != fed.origin.as_str())
    {
        return Err(Error::forbidden(
            "The transaction's origin is not the sender",
        ));
    }
    let pdus = body["pdus"].as_array().cloned().unwrap_or_default();
    let edus = body["edus"].as_array().cloned().unwrap_or_default();
    if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction"
        )));
    }
    let mut results = BTreeMap::new();
    for value in &pdus {
        let (event_id, outcome) = ingest::receive_pdu(&app, &fed.origin, value).await;
        let Some(event_id) = event_id else {
            tracing::info!(origin = %fed.origin, error = ?outcome.err(), "unparseable PDU dropped");
            continue;
        };
        let entry = match outcome {
            Ok(_) => json!({}),
            // Rejected by the auth rules but handled: held in the room's graph,
            // as Synapse does, so nothing is reported (spec: no `error` means
            // the PDU was handled).
            Err(error) if ingest::held_as_rejected(&app, &event_id).await => {
                tracing::info!(origin = %fed.origin, %event_id, %error, "PDU rejected by the auth rules");
                json!({})
            }
            Err(error) => {
                tracing::info!(origin = %fed.origin, %event_id, %error, "PDU rejected");
                json!({"error": error})
            }
        };
        results.insert(event_id.to_string(), entry);
    }
    for edu in &edus {
        crate::service::federation::edu::receive(&app, &fed.origin, edu).await;
    }
    let reply = json!({"pdus": results});
    reads::store_transaction_reply(&app, &fed.origin, &txn_id, &reply).await?;
    Ok(Json(reply))
}

// JSON: not yet ruma's type (issue #20).
async fn make_join(
    State(app): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let user_id = path_user(&user_id)?;
    let versions = ver_params(query);
    // No `ver`: the server only knows version 1.
    let versions = if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    };
    Ok(Json(
        resident::make_join(&app, &fed.origin, &room_id, &user_id, &versions).await?,
    ))
}

/// `PUT /v2/send_join/{roomId}/{eventId}[?omit_members=true]`: the state
/// before the join and its auth chain; with `omit_members=true` (faster joins,
/// spec v1.6), without most membership events, with `members_omitted: true`
/// and `servers_in_room`.
// JSON: not yet ruma's type (issue #20): the faster-join answer's fields are built by the service.
async fn send_join(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let omit_members = omit_members_param(query)?;
    let body: Value = fed.json()?;
    let joined =
        resident::send_join(&app, &fed.origin, &room_id, &event_id, &body, omit_members).await?;
    let mut answer = json!({
        "origin": app.server_name.as_str(),
        "state": joined.state,
        "auth_chain": joined.auth_chain,
        "members_omitted": joined.servers_in_room.is_some(),
    });
    if let Some(servers) = joined.servers_in_room {
        answer["servers_in_room"] = servers.into();
    }
    if let Some(event) = joined.event {
        answer["event"] = event;
    }
    Ok(Json(answer))
}

/// `send_join`'s `omit_members` query parameter: `true` or `false` (absent:
/// false); anything else is `M_INVALID_PARAM`, as Synapse answers.
fn omit_members_param(query: Option<String>) -> Result<bool> {
    let mut omit = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "omit_members" {
            omit = match v.as_ref() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(Error::invalid_param("omit_members must be true or false"));
                }
            };
        }
    }
    Ok(omit)
}

/// `PUT /v1/send_join/{roomId}/{eventId}` (deprecated): v2's checks and
/// answer, as `[200, {origin, state, auth_chain}]`.
// JSON: the deprecated v1 answer `[200, {…}]`, an accident of history kept on the wire.
async fn send_join_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    let joined = resident::send_join(&app, &fed.origin, &room_id, &event_id, &body, false).await?;
    Ok(Json(json!([200, {
        "origin": app.server_name.as_str(),
        "state": joined.state,
        "auth_chain": joined.auth_chain,
    }])))
}

async fn get_event(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_event::v1::Request>,
) -> Result<RumaResponse<get_event::v1::Response>> {
    let pdu = reads::event(&app, &origin, request.event_id.as_str()).await?;
    Ok(RumaResponse(get_event::v1::Response::new(
        app.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        raw(&pdu)?,
    )))
}

async fn event_auth(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_event_authorization::v1::Request>,
) -> Result<RumaResponse<get_event_authorization::v1::Response>> {
    let room_id = request.room_id;
    let stored = reads::readable_event(&app, &origin, &room_id, request.event_id.as_str()).await?;
    let chain = state_before::auth_chain_ids(&app, &room_id, &[stored.event_id]).await?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(
        raws(state_before::jsons(&app, &chain).await?)?,
    )))
}

async fn state_ids(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_room_state_ids::v1::Request>,
) -> Result<RumaResponse<get_room_state_ids::v1::Response>> {
    let (ids, chain) = reads::state_at(
        &app,
        &origin,
        request.room_id.as_str(),
        request.event_id.as_str(),
    )
    .await?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(
        event_ids(chain)?,
        event_ids(ids)?,
    )))
}

async fn state(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_room_state::v1::Request>,
) -> Result<RumaResponse<get_room_state::v1::Response>> {
    let (ids, chain) = reads::state_at(
        &app,
        &origin,
        request.room_id.as_str(),
        request.event_id.as_str(),
    )
    .await?;
    Ok(RumaResponse(get_room_state::v1::Response::new(
        raws(state_before::jsons(&app, &chain).await?)?,
        raws(state_before::jsons(&app, &ids).await?)?,
    )))
}

/// A stored PDU as the raw JSON ruma's responses carry.
fn raw(pdu: &Value) -> Result<Box<RawJsonValue>> {
    Ok(serde_json::value::to_raw_value(pdu).map_err(|e| anyhow::anyhow!("PDU JSON: {e}"))?)
}

fn raws(pdus: Vec<Value>) -> Result<Vec<Box<RawJsonValue>>> {
    pdus.iter().map(raw).collect()
}

/// Stored event IDs as ruma's type.
fn event_ids(ids: Vec<String>) -> Result<Vec<ruma::OwnedEventId>> {
    ids.iter()
        .map(|id| {
            EventId::parse(id).map_err(|e| anyhow::anyhow!("stored event ID {id}: {e}").into())
        })
        .collect()
}

/// Walks back from `latest_events` through `prev_events`, stopping at
/// `earliest_events`, returning at most `limit` events (oldest first).
// JSON: not yet ruma's type (issue #20).
async fn get_missing_events(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    fed: FedRequest,
) -> Result<Json<Value>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    // The room's server ACL first (in `ServerView::new`): a denied server
    // learns nothing, not even whether its body was right.
    let view = ServerView::new(&app, &fed.origin, &room_id).await?;
    let q: reads::MissingEvents = fed.json()?;
    view.require_in_room()?;
    let events = reads::missing_events(&app, view, &room_id, q).await?;
    Ok(Json(json!({ "events": events })))
}
