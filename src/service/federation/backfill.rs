//! History from before this server joined a room, or missed while it was away
//! (`GET /backfill`), fetched when a client pages back past the oldest event we
//! hold or to a gap in the middle of the timeline (`event_gaps`: prev events
//! of an accepted event that we never got).
//!
//! Backfilled events pass the signature and hash checks and the auth rules
//! against their own auth events (fetched with `/event_auth` when missing). They
//! take negative stream positions, so `/sync` never shows them as new, and they
//! change neither the room's current state nor its forward extremities.
//!
//! Each carries the state after it, for history visibility: a user who joined
//! a `joined` room later must not read what came before (the resident server
//! sends such events redacted, not left out, as Synapse does). The state is
//! asked of the server we backfill from (`/state_ids`, [`super::gap::state_after`])
//! for the oldest event of each unbroken stretch of the answer, then carried
//! forward through the stretch event by event. A server that lies about it can
//! only show our users history it could have sent us anyway.
//!
//! One fill at a time per room ([`Fills`]): two pages reaching the same gap
//! (or the room's oldest event) at once do not both fetch it; the second
//! finds it filled. Writes are idempotent besides (an event already held is
//! left as it is), for servers sharing a database. A gap whose fill fails
//! (nothing of it came in) is not asked for again before its backoff ends
//! ([`gap_backoff`]: stored with the gap, doubling, capped), so a dead or
//! lying server does not slow every page.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::{authorization::get_event_authorization, backfill::get_backfill},
};
use serde_json::Value;

use super::ingest::{self, Checked};
use crate::{
    domain::{auth, pdu::Pdu},
    error::Result,
    service::AppState,
    storage::{events, federation as fed_store, rooms},
};

/// How many events one `/backfill` request asks for.
const BATCH: usize = 50;

/// The wait after a gap's first failed fill; doubled per failure.
pub const GAP_FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between fills of a gap.
pub const GAP_MAX_RETRY: Duration = Duration::from_secs(60 * 60);

/// How long a gap that failed `failures` times in a row waits before it is
/// asked for again: [`GAP_FIRST_RETRY`] doubled per failure after the first,
/// at most [`GAP_MAX_RETRY`].
pub fn gap_backoff(failures: i32) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    GAP_FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(GAP_MAX_RETRY)
}

