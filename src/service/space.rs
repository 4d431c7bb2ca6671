//! Spaces: `GET /rooms/{roomId}/hierarchy` (spec: "Spaces"): a breadth-first
//! walk of `m.space.child` state from the root, listing every room the user may
//! see (a member, world-readable, one they could join or knock on, or a
//! restricted room whose allowed rooms they are in), each with its public
//! summary and its `children_state`. Rooms this server is not in are asked of
//! the `via` servers of their `m.space.child` event through federation
//! `/hierarchy`, which this module also serves.

use std::collections::{HashMap, HashSet, VecDeque};

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Serialize;
use serde_json::{Value, json};

use super::directory::RoomEntry;
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, rooms, state},
};

/// A page of `GET /rooms/{roomId}/hierarchy`. Own type, not ruma's response:
/// its rooms are [`RoomEntry`]s (see there why).
#[derive(Debug, Serialize)]
pub struct Hierarchy {
    pub rooms: Vec<RoomEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// The answer of federation `/hierarchy`. Own type, not ruma's response: its
/// rooms are [`RoomEntry`]s.
#[derive(Debug, Serialize)]
pub struct FederationHierarchy {
    pub room: RoomEntry,
    pub children: Vec<RoomEntry>,
    pub inaccessible_children: Vec<OwnedRoomId>,
}

pub async fn hierarchy(
    app: &AppState,
    user: &UserId,
    root: &RoomId,
    from: Option<&str>,
    limit: usize,
    max_depth: Option<usize>,
    suggested_only: bool,
) -> Result<Hierarchy> {
    let fingerprint = session_fingerprint(root, max_depth, suggested_only);
    let skip: usize = match from {
        Some(token) => parse_token(token, &fingerprint)
            .ok_or_else(|| Error::invalid_param("Invalid 'from' token"))?,
        None => 0,
    };
    // The root must be a room this server holds and the user may preview (as
    // on Synapse); its children may be anywhere.
    if !may_preview(app, user, root).await? {
        return Err(Error::forbidden("You may not view this space"));
    }
    let limit = limit.clamp(1, 100);
    // All the federation requests of one page share this much time.
    let deadline = tokio::time::Instant::now() + super::directory::query_timeout(app);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([Walk {
        room_id: root.to_owned(),
        depth: 0,
        via: Vec::new(),
        known: None,
    }]);
    let mut index = 0usize;
    while let Some(walk) = queue.pop_front() {
        if !seen.insert(walk.room_id.clone()) {
            continue;
        }
        let room_id = &walk.room_id;
        let below_max = max_depth.is_none_or(|max| walk.depth < max);
        let local_here = room_id == root
            || rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str())
                .await?;
        let (mut entry, children, remote_children, inaccessible) = if local_here {
            // A room this server is in: its own state.
            if room_id != root && !may_preview(app, user, room_id).await? {
                continue;
            }
            let Some(local) = super::directory::local_room(app, room_id).await? else {
                continue;
            };
            let Some(group) = rooms::get(&app.db, room_id.as_str())
                .await?
                .and_then(|r| r.current_state_group)
            else {
                continue;
            };
            let children = children_state(app, group, suggested_only).await?;
            (local.entry, children, HashMap::new(), HashSet::new())
        } else {
            // Another server's room: the summary its parent's answer gave when
            // no children are needed, else the room's own `/hierarchy` from
            // the `via` servers of its `m.space.child` event.
            let reuse = walk
                .known
                .filter(|k| k.room_type.as_deref() != Some("m.space") || !below_max);
            let (room, remote_children, inaccessible) = match reuse {
                Some(known) => (known, HashMap::new(), HashSet::new()),
                None => {
                    let Some(h) =
                        fetch_remote(app, room_id, &walk.via, suggested_only, deadline).await
                    else {
                        continue;
                    };
                    (h.room, h.children, h.inaccessible)
                }
            };
            if !super::directory::remote_visible_to_user(app, Some(user), &room).await? {
                continue;
            }
            let children: Vec<Value> = room
                .children_state
                .iter()
                .flatten()
                .filter(|c| !suggested_only || c["content"]["suggested"] == true)
                .cloned()
                .collect();
            (room, children, remote_children, inaccessible)
        };
        if below_max {
            for child in &children {
                let Some(child_id) = child["state_key"]
                    .as_str()
                    .and_then(|c| RoomId::parse(c).ok())
                else {
                    continue;
                };
                if inaccessible.contains(child_id.as_str()) {
                    continue;
                }
                let via = child["content"]["via"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().and_then(|s| ruma::ServerName::parse(s).ok()))
                    .collect();
                queue.push_back(Walk {
                    known: remote_children.get(child_id.as_str()).cloned(),
                    room_id: child_id,
                    depth: walk.depth + 1,
                    via,
                });
            }
        }
        if index >= skip && out.len() < limit {
            // As on Synapse, clients are not told the allowed rooms.
            entry.allowed_room_ids.clear();
            entry.children_state = Some(children);
            out.push(entry);
        }
        index += 1;
        if out.len() == limit && !queue.is_empty() {
            let next = format!("h{}_{fingerprint}", skip + limit);
            return Ok(Hierarchy {
                rooms: out,
                next_batch: Some(next),
            });
        }
    }
    Ok(Hierarchy {
        rooms: out,
        next_batch: None,
    })
}

