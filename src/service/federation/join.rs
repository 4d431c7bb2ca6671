//! Joins over federation as the joining server: `make_join` → sign →
//! `send_join` (the exchange itself is [`super::handshake`]) → verify the
//! returned state and auth chain → persist → live, with partial state when
//! the resident answers a faster join.

use std::collections::HashMap;

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName,
    UserId,
};
use serde_json::Value;

use super::handshake::{Handshake, JoinError, handshake};
use super::ingest;
use crate::{
    domain::{
        auth,
        pdu::{self, Built, Pdu},
    },
    error::{Error, Result},
    service::AppState,
    service::event::{self, Placement, RoomCtx},
    storage::{events, rooms},
};

/// Joins `user` to a room hosted elsewhere, trying `servers` in order.
pub async fn remote_join(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    extra: crate::service::membership::JoinContent,
) -> Result<OwnedRoomId> {
    if !app.config.federation.enabled {
        return Err(Error::not_found("No known servers for this room"));
    }
    let mut last_error = String::from("no servers to join through");
    for server in servers.iter().filter(|s| *s != &app.server_name) {
        match join_via(app, user, room_id, server, &extra).await {
            Ok(()) => return Ok(room_id.to_owned()),
            Err(JoinError::Refused(e)) => return Err(e),
            Err(JoinError::Failed(e)) => {
                tracing::info!(%room_id, %server, error = %e, "remote join failed");
                last_error = format!("{server}: {e}");
            }
        }
    }
    Err(Error::not_found(format!(
        "No server could be joined through ({last_error})"
    )))
}

