//! Pagination tokens: one parser for "a position in a room's timeline", used by
//! `/messages` (`from`, `to`), `/members` (`at`) and `/relations` (`from`, `to`),
//! and the checks for the per-endpoint counters of `/threads` and
//! `/notifications`.
//!
//! A position is a *gap between events*, as in Synapse:
//! - [`TopoToken`] `t{depth}_{stream}`, the gap just after the event at
//!   (depth, stream ordering) in topological order. Paging backwards from it
//!   returns that event first; paging forwards, the event after it. `/messages`,
//!   `/context`, `/relations` and sync's `prev_batch` issue these.
//! - a sync token `s{stream}_…` ([`SyncToken`]): the gap after every event at or
//!   below the stream position. The spec lets clients pass `/sync`'s
//!   `next_batch` (and `prev_batch`) to all of the above. Paged in topological
//!   order like the rest, a stream position bounds the first batch by stream
//!   ordering (Synapse does the same); later batches continue from the last
//!   event's topological position.
//!
//! A token Lattice cannot have issued (another shape, a sign where none can be,
//! a stream position outside those taken so far — backfilled history counts
//! down from -1 — or a depth past the largest an event can carry) is
//! `M_INVALID_PARAM`. Tokens name no room: one from another room is only a
//! position, as in Synapse.

use super::sync::SyncToken;
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, events::StoredEvent},
};

/// The largest depth an event can carry: canonical JSON integers stop at 2^53 - 1.
const MAX_DEPTH: i64 = (1 << 53) - 1;

/// The gap just after the event at (depth, stream ordering), as `t{depth}_{stream}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopoToken {
    pub depth: i64,
    pub stream: i64,
}

impl TopoToken {
    /// The gap just after `ev`: where a forward page that ended at `ev`
    /// continues.
    pub fn after(ev: &StoredEvent) -> Self {
        Self {
            depth: ev.depth,
            stream: ev.stream_ordering,
        }
    }

    /// The gap just before `ev`: where a backward page that ended at `ev`
    /// continues (stream orderings are integers, so nothing sits between).
    pub fn before(ev: &StoredEvent) -> Self {
        Self {
            depth: ev.depth,
            stream: ev.stream_ordering - 1,
        }
    }

    /// Only the shape; [`RoomPos::parse`] also checks the numbers.
    pub fn parse(s: &str) -> Option<Self> {
        let (depth, stream) = s.strip_prefix('t')?.split_once('_')?;
        // Backfilled events have negative stream orderings.
        Some(Self {
            depth: unsigned(depth)?,
            stream: signed(stream)?,
        })
    }

    /// Whether the event at (`depth`, `stream`) lies before this gap.
    fn holds(&self, depth: i64, stream: i64) -> bool {
        (depth, stream) <= (self.depth, self.stream)
    }
}

impl std::fmt::Display for TopoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}_{}", self.depth, self.stream)
    }
}

/// A position in a room's timeline, from any token the spec lets a client pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomPos {
    Topo(TopoToken),
    /// The gap after every event whose stream ordering is at or below this.
    Stream(i64),
}

impl RoomPos {
    /// Parses the `param` token: a topological token, or a sync token.
    pub async fn parse(app: &AppState, param: &str, token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid '{param}' token"));
        let pos = if let Some(t) = TopoToken::parse(token) {
            if t.depth > MAX_DEPTH {
                return Err(invalid());
            }
            Self::Topo(t)
        } else if token.starts_with('s')
            && token[1..].split('_').all(|p| unsigned(p).is_some())
            && let Ok(t) = SyncToken::parse(token)
        {
            Self::Stream(t.stream)
        } else {
            return Err(invalid());
        };
        let stream = match pos {
            Self::Topo(t) => t.stream,
            Self::Stream(s) => s,
        };
        // Every position Lattice hands out lies within the positions taken,
        // or just before the oldest (a gap before a backfilled event).
        let (low, high) = events::stream_range(&app.db).await?;
        let low = if low < 0 { low - 1 } else { 0 };
        if !(low..=high).contains(&stream) {
            return Err(invalid());
        }
        Ok(pos)
    }

    /// Whether the event at (`depth`, `stream`) lies before this position.
    pub fn holds(&self, depth: i64, stream: i64) -> bool {
        match self {
            Self::Topo(t) => t.holds(depth, stream),
            Self::Stream(s) => stream <= *s,
        }
    }

    /// [`Self::holds`] for a stored event.
    pub fn holds_event(&self, ev: &StoredEvent) -> bool {
        self.holds(ev.depth, ev.stream_ordering)
    }
}

/// A plain counter token of one endpoint (`/threads`, `/notifications`): a
/// stream position, within those taken so far (or just past either end).
pub async fn stream_counter(app: &AppState, param: &str, token: &str) -> Result<i64> {
    let invalid = || Error::invalid_param(format!("Invalid '{param}' token"));
    let n = signed(token).ok_or_else(invalid)?;
    let (low, high) = events::stream_range(&app.db).await?;
    let low = if low < 0 { low - 1 } else { 0 };
    if !(low..=high + 1).contains(&n) {
        return Err(invalid());
    }
    Ok(n)
}

/// [`unsigned`], or its negation after a `-`.
fn signed(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(magnitude) => unsigned(magnitude)?.checked_neg(),
        None => unsigned(s),
    }
}

/// A non-negative decimal without sign or padding tricks beyond leading zeros.
fn unsigned(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_tokens_parse_strictly() {
        assert_eq!(
            TopoToken::parse("t12_345"),
            Some(TopoToken {
                depth: 12,
                stream: 345
            })
        );
        for bad in [
            "",
            "t",
            "t1",
            "t1_",
            "t_1",
            "t-1_2",
            "t1_--2",
            "t1_-",
            "t1_+2",
            "t+1_2",
            "x1_2",
            "t1_2_3",
            "t1 _2",
            "t99999999999999999999_1",
        ] {
            assert_eq!(TopoToken::parse(bad), None, "{bad}");
        }
        // The gap before a backfilled event (negative stream ordering).
        assert_eq!(
            TopoToken::parse("t3_-7"),
            Some(TopoToken {
                depth: 3,
                stream: -7
            })
        );
    }

    #[test]
    fn a_gap_holds_the_events_before_it() {
        let t = TopoToken {
            depth: 5,
            stream: 10,
        };
        assert!(t.holds(5, 10));
        assert!(t.holds(4, 99));
        assert!(!t.holds(5, 11));
        assert!(!t.holds(6, 1));
        assert!(RoomPos::Stream(10).holds(99, 10));
        assert!(!RoomPos::Stream(10).holds(1, 11));
    }
}