/// A room the hierarchy walk reached, with the servers its parent names and
/// the summary a remote parent's answer gave of it.
struct Walk {
    room_id: ruma::OwnedRoomId,
    depth: usize,
    via: Vec<ruma::OwnedServerName>,
    known: Option<RoomEntry>,
}

/// What a `from` token is bound to: the spec forbids changing `max_depth` and
/// `suggested_only` between pages, and a token of another space means nothing
/// here. A token is `h{rooms skipped}_{fingerprint}`.
fn session_fingerprint(root: &RoomId, max_depth: Option<usize>, suggested_only: bool) -> String {
    use sha2::{Digest, Sha256};
    let depth = max_depth.map_or_else(|| "-".to_owned(), |d| d.to_string());
    let digest = Sha256::digest(format!("{root}\n{depth}\n{suggested_only}"));
    hex::encode(&digest[..6])
}

/// The rooms to skip, if `token` is a token of this walk.
fn parse_token(token: &str, fingerprint: &str) -> Option<usize> {
    let (skip, fp) = token.strip_prefix('h')?.split_once('_')?;
    if fp != fingerprint || skip.is_empty() || !skip.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    skip.parse().ok()
}

/// The room's `m.space.child` events with a `via`, stripped (type, state_key,
/// content, sender, origin_server_ts).
async fn children_state(app: &AppState, group: i64, suggested_only: bool) -> Result<Vec<Value>> {
    let ids: Vec<String> = state::full_state(&app.db, group)
        .await?
        .into_iter()
        .filter(|((t, _), _)| t == "m.space.child")
        .map(|(_, id)| id)
        .collect();
    let mut out = Vec::new();
    for ev in events::get_many(&app.db, &ids).await? {
        let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        let content = &pdu["content"];
        // A child without `via` has been removed.
        if content["via"].as_array().is_none_or(|v| v.is_empty()) {
            continue;
        }
        if suggested_only && content["suggested"] != true {
            continue;
        }
        out.push(json!({
            "type": "m.space.child",
            "state_key": pdu["state_key"],
            "content": content,
            "sender": pdu["sender"],
            "origin_server_ts": pdu["origin_server_ts"],
        }));
    }
    // Spec order: a valid `order` string first (lexicographically), then the
    // event's timestamp, then the room ID.
    let order = |c: &Value| -> Option<String> {
        c["content"]["order"]
            .as_str()
            .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
            .map(str::to_owned)
    };
    out.sort_by(|a, b| {
        let (oa, ob) = (order(a), order(b));
        match (&oa, &ob) {
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            (Some(_), None) => return std::cmp::Ordering::Less,
            (None, Some(_)) => return std::cmp::Ordering::Greater,
            _ => {}
        }
        (a["origin_server_ts"].as_u64(), a["state_key"].as_str())
            .cmp(&(b["origin_server_ts"].as_u64(), b["state_key"].as_str()))
    });
    Ok(out)
}

