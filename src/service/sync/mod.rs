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
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::sync::sync_events::DeviceLists,
    events::{AnyRoomAccountDataEvent, AnySyncEphemeralRoomEvent},
    serde::Raw,
};
use serde_json::{Value, json};

use super::{client_event::raw, session::Session};
use crate::{
    domain::filter::{Candidate, EventFilter, Filter},
    error::Result,
    service::AppState,
    storage::{sync as rows, user_streams},
};

mod recent;
pub mod response;
mod rooms;
mod token;

pub(super) use recent::recent_events;
pub use response::Response;
pub(super) use rooms::stripped_state;
pub use token::SyncToken;

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

pub async fn sync(app: &AppState, session: &Session, params: &Params) -> Result<Response> {
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
) -> Result<(Response, bool, MembersSent)> {
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
    let mut room_account_data: HashMap<String, Vec<Raw<AnyRoomAccountDataEvent>>> = HashMap::new();
    let mut global_account_data = Vec::new();
    let mut push_rules_sent = false;
    for row in user_streams::account_data_since(&app.db, user.as_str(), since, now).await? {
        let content: Value = serde_json::from_str(&row.content).unwrap_or_default();
        if row.room_id.is_empty() {
            if item_allowed(&filter.account_data, &row.data_type, None, &content) {
                push_rules_sent |= row.data_type == super::push::ACCOUNT_DATA_TYPE;
                global_account_data
                    .push(raw(&json!({ "type": row.data_type, "content": content })));
            }
        } else if item_allowed(
            &filter.room_account_data,
            &row.data_type,
            Some(&row.room_id),
            &content,
        ) {
            let event = raw(&json!({ "type": row.data_type, "content": content }));
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
        && !push_rules_sent
    {
        // Never changed: the default rules, which clients read from here.
        let rules = super::push::rules(app, user).await?;
        global_account_data.push(raw(&json!({
            "type": super::push::ACCOUNT_DATA_TYPE,
            "content": rules.to_content(),
        })));
    }
    let mut ephemeral: HashMap<String, Vec<Raw<AnySyncEphemeralRoomEvent>>> = HashMap::new();
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
            .push(raw(&json!({ "type": "m.receipt", "content": content })));
    }
    let typing_since = if initial { 0 } else { token.typing };
    for (room, users) in app.typing.changed_since(&joined, typing_since) {
        // An initial sync also shows a typing set that just became empty (as
        // Synapse does): a client that synced from scratch after someone
        // stopped typing still learns it.
        if !item_allowed(&filter.ephemeral, "m.typing", Some(&room), &Value::Null) {
            continue;
        }
        ephemeral.entry(room).or_default().push(raw(
            &json!({ "type": "m.typing", "content": { "user_ids": users } }),
        ));
    }

    // Rooms joined with partial state whose full state came since the last
    // sync (faster joins): new to the client, like a room just joined, so it
    // gets the full state (as Synapse treats its un-partial-stated rooms).
    let resynced: HashSet<String> = if initial {
        HashSet::new()
    } else {
        crate::storage::partial_state::completed_between(&app.db, &joined, since, now)
            .await?
            .into_iter()
            .collect()
    };
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
        active.extend(resynced.iter().cloned());
        active
    };

    let mut rooms = response::Rooms::default();
    // Joined rooms are built after the loop, several at a time: each is a
    // handful of queries, and a user in hundreds of rooms waits for all of them.
    let mut joined = Vec::new();
    for m in &memberships {
        if !wanted(&m.room_id) || m.stream_ordering > now {
            continue;
        }
        let room_id =
            RoomId::parse(&m.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
        let changed = m.stream_ordering > since;
        match m.membership.as_str() {
            "join" if active.contains(&m.room_id) => {
                let resynced = resynced.contains(&m.room_id);
                joined.push((room_id, !initial && changed, resynced));
            }
            "invite" if initial || changed => {
                let events = stripped_state(app, &room_id, &m.event_id).await?;
                // An invite from an ignored user is not shown (the invite is
                // the last of its stripped state).
                let inviter = events
                    .last()
                    .and_then(|e| e.get_field::<String>("sender").ok().flatten());
                if inviter.is_some_and(|s| ignored.contains(&s)) {
                    continue;
                }
                rooms.invite.insert(
                    room_id,
                    response::InvitedRoom {
                        invite_state: events.into(),
                    },
                );
            }
            "knock" if initial || changed => {
                let events = stripped_state(app, &room_id, &m.event_id).await?;
                rooms.knock.insert(
                    room_id,
                    response::KnockedRoom {
                        knock_state: events.into(),
                    },
                );
            }
            "leave" | "ban" if (!initial && changed) || (initial && filter.include_leave) => {
                let mut section = rooms::left_room(
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
                    section.account_data = events.into();
                }
                rooms.leave.insert(room_id, section);
            }
            _ => {}
        }
    }

    // (room, newly joined, section, member events sent)
    type Built = (OwnedRoomId, bool, response::JoinedRoom, MembersSent);
    let sections: Vec<Result<Built>> = futures_util::stream::iter(joined)
        .map(|(room_id, changed, resynced)| async move {
            let (section, sent, newly_joined) = rooms::joined_room(
                app,
                session,
                &room_id,
                params,
                ignored,
                (since, now),
                changed,
                resynced,
            )
            .await?;
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
            section.account_data = events.into();
        }
        if let Some(events) = ephemeral.remove(key) {
            section.ephemeral = events.into();
        }
        // An incremental sync leaves out a room with nothing to say: its new
        // events were all filtered out or hidden. A room the user just joined
        // is always there; a change of their profile in it is not a join.
        if !initial && !params.full_state && !newly_joined && section.has_no_events() {
            continue;
        }
        rooms.join.insert(room_id, section);
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
    let to_device: Vec<_> = pending
        .into_iter()
        .map(|m| {
            raw(&json!({
                "sender": m.sender,
                "type": m.event_type,
                "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default(),
            }))
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
    let (otk_counts, fallback) =
        super::e2e_keys::sync_key_counts(app, user.as_str(), session.device_id.as_str()).await?;

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

    let empty = rooms.is_empty()
        && presence.is_empty()
        && global_account_data.is_empty()
        && to_device.is_empty()
        && changed.is_empty()
        && left.is_empty();
    let next = SyncToken {
        stream: now,
        typing: typing_now,
        to_device: to_device_max,
    };
    let mut device_lists = DeviceLists::new();
    device_lists.changed = user_ids(changed);
    device_lists.left = user_ids(left);
    let response = Response {
        next_batch: next.to_string(),
        rooms,
        account_data: global_account_data.into(),
        presence: presence.iter().map(raw).collect::<Vec<_>>().into(),
        to_device: to_device.into(),
        device_lists,
        device_one_time_keys_count: otk_counts,
        device_unused_fallback_key_types: fallback,
    };
    Ok((response, empty, members_sent))
}

/// At most this many to-device messages per sync; the rest come with the next.
const TO_DEVICE_LIMIT: i64 = 100;

/// User IDs as read from the database (valid when they were stored).
fn user_ids(ids: Vec<String>) -> Vec<OwnedUserId> {
    ids.iter().filter_map(|u| UserId::parse(u).ok()).collect()
}

/// A user's stored filter definition (JSON), by ID.
pub async fn stored_filter(app: &AppState, user: &str, id: i64) -> Result<Option<String>> {
    Ok(crate::storage::sync::get_filter(&app.db, user, id).await?)
}

/// Stores a filter definition (JSON) for a user; its new ID.
pub async fn store_filter(app: &AppState, user: &str, json: &str) -> Result<i64> {
    Ok(crate::storage::sync::insert_filter(&app.db, user, json, app.clock.now_ms()).await?)
}
