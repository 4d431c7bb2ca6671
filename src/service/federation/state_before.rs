//! The state before an event and its auth chain, as the resident server
//! answers `send_join`, `/state` and `/state_ids` with.

use std::collections::HashSet;

use ruma::RoomId;
use serde_json::Value;

use super::ingest;
use crate::{domain::pdu::Pdu, error::Result, service::AppState, storage::events};

/// The state before an event (resolved over its prev events) and the auth chain
/// of that state, as PDU JSON.
pub async fn state_and_auth_chain_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let ids = state_ids_before(app, rules, room_id, pdu).await?;
    let chain = auth_chain_ids(app, room_id, &ids).await?;
    Ok((jsons(app, &ids).await?, jsons(app, &chain).await?))
}

/// The IDs of the state before an event.
pub async fn state_ids_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<Vec<String>> {
    Ok(keyed_state_before(app, rules, room_id, pdu)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// The state before an event: `(type, state_key)` → event ID.
pub async fn keyed_state_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<Vec<crate::storage::state::Entry>> {
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    let mut tx = app.db.begin().await?;
    // Prev events held as outliers (soft-failed, or rejected: the state
    // before them) count with the state they were kept with.
    let groups = ingest::prev_state_groups(&mut tx, room_id, &prev).await?;
    let group = ingest::resolved_group(&mut tx, rules, room_id, &groups).await?;
    let entries = match group {
        Some(g) => crate::storage::state::full_state(&mut *tx, g).await?,
        None => Vec::new(),
    };
    tx.commit().await?;
    Ok(entries)
}

/// Every event reachable through `auth_events` from `ids` (not `ids` themselves
/// unless reachable).
pub async fn auth_chain_ids(
    app: &AppState,
    room_id: &RoomId,
    ids: &[String],
) -> Result<Vec<String>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = ids.to_vec();
    while !todo.is_empty() {
        let loaded = ingest::load_pdus(&app.db, room_id, &todo).await?;
        todo.clear();
        for (_, (pdu, _)) in loaded {
            for a in pdu.auth_events {
                if seen.insert(a.to_string()) {
                    todo.push(a.to_string());
                }
            }
        }
    }
    Ok(seen.into_iter().collect())
}

/// The stored PDU JSON of each event.
pub async fn jsons(app: &AppState, ids: &[String]) -> Result<Vec<Value>> {
    Ok(events::get_many(&app.db, ids)
        .await?
        .into_iter()
        .filter_map(|e| serde_json::from_str(&e.json).ok())
        .collect())
}
