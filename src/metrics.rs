//! Prometheus metrics, in the text exposition format, served at `/metrics` on
//! listeners with the `metrics` resource (keep it off the public listener).
//!
//! Series: `lattice_http_requests_total` and `lattice_http_request_duration_seconds`
//! by method, matched route and status; `lattice_events_persisted_total`;
//! `lattice_federation_send_joins_total` by `members_omitted` (faster joins);
//! `lattice_federation_partial_state_joins_total` by stage (joined, resynced);
//! `lattice_sync_waiters`; `lattice_db_pool_connections` by state;
//! `lattice_federation_queue_depth` and `lattice_federation_backoff_seconds` by
//! destination.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct RouteStats {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// The counters the server keeps in memory (reset on restart, as Prometheus
/// expects of counters).
#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
    events_persisted: AtomicU64,
    /// `send_join`s answered: whole, and with membership events omitted.
    send_joins: [AtomicU64; 2],
    /// Faster joins as the joining server: rooms joined with partial state,
    /// and rooms whose full state was then swapped in.
    partial_joins: [AtomicU64; 2],
    /// Per appservice: (events delivered, failed transactions).
    appservices: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let stats = http
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        stats.count += 1;
        stats.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                stats.buckets[i] += 1;
            }
        }
    }

    pub fn event_persisted(&self) {
        self.events_persisted.fetch_add(1, Ordering::Relaxed);
    }

    /// A `send_join` answered, whole or with membership events omitted.
    pub fn send_join_answered(&self, members_omitted: bool) {
        self.send_joins[usize::from(members_omitted)].fetch_add(1, Ordering::Relaxed);
    }

    /// A room joined with partial state (`resynced` false), or its full
    /// state swapped in (`resynced` true).
    pub fn partial_join(&self, resynced: bool) {
        self.partial_joins[usize::from(resynced)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn appservice_sent(&self, id: &str, events: usize) {
        let mut map = self.appservices.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_owned()).or_default().0 += events as u64;
    }

    /// (events delivered, failed transactions) of one appservice since start.
    pub fn appservice_counts(&self, id: &str) -> (u64, u64) {
        let map = self.appservices.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).copied().unwrap_or_default()
    }

    pub fn appservice_failure(&self, id: &str) {
        let mut map = self.appservices.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_owned()).or_default().1 += 1;
    }

    /// The in-memory series, in the text format.
    pub fn render_into(&self, out: &mut String) {
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP lattice_http_requests_total HTTP requests by method, matched route and status.\n");
        out.push_str("# TYPE lattice_http_requests_total counter\n");
        for ((method, route, status), s) in http.iter() {
            let _ = writeln!(
                out,
                "lattice_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                s.count
            );
        }
        out.push_str("# HELP lattice_http_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE lattice_http_request_duration_seconds histogram\n");
        let mut by_route: BTreeMap<(&str, &str), RouteStats> = BTreeMap::new();
        for ((method, route, _), s) in http.iter() {
            let agg = by_route.entry((method, route)).or_default();
            agg.count += s.count;
            agg.sum += s.sum;
            for (a, b) in agg.buckets.iter_mut().zip(s.buckets.iter()) {
                *a += b;
            }
        }
        for ((method, route), s) in &by_route {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (bound, n) in BUCKETS.iter().zip(s.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "lattice_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "lattice_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "lattice_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "lattice_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out.push_str("# HELP lattice_events_persisted_total Events written to the room graph (local and received).\n");
        out.push_str("# TYPE lattice_events_persisted_total counter\n");
        let _ = writeln!(
            out,
            "lattice_events_persisted_total {}",
            self.events_persisted.load(Ordering::Relaxed)
        );
        out.push_str("# HELP lattice_federation_send_joins_total send_join requests answered, by whether membership events were omitted (faster joins).\n");
        out.push_str("# TYPE lattice_federation_send_joins_total counter\n");
        for (omitted, n) in ["false", "true"].iter().zip(&self.send_joins) {
            let _ = writeln!(
                out,
                "lattice_federation_send_joins_total{{members_omitted=\"{omitted}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP lattice_federation_partial_state_joins_total Rooms joined with partial state (faster joins), by stage: joined, then resynced (full state in).\n");
        out.push_str("# TYPE lattice_federation_partial_state_joins_total counter\n");
        for (stage, n) in ["joined", "resynced"].iter().zip(&self.partial_joins) {
            let _ = writeln!(
                out,
                "lattice_federation_partial_state_joins_total{{stage=\"{stage}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let appservices = self.appservices.lock().unwrap_or_else(|e| e.into_inner());
        if !appservices.is_empty() {
            out.push_str("# HELP lattice_appservice_events_sent_total Events delivered to each application service.\n");
            out.push_str("# TYPE lattice_appservice_events_sent_total counter\n");
            for (id, (sent, _)) in appservices.iter() {
                let _ = writeln!(
                    out,
                    "lattice_appservice_events_sent_total{{appservice=\"{}\"}} {sent}",
                    escape(id)
                );
            }
            out.push_str("# HELP lattice_appservice_failures_total Transactions to each application service that failed (and are retried).\n");
            out.push_str("# TYPE lattice_appservice_failures_total counter\n");
            for (id, (_, failed)) in appservices.iter() {
                let _ = writeln!(
                    out,
                    "lattice_appservice_failures_total{{appservice=\"{}\"}} {failed}",
                    escape(id)
                );
            }
        }
    }
}

/// Escapes a label value.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_bucketed() {
        let m = Metrics::default();
        m.observe_request(
            "GET",
            "/_matrix/client/v3/sync",
            200,
            Duration::from_millis(20),
        );
        m.observe_request(
            "GET",
            "/_matrix/client/v3/sync",
            200,
            Duration::from_secs(2),
        );
        m.event_persisted();
        let mut out = String::new();
        m.render_into(&mut out);
        assert!(out.contains(
            "lattice_http_requests_total{method=\"GET\",route=\"/_matrix/client/v3/sync\",status=\"200\"} 2"
        ));
        assert!(out.contains(
            "lattice_http_request_duration_seconds_bucket{method=\"GET\",route=\"/_matrix/client/v3/sync\",le=\"0.025\"} 1"
        ));
        assert!(out.contains(
            "lattice_http_request_duration_seconds_bucket{method=\"GET\",route=\"/_matrix/client/v3/sync\",le=\"+Inf\"} 2"
        ));
        assert!(out.contains("lattice_events_persisted_total 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
