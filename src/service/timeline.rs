//! Reading around events: `/context`, `/relations`, `/threads`,
//! `/timestamp_to_event`, and reporting. (Bundled aggregations, thread summaries
//! among them, are added where every event is formatted: `client_event`.)

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UInt, UserId,
    api::client::{
        relations::get_relating_events, room::get_event_by_timestamp, threads::get_threads,
    },
    events::{AnyStateEvent, AnyTimelineEvent},
    serde::Raw,
};

use super::{
    client_event::raw,
    read::{GapFills, Viewer, fill_gaps, filter_allows},
    session::Session,
    tokens::{RoomPos, TopoToken, stream_counter},
};
use crate::{
    domain::filter::EventFilter,
    error::{Error, Result},
    service::AppState,
    storage::{events, events::StoredEvent, federation as fed_store, relations, state},
};

async fn visible(viewer: &mut Viewer<'_>, stored: Vec<StoredEvent>) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::with_capacity(stored.len());
    for ev in stored {
        if viewer.may_see(&ev).await? {
            out.push(ev);
        }
    }
    Ok(out)
}

/// Pages `around` reads on each side of the event looking for events the
/// filter keeps: bounded, so a filter that matches little costs a few queries.
const AROUND_PAGES: usize = 5;

/// Up to `n` events next to `target` (older when `backwards`) that pass the
/// filter and that the user may see, nearest first — filtered before the
/// limit, as Synapse does — and the last event looked at, where the gap for
/// `/messages` begins. Gaps in the middle of the timeline met on the way
/// (issue #20) are filled from `/backfill` as `/messages` fills them: going
/// back, the gap just before the target and those before the events read;
/// going forward, the gap before an event before it is read.
async fn around(
    app: &AppState,
    viewer: &mut Viewer<'_>,
    target: &StoredEvent,
    backwards: bool,
    n: usize,
    filter: &EventFilter,
) -> Result<(Vec<StoredEvent>, Option<StoredEvent>)> {
    let mut out = Vec::with_capacity(n);
    let mut last: Option<StoredEvent> = None;
    if n == 0 {
        return Ok((out, last));
    }
    let room_id =
        RoomId::parse(&target.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
    let mut gap_state = GapFills::default();
    if backwards {
        let gaps = fed_store::gaps_at(
            &app.db,
            room_id.as_str(),
            std::slice::from_ref(&target.event_id),
        )
        .await?;
        fill_gaps(app, &room_id, &gaps, None, &mut gap_state).await?;
    }
    let page = (n * 2).max(10) as i64;
    'pages: for _ in 0..AROUND_PAGES {
        let from = last.as_ref().unwrap_or(target);
        let batch = events::page(
            &app.db,
            target.room_id.as_str(),
            from.depth,
            from.stream_ordering,
            backwards,
            page,
        )
        .await?;
        let done = (batch.len() as i64) < page;
        let gaps = gap_state.gaps_at(app, &room_id, &batch).await?;
        viewer.prefetch_events(&batch).await?;
        for ev in batch {
            let gap = gaps.get(&ev.event_id);
            if !backwards
                && let Some(gap) = gap
                && fill_gaps(
                    app,
                    &room_id,
                    std::slice::from_ref(gap),
                    None,
                    &mut gap_state,
                )
                .await?
            {
                continue 'pages;
            }
            let keep = filter_allows(filter, &ev) && viewer.may_see(&ev).await?;
            if keep {
                out.push(ev.clone());
            }
            last = Some(ev);
            if out.len() == n {
                return Ok((out, last));
            }
            if backwards
                && let Some(gap) = gap
                && fill_gaps(
                    app,
                    &room_id,
                    std::slice::from_ref(gap),
                    None,
                    &mut gap_state,
                )
                .await?
            {
                continue 'pages;
            }
        }
        if done {
            break;
        }
    }
    Ok((out, last))
}

/// The `/context` answer. ruma's response type leaves out `events_before`,
/// `events_after` and `state` when they are empty, but matrix-js-sdk reads
/// all three without checking (and Synapse always sends them), so this one
/// always carries them.
#[derive(Debug, serde::Serialize)]
pub struct Context {
    pub event: Option<Raw<AnyTimelineEvent>>,
    pub events_before: Vec<Raw<AnyTimelineEvent>>,
    pub events_after: Vec<Raw<AnyTimelineEvent>>,
    pub start: String,
    pub end: String,
    pub state: Vec<Raw<AnyStateEvent>>,
}

