//! Sliding-sync connection state, in memory: per (user, device, `conn_id`),
//! what each `pos` handed out covered.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

/// `pos` values kept per connection (the latest, and a few before it for retries).
const KEPT_POSITIONS: usize = 4;
/// Connections kept per device; the least recently used goes first.
const CONNECTIONS_PER_DEVICE: usize = 8;
/// A connection unused this long is forgotten.
const CONNECTION_IDLE: Duration = Duration::from_secs(30 * 60);

/// What one `pos` covered.
#[derive(Clone, Default)]
pub(super) struct ConnState {
    pub(super) stream: i64,
    pub(super) typing: u64,
    pub(super) rooms: HashMap<String, SentRoom>,
    pub(super) lists: BTreeMap<String, usize>,
}

/// A room as last sent on a connection.
#[derive(Clone)]
pub(super) struct SentRoom {
    /// Stream position the room was sent up to.
    pub(super) upto: i64,
    /// The configuration it was sent with (timeline limit and required state).
    pub(super) config: String,
    /// The membership event it was sent with.
    pub(super) membership_event: String,
    /// Member events `$LAZY` sent (by member), so they are not sent again.
    pub(super) lazy_members: HashMap<String, String>,
}

struct Conn {
    next: u64,
    states: VecDeque<(u64, ConnState)>,
    used: Instant,
}

pub(super) type ConnKey = (String, String, String);

/// Sliding-sync connections of every user, in memory.
#[derive(Default)]
pub struct Connections {
    inner: Mutex<HashMap<ConnKey, Conn>>,
}

impl Connections {
    pub(super) fn get(&self, key: &ConnKey, pos: &str) -> Option<ConnState> {
        let serial: u64 = pos.parse().ok()?;
        let mut inner = self.inner.lock().expect("connections lock");
        let conn = inner.get_mut(key)?;
        conn.used = Instant::now();
        conn.states
            .iter()
            .find(|(s, _)| *s == serial)
            .map(|(_, st)| st.clone())
    }

    /// Stores the state a response covered and returns its `pos`. A request
    /// without `pos` starts the connection afresh.
    pub(super) fn put(&self, key: ConnKey, fresh: bool, state: ConnState) -> String {
        let mut inner = self.inner.lock().expect("connections lock");
        let now = Instant::now();
        inner.retain(|_, c| now.duration_since(c.used) < CONNECTION_IDLE);
        let same_device = inner
            .keys()
            .filter(|(u, d, _)| *u == key.0 && *d == key.1)
            .count();
        if !inner.contains_key(&key) && same_device >= CONNECTIONS_PER_DEVICE {
            let oldest = inner
                .iter()
                .filter(|((u, d, _), _)| *u == key.0 && *d == key.1)
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.remove(&oldest);
            }
        }
        let conn = inner.entry(key).or_insert_with(|| Conn {
            next: 1,
            states: VecDeque::new(),
            used: now,
        });
        if fresh {
            conn.states.clear();
        }
        let serial = conn.next;
        conn.next += 1;
        conn.used = now;
        conn.states.push_back((serial, state));
        while conn.states.len() > KEPT_POSITIONS {
            conn.states.pop_front();
        }
        serial.to_string()
    }
}
