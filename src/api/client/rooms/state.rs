//! State: `PUT/GET /rooms/{roomId}/state/{eventType}/{stateKey}`,
//! `GET /rooms/{roomId}/state` (spec: "Events", state).

use axum::{Router, extract::State};
use ruma::{
    RoomId,
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
};
use serde_json::Value;

use super::raw_object;
use crate::{
    api::{
        auth::GuestOk,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::pdu::NewEvent,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{directory, event, read},
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .ruma_empty_last::<send_state_event::v3::Request, _, _>(send_state)
        .ruma_empty_last::<get_state_event_for_key::v3::Request, _, _>(get_state_for_key)
        .ruma::<get_state_events::v3::Request, _, _>(get_state)
}

async fn send_state(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<send_state_event::v3::Request>,
) -> Result<RumaResponse<send_state_event::v3::Response>> {
    let kind = req.event_type.to_string();
    if kind == "m.room.create" {
        return Err(Error::forbidden("m.room.create cannot be sent"));
    }
    let content = Value::Object(raw_object(req.body.json().get(), "Event content")?);
    if kind == "m.room.canonical_alias" {
        check_canonical_alias(&app, &req.room_id, &content).await?;
    }
    let event_id = event::send(
        &app,
        &req.room_id,
        &user.user_id,
        NewEvent {
            // Timestamp massaging: appservices only.
            origin_server_ts: req.timestamp.filter(|_| user.appservice.is_some()),
            kind,
            content,
            state_key: Some(req.state_key),
            redacts: None,
        },
        None,
    )
    .await?;
    Ok(RumaResponse(send_state_event::v3::Response::new(event_id)))
}

/// Local aliases in `m.room.canonical_alias` must point at this room (spec:
/// "m.room.canonical_alias", `M_BAD_ALIAS`).
async fn check_canonical_alias(app: &AppState, room_id: &RoomId, content: &Value) -> Result<()> {
    let mut aliases: Vec<&str> = content["alt_aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(alias) = content["alias"].as_str() {
        aliases.push(alias);
    }
    for alias in aliases {
        if ruma::RoomAliasId::parse(alias).is_err() {
            return Err(Error::invalid_param(format!("Invalid alias {alias}")));
        }
        if alias.ends_with(&format!(":{}", app.server_name))
            && directory::resolve_local(app, alias).await?.as_deref() != Some(room_id)
        {
            return Err(Error::new(
                ErrorKind::BadAlias,
                format!("{alias} does not point to this room"),
            ));
        }
    }
    Ok(())
}

async fn get_state_for_key(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_state_event_for_key::v3::Request>,
) -> Result<RumaResponse<get_state_event_for_key::v3::Response>> {
    let event = read::state_event(
        &app,
        &user,
        &req.room_id,
        &req.event_type.to_string(),
        &req.state_key,
    )
    .await?;
    let body = match req.format {
        get_state_event_for_key::v3::StateEventFormat::Event => &event,
        _ => &event["content"],
    };
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(
        serde_json::value::to_raw_value(body).map_err(|e| Error::Internal(e.into()))?,
    )))
}

async fn get_state(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_state_events::v3::Request>,
) -> Result<RumaResponse<get_state_events::v3::Response>> {
    let state = read::room_state(&app, &user, &req.room_id).await?;
    Ok(RumaResponse(get_state_events::v3::Response::new(state)))
}
