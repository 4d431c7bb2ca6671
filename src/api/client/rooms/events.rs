//! Events: `PUT /rooms/{roomId}/send/{eventType}/{txnId}` (and Synapse's
//! `POST` without the txnId), `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`
//! (and `POST` without the txnId), `GET /rooms/{roomId}/event/{eventId}`,
//! `GET /rooms/{roomId}/messages` (spec: "Events").

use axum::{
    Router,
    extract::{Path, State},
    routing::post,
};
use ruma::{
    OwnedEventId, RoomId,
    api::{
        Direction,
        client::{
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::get_room_event,
        },
    },
};
use serde_json::{Map, Value};

use super::{parse_room_id, raw_object};
use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        json::JsonOrEmpty,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::{filter::EventFilter, pdu::NewEvent},
    error::{Error, Result},
    service::AppState,
    service::{client_event::raw, event, read, session::Session},
};

pub(super) fn router() -> Router<AppState> {
    let router = Router::new()
        .ruma::<send_message_event::v3::Request, _, _>(send)
        .ruma::<get_room_event::v3::Request, _, _>(get_event)
        .ruma::<redact_event::v3::Request, _, _>(redact)
        .ruma::<get_message_events::v3::Request, _, _>(messages);
    // Sending and redacting without a transaction ID: not in the spec (see the
    // handlers), so not in ruma; the paths of the `PUT`s without their last part.
    ["r0", "v3"].into_iter().fold(router, |router, version| {
        let base = format!("/_matrix/client/{version}/rooms/{{room_id}}");
        router
            .route(
                &format!("{base}/send/{{event_type}}"),
                post(send_without_txn),
            )
            .route(
                &format!("{base}/redact/{{event_id}}"),
                post(redact_without_txn),
            )
    })
}

async fn send(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<send_message_event::v3::Request>,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let content = raw_object(req.body.json().get(), "Event content")?;
    send_event(
        &app,
        &user,
        &req.room_id,
        req.event_type.to_string(),
        content,
        Some(req.txn_id.as_str()),
        req.timestamp,
    )
    .await
}

/// `POST /rooms/{roomId}/send/{eventType}`: the send without a transaction ID
/// that Synapse keeps from the pre-r0 API (so no idempotency; the spec has
/// only the `PUT` with one).
async fn send_without_txn(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Path((room_id, event_type)): Path<(String, String)>,
    crate::api::json::Json(content): crate::api::json::Json<Map<String, Value>>,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let room_id = parse_room_id(room_id)?;
    send_event(&app, &user, &room_id, event_type, content, None, None).await
}

async fn send_event(
    app: &AppState,
    user: &Session,
    room_id: &RoomId,
    kind: String,
    content: Map<String, Value>,
    txn_id: Option<&str>,
    ts: Option<ruma::MilliSecondsSinceUnixEpoch>,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let txn = txn_id.map(|t| (user.device_id.as_str(), t));
    if kind == "m.room.redaction" {
        // Allowed in every room version since v1.18 (spec: "Redactions",
        // client behaviour), with the event under `content.redacts`; held to
        // the same rule as /redact.
        let target = content
            .get("redacts")
            .and_then(Value::as_str)
            .and_then(|id| ruma::EventId::parse(id).ok())
            .ok_or_else(|| Error::bad_json("A redaction needs `redacts`: an event ID"))?;
        let event_id = event::redact(app, room_id, &user.user_id, &target, content, txn).await?;
        return Ok(RumaResponse(send_message_event::v3::Response::new(
            event_id,
        )));
    }
    let content = Value::Object(content);
    let event_id = event::send(
        app,
        room_id,
        &user.user_id,
        NewEvent {
            // Timestamp massaging: appservices only.
            origin_server_ts: ts.filter(|_| user.appservice.is_some()),
            kind,
            content,
            state_key: None,
            redacts: None,
        },
        txn,
    )
    .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(
        event_id,
    )))
}

async fn get_event(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_room_event::v3::Request>,
) -> Result<RumaResponse<get_room_event::v3::Response>> {
    let event = read::event(&app, &user, &req.room_id, req.event_id.as_str()).await?;
    Ok(RumaResponse(get_room_event::v3::Response::new(raw(&event))))
}

async fn redact(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<redact_event::v3::Request>,
) -> Result<RumaResponse<redact_event::v3::Response>> {
    let mut content = Map::new();
    if let Some(reason) = req.reason {
        content.insert("reason".into(), reason.into());
    }
    let event_id = event::redact(
        &app,
        &req.room_id,
        &user.user_id,
        &req.event_id,
        content,
        Some((user.device_id.as_str(), req.txn_id.as_str())),
    )
    .await?;
    Ok(RumaResponse(redact_event::v3::Response::new(event_id)))
}

/// `POST /rooms/{roomId}/redact/{eventId}`: the redaction without a
/// transaction ID that Synapse keeps from the pre-r0 API (the spec has only the
/// `PUT`); the body, with an optional `reason`, may be left out.
async fn redact_without_txn(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonOrEmpty(body): JsonOrEmpty,
) -> Result<RumaResponse<redact_event::v3::Response>> {
    let room_id = parse_room_id(room_id)?;
    let event_id =
        OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    let mut content = Map::new();
    match body.get("reason") {
        None => {}
        Some(Value::String(reason)) => {
            content.insert("reason".into(), reason.clone().into());
        }
        Some(_) => return Err(Error::bad_json("`reason` must be a string")),
    }
    let event_id = event::redact(&app, &room_id, &user.user_id, &event_id, content, None).await?;
    Ok(RumaResponse(redact_event::v3::Response::new(event_id)))
}

async fn messages(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_message_events::v3::Request>,
) -> Result<RumaResponse<get_message_events::v3::Response>> {
    // One room's timeline: `rooms` / `not_rooms` do not apply here.
    let filter = EventFilter {
        rooms: None,
        not_rooms: Vec::new(),
        ..EventFilter::from_room_event_filter(&req.filter)
    };
    let lazy = filter.lazy_load_members;
    let limit = filter.limit.unwrap_or(u64::from(req.limit) as usize);
    let page = read::messages(
        &app,
        &user,
        &req.room_id,
        req.from.as_deref(),
        req.to.as_deref(),
        req.dir == Direction::Backward,
        limit,
        lazy,
        &filter,
    )
    .await?;
    let mut body = get_message_events::v3::Response::new();
    body.start = page.start;
    body.end = page.end.map(|end| end.to_string());
    body.chunk = page.chunk;
    // Left out when empty, as before.
    body.state = page.state;
    Ok(RumaResponse(body))
}
