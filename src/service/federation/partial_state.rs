//! Faster joins as the joining server (MSC3902): a room joined with partial
//! state (`send_join` answered `members_omitted: true`) is usable at once, and
//! this worker fetches, checks and swaps in the full state in the background.
//!
//! While a room is marked (`partial_state_rooms`):
//! - our events go to the servers the resident named (`servers_in_room`) as
//!   well as to the servers of the members we know (`super::enqueue_pdu`);
//! - received events are checked against the state we have with their own
//!   auth events standing in for the keys we lack (the sender's membership),
//!   and are not soft-failed for a membership we were not sent
//!   (`super::ingest`, as Synapse);
//! - `/members` waits for the full state (for a while; then it answers from
//!   what is known);
//! - another local user's join goes through a resident server again (ours
//!   cannot vouch for memberships it has not seen), asking for the whole
//!   state; and this server does not act as a resident for the room
//!   (`make_join`/`make_knock` answer 404, as Synapse's do).
//!
//! The resync, per room, trying the server joined through and then each of
//! `servers_in_room` in turn: the state after each prev event of our join
//! (`/state_ids`, the events we lack by `/event` or `/state`, each checked
//! like any PDU and against its own auth events: [`super::gap`]), resolved
//! over the prev events — the full state before our join. A server whose
//! answer disagrees with the partial state we were sent (the same events at
//! every key it gave), or against which our join fails the auth rules, is
//! refused and the next one asked: a lying server gets nothing in. The swap:
//! the keys we lacked are added to the partial snapshot the join's state
//! group (and every later group, as deltas) is built on — entries already
//! there win, so what arrived meanwhile is kept — and to snapshots written
//! since (forks resolved while partial); then, under the room lock, the
//! events that arrived meanwhile are checked again against the state before
//! them (one that fails is rejected; a rejected state event leaves the state
//! of the events after it and the room's current state, both worked out
//! again); the members learnt become `room_members` rows; the mark is
//! cleared, and each member's next sync treats the room as newly joined. No
//! network I/O runs under the room lock or with a pooled connection held.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId, ServerName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ingest;
use crate::{
    domain::{auth, pdu::Pdu},
    service::AppState,
    service::event::{self, RoomCtx},
    storage::{events, partial_state as store, rooms, state},
};

/// Wake-ups of the resync worker and news of rooms it completed.
pub struct Resyncs {
    /// A room was joined with partial state.
    pub wake: tokio::sync::Notify,
    /// Bumped each time a room's full state is in.
    pub done: tokio::sync::watch::Sender<u64>,
}

impl Default for Resyncs {
    fn default() -> Self {
        Self {
            wake: tokio::sync::Notify::new(),
            done: tokio::sync::watch::channel(0).0,
        }
    }
}

/// The first wait after a failed resync round; doubled per round.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between resync rounds.
const MAX_RETRY: Duration = Duration::from_secs(600);
/// How long `/members` waits for a room's full state before answering from
/// what is known.
pub const MEMBERS_WAIT: Duration = Duration::from_secs(60);
/// The most servers taken from a `servers_in_room`.
pub const MAX_SERVERS: usize = 200;

/// Fills the keys `state` lacks from an event's auth events (accepted ones):
/// the state an event of a partial-stated room is checked against.
pub fn fill_from_auth_events(state: &mut auth::StateMap, auth_events: &HashMap<OwnedEventId, Pdu>) {
    for pdu in auth_events.values().filter(|p| !p.rejected) {
        if let Some(key) = &pdu.state_key {
            state
                .entry((pdu.kind.to_string(), key.clone()))
                .or_insert_with(|| pdu.clone());
        }
    }
}

