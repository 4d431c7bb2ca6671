//! Typing notifications: in memory only (as in Synapse), with their own serial
//! in the sync token. Expiry costs one timer for the whole server: a worker sleeps
//! until the earliest expiry, not a timer per typing user.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The longest typing timeout honoured; clients re-send while the user types.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Typing {
    state: Mutex<State>,
    serial: watch::Sender<u64>,
    rearm: Notify,
}

#[derive(Default)]
struct State {
    serial: u64,
    rooms: HashMap<String, RoomTyping>,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<String, Instant>,
    changed: u64,
}

impl Default for Typing {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            serial: watch::channel(0).0,
            rearm: Notify::new(),
        }
    }
}

impl Typing {
    /// Starts (`Some(timeout)`) or stops (`None`) `user` typing in `room`.
    pub fn set(&self, room: &str, user: &str, timeout: Option<Duration>) {
        let mut state = self.lock();
        let entry = state.rooms.entry(room.to_owned()).or_default();
        let changed = match timeout {
            Some(t) => {
                let was_typing = entry.users.contains_key(user);
                entry
                    .users
                    .insert(user.to_owned(), Instant::now() + t.min(MAX_TIMEOUT));
                !was_typing
            }
            None => entry.users.remove(user).is_some(),
        };
        if changed {
            state.serial += 1;
            let serial = state.serial;
            if let Some(r) = state.rooms.get_mut(room) {
                r.changed = serial;
            }
            drop(state);
            self.serial.send_replace(serial);
        }
        if timeout.is_some() {
            self.rearm.notify_one();
        }
    }

    pub fn current(&self) -> u64 {
        self.lock().serial
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.serial.subscribe()
    }

    /// Every room whose typing set changed after serial `since`, with the
    /// users typing there now (the appservice forwarder's view), and the
    /// serial this is as of.
    pub fn all_changed_since(&self, since: u64) -> (u64, Vec<(String, Vec<String>)>) {
        let state = self.lock();
        let since = if since > state.serial { 0 } else { since };
        let mut out: Vec<(String, Vec<String>)> = state
            .rooms
            .iter()
            .filter(|(_, r)| r.changed > since)
            .map(|(room, r)| {
                let mut users: Vec<String> = r.users.keys().cloned().collect();
                users.sort();
                (room.clone(), users)
            })
            .collect();
        out.sort();
        (state.serial, out)
    }

    /// Rooms among `rooms` whose typing set changed after serial `since`, with the
    /// users typing there now. A `since` from before a restart (higher than the
    /// current serial) counts as 0.
    pub fn changed_since(&self, rooms: &[String], since: u64) -> Vec<(String, Vec<String>)> {
        let state = self.lock();
        let since = if since > state.serial { 0 } else { since };
        rooms
            .iter()
            .filter_map(|room| {
                let r = state.rooms.get(room)?;
                (r.changed > since).then(|| {
                    let mut users: Vec<String> = r.users.keys().cloned().collect();
                    users.sort();
                    (room.clone(), users)
                })
            })
            .collect()
    }

    /// Removes expired entries; returns the next expiry, if any.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut next: Option<Instant> = None;
        let mut expired_rooms = Vec::new();
        for (room, r) in &mut state.rooms {
            let before = r.users.len();
            r.users.retain(|_, until| *until > now);
            if r.users.len() != before {
                expired_rooms.push(room.clone());
            }
            for until in r.users.values() {
                next = Some(next.map_or(*until, |n| n.min(*until)));
            }
        }
        if !expired_rooms.is_empty() {
            state.serial += 1;
            let serial = state.serial;
            for room in expired_rooms {
                if let Some(r) = state.rooms.get_mut(&room) {
                    r.changed = serial;
                }
            }
            state
                .rooms
                .retain(|_, r| !r.users.is_empty() || r.changed == serial);
            drop(state);
            self.serial.send_replace(serial);
        }
        next
    }

    /// The expiry worker.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.expire();
            let sleep = next.map_or(Duration::from_secs(3600), |n| {
                n.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.rearm.notified() => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_reported_once_per_serial() {
        let t = Typing::default();
        let rooms = vec!["!a:x".to_owned(), "!b:x".to_owned()];
        t.set("!a:x", "@u:x", Some(Duration::from_secs(30)));
        let s1 = t.current();
        assert_eq!(
            t.changed_since(&rooms, 0),
            vec![("!a:x".to_owned(), vec!["@u:x".to_owned()])]
        );
        assert!(t.changed_since(&rooms, s1).is_empty());
        // Refreshing the timeout is not a change; stopping is.
        t.set("!a:x", "@u:x", Some(Duration::from_secs(30)));
        assert_eq!(t.current(), s1);
        t.set("!a:x", "@u:x", None);
        assert_eq!(
            t.changed_since(&rooms, s1),
            vec![("!a:x".to_owned(), vec![])]
        );
    }

    #[test]
    fn expiry_is_a_change() {
        let t = Typing::default();
        let rooms = vec!["!a:x".to_owned()];
        t.set("!a:x", "@u:x", Some(Duration::from_millis(1)));
        let s1 = t.current();
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.expire().is_none());
        assert_eq!(
            t.changed_since(&rooms, s1),
            vec![("!a:x".to_owned(), vec![])]
        );
    }
}
