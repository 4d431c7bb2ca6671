//! PDUs: building and signing new events of a room's version, parsing stored ones,
//! and the client-facing form (spec: "Room Events", room versions' "Event format").
//!
//! Every event Lattice creates is a real PDU: content hash, signature of the server
//! key, reference-hash event ID (v3+), and for v12 the room ID derived from the
//! create event.
//!
//! Room versions 1 and 2 use event format v1 (spec rooms/v1.md "Event format"):
//! the event carries its own `event_id` (`$opaque:origin`), and `prev_events` /
//! `auth_events` are `[event_id, {"sha256": reference hash}]` pairs.

use std::collections::HashMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
    room_version_rules::{RoomIdFormatVersion, RoomVersionRules},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash},
};
use serde_json::{Value, value::RawValue as RawJsonValue};
use sha2::{Digest, Sha256};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// The keys the spec limits to 255 bytes each (client-server API, "Size limits";
/// the identifier limits of the appendices for `sender`, `room_id`, `event_id`).
const LIMITED_KEYS: [&str; 5] = ["type", "state_key", "sender", "room_id", "event_id"];
pub const MAX_KEY_BYTES: usize = 255;

/// The per-key size limits of a PDU: `type`, `state_key`, `sender`, `room_id`
/// and `event_id` at most 255 bytes each (when present; a non-string is the
/// format checks' business). Returns the first key over its limit.
pub fn check_key_sizes(object: &CanonicalJsonObject) -> Result<(), PduError> {
    for key in LIMITED_KEYS {
        if let Some(CanonicalJsonValue::String(value)) = object.get(key)
            && value.len() > MAX_KEY_BYTES
        {
            return Err(PduError::KeyTooLarge(key));
        }
    }
    Ok(())
}

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
    /// The top-level `redacts` (see `redaction::target` for the room version's).
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
    /// One of the keys limited to [`MAX_KEY_BYTES`] is longer.
    #[error("event's `{0}` is longer than 255 bytes")]
    KeyTooLarge(&'static str),
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
        // Both event formats: IDs (v3+) or `[id, hashes]` pairs (v1); which
        // one a room version allows is `check_reference_format`'s business.
        let ids = |name: &str| -> Result<Vec<OwnedEventId>, PduError> {
            let list = field(name)
                .and_then(Value::as_array)
                .ok_or_else(|| PduError::Malformed(format!("missing `{name}`")))?;
            list.iter()
                .map(|v| {
                    reference_id(v)
                        .and_then(|s| EventId::parse(s).ok())
                        .ok_or_else(|| PduError::Malformed(format!("invalid id in `{name}`")))
                })
                .collect()
        };
        let content = field("content")
            .filter(|c| c.is_object())
            .ok_or_else(|| PduError::Malformed("missing `content`".into()))?;
        // The top-level `redacts` (room versions up to 10); from v11 on it is in
        // `content`: `redaction::target` reads the one the room version uses.
        let redacts = field("redacts")
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

/// Whether the room version uses event format v1 (room versions 1 and 2): the
/// PDU carries its `event_id`, and references are `[id, hashes]` pairs.
pub fn is_v1_format(rules: &RoomVersionRules) -> bool {
    rules.event_format.require_event_id
}

/// The event ID in one entry of `prev_events` / `auth_events`: the string itself
/// (event format v2+) or the first element of an `[id, hashes]` pair (v1).
pub fn reference_id(entry: &Value) -> Option<&str> {
    match entry {
        Value::String(id) => Some(id),
        Value::Array(pair) => pair.first().and_then(Value::as_str),
        _ => None,
    }
}

/// The event IDs a raw PDU's `prev_events` or `auth_events` name, in either
/// event format (unparseable entries are skipped).
pub fn referenced_ids(pdu: &Value, key: &str) -> Vec<String> {
    pdu.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(reference_id)
        .map(str::to_owned)
        .collect()
}

/// The event format's shape of `prev_events` and `auth_events`: arrays of
/// event IDs (v2+), or of `[event_id, {"sha256": hash}]` pairs (v1). The
/// hashes are not checked (nor used), as Synapse does not: old servers and
/// SyTest send `[event_id, {}]`.
pub fn check_reference_format(
    rules: &RoomVersionRules,
    object: &CanonicalJsonObject,
) -> Result<(), String> {
    for key in ["prev_events", "auth_events"] {
        let Some(CanonicalJsonValue::Array(list)) = object.get(key) else {
            return Err(format!("missing or invalid `{key}`"));
        };
        for entry in list {
            let ok = match entry {
                CanonicalJsonValue::String(id) if !is_v1_format(rules) => {
                    EventId::parse(id).is_ok()
                }
                CanonicalJsonValue::Array(pair) if is_v1_format(rules) => matches!(
                    pair.as_slice(),
                    [CanonicalJsonValue::String(id), CanonicalJsonValue::Object(_)]
                        if EventId::parse(id).is_ok_and(|id| id.server_name().is_some())
                ),
                _ => false,
            };
            if !ok {
                return Err(format!("invalid entry in `{key}` for this room version"));
            }
        }
    }
    Ok(())
}

/// The event ID of a received PDU: in event format v1 the `event_id` it
/// carries, which must name a server (`$opaque:server`; that server's signature
/// is then required, spec "Validating hashes and signatures on received
/// events"); from v3 on its reference hash (any `event_id` key is ignored and
/// must be removed by the caller before storing).
pub fn received_event_id(
    rules: &RoomVersionRules,
    object: &CanonicalJsonObject,
) -> Result<OwnedEventId, String> {
    if is_v1_format(rules) {
        let Some(CanonicalJsonValue::String(id)) = object.get("event_id") else {
            return Err("missing `event_id`".into());
        };
        let id = EventId::parse(id).map_err(|e| format!("invalid `event_id`: {e}"))?;
        if id.server_name().is_none() {
            return Err("`event_id` names no server".into());
        }
        return Ok(id);
    }
    let mut object = object.clone();
    object.remove("event_id");
    let hash = reference_hash(&object, rules).map_err(|e| format!("reference hash: {e}"))?;
    EventId::parse(format!("${hash}")).map_err(|e| e.to_string())
}

/// An event ID for a new event-format-v1 event of ours: `$` + 24 URL-safe
/// characters of the sha256 of the event so far + `:server_name`. Deriving it
/// keeps building pure; it is as unique as the reference hashes of later
/// versions (the event's contents, sender, time and position).
pub fn local_v1_event_id(event: &Value, server_name: &str) -> String {
    let digest = Sha256::digest(event.to_string().as_bytes());
    let opaque = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest);
    format!("${}:{server_name}", &opaque[..24])
}

