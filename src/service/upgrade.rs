//! Room upgrades (`POST /rooms/{roomId}/upgrade`, spec: "Room Upgrades"):
//!
//! 1. Check the user may send `m.room.tombstone` in the old room.
//! 2. Create the new room (one transaction): create event with `predecessor`, the
//!    upgrader's join, then the old room's transferable state (power levels, join
//!    rules, history visibility, guest access, name, topic, avatar, encryption,
//!    server ACLs) and its bans.
//! 3. In the old room: the tombstone (before v12 built first, so that the
//!    create event's `predecessor` names it; stored in the same transaction as
//!    the new room), then power levels that stop ordinary members from talking
//!    or inviting.
//! 4. Move the directory listing, local aliases and the canonical alias (and
//!    `alt_aliases`) to the new room; the old room's canonical alias is cleared.
//! 5. Each local member's tags and `m.direct` entry for the old room are
//!    copied to the new one.
//!
//! A server that learns of an upgrade by joining the new room over federation
//! does the same for itself ([`carry_over_on_join`]), as Synapse does: the
//! old room's directory listing and local aliases move, and the joining
//! user's tags and `m.direct` entry follow.

use std::collections::HashMap;

use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::event::{self, RoomCtx};
use crate::{
    domain::{pdu::NewEvent, room_version, token},
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{rooms, state},
};

const TRANSFERRED: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