async fn join_via(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    server: &ServerName,
    content: &crate::service::membership::JoinContent,
) -> std::result::Result<(), JoinError> {
    let mut extra = serde_json::Map::new();
    if let Ok(p) = crate::service::profile::get(app, user).await {
        if let Some(name) = p.displayname {
            extra.insert("displayname".into(), name.into());
        }
        if let Some(url) = p.avatar_url {
            extra.insert("avatar_url".into(), url.into());
        }
    }
    content.apply_to(&mut extra);
    // Partial state only for a first join: a room already partial-stated
    // here is joined with the whole state (its snapshot is the one the
    // resync fills).
    let ask_partial = app.config.federation.faster_joins
        && !crate::storage::partial_state::is_partial(&app.db, room_id.as_str()).await?;
    let Handshake {
        mut object,
        event_id,
        version,
        rules,
        reply,
    } = handshake(app, server, room_id, user, "join", extra, ask_partial).await?;
    let partial = ask_partial && reply.members_omitted;
    // A restricted join comes back signed by the authorising server too.
    if let Some(signed) = reply.event.as_ref().filter(|e| e.is_object()) {
        let signed_object: CanonicalJsonObject =
            serde_json::from_value(signed.clone()).map_err(|e| JoinError::Failed(e.to_string()))?;
        if pdu::received_event_id(&rules, &signed_object).ok().as_ref() == Some(&event_id) {
            object = signed_object;
        }
    }

    // The room's state and auth chain: signatures, hashes and auth checked.
    // Each event is checked once (its signatures are the costly part: tens
    // of thousands of them in a big room's state).
    let mut all: Vec<Value> = reply.auth_chain;
    let chain_len = all.len();
    all.extend(reply.state);
    let accepted = ingest::store_auth_events(app, &rules, room_id, &all)
        .await
        .map_err(JoinError::Failed)?;
    let mut state_map: HashMap<(String, String), String> = HashMap::new();
    for (value, id) in all.iter().zip(&accepted).skip(chain_len) {
        let Some(id) = id else {
            continue;
        };
        // The type and state key of the event checked (kept by redaction,
        // should its content hash not match).
        if let (Some(kind), Some(state_key)) = (value["type"].as_str(), value["state_key"].as_str())
        {
            state_map.insert((kind.to_owned(), state_key.to_owned()), id.to_string());
        }
    }
    let create_key = ("m.room.create".to_owned(), String::new());
    if !partial && reply.members_omitted {
        return Err(JoinError::Failed(
            "the answer is a partial state we did not ask for".into(),
        ));
    }
    let Some(create_id) = state_map.get(&create_key).cloned() else {
        return Err(JoinError::Failed(
            "the returned state has no create event".into(),
        ));
    };

    let text = serde_json::to_string(&object).map_err(|e| JoinError::Failed(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &text).map_err(|e| JoinError::Failed(e.to_string()))?;
    let mut tx = app
        .db
        .begin()
        .await
        .map_err(|e| JoinError::Failed(e.to_string()))?;
    let creator = {
        let create = events::get(&mut *tx, &create_id)
            .await?
            .ok_or_else(|| JoinError::Failed("create event vanished".into()))?;
        create.sender
    };
    if rooms::get(&mut *tx, room_id.as_str()).await?.is_none() {
        rooms::insert(
            &mut *tx,
            room_id.as_str(),
            version.as_str(),
            &creator,
            app.clock.now_ms(),
        )
        .await?;
    }
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(JoinError::Failed("room row vanished".into()));
    };
    let state_before = event::write_snapshot(&mut tx, room_id.as_str(), state_map.clone()).await?;
    let before =
        ingest::auth_state_pdus(&mut tx, &rules, room_id, Some(state_before), &pdu).await?;
    let auth_ids: Vec<String> = ingest::auth_ids_of(&pdu, &rules)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let auth_events: HashMap<OwnedEventId, Pdu> = ingest::load_pdus(&mut *tx, room_id, &auth_ids)
        .await?
        .into_iter()
        .map(|(id, (p, _))| (id, p))
        .collect();
    auth::authorize_with(&rules, &pdu, &auth_events, &before)
        .map_err(|e| JoinError::Failed(format!("our join fails auth against the room: {e}")))?;
    // Everyone's membership as of the join, then the join itself.
    let members: Vec<(String, String)> = state_map
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|((_, k), id)| (k.clone(), id.clone()))
        .collect();
    let member_ids: Vec<String> = members.iter().map(|(_, id)| id.clone()).collect();
    let member_events = ingest::load_pdus(&mut *tx, room_id, &member_ids).await?;
    for (member, id) in &members {
        if let Some((p, _)) = EventId::parse(id).ok().and_then(|i| member_events.get(&i)) {
            let content: Value = serde_json::from_str(p.content.get()).unwrap_or_default();
            let membership = content["membership"].as_str().unwrap_or("leave");
            rooms::set_membership(&mut *tx, room_id.as_str(), member, membership, id, 0).await?;
        }
    }
    let group = event::new_state_group(
        &mut tx,
        room_id.as_str(),
        Some(state_before),
        ("m.room.member".to_owned(), user.to_string()),
        event_id.as_str(),
    )
    .await?;
    let old_extremities = room.extremities.clone();
    event::write_event(
        &mut tx,
        app,
        &mut room,
        Built {
            event_id: event_id.clone(),
            room_id: room_id.to_owned(),
            json: object,
            pdu,
        },
        Placement {
            state_group: Some(group),
            replaces_extremities: &old_extremities,
            current_state_group: Some(group),
            membership: true,
        },
    )
    .await?;
    if partial {
        let servers = resync_servers(app, server, &reply.servers_in_room);
        crate::storage::partial_state::insert(
            &mut *tx,
            &crate::storage::partial_state::PartialRoom {
                room_id: room_id.to_string(),
                join_event_id: event_id.to_string(),
                state_group: state_before,
                servers,
                attempts: 0,
            },
            app.clock.now_ms(),
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|e| JoinError::Failed(e.to_string()))?;
    event::release(room);
    if partial {
        app.metrics.partial_join(false);
        app.partial_state.wake.notify_one();
    }
    tracing::info!(%room_id, %server, %user, partial, "joined over federation");
    Ok(())
}

/// Where a partial state is completed from: the server joined through, then
/// the answer's `servers_in_room` (valid server names, ours left out, at
/// most [`super::partial_state::MAX_SERVERS`]).
fn resync_servers(app: &AppState, joined_through: &ServerName, listed: &[String]) -> Vec<String> {
    let mut servers = vec![joined_through.to_string()];
    for s in listed {
        let Ok(name) = ServerName::parse(s) else {
            continue;
        };
        if name != app.server_name && !servers.iter().any(|k| k == name.as_str()) {
            servers.push(name.to_string());
        }
        if servers.len() >= super::partial_state::MAX_SERVERS {
            break;
        }
    }
    servers
}