/// The `[event_id, {"sha256": hash}]` pair that references a stored v1-format
/// event, its hash computed from its JSON.
pub fn reference_pair(
    rules: &RoomVersionRules,
    event_id: &EventId,
    json: &str,
) -> Result<(OwnedEventId, String), PduError> {
    let object = match serde_json::from_str::<CanonicalJsonValue>(json) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => {
            return Err(PduError::Malformed(format!(
                "stored {event_id} is not an object"
            )));
        }
    };
    let hash = reference_hash(&object, rules).map_err(|e| PduError::Malformed(e.to_string()))?;
    Ok((event_id.to_owned(), hash))
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
    /// The timestamp an application service asked for (`ts`, "timestamp
    /// massaging"); `None`: now.
    pub origin_server_ts: Option<MilliSecondsSinceUnixEpoch>,
}

/// The graph position of a new event: chosen by the service under the room lock.
pub struct Position<'a> {
    /// `None` only for the create event of a v12 room, whose ID derives the room's.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: &'a [OwnedEventId],
    /// Event format v1: the reference hash of every prev and auth event (ignored
    /// in later formats, where the event ID is the hash).
    pub reference_hashes: &'a HashMap<OwnedEventId, String>,
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
/// and computes the reference-hash event ID (v3+) or, in event format v1, gives
/// the event an ID of `server_name` whose opaque part derives from the event's
/// contents (unique as the reference hashes of later versions are).
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
    let v1 = is_v1_format(rules);
    let references = |ids: &[OwnedEventId]| -> Result<Value, PduError> {
        if !v1 {
            return Ok(serde_json::json!(ids));
        }
        ids.iter()
            .map(|id| {
                let hash = position
                    .reference_hashes
                    .get(id)
                    .ok_or_else(|| PduError::Malformed(format!("no reference hash for {id}")))?;
                Ok(serde_json::json!([id, { "sha256": hash }]))
            })
            .collect::<Result<Vec<Value>, PduError>>()
            .map(Value::Array)
    };
    let mut value = serde_json::json!({
        "type": event.kind,
        "content": event.content,
        "sender": sender,
        "origin_server_ts": origin_server_ts,
        "depth": position.depth,
        "prev_events": references(position.prev_events)?,
        "auth_events": references(position.auth_events)?,
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
    if v1 {
        value["event_id"] = local_v1_event_id(&value, server_name).into();
    }
    let mut json = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(obj)) => obj,
        Ok(_) => return Err(PduError::Malformed("event is not an object".into())),
        Err(e) => return Err(PduError::Malformed(e.to_string())),
    };
    check_key_sizes(&json)?;
    hash_and_sign_event(server_name, key, &mut json, &rules.redaction).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        other => PduError::Malformed(other.to_string()),
    })?;
    if canonical_len(&json) > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let event_id = received_event_id(rules, &json).map_err(PduError::Malformed)?;
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

