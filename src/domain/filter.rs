//! Event filters (spec: "Filtering", `POST /user/{userId}/filter`): one type for
//! every endpoint that takes one — `/sync`, `/messages`, `/context`, `/search`.
//!
//! A filter is read from ruma's `FilterDefinition` / `RoomEventFilter` (which
//! already reject malformed user and room IDs) and checked by [`Filter::new`].
//! Matching follows the spec, and Synapse where the spec is silent:
//! - a `not_*` list wins over its allow list; an absent allow list allows all,
//!   an empty one allows nothing;
//! - `types` patterns take `*` as a wildcard for any run of characters;
//! - `senders` match the event's `sender` (presence: the user it is about);
//!   account data, receipts and typing have no sender, so a `senders` list
//!   drops them, as on Synapse;
//! - `contains_url: true` keeps events whose content has a string `url`,
//!   `false` those without one;
//! - `event_fields` are dotted paths into the event (`content.body`), where
//!   `\.` is a literal dot and `\\` a literal backslash.

use ruma::api::client::filter::{
    EventFormat, FilterDefinition, LazyLoadOptions, RoomEventFilter as RumaRoomEventFilter,
    UrlFilter,
};
use serde_json::{Map, Value};

/// A filter that does not hold together (per the spec's filter schema).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidFilter(pub String);

/// A filter on events of one section: the spec's `EventFilter` and
/// `RoomEventFilter` (fields a section does not use are left at their default).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    pub unread_thread_notifications: bool,
}

/// What a filter looks at in an event, account data item, EDU or presence.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub event_type: &'a str,
    pub sender: Option<&'a str>,
    pub room_id: Option<&'a str>,
    /// The content, where `contains_url` needs it (`None`: no content).
    pub content: Option<&'a Value>,
}

impl EventFilter {
    pub fn from_room_event_filter(f: &RumaRoomEventFilter) -> Self {
        let (lazy, redundant) = match f.lazy_load_options {
            LazyLoadOptions::Enabled {
                include_redundant_members,
            } => (true, include_redundant_members),
            _ => (false, false),
        };
        Self {
            limit: f.limit.map(|l| u64::from(l) as usize),
            types: f.types.clone(),
            not_types: f.not_types.clone(),
            senders: f
                .senders
                .as_ref()
                .map(|s| s.iter().map(|u| u.to_string()).collect()),
            not_senders: f.not_senders.iter().map(|u| u.to_string()).collect(),
            rooms: f
                .rooms
                .as_ref()
                .map(|r| r.iter().map(|r| r.to_string()).collect()),
            not_rooms: f.not_rooms.iter().map(|r| r.to_string()).collect(),
            contains_url: match f.url_filter {
                Some(UrlFilter::EventsWithUrl) => Some(true),
                Some(UrlFilter::EventsWithoutUrl) => Some(false),
                None => None,
            },
            lazy_load_members: lazy,
            include_redundant_members: redundant,
            unread_thread_notifications: f.unread_thread_notifications,
        }
    }

