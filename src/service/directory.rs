//! Room aliases (ours, and others' through the alias's server), the public
//! room directory and room summaries.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Serialize;

use super::session::Session;
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{Postgres, Transaction, now_ms, rooms},
};

pub async fn resolve_local(app: &AppState, alias: &str) -> Result<Option<OwnedRoomId>> {
    let room = rooms::alias_room(&app.db, alias).await?;
    Ok(room.and_then(|r| RoomId::parse(r).ok()))
}

/// The most servers a directory answer lists (a peer's longer list is cut).
const MAX_ALIAS_SERVERS: usize = 50;
/// The largest answer accepted to a remote alias query.
const MAX_ALIAS_ANSWER_BYTES: usize = 64 * 1024;

/// How long a query made on a client's behalf may take (the configured
/// request timeout, at most 30 seconds: a client is waiting).
pub(crate) fn query_timeout(app: &AppState) -> std::time::Duration {
    std::time::Duration::from_secs(app.config.federation.request_timeout_secs.clamp(1, 30))
}

/// Resolves an alias for a join or a knock: the room and the servers to try,
/// the alias's own server first (as Synapse does: it knows the room).
pub async fn resolve(
    app: &AppState,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let (room_id, mut servers) = association(app, alias).await?;
    if alias.server_name() != app.server_name {
        servers.retain(|s| s != alias.server_name());
        servers.insert(0, alias.server_name().to_owned());
    }
    Ok((room_id, servers))
}

/// `GET /directory/room/{roomAlias}`: the room an alias names and servers
/// that know the room. Ours from the database, with the room's joined
/// servers; others' from the alias's server
/// (`GET /_matrix/federation/v1/query/directory`), with the servers it lists
/// (well-formed names only, at most [`MAX_ALIAS_SERVERS`]) and those we know
/// in the room. This server comes first when it is in the list.
pub async fn association(
    app: &AppState,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let not_found = || Error::not_found("Room alias not found");
    let (room_id, mut servers) =
        if alias.server_name() == app.server_name || !app.config.federation.enabled {
            let room_id = match resolve_local(app, alias.as_str()).await? {
                Some(room) => room,
                // An alias in an appservice's namespace may be made on demand.
                None if alias.server_name() == app.server_name => {
                    super::appservice::query_alias(app, alias)
                        .await?
                        .ok_or_else(not_found)?
                }
                None => return Err(not_found()),
            };
            (room_id, Vec::new())
        } else {
            resolve_remote(app, alias).await?
        };
    for server in joined_servers(app, &room_id).await? {
        if let Ok(server) = ruma::ServerName::parse(&server) {
            servers.push(server);
        }
    }
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    if let Some(at) = servers.iter().position(|s| s == &app.server_name) {
        let ours = servers.remove(at);
        servers.insert(0, ours);
    } else if alias.server_name() == app.server_name {
        // Our own alias for a room nobody here is joined to any more: we still
        // know it.
        servers.insert(0, app.server_name.clone());
    }
    servers.truncate(MAX_ALIAS_SERVERS);
    Ok((room_id, servers))
}

/// Asks the alias's server. Its answer must name a valid room ID; the servers
/// it lists are kept when they are server names, at most [`MAX_ALIAS_SERVERS`].
async fn resolve_remote(
    app: &AppState,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        form_urlencoded::byte_serialize(alias.as_str().as_bytes()).collect::<String>()
    );
    // Raw, not ruma's `get_room_information`: a server name that does not
    // parse is dropped from the list, not the whole answer.
    let body = app
        .federation
        .request_json_bounded(
            alias.server_name(),
            http::Method::GET,
            &path,
            None,
            MAX_ALIAS_ANSWER_BYTES,
            query_timeout(app),
        )
        .await
        .map_err(|e| {
            if e.is_not_found() {
                Error::not_found("Room alias not found")
            } else {
                tracing::info!(%alias, error = %e, "remote alias query failed");
                Error::not_found("Room alias could not be resolved")
            }
        })?;
    let room_id = body["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let servers = body["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().and_then(|s| ruma::ServerName::parse(s).ok()))
        .take(MAX_ALIAS_SERVERS)
        .collect();
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
    super::appservice::check_alias_allowed(app, alias, user.appservice.as_deref())?;
    if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    // Appservices map aliases in their namespace to rooms they manage without
    // being joined to them (as Synapse allows).
    if user.appservice.is_none()
        && rooms::membership(&app.db, room_id.as_str(), user.user_id.as_str())
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
        app.clock.now_ms(),
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

