//! Request bodies and canonical JSON: the body gate every JSON endpoint runs
//! (`check_json`: JSON at all, nesting depth) never panics, and any value that
//! parses as canonical JSON re-parses from its canonical form to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruma::CanonicalJsonValue;

fuzz_target!(|data: &[u8]| {
    let _ = lattice::api::ruma::check_json(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(canonical) = CanonicalJsonValue::try_from(value) else {
        return;
    };
    let text = canonical.to_string();
    let again: serde_json::Value = serde_json::from_str(&text).expect("canonical JSON re-parses");
    let again = CanonicalJsonValue::try_from(again).expect("canonical JSON stays canonical");
    assert_eq!(again, canonical);
    assert_eq!(again.to_string(), text, "canonical form is a fixed point");
});
