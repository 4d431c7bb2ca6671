//! Gaps that `/get_missing_events` could not fill.
//!
//! An event fetched to fill a gap may itself name prev events we never see
//! (the origin answers only so many missing events). Rather than refuse it, we
//! ask the server we fetched it from for the state after each such prev event,
//! as Synapse does: `/state_ids` at the prev event, then the events we lack
//! (`/event` one by one, or `/state` when many are missing), each checked like
//! any PDU and against its own auth events. The state before the fetched
//! event is then the resolution of these states and the states after its
//! known prev events ([`super::ingest`]).
//!
//! A server that lies here gains nothing state resolution would not give it:
//! an event that fails auth against its own auth events (a made-up power
//! levels event that claims powers its sender never had) is rejected and left
//! out of the state, events of another room are never used (an ID of one is
//! left out of the state), and the lied-about state is resolved against the room's own before it counts. An
//! event *pushed* to us whose gap stays open is refused instead (it could
//! otherwise become the room's only forward extremity on state no one
//! vouched for).

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use ruma::{
    EventId, RoomId, ServerName,
    api::federation::event::{get_event, get_room_state, get_room_state_ids},
    room_version_rules::RoomVersionRules,
};
use serde_json::Value;

use super::ingest::{Pdus, event_id_of, store_auth_events, store_auth_values};
use crate::{
    service::AppState,
    service::event,
    storage::{events, federation as fed_store},
};

/// How many unknown prev events of one fetched event have their state asked
/// for; an event with more is refused.
pub const MAX_MISSING_PREVS: usize = 5;
/// The most state and auth chain IDs accepted from one `/state_ids` answer.
/// Big public rooms hold well over 50,000 state events (a room of 10,000
/// members and 50,000 state events answers about 60,000 IDs); the events
/// themselves are bounded by the response size limit of the `/state` fetch.
const MAX_STATE_IDS: usize = 250_000;
/// Up to this many missing events are fetched one by one with `/event`; more
/// are fetched with one `/state` request.
const MAX_SINGLE_FETCHES: usize = 50;
/// How many `/event` requests run at once.
const FETCH_CONCURRENCY: usize = 8;

/// The state group of the state after `prev`, an event of `room_id` we do not
/// hold, as `from` describes it (checked as above).
pub async fn state_after(
    app: &AppState,
    from: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    prev: &str,
) -> Result<i64, String> {
    let full = state_map_after(app, from, rules, room_id, prev).await?;
    let db_err = |e: crate::error::Error| e.to_string();
    let mut tx = app.db.begin().await.map_err(|e| e.to_string())?;
    let group = event::write_snapshot(&mut tx, room_id.as_str(), full)
        .await
        .map_err(db_err)?;
    // The prev event joins the room's graph as an outlier with the state
    // after it: the events after it count it (`ingest::prev_state_groups`:
    // the state at them, `/state_ids` at them) without asking again.
    fed_store::set_outlier_state_group(&mut *tx, prev, group)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(group)
}

