//! `GET /sync` (spec: "Syncing"), room sections: `join`, `invite`, `leave`.
//!
//! Tokens are [`SyncToken`]s: everything at or below the stream position has been
//! delivered. A sync reads the window `(since, now]`, where `now` is the notifier's
//! published position (every lower position is committed, so nothing is skipped).
//! With a timeout and nothing to say, it waits on the notifier — no polling.
//!
//! Per joined room:
//! - `timeline`: the newest `limit` events of the window that the user may see
//!   (read back page by page, so hidden history does not crowd them out);
//!   `limited` when the window held more; `prev_batch` continues with `/messages`.
//!   A room joined within the window (the user was not joined at `since`) is new
//!   to the client: its timeline reaches back before the window, as far as
//!   history visibility lets the user see, and is always `limited`, as on Synapse.
//! - `state`: on initial sync, `full_state`, or for a room joined within the
//!   window, the full state before the timeline; for a limited timeline, the state
//!   changes between `since` and the timeline's start; otherwise nothing (the state
//!   events are in the timeline). Lazy loading keeps only the members the timeline
//!   needs (and the user's own), and adds the member events of the timeline's
//!   senders that the device has not been sent yet ([`super::lazy_members`]).
//! - `invite_state`: stripped state, the inviter's member event, and the invite.
//!
//! The filter ([`crate::domain::filter::Filter`]) picks the rooms and what each
//! section carries: the timeline is filtered before its limit is counted, and
//! only among events the user may see; `event_fields` and `event_format` shape
//! the room events. An incremental sync leaves out a room whose news were all
//! filtered out.
//!
//! Besides rooms: global and room account data, receipts and typing (`ephemeral`),
//! to-device messages, `device_lists`, one-time key counts and unused fallback key
//! types, presence, and notification counts per room (and per thread).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{
    client_event::format_filtered_pair,
    read::{Viewer, filter_allows},
    session::Session,
    tokens::TopoToken,
};
use crate::{
    domain::filter::{Candidate, EventFilter, Filter},
    error::{Error, Result},
    service::AppState,
    storage::{e2e_keys, events, events::StoredEvent, state, sync as rows, user_streams},
};

/// Joined rooms whose sections one sync builds concurrently.
const ROOMS_AT_ONCE: usize = 8;

/// What the client asked for, after parsing the filter.
pub struct Params {
    pub since: Option<SyncToken>,
    pub timeout: Duration,
    pub full_state: bool,
    pub timeline_limit: usize,
    pub lazy_members: bool,
    /// Lazy loading sends the senders' member events even to a device that
    /// has them (`include_redundant_members`).
    pub redundant_members: bool,
    /// Split notification counts by thread (`unread_thread_notifications`).
    pub unread_threads: bool,
    /// The whole filter: which rooms, and what of each section.
    pub filter: Filter,
}

impl Params {
    /// What a filter asks for, with the request's token, timeout and
    /// `full_state`.
    pub fn new(
        filter: Filter,
        since: Option<SyncToken>,
        timeout: Duration,
        full_state: bool,
    ) -> Self {
        let (state, timeline) = (&filter.state, &filter.timeline);
        Self {
            since,
            timeout,
            full_state,
            timeline_limit: timeline.limit.unwrap_or(10),
            lazy_members: state.lazy_load_members || timeline.lazy_load_members,
            redundant_members: state.include_redundant_members
                || timeline.include_redundant_members,
            unread_threads: timeline.unread_thread_notifications,
            filter,
        }
    }
}

/// The filter's view of an item without a sender (account data, receipts,
/// typing).
fn item_allowed(
    filter: &EventFilter,
    event_type: &str,
    room_id: Option<&str>,
    content: &Value,
) -> bool {
    filter.allows(Candidate {
        event_type,
        sender: None,
        room_id,
        content: Some(content),
    })
}

/// A sync token, `s{stream}_{typing}_{to_device}`: the global stream position
/// (events, account data, receipts, device lists), the in-memory typing serial,
/// and the last to-device message delivered to this device (acknowledged when the
/// token comes back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
    pub to_device: i64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid since token");
        let mut parts = token.strip_prefix('s').ok_or_else(invalid)?.split('_');
        let mut next = || -> Result<Option<i64>> {
            match parts.next() {
                None => Ok(None),
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|n: &i64| *n >= 0)
                    .map(Some)
                    .ok_or_else(invalid),
            }
        };
        let stream = next()?.ok_or_else(invalid)?;
        let typing = next()?.unwrap_or(0) as u64;
        let to_device = next()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self {
            stream,
            typing,
            to_device,
        })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}_{}", self.stream, self.typing, self.to_device)
    }
}

