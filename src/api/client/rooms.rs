//! Rooms, membership, events and reading:
//! `POST /createRoom`; `POST /join/{roomIdOrAlias}`, `POST /rooms/{roomId}/join`,
//! `…/leave`, `…/forget`, `…/invite`, `…/kick`, `…/ban`, `…/unban`, `POST /knock/{roomIdOrAlias}`;
//! `PUT /rooms/{roomId}/send/{eventType}/{txnId}` (and Synapse's `POST` without
//! the txnId), `PUT/GET /rooms/{roomId}/state/{eventType}/{stateKey}`,
//! `GET /rooms/{roomId}/state`, `GET /rooms/{roomId}/event/{eventId}`,
//! `PUT /rooms/{roomId}/redact/{eventId}/{txnId}` (and `POST` without the txnId),
//! `GET /rooms/{roomId}/messages`,
//! `GET /rooms/{roomId}/members`, `GET /rooms/{roomId}/joined_members`, `GET /joined_rooms`;
//! aliases: `PUT/GET/DELETE /directory/room/{roomAlias}`, `GET /rooms/{roomId}/aliases`
//! (spec: "Rooms", "Room membership", "Events").

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::post,
};
use ruma::{
    OwnedEventId, OwnedRoomAliasId, OwnedRoomId, RoomId, RoomOrAliasId,
    api::{
        Direction,
        client::{
            alias::{create_alias, delete_alias, get_alias},
            knock::knock_room,
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
                join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room,
                unban_user,
            },
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{aliases, create_room, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
    },
};
use serde_json::{Map, Value};

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        json::JsonOrEmpty,
        ruma::{RouterExt, Ruma, RumaResponse, RumaWithObject},
    },
    domain::{filter::EventFilter, pdu::NewEvent},
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{
        client_event::raw,
        directory, event,
        membership::{self, Change},
        read,
        room::{self, CreateRoom, Preset},
        session::Session,
        third_party_invite::{self, Invite3pid},
    },
};

pub fn router() -> Router<AppState> {
    let router = Router::new()
        .ruma::<create_room::v3::Request, _, _>(create)
        .ruma::<join_room_by_id::v3::Request, _, _>(join_by_id)
        .ruma::<join_room_by_id_or_alias::v3::Request, _, _>(join_by_id_or_alias)
        .ruma::<leave_room::v3::Request, _, _>(leave)
        .ruma::<forget_room::v3::Request, _, _>(forget)
        .ruma::<invite_user::v3::Request, _, _>(invite)
        .ruma::<kick_user::v3::Request, _, _>(kick)
        .ruma::<ban_user::v3::Request, _, _>(ban)
        .ruma::<unban_user::v3::Request, _, _>(unban)
        .ruma::<knock_room::v3::Request, _, _>(knock)
        .ruma::<send_message_event::v3::Request, _, _>(send)
        .ruma_empty_last::<send_state_event::v3::Request, _, _>(send_state)
        .ruma_empty_last::<get_state_event_for_key::v3::Request, _, _>(get_state_for_key)
        .ruma::<get_state_events::v3::Request, _, _>(get_state)
        .ruma::<get_room_event::v3::Request, _, _>(get_event)
        .ruma::<redact_event::v3::Request, _, _>(redact)
        .ruma::<get_message_events::v3::Request, _, _>(messages)
        .ruma::<get_member_events::v3::Request, _, _>(members)
        .ruma::<joined_members::v3::Request, _, _>(joined_members)
        .ruma::<joined_rooms::v3::Request, _, _>(joined_rooms)
        .ruma::<create_alias::v3::Request, _, _>(put_alias)
        .ruma::<get_alias::v3::Request, _, _>(get_alias)
        .ruma::<delete_alias::v3::Request, _, _>(remove_alias)
        .ruma::<aliases::v3::Request, _, _>(room_aliases);
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

fn raw_object(json: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object"))),
    }
}

