//! The federation sender: drains `federation_outbox` into transactions of at most
//! 50 PDUs and 100 EDUs, one transaction in flight per destination, in queue
//! order. A failed destination backs off exponentially (2 s doubling, capped at
//! 10 minutes) without delaying the others, and is retried at once when it
//! contacts us; new items queued for it wait for the backoff to expire. The
//! queue is durable: after a restart delivery resumes where it stopped.
//!
//! A destination failing for `federation.destination_down_after_secs` (an hour)
//! is down: its backoff grows to an hour, and its queue stays bounded: only
//! the newest 50 PDUs of each room stay queued for it (a server away for
//! longer fetches the older ones: `/get_missing_events` for the nearest, then
//! `/backfill` of the gap when its users page back to it, as Synapse does).
//! Typing, receipts and presence keep only their latest state for any
//! destination (the `collapse_key` of each queued EDU). To-device messages and
//! device-list updates are kept whole.
//!
//! Backoff times are read from `AppState::clock`, so a test can walk the
//! schedule (`tests/service/backoff.rs`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::ServerName;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{service::AppState, storage::federation};

const MAX_PDUS: i64 = 50;
const MAX_EDUS: i64 = 100;
const BACKOFF_BASE_MS: i64 = 2_000;
const BACKOFF_CAP_MS: i64 = 10 * 60 * 1000;
/// The backoff cap of a destination that is down.
const DOWN_BACKOFF_CAP_MS: i64 = 60 * 60 * 1000;

/// Destinations currently backing off, so an inbound request from one of them
/// can clear its backoff without a database write per request.
#[derive(Default)]
pub struct BackedOff(Mutex<HashSet<String>>);

impl BackedOff {
    fn insert(&self, d: &str) {
        self.0.lock().expect("backed off").insert(d.to_owned());
    }
    fn remove(&self, d: &str) -> bool {
        self.0.lock().expect("backed off").remove(d)
    }
}

/// An inbound request from `origin` proves it is up: retry it now.
pub async fn heard_from(app: &AppState, origin: &ServerName) {
    if app.federation_backed_off.remove(origin.as_str()) {
        if let Err(e) = federation::clear_backoff(&app.db, origin.as_str()).await {
            tracing::warn!(error = %e, "clearing federation backoff failed");
        }
        app.federation_wake.notify_one();
    }
}

pub async fn run(app: AppState, shutdown: CancellationToken) {
    if !app.config.federation.enabled {
        return;
    }
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let now = app.clock.now_ms();
        match federation::ready_destinations(&app.db, now).await {
            Ok(ready) => {
                for destination in ready {
                    if !in_flight
                        .lock()
                        .expect("in flight")
                        .insert(destination.clone())
                    {
                        continue;
                    }
                    let app = app.clone();
                    let in_flight = in_flight.clone();
                    tasks.spawn(async move {
                        deliver(&app, &destination).await;
                        in_flight.lock().expect("in flight").remove(&destination);
                        // Items queued while this delivery ran are picked up next.
                        app.federation_wake.notify_one();
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the federation queue failed"),
        }
        while tasks.try_join_next().is_some() {}
        let wait = match federation::next_retry(&app.db).await {
            Ok(Some(at)) if at > now => Duration::from_millis((at - now) as u64),
            Ok(Some(_)) => Duration::from_millis(200),
            _ => Duration::from_secs(30),
        }
        .min(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = app.federation_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Destinations with queued items that are not backing off now.
pub async fn ready_destinations(app: &AppState) -> crate::error::Result<Vec<String>> {
    Ok(federation::ready_destinations(&app.db, app.clock.now_ms()).await?)
}

/// Sends transactions to one destination until its queue is empty or a send
/// fails (which backs it off). The worker runs one at a time per destination.
pub async fn deliver(app: &AppState, destination: &str) {
    let Ok(server) = ServerName::parse(destination) else {
        tracing::warn!(%destination, "dropping the queue of an invalid server name");
        let _ = crate::storage::federation::clear_queue(&app.db, destination).await;
        return;
    };
    loop {
        let (pdus, edus) = match (
            federation::queued_pdus(&app.db, destination, MAX_PDUS).await,
            federation::queued_edus(&app.db, destination, MAX_EDUS).await,
        ) {
            (Ok(p), Ok(e)) => (p, e),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(%destination, error = %e, "reading the queue failed");
                return;
            }
        };
        let mut ids: Vec<i64> = pdus
            .iter()
            .map(|p| p.id)
            .chain(edus.iter().map(|e| e.id))
            .collect();
        if ids.is_empty() {
            // Only rows of purged events may remain: clear them.
            let _ = federation::delete_delivered(&app.db, destination, &[]).await;
            return;
        }
        ids.sort_unstable();
        // Unique per content: the same rows always make the same ID, and a batch
        // that gained a late-committed row gets a new one.
        let txn_id = format!("{}-{}-{}", ids[0], ids[ids.len() - 1], ids.len());
        let body = json!({
            "origin": app.server_name.as_str(),
            "origin_server_ts": app.clock.now_ms(),
            "pdus": pdus.iter().filter_map(|p| serde_json::from_str::<Value>(&p.json).ok()).collect::<Vec<_>>(),
            "edus": edus.iter().filter_map(|e| serde_json::from_str::<Value>(&e.edu).ok()).collect::<Vec<_>>(),
        });
        // Raw, not ruma's `send_transaction_message`: any 2xx answer is
        // delivery (ruma's would refuse one without `pdus`, and the batch
        // would be retried forever); its errors are only logged.
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        match app
            .federation
            .request_json(&server, http::Method::PUT, &path, Some(&body))
            .await
        {
            Ok(reply) => {
                if let Some(results) = reply["pdus"].as_object() {
                    for (event_id, result) in results {
                        if let Some(error) = result.get("error") {
                            tracing::info!(%destination, %event_id, %error, "PDU refused by destination");
                        }
                    }
                }
                if let Err(e) = federation::delete_delivered(&app.db, destination, &ids).await {
                    tracing::warn!(%destination, error = %e, "dequeuing delivered items failed");
                    return;
                }
                let _ = federation::record_success(&app.db, destination, app.clock.now_ms()).await;
                tracing::debug!(%destination, pdus = pdus.len(), edus = edus.len(), "transaction delivered");
            }
            Err(e) => {
                let now = app.clock.now_ms();
                let failure = match federation::record_failure(
                    &app.db,
                    destination,
                    &e.to_string(),
                    now,
                    BACKOFF_BASE_MS,
                    BACKOFF_CAP_MS,
                    DOWN_BACKOFF_CAP_MS,
                    super::down_before(app, now),
                )
                .await
                {
                    Ok(failure) => failure,
                    Err(db) => {
                        tracing::warn!(%destination, error = %db, "recording a failed delivery failed");
                        return;
                    }
                };
                app.federation_backed_off.insert(destination);
                if failure.down {
                    // Bounded while it is away: the newest PDUs of each room.
                    match federation::collapse_down_queue(&app.db, destination).await {
                        Ok(dropped) if dropped > 0 => {
                            tracing::info!(%destination, dropped, "destination down: its queue bounded to the newest PDUs per room");
                        }
                        Ok(_) => {}
                        Err(db) => {
                            tracing::warn!(%destination, error = %db, "collapsing the queue failed");
                        }
                    }
                }
                tracing::info!(%destination, failures = failure.failures, down = failure.down, error = %e, "transaction failed; backing off");
                return;
            }
        }
    }
}
