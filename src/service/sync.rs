//! `GET /sync` (spec: "Syncing"), room sections: `join`, `invite`, `leave`.
//!
//! Tokens are `s{stream}`: everything at or below that stream position has been
//! delivered. A sync reads the window `(since, now]`, where `now` is the notifier's
//! published position (every lower position is committed, so nothing is skipped).
//! With a timeout and nothing to say, it waits on the notifier — no polling.
//!
//! Per joined room:
//! - `timeline`: the newest `limit` events of the window (visible to the user);
//!   `limited` when the window held more; `prev_batch` continues with `/messages`.
//! - `state`: on initial sync, `full_state`, or for a room joined within the
//!   window, the full state before the timeline; for a limited timeline, the state
//!   changes between `since` and the timeline's start; otherwise nothing (the state
//!   events are in the timeline). Lazy loading keeps only the members the timeline
//!   needs (and the user's own).
//!
//! Not yet: ephemeral events, account data, to-device, device lists, presence,
//! notification counts (their issue builds them on these positions).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use super::read::{TopoToken, TypeFilter, Viewer, client_events};
use crate::{
    app::AppState,
    error::{Error, Result},
    storage::{events, events::StoredEvent, state, sync as rows},
};

/// What the client asked for, after parsing the filter.
pub struct Params {
    pub since: Option<i64>,
    pub timeout: Duration,
    pub full_state: bool,
    pub timeline_limit: usize,
    pub lazy_members: bool,
    pub types: TypeFilter,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
}

pub fn parse_token(token: &str) -> Result<i64> {
    token
        .strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| Error::invalid_param("Invalid since token"))
}

pub async fn sync(app: &AppState, user: &UserId, params: &Params) -> Result<Value> {
    let deadline = Instant::now() + params.timeout.min(Duration::from_secs(300));
    let mut wake = app.notifier.subscribe();
    loop {
        let now = app.notifier.current();
        let response = build(app, user, params, now).await?;
        let empty = response["rooms"]
            .as_object()
            .is_none_or(|r| r.values().all(|v| v.as_object().is_none_or(Map::is_empty)));
        if params.since.is_none() || params.full_state || !empty || Instant::now() >= deadline {
            return Ok(response);
        }
        // Nothing new for this user yet: wait for the next published position.
        wake.borrow_and_update();
        if app.notifier.current() != now {
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !app.notifier.wait(&mut wake, remaining).await {
            return Ok(response);
        }
    }
}

async fn build(app: &AppState, user: &UserId, params: &Params, now: i64) -> Result<Value> {
    let since = params.since.unwrap_or(0);
    let initial = params.since.is_none();
    let memberships = rows::memberships(&app.db, user.as_str()).await?;
    let wanted = |room: &str| {
        params
            .rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room))
            && !params.not_rooms.iter().any(|x| x == room)
    };

    let joined: Vec<String> = memberships
        .iter()
        .filter(|m| m.membership == "join" && wanted(&m.room_id))
        .map(|m| m.room_id.clone())
        .collect();
    let active: HashSet<String> = if initial || params.full_state {
        joined.iter().cloned().collect()
    } else {
        rows::rooms_with_events(&app.db, &joined, since, now)
            .await?
            .into_iter()
            .collect()
    };

    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    for m in &memberships {
        if !wanted(&m.room_id) || m.stream_ordering > now {
            continue;
        }
        let room_id =
            RoomId::parse(&m.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
        let changed = m.stream_ordering > since;
        match m.membership.as_str() {
            "join" if active.contains(&m.room_id) => {
                let joined_in_window = !initial && changed;
                let section =
                    joined_room(app, user, &room_id, params, since, now, joined_in_window).await?;
                join.insert(m.room_id.clone(), section);
            }
            "invite" if initial || changed => {
                invite.insert(m.room_id.clone(), json!({ "invite_state": { "events": stripped_state(app, &room_id, &m.event_id).await? } }));
            }
            "leave" | "ban" if (!initial && changed) || (initial && params.include_leave) => {
                let section =
                    left_room(app, user, &room_id, params, since, m.stream_ordering).await?;
                leave.insert(m.room_id.clone(), section);
            }
            _ => {}
        }
    }
    Ok(json!({
        "next_batch": format!("s{now}"),
        "rooms": { "join": join, "invite": invite, "leave": leave },
    }))
}