/// The state after `prev` as `from` describes it, checked as above (the
/// events it names fetched and stored as outliers, those failing auth left
/// out), without writing it as a state group: `(type, state_key)` → event ID.
pub async fn state_map_after(
    app: &AppState,
    from: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    prev: &str,
) -> Result<HashMap<(String, String), String>, String> {
    let prev_id = EventId::parse(prev).map_err(|e| format!("{prev}: {e}"))?;
    let request = get_room_state_ids::v1::Request::new(prev_id, room_id.to_owned());
    let body = app
        .federation
        .send(from, request)
        .await
        .map_err(|e| format!("/state_ids: {e}"))?;
    let state_ids: Vec<String> = body.pdu_ids.iter().map(ToString::to_string).collect();
    let chain_ids: Vec<String> = body
        .auth_chain_ids
        .iter()
        .map(ToString::to_string)
        .collect();
    if state_ids.len() + chain_ids.len() > MAX_STATE_IDS {
        return Err(format!(
            "a state of {} events is refused",
            state_ids.len() + chain_ids.len()
        ));
    }
    let mut wanted: Vec<String> = state_ids.iter().chain(&chain_ids).cloned().collect();
    wanted.push(prev.to_owned());
    wanted.sort_unstable();
    wanted.dedup();

    // What we lack. IDs of another room's events are held but never used
    // (as Synapse ignores them): they are not fetched, and not loaded below.
    let known: HashSet<String> = events::keys_of(&app.db, &wanted)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let missing: HashSet<String> = wanted
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();
    // Signatures, hashes, the room, and auth against their own auth events;
    // the ones failing auth are stored as rejected.
    if missing.len() > MAX_SINGLE_FETCHES {
        fetch_state(app, from, rules, room_id, prev, &missing).await?;
        if missing.contains(prev) {
            let values = fetch_each(app, from, rules, &[prev.to_owned()]).await;
            store_auth_events(app, rules, room_id, &values).await?;
        }
    } else if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().cloned().collect();
        let values = fetch_each(app, from, rules, &ids).await;
        store_auth_events(app, rules, room_id, &values).await?;
    }

    // Placed by their stored type and state key (a big room's state is tens
    // of thousands of events: none of them is parsed again here). Another
    // room's events are left out, as `ingest::load_room_pdus` does.
    let mut ids = state_ids.clone();
    ids.push(prev.to_owned());
    let held: HashMap<String, events::EventKey> = events::keys_of(&app.db, &ids)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|k| {
            let ours = k.room_id == room_id.as_str();
            if !ours {
                tracing::info!(event_id = %k.event_id, "an event of another room left out");
            }
            ours
        })
        .map(|k| (k.event_id.clone(), k))
        .collect();
    let mut full: HashMap<(String, String), String> = HashMap::new();
    for id in &state_ids {
        let Some(held) = held.get(id) else {
            tracing::info!(event_id = %id, "a state event at a gap could not be had");
            continue;
        };
        if held.rejected {
            tracing::info!(event_id = %id, "a state event at a gap fails auth: left out");
            continue;
        }
        let Some(state_key) = &held.state_key else {
            return Err(format!("{id} is not a state event"));
        };
        if full
            .insert((held.event_type.clone(), state_key.clone()), id.clone())
            .is_some()
        {
            return Err("two events are given for one state key".into());
        }
    }
    if !full.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err("the state has no create event".into());
    }
    let Some(prev_held) = held.get(prev) else {
        return Err("the prev event itself could not be had".into());
    };
    if !prev_held.rejected
        && let Some(state_key) = &prev_held.state_key
    {
        full.insert(
            (prev_held.event_type.clone(), state_key.clone()),
            prev.to_owned(),
        );
    }
    Ok(full)
}

/// The events `ids` as `from` serves them with `/event`, each only if it is
/// the event asked for (its ID computed from its content where the room
/// version does so). Events that cannot be had are left out.
async fn fetch_each(
    app: &AppState,
    from: &ServerName,
    rules: &RoomVersionRules,
    ids: &[String],
) -> Vec<Value> {
    let mut values = Vec::new();
    for chunk in ids.chunks(FETCH_CONCURRENCY) {
        let fetches = chunk.iter().map(|id| fetch_one(app, from, rules, id));
        values.extend(join_all(fetches).await.into_iter().flatten());
    }
    values
}

/// One event as `from` serves it with `/event`, if it is the event asked for.
async fn fetch_one(
    app: &AppState,
    from: &ServerName,
    rules: &RoomVersionRules,
    id: &str,
) -> Option<Value> {
    let event_id = EventId::parse(id).ok()?;
    let response = match app
        .federation
        .send(from, get_event::v1::Request::new(event_id))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(event_id = %id, error = %e, "fetching an event at a gap failed");
            return None;
        }
    };
    let value: Value = serde_json::from_str(response.pdu.get()).ok()?;
    event_id_of(rules, &value)
        .is_some_and(|got| got.as_str() == id)
        .then_some(value)
}

/// Checks and stores the events among `missing` in `from`'s `/state` answer
/// at `prev` (state and auth chain); anything else it holds is ignored.
async fn fetch_state(
    app: &AppState,
    from: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    prev: &str,
    missing: &HashSet<String>,
) -> Result<(), String> {
    let prev_id = EventId::parse(prev).map_err(|e| format!("{prev}: {e}"))?;
    let request = get_room_state::v1::Request::new(prev_id, room_id.to_owned());
    let body = app
        .federation
        .send(from, request)
        .await
        .map_err(|e| format!("/state: {e}"))?;
    // Parsed one at a time as they are checked: tens of thousands of events
    // held as `Value`s at once were most of a big join's memory.
    let raws: Vec<&serde_json::value::RawValue> = body
        .pdus
        .iter()
        .chain(&body.auth_chain)
        .map(|r| &**r)
        .collect();
    store_auth_values(app, rules, room_id, Pdus::Raw(&raws), Some(missing)).await?;
    Ok(())
}
