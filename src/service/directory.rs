//! Room aliases (local ones; remote resolution arrives with federation).

use ruma::{OwnedRoomId, RoomId, UserId};

use super::session::Session;
use crate::{
    app::AppState,
    error::{Error, ErrorKind, Result},
    storage::{Postgres, Transaction, now_ms, rooms},
};

pub async fn resolve_local(app: &AppState, alias: &str) -> Result<Option<OwnedRoomId>> {
    let room = rooms::alias_room(&app.db, alias).await?;
    Ok(room.and_then(|r| RoomId::parse(r).ok()))
}

/// Resolves an alias: ours from the database, others' over federation. Returns
/// the room and the servers the alias's server names as resident.
pub async fn resolve(
    app: &AppState,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    if alias.server_name() == app.server_name || !app.config.federation.enabled {
        return resolve_local(app, alias.as_str())
            .await?
            .map(|r| (r, Vec::new()))
            .ok_or_else(|| crate::error::Error::not_found("Room alias not found"));
    }
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        form_urlencoded::byte_serialize(alias.as_str().as_bytes()).collect::<String>()
    );
    let body = app
        .federation
        .request_json(alias.server_name(), http::Method::GET, &path, None)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                crate::error::Error::not_found("Room alias not found")
            } else {
                crate::error::Error::not_found(format!("Room alias could not be resolved: {e}"))
            }
        })?;
    let room_id = body["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| crate::error::Error::not_found("Room alias not found"))?;
    let mut servers: Vec<ruma::OwnedServerName> = body["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().and_then(|s| ruma::ServerName::parse(s).ok()))
        .collect();
    servers.insert(0, alias.server_name().to_owned());
    Ok((room_id, servers))
}

/// Servers with joined members in a room.
pub async fn joined_servers(app: &AppState, room_id: &RoomId) -> Result<Vec<String>> {
    Ok(rooms::joined_servers(&app.db, room_id.as_str()).await?)
}

pub async fn insert_alias(
    tx: &mut Transaction<'_, Postgres>,
    alias: &str,
    room_id: &RoomId,
    creator: &UserId,
) -> Result<()> {
    if rooms::insert_alias(
        &mut **tx,
        alias,
        room_id.as_str(),
        creator.as_str(),
        now_ms(),
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"))
    }
}

/// `PUT /directory/room/{alias}`: local aliases, for rooms the user is joined to.
pub async fn create_alias(
    app: &AppState,
    user: &Session,
    alias: &str,
    room_id: &RoomId,
) -> Result<()> {
    if !alias.ends_with(&format!(":{}", app.server_name)) {
        return Err(Error::invalid_param(
            "Aliases can only be created on this server",
        ));
    }
    if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    if rooms::membership(&app.db, room_id.as_str(), user.user_id.as_str())
        .await?
        .as_deref()
        != Some("join")
    {
        return Err(Error::forbidden("You are not in this room"));
    }
    if rooms::insert_alias(
        &app.db,
        alias,
        room_id.as_str(),
        user.user_id.as_str(),
        now_ms(),
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Conflict,
            format!("Room alias {alias} already exists"),
        ))
    }
}

