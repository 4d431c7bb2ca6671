//! PDUs as a remote server sends them: the format check (canonical JSON, size,
//! reference hash, required signers), parsing into Lattice's event type,
//! redaction and the auth rules never panic, in each supported room version.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ruma::room_version_rules::RoomVersionRules;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for rules in [
        RoomVersionRules::V10,
        RoomVersionRules::V11,
        RoomVersionRules::V12,
    ] {
        let Ok(formatted) = lattice::service::federation::ingest::check_format(&rules, &value)
        else {
            continue;
        };
        let text = serde_json::to_string(&formatted.object).expect("serialises");
        if let Ok(pdu) = lattice::domain::pdu::Pdu::from_json(&formatted.event_id, &text) {
            let _ = lattice::domain::auth::authorize(&rules, &pdu, &HashMap::new());
        }
        let _ = ruma::canonical_json::redact(formatted.object, &rules.redaction, None);
    }
});