/// The rooms whose history is being fetched: one fill at a time per room.
#[derive(Default)]
pub struct Fills {
    rooms: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A room's turn to fill; its entry goes when no one else waits for it.
struct Turn<'a> {
    fills: &'a Fills,
    room_id: String,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Fills {
    /// Waits for the room's turn and holds it until the guard drops.
    async fn take<R>(&self, room_id: &RoomId, fill: impl std::future::Future<Output = R>) -> R {
        let turn = Turn {
            fills: self,
            room_id: room_id.to_string(),
            turn: self
                .rooms
                .lock()
                .expect("fills")
                .entry(room_id.to_string())
                .or_default()
                .clone(),
        };
        let _held = turn.turn.lock().await;
        fill.await
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut rooms = self.fills.rooms.lock().expect("fills");
        // Clones are taken only under this lock: the map's and ours mean no
        // one else waits.
        if Arc::strong_count(&self.turn) == 2 {
            rooms.remove(&self.room_id);
        }
    }
}

/// Fetches history before the oldest events held in `room_id` from a server in
/// the room. Returns whether any event was added to the timeline.
pub async fn backfill(app: &AppState, room_id: &RoomId) -> Result<bool> {
    if !app.config.federation.enabled {
        return Ok(false);
    }
    app.backfills
        .take(room_id, backfill_oldest(app, room_id))
        .await
}

/// [`backfill`], the room's turn held.
async fn backfill_oldest(app: &AppState, room_id: &RoomId) -> Result<bool> {
    // The edge: prev events of the oldest timeline events we do not hold.
    let oldest = events::oldest_in_room(&app.db, room_id.as_str(), 20).await?;
    let mut edge: Vec<String> = Vec::new();
    for ev in &oldest {
        let value: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        for p in crate::domain::pdu::referenced_ids(&value, "prev_events") {
            if !edge.contains(&p) {
                edge.push(p);
            }
        }
    }
    let held: HashSet<String> = events::in_timeline(&app.db, &edge)
        .await?
        .into_iter()
        .collect();
    edge.retain(|e| !held.contains(e));
    // Prev events recorded as gaps (in a small room their events are among
    // the oldest) are filled as gaps, with their backoff, not here.
    let ids: Vec<String> = oldest.iter().map(|e| e.event_id.clone()).collect();
    let gapped: HashSet<String> = fed_store::gaps_at(&app.db, room_id.as_str(), &ids)
        .await?
        .into_iter()
        .flat_map(|g| g.missing)
        .collect();
    edge.retain(|e| !gapped.contains(e));
    Ok(backfill_from(app, room_id, &edge, None).await? > 0)
}

/// Fills a gap in the middle of the timeline (issue #20): asks `/backfill`
/// for the missing prev events of `gap.event_id` and what lies before them,
/// first of the server that sent that event. The events are checked as any
/// backfilled event and take their place before it (by depth); the room's
/// current state and extremities do not change. The gap is closed once its
/// events are held; the oldest events of a partial answer leave a gap of
/// their own, filled when a page reaches it. A gap in its backoff is not
/// asked for; one whose fill brings none of its events backs off further.
/// Returns whether the gap's events (some) are now held: the page reads on
/// with them.
pub async fn fill_gap(app: &AppState, room_id: &RoomId, gap: &fed_store::Gap) -> Result<bool> {
    if !app.config.federation.enabled {
        return Ok(false);
    }
    app.backfills
        .take(room_id, fill_gap_now(app, room_id, &gap.event_id))
        .await
}

/// [`fill_gap`], the room's turn held: the gap as it is now (another page
/// may have filled it, or failed and backed it off, while this one waited).
async fn fill_gap_now(app: &AppState, room_id: &RoomId, event_id: &str) -> Result<bool> {
    // Filled meanwhile (by another page, or by events that arrived)?
    fed_store::close_filled_gaps(&app.db, room_id.as_str()).await?;
    let Some(gap) = fed_store::gaps_at(&app.db, room_id.as_str(), &[event_id.to_owned()])
        .await?
        .pop()
    else {
        return Ok(true);
    };
    if gap.next_try_ts > app.clock.now_ms() {
        return Ok(false);
    }
    // Held in the timeline: an outlier (as the gap fallback keeps the prev
    // event it fetched) is not history a reader can page through.
    let in_graph: HashSet<String> = events::in_timeline(&app.db, &gap.missing)
        .await?
        .into_iter()
        .collect();
    let missing: Vec<String> = gap
        .missing
        .iter()
        .filter(|m| !in_graph.contains(*m))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    let first = events::get(&app.db, &gap.event_id)
        .await?
        .map(|e| e.sender)
        .and_then(|s| ruma::UserId::parse(s).ok())
        .map(|u| u.server_name().to_string());
    let added = backfill_from(app, room_id, &missing, first).await?;
    let closed = fed_store::close_filled_gaps(&app.db, room_id.as_str()).await?;
    let filled = events::in_timeline(&app.db, &missing).await?;
    if filled.is_empty() {
        let failures = gap.failures.saturating_add(1);
        let wait = gap_backoff(failures);
        let next_try = app
            .clock
            .now_ms()
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        fed_store::record_gap_failure(&app.db, &gap.event_id, failures, next_try).await?;
        tracing::info!(%room_id, event_id = %gap.event_id, failures, wait_secs = wait.as_secs(),
            "a gap's fill brought none of its events: backing off");
        return Ok(false);
    }
    tracing::info!(%room_id, event_id = %gap.event_id, added, closed, "filled a gap");
    Ok(true)
}

/// Asks servers in the room (`first` before the others) for `edge` and the
/// events before it, until one answers; stores what checks out. Returns how
/// many events were added to the timeline.
async fn backfill_from(
    app: &AppState,
    room_id: &RoomId,
    edge: &[String],
    first: Option<String>,
) -> Result<usize> {
    if edge.is_empty() {
        return Ok(0);
    }
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Ok(0);
    };
    let Some(rules) = RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
    else {
        return Ok(0);
    };
    // A room joined with partial state: the servers its resident named
    // first (the members we know may be only ourselves).
    let mut servers: Vec<String> = first.into_iter().collect();
    for s in crate::storage::partial_state::servers(&app.db, room_id.as_str()).await? {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    for s in rooms::joined_servers(&app.db, room_id.as_str()).await? {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    servers.retain(|s| s != app.server_name.as_str());
    let from: Vec<OwnedEventId> = edge.iter().filter_map(|e| EventId::parse(e).ok()).collect();
    for server in servers {
        let Ok(server) = ruma::OwnedServerName::try_from(server) else {
            continue;
        };
        let request = get_backfill::v1::Request::new(
            room_id.to_owned(),
            from.clone(),
            UInt::from(BATCH as u32),
        );
        let reply = match app.federation.send(&server, request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "backfill failed");
                continue;
            }
        };
        let pdus = super::pdu_values(&reply.pdus);
        let added = store_batch(app, &server, &rules, room_id, edge, &pdus).await?;
        tracing::info!(%room_id, %server, received = pdus.len(), added, "backfilled");
        return Ok(added);
    }
    Ok(0)
}

