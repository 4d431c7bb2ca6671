//! `/sync`'s `next_batch` and `since` tokens.

use crate::error::{Error, Result};

/// A sync token, `s{stream}_{typing}_{to_device}`: the global stream position
/// (events, account data, receipts, device lists), the in-memory typing serial,
/// and the last to-device message delivered to this device (acknowledged when the
/// token comes back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
    pub to_device: i64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid since token");
        let mut parts = token.strip_prefix('s').ok_or_else(invalid)?.split('_');
        let mut next = || -> Result<Option<i64>> {
            match parts.next() {
                None => Ok(None),
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|n: &i64| *n >= 0)
                    .map(Some)
                    .ok_or_else(invalid),
            }
        };
        let stream = next()?.ok_or_else(invalid)?;
        let typing = next()?.unwrap_or(0) as u64;
        let to_device = next()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self {
            stream,
            typing,
            to_device,
        })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}_{}", self.stream, self.typing, self.to_device)
    }
}
