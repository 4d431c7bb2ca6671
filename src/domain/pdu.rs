//! PDUs: building and signing new events of a room's version, parsing stored ones,
//! and the client-facing form (spec: "Room Events", room versions' "Event format").
//!
//! Every event Lattice creates is a real PDU: content hash, signature of the server
//! key, reference-hash event ID (v3+), and for v12 the room ID derived from the
//! create event.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
    room_version_rules::{RoomIdFormatVersion, RoomVersionRules},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash},
};
use serde_json::{Value, value::RawValue as RawJsonValue};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A parsed PDU, as the auth rules and state resolution see it.
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: i64,
    pub rejected: bool,
    /// Whether the JSON carries `room_id` (v12 create events do not).
    pub has_room_id: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("event is larger than 65536 bytes")]
    TooLarge,
    #[error("malformed event: {0}")]
    Malformed(String),
}

impl Pdu {
    /// Parses a stored or received PDU. `event_id` is given because v3+ PDUs do not
    /// carry it. For v12 create events the room ID is derived from the event ID.
    pub fn from_json(event_id: &EventId, json: &str) -> Result<Self, PduError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| PduError::Malformed(e.to_string()))?;
        let field = |name: &str| value.get(name);
        let str_field = |name: &str| -> Result<&str, PduError> {
            field(name)
                .and_then(Value::as_str)
                .ok_or_else(|| PduError::Malformed(format!("missing or invalid `{name}`")))
        };
        let kind: TimelineEventType = str_field("type")?.into();
        let has_room_id = field("room_id").is_some();
        let room_id = match field("room_id").and_then(Value::as_str) {
            Some(r) => RoomId::parse(r).map_err(|e| PduError::Malformed(e.to_string()))?,
            None if kind == TimelineEventType::RoomCreate => {
                room_id_from_create_event_id(event_id)?
            }
            None => return Err(PduError::Malformed("missing `room_id`".into())),
        };
        let ids = |name: &str| -> Result<Vec<OwnedEventId>, PduError> {
            let list = field(name)
                .and_then(Value::as_array)
                .ok_or_else(|| PduError::Malformed(format!("missing `{name}`")))?;
            list.iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| EventId::parse(s).ok())
                        .ok_or_else(|| PduError::Malformed(format!("invalid id in `{name}`")))
                })
                .collect()
        };
        let content = field("content")
            .filter(|c| c.is_object())
            .ok_or_else(|| PduError::Malformed("missing `content`".into()))?;
        let redacts = field("redacts")
            .or_else(|| content.get("redacts"))
            .and_then(Value::as_str)
            .and_then(|s| EventId::parse(s).ok());
        Ok(Self {
            event_id: event_id.to_owned(),
            room_id,
            sender: UserId::parse(str_field("sender")?)
                .map_err(|e| PduError::Malformed(e.to_string()))?,
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                field("origin_server_ts")
                    .and_then(Value::as_u64)
                    .and_then(|t| t.try_into().ok())
                    .ok_or_else(|| PduError::Malformed("invalid `origin_server_ts`".into()))?,
            ),
            content: serde_json::value::to_raw_value(content)
                .map_err(|e| PduError::Malformed(e.to_string()))?,
            state_key: field("state_key")
                .and_then(Value::as_str)
                .map(str::to_owned),
            prev_events: ids("prev_events")?,
            auth_events: ids("auth_events")?,
            redacts,
            depth: field("depth").and_then(Value::as_i64).unwrap_or(0),
            kind,
            rejected: false,
            has_room_id,
        })
    }
}

/// v12: the room ID is `!` + the create event's reference hash (its event ID minus `$`).
pub fn room_id_from_create_event_id(event_id: &EventId) -> Result<OwnedRoomId, PduError> {
    RoomId::parse(format!("!{}", &event_id.as_str()[1..]))
        .map_err(|e| PduError::Malformed(e.to_string()))
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// What a client (or the server itself) asks to send.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub content: Value,
    pub state_key: Option<String>,
    /// For `m.room.redaction`: the event it redacts.
    pub redacts: Option<OwnedEventId>,
}

/// The graph position of a new event: chosen by the service under the room lock.
pub struct Position<'a> {
    /// `None` only for the create event of a v12 room, whose ID derives the room's.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: &'a [OwnedEventId],
    pub depth: i64,
}