/// `DELETE /directory/room/{alias}`: by its creator or a server admin.
pub async fn delete_alias(app: &AppState, user: &Session, alias: &str) -> Result<()> {
    let Some(creator) = rooms::alias_creator(&app.db, alias).await? else {
        return Err(Error::not_found("Room alias not found"));
    };
    if creator != user.user_id.as_str() && !user.is_admin {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    let room_id = rooms::alias_room(&app.db, alias).await?;
    rooms::delete_alias(&app.db, alias).await?;
    if let Some(room_id) = room_id.and_then(|r| RoomId::parse(r).ok()) {
        drop_from_canonical_alias(app, &user.user_id, &room_id, alias).await?;
    }
    Ok(())
}

/// After an alias is deleted, the room's `m.room.canonical_alias` must stop
/// naming it (as `alias` or among `alt_aliases`), or clients keep showing and
/// resolving it. As Synapse does, the update is sent by the user who deleted
/// the alias; when they lack the power to send it (a server admin outside the
/// room, a creator who lost their power), the deletion stands and the event is
/// left as it is.
async fn drop_from_canonical_alias(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    alias: &str,
) -> Result<()> {
    let Some(group) = rooms::get(&app.db, room_id.as_str())
        .await?
        .and_then(|r| r.current_state_group)
    else {
        return Ok(());
    };
    let state = state_contents(app, group, &["m.room.canonical_alias"]).await?;
    let Some(serde_json::Value::Object(mut content)) = state.get("m.room.canonical_alias").cloned()
    else {
        return Ok(());
    };
    let mut changed = false;
    if content.get("alias").and_then(|a| a.as_str()) == Some(alias) {
        content.remove("alias");
        changed = true;
    }
    if let Some(serde_json::Value::Array(alt)) = content.get_mut("alt_aliases") {
        let before = alt.len();
        alt.retain(|a| a.as_str() != Some(alias));
        changed |= alt.len() != before;
        if alt.is_empty() {
            content.remove("alt_aliases");
        }
    }
    if !changed {
        return Ok(());
    }
    let sent = super::event::send(
        app,
        room_id,
        user,
        crate::domain::pdu::NewEvent {
            kind: "m.room.canonical_alias".to_owned(),
            content: serde_json::Value::Object(content),
            state_key: Some(String::new()),
            redacts: None,
        },
        None,
    )
    .await;
    match sent {
        Ok(_) => Ok(()),
        Err(Error::Matrix {
            kind: ErrorKind::Forbidden,
            message,
        }) => {
            tracing::info!(%room_id, %user, %message, "alias deleted; canonical alias event left as it is");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The content of the current state events of the given types (state key `""`)
/// at a state group, by type.
async fn state_contents(
    app: &AppState,
    group: i64,
    types: &[&str],
) -> Result<std::collections::HashMap<String, serde_json::Value>> {
    let keys: Vec<(String, String)> = types
        .iter()
        .map(|t| ((*t).to_owned(), String::new()))
        .collect();
    let entries = crate::storage::state::state_for_keys(&app.db, group, &keys).await?;
    let ids: Vec<String> = entries.iter().map(|(_, id)| id.clone()).collect();
    let mut out = std::collections::HashMap::new();
    for ev in crate::storage::events::get_many(&app.db, &ids).await? {
        let mut pdu: serde_json::Value = serde_json::from_str(&ev.json).unwrap_or_default();
        out.insert(ev.event_type, pdu["content"].take());
    }
    Ok(out)
}

/// `GET /rooms/{roomId}/aliases`: for those who may read the room's state.
pub async fn room_aliases(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<Vec<String>> {
    let mut viewer = super::read::Viewer::new(app, user, None, room_id).await?;
    viewer.readable_state_group().await?;
    Ok(rooms::aliases_of(&app.db, room_id.as_str()).await?)
}

/// The current power level of `user` in a room and the level needed to send a
/// state event of `event_type` (creators of v12 rooms rank above everyone).
async fn power(
    app: &AppState,
    room_id: &RoomId,
    user: &UserId,
    event_type: &str,
) -> Result<(i64, i64)> {
    let mut tx = app.db.begin().await?;
    let Some(room) = super::event::RoomCtx::lock_shared(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let keys = [("m.room.power_levels".to_owned(), String::new())];
    let levels = super::event::state_events(&mut tx, room.state_group, &keys).await?;
    let creators = super::read::creators(&mut tx, &room).await?;
    tx.commit().await?;
    if room.rules.authorization.explicitly_privilege_room_creators
        && creators.iter().any(|c| c == user.as_str())
    {
        return Ok((i64::MAX, 0));
    }
    let content: serde_json::Value = levels
        .get(&keys[0])
        .and_then(|p| serde_json::from_str(p.content.get()).ok())
        .unwrap_or_default();
    let users_default = content["users_default"].as_i64().unwrap_or(0);
    let mine = content["users"][user.as_str()]
        .as_i64()
        .unwrap_or(users_default);
    let needed = content["events"][event_type]
        .as_i64()
        .unwrap_or(content["state_default"].as_i64().unwrap_or(50));
    Ok((mine, needed))
}

/// `GET /directory/list/room/{roomId}`.
pub async fn visibility(app: &AppState, room_id: &RoomId) -> Result<bool> {
    rooms::is_published(&app.db, room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))
}

/// `PUT /directory/list/room/{roomId}`: room moderators (who may change the
/// canonical alias) and server admins.
pub async fn set_visibility(
    app: &AppState,
    user: &Session,
    room_id: &RoomId,
    public: bool,
) -> Result<()> {
    if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    if !user.is_admin {
        let joined = rooms::membership(&app.db, room_id.as_str(), user.user_id.as_str())
            .await?
            .as_deref()
            == Some("join");
        let (mine, needed) = power(app, room_id, &user.user_id, "m.room.canonical_alias").await?;
        if !joined || mine < needed {
            return Err(Error::forbidden(
                "You may not change this room's directory visibility",
            ));
        }
    }
    rooms::set_published(&app.db, room_id.as_str(), public).await?;
    Ok(())
}

/// `GET/POST /publicRooms`: published rooms, largest first, with their summaries;
/// `since` is an offset token; `filter` matches name, topic and alias.
pub async fn public_rooms(
    app: &AppState,
    limit: Option<usize>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<serde_json::Value> {
    let offset: usize = match since {
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
        None => 0,
    };
    let search = search.map(str::to_lowercase).filter(|s| !s.is_empty());
    let mut chunk = Vec::new();
    for (room_id, group, joined) in rooms::published(&app.db).await? {
        let Some(group) = group else { continue };
        let summary = summary(app, &room_id, group, joined).await?;
        if let Some(term) = &search {
            let hay = ["name", "topic", "canonical_alias"]
                .iter()
                .filter_map(|k| summary[*k].as_str())
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            if !hay.contains(term.as_str()) {
                continue;
            }
        }
        chunk.push(summary);
    }
    let total = chunk.len();
    let limit = limit.unwrap_or(usize::MAX).max(1);
    let page: Vec<_> = chunk.into_iter().skip(offset).take(limit).collect();
    let mut body = serde_json::json!({ "chunk": page, "total_room_count_estimate": total });
    if offset + limit < total {
        body["next_batch"] = format!("o{}", offset + limit).into();
    }
    if offset > 0 {
        body["prev_batch"] = format!("o{}", offset.saturating_sub(limit)).into();
    }
    Ok(body)
}

/// The state types a room summary is made of.
const SUMMARY_TYPES: &[&str] = &[
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.create",
    "m.room.encryption",
];

/// A room's public summary from its current state (a `/publicRooms` chunk).
pub async fn summary(
    app: &AppState,
    room_id: &str,
    group: i64,
    joined: i64,
) -> Result<serde_json::Value> {
    let state = state_contents(app, group, SUMMARY_TYPES).await?;
    Ok(chunk(room_id, joined, &state))
}

fn chunk(
    room_id: &str,
    joined: i64,
    state: &std::collections::HashMap<String, serde_json::Value>,
) -> serde_json::Value {
    let mut out = serde_json::json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": false,
        "guest_can_join": false,
        "join_rule": "invite",
    });
    for (kind, c) in state {
        match kind.as_str() {
            "m.room.name" if c["name"].is_string() => out["name"] = c["name"].clone(),
            "m.room.topic" if c["topic"].is_string() => out["topic"] = c["topic"].clone(),
            "m.room.canonical_alias" if c["alias"].is_string() => {
                out["canonical_alias"] = c["alias"].clone()
            }
            "m.room.avatar" if c["url"].is_string() => out["avatar_url"] = c["url"].clone(),
            "m.room.join_rules" if c["join_rule"].is_string() => {
                out["join_rule"] = c["join_rule"].clone()
            }
            "m.room.history_visibility" => {
                out["world_readable"] = (c["history_visibility"] == "world_readable").into()
            }
            "m.room.guest_access" => {
                out["guest_can_join"] = (c["guest_access"] == "can_join").into()
            }
            "m.room.create" if c["type"].is_string() => out["room_type"] = c["type"].clone(),
            _ => {}
        }
    }
    out
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (MSC3266): the
/// `/publicRooms` chunk plus `room_version`, `encryption`, `allowed_room_ids`
/// and, for an authenticated requester, their `membership` (`leave` when they
/// have none). Answered as Synapse does, for rooms the requester may preview:
/// a `public`, `knock` or `knock_restricted` join rule (where the room version
/// has it), `world_readable` history, the requester joined, invited or
/// knocking, or a `restricted` room whose allowed rooms the requester is in.
/// Every other room, like an unknown one, is `404 M_NOT_FOUND`, so a summary
/// never tells whether a private room exists. Only rooms this server is in.
pub async fn room_summary(
    app: &AppState,
    requester: Option<&UserId>,
    room_id: &RoomId,
) -> Result<serde_json::Value> {
    let not_found = || Error::not_found("Room not found or not accessible");
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Err(not_found());
    };
    let Some(group) = room.current_state_group else {
        return Err(not_found());
    };
    let rules = ruma::RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(not_found)?;
    let state = state_contents(app, group, SUMMARY_TYPES).await?;
    let membership = match requester {
        Some(user) => Some(
            rooms::membership(&app.db, room_id.as_str(), user.as_str())
                .await?
                .unwrap_or_else(|| "leave".to_owned()),
        ),
        None => None,
    };
    let join_rules = state.get("m.room.join_rules");
    let join_rule = join_rules
        .and_then(|c| c["join_rule"].as_str())
        .unwrap_or("invite");
    let allowed_rooms: Vec<String> = match join_rule {
        "restricted" if rules.authorization.restricted_join_rule => allowed_rooms(join_rules),
        "knock_restricted" if rules.authorization.knock_restricted_join_rule => {
            allowed_rooms(join_rules)
        }
        _ => Vec::new(),
    };
    let open = match join_rule {
        "public" => true,
        "knock" => rules.authorization.knocking,
        "knock_restricted" => rules.authorization.knock_restricted_join_rule,
        _ => false,
    };
    let world_readable = state
        .get("m.room.history_visibility")
        .is_some_and(|c| c["history_visibility"] == "world_readable");
    let member = matches!(membership.as_deref(), Some("join" | "invite" | "knock"));
    let mut allowed = open || world_readable || member;
    if !allowed && let Some(user) = requester {
        for other in &allowed_rooms {
            if rooms::membership(&app.db, other, user.as_str())
                .await?
                .as_deref()
                == Some("join")
            {
                allowed = true;
                break;
            }
        }
    }
    if !allowed {
        return Err(not_found());
    }
    let (joined, _, _) = rooms::summary(&app.db, room_id.as_str(), "").await?;
    let mut out = chunk(room_id.as_str(), joined, &state);
    out["room_version"] = room.room_version.into();
    if let Some(algorithm) = state
        .get("m.room.encryption")
        .and_then(|c| c["algorithm"].as_str())
    {
        out["encryption"] = algorithm.into();
    }
    if !allowed_rooms.is_empty() {
        out["allowed_room_ids"] = allowed_rooms.into();
    }
    if let Some(membership) = membership {
        out["membership"] = membership.into();
    }
    Ok(out)
}

/// The rooms a `restricted` / `knock_restricted` join rule lets members of in.
fn allowed_rooms(join_rules: Option<&serde_json::Value>) -> Vec<String> {
    join_rules
        .and_then(|c| c["allow"].as_array())
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str())
        .filter(|r| RoomId::parse(*r).is_ok())
        .map(str::to_owned)
        .collect()
}