/// A stored PDU's JSON, redacted by the room version's rules when `redacted`.
pub fn stored_pdu(
    json: &str,
    rules: &RoomVersionRules,
    redacted: bool,
) -> serde_json::Map<String, Value> {
    let pdu: serde_json::Map<String, Value> = serde_json::from_str(json).unwrap_or_default();
    if redacted
        && let Ok(CanonicalJsonValue::Object(obj)) =
            CanonicalJsonValue::try_from(Value::Object(pdu.clone()))
        && let Ok(redacted) = ruma::canonical_json::redact(obj, &rules.redaction, None)
        && let Ok(Value::Object(map)) = serde_json::to_value(redacted)
    {
        return map;
    }
    pdu
}

/// The fields of a PDU that its client form keeps. Deserializing only these
/// skips the signatures, hashes and event references without building them.
#[derive(serde::Deserialize)]
struct ClientFields {
    #[serde(rename = "type")]
    kind: Option<Value>,
    content: Option<Value>,
    sender: Option<Value>,
    origin_server_ts: Option<Value>,
    state_key: Option<Value>,
    redacts: Option<Value>,
}

/// A stored PDU's `content`, redacted by the room version's rules when
/// `redacted` (`{}` when it has none).
pub fn stored_content(json: &str, rules: &RoomVersionRules, redacted: bool) -> Value {
    if redacted {
        return stored_pdu(json, rules, true)
            .remove("content")
            .unwrap_or_else(|| Value::Object(Default::default()));
    }
    #[derive(serde::Deserialize)]
    struct Content {
        content: Option<Value>,
    }
    serde_json::from_str::<Content>(json)
        .ok()
        .and_then(|c| c.content)
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// The client-server form of a stored PDU (spec: "ClientEvent"), redacted when
/// `redacted_because` is set (a redaction took effect) or `pruned` is (the
/// sender was erased: no redaction event to name). A redacted event names its
/// redaction in `unsigned.redacted_by` and carries it in `redacted_because`.
pub fn to_client_event(
    event_id: &str,
    room_id: &str,
    json: &str,
    rules: &RoomVersionRules,
    pruned: bool,
    redacted_because: Option<&Value>,
    now: MilliSecondsSinceUnixEpoch,
) -> Value {
    let fields = if pruned || redacted_because.is_some() {
        serde_json::from_value(Value::Object(stored_pdu(json, rules, true)))
    } else {
        serde_json::from_str::<ClientFields>(json)
    };
    let fields = fields.unwrap_or(ClientFields {
        kind: None,
        content: None,
        sender: None,
        origin_server_ts: None,
        state_key: None,
        redacts: None,
    });
    let ts = fields
        .origin_server_ts
        .as_ref()
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut out = serde_json::Map::new();
    for (key, value) in [
        ("type", fields.kind),
        ("content", fields.content),
        ("sender", fields.sender),
        ("origin_server_ts", fields.origin_server_ts),
        ("state_key", fields.state_key),
        ("redacts", fields.redacts),
    ] {
        if let Some(v) = value {
            out.insert(key.to_owned(), v);
        }
    }
    out.insert("event_id".into(), event_id.into());
    out.insert("room_id".into(), room_id.into());
    let mut unsigned = serde_json::Map::new();
    unsigned.insert("age".into(), (u64::from(now.0).saturating_sub(ts)).into());
    if let Some(because) = redacted_because {
        // Synapse names the redaction in `redacted_by` too; clients and SyTest
        // read it.
        if let Some(id) = because.get("event_id") {
            unsigned.insert("redacted_by".into(), id.clone());
        }
        unsigned.insert("redacted_because".into(), because.clone());
    }
    out.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::{
        CanonicalJsonValue, RoomVersionId,
        room_version_rules::RoomVersionRules,
        serde::Base64,
        signatures::{Ed25519KeyPair, hash_and_sign_event, sign_json, verify_event},
    };
    use serde_json::json;

    use super::*;

    /// The spec's test key (appendices, "Cryptographic Test Vectors").
    fn spec_key() -> Ed25519KeyPair {
        use base64::{Engine, engine::GeneralPurpose, engine::general_purpose::NO_PAD};
        // The spec's seed has non-zero trailing bits; decode leniently.
        let engine = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            NO_PAD.with_decode_allow_trailing_bits(true),
        );
        let seed = engine
            .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap();
        // PKCS#8 v1 wrapping of an ed25519 seed.
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&seed);
        Ed25519KeyPair::from_der(&der, "1".into()).unwrap()
    }

    fn object(value: Value) -> CanonicalJsonObject {
        match CanonicalJsonValue::try_from(value).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn json_signing_matches_the_spec_vectors() {
        let key = spec_key();
        let mut empty = object(json!({}));
        sign_json("domain", &key, &mut empty).unwrap();
        assert_eq!(
            serde_json::to_value(&empty).unwrap()["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        let mut data = object(json!({ "one": 1, "two": "Two" }));
        sign_json("domain", &key, &mut data).unwrap();
        assert_eq!(
            serde_json::to_value(&data).unwrap()["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn event_signing_matches_the_spec_vector() {
        let mut event = object(json!({
            "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
            "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
            "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
            "unsigned": { "age_ts": 1000000 }
        }));
        hash_and_sign_event(
            "domain",
            &spec_key(),
            &mut event,
            &RoomVersionRules::V1.redaction,
        )
        .unwrap();
        let signed = serde_json::to_value(&event).unwrap();
        assert_eq!(
            signed["hashes"]["sha256"],
            "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        );
        assert_eq!(
            signed["signatures"]["domain"]["ed25519:1"],
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        );
    }

    fn built(version: &str, room_id: Option<&RoomId>, kind: &str, content: Value) -> Built {
        let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
        let event = NewEvent {
            origin_server_ts: None,
            kind: kind.into(),
            content,
            state_key: Some(String::new()),
            redacts: None,
        };
        build(
            &rules,
            &event,
            &UserId::parse("@a:domain").unwrap(),
            &Position {
                room_id,
                prev_events: &[],
                auth_events: &[],
                reference_hashes: &Default::default(),
                depth: 1,
            },
            MilliSecondsSinceUnixEpoch(1_000_000u32.into()),
            "domain",
            &spec_key(),
        )
        .unwrap()
    }

    #[test]
    fn event_ids_are_reference_hashes_and_signatures_verify() {
        for version in ["6", "10", "11", "12"] {
            let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
            let room_id = RoomId::parse("!r:domain").unwrap();
            let room = (version != "12").then_some(&*room_id);
            let b = built(
                version,
                room,
                "m.room.create",
                json!({ "room_version": version }),
            );
            // `$` + 43 characters of unpadded URL-safe base64 (32 bytes of sha256).
            let id = b.event_id.as_str();
            assert_eq!(id.len(), 44, "{id}");
            assert!(
                id[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{id}"
            );
            assert_eq!(reference_hash(&b.json, &rules).unwrap(), id[1..]);
            // The ID is not part of the PDU in v3+.
            assert!(!b.json.contains_key("event_id"));

            let mut keys = BTreeMap::new();
            keys.insert(
                "ed25519:1".to_owned(),
                Base64::new(spec_key().public_key().to_vec()),
            );
            let mut map = BTreeMap::new();
            map.insert("domain".to_owned(), keys);
            // v12 create events carry no room_id; verify against the room's version.
            verify_event(&map, &b.json, &rules).unwrap();
        }
    }

    /// Event format v1 (room versions 1 and 2): the event carries an ID of our
    /// server, references are `[id, {"sha256": reference hash}]` pairs, and the
    /// signature covers the ID.
    #[test]
    fn v1_format_events_carry_their_id_and_reference_pairs() {
        for version in ["1", "2"] {
            let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
            let room_id = RoomId::parse("!r:domain").unwrap();
            let create = built(
                version,
                Some(&room_id),
                "m.room.create",
                json!({ "creator": "@a:domain" }),
            );
            assert_eq!(
                create.event_id.server_name().map(|s| s.as_str()),
                Some("domain")
            );
            assert_eq!(
                create.json.get("event_id"),
                Some(&CanonicalJsonValue::String(create.event_id.to_string()))
            );
            let create_hash = reference_hash(&create.json, &rules).unwrap();
            let mut hashes = HashMap::new();
            hashes.insert(create.event_id.clone(), create_hash.clone());
            let ids = [create.event_id.clone()];
            let event = NewEvent {
                origin_server_ts: None,
                kind: "m.room.member".into(),
                content: json!({ "membership": "join" }),
                state_key: Some("@a:domain".into()),
                redacts: None,
            };
            let join = build(
                &rules,
                &event,
                &UserId::parse("@a:domain").unwrap(),
                &Position {
                    room_id: Some(&room_id),
                    prev_events: &ids,
                    auth_events: &ids,
                    reference_hashes: &hashes,
                    depth: 2,
                },
                MilliSecondsSinceUnixEpoch(1_000_001u32.into()),
                "domain",
                &spec_key(),
            )
            .unwrap();
            let value = serde_json::to_value(&join.json).unwrap();
            assert_eq!(
                value["prev_events"],
                json!([[create.event_id, { "sha256": create_hash }]])
            );
            assert_eq!(join.pdu.prev_events, vec![create.event_id.clone()]);
            assert_eq!(join.pdu.auth_events, vec![create.event_id.clone()]);
            check_reference_format(&rules, &join.json).unwrap();
            // Received: the carried ID is the ID.
            assert_eq!(
                received_event_id(&rules, &join.json).unwrap(),
                join.event_id
            );
            // A later format's shape is refused in a v1 room, and vice versa.
            let mut wrong = join.json.clone();
            wrong.insert(
                "prev_events".into(),
                CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(
                    create.event_id.to_string(),
                )]),
            );
            assert!(check_reference_format(&rules, &wrong).is_err());
            assert!(check_reference_format(&RoomVersionRules::V10, &join.json).is_err());
            // An ID that names no server is refused.
            let mut nameless = join.json.clone();
            nameless.insert("event_id".into(), CanonicalJsonValue::String("$abc".into()));
            assert!(received_event_id(&rules, &nameless).is_err());

            let mut keys = BTreeMap::new();
            keys.insert(
                "ed25519:1".to_owned(),
                Base64::new(spec_key().public_key().to_vec()),
            );
            let mut map = BTreeMap::new();
            map.insert("domain".to_owned(), keys.clone());
            verify_event(&map, &join.json, &rules).unwrap();
            // Claiming another server's ID needs that server's signature.
            let mut forged = join.json.clone();
            forged.insert(
                "event_id".into(),
                CanonicalJsonValue::String("$forged:other".into()),
            );
            assert!(verify_event(&map, &forged, &rules).is_err());
        }
    }

    #[test]
    fn v12_room_ids_derive_from_the_create_event() {
        let b = built("12", None, "m.room.create", json!({ "room_version": "12" }));
        assert!(!b.json.contains_key("room_id"));
        assert_eq!(
            b.room_id.as_str(),
            format!("!{}", &b.event_id.as_str()[1..])
        );
        // Changing the content changes the room ID.
        let other = built(
            "12",
            None,
            "m.room.create",
            json!({ "room_version": "12", "x": 1 }),
        );
        assert_ne!(other.room_id, b.room_id);
    }

    #[test]
    fn oversized_events_are_refused() {
        let rules = RoomVersionId::V12.rules().unwrap();
        let room_id = RoomId::parse("!r:domain").unwrap();
        let event = NewEvent {
            origin_server_ts: None,
            kind: "m.room.message".into(),
            content: json!({ "body": "x".repeat(MAX_PDU_BYTES) }),
            state_key: None,
            redacts: None,
        };
        let result = build(
            &rules,
            &event,
            &UserId::parse("@a:domain").unwrap(),
            &Position {
                room_id: Some(&room_id),
                prev_events: &[],
                auth_events: &[],
                reference_hashes: &Default::default(),
                depth: 1,
            },
            MilliSecondsSinceUnixEpoch::now(),
            "domain",
            &spec_key(),
        );
        assert!(matches!(result, Err(PduError::TooLarge)));
    }

    #[test]
    fn keys_over_255_bytes_are_refused() {
        let rules = RoomVersionId::V12.rules().unwrap();
        let room_id = RoomId::parse("!r:domain").unwrap();
        let build_with = |kind: String, state_key: Option<String>| {
            let event = NewEvent {
                origin_server_ts: None,
                kind: kind.as_str().into(),
                content: json!({}),
                state_key,
                redacts: None,
            };
            build(
                &rules,
                &event,
                &UserId::parse("@a:domain").unwrap(),
                &Position {
                    room_id: Some(&room_id),
                    prev_events: &[],
                    auth_events: &[],
                    reference_hashes: &Default::default(),
                    depth: 1,
                },
                MilliSecondsSinceUnixEpoch::now(),
                "domain",
                &spec_key(),
            )
        };
        assert!(matches!(
            build_with("t".repeat(256), None),
            Err(PduError::KeyTooLarge("type"))
        ));
        assert!(matches!(
            build_with("m.custom".into(), Some("k".repeat(256))),
            Err(PduError::KeyTooLarge("state_key"))
        ));
        assert!(build_with("t".repeat(255), Some("k".repeat(255))).is_ok());
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(matches!(
            build_with("é".repeat(128), None),
            Err(PduError::KeyTooLarge("type"))
        ));
    }

    /// The client form keeps the ClientEvent fields and drops the federation
    /// ones (spec: "Room event format"); `age` counts from `origin_server_ts`.
    #[test]
    fn client_event_keeps_only_client_fields() {
        let rules = RoomVersionId::V10.rules().unwrap();
        let pdu = json!({
            "type": "m.room.redaction", "sender": "@a:domain", "room_id": "!r:domain",
            "origin_server_ts": 1000, "content": { "reason": "r" }, "redacts": "$x",
            "depth": 3, "prev_events": ["$p"], "auth_events": ["$a"],
            "hashes": { "sha256": "x" }, "signatures": { "domain": {} }, "unsigned": { "age_ts": 1 }
        });
        let now = MilliSecondsSinceUnixEpoch(ruma::UInt::from(1500u32));
        let client = to_client_event(
            "$e",
            "!r:domain",
            &pdu.to_string(),
            &rules,
            false,
            None,
            now,
        );
        assert_eq!(
            client,
            json!({
                "type": "m.room.redaction", "sender": "@a:domain", "room_id": "!r:domain",
                "event_id": "$e", "origin_server_ts": 1000, "content": { "reason": "r" },
                "redacts": "$x", "unsigned": { "age": 500 }
            })
        );
        let state = json!({ "type": "m.room.topic", "state_key": "", "sender": "@a:domain",
            "origin_server_ts": 1, "content": { "topic": "t" } });
        let client = to_client_event(
            "$s",
            "!r:domain",
            &state.to_string(),
            &rules,
            false,
            None,
            now,
        );
        assert_eq!(client["state_key"], json!(""));
        assert_eq!(
            stored_content(&state.to_string(), &rules, false),
            json!({ "topic": "t" })
        );
        assert_eq!(stored_content(&state.to_string(), &rules, true), json!({}));
        assert_eq!(stored_content("{}", &rules, false), json!({}));
    }

    /// Redaction per room version (spec: each version's "Redactions").
    #[test]
    fn redaction_keeps_what_each_version_keeps() {
        let redact = |version: &str, kind: &str, content: Value| {
            let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
            let pdu = json!({
                "type": kind, "sender": "@a:domain", "room_id": "!r:domain", "state_key": "",
                "origin_server_ts": 1, "content": content, "depth": 1, "prev_events": [], "auth_events": [],
                "hashes": { "sha256": "x" }, "signatures": {}
            });
            let because = json!({ "event_id": "$r" });
            to_client_event(
                "$e",
                "!r:domain",
                &pdu.to_string(),
                &rules,
                false,
                Some(&because),
                MilliSecondsSinceUnixEpoch::now(),
            )["content"]
                .clone()
        };
        let create = json!({ "creator": "@a:domain", "room_version": "6", "m.federate": false });
        // v1-v10 keep only `creator` of a create event; v11+ keep all of it.
        assert_eq!(
            redact("10", "m.room.create", create.clone()),
            json!({ "creator": "@a:domain" })
        );
        assert_eq!(redact("11", "m.room.create", create.clone()), create);
        // `invite` in power levels survives from v11.
        let power = json!({ "invite": 50, "ban": 50, "users": {} , "events_default": 0 });
        assert!(
            redact("10", "m.room.power_levels", power.clone())
                .get("invite")
                .is_none()
        );
        assert_eq!(
            redact("11", "m.room.power_levels", power.clone())["invite"],
            50
        );
        // Join rules keep `allow` from v8.
        let rules = json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": "!o:x" }] });
        assert!(
            redact("7", "m.room.join_rules", rules.clone())
                .get("allow")
                .is_none()
        );
        assert_eq!(
            redact("8", "m.room.join_rules", rules.clone())["allow"],
            rules["allow"]
        );
        // Messages lose their whole content.
        assert_eq!(
            redact("12", "m.room.message", json!({ "body": "secret" })),
            json!({})
        );
    }
}
