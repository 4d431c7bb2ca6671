//! Spaces: `GET /rooms/{roomId}/hierarchy` (spec: "Spaces"), over this server's
//! rooms: a breadth-first walk of `m.space.child` state from the root, listing
//! every room the user may see (joined, or world-readable, or one they could join
//! or knock on), each with its public summary and its `children_state`.

use std::collections::{HashSet, VecDeque};

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    app::AppState,
    error::{Error, Result},
    storage::{events, rooms, state},
};

pub async fn hierarchy(
    app: &AppState,
    user: &UserId,
    root: &RoomId,
    from: Option<&str>,
    limit: usize,
    max_depth: Option<usize>,
    suggested_only: bool,
) -> Result<Value> {
    let fingerprint = session_fingerprint(root, max_depth, suggested_only);
    let skip: usize = match from {
        Some(token) => parse_token(token, &fingerprint)
            .ok_or_else(|| Error::invalid_param("Invalid 'from' token"))?,
        None => 0,
    };
    if !may_preview(app, user, root.as_str()).await? {
        return Err(Error::forbidden("You may not view this space"));
    }
    let limit = limit.clamp(1, 100);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([(root.to_string(), 0usize)]);
    let mut index = 0usize;
    while let Some((room_id, depth)) = queue.pop_front() {
        if !seen.insert(room_id.clone()) {
            continue;
        }
        let Some(room) = rooms::get(&app.db, &room_id).await? else {
            continue;
        };
        if room_id != root.as_str() && !may_preview(app, user, &room_id).await? {
            continue;
        }
        let Some(group) = room.current_state_group else {
            continue;
        };
        let children = children_state(app, group, suggested_only).await?;
        if max_depth.is_none_or(|max| depth < max) {
            for child in &children {
                if let Some(child_id) = child["state_key"].as_str() {
                    queue.push_back((child_id.to_owned(), depth + 1));
                }
            }
        }
        if index >= skip && out.len() < limit {
            let joined = rooms::members(&app.db, &room_id, "join").await?.len() as i64;
            let mut entry = super::directory::summary(app, &room_id, group, joined).await?;
            entry["children_state"] = Value::Array(children);
            out.push(entry);
        }
        index += 1;
        if out.len() == limit && !queue.is_empty() {
            let next = format!("h{}_{fingerprint}", skip + limit);
            return Ok(json!({ "rooms": out, "next_batch": next }));
        }
    }
    Ok(json!({ "rooms": out }))
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

/// Members, world-readable rooms, and rooms the user could join or knock on.
async fn may_preview(app: &AppState, user: &UserId, room_id: &str) -> Result<bool> {
    if rooms::membership(&app.db, room_id, user.as_str())
        .await?
        .as_deref()
        == Some("join")
    {
        return Ok(true);
    }
    let Some(room) = rooms::get(&app.db, room_id).await? else {
        return Ok(false);
    };
    let Some(group) = room.current_state_group else {
        return Ok(false);
    };
    let keys = [
        ("m.room.join_rules".to_owned(), String::new()),
        ("m.room.history_visibility".to_owned(), String::new()),
    ];
    let ids: Vec<String> = state::state_for_keys(&app.db, group, &keys)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    for ev in events::get_many(&app.db, &ids).await? {
        let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        let c = &pdu["content"];
        if c["history_visibility"] == "world_readable"
            || matches!(
                c["join_rule"].as_str(),
                Some("public" | "knock" | "knock_restricted")
            )
        {
            return Ok(true);
        }
    }
    Ok(false)
}