/// `GET /rooms/{roomId}/context/{eventId}`: `limit` split between before and
/// after as Synapse does; the filter (types, senders, `contains_url`, …) picks
/// the events around but never hides the event asked for; with
/// `lazy_load_members`, `state` holds only the members of the events' senders.
pub async fn context(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    event_id: &str,
    limit: usize,
    filter: &EventFilter,
) -> Result<Context> {
    let lazy = filter.lazy_load_members;
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    if !viewer.may_read_history().await? {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let not_found = || Error::not_found("Event not found");
    let target = events::get(&app.db, event_id)
        .await?
        .ok_or_else(not_found)?;
    if target.room_id != room_id.as_str() || target.rejected || !viewer.may_see(&target).await? {
        return Err(not_found());
    }
    let limit = limit.min(100);
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let (before, oldest) = around(app, &mut viewer, &target, true, before_n, filter).await?;
    let (after, newest) = around(app, &mut viewer, &target, false, after_n, filter).await?;
    // Gaps: before the oldest event looked at, after the newest; `/messages`
    // continues from either.
    let start = TopoToken::before(oldest.as_ref().unwrap_or(&target));
    let end = TopoToken::after(newest.as_ref().unwrap_or(&target));

    // State at the event: all of it, or only the members the events need.
    let group = target.state_group.ok_or_else(not_found)?;
    let entries = state::full_state(&app.db, group).await?;
    let senders: std::collections::HashSet<&str> = before
        .iter()
        .chain(after.iter())
        .chain(std::iter::once(&target))
        .map(|e| e.sender.as_str())
        .collect();
    let ids: Vec<String> = entries
        .into_iter()
        .filter(|((t, k), _)| !lazy || t != "m.room.member" || senders.contains(k.as_str()))
        .map(|(_, id)| id)
        .collect();
    let state_events = events::get_many(&app.db, &ids).await?;

    // One formatting pass for the three parts: the event, then before, then after.
    let (n_before, n_after) = (before.len(), after.len());
    let all: Vec<StoredEvent> = std::iter::once(target).chain(before).chain(after).collect();
    let formatted = viewer.client_events(&all).await?;
    let mut formatted = formatted.iter().map(raw);
    let event = formatted.next();
    let events_before = formatted.by_ref().take(n_before).collect();
    let events_after = formatted.take(n_after).collect();
    let state = viewer.client_events(&state_events).await?;
    Ok(Context {
        event,
        events_before,
        events_after,
        start: start.to_string(),
        end: end.to_string(),
        state: state.iter().map(raw).collect(),
    })
}

/// How many relations deep `recurse=true` follows (the spec asks for at least
/// 3; Synapse also reports 3).
const RECURSION_DEPTH: i32 = 3;

/// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`: in
/// topological order, paged with room positions like `/messages` (its tokens
/// and `/sync`'s are accepted too). `prev_batch` echoes `from`, `next_batch`
/// comes when more remain, and `recursion_depth` answers `recurse=true`.
#[allow(clippy::too_many_arguments)]
pub async fn relations(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    backwards: bool,
    recurse: bool,
    limit: usize,
) -> Result<get_relating_events::v1::Response> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    if !viewer.may_read_history().await? {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let parent = events::get(&app.db, event_id).await?;
    let Some(parent) = parent.filter(|p| p.room_id == room_id.as_str()) else {
        return Err(Error::not_found("Event not found"));
    };
    if !viewer.may_see(&parent).await? {
        return Err(Error::not_found("Event not found"));
    }
    let from_pos = match from {
        Some(token) => Some(RoomPos::parse(app, "from", token).await?),
        None => None,
    };
    let to_pos = match to {
        Some(token) => Some(RoomPos::parse(app, "to", token).await?),
        None => None,
    };
    // Going backwards, `from` bounds from above and `to` from below; forwards,
    // the other way round.
    let mut bounds = relations::Bounds::default();
    let (upper, lower) = if backwards {
        (from_pos, to_pos)
    } else {
        (to_pos, from_pos)
    };
    match upper {
        Some(RoomPos::Topo(t)) => bounds.topo_upto = Some((t.depth, t.stream)),
        Some(RoomPos::Stream(s)) => bounds.stream_upto = Some(s),
        None => {}
    }
    match lower {
        Some(RoomPos::Topo(t)) => bounds.topo_after = Some((t.depth, t.stream)),
        Some(RoomPos::Stream(s)) => bounds.stream_after = Some(s),
        None => {}
    }
    let limit = limit.clamp(1, 100);
    let children = relations::children(
        &app.db,
        room_id.as_str(),
        event_id,
        rel_type,
        event_type,
        if recurse { RECURSION_DEPTH } else { 1 },
        bounds,
        backwards,
        limit as i64 + 1,
    )
    .await?;
    let more = children.len() > limit;
    let page: Vec<StoredEvent> = children.into_iter().take(limit).collect();
    let next = page.last().map(|e| {
        if backwards {
            TopoToken::before(e)
        } else {
            TopoToken::after(e)
        }
    });
    let page = visible(&mut viewer, page).await?;
    let chunk = viewer.client_events(&page).await?;
    let mut body = get_relating_events::v1::Response::new(chunk.iter().map(raw).collect());
    body.next_batch = next.filter(|_| more).map(|next| next.to_string());
    body.prev_batch = from.map(str::to_owned);
    body.recursion_depth = recurse.then(|| UInt::from(RECURSION_DEPTH as u32));
    Ok(body)
}

/// `GET /rooms/{roomId}/threads`: roots by latest activity, with summaries.
pub async fn threads(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    from: Option<&str>,
    participated_only: bool,
    limit: usize,
) -> Result<get_threads::v1::Response> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    if !viewer.may_read_history().await? {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let before = match from {
        Some(token) => stream_counter(app, "from", token).await?,
        None => i64::MAX,
    };
    let limit = limit.clamp(1, 100);
    let participant = participated_only.then_some(reader.user_id.as_str());
    let roots = relations::thread_roots(
        &app.db,
        room_id.as_str(),
        before,
        participant,
        limit as i64 + 1,
    )
    .await?;
    let more = roots.len() > limit;
    let roots: Vec<_> = roots.into_iter().take(limit).collect();
    let next = roots.last().map(|r| r.latest_stream);
    let ids: Vec<String> = roots.iter().map(|r| r.root.clone()).collect();
    let mut stored = events::get_many(&app.db, &ids).await?;
    stored.sort_by_key(|e| ids.iter().position(|id| *id == e.event_id));
    let stored = visible(&mut viewer, stored).await?;
    let chunk = viewer.client_events(&stored).await?;
    let mut body = get_threads::v1::Response::new(chunk.iter().map(raw).collect());
    body.next_batch = next.filter(|_| more).map(|next| next.to_string());
    Ok(body)
}

/// `GET /rooms/{roomId}/timestamp_to_event`: the closest visible event.
pub async fn timestamp_to_event(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    ts: i64,
    backwards: bool,
) -> Result<get_event_by_timestamp::v1::Response> {
    let mut viewer = Viewer::new(app, user, None, room_id).await?;
    if !viewer.may_read_history().await? {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let not_found = || Error::not_found("No event found");
    let (event_id, origin_server_ts) =
        events::closest_to_ts(&app.db, room_id.as_str(), ts, backwards)
            .await?
            .ok_or_else(not_found)?;
    let ev = events::get(&app.db, &event_id)
        .await?
        .ok_or_else(not_found)?;
    if !viewer.may_see(&ev).await? {
        return Err(not_found());
    }
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| not_found())?;
    let ts = UInt::try_from(origin_server_ts).unwrap_or_default();
    Ok(get_event_by_timestamp::v1::Response::new(
        event_id,
        MilliSecondsSinceUnixEpoch(ts),
    ))
}

/// `POST /rooms/{roomId}/report/{eventId}`: recorded for the server admins. The
/// reporter must be able to see the event; unknown events get 404 either way.
pub async fn report(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    event_id: &str,
    reason: Option<&str>,
) -> Result<()> {
    let mut viewer = Viewer::new(app, user, None, room_id).await?;
    let not_found = || Error::not_found("Event not found");
    let ev = events::get(&app.db, event_id)
        .await?
        .ok_or_else(not_found)?;
    if ev.room_id != room_id.as_str() || !viewer.may_see(&ev).await? {
        return Err(not_found());
    }
    relations::insert_report(
        &app.db,
        room_id.as_str(),
        event_id,
        user.as_str(),
        reason,
        app.clock.now_ms(),
    )
    .await?;
    tracing::info!(%room_id, event_id, reporter = %user, "event reported");
    Ok(())
}
