//! Events between servers: `PUT /send/{txnId}`, joins (`make_join`,
//! `send_join` v2 and the deprecated v1), invites (v2 and v1), leaves
//! (`make_leave`, `send_leave` v2 and v1), knocks, and reading the graph
//! (`/event`, `/event_auth`, `/state`, `/state_ids`, `/get_missing_events`).
//!
//! The deprecated v1 `send_join`, `send_leave` and `invite` (spec: "Joining
//! Rooms", "Leaving Rooms", "Inviting to a room"; v1 `send_join`/`send_leave`
//! removed in v1.18 but still sent by older servers) answer `[200, {…}]`, a
//! historical accident kept on the wire.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{post, put},
};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, RoomId,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        membership::{
            RawStrippedState, create_invite, create_join_event, create_knock_event,
            create_leave_event, prepare_join_event, prepare_knock_event, prepare_leave_event,
        },
        transactions::send_transaction_message,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue as RawJsonValue};

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
        .ruma::<prepare_join_event::v1::Request, _, _>(make_join)
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(send_join_v1),
        )
        .ruma::<create_join_event::v2::Request, _, _>(send_join)
        .route(
            "/_matrix/federation/v1/invite/{room_id}/{event_id}",
            put(invite_v1),
        )
        .ruma::<create_invite::v2::Request, _, _>(invite_v2)
        .ruma::<prepare_leave_event::v1::Request, _, _>(make_leave)
        .ruma::<prepare_knock_event::v1::Request, _, _>(make_knock)
        .ruma::<create_knock_event::v1::Request, _, _>(send_knock)
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(send_leave_v1),
        )
        .ruma::<create_leave_event::v2::Request, _, _>(send_leave)
        .ruma::<get_event::v1::Request, _, _>(get_event)
        .ruma::<get_backfill::v1::Request, _, _>(backfill)
        .ruma::<get_event_authorization::v1::Request, _, _>(event_auth)
        .ruma::<get_room_state_ids::v1::Request, _, _>(state_ids)
        .ruma::<get_room_state::v1::Request, _, _>(state)
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(get_missing_events),
        )
}

/// `PUT /v2/invite/{roomId}/{eventId}`: countersign an invite of one of our users.
async fn invite_v2(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<create_invite::v2::Request>,
) -> Result<RumaResponse<create_invite::v2::Response>> {
    let event = value(&request.event)?;
    let invite_room_state = request
        .invite_room_state
        .iter()
        .map(|s| serde_json::to_value(s).map_err(|e| Error::bad_json(e.to_string())))
        .collect::<Result<_>>()?;
    let incoming = invite::Incoming {
        api: invite::InviteApi::V2,
        room_version: request.room_version.as_str(),
        event: &event,
        invite_room_state,
    };
    let event =
        invite::receive(&app, &origin, &request.room_id, &request.event_id, incoming).await?;
    Ok(RumaResponse(create_invite::v2::Response::new(raw(&event)?)))
}

/// The answer of the deprecated v1 `invite` and `send_join` (inside `[200, …]`).
#[derive(Serialize)]
struct EventAnswer {
    event: Box<RawJsonValue>,
}

/// `PUT /v1/invite/{roomId}/{eventId}` (deprecated): the body is the event,
/// its stripped state in `unsigned.invite_room_state`; the room version is not
/// given, so it is taken to be "1" (the spec: "1" or "2", which differ only in
/// state resolution, not used here), as Synapse does. Not ruma's v1 type: its
/// request keeps only the event's content fields (the service checks and
/// countersigns the whole event), and its answer is `[200, event]` where the
/// spec has `[200, {"event": …}]`.
async fn invite_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<(u16, EventAnswer)>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::bad_json("Bad room ID"))?;
    let event_id = EventId::parse(&event_id).map_err(|_| Error::bad_json("Bad event ID"))?;
    acl::check(&app, room_id.as_str(), fed.origin.as_str()).await?;
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
    Ok(Json((
        200,
        EventAnswer {
            event: raw(&event)?,
        },
    )))
}

/// `GET /backfill/{roomId}?v=…&limit=…`: the given events and those before them,
/// newest (deepest) first, walking `prev_events`.
async fn backfill(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_backfill::v1::Request>,
) -> Result<RumaResponse<get_backfill::v1::Response>> {
    if request.v.is_empty() {
        return Err(Error::new(ErrorKind::MissingParam, "v is required"));
    }
    let from = request.v.iter().map(ToString::to_string).collect();
    let limit = usize::try_from(u64::from(request.limit)).unwrap_or(usize::MAX);
    let pdus = reads::backfill(&app, &origin, &request.room_id, from, limit).await?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        app.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    )))
}

