//! In-process stream notifier.
//!
//! Stream positions are taken from a database sequence inside persisting
//! transactions, which may commit out of order. Readers must never see position N
//! before every position below N has committed or rolled back, or they would skip
//! events. The tracker keeps the set of positions in flight and publishes the
//! highest position below all of them; waiters (sync) subscribe to that.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<Tracked>,
    published: watch::Sender<i64>,
    waiting: std::sync::atomic::AtomicUsize,
}

struct Tracked {
    in_flight: BTreeSet<i64>,
    max_seen: i64,
}

impl Notifier {
    /// Starts at `persisted`, the highest position already committed.
    pub fn new(persisted: i64) -> Self {
        let (published, _) = watch::channel(persisted);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(Tracked {
                    in_flight: BTreeSet::new(),
                    max_seen: persisted,
                }),
                published,
                waiting: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Registers a position taken by a transaction that has not committed yet. The
    /// guard releases it when dropped (after commit, or on rollback).
    pub fn begin(&self, position: i64) -> InFlight {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight.insert(position);
        state.max_seen = state.max_seen.max(position);
        InFlight {
            notifier: self.clone(),
            position,
            also_wake: None,
        }
    }

    /// The highest position readers may use: everything at or below it is final.
    pub fn current(&self) -> i64 {
        *self.inner.published.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.published.subscribe()
    }

    /// Waits for the published position to change, at most `timeout`; counted in
    /// [`Notifier::waiting`] meanwhile. Returns whether it changed.
    pub async fn wait(&self, rx: &mut watch::Receiver<i64>, timeout: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.inner.waiting.fetch_add(1, SeqCst);
        let changed = tokio::time::timeout(timeout, rx.changed())
            .await
            .is_ok_and(|r| r.is_ok());
        self.inner.waiting.fetch_sub(1, SeqCst);
        changed
    }

    /// How many requests are parked waiting for new events (long-polling syncs).
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn finish(&self, position: i64) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight.remove(&position);
        let safe = match state.in_flight.first() {
            Some(lowest) => lowest - 1,
            None => state.max_seen,
        };
        self.inner.published.send_if_modified(|current| {
            if safe > *current {
                *current = safe;
                true
            } else {
                false
            }
        });
    }
}

/// A position in flight; publishing happens when this drops.
pub struct InFlight {
    notifier: Notifier,
    position: i64,
    /// Woken as well on drop (after commit): the federation sender, when the
    /// transaction queued something for it.
    also_wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl InFlight {
    pub fn also_wake(mut self, notify: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.also_wake = Some(notify);
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.notifier.finish(self.position);
        if let Some(n) = &self.also_wake {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_only_below_the_lowest_in_flight() {
        let n = Notifier::new(10);
        let a = n.begin(11);
        let b = n.begin(12);
        drop(b);
        // 12 committed, but 11 is still in flight: readers stay at 10.
        assert_eq!(n.current(), 10);
        drop(a);
        assert_eq!(n.current(), 12);
        // A rolled-back position is simply released.
        let c = n.begin(13);
        drop(c);
        assert_eq!(n.current(), 13);
    }

    #[tokio::test]
    async fn subscribers_wake() {
        let n = Notifier::new(0);
        let mut rx = n.subscribe();
        let guard = n.begin(1);
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        drop(guard);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
