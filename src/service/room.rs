//! Room creation (`POST /createRoom`), in one transaction: either the whole room
//! with its initial state exists afterwards, or nothing does.

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Map, Value, json};

use super::event::{self, RoomCtx};
use crate::{
    domain::{pdu::NewEvent, room_version, token},
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::rooms,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What `POST /createRoom` asks for, after the HTTP layer.
pub struct CreateRoom {
    pub room_version: Option<RoomVersionId>,
    pub preset: Option<Preset>,
    pub public: bool,
    pub creation_content: Option<Map<String, Value>>,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub room_alias_name: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
}

pub async fn create(app: &AppState, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
    let version = match req.room_version {
        Some(v) if room_version::is_supported(&v) => v,
        Some(v) => {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {v} is not supported"),
            ));
        }
        None => RoomVersionId::try_from(app.config.rooms.default_version.as_str())
            .map_err(|e| anyhow::anyhow!("configured default room version: {e}"))?,
    };
    let preset = req.preset.unwrap_or(if req.public {
        Preset::PublicChat
    } else {
        Preset::PrivateChat
    });
    let alias = match &req.room_alias_name {
        Some(local) => {
            if local.is_empty() || local.contains(':') || local.contains(char::is_whitespace) {
                return Err(Error::new(
                    ErrorKind::InvalidParam,
                    "Invalid room_alias_name",
                ));
            }
            let alias = format!("#{local}:{}", app.server_name);
            if ruma::RoomAliasId::parse(&alias).is_err() {
                return Err(Error::new(
                    ErrorKind::InvalidParam,
                    "Invalid room_alias_name",
                ));
            }
            if super::directory::resolve_local(app, &alias)
                .await?
                .is_some()
            {
                return Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"));
            }
            Some(alias)
        }
        None => None,
    };
    let mut room = RoomCtx::new_room(version.clone())?;
    let v12 = room.rules.authorization.room_create_event_id_as_room_id;
    let mut tx = app.db.begin().await?;

    // 1. m.room.create. Before v12 the room ID is chosen here; in v12 it derives
    //    from the create event's hash.
    if !v12 {
        let room_id = RoomId::parse(format!("!{}:{}", token::random_string(18), app.server_name))
            .map_err(|e| anyhow::anyhow!("generated room id: {e}"))?;
        room.room_id = Some(room_id);
    }
    let mut create_content = req.creation_content.unwrap_or_default();
    create_content.insert("room_version".into(), version.as_str().into());
    if !room.rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), creator.as_str().into());
    } else {
        create_content.remove("creator");
    }
    let created = event::append_first(&mut tx, app, &mut room, creator, create_content).await?;
    let room_id = room.room_id().to_owned();
    rooms::insert(
        &mut *tx,
        room_id.as_str(),
        version.as_str(),
        creator.as_str(),
        app.clock.now_ms(),
    )
    .await?;
    let _ = created;

    // 2. The creator joins.
    let state = |kind: &str, key: &str, content: Value| NewEvent {
        origin_server_ts: None,
        kind: kind.into(),
        content,
        state_key: Some(key.into()),
        redacts: None,
    };
    let mut join = json!({ "membership": "join" });
    super::profile::decorate(&mut tx, creator.as_str(), &mut join).await?;
    event::append(
        &mut tx,
        app,
        &mut room,
        creator,
        state("m.room.member", creator.as_str(), join),
    )
    .await?;

    // 3. Power levels: defaults for the preset, then the override.
    let mut power = default_power_levels(creator, preset, &req.invite, v12);
    if let Some(overrides) = req.power_level_content_override {
        for (k, v) in overrides {
            power.insert(k, v);
        }
    }
    event::append(
        &mut tx,
        app,
        &mut room,
        creator,
        state("m.room.power_levels", "", Value::Object(power)),
    )
    .await?;

    // 4. Canonical alias.
    if let Some(alias) = &alias {
        event::append(
            &mut tx,
            app,
            &mut room,
            creator,
            state("m.room.canonical_alias", "", json!({ "alias": alias })),
        )
        .await?;
    }

    // 5-7. Preset state, unless initial_state sets the same (type, key).
    let mut preset_state: BTreeMap<(String, String), Value> = BTreeMap::new();
    let join_rule = if preset == Preset::PublicChat {
        "public"
    } else {
        "invite"
    };
    preset_state.insert(
        ("m.room.join_rules".into(), String::new()),
        json!({ "join_rule": join_rule }),
    );
    preset_state.insert(
        ("m.room.history_visibility".into(), String::new()),
        json!({ "history_visibility": "shared" }),
    );
    if preset != Preset::PublicChat {
        preset_state.insert(
            ("m.room.guest_access".into(), String::new()),
            json!({ "guest_access": "can_join" }),
        );
    }
    for (kind, key, content) in &req.initial_state {
        if kind == "m.room.create" || kind == "m.room.power_levels" && key.is_empty() {
            // The spec gives these their own parameters; silently taking them from
            // initial_state would bypass the checks above.
            if kind == "m.room.create" {
                return Err(Error::bad_json(
                    "m.room.create cannot be set in initial_state",
                ));
            }
        }
        preset_state.insert((kind.clone(), key.clone()), content.clone());
    }
    for ((kind, key), content) in preset_state {
        event::append(
            &mut tx,
            app,
            &mut room,
            creator,
            state(&kind, &key, content),
        )
        .await?;
    }

    // 8. Name and topic.
    if let Some(name) = req.name {
        event::append(
            &mut tx,
            app,
            &mut room,
            creator,
            state("m.room.name", "", json!({ "name": name })),
        )
        .await?;
    }
    if let Some(topic) = req.topic {
        let content = json!({
            "topic": topic,
            "m.topic": [{ "mimetype": "text/plain", "body": topic }],
        });
        event::append(
            &mut tx,
            app,
            &mut room,
            creator,
            state("m.room.topic", "", content),
        )
        .await?;
    }

    // 9. Invites: local ones now; remote ones once the room exists (their servers
    // countersign them), as Synapse does: a failing remote server does not fail
    // the creation.
    let (local_invites, remote_invites): (Vec<_>, Vec<_>) = req
        .invite
        .iter()
        .partition(|u| u.server_name() == app.server_name);
    for invitee in local_invites {
        let mut content = json!({ "membership": "invite" });
        if req.is_direct {
            content["is_direct"] = true.into();
        }
        if invitee.server_name() == app.server_name {
            super::profile::decorate(&mut tx, invitee.as_str(), &mut content).await?;
        }
        event::append(
            &mut tx,
            app,
            &mut room,
            creator,
            state("m.room.member", invitee.as_str(), content),
        )
        .await?;
    }

    if let Some(alias) = &alias {
        super::directory::insert_alias(&mut tx, alias, &room_id, creator).await?;
    }
    if req.public {
        rooms::set_published(&mut *tx, room_id.as_str(), true).await?;
    }
    tx.commit().await?;
    event::release(room);
    tracing::info!(room_id = %room_id, %version, "room created");
    for invitee in remote_invites {
        let change = super::membership::Change::Invite;
        if let Err(e) =
            super::membership::change(app, creator, &room_id, invitee, change, None, req.is_direct)
                .await
        {
            tracing::info!(%room_id, %invitee, error = %e, "remote invite failed");
        }
    }
    Ok(room_id)
}

fn default_power_levels(
    creator: &UserId,
    preset: Preset,
    invitees: &[OwnedUserId],
    v12: bool,
) -> Map<String, Value> {
    let mut users = Map::new();
    // v12: creators have infinite power and must not be listed.
    if !v12 {
        users.insert(creator.to_string(), 100.into());
    }
    if preset == Preset::TrustedPrivateChat {
        for invitee in invitees {
            users.insert(invitee.to_string(), 100.into());
        }
    }
    let invite = if preset == Preset::PublicChat { 50 } else { 0 };
    let content = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": invite,
        "historical": 100,
        "notifications": { "room": 50 },
    });
    match content {
        Value::Object(map) => map,
        _ => unreachable!("literal object"),
    }
}
