//! What another server may read of a room's graph (`/backfill`,
//! `/get_missing_events`, `/event`, `/event_auth`, `/state`, `/state_ids`),
//! always through its [`ServerView`] (history visibility per server), and the
//! replies to its `/send` transactions kept for retries.

use std::collections::{BTreeMap, HashSet};

use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use super::{
    state_before,
    visibility::{self, ServerView},
};
use crate::{
    domain::pdu::Pdu,
    error::{Error, Result},
    service::AppState,
    storage::{events, federation as fed_store, rooms},
};

/// `/backfill`: the events `from` and those before them, newest (deepest)
/// first, walking `prev_events`, at most `limit` (1–100), as `origin` may see
/// them.
pub async fn backfill(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    from: Vec<String>,
    limit: usize,
) -> Result<Vec<Box<RawJsonValue>>> {
    let mut view = ServerView::new(app, origin, room_id).await?;
    view.require_in_room()?;
    let rules = room_rules(app, room_id).await?;
    let limit = limit.clamp(1, 100);
    let mut seen: HashSet<String> = from.iter().cloned().collect();
    let mut queue: std::collections::BinaryHeap<Queued> = Default::default();
    for ev in events::get_many(&app.db, &from).await? {
        if ev.room_id == room_id.as_str() && ev.stream_ordering != 0 {
            queue.push(Queued(ev));
        }
    }
    let mut found = Vec::new();
    while let Some(Queued(ev)) = queue.pop() {
        if found.len() >= limit {
            break;
        }
        let value: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        let prevs: Vec<String> = crate::domain::pdu::referenced_ids(&value, "prev_events")
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        for ev in events::get_many(&app.db, &prevs).await? {
            if ev.room_id == room_id.as_str() && ev.stream_ordering != 0 {
                queue.push(Queued(ev));
            }
        }
        found.push(ev);
    }
    visible_pdus(&mut view, &rules, &found).await
}

/// The body of a `/get_missing_events` request.
#[derive(serde::Deserialize)]
pub struct MissingEvents {
    #[serde(default)]
    pub earliest_events: Vec<String>,
    #[serde(default)]
    pub latest_events: Vec<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
    #[serde(default)]
    pub min_depth: i64,
}

fn default_limit() -> usize {
    10
}

/// `/get_missing_events`: from `q.latest_events` back through `prev_events`,
/// stopping at `q.earliest_events`, at most `q.limit` events (oldest first),
/// as the server behind `view` may see them.
pub async fn missing_events(
    app: &AppState,
    mut view: ServerView<'_>,
    room_id: &RoomId,
    q: MissingEvents,
) -> Result<Vec<Box<RawJsonValue>>> {
    let rules = room_rules(app, room_id).await?;
    let limit = q.limit.clamp(1, 50);
    let stop: HashSet<String> = q.earliest_events.into_iter().collect();
    let mut seen: HashSet<String> = q.latest_events.iter().cloned().collect();
    let mut frontier: Vec<String> = q.latest_events;
    let mut found: Vec<events::StoredEvent> = Vec::new();
    // The latest events themselves are known to the requester.
    let mut first = true;
    while !frontier.is_empty() && found.len() < limit {
        let loaded = events::get_many(&app.db, &frontier).await?;
        frontier.clear();
        for ev in loaded {
            if ev.room_id != room_id.as_str() || ev.stream_ordering == 0 {
                continue;
            }
            let value: Value = serde_json::from_str(&ev.json).unwrap_or_default();
            let depth = ev.depth;
            if !first && found.len() < limit {
                found.push(ev);
            }
            if depth < q.min_depth {
                continue;
            }
            for p in crate::domain::pdu::referenced_ids(&value, "prev_events") {
                if !stop.contains(p.as_str()) && seen.insert(p.clone()) {
                    frontier.push(p);
                }
            }
        }
        first = false;
    }
    found.sort_by_key(|e| e.depth);
    visible_pdus(&mut view, &rules, &found).await
}