async fn create(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<create_room::v3::Request>,
) -> Result<RumaResponse<create_room::v3::Response>> {
    let invite_3pid: Vec<Invite3pid> = req.invite_3pid.iter().map(invite_3pid).collect();
    let mut initial_state = Vec::new();
    for raw in &req.initial_state {
        let ev = raw_object(raw.json().get(), "initial_state event")?;
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event needs a type"))?;
        let key = ev
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = ev
            .get("content")
            .filter(|c| c.is_object())
            .cloned()
            .ok_or_else(|| Error::bad_json("initial_state event needs content"))?;
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let creation_content = match &req.creation_content {
        Some(raw) => {
            let mut content = raw_object(raw.json().get(), "creation_content")?;
            // A space is a room with `type: m.space`; keep what the client sent.
            if let Some(Value::String(t)) = content.get("type")
                && t.is_empty()
            {
                content.remove("type");
            }
            Some(content)
        }
        None => None,
    };
    let preset = req.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(Error::bad_json(format!("Unknown preset {other}"))),
    });
    let room_id = room::create(
        &app,
        &user.user_id,
        CreateRoom {
            room_version: req.room_version,
            preset: preset.transpose()?,
            public: req.visibility == ruma::api::client::room::Visibility::Public,
            creation_content,
            power_level_content_override: match &req.power_level_content_override {
                Some(raw) => Some(raw_object(
                    raw.json().get(),
                    "power_level_content_override",
                )?),
                None => None,
            },
            initial_state,
            name: req.name,
            topic: req.topic,
            room_alias_name: req.room_alias_name,
            invite: req.invite,
            is_direct: req.is_direct,
        },
    )
    .await?;
    // As on Synapse, invites by address follow the room's creation, one by one.
    for invite in &invite_3pid {
        third_party_invite::invite(&app, &user.user_id, &room_id, invite).await?;
    }
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

fn invite_3pid(invite: &ruma::api::client::membership::Invite3pid) -> Invite3pid {
    Invite3pid {
        id_server: invite.id_server.clone(),
        id_access_token: invite.id_access_token.clone(),
        medium: invite.medium.as_str().to_owned(),
        address: invite.address.clone(),
    }
}

/// A room ID, or an alias resolved (over federation for remote aliases), with
/// the servers the alias names as resident.
async fn resolve_with_servers(
    app: &AppState,
    id: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    match <&RoomId>::try_from(id) {
        Ok(room_id) => Ok((room_id.to_owned(), Vec::new())),
        Err(alias) => directory::resolve(app, alias).await,
    }
}

async fn join_by_id(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    RumaWithObject(req, body): RumaWithObject<join_room_by_id::v3::Request>,
) -> Result<RumaResponse<join_room_by_id::v3::Response>> {
    if let Some(signed) = body.get("third_party_signed") {
        third_party_invite::join_signed(&app, &user.user_id, &req.room_id, signed).await?;
    }
    let content = membership::JoinContent::from_body(body);
    let room_id = membership::join_via(&app, &user.user_id, &req.room_id, content, &[]).await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(room_id)))
}

async fn join_by_id_or_alias(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    RumaWithObject(req, body): RumaWithObject<join_room_by_id_or_alias::v3::Request>,
) -> Result<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let (room_id, mut servers) = resolve_with_servers(&app, &req.room_id_or_alias).await?;
    servers.extend(req.via);
    if let Some(signed) = body.get("third_party_signed") {
        third_party_invite::join_signed(&app, &user.user_id, &room_id, signed).await?;
    }
    let content = membership::JoinContent::from_body(body);
    let room_id = membership::join_via(&app, &user.user_id, &room_id, content, &servers).await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(
        room_id,
    )))
}

