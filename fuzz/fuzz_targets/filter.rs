//! Sync filters as clients send them (`filter=` JSON or an uploaded filter):
//! reading one into the domain filter, matching events against it and shaping
//! an event with its `event_fields` never panic.
#![no_main]

use lattice::domain::filter::{Candidate, Filter};
use libfuzzer_sys::fuzz_target;
use ruma::api::client::filter::FilterDefinition;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(definition) = serde_json::from_slice::<FilterDefinition>(data) else {
        return;
    };
    let Ok(filter) = Filter::new(&definition) else {
        return;
    };
    let content = json!({ "body": "hi", "url": "mxc://a/b", "a.b": { "c": 1 } });
    let timeline = &filter.timeline;
    let mut kinds: Vec<&str> = vec![
        "m.room.message",
        "m.room.member",
        "m.presence",
        "",
        "*",
        "m.*",
    ];
    // Types named in the filter itself, wildcards included.
    kinds.extend(timeline.types.iter().flatten().map(String::as_str));
    kinds.extend(timeline.not_types.iter().map(String::as_str));
    for kind in kinds {
        for section in [
            &filter.timeline,
            &filter.state,
            &filter.presence,
            &filter.ephemeral,
        ] {
            let _ = section.allows(Candidate {
                event_type: kind,
                sender: Some("@a:x"),
                room_id: Some("!r:x"),
                content: Some(&content),
            });
        }
    }
    let _ = filter.shape(json!({
        "type": "m.room.message",
        "content": content,
        "unsigned": { "m.relations": {} },
    }));
});