/// Checks and stores one `/backfill` answer, oldest first.
async fn store_batch(
    app: &AppState,
    server: &ServerName,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    edge: &[String],
    pdus: &[Value],
) -> Result<usize> {
    let mut checked: Vec<Checked> = Vec::new();
    for value in pdus.iter().take(BATCH * 2) {
        match ingest::check_pdu(app, rules, value).await {
            Ok(c) if c.pdu.room_id == room_id => checked.push(c),
            Ok(_) => tracing::info!(%room_id, "backfilled event for another room dropped"),
            Err(e) => tracing::info!(%room_id, error = %e, "backfilled event dropped"),
        }
    }
    // Only what we asked for: the edge and what lies before it, reached through
    // prev_events within the answer. Anything else is a lie (an unrelated event
    // slipped into history) and is dropped.
    let by_id: HashMap<String, &Checked> = checked
        .iter()
        .map(|c| (c.event_id.to_string(), c))
        .collect();
    let mut wanted: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = edge.to_vec();
    while let Some(id) = todo.pop() {
        if let Some(c) = by_id.get(&id)
            && wanted.insert(id)
        {
            todo.extend(c.pdu.prev_events.iter().map(|p| p.to_string()));
        }
    }
    drop(by_id);
    let before = checked.len();
    checked.retain(|c| wanted.contains(c.event_id.as_str()));
    if checked.len() < before {
        tracing::info!(%room_id, dropped = before - checked.len(), "backfilled events not before the edge dropped");
    }
    checked.sort_by_key(|c| c.pdu.depth);
    let ids: Vec<String> = checked.iter().map(|c| c.event_id.to_string()).collect();
    let held: HashSet<String> = events::in_timeline(&app.db, &ids)
        .await?
        .into_iter()
        .collect();
    let mut seen = HashSet::new();
    checked.retain(|c| !held.contains(c.event_id.as_str()) && seen.insert(c.event_id.clone()));
    let mut added = 0;
    // The state group after each event written from this answer.
    let mut after: HashMap<String, i64> = HashMap::new();
    // What was written, with its prev events.
    let mut written: Vec<(String, Vec<String>)> = Vec::new();
    for c in checked {
        let auth_ids: Vec<String> = ingest::auth_ids_of(&c.pdu, rules)
            .iter()
            .map(|e| e.to_string())
            .collect();
        // An event naming another room's events is dropped, never used.
        let Ok(mut known) = ingest::load_pdus(&app.db, room_id, &auth_ids).await else {
            tracing::info!(event_id = %c.event_id, "backfilled event pointing into another room dropped");
            continue;
        };
        if known.len() < auth_ids.len() {
            let request =
                get_event_authorization::v1::Request::new(room_id.to_owned(), c.event_id.clone());
            if let Ok(body) = app.federation.send(server, request).await {
                let mut chain = super::pdu_values(&body.auth_chain);
                chain.truncate(ingest::MAX_AUTH_CHAIN);
                if let Err(e) = ingest::store_auth_events(app, rules, room_id, &chain).await {
                    tracing::info!(%room_id, error = %e, "storing a backfilled auth chain failed");
                }
            }
            let Ok(reloaded) = ingest::load_pdus(&app.db, room_id, &auth_ids).await else {
                continue;
            };
            known = reloaded;
        }
        let auth_events: HashMap<OwnedEventId, Pdu> =
            known.into_iter().map(|(id, (pdu, _))| (id, pdu)).collect();
        if auth_events.len() < auth_ids.len() {
            tracing::info!(event_id = %c.event_id, "backfilled event without its auth events dropped");
            continue;
        }
        let own: auth::StateMap = auth_events
            .values()
            .filter(|p| !p.rejected)
            .filter_map(|p| {
                p.state_key
                    .as_ref()
                    .map(|k| ((p.kind.to_string(), k.clone()), p.clone()))
            })
            .collect();
        if let Err(reason) = auth::authorize_with(rules, &c.pdu, &auth_events, &own) {
            tracing::info!(event_id = %c.event_id, %reason, "backfilled event fails auth");
            ingest::store_outlier(&app.db, &c, true).await?;
            continue;
        }
        let mut base = c
            .pdu
            .prev_events
            .iter()
            .find_map(|p| after.get(p.as_str()).copied());
        if base.is_none() && !c.pdu.prev_events.is_empty() {
            // Its prev events are ours already (the answer reached the other
            // side of a gap): the state after them is known here, and needs
            // no one's word, when they all leave the room in one state.
            let prevs: Vec<String> = c.pdu.prev_events.iter().map(|p| p.to_string()).collect();
            let held = events::get_many(&app.db, &prevs).await?;
            let mut groups: Vec<Option<i64>> = held
                .iter()
                .filter(|e| e.room_id == room_id.as_str())
                .map(|e| e.state_group.filter(|_| !e.rejected))
                .collect();
            groups.sort_unstable();
            groups.dedup();
            if held.len() == prevs.len()
                && let [Some(group)] = groups.as_slice()
            {
                base = Some(*group);
            }
        }
        let at = match base {
            Some(group) => StateAt::OnTopOf(Some(group)),
            // The create event: the state after it is itself (an answer that
            // reaches the room's start needs no one's word for its state).
            None if c.pdu.prev_events.is_empty() && c.pdu.state_key.is_some() => {
                StateAt::OnTopOf(None)
            }
            None => match super::gap::state_after(app, server, rules, room_id, c.event_id.as_str())
                .await
            {
                Ok(group) => StateAt::After(group),
                Err(reason) => {
                    // Without its state, who may read it is unknown: not stored.
                    tracing::info!(event_id = %c.event_id, %reason, "no state for a backfilled event; dropped");
                    continue;
                }
            },
        };
        let group = write(app, rules, &c, at).await?;
        after.insert(c.event_id.to_string(), group);
        written.push((
            c.event_id.to_string(),
            c.pdu.prev_events.iter().map(|p| p.to_string()).collect(),
        ));
        added += 1;
    }
    // The prev events of what was written that we still do not hold (the
    // answer stopped short of them): gaps, filled when a page reaches them.
    let prevs: Vec<String> = written.iter().flat_map(|(_, p)| p.clone()).collect();
    let in_graph: HashSet<String> = events::in_timeline(&app.db, &prevs)
        .await?
        .into_iter()
        .collect();
    for (event_id, prevs) in written {
        let missing: Vec<String> = prevs
            .into_iter()
            .filter(|p| !in_graph.contains(p))
            .collect();
        if !missing.is_empty() {
            fed_store::insert_gaps(&app.db, room_id.as_str(), &event_id, &missing).await?;
        }
    }
    Ok(added)
}