    fn from_filter(f: &ruma::api::client::filter::Filter) -> Self {
        Self {
            limit: f.limit.map(|l| u64::from(l) as usize),
            types: f.types.clone(),
            not_types: f.not_types.clone(),
            senders: f
                .senders
                .as_ref()
                .map(|s| s.iter().map(|u| u.to_string()).collect()),
            not_senders: f.not_senders.iter().map(|u| u.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Only the `rooms` / `not_rooms` of a room filter.
    fn rooms_only(rooms: Option<Vec<String>>, not_rooms: Vec<String>) -> Self {
        Self {
            rooms,
            not_rooms,
            ..Self::default()
        }
    }

    pub fn allows_type(&self, event_type: &str) -> bool {
        let hit = |pattern: &String| matches_wildcard(pattern, event_type);
        !self.not_types.iter().any(hit) && self.types.as_ref().is_none_or(|t| t.iter().any(hit))
    }

    pub fn allows_sender(&self, sender: Option<&str>) -> bool {
        let hit = |u: &String| sender == Some(u.as_str());
        !self.not_senders.iter().any(hit) && self.senders.as_ref().is_none_or(|s| s.iter().any(hit))
    }

    pub fn allows_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|r| r.iter().any(|x| x == room_id))
    }

    /// Whether `contains_url` lets content through (`None`: no content).
    pub fn allows_content(&self, content: Option<&Value>) -> bool {
        match self.contains_url {
            None => true,
            Some(want) => want == content.is_some_and(|c| c["url"].is_string()),
        }
    }

    pub fn allows(&self, c: Candidate<'_>) -> bool {
        self.allows_type(c.event_type)
            && self.allows_sender(c.sender)
            && c.room_id.is_none_or(|r| self.allows_room(r))
            && self.allows_content(c.content)
    }

    /// Whether the filter needs the event's content to decide.
    pub fn needs_content(&self) -> bool {
        self.contains_url.is_some()
    }
}

/// `*` matches any run of characters (the spec); anything else itself.
pub fn matches_wildcard(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: an exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A whole filter definition, as `/sync` reads it.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Dotted paths to keep of each room event; `None` keeps all.
    pub event_fields: Option<Vec<Vec<String>>>,
    /// `event_format: federation`: room events as the PDUs they are.
    pub federation_format: bool,
    pub presence: EventFilter,
    pub account_data: EventFilter,
    /// The room filter's own `rooms` / `not_rooms`: which rooms sync at all.
    pub rooms: EventFilter,
    pub include_leave: bool,
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub room_account_data: EventFilter,
}

impl Filter {
    /// Reads and checks a filter definition: `event_format` must be `client`
    /// or `federation`, and `event_fields` must not name an empty path.
    pub fn new(def: &FilterDefinition) -> Result<Self, InvalidFilter> {
        let federation_format = match def.event_format {
            EventFormat::Client => false,
            EventFormat::Federation => true,
            ref other => {
                return Err(InvalidFilter(format!(
                    "event_format must be 'client' or 'federation', not '{}'",
                    other.as_str()
                )));
            }
        };
        let room = &def.room;
        Ok(Self {
            event_fields: def
                .event_fields
                .as_ref()
                .map(|f| f.iter().map(|f| split_field(f)).collect()),
            federation_format,
            presence: EventFilter::from_filter(&def.presence),
            account_data: EventFilter::from_filter(&def.account_data),
            rooms: EventFilter::rooms_only(
                room.rooms
                    .as_ref()
                    .map(|r| r.iter().map(|r| r.to_string()).collect()),
                room.not_rooms.iter().map(|r| r.to_string()).collect(),
            ),
            include_leave: room.include_leave,
            timeline: EventFilter::from_room_event_filter(&room.timeline),
            state: EventFilter::from_room_event_filter(&room.state),
            ephemeral: EventFilter::from_room_event_filter(&room.ephemeral),
            room_account_data: EventFilter::from_room_event_filter(&room.account_data),
        })
    }

