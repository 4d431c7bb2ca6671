//! Simplified sliding sync (MSC4186,
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`), which
//! Element X and matrix-rust-sdk use instead of `/sync`.
//!
//! The client names lists of rooms (with ranges over the user's rooms sorted by
//! recency, filters, a timeline limit and the state it needs) and explicit room
//! subscriptions; the server answers each list's count and the rooms in range
//! that changed since the connection's last response.
//!
//! Connection state lives in memory, per (user, device, `conn_id`): for each
//! `pos` handed out, the stream positions it covered and, per room, up to where
//! that room was sent and with which configuration. A request names the `pos` it
//! continues from; the few latest are kept so a retried request (lost response)
//! still works. A `pos` the server no longer has (restart, eviction) answers
//! `400 M_UNKNOWN_POS` and the client starts a new connection. Request
//! parameters are not sticky: each request carries its lists, subscriptions
//! and extensions, as matrix-rust-sdk sends them.
//!
//! A room new to the connection (or newly joined) comes with `initial: true`,
//! its recent history as far as the user may see it (`limited` when there is
//! more, and a `prev_batch`), and all of its required state; `$LAZY` members are
//! those of the timeline's senders (and the user's), each sent once per
//! connection.
//!
//! Rooms sort by their newest event of a "bump" type (messages, encrypted
//! messages, stickers, call invites, polls, beacons, the room's creation), as
//! Synapse does; invites and left rooms by the membership event.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    RoomId, UserId,
    api::client::sync::sync_events::v5::{Request, request},
};
use serde_json::{Map, Value, json};

use super::{read::Viewer, session::Session, tokens::TopoToken};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{e2e_keys, events, rooms, state, sync as rows, user_streams},
};

/// Event types that move a room to the top of a list.
const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];
/// `pos` values kept per connection (the latest, and a few before it for retries).
const KEPT_POSITIONS: usize = 4;
/// Connections kept per device; the least recently used goes first.
const CONNECTIONS_PER_DEVICE: usize = 8;
/// A connection unused this long is forgotten.
const CONNECTION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Timeline events per room at most, whatever the client asks.
const MAX_TIMELINE: u64 = 100;
const TO_DEVICE_LIMIT: i64 = 100;

/// What one `pos` covered.
#[derive(Clone, Default)]
struct ConnState {
    stream: i64,
    typing: u64,
    rooms: HashMap<String, SentRoom>,
    lists: BTreeMap<String, usize>,
}

/// A room as last sent on a connection.
#[derive(Clone)]
struct SentRoom {
    /// Stream position the room was sent up to.
    upto: i64,
    /// The configuration it was sent with (timeline limit and required state).
    config: String,
    /// The membership event it was sent with.
    membership_event: String,
    /// Member events `$LAZY` sent (by member), so they are not sent again.
    lazy_members: HashMap<String, String>,
}

struct Conn {
    next: u64,
    states: VecDeque<(u64, ConnState)>,
    used: Instant,
}

type ConnKey = (String, String, String);

/// Sliding-sync connections of every user, in memory.
#[derive(Default)]
pub struct Connections {
    inner: Mutex<HashMap<ConnKey, Conn>>,
}

impl Connections {
    fn get(&self, key: &ConnKey, pos: &str) -> Option<ConnState> {
        let serial: u64 = pos.parse().ok()?;
        let mut inner = self.inner.lock().expect("connections lock");
        let conn = inner.get_mut(key)?;
        conn.used = Instant::now();
        conn.states
            .iter()
            .find(|(s, _)| *s == serial)
            .map(|(_, st)| st.clone())
    }

    /// Stores the state a response covered and returns its `pos`. A request
    /// without `pos` starts the connection afresh.
    fn put(&self, key: ConnKey, fresh: bool, state: ConnState) -> String {
        let mut inner = self.inner.lock().expect("connections lock");
        let now = Instant::now();
        inner.retain(|_, c| now.duration_since(c.used) < CONNECTION_IDLE);
        let same_device = inner
            .keys()
            .filter(|(u, d, _)| *u == key.0 && *d == key.1)
            .count();
        if !inner.contains_key(&key) && same_device >= CONNECTIONS_PER_DEVICE {
            let oldest = inner
                .iter()
                .filter(|((u, d, _), _)| *u == key.0 && *d == key.1)
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.remove(&oldest);
            }
        }
        let conn = inner.entry(key).or_insert_with(|| Conn {
            next: 1,
            states: VecDeque::new(),
            used: now,
        });
        if fresh {
            conn.states.clear();
        }
        let serial = conn.next;
        conn.next += 1;
        conn.used = now;
        conn.states.push_back((serial, state));
        while conn.states.len() > KEPT_POSITIONS {
            conn.states.pop_front();
        }
        serial.to_string()
    }
}

/// How a room is to be sent: the largest timeline and the union of the state
/// asked for by every list and subscription that selected it.
#[derive(Clone, Default)]
struct RoomConfig {
    timeline_limit: u64,
    required_state: Vec<(String, String)>,
}

impl RoomConfig {
    fn merge(&mut self, limit: u64, required: &[(ruma::events::StateEventType, String)]) {
        self.timeline_limit = self.timeline_limit.max(limit.min(MAX_TIMELINE));
        for (t, k) in required {
            let pair = (t.to_string(), k.clone());
            if !self.required_state.contains(&pair) {
                self.required_state.push(pair);
            }
        }
    }

    fn fingerprint(&self) -> String {
        let mut state = self.required_state.clone();
        state.sort();
        format!("{}|{state:?}", self.timeline_limit)
    }

    /// Whether a state entry is asked for (`*` wildcards, `$ME`; `$LAZY` members
    /// are added separately).
    fn wants(&self, user: &UserId, event_type: &str, state_key: &str) -> bool {
        self.required_state.iter().any(|(t, k)| {
            (t == "*" || t == event_type)
                && (k == "*" || k == state_key || (k == "$ME" && state_key == user.as_str()))
        })
    }

    fn lazy_members(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY")
    }
}

pub async fn sync(app: &AppState, session: &Session, req: &Request) -> Result<Value> {
    let key: ConnKey = (
        session.user_id.to_string(),
        session.device_id.to_string(),
        req.conn_id.clone().unwrap_or_default(),
    );
    let prev = match &req.pos {
        None => None,
        Some(pos) => Some(app.sliding.get(&key, pos).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownPos,
                "Unknown or expired sliding sync position",
            )
        })?),
    };
    let to_device = &req.extensions.to_device;
    if to_device.enabled == Some(true)
        && let Some(since) = to_device.since.as_deref()
    {
        let since = to_device_since(since)?;
        user_streams::ack_to_device(
            &app.db,
            session.user_id.as_str(),
            session.device_id.as_str(),
            since,
        )
        .await?;
    }
    super::presence::on_sync(app, &session.user_id, req.set_presence.as_str()).await?;

    let timeout = req.timeout.unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + timeout.min(Duration::from_secs(300));
    let mut wake = app.notifier.subscribe();
    let mut typing_wake = app.typing.subscribe();
    loop {
        wake.borrow_and_update();
        typing_wake.borrow_and_update();
        let now = app.notifier.current();
        let typing_now = app.typing.current();
        let (mut response, next, empty) =
            build(app, session, req, prev.as_ref(), now, typing_now).await?;
        let waited_enough = Instant::now() >= deadline;
        if prev.is_none() || !empty || waited_enough {
            let pos = app.sliding.put(key, prev.is_none(), next);
            response["pos"] = pos.into();
            if let Some(txn) = &req.txn_id {
                response["txn_id"] = txn.clone().into();
            }
            return Ok(response);
        }
        if app.notifier.current() != now || app.typing.current() != typing_now {
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = app.notifier.wait(&mut wake, remaining) => {}
            _ = typing_wake.changed() => {}
        }
    }
}

/// The to-device extension's `since`: a `next_batch` it handed out (a message
/// id), or a `/sync` token, whose to-device part matrix-rust-sdk carries over
/// when it switches from `/sync`.
fn to_device_since(token: &str) -> Result<i64> {
    match token.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => super::sync::SyncToken::parse(token)
            .map(|t| t.to_device)
            .map_err(|_| Error::invalid_param("Invalid to_device since token")),
    }
}

/// One candidate room of the user's.
struct Candidate {
    room_id: String,
    membership: String,
    membership_event: String,
    membership_stream: i64,
    stamp: i64,
}

async fn build(
    app: &AppState,
    session: &Session,
    req: &Request,
    prev: Option<&ConnState>,
    now: i64,
    typing_now: u64,
) -> Result<(Value, ConnState, bool)> {
    let user: &UserId = &session.user_id;
    let since = prev.map_or(0, |p| p.stream);
    let memberships = rows::memberships(&app.db, user.as_str()).await?;
    let mut candidates: Vec<Candidate> = memberships
        .into_iter()
        .filter(|m| m.stream_ordering <= now)
        .filter(|m| {
            matches!(m.membership.as_str(), "join" | "invite" | "knock")
                // A room left since the last response, so the client learns of it.
                || prev.is_some_and(|p| {
                    m.stream_ordering > since && p.rooms.contains_key(&m.room_id)
                })
        })
        .map(|m| Candidate {
            stamp: m.stream_ordering,
            room_id: m.room_id,
            membership: m.membership,
            membership_event: m.event_id,
            membership_stream: m.stream_ordering,
        })
        .collect();
    let joined: Vec<String> = candidates
        .iter()
        .filter(|c| c.membership == "join")
        .map(|c| c.room_id.clone())
        .collect();
    let bump_types: Vec<String> = BUMP_TYPES.iter().map(|t| (*t).to_owned()).collect();
    let stamps: HashMap<String, i64> = rows::bump_stamps(&app.db, &joined, &bump_types, now)
        .await?
        .into_iter()
        .filter_map(|b| b.stream_ordering.map(|s| (b.room_id, s)))
        .collect();
    for c in &mut candidates {
        if let Some(s) = stamps.get(&c.room_id) {
            c.stamp = (*s).max(if c.membership == "join" { 0 } else { c.stamp });
        }
    }
    candidates.sort_by(|a, b| b.stamp.cmp(&a.stamp).then(a.room_id.cmp(&b.room_id)));

    // Lists: filter, count, and pick the rooms in range.
    let mut facts = RoomFacts::default();
    let mut selected: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut lists_out = Map::new();
    let mut list_counts = BTreeMap::new();
    for (name, list) in &req.lists {
        let mut matching = Vec::new();
        for c in &candidates {
            if list_allows(app, user, &mut facts, list.filters.as_ref(), c).await? {
                matching.push(c);
            }
        }
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
            for c in matching
                .iter()
                .skip(start)
                .take(end.saturating_sub(start) + 1)
            {
                selected.entry(c.room_id.clone()).or_default().merge(
                    u64::from(list.room_details.timeline_limit),
                    &list.room_details.required_state,
                );
            }
        }
        lists_out.insert(name.clone(), json!({ "count": matching.len() }));
        list_counts.insert(name.clone(), matching.len());
    }
    for (room_id, sub) in &req.room_subscriptions {
        if candidates.iter().any(|c| c.room_id == room_id.as_str()) {
            selected
                .entry(room_id.to_string())
                .or_default()
                .merge(u64::from(sub.timeline_limit), &sub.required_state);
        }
    }

    // The rooms that changed since they were last sent.
    let by_id: HashMap<&str, &Candidate> =
        candidates.iter().map(|c| (c.room_id.as_str(), c)).collect();
    let mut next = ConnState {
        stream: now,
        typing: typing_now,
        rooms: prev.map(|p| p.rooms.clone()).unwrap_or_default(),
        lists: list_counts,
    };
    let mut rooms_out = Map::new();
    let mut initial_rooms = HashSet::new();
    for (room_id, config) in &selected {
        let Some(c) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = prev.and_then(|p| p.rooms.get(room_id));
        let built = room_section(app, session, c, config, sent, now).await?;
        let lazy_members = match built {
            Some(built) => {
                if built.initial {
                    initial_rooms.insert(room_id.clone());
                }
                rooms_out.insert(room_id.clone(), built.section);
                built.lazy_members
            }
            None => sent.map(|s| s.lazy_members.clone()).unwrap_or_default(),
        };
        next.rooms.insert(
            room_id.clone(),
            SentRoom {
                upto: now,
                config: config.fingerprint(),
                membership_event: c.membership_event.clone(),
                lazy_members,
            },
        );
    }

    let (extensions, news) = extensions(
        app,
        session,
        req,
        prev,
        now,
        typing_now,
        &selected,
        &initial_rooms,
    )
    .await?;
    let lists_changed = prev.is_none_or(|p| p.lists != next.lists);
    let empty = rooms_out.is_empty() && !lists_changed && !news;
    Ok((
        json!({ "lists": lists_out, "rooms": rooms_out, "extensions": extensions }),
        next,
        empty,
    ))
}

/// Per-room facts some list filters need, read once per request.
#[derive(Default)]
struct RoomFacts {
    direct: Option<HashSet<String>>,
    encrypted: HashMap<String, bool>,
    room_type: HashMap<String, Option<String>>,
}

async fn list_allows(
    app: &AppState,
    user: &UserId,
    facts: &mut RoomFacts,
    filters: Option<&request::ListFilters>,
    c: &Candidate,
) -> Result<bool> {
    let Some(f) = filters else {
        return Ok(true);
    };
    if let Some(is_invite) = f.is_invite
        && is_invite != (c.membership == "invite")
    {
        return Ok(false);
    }
    if let Some(is_dm) = f.is_dm {
        if facts.direct.is_none() {
            facts.direct = Some(direct_rooms(app, user).await?);
        }
        let dm = facts
            .direct
            .as_ref()
            .is_some_and(|d| d.contains(&c.room_id));
        if dm != is_dm {
            return Ok(false);
        }
    }
    if let Some(is_encrypted) = f.is_encrypted {
        if !facts.encrypted.contains_key(&c.room_id) {
            let found = current_state(app, &c.room_id, &[("m.room.encryption", "")]).await?;
            facts.encrypted.insert(c.room_id.clone(), !found.is_empty());
        }
        if facts.encrypted[&c.room_id] != is_encrypted {
            return Ok(false);
        }
    }
    if !f.room_types.is_empty() || !f.not_room_types.is_empty() {
        if !facts.room_type.contains_key(&c.room_id) {
            let create = current_state(app, &c.room_id, &[("m.room.create", "")]).await?;
            let kind = create
                .first()
                .and_then(|e| e["content"]["type"].as_str().map(str::to_owned));
            facts.room_type.insert(c.room_id.clone(), kind);
        }
        let kind = facts.room_type[&c.room_id].as_deref();
        let is = |filter: &ruma::directory::RoomTypeFilter| match filter {
            ruma::directory::RoomTypeFilter::Default => kind.is_none(),
            other => other.as_str() == kind,
        };
        if !f.room_types.is_empty() && !f.room_types.iter().any(is) {
            return Ok(false);
        }
        if f.not_room_types.iter().any(is) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rooms the user marked as direct chats (`m.direct` account data).
async fn direct_rooms(app: &AppState, user: &UserId) -> Result<HashSet<String>> {
    let content = user_streams::get_account_data(&app.db, user.as_str(), "", "m.direct").await?;
    let content: Value = content
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default();
    Ok(content
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Current state events of a room for some keys, as PDU JSON.
async fn current_state(app: &AppState, room_id: &str, keys: &[(&str, &str)]) -> Result<Vec<Value>> {
    let Some(group) = rooms::get(&app.db, room_id)
        .await?
        .and_then(|r| r.current_state_group)
    else {
        return Ok(Vec::new());
    };
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
        .collect();
    let ids: Vec<String> = state::state_for_keys(&app.db, group, &keys)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    Ok(events::get_many(&app.db, &ids)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_str(&e.json).ok())
        .collect())
}

/// A room's section as built for a response.
struct Built {
    section: Value,
    /// Whether the room is new to the connection (`initial`).
    initial: bool,
    /// The `$LAZY` member events the connection holds after this response.
    lazy_members: HashMap<String, String>,
}

/// A room's section, if there is anything to send.
async fn room_section(
    app: &AppState,
    session: &Session,
    c: &Candidate,
    config: &RoomConfig,
    sent: Option<&SentRoom>,
    now: i64,
) -> Result<Option<Built>> {
    let user: &UserId = &session.user_id;
    let room_id = RoomId::parse(&c.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
    let membership_changed = sent.is_none_or(|s| s.membership_event != c.membership_event);
    if c.membership == "invite" || c.membership == "knock" {
        if !membership_changed {
            return Ok(None);
        }
        let mut section = json!({
            "initial": true,
            "bump_stamp": c.stamp,
        });
        if c.membership == "invite" {
            section["invite_state"] =
                super::sync::stripped_state(app, &room_id, &c.membership_event)
                    .await?
                    .into();
        }
        return Ok(Some(Built {
            section,
            initial: true,
            lazy_members: HashMap::new(),
        }));
    }

    if c.membership != "join"
        && crate::storage::rooms::get(&app.db, room_id.as_str())
            .await?
            .is_none()
    {
        // A rejected invite to a room this server was never in.
        return Ok(None);
    }
    let initial = sent.is_none() || (membership_changed && c.membership == "join");
    let config_changed = sent.is_some_and(|s| s.config != config.fingerprint());
    let after = match sent {
        Some(s) if !initial => s.upto,
        _ => i64::MIN,
    };
    // A left room shows events up to the leave.
    let upto = if c.membership == "join" {
        now
    } else {
        c.membership_stream
    };
    if !initial
        && !config_changed
        && rows::room_events(&app.db, room_id.as_str(), after, upto, 1)
            .await?
            .is_empty()
        && !own_receipt_changed(app, user, &room_id, after, now).await?
    {
        // Nothing since the room was last sent.
        return Ok(None);
    }
    let mut viewer = Viewer::for_session(app, session, &room_id).await?;
    // A room new to the connection (or newly joined) gets its recent history,
    // as far as the user may see it; later, what came since it was last sent.
    // Always the user's own membership changes.
    let recent = super::sync::recent_events(
        app,
        &mut viewer,
        &room_id,
        after,
        upto,
        config.timeline_limit as usize,
        |ev, visible| visible || ev.state_key.as_deref() == Some(user.as_str()),
    )
    .await?;
    let limited = recent.more;
    let timeline = recent.events;

    // required_state: all of it when the room is new to the connection or asked
    // for differently; else what changed since it was last sent.
    let now_group = rows::state_group_at(&app.db, room_id.as_str(), upto).await?;
    let current: Vec<((String, String), String)> = match now_group {
        Some(g) => state::full_state(&app.db, g).await?,
        None => Vec::new(),
    };
    let changed: Vec<((String, String), String)> = if initial || config_changed {
        current.clone()
    } else {
        let old: HashMap<(String, String), String> =
            match rows::state_group_at(&app.db, room_id.as_str(), after).await? {
                Some(g) if Some(g) != now_group => {
                    state::full_state(&app.db, g).await?.into_iter().collect()
                }
                Some(_) => current.iter().cloned().collect(),
                None => HashMap::new(),
            };
        current
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .cloned()
            .collect()
    };
    let senders: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
    let lazy = config.lazy_members();
    let ids: Vec<String> = changed
        .iter()
        .filter(|((t, k), _)| {
            config.wants(user, t, k)
                || (lazy
                    && t == "m.room.member"
                    && (senders.contains(k.as_str()) || k == user.as_str()))
        })
        .map(|(_, id)| id.clone())
        .collect();
    // The member events this connection holds for the room: none when the
    // room is sent afresh.
    let mut lazy_members: HashMap<String, String> = match sent {
        Some(s) if !(initial || config_changed) => s.lazy_members.clone(),
        _ => HashMap::new(),
    };
    let mut lazy_extra: Vec<String> = Vec::new();
    if lazy && !(initial || config_changed) {
        // Members of the senders whose member events the connection lacks,
        // even if those did not change.
        for ((t, k), id) in &current {
            if t == "m.room.member"
                && senders.contains(k.as_str())
                && !ids.contains(id)
                && lazy_members.get(k) != Some(id)
            {
                lazy_extra.push(id.clone());
            }
        }
    }
    let state_ids: Vec<String> = ids.into_iter().chain(lazy_extra).collect();
    let state_events = events::get_many(&app.db, &state_ids).await?;
    if lazy {
        for ev in state_events.iter().chain(&timeline) {
            if ev.event_type == "m.room.member"
                && let Some(member) = &ev.state_key
            {
                lazy_members.insert(member.clone(), ev.event_id.clone());
            }
        }
    }

    let timeline_json = viewer.client_events(&timeline).await?;
    let mut section = json!({
        "timeline": timeline_json,
        "required_state": viewer.client_events(&state_events).await?,
        "limited": limited,
        "bump_stamp": c.stamp,
    });
    if initial {
        section["initial"] = true.into();
    } else {
        section["num_live"] = timeline.len().into();
    }
    if let Some(first) = timeline.first() {
        section["prev_batch"] = TopoToken::before(first).to_string().into();
    }
    let names_changed = initial
        || changed
            .iter()
            .any(|((t, _), _)| t == "m.room.name" || t == "m.room.avatar" || t == "m.room.member");
    if names_changed {
        describe(app, user, &room_id, &current, &mut section).await?;
    }
    let (n, h) = user_streams::unread_by_thread(&app.db, user.as_str(), room_id.as_str())
        .await?
        .iter()
        .fold((0, 0), |(n, h), r| (n + r.notifications, h + r.highlights));
    section["notification_count"] = n.into();
    section["highlight_count"] = h.into();
    Ok(Some(Built {
        section,
        initial,
        lazy_members,
    }))
}

/// Whether the user's own read receipts in the room moved (their counts changed).
async fn own_receipt_changed(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    after: i64,
    upto: i64,
) -> Result<bool> {
    Ok(
        user_streams::receipts_since(&app.db, &[room_id.to_string()], after, upto)
            .await?
            .iter()
            .any(|r| r.user_id == user.as_str()),
    )
}

/// `name`, `avatar`, `heroes`, `joined_count`, `invited_count`.
async fn describe(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    current: &[((String, String), String)],
    section: &mut Value,
) -> Result<()> {
    let find = |t: &str| {
        current
            .iter()
            .find(|((et, k), _)| et == t && k.is_empty())
            .map(|(_, id)| id.clone())
    };
    let ids: Vec<String> = [find("m.room.name"), find("m.room.avatar")]
        .into_iter()
        .flatten()
        .collect();
    for ev in events::get_many(&app.db, &ids).await? {
        let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        match ev.event_type.as_str() {
            "m.room.name" => {
                if let Some(name) = pdu["content"]["name"].as_str().filter(|n| !n.is_empty()) {
                    section["name"] = name.into();
                }
            }
            _ => {
                section["avatar"] = pdu["content"]["url"].clone();
            }
        }
    }
    let joined = rooms::members(&app.db, room_id.as_str(), "join").await?;
    let invited = rooms::members(&app.db, room_id.as_str(), "invite").await?;
    section["joined_count"] = joined.len().into();
    section["invited_count"] = invited.len().into();
    if section.get("name").is_none() {
        let hero_ids: Vec<String> = joined
            .iter()
            .chain(invited.iter())
            .filter(|(u, _)| u.as_str() != user.as_str())
            .take(5)
            .map(|(_, event_id)| event_id.clone())
            .collect();
        let mut heroes = Vec::new();
        for ev in events::get_many(&app.db, &hero_ids).await? {
            let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
            let mut hero = json!({ "user_id": pdu["state_key"] });
            if let Some(name) = pdu["content"]["displayname"].as_str() {
                hero["displayname"] = name.into();
            }
            if let Some(url) = pdu["content"]["avatar_url"].as_str() {
                hero["avatar_url"] = url.into();
            }
            heroes.push(hero);
        }
        section["heroes"] = heroes.into();
    }
    Ok(())
}

/// The extensions the request enabled, and whether they carry anything new
/// (to wake a long-poll).
#[allow(clippy::too_many_arguments)]
async fn extensions(
    app: &AppState,
    session: &Session,
    req: &Request,
    prev: Option<&ConnState>,
    now: i64,
    typing_now: u64,
    selected: &BTreeMap<String, RoomConfig>,
    initial_rooms: &HashSet<String>,
) -> Result<(Value, bool)> {
    let user = session.user_id.as_str();
    let device = session.device_id.as_str();
    let since = prev.map_or(0, |p| p.stream);
    let ext = &req.extensions;
    let mut out = Map::new();
    let rooms: Vec<String> = selected.keys().cloned().collect();
    let mut news = false;

    if ext.to_device.enabled == Some(true) {
        let limit = ext.to_device.limit.map_or(TO_DEVICE_LIMIT, |l| {
            (u64::from(l) as i64).clamp(1, TO_DEVICE_LIMIT)
        });
        let pending = user_streams::to_device_pending(&app.db, user, device, now, limit).await?;
        let since_id = match ext.to_device.since.as_deref() {
            Some(s) => to_device_since(s)?,
            None => 0,
        };
        let next_batch = pending.last().map_or(since_id, |m| m.id);
        news |= !pending.is_empty();
        {
            let events: Vec<Value> = pending
                .into_iter()
                .map(|m| {
                    json!({
                        "sender": m.sender,
                        "type": m.event_type,
                        "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default(),
                    })
                })
                .collect();
            out.insert(
                "to_device".into(),
                json!({ "next_batch": next_batch.to_string(), "events": events }),
            );
        }
    }

    if ext.e2ee.enabled == Some(true) {
        let mut e2ee = Map::new();
        if prev.is_some() {
            let (changed, left) =
                super::e2e_keys::device_list_delta(app, &session.user_id, since, now).await?;
            if !changed.is_empty() || !left.is_empty() {
                e2ee.insert(
                    "device_lists".into(),
                    json!({ "changed": changed, "left": left }),
                );
            }
        }
        let counts: Map<String, Value> = e2e_keys::one_time_key_counts(&app.db, user, device)
            .await?
            .into_iter()
            .map(|c| (c.algorithm, Value::from(c.count)))
            .collect();
        let fallback = e2e_keys::unused_fallback_algorithms(&app.db, user, device).await?;
        // Counts and fallback types are state, not news: only the first response
        // and device-list changes make the response non-empty.
        let changed = prev.is_none() || e2ee.contains_key("device_lists");
        news |= e2ee.contains_key("device_lists");
        if changed {
            e2ee.insert("device_one_time_keys_count".into(), counts.into());
            e2ee.insert("device_unused_fallback_key_types".into(), fallback.into());
            out.insert("e2ee".into(), Value::Object(e2ee));
        }
    }

    if ext.account_data.enabled == Some(true) {
        let mut global = Vec::new();
        let mut by_room: Map<String, Value> = Map::new();
        let mut push_room = |row: user_streams::AccountData| {
            let content: Value = serde_json::from_str(&row.content).unwrap_or_default();
            let event = json!({ "type": row.data_type, "content": content });
            if row.room_id.is_empty() {
                global.push(event);
            } else if rooms.contains(&row.room_id) {
                by_room
                    .entry(row.room_id)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(event);
            }
        };
        let mut sent_rooms: HashSet<String> = HashSet::new();
        if prev.is_some() && !initial_rooms.is_empty() {
            // Everything for rooms new to the connection.
            for row in user_streams::account_data_since(&app.db, user, 0, now).await? {
                if initial_rooms.contains(&row.room_id) {
                    sent_rooms.insert(row.room_id.clone());
                    push_room(row);
                }
            }
        }
        for row in user_streams::account_data_since(&app.db, user, since, now).await? {
            if !sent_rooms.contains(&row.room_id) {
                push_room(row);
            }
        }
        if prev.is_none()
            && !global
                .iter()
                .any(|e| e["type"] == super::push::ACCOUNT_DATA_TYPE)
        {
            let rules = super::push::rules(app, &session.user_id).await?;
            global.push(json!({
                "type": super::push::ACCOUNT_DATA_TYPE,
                "content": rules.to_content(),
            }));
        }
        if !global.is_empty() || !by_room.is_empty() {
            news |= prev.is_some();
            out.insert(
                "account_data".into(),
                json!({ "global": global, "rooms": by_room }),
            );
        }
    }

    if ext.receipts.enabled == Some(true) && !rooms.is_empty() {
        let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let fresh: Vec<String> = rooms
            .iter()
            .filter(|r| initial_rooms.contains(*r))
            .cloned()
            .collect();
        let old: Vec<String> = rooms
            .iter()
            .filter(|r| !initial_rooms.contains(*r))
            .cloned()
            .collect();
        let mut receipts = user_streams::receipts_since(&app.db, &old, since, now).await?;
        receipts.extend(user_streams::receipts_since(&app.db, &fresh, 0, now).await?);
        // The same privacy rule as `/sync`: private receipts only to their owner.
        content.extend(super::receipts::contents(receipts, &session.user_id));
        if !content.is_empty() {
            news = true;
            let rooms: Map<String, Value> = content
                .into_iter()
                .map(|(room, c)| (room, json!({ "type": "m.receipt", "content": c })))
                .collect();
            out.insert("receipts".into(), json!({ "rooms": rooms }));
        }
    }

    if ext.typing.enabled == Some(true) && !rooms.is_empty() {
        let typing_since = prev.map_or(0, |p| p.typing);
        let mut by_room = Map::new();
        for (room, users) in app.typing.changed_since(&rooms, typing_since) {
            if prev.is_none() && users.is_empty() {
                continue;
            }
            by_room.insert(
                room,
                json!({ "type": "m.typing", "content": { "user_ids": users } }),
            );
        }
        let _ = typing_now;
        if !by_room.is_empty() {
            news = true;
            out.insert("typing".into(), json!({ "rooms": by_room }));
        }
    }
    Ok((Value::Object(out), news))
}
