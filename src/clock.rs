//! The wall clock, in the unit of every `*_ts` column and timestamp on the
//! wire: milliseconds since the Unix epoch.
//!
//! [`Clock`] is the clock as the server holds it (`AppState::clock`): the
//! system clock in production, or a [`ManualClock`]'s time, which a test sets
//! and advances, so schedules (backoff, expiry) can be tested without waiting.
//! [`now_ms`] reads the system clock directly, for code that has no state.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The server's clock: the system clock unless built from a [`ManualClock`].
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => now_ms(),
            Some(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(ms) => write!(f, "Clock::manual({})", ms.load(Ordering::SeqCst)),
        }
    }
}

/// A clock that moves only when told to (tests). Every [`Clock`] made from
/// it with [`ManualClock::clock`] reads the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(start_ms)))
    }

    /// A [`Clock`] reading this clock's time.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_ms(), 1_000);
        manual.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        manual.set_ms(50);
        assert_eq!(clock.clone().now_ms(), 50);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = now_ms();
        let read = Clock::system().now_ms();
        assert!(read >= before && read <= now_ms());
    }
}