/// `/event`: the PDU, if `origin` may see it; redacted when its sender asked
/// for erasure (as `/backfill` sends it, and as Synapse does).
pub async fn event(
    app: &AppState,
    origin: &ServerName,
    event_id: &str,
) -> Result<Box<RawJsonValue>> {
    let not_found = || Error::not_found("Event not found");
    let stored = events::get(&app.db, event_id)
        .await?
        .ok_or_else(not_found)?;
    let room_id = RoomId::parse(&stored.room_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut view = ServerView::new(app, origin, &room_id).await?;
    if !view.may_see(&stored).await? {
        return Err(not_found());
    }
    let rules = room_rules(app, &room_id).await?;
    let pdus = visible_pdus(&mut view, &rules, std::slice::from_ref(&stored)).await?;
    pdus.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no PDU for a stored event").into())
}

/// The state IDs before an event and their auth chain (`/state`,
/// `/state_ids`).
pub async fn state_at(
    app: &AppState,
    origin: &ruma::ServerName,
    room_id: &str,
    event_id: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let stored = readable_event(app, origin, &room_id, event_id).await?;
    // A rejected event has no state of its own to give, nor has an event held
    // only as an outlier (auth chains, the prev event at a filled gap,
    // soft-failed events), as Synapse answers.
    let outlier = stored.stream_ordering == 0 && stored.state_group.is_none();
    if stored.rejected || outlier {
        return Err(Error::not_found("Event not found"));
    }
    let rules = room_rules(app, &room_id).await?;
    let id = EventId::parse(&stored.event_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pdu = Pdu::from_json(&id, &stored.json).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ids = state_before::state_ids_before(app, &rules, &room_id, &pdu).await?;
    let chain = state_before::auth_chain_ids(app, &room_id, &ids).await?;
    Ok((ids, chain))
}

/// An event of `room_id` that `origin` may read the graph around: one of its
/// users is joined now, and it may see the event (else `M_NOT_FOUND`).
pub async fn readable_event(
    app: &AppState,
    origin: &ruma::ServerName,
    room_id: &RoomId,
    event_id: &str,
) -> Result<events::StoredEvent> {
    let mut view = ServerView::new(app, origin, room_id).await?;
    view.require_in_room()?;
    let not_found = || Error::not_found("Event not found");
    let stored = events::get(&app.db, event_id)
        .await?
        .filter(|e| e.room_id == room_id.as_str())
        .ok_or_else(not_found)?;
    if !view.may_see(&stored).await? {
        return Err(not_found());
    }
    Ok(stored)
}

/// What a `/send` transaction's PDUs came to, by event ID: handled, or the
/// error that refused it (`send_transaction_message`'s answer).
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// The reply given to `origin`'s transaction `txn_id`, if it was handled.
pub async fn transaction_reply(
    app: &AppState,
    origin: &ServerName,
    txn_id: &str,
) -> Result<Option<PduResults>> {
    let Some(reply) = fed_store::inbound_reply(&app.db, origin.as_str(), txn_id).await? else {
        return Ok(None);
    };
    // Stored as it went on the wire: `{"pdus": {id: {} | {"error": …}}}`.
    let reply: Value = serde_json::from_str(&reply).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut results = PduResults::new();
    for (event_id, entry) in reply["pdus"].as_object().into_iter().flatten() {
        let event_id = EventId::parse(event_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let outcome = match entry["error"].as_str() {
            Some(error) => Err(error.to_owned()),
            None => Ok(()),
        };
        results.insert(event_id, outcome);
    }
    Ok(Some(results))
}

/// Keeps the reply to `origin`'s transaction `txn_id` for its retries.
pub async fn store_transaction_reply(
    app: &AppState,
    origin: &ServerName,
    txn_id: &str,
    results: &PduResults,
) -> Result<()> {
    let pdus: serde_json::Map<String, Value> = results
        .iter()
        .map(|(event_id, outcome)| {
            let entry = match outcome {
                Ok(()) => json!({}),
                Err(error) => json!({ "error": error }),
            };
            (event_id.to_string(), entry)
        })
        .collect();
    let reply = json!({ "pdus": pdus });
    fed_store::store_inbound_reply(
        &app.db,
        origin.as_str(),
        txn_id,
        &reply.to_string(),
        app.clock.now_ms(),
    )
    .await?;
    Ok(())
}

/// An event in the `/backfill` walk, deepest (then latest) first.
struct Queued(events::StoredEvent);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.depth, self.0.stream_ordering).cmp(&(other.0.depth, other.0.stream_ordering))
    }
}

/// The PDUs of `stored` as the requesting server may receive them: whole when
/// it may see them (and their sender was not erased), redacted otherwise (so
/// the graph stays connected).
async fn visible_pdus(
    view: &mut ServerView<'_>,
    rules: &ruma::room_version_rules::RoomVersionRules,
    stored: &[events::StoredEvent],
) -> Result<Vec<Box<RawJsonValue>>> {
    let visible = view.whole(stored).await?;
    stored
        .iter()
        .zip(visible)
        .map(|(ev, visible)| {
            let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
            let pdu = if visible {
                pdu
            } else {
                visibility::redacted_pdu(rules, pdu)
            };
            Ok(serde_json::value::to_raw_value(&pdu).map_err(|e| anyhow::anyhow!("PDU: {e}"))?)
        })
        .collect()
}

async fn room_rules(
    app: &AppState,
    room_id: &RoomId,
) -> Result<ruma::room_version_rules::RoomVersionRules> {
    let room = rooms::get(&app.db, room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| Error::not_found("Unsupported room version"))
}