async fn make_leave(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<prepare_leave_event::v1::Request>,
) -> Result<RumaResponse<prepare_leave_event::v1::Response>> {
    let template = resident::make_leave(&app, &origin, &request.room_id, &request.user_id).await?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(
        Some(template.room_version),
        raw(&template.event)?,
    )))
}

async fn make_knock(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<prepare_knock_event::v1::Request>,
) -> Result<RumaResponse<prepare_knock_event::v1::Response>> {
    let template = resident::make_knock(
        &app,
        &origin,
        &request.room_id,
        &request.user_id,
        &request.ver,
    )
    .await?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(
        template.room_version,
        raw(&template.event)?,
    )))
}

async fn send_knock(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<create_knock_event::v1::Request>,
) -> Result<RumaResponse<create_knock_event::v1::Response>> {
    let body = value(&request.pdu)?;
    let state =
        resident::send_knock(&app, &origin, &request.room_id, &request.event_id, &body).await?;
    let state = state
        .iter()
        .map(|pdu| Ok(RawStrippedState::Pdu(raw(pdu)?)))
        .collect::<Result<_>>()?;
    Ok(RumaResponse(create_knock_event::v1::Response::new(state)))
}

async fn send_leave(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<create_leave_event::v2::Request>,
) -> Result<RumaResponse<create_leave_event::v2::Response>> {
    let body = value(&request.pdu)?;
    resident::send_leave(&app, &origin, &request.room_id, &request.event_id, &body).await?;
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

/// An empty JSON object (inside the v1 `send_leave`'s `[200, {}]`).
#[derive(Serialize)]
struct Empty {}

/// `PUT /v1/send_leave/{roomId}/{eventId}` (deprecated): v2's, as `[200, {}]`
/// (ruma has no v1 type).
async fn send_leave_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<(u16, Empty)>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    resident::send_leave(&app, &fed.origin, &room_id, &event_id, &body).await?;
    Ok(Json((200, Empty {})))
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

fn path_event(event_id: &str) -> Result<ruma::OwnedEventId> {
    EventId::parse(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))
}

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// A `/send` transaction as it is read: leniently, unlike ruma's request
/// (which needs `origin`, `origin_server_ts` and `pdus`): senders leave out
/// `pdus` in EDU-only transactions (ruma's `compat-optional-txn-pdus`), and a
/// PDU that does not parse is dropped alone, not with the whole transaction.
#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    origin: Option<Value>,
    #[serde(default)]
    pdus: Option<Value>,
    #[serde(default)]
    edus: Option<Value>,
}

/// `PUT /send/{txnId}`: PDUs and EDUs. A retried transaction gets the reply
/// kept from the first time.
async fn send_transaction(
    State(app): State<AppState>,
    Path(txn_id): Path<String>,
    fed: FedRequest,
) -> Result<RumaResponse<send_transaction_message::v1::Response>> {
    if let Some(results) = reads::transaction_reply(&app, &fed.origin, &txn_id).await? {
        return Ok(RumaResponse(send_transaction_message::v1::Response::new(
            results,
        )));
    }
    let body: Transaction = fed.json()?;
    if body
        .origin
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|o| o != fed.origin.as_str())
    {
        return Err(Error::forbidden(
            "The transaction's origin is not the sender",
        ));
    }
    let array = |v: Option<Value>| match v {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let pdus = array(body.pdus);
    let edus = array(body.edus);
    if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction"
        )));
    }
    let mut results = reads::PduResults::new();
    for value in &pdus {
        let (event_id, outcome) = ingest::receive_pdu(&app, &fed.origin, value).await;
        let Some(event_id) = event_id else {
            tracing::info!(origin = %fed.origin, error = ?outcome.err(), "unparseable PDU dropped");
            continue;
        };
        let entry = match outcome {
            Ok(_) => Ok(()),
            // Rejected by the auth rules but handled: held in the room's graph,
            // as Synapse does, so nothing is reported (spec: no `error` means
            // the PDU was handled).
            Err(error) if ingest::held_as_rejected(&app, &event_id).await => {
                tracing::info!(origin = %fed.origin, %event_id, %error, "PDU rejected by the auth rules");
                Ok(())
            }
            Err(error) => {
                tracing::info!(origin = %fed.origin, %event_id, %error, "PDU rejected");
                Err(error)
            }
        };
        results.insert(event_id, entry);
    }
    for edu in &edus {
        crate::service::federation::edu::receive(&app, &fed.origin, edu).await;
    }
    reads::store_transaction_reply(&app, &fed.origin, &txn_id, &results).await?;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(
        results,
    )))
}