/// `DELETE /directory/room/{alias}`: by its creator, a server admin, or a
/// member with the power to send the room's `m.room.canonical_alias` (as
/// Synapse allows, and the spec permits).
pub async fn delete_alias(app: &AppState, user: &Session, alias: &str) -> Result<()> {
    let Some(creator) = rooms::alias_creator(&app.db, alias).await? else {
        return Err(Error::not_found("Room alias not found"));
    };
    let room_id = rooms::alias_room(&app.db, alias).await?;
    let powered = match room_id.as_deref().and_then(|r| RoomId::parse(r).ok()) {
        Some(room) => {
            super::event::may_send_state(app, &room, &user.user_id, "m.room.canonical_alias")
                .await?
        }
        None => false,
    };
    if creator != user.user_id.as_str() && !user.is_admin && !powered {
        return Err(Error::forbidden("You may not delete this alias"));
    }
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
            origin_server_ts: None,
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
    let Some(room) = super::event::RoomCtx::load_unlocked(&mut tx, room_id).await? else {
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

/// Which room directory list `/publicRooms` reads (spec: `include_all_networks`,
/// `third_party_instance_id`).
pub enum Network {
    /// The server's own list.
    Matrix,
    /// The server's list and every appservice's.
    All,
    /// One appservice network's list: `{appservice_id}|{network_id}`.
    ThirdParty(String),
}

/// `GET/POST /publicRooms`: published rooms, largest first, with their summaries;
/// `since` is an offset token; `filter` matches name, topic and alias.
pub async fn public_rooms(
    app: &AppState,
    limit: Option<usize>,
    since: Option<&str>,
    search: Option<&str>,
    network: &Network,
) -> Result<PublicRooms> {
    let offset: usize = match since {
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
        None => 0,
    };
    let search = search.map(str::to_lowercase).filter(|s| !s.is_empty());
    let mut chunk = Vec::new();
    let listed = match network {
        Network::Matrix => rooms::published(&app.db).await?,
        Network::All => {
            let mut all = rooms::published(&app.db).await?;
            let mut seen: std::collections::HashSet<String> =
                all.iter().map(|(r, _, _)| r.clone()).collect();
            for row in crate::storage::appservice::listed(&app.db, None).await? {
                if seen.insert(row.0.clone()) {
                    all.push(row);
                }
            }
            all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            all
        }
        Network::ThirdParty(instance) => match instance.split_once('|') {
            Some((appservice, network)) => {
                crate::storage::appservice::listed(&app.db, Some((appservice, network))).await?
            }
            None => return Err(Error::invalid_param("Unknown third_party_instance_id")),
        },
    };
    for (room_id, group, joined) in listed {
        let Some(group) = group else { continue };
        let summary = room_entry(app, &room_id, group, joined).await?;
        if let Some(term) = &search {
            let hay = [&summary.name, &summary.topic, &summary.canonical_alias]
                .into_iter()
                .flatten()
                .map(String::as_str)
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
    Ok(PublicRooms {
        chunk: page,
        next_batch: (offset + limit < total).then(|| format!("o{}", offset + limit)),
        prev_batch: (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit))),
        total_room_count_estimate: Some(total as u64),
    })
}

/// The most rooms relayed from another server's `/publicRooms` page (also
/// the page size asked for when the client names none).
const MAX_REMOTE_PUBLIC_ROOMS: usize = 500;
/// The largest `/publicRooms` answer accepted from another server.
const MAX_PUBLIC_ROOMS_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Longest relayed text field (`name`, `topic`; in characters).
const MAX_RELAYED_TEXT: usize = 1024;
/// Longest relayed token (`since`, `next_batch`, `prev_batch`; in bytes).
const MAX_RELAYED_TOKEN: usize = 1024;

/// What a client asks of another server's room directory.
pub struct RemotePublicRooms<'a> {
    pub limit: Option<usize>,
    pub since: Option<&'a str>,
    /// `POST` only: the `filter` object as the client sent it.
    pub filter: Option<serde_json::Value>,
    /// `POST` only: `include_all_networks` / `third_party_instance_id`.
    pub network: Option<serde_json::Map<String, serde_json::Value>>,
    /// `POST` (with a filter or a network) rather than `GET`.
    pub post: bool,
}

/// `/publicRooms?server=…`: another server's directory, through its federation
/// `/publicRooms` (`GET` with `limit` and `since`, or `POST` with the filter and
/// network too). The answer is checked and rebuilt, not passed through: each
/// entry needs a valid room ID, fields of the wrong type are dropped, text is
/// cut to [`MAX_RELAYED_TEXT`] characters, and no more rooms than asked for
/// (at most [`MAX_REMOTE_PUBLIC_ROOMS`]) are relayed.
pub async fn remote_public_rooms(
    app: &AppState,
    server: &ruma::ServerName,
    query: RemotePublicRooms<'_>,
) -> Result<PublicRooms> {
    if !app.config.federation.enabled {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "Federation is disabled on this server",
        ));
    }
    if query.since.is_some_and(|s| s.len() > MAX_RELAYED_TOKEN) {
        return Err(Error::invalid_param("Invalid since token"));
    }
    let limit = query
        .limit
        .unwrap_or(MAX_REMOTE_PUBLIC_ROOMS)
        .clamp(1, MAX_REMOTE_PUBLIC_ROOMS);
    let path = "/_matrix/federation/v1/publicRooms";
    let (method, path, body) = if query.post {
        let mut body = query.network.unwrap_or_default();
        body.insert("limit".into(), limit.into());
        if let Some(since) = query.since {
            body.insert("since".into(), since.into());
        }
        if let Some(filter) = query.filter {
            body.insert("filter".into(), filter);
        }
        (
            http::Method::POST,
            path.to_owned(),
            Some(serde_json::Value::Object(body)),
        )
    } else {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        if let Some(since) = query.since {
            q.append_pair("since", since);
        }
        (http::Method::GET, format!("{path}?{}", q.finish()), None)
    };
    // Raw: the list is relayed from its valid entries (`relay_public_rooms`).
    let answer = app
        .federation
        .request_json_bounded(
            server,
            method,
            &path,
            body.as_ref(),
            MAX_PUBLIC_ROOMS_ANSWER_BYTES,
            query_timeout(app),
        )
        .await
        .map_err(|e| {
            tracing::info!(%server, error = %e, "remote /publicRooms failed");
            Error::new(
                ErrorKind::BadGateway,
                format!("{server} did not give its public rooms"),
            )
        })?;
    relay_public_rooms(&answer, limit).ok_or_else(|| {
        Error::new(
            ErrorKind::BadGateway,
            format!("{server} gave an invalid public room list"),
        )
    })
}

