//! In-memory token-bucket rate limiting, per key (a user ID or an IP address).
//!
//! Buckets live in one mutex-guarded map; idle buckets that have refilled are
//! dropped on a sweep, so the map stays as large as the set of recently active keys.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::Bucket;

pub struct RateLimiter {
    enabled: bool,
    config: Bucket,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, State>,
    last_sweep: Instant,
}

#[derive(Clone, Copy)]
struct State {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(enabled: bool, config: Bucket) -> Self {
        Self {
            enabled,
            config,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes one token for `key`. `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Gives back a token taken by [`check`](Self::check) for an attempt that
    /// turned out legitimate (a correct password), so only failures drain the bucket.
    pub fn refund(&self, key: &str) {
        if !self.enabled {
            return;
        }
        let burst = f64::from(self.config.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = buckets.map.get_mut(key) {
            state.tokens = (state.tokens + 1.0).min(burst);
        }
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let Bucket { per_second, burst } = self.config;
        let burst = f64::from(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(buckets.last_sweep) > Duration::from_secs(60) {
            // A bucket that has been idle long enough to refill is the same as none.
            let full_after = Duration::from_secs_f64(burst / per_second);
            buckets
                .map
                .retain(|_, s| now.duration_since(s.updated) < full_after);
            buckets.last_sweep = now;
        }
        let state = buckets.map.entry(key.to_owned()).or_insert(State {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * per_second).min(burst);
        state.updated = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(
            true,
            Bucket {
                per_second: 2.0,
                burst: 3,
            },
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(limiter.check_at("b", t0).is_ok());
        // Half a second refills one token at 2/s.
        assert!(
            limiter
                .check_at("a", t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .check_at("a", t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn refund_gives_a_token_back() {
        let limiter = RateLimiter::new(
            true,
            Bucket {
                per_second: 0.001,
                burst: 2,
            },
        );
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check_at("a", t0).is_ok());
            limiter.refund("a");
        }
        assert!(limiter.check_at("a", t0).is_ok());
        assert!(limiter.check_at("a", t0).is_ok());
        assert!(limiter.check_at("a", t0).is_err());
        // Never above the burst.
        for _ in 0..5 {
            limiter.refund("a");
        }
        assert!(limiter.check_at("a", t0).is_ok());
        assert!(limiter.check_at("a", t0).is_ok());
        assert!(limiter.check_at("a", t0).is_err());
    }

    #[test]
    fn disabled_never_limits() {
        let limiter = RateLimiter::new(
            false,
            Bucket {
                per_second: 0.001,
                burst: 1,
            },
        );
        for _ in 0..100 {
            assert!(limiter.check("a").is_ok());
        }
    }
}