/// Where a backfilled event's state comes from.
enum StateAt {
    /// The state after it, as the server we backfill from gave it.
    After(i64),
    /// The state after its prev event in the same answer (none for the
    /// create event): its own state is that, plus itself when it is a state
    /// event.
    OnTopOf(Option<i64>),
}

/// Writes a backfilled event into the timeline at a negative stream position;
/// returns the state group after it.
async fn write(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    c: &Checked,
    at: StateAt,
) -> Result<i64> {
    let text = serde_json::to_string(&c.object).map_err(|e| anyhow::anyhow!("{e}"))?;
    let kind = c.pdu.kind.to_string();
    let mut tx = app.db.begin().await?;
    // Held already (written by another server sharing the database, or
    // arrived meanwhile): left as it is.
    if !events::claim_id(&mut tx, c.event_id.as_str()).await? {
        let held = events::get(&mut *tx, c.event_id.as_str()).await?;
        tx.rollback().await?;
        if let Some(group) = held.and_then(|e| e.state_group) {
            return Ok(group);
        }
        return Err(anyhow::anyhow!("{} is held without a state", c.event_id).into());
    }
    let state_group = match (at, &c.pdu.state_key) {
        (StateAt::After(group), _) => group,
        (StateAt::OnTopOf(parent), Some(state_key)) => {
            crate::service::event::new_state_group(
                &mut tx,
                c.pdu.room_id.as_str(),
                parent,
                (kind.clone(), state_key.clone()),
                c.event_id.as_str(),
            )
            .await?
        }
        (StateAt::OnTopOf(Some(parent)), None) => parent,
        (StateAt::OnTopOf(None), None) => {
            return Err(anyhow::anyhow!("a message event without prev events").into());
        }
    };
    let stream = events::next_backfill_ordering(&mut *tx).await?;
    crate::storage::federation::delete_outlier(&mut *tx, c.event_id.as_str()).await?;
    events::insert(
        &mut *tx,
        &events::NewEventRow {
            event_id: c.event_id.as_str(),
            room_id: c.pdu.room_id.as_str(),
            depth: c.pdu.depth,
            event_type: &kind,
            state_key: c.pdu.state_key.as_deref(),
            sender: c.pdu.sender.as_str(),
            origin_server_ts: u64::from(c.pdu.origin_server_ts.0) as i64,
            json: &text,
            state_group: Some(state_group),
            rejected: false,
            received_ts: app.clock.now_ms(),
        },
        stream,
    )
    .await?;
    // The same redaction rule as every writer: only allowed, same-room
    // redactions are applied.
    crate::service::event::settle_redactions(&mut tx, app, rules, &c.pdu, Some(state_group), true)
        .await?;
    tx.commit().await?;
    Ok(state_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_backs_off_doubling_to_the_cap() {
        let secs: Vec<u64> = (1..=10).map(|f| gap_backoff(f).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        // Never negative or overflowing, whatever is stored.
        assert_eq!(gap_backoff(0), GAP_FIRST_RETRY);
        assert_eq!(gap_backoff(i32::MAX), GAP_MAX_RETRY);
    }
}
