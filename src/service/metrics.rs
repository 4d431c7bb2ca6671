//! The `/metrics` page: the process's counters (`crate::metrics`) and gauges
//! read from the database and the running state.

use std::fmt::Write;

use crate::{error::Result, service::AppState, storage};

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// The whole page, in the text exposition format.
pub async fn render(app: &AppState) -> Result<String> {
    let mut out = String::new();
    app.metrics.render_into(&mut out);
    gauge_header(
        &mut out,
        "lattice_sync_waiters",
        "Waiters on the event stream now: long-polling /sync requests (and the push worker).",
    );
    let _ = writeln!(out, "lattice_sync_waiters {}", app.notifier.waiting());
    gauge_header(
        &mut out,
        "lattice_db_pool_connections",
        "Database pool connections by state.",
    );
    let idle = app.db.num_idle() as u32;
    let size = app.db.size();
    let _ = writeln!(out, "lattice_db_pool_connections{{state=\"idle\"}} {idle}");
    let _ = writeln!(
        out,
        "lattice_db_pool_connections{{state=\"in_use\"}} {}",
        size.saturating_sub(idle)
    );
    gauge_header(
        &mut out,
        "lattice_federation_queue_depth",
        "PDUs and EDUs queued per destination.",
    );
    for (destination, n) in storage::federation::queue_depths(&app.db).await? {
        let _ = writeln!(
            out,
            "lattice_federation_queue_depth{{destination=\"{}\"}} {n}",
            crate::metrics::escape(&destination)
        );
    }
    gauge_header(
        &mut out,
        "lattice_federation_backoff_seconds",
        "Seconds until a backed-off destination is retried.",
    );
    let now = app.clock.now_ms();
    for (destination, at) in storage::federation::backoffs(&app.db, now).await? {
        let _ = writeln!(
            out,
            "lattice_federation_backoff_seconds{{destination=\"{}\"}} {}",
            crate::metrics::escape(&destination),
            (at - now) as f64 / 1000.0
        );
    }
    gauge_header(
        &mut out,
        "lattice_federation_destination_down",
        "Destinations failing for longer than federation.destination_down_after_secs (1 each).",
    );
    let down_before = crate::service::federation::down_before(app, now);
    for destination in storage::federation::down_destinations(&app.db, down_before).await? {
        let _ = writeln!(
            out,
            "lattice_federation_destination_down{{destination=\"{}\"}} 1",
            crate::metrics::escape(&destination)
        );
    }
    if !app.appservices.current().is_empty() {
        gauge_header(
            &mut out,
            "lattice_appservice_queue_depth",
            "Events queued per application service, not yet acknowledged.",
        );
        let depths: std::collections::HashMap<String, i64> = storage::appservice::depth(&app.db)
            .await?
            .into_iter()
            .collect();
        for reg in &app.appservices.current().list {
            let _ = writeln!(
                out,
                "lattice_appservice_queue_depth{{appservice=\"{}\"}} {}",
                crate::metrics::escape(&reg.id),
                depths.get(&reg.id).copied().unwrap_or(0)
            );
        }
    }
    Ok(out)
}