/// A `/publicRooms` answer from another server, rebuilt from its valid parts
/// (`None` when it has no `chunk` list).
fn relay_public_rooms(answer: &serde_json::Value, limit: usize) -> Option<PublicRooms> {
    let token = |v: &serde_json::Value| -> Option<String> {
        v.as_str()
            .filter(|s| !s.is_empty() && s.len() <= MAX_RELAYED_TOKEN)
            .map(str::to_owned)
    };
    let mut chunk = Vec::new();
    for entry in answer["chunk"].as_array()? {
        if chunk.len() == limit {
            break;
        }
        let Some(out) = clean_chunk_entry(entry) else {
            continue;
        };
        chunk.push(out);
    }
    Some(PublicRooms {
        chunk,
        next_batch: token(&answer["next_batch"]),
        prev_batch: token(&answer["prev_batch"]),
        total_room_count_estimate: answer["total_room_count_estimate"].as_u64(),
    })
}

/// A `/publicRooms` chunk entry of another server, rebuilt from its valid
/// parts (`None` without a valid `room_id`).
fn clean_chunk_entry(entry: &serde_json::Value) -> Option<RoomEntry> {
    let text = |v: &serde_json::Value| -> Option<String> {
        v.as_str()
            .map(|s| s.chars().take(MAX_RELAYED_TEXT).collect::<String>())
    };
    let short = |v: &serde_json::Value| -> Option<String> {
        v.as_str().filter(|s| s.len() <= 255).map(str::to_owned)
    };
    let room_id = entry["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())?;
    Some(RoomEntry {
        num_joined_members: entry["num_joined_members"].as_u64().unwrap_or(0),
        world_readable: entry["world_readable"].as_bool().unwrap_or(false),
        guest_can_join: entry["guest_can_join"].as_bool().unwrap_or(false),
        name: text(&entry["name"]),
        topic: text(&entry["topic"]),
        canonical_alias: entry["canonical_alias"]
            .as_str()
            .filter(|a| ruma::RoomAliasId::parse(*a).is_ok())
            .map(str::to_owned),
        avatar_url: entry["avatar_url"]
            .as_str()
            .filter(|u| <&ruma::MxcUri>::from(*u).is_valid())
            .map(str::to_owned),
        join_rule: short(&entry["join_rule"]),
        room_type: short(&entry["room_type"]),
        ..RoomEntry::new(room_id)
    })
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

/// A page of a room directory: ours (`/publicRooms`, client and federation)
/// or another server's, relayed. Own type, not ruma's response: its entries
/// are [`RoomEntry`]s.
#[derive(Debug, Serialize)]
pub struct PublicRooms {
    pub chunk: Vec<RoomEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
    /// Always ours; another server's when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_room_count_estimate: Option<u64>,
}

/// A room as the public room directory, room summaries (MSC3266) and
/// `/hierarchy` (client and federation) show it.
///
/// Own type, not ruma's `PublicRoomsChunk`, `RoomSummary` or
/// `SpaceHierarchyParentSummary`: those leave out `"join_rule": "public"`
/// (their default), which this server, like Synapse, always sends for its own
/// rooms, and this one also carries what only some answers have
/// (`membership`, `children_state`). Absent fields are left out, never `null`.
#[derive(Clone, Debug, Serialize)]
pub struct RoomEntry {
    pub room_id: OwnedRoomId,
    pub num_joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    /// Always set for our rooms (`invite` without an `m.room.join_rules`);
    /// another server's as it gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
    /// Summaries and `/hierarchy` only (not `/publicRooms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_version: Option<String>,
    /// The `m.room.encryption` algorithm; summaries and `/hierarchy` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// Restricted rooms: the rooms whose members may join. Not shown to
    /// clients in `/hierarchy`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_room_ids: Vec<OwnedRoomId>,
    /// Room summaries to an authenticated requester: theirs (`leave` for none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<String>,
    /// `/hierarchy`: the room's `m.space.child` events, stripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children_state: Option<Vec<serde_json::Value>>,
}

impl RoomEntry {
    /// A room with no members or fields known yet.
    fn new(room_id: OwnedRoomId) -> Self {
        Self {
            room_id,
            num_joined_members: 0,
            world_readable: false,
            guest_can_join: false,
            join_rule: None,
            name: None,
            topic: None,
            canonical_alias: None,
            avatar_url: None,
            room_type: None,
            room_version: None,
            encryption: None,
            allowed_room_ids: Vec::new(),
            membership: None,
            children_state: None,
        }
    }
}

/// A room's public summary from its current state (a `/publicRooms` chunk).
pub async fn room_entry(
    app: &AppState,
    room_id: &str,
    group: i64,
    joined: i64,
) -> Result<RoomEntry> {
    let room_id = RoomId::parse(room_id)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored room ID {room_id:?}: {e}")))?;
    let state = state_contents(app, group, SUMMARY_TYPES).await?;
    Ok(chunk(room_id, joined, &state))
}

fn chunk(
    room_id: OwnedRoomId,
    joined: i64,
    state: &std::collections::HashMap<String, serde_json::Value>,
) -> RoomEntry {
    let mut out = RoomEntry {
        num_joined_members: u64::try_from(joined).unwrap_or(0),
        join_rule: Some("invite".to_owned()),
        ..RoomEntry::new(room_id)
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    for (kind, c) in state {
        match kind.as_str() {
            "m.room.name" if c["name"].is_string() => out.name = text(&c["name"]),
            "m.room.topic" if c["topic"].is_string() => out.topic = text(&c["topic"]),
            "m.room.canonical_alias" if c["alias"].is_string() => {
                out.canonical_alias = text(&c["alias"])
            }
            "m.room.avatar" if c["url"].is_string() => out.avatar_url = text(&c["url"]),
            "m.room.join_rules" if c["join_rule"].is_string() => {
                out.join_rule = text(&c["join_rule"])
            }
            "m.room.history_visibility" => {
                out.world_readable = c["history_visibility"] == "world_readable"
            }
            "m.room.guest_access" => out.guest_can_join = c["guest_access"] == "can_join",
            "m.room.create" if c["type"].is_string() => out.room_type = text(&c["type"]),
            _ => {}
        }
    }
    out
}

/// A room this server holds, summarised, with what decides who may preview it.
pub(crate) struct LocalRoom {
    /// The `/publicRooms` chunk plus `room_version`, `encryption` and
    /// `allowed_room_ids` (restricted rooms).
    pub entry: RoomEntry,
    /// A `public`, `knock` or `knock_restricted` join rule (where the room
    /// version has it): anyone may preview.
    pub open: bool,
    pub world_readable: bool,
    /// The rooms whose members may join (restricted join rules).
    pub allowed_rooms: Vec<OwnedRoomId>,
}

impl LocalRoom {
    /// Whether `server` may see the room (federation `/hierarchy`, as Synapse
    /// decides): anyone may see an open or world-readable room; otherwise the
    /// server needs a user joined to or invited into it, or, for a restricted
    /// room, a user joined to one of the allowed rooms.
    pub async fn visible_to_server(
        &self,
        app: &AppState,
        room_id: &RoomId,
        server: &ruma::ServerName,
    ) -> Result<bool> {
        if self.open || self.world_readable {
            return Ok(true);
        }
        let members = rooms::members_of_server(&app.db, room_id.as_str(), server.as_str()).await?;
        if members.iter().any(|(_, m)| m == "join" || m == "invite") {
            return Ok(true);
        }
        for other in &self.allowed_rooms {
            if rooms::has_joined_members_of(&app.db, other.as_str(), server.as_str()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `user` may preview the room: open or world-readable, the user
    /// joined, invited or knocking (`membership`), or joined to an allowed room.
    pub async fn visible_to_user(
        &self,
        app: &AppState,
        user: Option<&UserId>,
        membership: Option<&str>,
    ) -> Result<bool> {
        if self.open
            || self.world_readable
            || matches!(membership, Some("join" | "invite" | "knock"))
        {
            return Ok(true);
        }
        match user {
            Some(user) => joined_any(app, user, &self.allowed_rooms).await,
            None => Ok(false),
        }
    }
}

/// The summary of a room this server holds state for (`None` for unknown
/// rooms and room versions it cannot read).
pub(crate) async fn local_room(app: &AppState, room_id: &RoomId) -> Result<Option<LocalRoom>> {
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Ok(None);
    };
    let Some(group) = room.current_state_group else {
        return Ok(None);
    };
    let Some(rules) = ruma::RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
    else {
        return Ok(None);
    };
    let state = state_contents(app, group, SUMMARY_TYPES).await?;
    let join_rules = state.get("m.room.join_rules");
    let join_rule = join_rules
        .and_then(|c| c["join_rule"].as_str())
        .unwrap_or("invite");
    let allowed_rooms: Vec<OwnedRoomId> = match join_rule {
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
    let (joined, _, _) = rooms::summary(&app.db, room_id.as_str(), "").await?;
    let mut entry = chunk(room_id.to_owned(), joined, &state);
    entry.room_version = Some(room.room_version);
    entry.encryption = state
        .get("m.room.encryption")
        .and_then(|c| c["algorithm"].as_str())
        .map(str::to_owned);
    entry.allowed_room_ids.clone_from(&allowed_rooms);
    Ok(Some(LocalRoom {
        entry,
        open,
        world_readable,
        allowed_rooms,
    }))
}

/// Whether `user` is joined to any of `rooms` (here).
pub(crate) async fn joined_any(
    app: &AppState,
    user: &UserId,
    rooms: &[OwnedRoomId],
) -> Result<bool> {
    for other in rooms {
        if rooms::membership(&app.db, other.as_str(), user.as_str())
            .await?
            .as_deref()
            == Some("join")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `user` may see a room entry another server gave (its root room or
/// a child in a `/hierarchy` answer), as Synapse decides: an open join rule
/// (`public`, `knock`, `knock_restricted`; the entry has no room version to
/// check them against), world-readable history, a membership here
/// (`join`, `invite`, `knock`), or a join to one of its `allowed_room_ids`.
pub(crate) async fn remote_visible_to_user(
    app: &AppState,
    user: Option<&UserId>,
    room: &RoomEntry,
) -> Result<bool> {
    if matches!(
        room.join_rule.as_deref(),
        Some("public" | "knock" | "knock_restricted")
    ) || room.world_readable
    {
        return Ok(true);
    }
    let Some(user) = user else {
        return Ok(false);
    };
    if matches!(
        rooms::membership(&app.db, room.room_id.as_str(), user.as_str())
            .await?
            .as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Ok(true);
    }
    joined_any(app, user, &room.allowed_room_ids).await
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (MSC3266): the
/// `/publicRooms` chunk plus `room_version`, `encryption`, `allowed_room_ids`
/// and, for an authenticated requester, their `membership` (`leave` when they
/// have none). Answered as Synapse does, for rooms the requester may preview:
/// a `public`, `knock` or `knock_restricted` join rule (where the room version
/// has it), `world_readable` history, the requester joined, invited or
/// knocking, or a `restricted` room whose allowed rooms the requester is in.
/// Every other room, like an unknown one, is `404 M_NOT_FOUND`, so a summary
/// never tells whether a private room exists.
///
/// A room this server is not joined to is asked of the `via` servers (and the
/// room ID's server, where it has one) through federation `/hierarchy`, as
/// Synapse does; the root room of the answer must be the room asked for, and
/// the same rules are applied to it. When no server answers, what this server
/// still holds about the room is used.
pub async fn room_summary(
    app: &AppState,
    requester: Option<&UserId>,
    room_id: &RoomId,
    via: &[ruma::OwnedServerName],
) -> Result<RoomEntry> {
    let not_found = || Error::not_found("Room not found or not accessible");
    let membership = match requester {
        Some(user) => Some(
            rooms::membership(&app.db, room_id.as_str(), user.as_str())
                .await?
                .unwrap_or_else(|| "leave".to_owned()),
        ),
        None => None,
    };
    let joined_here =
        rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str()).await?;
    let mut remote = None;
    if !joined_here && app.config.federation.enabled {
        let mut via = via.to_vec();
        via.extend(room_id.server_name().map(ToOwned::to_owned));
        let deadline = tokio::time::Instant::now() + query_timeout(app);
        remote = super::space::fetch_remote(app, room_id, &via, false, deadline)
            .await
            .map(|h| h.room);
    }
    let mut out = match remote {
        Some(mut room) => {
            if !remote_visible_to_user(app, requester, &room).await? {
                return Err(not_found());
            }
            room.children_state = None;
            room
        }
        None => {
            let local = local_room(app, room_id).await?.ok_or_else(not_found)?;
            if !local
                .visible_to_user(app, requester, membership.as_deref())
                .await?
            {
                return Err(not_found());
            }
            local.entry
        }
    };
    out.membership = membership;
    Ok(out)
}

/// A room entry of another server's answer (`/hierarchy`), rebuilt from its
/// valid parts, or `None` without a valid `room_id`: text cut to
/// [`MAX_RELAYED_TEXT`] characters, fields of the wrong type dropped, at most
/// 50 `allowed_room_ids`.
pub(crate) fn clean_remote_entry(entry: &serde_json::Value) -> Option<RoomEntry> {
    let mut out = clean_chunk_entry(entry)?;
    let short = |v: &serde_json::Value| -> Option<String> {
        v.as_str().filter(|s| s.len() <= 255).map(str::to_owned)
    };
    out.room_version = short(&entry["room_version"]);
    out.encryption = short(&entry["encryption"]);
    out.allowed_room_ids = entry["allowed_room_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().and_then(|r| RoomId::parse(r).ok()))
        .take(50)
        .collect();
    Some(out)
}

/// The rooms a `restricted` / `knock_restricted` join rule lets members of in.
fn allowed_rooms(join_rules: Option<&serde_json::Value>) -> Vec<OwnedRoomId> {
    join_rules
        .and_then(|c| c["allow"].as_array())
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str())
        .filter_map(|r| RoomId::parse(r).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn room() -> OwnedRoomId {
        RoomId::parse("!a:example.org").unwrap()
    }

    /// Our entries always name their join rule (`public` included, which
    /// ruma's types would leave out as their default) and leave out, never
    /// `null`, what the room does not have.
    #[test]
    fn local_entries_name_their_join_rule_and_omit_what_is_absent() {
        let bare = serde_json::to_value(chunk(room(), 3, &HashMap::new())).unwrap();
        assert_eq!(
            bare,
            json!({ "room_id": "!a:example.org", "num_joined_members": 3,
                "world_readable": false, "guest_can_join": false, "join_rule": "invite" })
        );
        let state = HashMap::from([
            (
                "m.room.join_rules".to_owned(),
                json!({ "join_rule": "public" }),
            ),
            ("m.room.name".to_owned(), json!({ "name": "Lobby" })),
            ("m.room.topic".to_owned(), json!({ "topic": 5 })),
            (
                "m.room.history_visibility".to_owned(),
                json!({ "history_visibility": "world_readable" }),
            ),
            (
                "m.room.guest_access".to_owned(),
                json!({ "guest_access": "can_join" }),
            ),
            ("m.room.create".to_owned(), json!({ "type": "m.space" })),
        ]);
        let full = serde_json::to_value(chunk(room(), 1, &state)).unwrap();
        assert_eq!(
            full,
            json!({ "room_id": "!a:example.org", "num_joined_members": 1,
                "world_readable": true, "guest_can_join": true, "join_rule": "public",
                "name": "Lobby", "room_type": "m.space" })
        );
    }

    /// Another server's page is rebuilt from its valid parts: entries without
    /// a valid room ID are dropped, fields of the wrong type left out, text
    /// cut, empty tokens dropped, and no more entries than asked for.
    #[test]
    fn relayed_pages_keep_only_valid_parts() {
        let answer = json!({
            "chunk": [
                { "room_id": "not a room" },
                { "room_id": "!b:remote", "name": 7, "topic": "t".repeat(5000),
                  "num_joined_members": "many", "canonical_alias": "#ok:remote",
                  "avatar_url": "http://not.mxc/", "world_readable": true },
                { "room_id": "!c:remote" },
                { "room_id": "!d:remote" },
            ],
            "next_batch": "",
            "prev_batch": "p1",
            "total_room_count_estimate": 9,
        });
        let page = serde_json::to_value(relay_public_rooms(&answer, 2).unwrap()).unwrap();
        assert_eq!(
            page,
            json!({
                "chunk": [
                    { "room_id": "!b:remote", "num_joined_members": 0,
                      "world_readable": true, "guest_can_join": false,
                      "topic": "t".repeat(MAX_RELAYED_TEXT),
                      "canonical_alias": "#ok:remote" },
                    { "room_id": "!c:remote", "num_joined_members": 0,
                      "world_readable": false, "guest_can_join": false },
                ],
                "prev_batch": "p1",
                "total_room_count_estimate": 9,
            })
        );
        assert!(relay_public_rooms(&json!({ "rooms": [] }), 5).is_none());
    }
}