/// A signed, hashed PDU ready to persist.
pub struct Built {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub json: CanonicalJsonObject,
    pub pdu: Pdu,
}

/// Builds a PDU of the room's version: hashes, signs with `key` as `server_name`,
/// and computes the reference-hash event ID.
#[allow(clippy::too_many_arguments)]
pub fn build(
    rules: &RoomVersionRules,
    event: &NewEvent,
    sender: &UserId,
    position: &Position<'_>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    server_name: &str,
    key: &Ed25519KeyPair,
) -> Result<Built, PduError> {
    let mut value = serde_json::json!({
        "type": event.kind,
        "content": event.content,
        "sender": sender,
        "origin_server_ts": origin_server_ts,
        "depth": position.depth,
        "prev_events": position.prev_events,
        "auth_events": position.auth_events,
    });
    if let Some(room_id) = position.room_id {
        value["room_id"] = room_id.as_str().into();
    }
    if let Some(state_key) = &event.state_key {
        value["state_key"] = state_key.as_str().into();
    }
    if let Some(redacts) = &event.redacts {
        // v11 moved `redacts` into content; both places are accepted by servers of
        // all versions, and the top-level key keeps older versions' rules happy.
        if rules.redaction.content_field_redacts {
            value["content"]["redacts"] = redacts.as_str().into();
        }
        value["redacts"] = redacts.as_str().into();
    }
    let mut json = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(obj)) => obj,
        Ok(_) => return Err(PduError::Malformed("event is not an object".into())),
        Err(e) => return Err(PduError::Malformed(e.to_string())),
    };
    hash_and_sign_event(server_name, key, &mut json, &rules.redaction).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        other => PduError::Malformed(other.to_string()),
    })?;
    if canonical_len(&json) > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let hash = reference_hash(&json, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        other => PduError::Malformed(other.to_string()),
    })?;
    let event_id =
        EventId::parse(format!("${hash}")).map_err(|e| PduError::Malformed(e.to_string()))?;
    let room_id = match (position.room_id, rules.room_id_format) {
        (Some(room_id), _) => room_id.to_owned(),
        (None, RoomIdFormatVersion::V2) => room_id_from_create_event_id(&event_id)?,
        (None, _) => return Err(PduError::Malformed("room_id is required".into())),
    };
    let text = serde_json::to_string(&json).map_err(|e| PduError::Malformed(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &text)?;
    Ok(Built {
        event_id,
        room_id,
        json,
        pdu,
    })
}

pub fn canonical_len(json: &CanonicalJsonObject) -> usize {
    serde_json::to_vec(json)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// The client-server form of a stored PDU (spec: "ClientEvent"), redacted when
/// `redacted_because` is set.
pub fn to_client_event(
    event_id: &EventId,
    room_id: &RoomId,
    json: &str,
    rules: &RoomVersionRules,
    redacted_because: Option<&Value>,
    now: MilliSecondsSinceUnixEpoch,
) -> Value {
    let mut pdu: serde_json::Map<String, Value> = serde_json::from_str(json).unwrap_or_default();
    if let Some(because) = redacted_because {
        if let Ok(CanonicalJsonValue::Object(obj)) =
            CanonicalJsonValue::try_from(Value::Object(pdu.clone()))
            && let Ok(redacted) = ruma::canonical_json::redact(obj, &rules.redaction, None)
            && let Ok(Value::Object(map)) = serde_json::to_value(redacted)
        {
            pdu = map;
        }
        let _ = because;
    }
    let ts = pdu
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut out = serde_json::Map::new();
    for key in ["type", "content", "sender", "origin_server_ts", "state_key"] {
        if let Some(v) = pdu.remove(key) {
            out.insert(key.to_owned(), v);
        }
    }
    out.insert("event_id".into(), event_id.as_str().into());
    out.insert("room_id".into(), room_id.as_str().into());
    if let Some(redacts) = pdu.remove("redacts") {
        out.insert("redacts".into(), redacts);
    }
    let mut unsigned = serde_json::Map::new();
    unsigned.insert("age".into(), (u64::from(now.0).saturating_sub(ts)).into());
    if let Some(because) = redacted_because {
        unsigned.insert("redacted_because".into(), because.clone());
    }
    out.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(out)
}
