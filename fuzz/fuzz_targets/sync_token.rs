//! The tokens clients hand back: `/sync` `since` tokens and `/messages`
//! pagination tokens. Parsing never panics, and a parsed token renders to a
//! token that parses to itself.
#![no_main]

use lattice::service::{sync::SyncToken, tokens::TopoToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = SyncToken::parse(text) {
        let rendered = token.to_string();
        assert_eq!(SyncToken::parse(&rendered).ok(), Some(token), "{rendered}");
    }
    if let Some(token) = TopoToken::parse(text) {
        let rendered = token.to_string();
        assert_eq!(TopoToken::parse(&rendered), Some(token), "{rendered}");
    }
});
