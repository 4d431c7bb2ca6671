//! Sync filters as clients send them (`filter=` JSON or an uploaded filter):
//! turning one into sync parameters and matching event types against it never
//! panics.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ruma::api::client::filter::FilterDefinition;

fuzz_target!(|data: &[u8]| {
    let Ok(definition) = serde_json::from_slice::<FilterDefinition>(data) else {
        return;
    };
    let params = lattice::service::sync::Params::new(&definition, None, Duration::ZERO, false);
    for kind in [
        "m.room.message",
        "m.room.member",
        "m.presence",
        "",
        "*",
        "m.*",
    ] {
        let _ = params.types.matches(kind);
    }
    // Types named in the filter itself, wildcards included.
    for kind in params
        .types
        .types
        .iter()
        .flatten()
        .chain(&params.types.not_types)
    {
        let _ = params.types.matches(kind);
    }
});