async fn knock(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<knock_room::v3::Request>,
) -> Result<RumaResponse<knock_room::v3::Response>> {
    let (room_id, mut servers) = resolve_with_servers(&app, &req.room_id_or_alias).await?;
    servers.extend(req.via);
    membership::knock(&app, &user.user_id, &room_id, req.reason, &servers).await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

async fn leave(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> Result<RumaResponse<leave_room::v3::Response>> {
    membership::leave(&app, &user.user_id, &req.room_id, req.reason).await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

async fn forget(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> Result<RumaResponse<forget_room::v3::Response>> {
    membership::forget(&app, &user.user_id, &req.room_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

async fn invite(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<invite_user::v3::Request>,
) -> Result<RumaResponse<invite_user::v3::Response>> {
    let recipient = match req.recipient {
        invite_user::v3::InvitationRecipient::UserId(recipient) => recipient,
        invite_user::v3::InvitationRecipient::ThirdPartyId(invite) => {
            third_party_invite::invite(&app, &user.user_id, &req.room_id, &invite_3pid(&invite))
                .await?;
            return Ok(RumaResponse(invite_user::v3::Response::new()));
        }
        _ => {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "An invite needs a user_id, or an id_server, medium and address",
            ));
        }
    };
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &recipient.user_id,
        Change::Invite,
        recipient.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

async fn kick(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<kick_user::v3::Request>,
) -> Result<RumaResponse<kick_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Kick,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

async fn ban(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<ban_user::v3::Request>,
) -> Result<RumaResponse<ban_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Ban,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

async fn unban(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<unban_user::v3::Request>,
) -> Result<RumaResponse<unban_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Unban,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
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

fn parse_room_id(room_id: String) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))
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

async fn members(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_member_events::v3::Request>,
) -> Result<RumaResponse<get_member_events::v3::Response>> {
    let chunk = read::members(
        &app,
        &user,
        &req.room_id,
        req.at.as_deref(),
        req.membership.as_ref().map(|m| m.as_str()),
        req.not_membership.as_ref().map(|m| m.as_str()),
    )
    .await?;
    Ok(RumaResponse(get_member_events::v3::Response::new(chunk)))
}

/// ruma's response leaves out a member's unset `display_name` and
/// `avatar_url`; they stay `null` (see [`read::JoinedMember`]).
#[derive(serde::Serialize)]
struct JoinedMembers {
    joined: std::collections::BTreeMap<String, read::JoinedMember>,
}

async fn joined_members(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<joined_members::v3::Request>,
) -> Result<Json<JoinedMembers>> {
    let joined = read::joined_members(
        &app,
        &user.user_id,
        user.appservice.as_deref(),
        &req.room_id,
    )
    .await?;
    Ok(Json(JoinedMembers { joined }))
}

async fn joined_rooms(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> Result<RumaResponse<joined_rooms::v3::Response>> {
    let rooms = read::joined_rooms(&app, &user.user_id).await?;
    Ok(RumaResponse(joined_rooms::v3::Response::new(
        rooms
            .into_iter()
            .filter_map(|r| OwnedRoomId::try_from(r).ok())
            .collect(),
    )))
}

async fn put_alias(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<create_alias::v3::Request>,
) -> Result<RumaResponse<create_alias::v3::Response>> {
    directory::create_alias(&app, &user, req.room_alias.as_str(), &req.room_id).await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

async fn get_alias(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> Result<RumaResponse<get_alias::v3::Response>> {
    let (room_id, servers) = directory::association(&app, &req.room_alias).await?;
    Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)))
}

async fn remove_alias(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> Result<RumaResponse<delete_alias::v3::Response>> {
    directory::delete_alias(&app, &user, req.room_alias.as_str()).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

async fn room_aliases(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> Result<RumaResponse<aliases::v3::Response>> {
    let aliases = directory::room_aliases(&app, &user.user_id, &req.room_id).await?;
    Ok(RumaResponse(aliases::v3::Response::new(
        aliases
            .into_iter()
            .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
            .collect(),
    )))
}