/// Whether `user` may see a room this server holds in a hierarchy: members,
/// invitees and knockers, world-readable rooms, rooms with an open join rule,
/// and restricted rooms whose allowed rooms the user is joined to.
async fn may_preview(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<bool> {
    let Some(local) = super::directory::local_room(app, room_id).await? else {
        return Ok(false);
    };
    let membership = rooms::membership(&app.db, room_id.as_str(), user.as_str()).await?;
    local
        .visible_to_user(app, Some(user), membership.as_deref())
        .await
}

/// How many of a child's `via` servers are tried (as Synapse does).
const MAX_VIA_TRIED: usize = 3;
/// The most `m.space.child` events, children and inaccessible children kept
/// from another server's `/hierarchy` answer, and the most children this
/// server summarises in its own answer.
const MAX_CHILDREN: usize = 100;
/// The most `via` servers kept per child from another server's answer.
const MAX_CHILD_VIA: usize = 20;
/// The largest `/hierarchy` answer accepted from another server.
const MAX_HIERARCHY_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Another server's `/hierarchy` answer for a room, checked and rebuilt.
pub(crate) struct RemoteHierarchy {
    /// The room asked for, with its `children_state`.
    pub room: RoomEntry,
    /// Summaries of its children, by room ID.
    pub children: HashMap<String, RoomEntry>,
    /// Children the answering server says nobody here may see.
    pub inaccessible: HashSet<String>,
}

/// Asks the first of `via` (at most [`MAX_VIA_TRIED`], never this server)
/// that answers for `room_id`'s federation `/hierarchy`, within `deadline`.
/// An answer whose root is another room, or that is not a hierarchy, counts
/// as no answer; what is kept of a valid one is bounded (see
/// [`clean_hierarchy`]). Holds no database connection or lock while waiting.
pub(crate) async fn fetch_remote(
    app: &AppState,
    room_id: &RoomId,
    via: &[ruma::OwnedServerName],
    suggested_only: bool,
    deadline: tokio::time::Instant,
) -> Option<RemoteHierarchy> {
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        form_urlencoded::byte_serialize(room_id.as_str().as_bytes()).collect::<String>()
    );
    let mut seen = HashSet::new();
    let servers = via
        .iter()
        .filter(|s| **s != app.server_name && seen.insert((*s).clone()))
        .take(MAX_VIA_TRIED);
    for server in servers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        // Raw: the answer is rebuilt from its valid parts (`clean_hierarchy`).
        let answer = app
            .federation
            .request_json_bounded(
                server,
                http::Method::GET,
                &path,
                None,
                MAX_HIERARCHY_ANSWER_BYTES,
                left,
            )
            .await;
        match answer {
            Ok(answer) => match clean_hierarchy(room_id, &answer) {
                Some(h) => return Some(h),
                None => tracing::info!(%room_id, %server, "invalid /hierarchy answer ignored"),
            },
            Err(e) => tracing::debug!(%room_id, %server, error = %e, "/hierarchy failed"),
        }
    }
    None
}