async fn make_join(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<prepare_join_event::v1::Request>,
) -> Result<RumaResponse<prepare_join_event::v1::Response>> {
    // No `ver`: ruma's request has the default, version 1 only.
    let template = resident::make_join(
        &app,
        &origin,
        &request.room_id,
        &request.user_id,
        &request.ver,
    )
    .await?;
    let mut response = prepare_join_event::v1::Response::new(raw(&template.event)?);
    response.room_version = Some(template.room_version);
    Ok(RumaResponse(response))
}

/// The `send_join` v2 answer. Not ruma's `RoomState`, which leaves out
/// `members_omitted` when false: it is always given, as Synapse does.
#[derive(Serialize)]
struct SendJoinAnswer {
    origin: ruma::OwnedServerName,
    state: Vec<Box<RawJsonValue>>,
    auth_chain: Vec<Box<RawJsonValue>>,
    members_omitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_in_room: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<Box<RawJsonValue>>,
}

/// `PUT /v2/send_join/{roomId}/{eventId}[?omit_members=true]`: the state
/// before the join and its auth chain; with `omit_members=true` (faster joins,
/// spec v1.6), without most membership events, with `members_omitted: true`
/// and `servers_in_room`. An `omit_members` other than `true` or `false` is
/// `M_INVALID_PARAM`, as Synapse answers.
async fn send_join(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<create_join_event::v2::Request>,
) -> Result<Json<SendJoinAnswer>> {
    let body = value(&request.pdu)?;
    let joined = resident::send_join(
        &app,
        &origin,
        &request.room_id,
        &request.event_id,
        &body,
        request.omit_members,
    )
    .await?;
    Ok(Json(SendJoinAnswer {
        origin: app.server_name.clone(),
        state: raws(joined.state)?,
        auth_chain: raws(joined.auth_chain)?,
        members_omitted: joined.servers_in_room.is_some(),
        servers_in_room: joined.servers_in_room,
        event: joined.event.as_ref().map(raw).transpose()?,
    }))
}

/// The v1 `send_join` answer (inside `[200, …]`).
#[derive(Serialize)]
struct SendJoinV1Answer {
    origin: ruma::OwnedServerName,
    state: Vec<Box<RawJsonValue>>,
    auth_chain: Vec<Box<RawJsonValue>>,
}

/// `PUT /v1/send_join/{roomId}/{eventId}` (deprecated): v2's checks and
/// answer, as `[200, {origin, state, auth_chain}]` (ruma has no v1 type).
async fn send_join_v1(
    State(app): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    fed: FedRequest,
) -> Result<Json<(u16, SendJoinV1Answer)>> {
    let room_id = acl_room(&app, &room_id, &fed.origin).await?;
    let event_id = path_event(&event_id)?;
    let body: Value = fed.json()?;
    let joined = resident::send_join(&app, &fed.origin, &room_id, &event_id, &body, false).await?;
    Ok(Json((
        200,
        SendJoinV1Answer {
            origin: app.server_name.clone(),
            state: raws(joined.state)?,
            auth_chain: raws(joined.auth_chain)?,
        },
    )))
}

async fn get_event(
    State(app): State<AppState>,
    FedRuma { origin, request }: FedRuma<get_event::v1::Request>,
) -> Result<RumaResponse<get_event::v1::Response>> {
    let pdu = reads::event(&app, &origin, request.event_id.as_str()).await?;
    Ok(RumaResponse(get_event::v1::Response::new(
        app.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
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

/// A PDU as the raw JSON ruma's responses carry.
fn raw(pdu: &impl Serialize) -> Result<Box<RawJsonValue>> {
    Ok(serde_json::value::to_raw_value(pdu).map_err(|e| anyhow::anyhow!("PDU JSON: {e}"))?)
}

/// A request's raw event as the JSON the service checks.
fn value(pdu: &RawJsonValue) -> Result<Value> {
    serde_json::from_str(pdu.get()).map_err(|e| Error::bad_json(format!("Invalid event: {e}")))
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
/// `earliest_events`, returning at most `limit` events (oldest first). The
/// body is read leniently, not as ruma's request (which needs
/// `earliest_events` and `latest_events`): SyTest sends `{}`, every field
/// with its default.
async fn get_missing_events(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    fed: FedRequest,
) -> Result<RumaResponse<get_missing_events::v1::Response>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    // The room's server ACL first (in `ServerView::new`): a denied server
    // learns nothing, not even whether its body was right.
    let view = ServerView::new(&app, &fed.origin, &room_id).await?;
    let q: reads::MissingEvents = fed.json()?;
    view.require_in_room()?;
    let events = reads::missing_events(&app, view, &room_id, q).await?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}
