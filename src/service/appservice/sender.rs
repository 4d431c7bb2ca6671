//! Delivery of queued events to application services
//! (`PUT /_matrix/app/v1/transactions/{txnId}`, `Authorization: Bearer
//! hs_token`).
//!
//! One task per appservice with a URL, so a dead appservice delays only itself.
//! Each task sends one transaction at a time, oldest rows first: a
//! transaction's rows and ID are fixed in the database before it is sent
//! (`storage::appservice::form_transaction`), so a retry — after a failure or
//! a restart — sends the same events under the same ID, which the appservice
//! deduplicates; the rows are deleted only after a 2xx. Failures back off
//! from [`FIRST_RETRY`], doubling up to [`MAX_RETRY`], and are retried until
//! the appservice answers. The task wakes when the notifier publishes a new
//! position (the queueing transaction has committed by then).

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::appservice::Registration, outbound::OutboundClient, service::AppState, storage,
};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);
/// Events in one transaction at most.
const MAX_EVENTS: i64 = 100;
/// Looked at again this often even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// Starts the delivery workers: one task per appservice that has a URL, and
/// the typing forwarder; all restarted with the new set when the
/// registrations are reloaded.
pub fn spawn_all(
    app: &AppState,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    tasks.spawn(supervise(app.clone(), shutdown.clone()));
}

async fn supervise(app: AppState, shutdown: CancellationToken) {
    let mut reloads = app.appservice_reloaded.subscribe();
    loop {
        reloads.borrow_and_update();
        let generation = shutdown.child_token();
        let mut workers = tokio::task::JoinSet::new();
        for reg in &app.appservices.current().list {
            if reg.url.is_some() {
                workers.spawn(run(app.clone(), reg.clone(), generation.clone()));
            }
        }
        workers.spawn(super::ephemeral::forward_typing(
            app.clone(),
            generation.clone(),
        ));
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            changed = reloads.changed() => changed.is_err(),
        };
        generation.cancel();
        while workers.join_next().await.is_some() {}
        if stop {
            return;
        }
    }
}

async fn run(app: AppState, reg: Arc<Registration>, shutdown: CancellationToken) {
    let Some(client) = app.appservice_http.current().get(&reg.id) else {
        return;
    };
    let mut wake = app.notifier.subscribe();
    let mut also_wake = app.appservice_wake.subscribe();
    let mut delay = FIRST_RETRY;
    loop {
        wake.borrow_and_update();
        also_wake.borrow_and_update();
        // Stopping (shutdown, reload) may cut a transaction short: it is
        // durable, and sent again under the same ID.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = deliver_one(&app, &reg, &client) => outcome,
        };
        let pause = match outcome {
            Ok(true) => {
                delay = FIRST_RETRY;
                continue;
            }
            Ok(false) => {
                delay = FIRST_RETRY;
                None
            }
            Err(e) => {
                app.metrics.appservice_failure(&reg.id);
                tracing::info!(appservice = %reg.id, "transaction failed ({e:#}); retrying in {delay:?}");
                let pause = delay;
                delay = (delay * 2).min(MAX_RETRY);
                Some(pause)
            }
        };
        match pause {
            // Failing: wait out the backoff (new events do not shorten it).
            Some(pause) => tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            },
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.changed() => {}
                _ = also_wake.changed() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            },
        }
    }
}

/// Sends the open transaction (or forms one from the queue); `Ok(false)` when
/// nothing is queued.
async fn deliver_one(
    app: &AppState,
    reg: &Registration,
    client: &OutboundClient,
) -> anyhow::Result<bool> {
    let pending = match storage::appservice::open_transaction(&app.db, &reg.id).await? {
        Some(p) => p,
        None => {
            if storage::appservice::form_transaction(&app.db, &reg.id, MAX_EVENTS)
                .await?
                .is_none()
            {
                return Ok(false);
            }
            storage::appservice::open_transaction(&app.db, &reg.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("formed transaction vanished"))?
        }
    };
    let (body, events) = body(app, reg, &pending.rows).await?;
    let txn_id = pending.txn_id.to_string();
    send(
        client,
        reg,
        &txn_id,
        &body,
        app.config.appservice_legacy_authorization,
    )
    .await?;
    storage::appservice::complete(&app.db, &reg.id, pending.txn_id).await?;
    app.metrics.appservice_sent(&reg.id, events);
    Ok(true)
}