/// A `/hierarchy` answer rebuilt from its valid parts: the root must be
/// `room_id`; `m.space.child` events need a room ID state key and a `via` of
/// server names; children need a valid room ID. Each list is cut to
/// [`MAX_CHILDREN`] entries.
fn clean_hierarchy(room_id: &RoomId, answer: &Value) -> Option<RemoteHierarchy> {
    let root = &answer["room"];
    if root["room_id"].as_str() != Some(room_id.as_str()) {
        return None;
    }
    let mut room = super::directory::clean_remote_entry(root)?;
    let children_state: Vec<Value> = root["children_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(clean_child_event)
        .take(MAX_CHILDREN)
        .collect();
    room.children_state = Some(children_state);
    let mut children = HashMap::new();
    for child in answer["children"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_CHILDREN)
    {
        if let Some(entry) = super::directory::clean_remote_entry(child) {
            children.insert(entry.room_id.to_string(), entry);
        }
    }
    let inaccessible = answer["inaccessible_children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().filter(|r| RoomId::parse(*r).is_ok()))
        .take(MAX_CHILDREN)
        .map(str::to_owned)
        .collect();
    Some(RemoteHierarchy {
        room,
        children,
        inaccessible,
    })
}

/// An `m.space.child` stripped event of another server, rebuilt (`None` when
/// it is not one, names no room, or has no usable `via`).
fn clean_child_event(ev: &Value) -> Option<Value> {
    if ev["type"] != "m.space.child" {
        return None;
    }
    let state_key = ev["state_key"]
        .as_str()
        .filter(|r| RoomId::parse(*r).is_ok())?;
    let via: Vec<Value> = ev["content"]["via"]
        .as_array()?
        .iter()
        .filter_map(|s| s.as_str().filter(|s| ruma::ServerName::parse(*s).is_ok()))
        .take(MAX_CHILD_VIA)
        .map(Into::into)
        .collect();
    if via.is_empty() {
        return None;
    }
    let mut content = json!({ "via": via });
    if let Some(order) = ev["content"]["order"].as_str().filter(|o| o.len() <= 50) {
        content["order"] = order.into();
    }
    if ev["content"]["suggested"] == true {
        content["suggested"] = true.into();
    }
    let sender = ev["sender"]
        .as_str()
        .filter(|u| UserId::parse(*u).is_ok())?;
    Some(json!({
        "type": "m.space.child",
        "state_key": state_key,
        "content": content,
        "sender": sender,
        "origin_server_ts": ev["origin_server_ts"].as_u64().unwrap_or(0),
    }))
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}` (spec: server-server
/// "Spaces"): the room and its children this server is joined to, as far as
/// `origin` may see them (see [`super::directory::LocalRoom::visible_to_server`]);
/// children it may not see are listed in `inaccessible_children`, children
/// this server is not in are left out. `404` when the room is unknown here or
/// hidden from `origin`.
pub async fn federation_hierarchy(
    app: &AppState,
    origin: &ruma::ServerName,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<FederationHierarchy> {
    let not_found = || Error::not_found("Room not found or not accessible");
    if !rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str()).await? {
        return Err(not_found());
    }
    let local = super::directory::local_room(app, room_id)
        .await?
        .ok_or_else(not_found)?;
    if !local.visible_to_server(app, room_id, origin).await? {
        return Err(not_found());
    }
    let group = rooms::get(&app.db, room_id.as_str())
        .await?
        .and_then(|r| r.current_state_group)
        .ok_or_else(not_found)?;
    let children_state = children_state(app, group, suggested_only).await?;
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for child in children_state.iter().take(MAX_CHILDREN) {
        let Some(child_id) = child["state_key"]
            .as_str()
            .and_then(|c| RoomId::parse(c).ok())
        else {
            continue;
        };
        if !rooms::has_joined_members_of(&app.db, child_id.as_str(), app.server_name.as_str())
            .await?
        {
            continue;
        }
        match super::directory::local_room(app, &child_id).await? {
            Some(c) if c.visible_to_server(app, &child_id, origin).await? => children.push(c.entry),
            _ => inaccessible.push(child_id),
        }
    }
    let mut room = local.entry;
    room.children_state = Some(children_state);
    Ok(FederationHierarchy {
        room,
        children,
        inaccessible_children: inaccessible,
    })
}
