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

use crate::{app::AppState, domain::appservice::Registration, outbound::OutboundClient, storage};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);
/// Events in one transaction at most.
const MAX_EVENTS: i64 = 100;
/// Looked at again this often even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// Starts one delivery task per appservice that has a URL.
pub fn spawn_all(
    app: &AppState,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    for reg in &app.appservices.list {
        if reg.url.is_none() {
            continue;
        }
        tasks.spawn(run(app.clone(), reg.clone(), shutdown.clone()));
    }
}

async fn run(app: AppState, reg: Arc<Registration>, shutdown: CancellationToken) {
    let Some(client) = app.appservice_http.get(&reg.id) else {
        return;
    };
    let mut wake = app.notifier.subscribe();
    let mut delay = FIRST_RETRY;
    loop {
        wake.borrow_and_update();
        let pause = match deliver_one(&app, &reg, &client).await {
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
    let events: Vec<Value> = pending
        .events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or(Value::Null))
        .collect();
    let txn_id = pending.txn_id.to_string();
    send(client, reg, &txn_id, &json!({ "events": events })).await?;
    storage::appservice::complete(&app.db, &reg.id, pending.txn_id).await?;
    app.metrics.appservice_sent(&reg.id, events.len());
    Ok(true)
}

/// One `PUT /transactions/{txnId}`; an answer other than 2xx is an error.
pub async fn send(
    client: &OutboundClient,
    reg: &Registration,
    txn_id: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let url =
        super::endpoint(reg, &["transactions", txn_id]).ok_or_else(|| anyhow::anyhow!("no URL"))?;
    let mut request = reqwest::Request::new(http::Method::PUT, url);
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", reg.hs_token).parse()?,
    );
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