/// The transaction body for a transaction's rows (and the number of room
/// events in it): `events`; the ephemeral events under the field the
/// registration asked for; `de.sorunome.msc2409.to_device`; and for MSC3202
/// registrations `org.matrix.msc3202.device_lists` (the rows merged, the
/// latest word on each user winning) and the one-time key counts and unused
/// fallback key types, read now, of the devices of the users the
/// transaction concerns (as Synapse chooses them: the sender, the to-device
/// recipients, and the namespace's users in the rooms of its events). A
/// part the registration does not (or no longer) ask for is left out.
async fn body(
    app: &AppState,
    reg: &Registration,
    rows: &[(String, String)],
) -> anyhow::Result<(Value, usize)> {
    let mut events = Vec::new();
    let mut ephemeral = Vec::new();
    let mut to_device = Vec::new();
    let mut changed: Vec<String> = Vec::new();
    let mut left: Vec<String> = Vec::new();
    for (kind, text) in rows {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        match kind.as_str() {
            "ephemeral" => ephemeral.push(value),
            "to_device" => to_device.push(value),
            "device_list" => {
                if let Some(user) = value["changed"].as_str() {
                    left.retain(|u| u != user);
                    if !changed.iter().any(|u| u == user) {
                        changed.push(user.to_owned());
                    }
                } else if let Some(user) = value["left"].as_str() {
                    changed.retain(|u| u != user);
                    if !left.iter().any(|u| u == user) {
                        left.push(user.to_owned());
                    }
                }
            }
            _ => events.push(value),
        }
    }
    let mut body = json!({ "events": events });
    if reg.wants_ephemeral() {
        body[reg.ephemeral_field()] = ephemeral.clone().into();
    }
    if reg.wants_to_device() && !to_device.is_empty() {
        body["de.sorunome.msc2409.to_device"] = to_device.clone().into();
    }
    if reg.msc3202 {
        if !changed.is_empty() || !left.is_empty() {
            body["org.matrix.msc3202.device_lists"] = json!({ "changed": changed, "left": left });
        }
        let mut users: Vec<String> = vec![reg.sender.to_string()];
        users.extend(
            to_device
                .iter()
                .filter_map(|m| m["to_user_id"].as_str().map(str::to_owned)),
        );
        let mut rooms: Vec<&str> = events
            .iter()
            .chain(ephemeral.iter())
            .filter_map(|e| e["room_id"].as_str())
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            users.extend(
                storage::appservice::local_members(&app.db, room)
                    .await?
                    .into_iter()
                    .filter(|u| reg.is_interested_in_user(u)),
            );
        }
        users.sort_unstable();
        users.dedup();
        let (counts, fallback) = key_state(app, &users).await?;
        if counts.as_object().is_some_and(|o| !o.is_empty()) {
            body["org.matrix.msc3202.device_one_time_keys_count"] = counts.clone();
            // The name Synapse sent first, still read by some bridges.
            body["org.matrix.msc3202.device_one_time_key_counts"] = counts;
        }
        if fallback.as_object().is_some_and(|o| !o.is_empty()) {
            body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback;
        }
    }
    Ok((body, events.len()))
}

/// `{user: {device: {algorithm: count}}}` (with `signed_curve25519` always
/// present) and `{user: {device: [algorithm…]}}` for every device of `users`.
async fn key_state(app: &AppState, users: &[String]) -> anyhow::Result<(Value, Value)> {
    let mut counts = serde_json::Map::new();
    for (user, device, algorithm, count) in
        storage::appservice::one_time_key_counts(&app.db, users).await?
    {
        let entry = counts
            .entry(user)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|devices| {
                devices
                    .entry(device)
                    .or_insert_with(|| json!({ "signed_curve25519": 0 }))
            });
        if let (Some(entry), Some(algorithm)) = (entry, algorithm) {
            entry[algorithm] = count.into();
        }
    }
    let mut fallback = serde_json::Map::new();
    for (user, device, algorithm) in
        storage::appservice::unused_fallback_keys(&app.db, users).await?
    {
        let list = &mut fallback.entry(user).or_insert_with(|| json!({}))[device.as_str()];
        if !list.is_array() {
            *list = json!([]);
        }
        if let (Some(list), Some(algorithm)) = (list.as_array_mut(), algorithm) {
            list.push(algorithm.into());
        }
    }
    Ok((counts.into(), fallback.into()))
}

/// One `PUT /transactions/{txnId}`; an answer other than 2xx is an error.
/// `legacy`: the `hs_token` as a query parameter too.
pub async fn send(
    client: &OutboundClient,
    reg: &Registration,
    txn_id: &str,
    body: &Value,
    legacy: bool,
) -> anyhow::Result<()> {
    let url =
        super::endpoint(reg, &["transactions", txn_id]).ok_or_else(|| anyhow::anyhow!("no URL"))?;
    let mut request = reqwest::Request::new(http::Method::PUT, url);
    super::authorize(&mut request, reg, legacy)?;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *request.body_mut() = Some(serde_json::to_vec(body)?.into());
    let response = client.send(request).await?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("the appservice answered {status}");
    }
    Ok(())
}