pub async fn upgrade(
    app: &AppState,
    user: &UserId,
    old_room: &RoomId,
    new_version: RoomVersionId,
    additional_creators: Vec<String>,
) -> Result<OwnedRoomId> {
    if !room_version::is_supported(&new_version) {
        return Err(Error::new(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {new_version} is not supported"),
        ));
    }
    // An unknown room is 404, a known one the user is not in 403 (as Synapse).
    if rooms::get(&app.db, old_room.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    if rooms::membership(&app.db, old_room.as_str(), user.as_str())
        .await?
        .as_deref()
        != Some("join")
    {
        return Err(Error::forbidden("You are not in this room"));
    }

    // 1. Read the old room's state; check the tombstone would be allowed.
    let mut tx = app.db.begin().await?;
    let Some(old) = RoomCtx::load_unlocked(&mut tx, old_room).await? else {
        return Err(Error::forbidden("Unknown room"));
    };
    let group = old
        .state_group
        .ok_or_else(|| anyhow::anyhow!("room without state"))?;
    let full: HashMap<(String, String), String> = state::full_state(&mut *tx, group)
        .await?
        .into_iter()
        .collect();
    let mut wanted: Vec<(String, String)> = full
        .keys()
        .filter(|(t, _)| {
            TRANSFERRED.contains(&t.as_str())
                || [
                    "m.room.power_levels",
                    "m.room.create",
                    "m.room.member",
                    "m.room.canonical_alias",
                ]
                .contains(&t.as_str())
        })
        .cloned()
        .collect();
    wanted.sort();
    let old_state = event::state_events(&mut tx, Some(group), &wanted).await?;
    let creators = super::read::creators(&mut tx, &old).await?;
    tx.commit().await?;

    let content = |key: &(String, String)| -> Option<Value> {
        old_state
            .get(key)
            .and_then(|p| serde_json::from_str(p.content.get()).ok())
    };
    let power_key = ("m.room.power_levels".to_owned(), String::new());
    let mut power = content(&power_key).unwrap_or_else(|| json!({}));
    let users_default = power["users_default"].as_i64().unwrap_or(0);
    let is_old_creator = old.rules.authorization.explicitly_privilege_room_creators
        && creators.iter().any(|c| c == user.as_str());
    let my_level = if is_old_creator {
        i64::MAX
    } else {
        power["users"][user.as_str()]
            .as_i64()
            .unwrap_or(users_default)
    };
    let tombstone_level = power["events"]["m.room.tombstone"]
        .as_i64()
        .unwrap_or(power["state_default"].as_i64().unwrap_or(50));
    if my_level < tombstone_level {
        return Err(Error::forbidden("You may not upgrade this room"));
    }

    // 2. The new room.
    let mut room = RoomCtx::new_room(new_version.clone())?;
    let v12 = room.rules.authorization.explicitly_privilege_room_creators;
    if !room.rules.authorization.room_create_event_id_as_room_id {
        room.room_id = Some(
            RoomId::parse(format!("!{}:{}", token::random_string(18), app.server_name))
                .map_err(|e| anyhow::anyhow!("generated room id: {e}"))?,
        );
    }
    let mut tx = app.db.begin().await?;
    let Some(mut old_ctx) = RoomCtx::lock(&mut tx, old_room).await? else {
        return Err(Error::forbidden("Unknown room"));
    };
    let tombstone_event = |replacement: &RoomId| NewEvent {
        origin_server_ts: None,
        kind: "m.room.tombstone".into(),
        content: json!({ "body": "This room has been replaced", "replacement_room": replacement }),
        state_key: Some(String::new()),
        redacts: None,
    };
    // Where the new room's ID is known before its create event (before v12),
    // the tombstone is built first and the create event's `predecessor` names
    // it (as Synapse does; the spec lets v12+ leave `event_id` out, whose room
    // ID is the create event's own hash). It is stored after the new room,
    // all in one transaction.
    let mut tombstone = match &room.room_id {
        Some(new_id) => {
            Some(event::prepare(&mut tx, app, &old_ctx, user, tombstone_event(new_id)).await?)
        }
        None => None,
    };
    let old_create = content(&("m.room.create".to_owned(), String::new())).unwrap_or_default();
    let mut create = serde_json::Map::new();
    create.insert("room_version".into(), new_version.as_str().into());
    let predecessor = match &tombstone {
        Some(t) => json!({ "room_id": old_room, "event_id": t.event_id }),
        None => json!({ "room_id": old_room }),
    };
    create.insert("predecessor".into(), predecessor);
    if let Some(t) = old_create.get("type") {
        create.insert("type".into(), t.clone());
    }
    // A room closed to federation stays closed (as Synapse copies it).
    if let Some(federate) = old_create.get("m.federate") {
        create.insert("m.federate".into(), federate.clone());
    }
    if !room.rules.authorization.use_room_create_sender {
        create.insert("creator".into(), user.as_str().into());
    }
    if room.rules.authorization.additional_room_creators && !additional_creators.is_empty() {
        create.insert("additional_creators".into(), json!(additional_creators));
    }

    // Power levels for the new room: creators of a v12 room must not be listed;
    // before v12 the upgrader needs an explicit level to set the room up.
    if let Some(users) = power["users"].as_object_mut() {
        if v12 {
            users.remove(user.as_str());
            for c in &additional_creators {
                users.remove(c);
            }
        } else {
            // As Synapse does, the upgrader gets (at least) 100 in the new room.
            let current = users
                .get(user.as_str())
                .and_then(Value::as_i64)
                .unwrap_or(users_default);
            users.insert(user.to_string(), current.max(100).into());
        }
    } else if !v12 {
        power["users"] = json!({ user.as_str(): 100 });
    }

    event::append_first(&mut tx, app, &mut room, user, create).await?;
    let new_room = room.room_id().to_owned();
    rooms::insert(
        &mut *tx,
        new_room.as_str(),
        new_version.as_str(),
        user.as_str(),
        app.clock.now_ms(),
    )
    .await?;
    let state_event = |kind: &str, key: &str, content: Value| NewEvent {
        origin_server_ts: None,
        kind: kind.into(),
        content,
        state_key: Some(key.into()),
        redacts: None,
    };
    let mut join = json!({ "membership": "join" });
    super::profile::decorate(&mut tx, user.as_str(), &mut join).await?;
    event::append(
        &mut tx,
        app,
        &mut room,
        user,
        state_event("m.room.member", user.as_str(), join),
    )
    .await?;
    event::append(
        &mut tx,
        app,
        &mut room,
        user,
        state_event("m.room.power_levels", "", power.clone()),
    )
    .await?;
    for kind in TRANSFERRED {
        if let Some(c) = content(&((*kind).to_owned(), String::new())) {
            event::append(&mut tx, app, &mut room, user, state_event(kind, "", c)).await?;
        }
    }
    // No guest access in the old room is guest access `forbidden`: said
    // explicitly in the new one, which is what the room had (Synapse's
    // upgrades always carry an `m.room.guest_access`, and clients and SyTest
    // wait for one; Synapse's is its preset's `can_join`, which would open a
    // closed room to guests).
    if content(&("m.room.guest_access".to_owned(), String::new())).is_none() {
        event::append(
            &mut tx,
            app,
            &mut room,
            user,
            state_event(
                "m.room.guest_access",
                "",
                json!({ "guest_access": "forbidden" }),
            ),
        )
        .await?;
    }
    for ((kind, key), pdu) in &old_state {
        if kind == "m.room.member" {
            let c: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
            if c["membership"] == "ban" {
                event::append(
                    &mut tx,
                    app,
                    &mut room,
                    user,
                    state_event("m.room.member", key, json!({ "membership": "ban" })),
                )
                .await?;
            }
        }
    }
    // 3. The tombstone, then restricting the old room.
    let tombstone = match tombstone.take() {
        Some(built) => built,
        None => event::prepare(&mut tx, app, &old_ctx, user, tombstone_event(&new_room)).await?,
    };
    event::persist(&mut tx, app, &mut old_ctx, tombstone).await?;
    tx.commit().await?;
    event::release(room);
    event::release(old_ctx);

    let mut restricted = content(&power_key).unwrap_or_else(|| json!({}));
    let level = (users_default + 1).max(50);
    restricted["events_default"] = level.into();
    restricted["invite"] = level.into();
    if event::send(
        app,
        old_room,
        user,
        NewEvent {
            origin_server_ts: None,
            kind: "m.room.power_levels".into(),
            content: restricted,
            state_key: Some(String::new()),
            redacts: None,
        },
        None,
    )
    .await
    .is_err()
    {
        tracing::warn!(%old_room, "could not restrict the old room's power levels after an upgrade");
    }

    // 4. The directory listing moves to the new room.
    if rooms::is_published(&app.db, old_room.as_str()).await? == Some(true) {
        rooms::set_published(&app.db, new_room.as_str(), true).await?;
        rooms::set_published(&app.db, old_room.as_str(), false).await?;
    }

    // 5. Aliases follow the room.
    let aliases = rooms::aliases_of(&app.db, old_room.as_str()).await?;
    for alias in &aliases {
        rooms::delete_alias(&app.db, alias).await?;
        rooms::insert_alias(
            &app.db,
            alias,
            new_room.as_str(),
            user.as_str(),
            app.clock.now_ms(),
        )
        .await?;
    }
    if let Some(canonical) = content(&("m.room.canonical_alias".to_owned(), String::new()))
        && (canonical.get("alias").is_some() || canonical.get("alt_aliases").is_some())
    {
        let _ = event::send(
            app,
            &new_room,
            user,
            state_event("m.room.canonical_alias", "", canonical),
            None,
        )
        .await;
        // The old room no longer claims them (as Synapse clears it).
        let _ = event::send(
            app,
            old_room,
            user,
            state_event("m.room.canonical_alias", "", json!({})),
            None,
        )
        .await;
    }
    // 6. What each local member set for the old room follows them.
    for member in rooms::joined_users(&app.db, old_room.as_str()).await? {
        if let Ok(member) = UserId::parse(member.as_str())
            && member.server_name() == app.server_name
        {
            super::account_data::copy_to_upgraded_room(app, &member, old_room, &new_room).await?;
        }
    }
    tracing::info!(%old_room, %new_room, %new_version, "room upgraded");
    Ok(new_room)
}

/// The room `room_id` replaces: its create event's `predecessor.room_id`.
async fn predecessor(
    app: &AppState,
    room_id: &RoomId,
    group: Option<i64>,
) -> Result<Option<OwnedRoomId>> {
    let create = super::read::state_content(app, room_id, group, "m.room.create").await?;
    Ok(create.and_then(|c| RoomId::parse(c["predecessor"]["room_id"].as_str()?).ok()))
}

/// After a local `user` newly joined `room_id`: when it is an upgraded room
/// (its create event names a predecessor whose tombstone, in the state this
/// server holds, names it back) the user's tags and `m.direct` entry for the
/// predecessor follow. When
/// `server_first` (this server has just joined over federation), the old
/// room's directory listing and local aliases move to it too. `group` is the
/// room's state after the join, when the caller has it.
pub async fn carry_over_on_join(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    group: Option<i64>,
    server_first: bool,
) -> Result<()> {
    let Some(old_room) = predecessor(app, room_id, group).await? else {
        return Ok(());
    };
    // Anyone can create a room naming any room as its predecessor: only the
    // old room's own tombstone, in its current state here, makes this room
    // its replacement. Without it nothing moves (a forged predecessor must
    // not take our aliases, listing or users' tags).
    let tombstone = super::read::state_content(app, &old_room, None, "m.room.tombstone").await?;
    let replaced_by_this = tombstone.is_some_and(|t| t["replacement_room"] == room_id.as_str());
    if !replaced_by_this {
        return Ok(());
    }
    if server_first {
        if rooms::is_published(&app.db, old_room.as_str()).await? == Some(true) {
            rooms::set_published(&app.db, room_id.as_str(), true).await?;
            rooms::set_published(&app.db, old_room.as_str(), false).await?;
        }
        for alias in rooms::aliases_of(&app.db, old_room.as_str()).await? {
            let creator = rooms::alias_creator(&app.db, &alias)
                .await?
                .unwrap_or_else(|| user.to_string());
            rooms::delete_alias(&app.db, &alias).await?;
            rooms::insert_alias(
                &app.db,
                &alias,
                room_id.as_str(),
                &creator,
                app.clock.now_ms(),
            )
            .await?;
        }
    }
    super::account_data::copy_to_upgraded_room(app, user, &old_room, room_id).await
}