/// Waits until `room_id` is no longer partial-stated, for at most `limit`.
/// Returns whether it has its full state.
pub async fn wait_for_full_state(app: &AppState, room_id: &RoomId, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut done = app.partial_state.done.subscribe();
    loop {
        match store::is_partial(&app.db, room_id.as_str()).await {
            Ok(false) => return true,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(%room_id, error = %e, "reading the partial-state mark");
                return false;
            }
        }
        match tokio::time::timeout_at(deadline, done.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

/// The resync worker: works through the partial-stated rooms (at start-up
/// too: a restart mid-resync resumes here), backing off per room after a
/// failed round, until `shutdown`.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut next_try: HashMap<String, Instant> = HashMap::new();
    loop {
        let rooms = match store::all(&app.db).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing partial-state rooms");
                Vec::new()
            }
        };
        next_try.retain(|id, _| rooms.iter().any(|r| &r.room_id == id));
        let mut soonest: Option<Instant> = None;
        for room in rooms {
            let now = Instant::now();
            if let Some(at) = next_try.get(&room.room_id)
                && *at > now
            {
                soonest = Some(soonest.map_or(*at, |s| s.min(*at)));
                continue;
            }
            let outcome = tokio::select! {
                outcome = resync_room(&app, &room) => outcome,
                () = shutdown.cancelled() => return,
            };
            match outcome {
                Ok(()) => {
                    app.metrics.partial_join(true);
                    next_try.remove(&room.room_id);
                    app.partial_state.done.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::warn!(room_id = %room.room_id, error = %e, "partial-state resync failed");
                    if let Err(e) = store::record_failure(&app.db, &room.room_id, &e).await {
                        tracing::warn!(error = %e, "recording a resync failure");
                    }
                    let rounds = u32::try_from(room.attempts.clamp(0, 16)).unwrap_or(16);
                    let wait = FIRST_RETRY
                        .saturating_mul(2u32.saturating_pow(rounds))
                        .min(MAX_RETRY);
                    let at = Instant::now() + wait;
                    next_try.insert(room.room_id.clone(), at);
                    soonest = Some(soonest.map_or(at, |s| s.min(at)));
                }
            }
        }
        let sleep = async {
            match soonest {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = app.partial_state.wake.notified() => {}
            () = sleep => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One resync round of a room: each server in turn until one gives a full
/// state that passes the checks.
#[tracing::instrument(skip_all, fields(room_id = %room.room_id))]
async fn resync_room(app: &AppState, room: &store::PartialRoom) -> Result<(), String> {
    let room_id = RoomId::parse(&room.room_id).map_err(|e| e.to_string())?;
    let stored = rooms::get(&app.db, room_id.as_str())
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the room is gone")?;
    let rules = RoomVersionId::try_from(stored.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or("unsupported room version")?;
    let mut errors = Vec::new();
    for server in &room.servers {
        let Ok(server) = ServerName::parse(server) else {
            continue;
        };
        if server == app.server_name {
            continue;
        }
        match resync_via(app, room, &room_id, &rules, &server).await {
            Ok(()) => {
                tracing::info!(%room_id, %server, "full state in: the room is no longer partial");
                return Ok(());
            }
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "resync through a server failed");
                errors.push(format!("{server}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        return Err("no server to resync through".into());
    }
    Err(errors.join("; "))
}

/// The full state before our join as `server` gives it, checked, and
/// swapped in.
async fn resync_via(
    app: &AppState,
    room: &store::PartialRoom,
    room_id: &RoomId,
    rules: &ruma::room_version_rules::RoomVersionRules,
    server: &ServerName,
) -> Result<(), String> {
    let db_err = |e: crate::error::Error| e.to_string();
    let join = events::get(&app.db, &room.join_event_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("our join is gone")?;
    let join_id = EventId::parse(&join.event_id).map_err(|e| e.to_string())?;
    let join_pdu = Pdu::from_json(&join_id, &join.json).map_err(|e| e.to_string())?;

    // The state after each prev event, from `server` (network; nothing held).
    let mut prev_maps = Vec::new();
    let mut prevs: Vec<String> = join_pdu.prev_events.iter().map(|e| e.to_string()).collect();
    prevs.sort_unstable();
    prevs.dedup();
    for prev in &prevs {
        prev_maps.push(super::gap::state_map_after(app, server, rules, room_id, prev).await?);
    }

    // Resolved over the prev events: the full state before our join.
    let mut tx = app.db.begin().await.map_err(|e| e.to_string())?;
    let full: HashMap<(String, String), String> = if prev_maps.len() == 1 {
        prev_maps.pop().unwrap_or_default()
    } else {
        let mut groups = Vec::new();
        for map in prev_maps {
            groups.push(
                event::write_snapshot(&mut tx, room_id.as_str(), map)
                    .await
                    .map_err(db_err)?,
            );
        }
        let resolved = ingest::resolved_group(&mut tx, rules, room_id, &groups)
            .await
            .map_err(db_err)?
            .ok_or("no state")?;
        state::full_state(&mut *tx, resolved)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect()
    };

    // It must hold the partial state we were sent, unchanged.
    let partial: HashMap<(String, String), String> = state::full_state(&mut *tx, room.state_group)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    for (key, id) in &partial {
        if full.get(key) != Some(id) {
            return Err(format!(
                "its state disagrees with the partial state at ({}, {})",
                key.0, key.1
            ));
        }
    }
    // Our join must pass the auth rules against it (only the keys the rules
    // consult are loaded: a big room's state is tens of thousands of events).
    let keys = event::auth_keys(
        rules,
        &join_pdu.kind,
        &join_pdu.sender,
        join_pdu.state_key.as_deref(),
        &join_pdu.content,
    )
    .map_err(db_err)?;
    let wanted: HashMap<&(String, String), &String> =
        keys.iter().filter_map(|k| full.get_key_value(k)).collect();
    let ids: Vec<String> = wanted.values().map(|id| (*id).clone()).collect();
    let loaded = ingest::load_pdus(&mut *tx, room_id, &ids)
        .await
        .map_err(db_err)?;
    let full_state: auth::StateMap = wanted
        .iter()
        .filter_map(|(k, id)| {
            let id = EventId::parse(id.as_str()).ok()?;
            loaded.get(&id).map(|(p, _)| ((*k).clone(), p.clone()))
        })
        .collect();
    if full_state.len() != wanted.len() {
        return Err("events of its state could not be had".into());
    }
    let auth_ids: Vec<String> = ingest::auth_ids_of(&join_pdu, rules)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let auth_events: HashMap<OwnedEventId, Pdu> = ingest::load_pdus(&mut *tx, room_id, &auth_ids)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|(id, (p, _))| (id, p))
        .collect();
    auth::authorize_with(rules, &join_pdu, &auth_events, &full_state)
        .map_err(|e| format!("our join fails auth against its state: {e}"))?;

    // The swap, part one: the keys we lacked join the partial snapshot and
    // the snapshots written since.
    let (keys, event_ids): (Vec<(String, String)>, Vec<String>) = full
        .iter()
        .filter(|(k, _)| !partial.contains_key(*k))
        .map(|(k, id)| (k.clone(), id.clone()))
        .unzip();
    let key_ids = state::intern_keys(&mut *tx, &keys)
        .await
        .map_err(|e| e.to_string())?;
    store::add_missing_entries(&mut *tx, room.state_group, &key_ids, &event_ids)
        .await
        .map_err(|e| e.to_string())?;
    for group in store::snapshots_after(&mut *tx, room_id.as_str(), room.state_group)
        .await
        .map_err(|e| e.to_string())?
    {
        store::add_missing_entries(&mut *tx, group, &key_ids, &event_ids)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    tracing::info!(%room_id, %server, added = keys.len(), "full state swapped in");

    // Part two, under the room lock (no network; no event arrives in the
    // middle): the events that arrived meanwhile checked again against the
    // state before them, now whole; the members learnt; the mark cleared.
    let mut tx = app.db.begin().await.map_err(|e| e.to_string())?;
    let Some(mut locked) = RoomCtx::lock(&mut tx, room_id).await.map_err(db_err)? else {
        return Err("the room is gone".into());
    };
    recheck_events_after(&mut tx, rules, &mut locked, join.stream_ordering).await?;
    if let Some(current) = locked.state_group {
        learn_members(&mut tx, room_id, current).await?;
    }
    store::delete(&mut *tx, room_id.as_str())
        .await
        .map_err(|e| e.to_string())?;
    // A position on the stream: the next sync of each member treats the
    // room as newly joined (the full state, the members' device lists).
    let (position, in_flight) = crate::service::stream::take(&mut tx, app)
        .await
        .map_err(db_err)?;
    store::record_completion(&mut *tx, room_id.as_str(), position)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    drop(in_flight);
    event::release(locked);
    Ok(())
}

/// Checks the room's timeline events after `stream` (those that arrived
/// while it was partial-stated) against the auth rules and the state before
/// each, now whole, oldest first, as Synapse recomputes the state of events
/// received during the partial state. An event that fails is marked
/// rejected: reads leave it out from then on (clients that synced it keep
/// their copy until their next sync, which treats the room as newly joined).
/// A rejected state event no longer counts: the state after it is the state
/// before it, the events after it get their state again without it, and the
/// room's current state is resolved again over its forward extremities (as
/// Synapse resolves it again when it un-partial-states a room), with
/// `room_members` following it. `room` is locked by the caller.
async fn recheck_events_after(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room: &mut RoomCtx,
    stream: i64,
) -> Result<(), String> {
    let db_err = |e: crate::error::Error| e.to_string();
    let room_id = room.room_id().to_owned();
    let after = store::events_after(&mut **tx, room_id.as_str(), stream)
        .await
        .map_err(|e| e.to_string())?;
    let mut rejected = 0usize;
    // Events whose state after them changed: the events after them are
    // given theirs again.
    let mut regrouped: HashSet<String> = HashSet::new();
    for (event_id, stored_group) in &after {
        let Some(stored) = events::get(&mut **tx, event_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let Ok(id) = EventId::parse(&stored.event_id) else {
            continue;
        };
        let Ok(pdu) = Pdu::from_json(&id, &stored.json) else {
            continue;
        };
        let prevs: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let groups = ingest::prev_state_groups(tx, &room_id, &prevs)
            .await
            .map_err(db_err)?;
        let before_group = ingest::resolved_group(tx, rules, &room_id, &groups)
            .await
            .map_err(db_err)?;
        let before = ingest::auth_state_pdus(tx, rules, &room_id, before_group, &pdu)
            .await
            .map_err(db_err)?;
        let auth_ids: Vec<String> = ingest::auth_ids_of(&pdu, rules)
            .iter()
            .map(|e| e.to_string())
            .collect();
        let auth_events: HashMap<OwnedEventId, Pdu> =
            ingest::load_pdus(&mut **tx, &room_id, &auth_ids)
                .await
                .map_err(db_err)?
                .into_iter()
                .map(|(id, (p, _))| (id, p))
                .collect();
        if let Err(reason) = auth::authorize_with(rules, &pdu, &auth_events, &before) {
            rejected += 1;
            tracing::info!(%room_id, %event_id, %reason, state = pdu.state_key.is_some(),
                "an event received while the room was partial fails auth against the full state: rejected");
            store::mark_rejected(&mut **tx, event_id, before_group)
                .await
                .map_err(|e| e.to_string())?;
            if before_group != *stored_group {
                regrouped.insert(event_id.clone());
            }
            continue;
        }
        if !prevs.iter().any(|p| regrouped.contains(p)) {
            continue;
        }
        // An event after a rejected one: its state again, on the state
        // before it as it is now.
        let group = match &pdu.state_key {
            Some(key) => Some(
                event::new_state_group(
                    tx,
                    room_id.as_str(),
                    before_group,
                    (pdu.kind.to_string(), key.clone()),
                    event_id,
                )
                .await
                .map_err(db_err)?,
            ),
            None => before_group,
        };
        if group != *stored_group {
            store::set_state_group(&mut **tx, event_id, group)
                .await
                .map_err(|e| e.to_string())?;
            regrouped.insert(event_id.clone());
        }
    }
    if rejected > 0 {
        tracing::warn!(%room_id, rejected, "events rejected against the full state");
    }
    if regrouped.is_empty() {
        return Ok(());
    }
    // The current state, resolved again over the forward extremities.
    let extremities = rooms::forward_extremities(&mut **tx, room_id.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let groups = ingest::prev_state_groups(tx, &room_id, &extremities)
        .await
        .map_err(db_err)?;
    let current = ingest::resolved_group(tx, rules, &room_id, &groups)
        .await
        .map_err(db_err)?;
    if let Some(group) = current
        && current != room.state_group
    {
        rooms::set_current_state_group(&mut **tx, room_id.as_str(), group)
            .await
            .map_err(|e| e.to_string())?;
        ingest::sync_memberships(tx, &room_id, room.state_group, current)
            .await
            .map_err(db_err)?;
        tracing::info!(%room_id, "current state resolved again without the rejected events");
        room.state_group = current;
    }
    Ok(())
}

/// `room_members` rows for the members of the current state we had none
/// for (the memberships the partial state left out).
async fn learn_members(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    current: i64,
) -> Result<(), String> {
    let db_err = |e: crate::error::Error| e.to_string();
    let known: HashSet<String> = store::member_users(&mut **tx, room_id.as_str())
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let learnt: Vec<(String, String)> = state::full_state(&mut **tx, current)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|((kind, user), _)| kind == "m.room.member" && !known.contains(user))
        .map(|((_, user), id)| (user, id))
        .collect();
    let ids: Vec<String> = learnt.iter().map(|(_, id)| id.clone()).collect();
    let loaded = ingest::load_pdus(&mut **tx, room_id, &ids)
        .await
        .map_err(db_err)?;
    for (user, id) in &learnt {
        let Some((pdu, _)) = EventId::parse(id).ok().and_then(|i| loaded.get(&i)) else {
            continue;
        };
        let content: serde_json::Value =
            serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let membership = content["membership"].as_str().unwrap_or("leave");
        rooms::set_membership(&mut **tx, room_id.as_str(), user, membership, id, 0)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pdu(id: &str, kind: &str, state_key: &str, content: serde_json::Value) -> Pdu {
        let event_id = EventId::parse(id).unwrap();
        let json = json!({
            "room_id": "!r:x", "sender": "@a:x", "type": kind, "state_key": state_key,
            "content": content, "prev_events": [], "auth_events": [], "depth": 1,
            "origin_server_ts": 1,
        });
        Pdu::from_json(&event_id, &json.to_string()).unwrap()
    }

    #[test]
    fn auth_events_fill_only_the_keys_the_state_lacks() {
        let ban = pdu(
            "$ban",
            "m.room.member",
            "@m:x",
            json!({"membership": "ban"}),
        );
        let mut state: auth::StateMap =
            HashMap::from([(("m.room.member".to_owned(), "@m:x".to_owned()), ban.clone())]);
        let join = pdu(
            "$join",
            "m.room.member",
            "@m:x",
            json!({"membership": "join"}),
        );
        let other = pdu(
            "$other",
            "m.room.member",
            "@o:x",
            json!({"membership": "join"}),
        );
        let mut rejected = pdu(
            "$rej",
            "m.room.member",
            "@r:x",
            json!({"membership": "join"}),
        );
        rejected.rejected = true;
        let auth_events: HashMap<OwnedEventId, Pdu> = [join, other, rejected]
            .into_iter()
            .map(|p| (p.event_id.clone(), p))
            .collect();
        fill_from_auth_events(&mut state, &auth_events);
        // A ban the state knows wins over the event's own claim.
        assert_eq!(
            state[&("m.room.member".to_owned(), "@m:x".to_owned())].event_id,
            ban.event_id
        );
        // An unknown member comes from the auth events; a rejected one never.
        assert_eq!(
            state[&("m.room.member".to_owned(), "@o:x".to_owned())]
                .event_id
                .as_str(),
            "$other"
        );
        assert!(!state.contains_key(&("m.room.member".to_owned(), "@r:x".to_owned())));
    }
}
