//! A room's timeline in a sync: its newest events the user may see, shared by
//! `/sync` and sliding sync.

use ruma::RoomId;

use crate::{
    error::Result,
    service::AppState,
    service::read::Viewer,
    storage::{events::StoredEvent, state, sync as rows},
};

/// Pages a timeline may read (of twice its limit, at least 10 events, as
/// Synapse does) looking for events the user may see: bounded, so history the
/// user may not see costs a few queries, not a scan of the room.
const TIMELINE_PAGES: usize = 5;

/// The newest events of a room's window, as a timeline.
pub struct Recent {
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
pub async fn recent_events(
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
