//! Single-use nonces with a lifetime and a cap (shared-secret registration).
//!
//! Handing out a nonce needs no authentication, so the set must stay small
//! whatever a caller does: nonces expire after their lifetime (60 s, as on
//! Synapse), and once `cap` are outstanding the oldest is dropped for the new one.
//! Expired nonces leave from the front of the issue-order queue, so each call
//! does O(1) amortised work.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a nonce stays valid (Synapse: 60 s).
pub const LIFETIME: Duration = Duration::from_secs(60);
/// How many nonces may be outstanding at once. A deployment tool uses one for a
/// few milliseconds; a thousand leaves room for many at once and costs ~100 KB.
pub const MAX_OUTSTANDING: usize = 1000;

pub struct Nonces {
    lifetime: Duration,
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Outstanding nonces and when each was issued.
    issued: HashMap<String, Instant>,
    /// The same nonces in issue order (entries already taken stay until they
    /// reach the front, or the queue reaches twice the cap).
    order: VecDeque<(Instant, String)>,
}

impl Nonces {
    pub fn new(cap: usize, lifetime: Duration) -> Self {
        Self {
            lifetime,
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    /// Records a new nonce.
    pub fn issue(&self, nonce: String) {
        self.issue_at(nonce, Instant::now());
    }

    /// Takes a nonce: true once, if it was issued and has not expired.
    pub fn take(&self, nonce: &str) -> bool {
        self.take_at(nonce, Instant::now())
    }

    fn issue_at(&self, nonce: String, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now, self.lifetime);
        // Bound both the live set and the queue (taken nonces linger in it until
        // they reach the front): the oldest go first.
        while inner.issued.len() >= self.cap || inner.order.len() >= 2 * self.cap {
            let Some((_, oldest)) = inner.order.pop_front() else {
                break;
            };
            inner.issued.remove(&oldest);
        }
        inner.order.push_back((now, nonce.clone()));
        inner.issued.insert(nonce, now);
    }

    fn take_at(&self, nonce: &str, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now, self.lifetime);
        inner.issued.remove(nonce).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.issued.len(), inner.order.len())
    }
}

impl Inner {
    /// Drops expired nonces from the front of the queue, and entries of nonces
    /// already taken.
    fn prune(&mut self, now: Instant, lifetime: Duration) {
        while let Some((at, nonce)) = self.order.front() {
            let live = self.issued.get(nonce) == Some(at);
            if live && now.duration_since(*at) < lifetime {
                break;
            }
            if live {
                self.issued.remove(nonce);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_expiring() {
        let nonces = Nonces::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        nonces.issue_at("a".into(), t0);
        nonces.issue_at("b".into(), t0);
        assert!(nonces.take_at("a", t0 + Duration::from_secs(1)));
        assert!(
            !nonces.take_at("a", t0 + Duration::from_secs(1)),
            "single use"
        );
        assert!(!nonces.take_at("never", t0));
        // b expires at 60 s.
        assert!(!nonces.take_at("b", t0 + Duration::from_secs(60)));
        assert_eq!(nonces.len(), (0, 0));
    }

    #[test]
    fn the_set_stays_within_its_cap() {
        let nonces = Nonces::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10_000 {
            nonces.issue_at(format!("n{i}"), t0);
            let (live, queued) = nonces.len();
            assert!(live <= 3 && queued <= 3, "{live} {queued}");
        }
        // The newest survive; the oldest were dropped.
        assert!(nonces.take_at("n9999", t0));
        assert!(!nonces.take_at("n0", t0));
        // Taken nonces do not pile up in the queue either.
        for i in 0..1000 {
            nonces.issue_at(format!("m{i}"), t0);
            assert!(nonces.take_at(&format!("m{i}"), t0));
        }
        let (live, queued) = nonces.len();
        assert!(live <= 3 && queued <= 6, "{live} {queued}");
    }

    #[test]
    fn expired_nonces_leave_without_new_ones() {
        let nonces = Nonces::new(100, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..50 {
            nonces.issue_at(format!("n{i}"), t0);
        }
        assert!(!nonces.take_at("n1", t0 + Duration::from_secs(61)));
        assert_eq!(nonces.len(), (0, 0));
    }
}