    /// Shapes one room event in client form: `event_fields` keep only the
    /// paths asked for; bundled aggregations stay, as on Synapse.
    pub fn shape(&self, event: Value) -> Value {
        let Some(fields) = &self.event_fields else {
            return event;
        };
        // An empty list keeps everything (as Synapse reads it).
        if fields.is_empty() {
            return event;
        }
        let Value::Object(src) = &event else {
            return event;
        };
        let mut out = Map::new();
        for path in fields {
            copy_field(src, &mut out, path);
        }
        if let Some(relations) = event["unsigned"].get("m.relations") {
            let unsigned = out
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(u) = unsigned {
                u.insert("m.relations".to_owned(), relations.clone());
            }
        }
        Value::Object(out)
    }
}

/// Copies one path of `src` into `dst`, creating the objects on the way; a
/// path that is not there copies nothing.
fn copy_field(src: &Map<String, Value>, dst: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut from = src;
    for key in parents {
        match from.get(key) {
            Some(Value::Object(o)) => from = o,
            _ => return,
        }
    }
    let Some(value) = from.get(last) else {
        return;
    };
    let mut to = dst;
    for key in parents {
        let entry = to
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(o) = entry else {
            unreachable!("made an object above")
        };
        to = o;
    }
    to.insert(last.clone(), value.clone());
}

/// Splits an `event_fields` entry at its unescaped dots: `\.` is a dot within
/// a key, `\\` a backslash; any other backslash stands for itself.
pub fn split_field(field: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ ('\\' | '.')) => {
                    current.push(next);
                    chars.next();
                }
                _ => current.push('\\'),
            },
            '.' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn split_field_escapes() {
        let cases: &[(&str, &[&str])] = &[
            ("m", &["m"]),
            ("content.body", &["content", "body"]),
            (r"content.m\.relates_to", &["content", "m.relates_to"]),
            (r"m\\.foo", &["m\\", "foo"]),
            (r"m\\\.foo", &[r"m\.foo"]),
            (r"m\foo", &[r"m\foo"]),
            ("m.", &["m", ""]),
            (".m", &["", "m"]),
            (r"m.foo\.", &["m", "foo."]),
        ];
        for (input, want) in cases {
            assert_eq!(split_field(input), *want, "{input}");
        }
    }

    #[test]
    fn wildcards() {
        assert!(matches_wildcard("m.*", "m.room.message"));
        assert!(matches_wildcard("*", ""));
        assert!(matches_wildcard("m.*.message", "m.room.message"));
        assert!(matches_wildcard("*.message", "m.room.message"));
        assert!(matches_wildcard("m.room.message", "m.room.message"));
        assert!(!matches_wildcard("m.room", "m.room.message"));
        assert!(!matches_wildcard("m.*.topic", "m.room.message"));
        assert!(!matches_wildcard("a*a", "a"));
        assert!(matches_wildcard("a*b*c", "aXbYc"));
    }

    #[test]
    fn not_lists_win_and_empty_lists_allow_nothing() {
        let f = EventFilter {
            senders: Some(vec!["@a:x".into()]),
            not_senders: vec!["@a:x".into()],
            ..Default::default()
        };
        assert!(!f.allows_sender(Some("@a:x")));
        let none = EventFilter {
            types: Some(vec![]),
            ..Default::default()
        };
        assert!(!none.allows_type("m.room.message"));
        let senders = EventFilter {
            senders: Some(vec!["@a:x".into()]),
            ..Default::default()
        };
        assert!(!senders.allows_sender(None));
    }

    #[test]
    fn contains_url_needs_a_string() {
        let with = EventFilter {
            contains_url: Some(true),
            ..Default::default()
        };
        let without = EventFilter {
            contains_url: Some(false),
            ..Default::default()
        };
        let url = json!({ "url": "mxc://a/b" });
        let not_string = json!({ "url": 3 });
        assert!(with.allows_content(Some(&url)));
        assert!(!with.allows_content(Some(&not_string)));
        assert!(without.allows_content(Some(&not_string)));
        assert!(without.allows_content(None));
        assert!(!with.allows_content(None));
    }

    #[test]
    fn shape_keeps_nested_and_escaped_paths() {
        let filter = Filter {
            event_fields: Some(
                [
                    "type",
                    "content.body",
                    r"content.m\.relates_to.rel_type",
                    "nope.x",
                ]
                .iter()
                .map(|f| split_field(f))
                .collect(),
            ),
            ..Default::default()
        };
        let event = json!({
            "type": "m.room.message",
            "sender": "@a:x",
            "content": { "body": "hi", "msgtype": "m.text",
                         "m.relates_to": { "rel_type": "m.thread", "event_id": "$e" } },
            "unsigned": { "age": 1 },
        });
        assert_eq!(
            filter.shape(event),
            json!({
                "type": "m.room.message",
                "content": { "body": "hi", "m.relates_to": { "rel_type": "m.thread" } },
            })
        );
    }
}
