//! The sections of one room in `/sync`: joined (timeline, state, summary,
//! unread counts), left, and the stripped state of invites and knocks.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId, RoomId, UserId,
    api::client::sync::sync_events::UnreadNotificationsCount, events::AnyStrippedStateEvent,
    serde::Raw,
};
use serde_json::{Value, json};

use super::{
    MembersSent, Params, SyncToken,
    recent::recent_events,
    response::{self, Events, JoinedRoom, LeftRoom, RoomSummary, Timeline},
};
use crate::{
    error::Result,
    service::AppState,
    service::{
        client_event::{format_filtered_pair, raw},
        read::{Viewer, filter_allows, plain_client_event},
        session::Session,
        tokens::TopoToken,
    },
    storage::{events, events::StoredEvent, state, sync as rows, user_streams},
};

#[allow(clippy::too_many_arguments)]
pub(super) async fn joined_room(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    params: &Params,
    ignored: &HashSet<String>,
    (since, upto): (i64, i64),
    membership_changed: bool,
    resynced: bool,
) -> Result<(JoinedRoom, MembersSent, bool)> {
    let user: &UserId = &session.user_id;
    let mut viewer = Viewer::for_session(app, session, room_id).await?;
    let initial = params.since.is_none();
    // Joined since the last sync (not a profile change of a member), or the
    // room's full state came since (a partial-state join resynced, whose
    // client holds only the partial state): the room is new to the client.
    let newly_joined = !initial
        && (resynced || (membership_changed && !joined_at(app, room_id, user, since).await?));
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
    // With no event before the timeline (a room joined over federation: our
    // join is its first timeline event), the state at the first timeline
    // event stands in; the timeline's own events are left out below.
    let group = match rows::state_group_at(&app.db, room_id.as_str(), timeline_start - 1).await? {
        Some(g) => Some(g),
        None => timeline.first().and_then(|e| e.state_group),
    };
    let before = match group {
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
        // A sender whose membership the state lacks: the room was joined
        // with partial state (faster joins) and the memberships are not in
        // yet. Their membership among the event's auth events stands in (as
        // Synapse does); the sync after the resync sends the full state.
        let known: HashSet<&str> = before
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .map(|((_, k), _)| k.as_str())
            .collect();
        let lacking: Vec<&StoredEvent> = timeline
            .iter()
            .filter(|e| !known.contains(e.sender.as_str()))
            .collect();
        if !lacking.is_empty() {
            state_ids.extend(members_from_auth_events(app, &lacking, &in_timeline).await?);
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
    let (unread_notifications, unread_thread_notifications) =
        unread(app, user, room_id, params.unread_threads).await?;
    let section = JoinedRoom {
        timeline: Timeline {
            events: timeline_json.iter().map(raw).collect(),
            limited,
            prev_batch: Some(prev_batch),
        },
        state: state_json.iter().map(raw).collect::<Vec<_>>().into(),
        ephemeral: Events::default(),
        account_data: Events::default(),
        summary: summary(app, user, room_id, named).await?,
        unread_notifications,
        unread_thread_notifications,
    };
    Ok((section, members_sent, newly_joined))
}

/// The senders' member events among the auth events of `timeline` events
/// (each sender's newest), as state entries, leaving out rejected ones and
/// those in the timeline.
async fn members_from_auth_events(
    app: &AppState,
    timeline: &[&StoredEvent],
    in_timeline: &HashSet<&str>,
) -> Result<Vec<((String, String), String)>> {
    let mut wanted: HashSet<String> = HashSet::new();
    for ev in timeline {
        let json: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        for entry in json["auth_events"].as_array().into_iter().flatten() {
            // Room versions 1 and 2 give `[id, hashes]` pairs.
            let id = entry.as_str().or_else(|| entry[0].as_str());
            if let Some(id) = id.filter(|id| !in_timeline.contains(id)) {
                wanted.insert(id.to_owned());
            }
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = wanted.into_iter().collect();
    let senders: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
    let mut newest: HashMap<String, (i64, String)> = HashMap::new();
    for ev in events::get_many(&app.db, &ids).await? {
        let Some(key) = ev.state_key.as_deref() else {
            continue;
        };
        if ev.rejected || ev.event_type != "m.room.member" || !senders.contains(key) {
            continue;
        }
        let slot = newest
            .entry(key.to_owned())
            .or_insert((i64::MIN, String::new()));
        if ev.depth > slot.0 {
            *slot = (ev.depth, ev.event_id.clone());
        }
    }
    Ok(newest
        .into_iter()
        .map(|(user, (_, id))| (("m.room.member".to_owned(), user), id))
        .collect())
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
pub(super) async fn left_room(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    params: &Params,
    ignored: &HashSet<String>,
    since: i64,
    left_at: i64,
    leave_event: &str,
) -> Result<LeftRoom> {
    if crate::storage::rooms::get(&app.db, room_id.as_str())
        .await?
        .is_none()
    {
        // A rejected invite to a room this server was never in: the rejection.
        let events = events::get_many(&app.db, &[leave_event.to_owned()])
            .await?
            .iter()
            .map(|ev| raw(&plain_client_event(ev)))
            .collect();
        return Ok(LeftRoom {
            timeline: Timeline {
                events,
                limited: false,
                prev_batch: None,
            },
            state: Events::default(),
            account_data: Events::default(),
        });
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
    Ok(LeftRoom {
        timeline: Timeline {
            events: timeline_json.iter().map(raw).collect(),
            limited,
            prev_batch: events_in
                .first()
                .map(|first| TopoToken::before(first).to_string()),
        },
        state: state_json.iter().map(raw).collect::<Vec<_>>().into(),
        account_data: Events::default(),
    })
}

/// Stripped state for an invite or a knock (spec: "Stripped state"): enough to
/// show the room, then the membership event itself. An invite also carries the
/// inviter's member event (as Synapse's does), so clients can show who invited
/// the user by name and matrix-rust-sdk knows the inviter.
pub async fn stripped_state(
    app: &AppState,
    room_id: &RoomId,
    membership_event: &str,
) -> Result<Vec<Raw<AnyStrippedStateEvent>>> {
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
        return Ok(out.iter().map(|pdu| raw(&stripped(pdu))).collect());
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
    Ok(out.iter().map(raw).collect())
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
) -> Result<(UnreadNotificationsCount, Option<ThreadCounts>)> {
    let rows = user_streams::unread_by_thread(&app.db, user.as_str(), room_id.as_str()).await?;
    let count = response::counts;
    if !by_thread {
        let (n, h) = rows
            .iter()
            .fold((0, 0), |(n, h), r| (n + r.notifications, h + r.highlights));
        return Ok((count(n, h), None));
    }
    let mut main = count(0, 0);
    let mut threads = ThreadCounts::new();
    for r in rows {
        if r.thread_id.is_empty() {
            main = count(r.notifications, r.highlights);
        } else if let Ok(root) = EventId::parse(&r.thread_id) {
            threads.insert(root, count(r.notifications, r.highlights));
        }
    }
    Ok((main, Some(threads)))
}

/// Unread counts by thread root.
type ThreadCounts = BTreeMap<OwnedEventId, UnreadNotificationsCount>;

/// `summary`: member counts and, for rooms without a name (`named` false),
/// up to five heroes. A room with a name or canonical alias gets no
/// `m.heroes`, as Synapse sends it: clients name it by those.
async fn summary(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    named: bool,
) -> Result<RoomSummary> {
    let (joined, invited, heroes) =
        crate::storage::rooms::summary(&app.db, room_id.as_str(), user.as_str()).await?;
    Ok(RoomSummary {
        joined_member_count: response::uint(joined),
        invited_member_count: response::uint(invited),
        heroes: (!named).then(|| {
            heroes
                .iter()
                .filter_map(|h| UserId::parse(h).ok())
                .collect()
        }),
    })
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