#[allow(clippy::too_many_arguments)]
async fn joined_room(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    params: &Params,
    since: i64,
    upto: i64,
    joined_in_window: bool,
) -> Result<Value> {
    let mut viewer = Viewer::new(app, user, room_id).await?;
    let (timeline, limited) = timeline(app, &mut viewer, room_id, params, since, upto).await?;
    let initial = params.since.is_none();
    let timeline_start = timeline.first().map_or(upto + 1, |e| e.stream_ordering);

    // State before the timeline, as the spec defines `state`.
    let full = initial || params.full_state || joined_in_window;
    let before = match rows::state_group_at(&app.db, room_id.as_str(), timeline_start - 1).await? {
        Some(g) => state::full_state(&app.db, g).await?,
        None => Vec::new(),
    };
    let mut state_ids: Vec<((String, String), String)> = if full {
        before
    } else if limited {
        let old: HashMap<(String, String), String> =
            match rows::state_group_at(&app.db, room_id.as_str(), since).await? {
                Some(g) => state::full_state(&app.db, g).await?.into_iter().collect(),
                None => HashMap::new(),
            };
        before
            .into_iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .collect()
    } else {
        Vec::new()
    };
    // Events already in the timeline are not repeated in `state`.
    let in_timeline: HashSet<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
    state_ids.retain(|(_, id)| !in_timeline.contains(id.as_str()));
    if params.lazy_members {
        let needed: HashSet<String> = timeline
            .iter()
            .map(|e| e.sender.clone())
            .chain(std::iter::once(user.to_string()))
            .collect();
        state_ids.retain(|((t, k), _)| t != "m.room.member" || needed.contains(k));
    }
    let ids: Vec<String> = state_ids.into_iter().map(|(_, id)| id).collect();
    let state_events = events::get_many(&app.db, &ids).await?;

    let prev_batch = timeline.first().map(|e| {
        TopoToken {
            depth: e.depth,
            stream: e.stream_ordering,
        }
        .to_string()
    });
    let mut timeline_json = client_events(&app.db, &viewer.rules, &timeline).await?;
    super::timeline::bundle_threads(app, &mut viewer, user, &mut timeline_json).await?;
    let mut section = json!({
        "timeline": { "events": timeline_json, "limited": limited },
        "state": { "events": client_events(&app.db, &viewer.rules, &state_events).await? },
        "ephemeral": { "events": [] },
        "account_data": { "events": [] },
        "summary": summary(app, user, room_id).await?,
    });
    if let Some(prev) = prev_batch {
        section["timeline"]["prev_batch"] = prev.into();
    }
    Ok(section)
}

/// The newest `limit` visible events of the window, oldest first, and whether
/// the window held more.
async fn timeline(
    app: &AppState,
    viewer: &mut Viewer<'_>,
    room_id: &RoomId,
    params: &Params,
    since: i64,
    upto: i64,
) -> Result<(Vec<StoredEvent>, bool)> {
    let limit = params.timeline_limit.clamp(1, 100);
    let fetched =
        rows::room_events(&app.db, room_id.as_str(), since, upto, (limit + 1) as i64).await?;
    let limited = fetched.len() > limit;
    let mut out = Vec::with_capacity(limit);
    for ev in fetched.into_iter().take(limit) {
        if params.types.matches(&ev.event_type) && viewer.may_see(&ev).await? {
            out.push(ev);
        }
    }
    out.reverse();
    Ok((out, limited))
}

/// A room the user left (or was kicked or banned from) in the window: the
/// timeline up to and including their leave event.
async fn left_room(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    params: &Params,
    since: i64,
    left_at: i64,
) -> Result<Value> {
    let mut viewer = Viewer::new(app, user, room_id).await?;
    let limit = params.timeline_limit.clamp(1, 100);
    let fetched = rows::room_events(
        &app.db,
        room_id.as_str(),
        since,
        left_at,
        (limit + 1) as i64,
    )
    .await?;
    let limited = fetched.len() > limit;
    let mut events_in = Vec::new();
    for ev in fetched.into_iter().take(limit) {
        // The user may no longer be joined, but saw these while they were.
        if viewer.may_see(&ev).await? || ev.state_key.as_deref() == Some(user.as_str()) {
            events_in.push(ev);
        }
    }
    events_in.reverse();
    let mut section = json!({
        "timeline": { "events": client_events(&app.db, &viewer.rules, &events_in).await?, "limited": limited },
        "state": { "events": [] },
        "account_data": { "events": [] },
    });
    if let Some(first) = events_in.first() {
        section["timeline"]["prev_batch"] = TopoToken {
            depth: first.depth,
            stream: first.stream_ordering,
        }
        .to_string()
        .into();
    }
    Ok(section)
}

/// Stripped state for an invite (spec: "Stripped state"): enough to show the room.
async fn stripped_state(
    app: &AppState,
    room_id: &RoomId,
    invite_event: &str,
) -> Result<Vec<Value>> {
    let Some(room) = crate::storage::rooms::get(&app.db, room_id.as_str()).await? else {
        return Ok(Vec::new());
    };
    let keys: Vec<(String, String)> = [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
        "m.room.topic",
    ]
    .iter()
    .map(|t| ((*t).to_owned(), String::new()))
    .collect();
    let mut ids: Vec<String> = match room.current_state_group {
        Some(g) => state::state_for_keys(&app.db, g, &keys)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect(),
        None => Vec::new(),
    };
    ids.push(invite_event.to_owned());
    let mut out = Vec::new();
    for ev in events::get_many(&app.db, &ids).await? {
        let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        out.push(json!({
            "type": pdu["type"],
            "state_key": pdu["state_key"],
            "content": pdu["content"],
            "sender": pdu["sender"],
        }));
    }
    Ok(out)
}

/// `summary`: member counts and, for rooms without a name, up to five heroes.
async fn summary(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<Value> {
    let joined = crate::storage::rooms::members(&app.db, room_id.as_str(), "join").await?;
    let invited = crate::storage::rooms::members(&app.db, room_id.as_str(), "invite").await?;
    let heroes: Vec<&String> = joined
        .iter()
        .chain(invited.iter())
        .map(|(u, _)| u)
        .filter(|u| u.as_str() != user.as_str())
        .take(5)
        .collect();
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined.len(),
        "m.invited_member_count": invited.len(),
    }))
}
