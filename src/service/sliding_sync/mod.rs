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
//! A room new to the connection (or newly joined, or whose full state came in
//! since it was sent: a faster join resynced) comes with `initial: true`,
//! its recent history as far as the user may see it (`limited` when there is
//! more, and a `prev_batch`), and all of its required state; `$LAZY` members are
//! those of the timeline's senders (and the user's), each sent once per
//! connection.
//!
//! Rooms sort by their newest event of a "bump" type (messages, encrypted
//! messages, stickers, call invites, polls, beacons, the room's creation), as
//! Synapse does; invites and left rooms by the membership event.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::sync::sync_events::v5::{Request, Response, response},
};

use super::session::Session;
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{sync as rows, user_streams},
};

mod connections;
mod extensions;
mod lists;
mod room;

pub use connections::Connections;
use connections::{ConnKey, ConnState, SentRoom};
use lists::{Candidate, RoomFacts};

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
/// Timeline events per room at most, whatever the client asks.
const MAX_TIMELINE: u64 = 100;

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

/// The answer is ruma's response type: matrix-rust-sdk reads it with that very
/// type, and it writes every field this server serves. Like the reference
/// proxy (and unlike Synapse), it leaves out what is empty or default (an
/// empty `timeline` or `required_state`, `limited: false`, empty `lists`,
/// `rooms` and `extensions`), which such clients read as empty. The e2ee
/// extension's key counts are never empty (`signed_curve25519` is always
/// counted: [`crate::service::e2e_keys::sync_key_counts`]).
pub async fn sync(app: &AppState, session: &Session, req: &Request) -> Result<Response> {
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
            response.pos = app.sliding.put(key, prev.is_none(), next);
            response.txn_id = req.txn_id.clone();
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

/// Of the joined rooms selected that the connection has sent, those whose
/// full state came in since (a room joined with partial state, resynced:
/// faster joins). They are sent again as new to the connection (`initial`,
/// all of the required state, `$LAZY` members afresh), as `/sync` treats
/// them as newly joined.
async fn resynced_rooms(
    app: &AppState,
    prev: Option<&ConnState>,
    selected: &BTreeMap<String, RoomConfig>,
    by_id: &HashMap<&str, &Candidate>,
    now: i64,
) -> Result<HashSet<String>> {
    let Some(prev) = prev else {
        return Ok(HashSet::new());
    };
    // Sent rooms, each with the position it was sent up to.
    let sent: Vec<(&String, i64)> = selected
        .keys()
        .filter(|r| {
            by_id
                .get(r.as_str())
                .is_some_and(|c| c.membership == "join")
        })
        .filter_map(|r| prev.rooms.get(r).map(|s| (r, s.upto)))
        .collect();
    let Some(oldest) = sent.iter().map(|(_, upto)| *upto).min() else {
        return Ok(HashSet::new());
    };
    let rooms: Vec<String> = sent.iter().map(|(r, _)| (*r).clone()).collect();
    let candidates =
        crate::storage::partial_state::completed_between(&app.db, &rooms, oldest, now).await?;
    let mut out = HashSet::new();
    // Rarely any: each checked against its own position.
    for room in candidates {
        let Some((_, upto)) = sent.iter().find(|(r, _)| **r == room) else {
            continue;
        };
        if !crate::storage::partial_state::completed_between(
            &app.db,
            std::slice::from_ref(&room),
            *upto,
            now,
        )
        .await?
        .is_empty()
        {
            out.insert(room);
        }
    }
    Ok(out)
}

/// The to-device extension's `since`: a `next_batch` it handed out (a message
/// id), or a `/sync` token, whose to-device part matrix-rust-sdk carries over
/// when it switches from `/sync`.
pub(super) fn to_device_since(token: &str) -> Result<i64> {
    match token.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => super::sync::SyncToken::parse(token)
            .map(|t| t.to_device)
            .map_err(|_| Error::invalid_param("Invalid to_device since token")),
    }
}

/// The response (its `pos` still to be set), the state it covers, and
/// whether it carries nothing new.
async fn build(
    app: &AppState,
    session: &Session,
    req: &Request,
    prev: Option<&ConnState>,
    now: i64,
    typing_now: u64,
) -> Result<(Response, ConnState, bool)> {
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
    let mut response = Response::new(String::new());
    let mut list_counts = BTreeMap::new();
    for (name, list) in &req.lists {
        let mut matching = Vec::new();
        for c in &candidates {
            if lists::list_allows(app, user, &mut facts, list.filters.as_ref(), c).await? {
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
        let mut counted = response::List::default();
        counted.count = UInt::try_from(matching.len() as u64).unwrap_or(UInt::MAX);
        response.lists.insert(name.clone(), counted);
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
    let full_state_since = resynced_rooms(app, prev, &selected, &by_id, now).await?;
    let mut initial_rooms = HashSet::new();
    for (room_id, config) in &selected {
        let Some(c) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = prev.and_then(|p| p.rooms.get(room_id));
        let resynced = full_state_since.contains(room_id);
        let built = room::room_section(app, session, c, config, sent, resynced, now).await?;
        let lazy_members = match built {
            Some(built) => {
                if built.initial {
                    initial_rooms.insert(room_id.clone());
                }
                let key = OwnedRoomId::try_from(room_id.as_str())
                    .map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
                response.rooms.insert(key, built.section);
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

    let (extensions, news) = extensions::extensions(
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
    let empty = response.rooms.is_empty() && !lists_changed && !news;
    response.extensions = extensions;
    Ok((response, next, empty))
}
