//! Which member events `/sync` with lazy-loaded members has sent to each device,
//! so an incremental sync does not send them again (Synapse keeps the same
//! per-device cache).
//!
//! An entry is (room, member) → (member event, the `next_batch` position of the
//! response that carried it). A later sync skips the member only when its
//! `since` is at or after that position: a response that was lost (the client
//! retries with an older token) never counts as delivered. Missing entries only
//! cost a redundant member event, so the cache is in memory, bounded per
//! device, forgotten for idle devices, and cleared by an initial sync (the
//! client starts over).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Entries kept per device; past it, the older half goes.
const PER_DEVICE: usize = 2000;
/// A device that has not synced for this long is forgotten.
const IDLE: Duration = Duration::from_secs(30 * 60);

/// (user, device)
type DeviceKey = (String, String);
/// (room, member)
type MemberKey = (String, String);

#[derive(Default)]
pub struct LazyMembers {
    inner: Mutex<HashMap<DeviceKey, Device>>,
}

struct Device {
    used: Instant,
    sent: HashMap<MemberKey, (String, i64)>,
}

impl LazyMembers {
    /// Whether the device holds `event_id` as `member`'s member event in `room`,
    /// given that it syncs from `since`.
    pub fn client_has(
        &self,
        user: &str,
        device: &str,
        room: &str,
        member: &str,
        event_id: &str,
        since: i64,
    ) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .get(&(user.to_owned(), device.to_owned()))
            .and_then(|d| d.sent.get(&(room.to_owned(), member.to_owned())))
            .is_some_and(|(id, at)| id == event_id && *at <= since)
    }

    /// Records the member events a response carried; `fresh` (an initial sync)
    /// forgets what was sent before.
    pub fn record(
        &self,
        user: &str,
        device: &str,
        position: i64,
        fresh: bool,
        sent: Vec<(String, String, String)>,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        inner.retain(|_, d| now.duration_since(d.used) < IDLE);
        let key = (user.to_owned(), device.to_owned());
        if sent.is_empty() && !fresh {
            if let Some(d) = inner.get_mut(&key) {
                d.used = now;
            }
            return;
        }
        let device = inner.entry(key).or_insert_with(|| Device {
            used: now,
            sent: HashMap::new(),
        });
        device.used = now;
        if fresh {
            device.sent.clear();
        }
        for (room, member, event_id) in sent {
            let entry = device
                .sent
                .entry((room, member))
                .or_insert_with(|| (event_id.clone(), position));
            // Sent again: the earlier delivery stands. A new event: from now.
            if entry.0 != event_id {
                *entry = (event_id, position);
            }
        }
        if device.sent.len() > PER_DEVICE {
            let mut positions: Vec<i64> = device.sent.values().map(|(_, at)| *at).collect();
            positions.sort_unstable();
            let cutoff = positions[positions.len() / 2];
            device.sent.retain(|_, (_, at)| *at > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(room: &str, member: &str, id: &str) -> Vec<(String, String, String)> {
        vec![(room.into(), member.into(), id.into())]
    }

    #[test]
    fn delivered_only_from_the_position_it_went_out_with() {
        let cache = LazyMembers::default();
        cache.record("@u:x", "D", 10, false, sent("!r:x", "@a:x", "$1"));
        assert!(!cache.client_has("@u:x", "D", "!r:x", "@a:x", "$1", 9));
        assert!(cache.client_has("@u:x", "D", "!r:x", "@a:x", "$1", 10));
        // Another event, room, device or user: not held.
        assert!(!cache.client_has("@u:x", "D", "!r:x", "@a:x", "$2", 10));
        assert!(!cache.client_has("@u:x", "D", "!s:x", "@a:x", "$1", 10));
        assert!(!cache.client_has("@u:x", "E", "!r:x", "@a:x", "$1", 10));
        assert!(!cache.client_has("@v:x", "D", "!r:x", "@a:x", "$1", 10));
        // Sent again later: the first delivery still counts.
        cache.record("@u:x", "D", 20, false, sent("!r:x", "@a:x", "$1"));
        assert!(cache.client_has("@u:x", "D", "!r:x", "@a:x", "$1", 10));
        // An initial sync starts over.
        cache.record("@u:x", "D", 30, true, Vec::new());
        assert!(!cache.client_has("@u:x", "D", "!r:x", "@a:x", "$1", 30));
    }

    #[test]
    fn bounded_per_device() {
        let cache = LazyMembers::default();
        for i in 0..(PER_DEVICE as i64 + 10) {
            cache.record(
                "@u:x",
                "D",
                i,
                false,
                sent("!r:x", &format!("@{i}:x"), "$e"),
            );
        }
        let inner = cache.inner.lock().unwrap();
        let d = &inner[&("@u:x".to_owned(), "D".to_owned())];
        assert!(d.sent.len() <= PER_DEVICE);
        // The newest stay.
        assert!(
            d.sent
                .contains_key(&("!r:x".to_owned(), format!("@{}:x", PER_DEVICE + 9)))
        );
    }
}