pub async fn sync(app: &AppState, session: &Session, params: &Params) -> Result<Value> {
    let deadline = Instant::now() + params.timeout.min(Duration::from_secs(300));
    let mut wake = app.notifier.subscribe();
    let mut typing_wake = app.typing.subscribe();
    if let Some(since) = params.since
        && since.to_device > 0
    {
        user_streams::ack_to_device(
            &app.db,
            session.user_id.as_str(),
            session.device_id.as_str(),
            since.to_device,
        )
        .await?;
    }
    loop {
        wake.borrow_and_update();
        typing_wake.borrow_and_update();
        let now = app.notifier.current();
        let typing_now = app.typing.current();
        let (response, empty, members_sent) = build(app, session, params, now, typing_now).await?;
        if params.since.is_none() || params.full_state || !empty || Instant::now() >= deadline {
            if params.lazy_members {
                app.lazy_members.record(
                    session.user_id.as_str(),
                    session.device_id.as_str(),
                    now,
                    params.since.is_none(),
                    members_sent,
                );
            }
            return Ok(response);
        }
        // Nothing new for this user yet: wait for the next published position.
        if app.notifier.current() != now || app.typing.current() != typing_now {
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let woke = tokio::select! {
            changed = app.notifier.wait(&mut wake, remaining) => changed,
            changed = typing_wake.changed() => changed.is_ok(),
        };
        if !woke {
            return Ok(response);
        }
    }
}

/// Member events a response carried, as (room, member, event ID): what lazy
/// loading need not send the device again.
type MembersSent = Vec<(String, String, String)>;

/// The response, whether it carries nothing new, and the member events it sent.
async fn build(
    app: &AppState,
    session: &Session,
    params: &Params,
    now: i64,
    typing_now: u64,
) -> Result<(Value, bool, MembersSent)> {
    let user: &UserId = &session.user_id;
    let token = params.since.unwrap_or_default();
    let since = token.stream;
    let initial = params.since.is_none();
    let memberships = rows::memberships(&app.db, user.as_str()).await?;
    let ignored = &super::account_data::ignored_users(app, user).await?;
    let filter = &params.filter;
    let wanted = |room: &str| filter.rooms.allows_room(room);

    let joined: Vec<String> = memberships
        .iter()
        .filter(|m| m.membership == "join" && wanted(&m.room_id))
        .map(|m| m.room_id.clone())
        .collect();

    // Per-room extras: account data, receipts, typing.
    let mut room_account_data: HashMap<String, Vec<Value>> = HashMap::new();
    let mut global_account_data = Vec::new();
    for row in user_streams::account_data_since(&app.db, user.as_str(), since, now).await? {
        let content: Value = serde_json::from_str(&row.content).unwrap_or_default();
        if row.room_id.is_empty() {
            if item_allowed(&filter.account_data, &row.data_type, None, &content) {
                global_account_data.push(json!({ "type": row.data_type, "content": content }));
            }
        } else if item_allowed(
            &filter.room_account_data,
            &row.data_type,
            Some(&row.room_id),
            &content,
        ) {
            let event = json!({ "type": row.data_type, "content": content });
            room_account_data
                .entry(row.room_id)
                .or_default()
                .push(event);
        }
    }
    if initial
        && filter
            .account_data
            .allows_type(super::push::ACCOUNT_DATA_TYPE)
        && filter.account_data.allows_sender(None)
        && !global_account_data
            .iter()
            .any(|e| e["type"] == super::push::ACCOUNT_DATA_TYPE)
    {
        // Never changed: the default rules, which clients read from here.
        let rules = super::push::rules(app, user).await?;
        global_account_data.push(json!({
            "type": super::push::ACCOUNT_DATA_TYPE,
            "content": rules.to_content(),
        }));
    }
    let mut ephemeral: HashMap<String, Vec<Value>> = HashMap::new();
    let receipt_window_start = if initial { 0 } else { since };
    let receipts = super::receipts::contents(
        user_streams::receipts_since(&app.db, &joined, receipt_window_start, now).await?,
        user,
    );
    for (room, content) in receipts {
        if !item_allowed(&filter.ephemeral, "m.receipt", Some(&room), &Value::Null) {
            continue;
        }
        ephemeral
            .entry(room)
            .or_default()
            .push(json!({ "type": "m.receipt", "content": content }));
    }
    let typing_since = if initial { 0 } else { token.typing };
    for (room, users) in app.typing.changed_since(&joined, typing_since) {
        // An initial sync also shows a typing set that just became empty (as
        // Synapse does): a client that synced from scratch after someone
        // stopped typing still learns it.
        if !item_allowed(&filter.ephemeral, "m.typing", Some(&room), &Value::Null) {
            continue;
        }
        ephemeral
            .entry(room)
            .or_default()
            .push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }

    let active: HashSet<String> = if initial || params.full_state {
        joined.iter().cloned().collect()
    } else {
        let mut active: HashSet<String> = rows::rooms_with_events(&app.db, &joined, since, now)
            .await?
            .into_iter()
            .collect();
        active.extend(
            room_account_data
                .keys()
                .filter(|r| joined.contains(r))
                .cloned(),
        );
        active.extend(ephemeral.keys().cloned());
        active
    };

    let mut join = Map::new();
    // Joined rooms are built after the loop, several at a time: each is a
    // handful of queries, and a user in hundreds of rooms waits for all of them.
    let mut joined = Vec::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
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
                joined.push((room_id, !initial && changed));
            }
            "invite" if initial || changed => {
                let events = stripped_state(app, &room_id, &m.event_id).await?;
                // An invite from an ignored user is not shown (the invite is
                // the last of its stripped state).
                let inviter = events.last().and_then(|e| e["sender"].as_str());
                if inviter.is_some_and(|s| ignored.contains(s)) {
                    continue;
                }
                invite.insert(
                    m.room_id.clone(),
                    json!({ "invite_state": { "events": events } }),
                );
            }
            "knock" if initial || changed => {
                knock.insert(m.room_id.clone(), json!({ "knock_state": { "events": stripped_state(app, &room_id, &m.event_id).await? } }));
            }
            "leave" | "ban" if (!initial && changed) || (initial && filter.include_leave) => {
                let mut section = left_room(
                    app,
                    session,
                    &room_id,
                    params,
                    ignored,
                    since,
                    m.stream_ordering,
                    &m.event_id,
                )
                .await?;
                if let Some(events) = room_account_data.remove(&m.room_id) {
                    section["account_data"]["events"] = events.into();
                }
                leave.insert(m.room_id.clone(), section);
            }
            _ => {}
        }
    }

    // (room, newly joined, section, member events sent)
    type Built = (ruma::OwnedRoomId, bool, Value, MembersSent);
    let sections: Vec<Result<Built>> = futures_util::stream::iter(joined)
        .map(|(room_id, changed)| async move {
            let (section, sent, newly_joined) =
                joined_room(app, session, &room_id, params, ignored, since, now, changed).await?;
            Ok((room_id, newly_joined, section, sent))
        })
        .buffered(ROOMS_AT_ONCE)
        .collect()
        .await;
    let mut members_sent = Vec::new();
    for built in sections {
        let (room_id, newly_joined, mut section, sent) = built?;
        members_sent.extend(sent);
        let key = room_id.as_str();
        if let Some(events) = room_account_data.remove(key) {
            section["account_data"]["events"] = events.into();
        }
        if let Some(events) = ephemeral.remove(key) {
            section["ephemeral"]["events"] = events.into();
        }
        // An incremental sync leaves out a room with nothing to say: its new
        // events were all filtered out or hidden. A room the user just joined
        // is always there; a change of their profile in it is not a join.
        let nothing = |part: &str| section[part]["events"].as_array().is_none_or(Vec::is_empty);
        if !initial
            && !params.full_state
            && !newly_joined
            && ["timeline", "state", "ephemeral", "account_data"]
                .into_iter()
                .all(nothing)
        {
            continue;
        }
        join.insert(key.to_owned(), section);
    }

    // To-device messages for this device (acknowledged when the token returns).
    let pending = user_streams::to_device_pending(
        &app.db,
        user.as_str(),
        session.device_id.as_str(),
        now,
        TO_DEVICE_LIMIT,
    )
    .await?;
    let to_device_max = pending.last().map_or(token.to_device, |m| m.id);
    let to_device: Vec<Value> = pending
        .into_iter()
        .map(|m| {
            json!({
                "sender": m.sender,
                "type": m.event_type,
                "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default(),
            })
        })
        .collect();

    // Who came to share or stopped sharing a room with the user: for
    // device_lists and for the presence of newly met users.
    let delta = if initial {
        super::e2e_keys::MemberDelta::default()
    } else {
        let rooms: Vec<String> = memberships.iter().map(|m| m.room_id.clone()).collect();
        super::e2e_keys::member_delta(app, user, &rooms, since, now).await?
    };
    let (changed, left) = if initial {
        (Vec::new(), Vec::new())
    } else {
        super::e2e_keys::device_lists(app, user, &delta, since, now).await?
    };
    let otk_counts: Map<String, Value> =
        e2e_keys::one_time_key_counts(&app.db, user.as_str(), session.device_id.as_str())
            .await?
            .into_iter()
            .map(|c| (c.algorithm, Value::from(c.count)))
            .collect();
    let fallback =
        e2e_keys::unused_fallback_algorithms(&app.db, user.as_str(), session.device_id.as_str())
            .await?;

    let presence: Vec<Value> = if filter.presence.allows_type("m.presence") {
        super::presence::sync_events(app, user, since, now, &delta.joined)
            .await?
            .into_iter()
            .filter(|p| {
                filter.presence.allows(Candidate {
                    event_type: "m.presence",
                    sender: p["sender"].as_str(),
                    room_id: None,
                    content: None,
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    let empty = join.is_empty()
        && presence.is_empty()
        && invite.is_empty()
        && knock.is_empty()
        && leave.is_empty()
        && global_account_data.is_empty()
        && to_device.is_empty()
        && changed.is_empty()
        && left.is_empty();
    let next = SyncToken {
        stream: now,
        typing: typing_now,
        to_device: to_device_max,
    };
    let mut response = json!({
        "next_batch": next.to_string(),
        "rooms": { "join": join, "invite": invite, "knock": knock, "leave": leave },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence },
        "to_device": { "events": to_device },
        "device_one_time_keys_count": otk_counts,
        "device_unused_fallback_key_types": fallback,
    });
    // As Synapse: `device_lists` and its lists only when not empty (clients
    // read a missing list as empty).
    if !changed.is_empty() {
        response["device_lists"]["changed"] = changed.into();
    }
    if !left.is_empty() {
        response["device_lists"]["left"] = left.into();
    }
    Ok((response, empty, members_sent))
}

/// At most this many to-device messages per sync; the rest come with the next.
const TO_DEVICE_LIMIT: i64 = 100;

#[allow(clippy::too_many_arguments)]
async fn joined_room(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    params: &Params,
    ignored: &HashSet<String>,
    since: i64,
    upto: i64,
    membership_changed: bool,
) -> Result<(Value, MembersSent, bool)> {
    let user: &UserId = &session.user_id;
    let mut viewer = Viewer::for_session(app, session, room_id).await?;
    let initial = params.since.is_none();
    // Joined since the last sync (not a profile change of a member): the room is
    // new to the client.
    let newly_joined =
        !initial && membership_changed && !joined_at(app, room_id, user, since).await?;
    // A room new to the client gets its recent history, as far as the user may
    // see it, not only the window; and `limited`, so the client offers to page
    // back (as Synapse does for newly joined rooms).
    let after = if initial || newly_joined {
        i64::MIN
    } else {
        since
    };
    let recent = recent_events(
        app,
        &mut viewer,
        room_id,
        after,
        upto,
        params.timeline_limit.clamp(0, 100),
        |ev, visible| {
            visible && filter_allows(&params.filter.timeline, ev) && !ignoring(ignored, ev)
        },
    )
    .await?;
    let limited = recent.more || newly_joined;
    let timeline = recent.events;
    let timeline_start = timeline.first().map_or(upto + 1, |e| e.stream_ordering);

    // State before the timeline, as the spec defines `state`.
    let full = initial || params.full_state || newly_joined;
    let before = match rows::state_group_at(&app.db, room_id.as_str(), timeline_start - 1).await? {
        Some(g) => state::full_state(&app.db, g).await?,
        None => Vec::new(),
    };
    let mut state_ids: Vec<((String, String), String)> = if full {
        before.clone()
    } else if limited {
        changed_since(app, room_id, before.clone(), since).await?
    } else {
        Vec::new()
    };
    // Events already in the timeline are not repeated in `state`.
    let in_timeline: HashSet<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
    state_ids.retain(|(_, id)| !in_timeline.contains(id.as_str()));
    let mut members_sent = MembersSent::new();
    if params.lazy_members {
        let senders: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        if full {
            // Only the members the timeline needs: its senders', and the
            // user's own. An incremental sync keeps every membership that
            // changed in the gap (joins and leaves the client must learn of,
            // as Synapse sends them).
            state_ids.retain(|((t, k), _)| {
                t != "m.room.member" || senders.contains(k.as_str()) || k == user.as_str()
            });
        } else {
            // The senders' member events, unless the client has them already: a
            // sender's membership may be older than `since` and was never sent
            // (lazy loading sent only the senders of earlier timelines).
            let held: HashSet<&str> = state_ids.iter().map(|(_, id)| id.as_str()).collect();
            let mut extra = Vec::new();
            for ((t, k), id) in &before {
                if t == "m.room.member"
                    && senders.contains(k.as_str())
                    && !held.contains(id.as_str())
                    && !in_timeline.contains(id.as_str())
                    && (params.redundant_members
                        || !app.lazy_members.client_has(
                            user.as_str(),
                            session.device_id.as_str(),
                            room_id.as_str(),
                            k,
                            id,
                            since,
                        ))
                {
                    extra.push(((t.clone(), k.clone()), id.clone()));
                }
            }
            state_ids.extend(extra);
        }
        let members = state_ids
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .map(|((_, k), id)| (k.clone(), id.clone()))
            .chain(
                timeline
                    .iter()
                    .filter(|e| e.event_type == "m.room.member")
                    .filter_map(|e| Some((e.state_key.clone()?, e.event_id.clone()))),
            );
        members_sent.extend(members.map(|(k, id)| (room_id.to_string(), k, id)));
    }
    let ids: Vec<String> = state_ids.into_iter().map(|(_, id)| id).collect();
    let mut state_events = events::get_many(&app.db, &ids).await?;
    state_events.retain(|ev| filter_allows(&params.filter.state, ev));

    let named = is_named(app, &before, &timeline, &state_events).await?;
    // With an empty timeline (a `full_state` sync of a quiet room, or
    // `limit: 0`), the position of the sync itself: `/messages` pages back
    // from it as from any sync token. Synapse always sends `prev_batch`.
    let prev_batch = timeline.first().map_or_else(
        || {
            SyncToken {
                stream: upto,
                ..SyncToken::default()
            }
            .to_string()
        },
        |e| TopoToken::before(e).to_string(),
    );
    let (timeline_json, state_json) =
        format_filtered_pair(&mut viewer, &timeline, &state_events, &params.filter).await?;
    let mut section = json!({
        "timeline": { "events": timeline_json, "limited": limited },
        "state": { "events": state_json },
        "ephemeral": { "events": [] },
        "account_data": { "events": [] },
        "summary": summary(app, user, room_id, named).await?,
    });
    let (counts, threads) = unread(app, user, room_id, params.unread_threads).await?;
    section["unread_notifications"] = counts;
    if let Some(threads) = threads {
        section["unread_thread_notifications"] = threads;
    }
    section["timeline"]["prev_batch"] = prev_batch.into();
    Ok((section, members_sent, newly_joined))
}

/// Whether the user was joined to the room at stream position `at`.
async fn joined_at(app: &AppState, room_id: &RoomId, user: &UserId, at: i64) -> Result<bool> {
    let Some(group) = rows::state_group_at(&app.db, room_id.as_str(), at).await? else {
        return Ok(false);
    };
    let key = ("m.room.member".to_owned(), user.to_string());
    let Some((_, event_id)) = state::state_for_keys(&app.db, group, &[key])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    Ok(events::get(&app.db, &event_id).await?.is_some_and(|ev| {
        serde_json::from_str::<Value>(&ev.json)
            .is_ok_and(|pdu| pdu["content"]["membership"] == "join")
    }))
}

/// Pages a timeline may read (of twice its limit, at least 10 events, as
/// Synapse does) looking for events the user may see: bounded, so history the
/// user may not see costs a few queries, not a scan of the room.
const TIMELINE_PAGES: usize = 5;

/// The newest events of a room's window, as a timeline.
pub(super) struct Recent {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// Whether the window holds an older event that `keep` lets through but
    /// the limit left out, or older events were not read (after
    /// [`TIMELINE_PAGES`]): the timeline is `limited`.
    pub more: bool,
}

/// The newest `limit` events of `(after, upto]` that `keep` lets through, told
/// whether the user may see each. Reads backwards page by page until the limit
/// is filled, so hidden events do not crowd out visible ones.
pub(super) async fn recent_events(
    app: &AppState,
    viewer: &mut Viewer<'_>,
    room_id: &RoomId,
    after: i64,
    upto: i64,
    limit: usize,
    keep: impl Fn(&StoredEvent, bool) -> bool,
) -> Result<Recent> {
    let page = (limit * 2).max(10);
    let mut out = Vec::with_capacity(limit);
    let mut cursor = upto;
    let mut more = true;
    // The room's state at `upto`, read once if a hidden state event needs it.
    let mut current: Option<Option<i64>> = None;
    'pages: for _ in 0..TIMELINE_PAGES {
        let fetched =
            rows::room_events(&app.db, room_id.as_str(), after, cursor, page as i64).await?;
        let last_page = fetched.len() < page;
        viewer.prefetch_events(&fetched).await?;
        for ev in fetched {
            cursor = ev.stream_ordering - 1;
            let mut visible = viewer.may_see(&ev).await?;
            if !visible && let Some(state_key) = &ev.state_key {
                // A state event that is part of the room's current state is
                // shown even where history visibility hides it, as Synapse's
                // sync does (SyTest: "Current state appears in timeline in
                // private history"): the client's view of the state must add up.
                let group = match current {
                    Some(g) => g,
                    None => *current
                        .insert(rows::state_group_at(&app.db, room_id.as_str(), upto).await?),
                };
                if let Some(group) = group {
                    let key = (ev.event_type.clone(), state_key.clone());
                    visible = state::state_for_keys(&app.db, group, &[key])
                        .await?
                        .iter()
                        .any(|(_, id)| *id == ev.event_id);
                }
            }
            if keep(&ev, visible) {
                // `limited` means another event the filter keeps is left out,
                // not merely an older event of any kind (SyTest: "A filtered
                // timeline reaches its limit").
                if out.len() == limit {
                    break 'pages;
                }
                out.push(ev);
            }
        }
        if last_page {
            more = false;
            break;
        }
    }
    out.reverse();
    Ok(Recent { events: out, more })
}

/// The entries of `state` that differ from the room's state at stream
/// position `since` (the state delta of a gappy or a leave section).
async fn changed_since(
    app: &AppState,
    room_id: &RoomId,
    state: Vec<state::Entry>,
    since: i64,
) -> Result<Vec<state::Entry>> {
    let old: HashMap<(String, String), String> =
        match rows::state_group_at(&app.db, room_id.as_str(), since).await? {
            Some(g) => state::full_state(&app.db, g).await?.into_iter().collect(),
            None => HashMap::new(),
        };
    Ok(state
        .into_iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .collect())
}

/// Whether an event is kept from the user because they ignore its sender:
/// message-like events are, state events are not (the room's state must add
/// up), as Synapse filters them.
fn ignoring(ignored: &HashSet<String>, ev: &StoredEvent) -> bool {
    ev.state_key.is_none() && ignored.contains(&ev.sender)
}

/// A room the user left (or was kicked or banned from) in the window: the
/// timeline up to and including their leave event.
#[allow(clippy::too_many_arguments)]
async fn left_room(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    params: &Params,
    ignored: &HashSet<String>,
    since: i64,
    left_at: i64,
    leave_event: &str,
) -> Result<Value> {
    if crate::storage::rooms::get(&app.db, room_id.as_str())
        .await?
        .is_none()
    {
        // A rejected invite to a room this server was never in: the rejection.
        let events: Vec<Value> = events::get_many(&app.db, &[leave_event.to_owned()])
            .await?
            .iter()
            .map(super::read::plain_client_event)
            .collect();
        return Ok(json!({
            "timeline": { "events": events, "limited": false },
            "state": { "events": [] },
            "account_data": { "events": [] },
        }));
    }
    let user: &UserId = &session.user_id;
    let mut viewer = Viewer::for_session(app, session, room_id).await?;
    // The user may no longer be joined, but saw these while they were; and
    // their own membership changes.
    let recent = recent_events(
        app,
        &mut viewer,
        room_id,
        since,
        left_at,
        params.timeline_limit.clamp(0, 100),
        |ev, visible| {
            (visible || ev.state_key.as_deref() == Some(user.as_str()))
                && filter_allows(&params.filter.timeline, ev)
                && !ignoring(ignored, ev)
        },
    )
    .await?;
    let (events_in, limited) = (recent.events, recent.more);
    // `state`: the state before the timeline, as for a joined room. Whole when
    // the user was not joined at `since` (an initial sync with `include_leave`,
    // or joined and left within the window); else what changed since then.
    let timeline_start = events_in.first().map_or(left_at + 1, |e| e.stream_ordering);
    let before = match rows::state_group_at(&app.db, room_id.as_str(), timeline_start - 1).await? {
        Some(g) => state::full_state(&app.db, g).await?,
        None => Vec::new(),
    };
    let mut state_ids: Vec<state::Entry> =
        if since > 0 && joined_at(app, room_id, user, since).await? {
            changed_since(app, room_id, before, since).await?
        } else {
            before
        };
    let in_timeline: HashSet<&str> = events_in.iter().map(|e| e.event_id.as_str()).collect();
    state_ids.retain(|(_, id)| !in_timeline.contains(id.as_str()));
    if params.lazy_members {
        let senders: HashSet<&str> = events_in.iter().map(|e| e.sender.as_str()).collect();
        state_ids.retain(|((t, k), _)| {
            t != "m.room.member" || senders.contains(k.as_str()) || k == user.as_str()
        });
    }
    let ids: Vec<String> = state_ids.into_iter().map(|(_, id)| id).collect();
    let mut state_events = events::get_many(&app.db, &ids).await?;
    state_events.retain(|ev| filter_allows(&params.filter.state, ev));
    let (timeline_json, state_json) =
        format_filtered_pair(&mut viewer, &events_in, &state_events, &params.filter).await?;
    let mut section = json!({
        "timeline": {
            "events": timeline_json,
            "limited": limited,
        },
        "state": { "events": state_json },
        "account_data": { "events": [] },
    });
    if let Some(first) = events_in.first() {
        section["timeline"]["prev_batch"] = TopoToken::before(first).to_string().into();
    }
    Ok(section)
}

/// Stripped state for an invite or a knock (spec: "Stripped state"): enough to
/// show the room, then the membership event itself. An invite also carries the
/// inviter's member event (as Synapse's does), so clients can show who invited
/// the user by name and matrix-rust-sdk knows the inviter.
pub(super) async fn stripped_state(
    app: &AppState,
    room_id: &RoomId,
    membership_event: &str,
) -> Result<Vec<Value>> {
    let own = events::get(&app.db, membership_event).await?;
    let own_pdu: Option<Value> = own
        .as_ref()
        .and_then(|ev| serde_json::from_str(&ev.json).ok());
    let Some(room) = crate::storage::rooms::get(&app.db, room_id.as_str()).await? else {
        // A remote server's invite to a room we are not in: the state it sent.
        let mut out: Vec<Value> =
            crate::storage::federation::remote_stripped_state(&app.db, membership_event)
                .await?
                .and_then(|s| s.as_array().cloned())
                .unwrap_or_default();
        out.extend(own_pdu);
        return Ok(out.iter().map(stripped).collect());
    };
    let keys: Vec<(String, String)> = crate::service::federation::invite::INVITE_STATE_TYPES
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
    // The inviter's member event as of the invite (now, for an invite held as
    // an outlier).
    if let (Some(own), Some(pdu)) = (&own, &own_pdu)
        && pdu["content"]["membership"] == "invite"
        && let (Some(inviter), Some(group)) = (
            pdu["sender"].as_str(),
            own.state_group.or(room.current_state_group),
        )
    {
        let key = ("m.room.member".to_owned(), inviter.to_owned());
        ids.extend(
            state::state_for_keys(&app.db, group, &[key])
                .await?
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| id != membership_event),
        );
    }
    let mut out: Vec<Value> = events::get_many(&app.db, &ids)
        .await?
        .iter()
        .map(|ev| stripped(&serde_json::from_str(&ev.json).unwrap_or_default()))
        .collect();
    out.extend(own_pdu.as_ref().map(stripped));
    Ok(out)
}

/// A stripped state event (spec "Stripped state") from a full PDU.
fn stripped(pdu: &Value) -> Value {
    json!({
        "type": pdu["type"],
        "state_key": pdu["state_key"],
        "content": pdu["content"],
        "sender": pdu["sender"],
    })
}

/// `unread_notifications` (and, when the filter asks for them,
/// `unread_thread_notifications`): events that notified the user by their push
/// rules after their read receipts, and how many of those highlight.
async fn unread(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    by_thread: bool,
) -> Result<(Value, Option<Value>)> {
    let rows = user_streams::unread_by_thread(&app.db, user.as_str(), room_id.as_str()).await?;
    let count = |n: i64, h: i64| json!({ "notification_count": n, "highlight_count": h });
    if !by_thread {
        let (n, h) = rows
            .iter()
            .fold((0, 0), |(n, h), r| (n + r.notifications, h + r.highlights));
        return Ok((count(n, h), None));
    }
    let mut main = count(0, 0);
    let mut threads = Map::new();
    for r in rows {
        if r.thread_id.is_empty() {
            main = count(r.notifications, r.highlights);
        } else {
            threads.insert(r.thread_id, count(r.notifications, r.highlights));
        }
    }
    Ok((main, Some(Value::Object(threads))))
}

/// `summary`: member counts and, for rooms without a name (`named` false),
/// up to five heroes. A room with a name or canonical alias gets no
/// `m.heroes`, as Synapse sends it: clients name it by those.
async fn summary(app: &AppState, user: &UserId, room_id: &RoomId, named: bool) -> Result<Value> {
    let (joined, invited, heroes) =
        crate::storage::rooms::summary(&app.db, room_id.as_str(), user.as_str()).await?;
    let mut out = json!({
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    });
    if !named {
        out["m.heroes"] = heroes.into();
    }
    Ok(out)
}

/// Whether the room has a non-empty `m.room.name` or canonical alias at the
/// end of the timeline: `before` is the state before it. The naming events are
/// usually among those already loaded; any other is read (one query).
async fn is_named(
    app: &AppState,
    before: &[state::Entry],
    timeline: &[StoredEvent],
    loaded: &[StoredEvent],
) -> Result<bool> {
    const NAMING: [&str; 2] = ["m.room.name", "m.room.canonical_alias"];
    let mut ids: HashMap<&str, &str> = before
        .iter()
        .filter(|((t, k), _)| k.is_empty() && NAMING.contains(&t.as_str()))
        .map(|((t, _), id)| (t.as_str(), id.as_str()))
        .collect();
    for ev in timeline {
        if ev.state_key.as_deref() == Some("")
            && !ev.rejected
            && NAMING.contains(&ev.event_type.as_str())
        {
            ids.insert(ev.event_type.as_str(), ev.event_id.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(false);
    }
    let names = |ev: &StoredEvent| {
        serde_json::from_str::<Value>(&ev.json).is_ok_and(|pdu| {
            ["name", "alias"]
                .iter()
                .any(|f| pdu["content"][f].as_str().is_some_and(|v| !v.is_empty()))
        })
    };
    let mut missing = Vec::new();
    for id in ids.values() {
        match timeline.iter().chain(loaded).find(|e| e.event_id == *id) {
            Some(ev) if ev.redacted_by.is_none() && names(ev) => return Ok(true),
            Some(_) => {}
            None => missing.push((*id).to_owned()),
        }
    }
    if missing.is_empty() {
        return Ok(false);
    }
    Ok(events::get_many(&app.db, &missing)
        .await?
        .iter()
        .any(|ev| ev.redacted_by.is_none() && names(ev)))
}

/// A user's stored filter definition (JSON), by ID.
pub async fn stored_filter(app: &AppState, user: &str, id: i64) -> Result<Option<String>> {
    Ok(crate::storage::sync::get_filter(&app.db, user, id).await?)
}

/// Stores a filter definition (JSON) for a user; its new ID.
pub async fn store_filter(app: &AppState, user: &str, json: &str) -> Result<i64> {
    Ok(crate::storage::sync::insert_filter(&app.db, user, json, crate::clock::now_ms()).await?)
}
