//! The remote event path (spec "Checks performed on receipt of a PDU"), in order:
//! format → signatures → hashes (a mismatch keeps the redacted form) → auth
//! against the event's auth events → auth against the state before the event →
//! soft-fail against the current state. Missing prev events are asked of the
//! origin with `/get_missing_events` (for an event so fetched whose prev events
//! are still unknown, the state after them with `/state_ids`: [`super::gap`]),
//! missing auth events with `/event_auth`.
//! Forks are resolved with state resolution v2 / v2.1 (v1 in room version 1). Accepted events go
//! through the same [`write_event`] as local ones.

use std::collections::{HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomId,
    RoomVersionId, ServerName,
    api::federation::{authorization::get_event_authorization, event::get_missing_events},
    room_version_rules::RoomVersionRules,
    signatures::{
        PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event,
    },
};
use serde_json::Value;

use crate::{
    domain::{
        auth,
        pdu::{self, Built, MAX_PDU_BYTES, Pdu, canonical_len},
        state_res,
    },
    error::{Error, Result},
    service::AppState,
    service::event::{self, Placement, RoomCtx},
    service::server_keys,
    storage::{events, federation as fed_store, now_ms, rooms, state},
};

/// What became of a received PDU that was not rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Stored, but kept out of the timeline and current state (spec step 6).
    SoftFailed,
    AlreadyKnown,
}

/// A PDU that passed the format, signature and hash checks.
pub struct Checked {
    pub event_id: OwnedEventId,
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
}

/// A PDU whose format is right: canonical JSON, within the size limit, with
/// its event ID computed and the servers whose signatures it needs listed.
pub struct Formatted {
    pub object: CanonicalJsonObject,
    pub event_id: OwnedEventId,
    pub servers: Vec<OwnedServerName>,
    /// `origin_server_ts` (0 when missing): which signing keys were valid.
    pub ts: i64,
}

/// Step 1, pure: the PDU's format and size, its event ID (reference hash), and
/// the servers that must have signed it. Anything a remote server sends passes
/// through here first (fuzzed by `fuzz/fuzz_targets/pdu.rs`).
pub fn check_format(rules: &RoomVersionRules, value: &Value) -> Result<Formatted, String> {
    check_format_owned(rules, value.clone())
}

/// [`check_format`] of a value the caller is done with (no copy is made).
pub fn check_format_owned(rules: &RoomVersionRules, value: Value) -> Result<Formatted, String> {
    let mut object = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err("PDU is not an object".into()),
        Err(e) => return Err(format!("PDU is not canonical JSON: {e}")),
    };
    // The spec's per-key limits (255 bytes: type, state_key, sender, room_id,
    // event_id), checked before the event ID a server may add is dropped.
    crate::domain::pdu::check_key_sizes(&object).map_err(|e| e.to_string())?;
    // v3+ PDUs carry no event ID; some servers add one anyway. Event format
    // v1 (room versions 1 and 2) carries it, signed and hashed with the rest.
    if !pdu::is_v1_format(rules) {
        object.remove("event_id");
    }
    if canonical_len(&object) > MAX_PDU_BYTES {
        return Err("PDU is larger than 65536 bytes".into());
    }
    pdu::check_reference_format(rules, &object)?;
    // v1: the event ID names its server, whose signature `verify_event` then
    // requires (a forged ID of another server fails there); v3+: the hash.
    let event_id = pdu::received_event_id(rules, &object)?;
    let servers = required_server_signatures_to_verify_event(&object, &rules.signatures)
        .map_err(|e| format!("signatures: {e}"))?
        .into_iter()
        .collect();
    let ts = object
        .get("origin_server_ts")
        .and_then(|t| match t {
            CanonicalJsonValue::Integer(i) => Some(i64::from(*i)),
            _ => None,
        })
        .unwrap_or(0);
    Ok(Formatted {
        object,
        event_id,
        servers,
        ts,
    })
}

/// Why a received PDU failed [`check_pdu`].
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// Not a PDU of the room version (not canonical JSON, too large, bad
    /// references or event ID, not an event once redacted).
    #[error("{0}")]
    Format(String),
    /// A server that must have signed it did not, or its signature does not
    /// verify (or its keys could not be had).
    #[error("{0}")]
    Signature(String),
}

/// Steps 1-3, no storage: the PDU's format ([`check_format`]), the signatures
/// of the servers that must have signed it, and its content hash (on mismatch
/// the event continues redacted).
pub async fn check_pdu(
    app: &AppState,
    rules: &RoomVersionRules,
    value: &Value,
) -> Result<Checked, PduError> {
    check_pdu_batched(app, rules, value, &mut server_keys::BatchKeys::default()).await
}

/// [`check_pdu`] for one of many events, the signers' stored keys read once
/// for all of them (`batch`).
pub async fn check_pdu_batched(
    app: &AppState,
    rules: &RoomVersionRules,
    value: &Value,
    batch: &mut server_keys::BatchKeys,
) -> Result<Checked, PduError> {
    let formatted = check_format(rules, value).map_err(PduError::Format)?;
    Ok(check_signed(app, rules, formatted, batch).await?.0)
}

/// Steps 2-3 for a PDU whose format is checked: its signatures and content
/// hash; with the event as stored (canonical JSON text).
async fn check_signed(
    app: &AppState,
    rules: &RoomVersionRules,
    formatted: Formatted,
    batch: &mut server_keys::BatchKeys,
) -> Result<(Checked, String), PduError> {
    let Formatted {
        mut object,
        event_id,
        servers,
        ts,
    } = formatted;
    let mut map = PublicKeyMap::new();
    for server in &servers {
        let key_ids: Vec<String> = match object.get("signatures") {
            Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
                _ => return Err(PduError::Signature(format!("not signed by {server}"))),
            },
            _ => return Err(PduError::Signature("no signatures".into())),
        };
        // Keys valid when the event was sent (v5+ rooms enforce validity).
        let set = server_keys::public_keys_batched(
            app,
            server,
            &key_ids,
            ts.min(app.clock.now_ms()),
            batch,
        )
        .await
        .map_err(|e| PduError::Signature(format!("keys of {server}: {e}")))?;
        map.insert(server.to_string(), set);
    }
    let verified = verify_event(&map, &object, rules)
        .map_err(|e| PduError::Signature(format!("bad signature: {e}")))?;
    if verified == Verified::Signatures {
        tracing::info!(%event_id, "content hash mismatch: keeping the redacted event");
        object = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| PduError::Format(format!("redacting: {e}")))?;
    }
    let text = serde_json::to_string(&object).map_err(|e| PduError::Format(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &text).map_err(|e| PduError::Format(e.to_string()))?;
    Ok((
        Checked {
            event_id,
            object,
            pdu,
        },
        text,
    ))
}

/// The event ID (reference hash) of a PDU, when it can be computed, so a PDU
/// refused for its signatures is still answered by ID.
pub(super) fn event_id_of(rules: &RoomVersionRules, value: &Value) -> Option<OwnedEventId> {
    let object = match CanonicalJsonValue::try_from(value.clone()).ok()? {
        CanonicalJsonValue::Object(o) => o,
        _ => return None,
    };
    pdu::received_event_id(rules, &object).ok()
}

/// The parsed events among `ids` that we hold (timeline or outlier), all of
/// `room_id`. An ID naming an event of another room is an error: an event that
/// points across rooms is rejected, and another room's events are never used
/// for this room's state or auth (issue #16, finding 1).
pub async fn load_pdus(
    db: impl crate::storage::Executor<'_>,
    room_id: &RoomId,
    ids: &[String],
) -> Result<HashMap<OwnedEventId, (Pdu, Option<i64>)>> {
    load(db, room_id, ids, true).await
}

/// The parsed events among `ids` that we hold and that are of `room_id`;
/// another room's are left out (and logged), never used. For events that
/// others name on a server's word (auth chains, the state at a gap), where
/// one foreign ID must not make the rest unusable: the event that names it
/// then lacks it, and fails auth if it needed it.
pub async fn load_room_pdus(
    db: impl crate::storage::Executor<'_>,
    room_id: &RoomId,
    ids: &[String],
) -> Result<HashMap<OwnedEventId, (Pdu, Option<i64>)>> {
    load(db, room_id, ids, false).await
}

/// [`load_pdus`] (`strict`: another room's event is an error) and
/// [`load_room_pdus`] (it is left out).
async fn load(
    db: impl crate::storage::Executor<'_>,
    room_id: &RoomId,
    ids: &[String],
    strict: bool,
) -> Result<HashMap<OwnedEventId, (Pdu, Option<i64>)>> {
    let mut out = HashMap::new();
    for ev in events::get_many(db, ids).await? {
        if ev.room_id != room_id.as_str() {
            if strict {
                return Err(Error::forbidden(format!(
                    "{} is an event of another room",
                    ev.event_id
                )));
            }
            tracing::info!(event_id = %ev.event_id, "an event of another room left out");
            continue;
        }
        let Ok(id) = EventId::parse(&ev.event_id) else {
            continue;
        };
        let Ok(mut pdu) = Pdu::from_json(&id, &ev.json) else {
            continue;
        };
        pdu.rejected = ev.rejected;
        out.insert(id, (pdu, ev.state_group));
    }
    Ok(out)
}

/// Stores an event outside the timeline (auth chains, state at a join, rejected
/// and soft-failed events).
pub async fn store_outlier(
    db: impl crate::storage::Executor<'_>,
    checked: &Checked,
    rejected: bool,
) -> Result<()> {
    let text = serde_json::to_string(&checked.object).map_err(|e| anyhow::anyhow!("{e}"))?;
    let kind = checked.pdu.kind.to_string();
    fed_store::insert_outlier(
        db,
        &fed_store::NewOutlier {
            event_id: checked.event_id.as_str(),
            room_id: checked.pdu.room_id.as_str(),
            depth: checked.pdu.depth,
            event_type: &kind,
            state_key: checked.pdu.state_key.as_deref(),
            sender: checked.pdu.sender.as_str(),
            json: &text,
            rejected,
            received_ts: now_ms(),
        },
    )
    .await?;
    Ok(())
}

/// Stores a soft-failed (`rejected` false) or rejected event received in the
/// room's graph: an outlier, with the state it leaves the room in when it is
/// named as a prev event (the state after a soft-failed event, the state
/// before a rejected one).
async fn store_in_graph(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    checked: &Checked,
    rejected: bool,
    state_group: Option<i64>,
) -> Result<()> {
    store_outlier(&mut **tx, checked, rejected).await?;
    if let Some(group) = state_group {
        fed_store::set_outlier_state_group(&mut **tx, checked.event_id.as_str(), group).await?;
    }
    Ok(())
}

/// Checks a batch of auth-chain or state events and stores them as outliers:
/// signatures first, then (in depth order) each against its own auth events.
/// Events failing auth are stored as rejected. Returns, for each of `values`
/// in order, its ID if it was accepted (`None`: refused, of another room, or
/// failing auth).
pub async fn store_auth_events(
    app: &AppState,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    values: &[Value],
) -> Result<Vec<Option<OwnedEventId>>, String> {
    store_auth_values(app, rules, room_id, Pdus::Values(values), None).await
}

/// PDUs to check, each parsed only when its turn comes.
pub enum Pdus<'a> {
    Values(&'a [Value]),
    /// As received; one that is not JSON is skipped.
    Raw(&'a [&'a serde_json::value::RawValue]),
}

impl Pdus<'_> {
    fn len(&self) -> usize {
        match self {
            Pdus::Values(v) => v.len(),
            Pdus::Raw(r) => r.len(),
        }
    }

    fn get(&self, index: usize) -> Option<Value> {
        match self {
            Pdus::Values(v) => v.get(index).cloned(),
            Pdus::Raw(r) => r
                .get(index)
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
        }
    }
}

/// Outliers written per statement.
const OUTLIER_BATCH: usize = 1000;

/// [`store_auth_events`] over values taken one at a time: each is dropped
/// once checked, and only its parsed form and stored text are kept (a big
/// room's state and auth chain are tens of thousands of events, and a
/// `Value` is several times the size of its text). With `only`, events whose
/// ID is not in it are skipped before their signatures are checked.
pub async fn store_auth_values(
    app: &AppState,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    values: Pdus<'_>,
    only: Option<&HashSet<String>>,
) -> Result<Vec<Option<OwnedEventId>>, String> {
    struct Held {
        index: usize,
        event_id: OwnedEventId,
        pdu: Pdu,
        json: String,
    }
    let mut checked = Vec::new();
    let mut keys = server_keys::BatchKeys::default();
    for index in 0..values.len() {
        let Some(value) = values.get(index) else {
            continue;
        };
        let formatted = match check_format_owned(rules, value) {
            Ok(f) => f,
            Err(e) => {
                tracing::info!(error = %e, "auth event refused");
                continue;
            }
        };
        if only.is_some_and(|ids| !ids.contains(formatted.event_id.as_str())) {
            continue;
        }
        match check_signed(app, rules, formatted, &mut keys).await {
            Ok((c, json)) if c.pdu.room_id == room_id => checked.push(Held {
                index,
                event_id: c.event_id,
                pdu: c.pdu,
                json,
            }),
            Ok((c, _)) => {
                tracing::info!(event_id = %c.event_id, "auth event of another room ignored")
            }
            Err(e) => tracing::info!(error = %e, "auth event refused"),
        }
    }
    checked.sort_by_key(|h| h.pdu.depth);
    let ids: Vec<String> = checked
        .iter()
        .flat_map(|h| {
            auth_ids_of(&h.pdu, rules)
                .into_iter()
                .map(|a| a.to_string())
        })
        .collect();
    let mut known: HashMap<OwnedEventId, Pdu> = load_room_pdus(&app.db, room_id, &ids)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(id, (pdu, _))| (id, pdu))
        .collect();
    let mut accepted = vec![None; values.len()];
    let received_ts = now_ms();
    let mut rest = checked.into_iter();
    loop {
        let batch: Vec<Held> = rest.by_ref().take(OUTLIER_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        // (event type, rejected) of each, for its row.
        let mut verdicts = Vec::with_capacity(batch.len());
        for h in &batch {
            let auth_state = auth_state(&h.pdu, rules, &known);
            let ok = auth::authorize_with(rules, &h.pdu, &known, &auth_state).is_ok();
            if ok {
                accepted[h.index] = Some(h.event_id.clone());
            } else {
                tracing::info!(event_id = %h.event_id, "auth event fails auth: stored as rejected");
            }
            // Later events (of this batch too) may name it as an auth event.
            let mut pdu = h.pdu.clone();
            pdu.rejected = !ok;
            known.insert(h.event_id.clone(), pdu);
            verdicts.push((h.pdu.kind.to_string(), !ok));
        }
        let rows: Vec<fed_store::NewOutlier<'_>> = batch
            .iter()
            .zip(&verdicts)
            .map(|(h, (kind, rejected))| fed_store::NewOutlier {
                event_id: h.event_id.as_str(),
                room_id: h.pdu.room_id.as_str(),
                depth: h.pdu.depth,
                event_type: kind,
                state_key: h.pdu.state_key.as_deref(),
                sender: h.pdu.sender.as_str(),
                json: &h.json,
                rejected: *rejected,
                received_ts,
            })
            .collect();
        fed_store::insert_outliers(&app.db, &rows)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(accepted)
}

/// The events the auth rules need for `pdu`: its auth events, plus (room
/// versions whose room ID is the create event's) the create event.
pub fn auth_ids_of(pdu: &Pdu, rules: &RoomVersionRules) -> Vec<OwnedEventId> {
    let mut ids = pdu.auth_events.clone();
    if rules.authorization.room_create_event_id_as_room_id
        && pdu.kind != ruma::events::TimelineEventType::RoomCreate
        && let Ok(create) = EventId::parse(format!("${}", &pdu.room_id.as_str()[1..]))
        && !ids.contains(&create)
    {
        ids.push(create);
    }
    ids
}

/// The state map the auth rules see when checking an event against its own
/// auth events.
fn auth_state(
    pdu: &Pdu,
    rules: &RoomVersionRules,
    known: &HashMap<OwnedEventId, Pdu>,
) -> auth::StateMap {
    auth_ids_of(pdu, rules)
        .iter()
        .filter_map(|id| known.get(id))
        .filter(|p| !p.rejected)
        .filter_map(|p| {
            p.state_key
                .as_ref()
                .map(|k| ((p.kind.to_string(), k.clone()), p.clone()))
        })
        .collect()
}

/// Receives one PDU from `origin` for a room we know.
pub async fn receive_pdu(
    app: &AppState,
    origin: &ServerName,
    value: &Value,
) -> (Option<OwnedEventId>, Result<Outcome, String>) {
    Box::pin(receive(app, origin, value, true)).await
}

/// Whether a PDU that [`receive_pdu`] refused is still held, as an event the
/// auth rules rejected (kept in the room's graph, so events after it can
/// name it): it was handled, and the sender's transaction says so.
pub async fn held_as_rejected(app: &AppState, event_id: &EventId) -> bool {
    matches!(
        fed_store::known(&app.db, event_id.as_str()).await,
        Ok(Some(true))
    )
}

/// Receives a PDU that passed [`check_pdu`] (fetching what it misses).
pub async fn receive_checked_pub(
    app: &AppState,
    origin: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    checked: Checked,
) -> Result<Outcome, String> {
    Box::pin(receive_checked(
        app,
        origin,
        rules,
        room_id,
        checked,
        Mode::Pushed,
    ))
    .await
}

/// Stores one of our own events that was built under the room lock but
/// completed without it (an invite countersigned by the invitee's server): it
/// is received like a remote event — so a room that moved on meanwhile forks
/// and resolves — and queued for the room's other servers in the same
/// transaction.
pub async fn receive_own(app: &AppState, rules: &RoomVersionRules, built: Built) -> Result<()> {
    let room_id = built.room_id.clone();
    let checked = Checked {
        event_id: built.event_id,
        object: built.json,
        pdu: built.pdu,
    };
    let origin = app.server_name.clone();
    match Box::pin(receive_checked(
        app,
        &origin,
        rules,
        &room_id,
        checked,
        Mode::Own,
    ))
    .await
    {
        Ok(Outcome::Accepted | Outcome::AlreadyKnown) => Ok(()),
        Ok(Outcome::SoftFailed) => Err(Error::forbidden(
            "The room changed while the event was completed; it is no longer allowed",
        )),
        Err(e) => Err(Error::forbidden(format!("The event was not accepted: {e}"))),
    }
}

/// How a PDU reached [`receive_checked`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode<'a> {
    /// Sent to us by another server: a gap before it is asked for with
    /// `/get_missing_events`, and it is refused if the gap stays open.
    Pushed,
    /// Fetched from this server to fill a gap: prev events still unknown have
    /// the state after them asked of it ([`super::gap`]).
    Pulled(&'a ServerName),
    /// Ours, completed outside the room lock: queued for the other servers.
    Own,
}

async fn receive(
    app: &AppState,
    origin: &ServerName,
    value: &Value,
    fetch_missing: bool,
) -> (Option<OwnedEventId>, Result<Outcome, String>) {
    let Some(room_id) = value["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
    else {
        return (None, Err("missing or invalid room_id".into()));
    };
    let room = match rooms::get(&app.db, room_id.as_str()).await {
        Ok(Some(room)) => room,
        Ok(None) => return (None, Err("unknown room".into())),
        Err(e) => return (None, Err(format!("database: {e}"))),
    };
    let Some(rules) = RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
    else {
        return (None, Err("unsupported room version".into()));
    };
    // A server the room's ACL denies has each of its PDUs refused, by ID (spec
    // "Server Access Control Lists"), before anything else is done with them.
    match super::acl::allowed_at(app, room.current_state_group, origin.as_str()).await {
        Ok(true) => {}
        Ok(false) => {
            return (
                event_id_of(&rules, value),
                Err("the room's server ACL denies the origin".into()),
            );
        }
        Err(e) => return (None, Err(format!("database: {e}"))),
    }
    let checked = match check_pdu(app, &rules, value).await {
        Ok(c) => c,
        Err(e) => return (event_id_of(&rules, value), Err(e.to_string())),
    };
    let event_id = checked.event_id.clone();
    let result = receive_checked(
        app,
        origin,
        &rules,
        &room_id,
        checked,
        if fetch_missing {
            Mode::Pushed
        } else {
            Mode::Pulled(origin)
        },
    )
    .await;
    (Some(event_id), result)
}

async fn receive_checked(
    app: &AppState,
    origin: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    checked: Checked,
    mode: Mode<'_>,
) -> Result<Outcome, String> {
    let fetch_missing = mode == Mode::Pushed;
    let event_id = checked.event_id.clone();
    if checked.pdu.room_id != room_id {
        return Err("room_id mismatch".into());
    }
    if checked.pdu.sender.server_name() != origin {
        return Err(format!("sender is not from {origin}"));
    }
    let db_err = |e: crate::error::Error| e.to_string();
    match fed_store::known(&app.db, event_id.as_str()).await {
        Ok(Some(_)) => {
            // A timeline event is done; an outlier stays what it is.
            return Ok(Outcome::AlreadyKnown);
        }
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }

    // Missing prev events: ask the origin for what lies between our
    // extremities and this event, oldest first.
    let prev_ids: Vec<String> = checked
        .pdu
        .prev_events
        .iter()
        .map(|e| e.to_string())
        .collect();
    let have = graph_events(app, room_id, &prev_ids)
        .await
        .map_err(db_err)?;
    if have.len() < prev_ids.len() && fetch_missing {
        fetch_missing_prevs(app, origin, rules, room_id, &event_id).await;
    }
    let have = graph_events(app, room_id, &prev_ids)
        .await
        .map_err(db_err)?;
    // A gap that stays open: refused for an event sent to us, filled with the
    // state its sender gives for one we fetched.
    let mut gap_groups = Vec::new();
    // The prev events still missing: a gap in the timeline once the event
    // is accepted, filled when `/messages` reaches it (`super::backfill`).
    let mut gap_missing: Vec<String> = Vec::new();
    if have.len() < prev_ids.len() {
        let Mode::Pulled(from) = mode else {
            return Err("prev events are missing and could not be fetched".into());
        };
        let missing: Vec<&String> = prev_ids.iter().filter(|p| !have.contains(*p)).collect();
        if missing.len() > super::gap::MAX_MISSING_PREVS {
            return Err(format!("{} prev events are missing", missing.len()));
        }
        for prev in missing {
            let group = super::gap::state_after(app, from, rules, room_id, prev)
                .await
                .map_err(|e| format!("the state after missing prev event {prev}: {e}"))?;
            gap_groups.push(group);
            gap_missing.push(prev.clone());
        }
    }

    // Missing auth events: the origin's auth chain for the event.
    let auth_ids: Vec<String> = auth_ids_of(&checked.pdu, rules)
        .iter()
        .map(|e| e.to_string())
        .collect();
    // An auth event of another room: the event is rejected (held in the
    // room's graph as rejected, never used for auth or state), as Synapse
    // rejects it.
    let (known_auth, foreign_auth) = match load_pdus(&app.db, room_id, &auth_ids).await {
        Ok(known) => (known, None),
        Err(e) => (HashMap::new(), Some(e.to_string())),
    };
    if foreign_auth.is_none() && known_auth.len() < auth_ids.len() {
        let request =
            get_event_authorization::v1::Request::new(room_id.to_owned(), event_id.to_owned());
        match app.federation.send(origin, request).await {
            Ok(response) => {
                let chain = super::pdu_values(&response.auth_chain);
                if chain.len() > MAX_AUTH_CHAIN {
                    return Err(format!(
                        "an auth chain of {} events is refused",
                        chain.len()
                    ));
                }
                store_auth_events(app, rules, room_id, &chain).await?;
            }
            Err(e) => tracing::info!(%event_id, error = %e, "fetching the auth chain failed"),
        }
    }

    // Steps 4 and 5 and the state after the event depend only on the event's
    // own auth and prev events, which never change: they are worked out before
    // the room is locked, in a transaction of their own, so a slow resolution
    // never holds up the room's other events.
    let mut pre = app.db.begin().await.map_err(|e| e.to_string())?;
    // The state before it, resolved over its prev events: worked out first, so
    // that a rejected event keeps it (later events may name it as a prev
    // event, Synapse's events do).
    let mut prev_groups = prev_state_groups(&mut pre, room_id, &prev_ids)
        .await
        .map_err(db_err)?;
    prev_groups.extend(gap_groups.iter().copied());
    let before_group = resolved_group(&mut pre, rules, room_id, &prev_groups)
        .await
        .map_err(db_err)?;
    if let Some(reason) = foreign_auth {
        store_in_graph(&mut pre, &checked, true, before_group)
            .await
            .map_err(db_err)?;
        pre.commit().await.map_err(|e| e.to_string())?;
        return Err(format!(
            "names another room's event as an auth event: {reason}"
        ));
    }
    let auth_events: HashMap<OwnedEventId, Pdu> = load_pdus(&mut *pre, room_id, &auth_ids)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|(id, (pdu, _))| (id, pdu))
        .collect();
    if auth_events.len() < auth_ids.len() {
        return Err("auth events are missing".into());
    }
    // Step 4: against its own auth events.
    let own = auth_state(&checked.pdu, rules, &auth_events);
    if let Err(reason) = auth::authorize_with(rules, &checked.pdu, &auth_events, &own) {
        store_in_graph(&mut pre, &checked, true, before_group)
            .await
            .map_err(db_err)?;
        pre.commit().await.map_err(|e| e.to_string())?;
        return Err(format!("fails auth against its auth events: {reason}"));
    }

    // Step 5: against the state before it. In a room joined with partial
    // state the sender's membership may be one we were not sent: the event's
    // own auth events stand in for the keys we lack (as Synapse resolves
    // them in), and the resync checks it again against the full state.
    let partial = crate::storage::partial_state::is_partial(&mut *pre, room_id.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let mut before = auth_state_pdus(&mut pre, rules, room_id, before_group, &checked.pdu)
        .await
        .map_err(db_err)?;
    if partial {
        super::partial_state::fill_from_auth_events(&mut before, &auth_events);
    }
    if let Err(reason) = auth::authorize_with(rules, &checked.pdu, &auth_events, &before) {
        store_in_graph(&mut pre, &checked, true, before_group)
            .await
            .map_err(db_err)?;
        pre.commit().await.map_err(|e| e.to_string())?;
        return Err(format!("fails auth against the state before it: {reason}"));
    }
    // The state after it.
    let mut group = match &checked.pdu.state_key {
        Some(k) => Some(
            event::new_state_group(
                &mut pre,
                room_id.as_str(),
                before_group,
                (checked.pdu.kind.to_string(), k.clone()),
                event_id.as_str(),
            )
            .await
            .map_err(db_err)?,
        ),
        None => before_group,
    };
    // The current state should the event fork the room, against the
    // extremities as they are now; used if they are unchanged once locked.
    let covered = covered_events(&mut pre, room_id, &checked.pdu.prev_events)
        .await
        .map_err(db_err)?;
    let seen = event::current_extremities(&mut pre, room_id)
        .await
        .map_err(db_err)?
        .0;
    let guess = fork_state(
        &mut pre,
        rules,
        room_id,
        &checked.pdu,
        &covered,
        &seen,
        group,
    )
    .await
    .map_err(db_err)?;
    pre.commit().await.map_err(|e| e.to_string())?;

    let mut tx = app.db.begin().await.map_err(|e| e.to_string())?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await.map_err(db_err)? else {
        return Err("unknown room".into());
    };
    if let Ok(Some(_)) = fed_store::known(&mut *tx, event_id.as_str()).await {
        return Ok(Outcome::AlreadyKnown);
    }

    // The room's full state came in while this event waited for the lock
    // (faster joins: the resync rechecks only the events before it): steps 5
    // and the state after it again, against the state before it now whole.
    let still_partial = partial
        && crate::storage::partial_state::is_partial(&mut *tx, room_id.as_str())
            .await
            .map_err(|e| e.to_string())?;
    let resynced = partial && !still_partial;
    if resynced {
        let mut prev_groups = prev_state_groups(&mut tx, room_id, &prev_ids)
            .await
            .map_err(db_err)?;
        prev_groups.extend(gap_groups.iter().copied());
        let before_group = resolved_group(&mut tx, rules, room_id, &prev_groups)
            .await
            .map_err(db_err)?;
        let before = auth_state_pdus(&mut tx, rules, room_id, before_group, &checked.pdu)
            .await
            .map_err(db_err)?;
        if let Err(reason) = auth::authorize_with(rules, &checked.pdu, &auth_events, &before) {
            store_in_graph(&mut tx, &checked, true, before_group)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(|e| e.to_string())?;
            return Err(format!("fails auth against the state before it: {reason}"));
        }
        group = match &checked.pdu.state_key {
            Some(k) => Some(
                event::new_state_group(
                    &mut tx,
                    room_id.as_str(),
                    before_group,
                    (checked.pdu.kind.to_string(), k.clone()),
                    event_id.as_str(),
                )
                .await
                .map_err(db_err)?,
            ),
            None => before_group,
        };
    }

    // Step 6: soft-fail against the current state (partial: as in step 5).
    let mut current = auth_state_pdus(&mut tx, rules, room_id, room.state_group, &checked.pdu)
        .await
        .map_err(db_err)?;
    if still_partial {
        super::partial_state::fill_from_auth_events(&mut current, &auth_events);
    }
    if let Err(reason) = auth::authorize_with(rules, &checked.pdu, &auth_events, &current) {
        tracing::info!(%event_id, %reason, "soft-failed");
        store_in_graph(&mut tx, &checked, false, group)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(|e| e.to_string())?;
        return Ok(Outcome::SoftFailed);
    }

    // Persist: the state after it, the new extremities, the current state.
    let old_current = room.state_group;
    let mut extremities: Vec<OwnedEventId> = room
        .extremities
        .iter()
        .filter(|e| !covered.contains(*e))
        .cloned()
        .collect();
    let linear = extremities.is_empty();
    let replaced: Vec<OwnedEventId> = room
        .extremities
        .iter()
        .filter(|e| covered.contains(*e))
        .cloned()
        .collect();
    let new_current = if linear {
        group
    } else if room.extremities == seen && !resynced {
        guess
    } else {
        // The room moved on meanwhile: resolve again, now under the lock.
        fork_state(
            &mut tx,
            rules,
            room_id,
            &checked.pdu,
            &covered,
            &room.extremities,
            group,
        )
        .await
        .map_err(db_err)?
    };
    let own_pdu = (mode == Mode::Own).then(|| checked.pdu.clone());
    let built = Built {
        event_id: checked.event_id.clone(),
        room_id: room_id.to_owned(),
        json: checked.object,
        pdu: checked.pdu,
    };
    event::write_event(
        &mut tx,
        app,
        &mut room,
        built,
        Placement {
            state_group: group,
            replaces_extremities: &replaced,
            current_state_group: new_current,
            membership: linear,
        },
    )
    .await
    .map_err(db_err)?;
    if !linear {
        sync_memberships(&mut tx, room_id, old_current, new_current)
            .await
            .map_err(db_err)?;
    }
    if !gap_missing.is_empty() {
        fed_store::insert_gaps(&mut *tx, room_id.as_str(), event_id.as_str(), &gap_missing)
            .await
            .map_err(|e| e.to_string())?;
    }
    extremities.push(event_id.clone());
    room.extremities = extremities;
    room.state_group = new_current;
    if let Some(pdu) = own_pdu {
        super::enqueue_pdu(&mut tx, app, &mut room, &pdu, &event_id, None)
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    event::release(room);
    Ok(Outcome::Accepted)
}

/// Events among `ids` that are in the room's graph: in the timeline (with a
/// state group), or soft-failed or rejected there (outliers with a state
/// group, which later events may name as prev events); an error when one of
/// them is another room's.
async fn graph_events(app: &AppState, room_id: &RoomId, ids: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut outliers = Vec::new();
    for e in events::get_many(&app.db, ids).await? {
        if e.room_id != room_id.as_str() {
            return Err(Error::forbidden(format!(
                "{} is an event of another room",
                e.event_id
            )));
        }
        if e.state_group.is_some() || e.stream_ordering > 0 {
            out.push(e.event_id);
        } else {
            outliers.push(e.event_id);
        }
    }
    if !outliers.is_empty() {
        out.extend(
            fed_store::graph_outliers(&app.db, &outliers)
                .await?
                .into_iter()
                .map(|o| o.event_id),
        );
    }
    Ok(out)
}

/// The state groups the prev events leave the room in: the state after a
/// timeline or soft-failed event, the state before a rejected one.
pub async fn prev_state_groups(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    prev_ids: &[String],
) -> Result<Vec<i64>> {
    let prevs = load_pdus(&mut **tx, room_id, prev_ids).await?;
    let mut groups: Vec<i64> = prevs.values().filter_map(|(_, g)| *g).collect();
    groups.extend(
        fed_store::graph_outliers(&mut **tx, prev_ids)
            .await?
            .into_iter()
            .map(|o| o.state_group),
    );
    Ok(groups)
}

/// How far back [`covered_events`] follows soft-failed and rejected events.
const MAX_SKIPPED_WALK: usize = 100;

/// The events an event with these prev events leaves behind: the prev events,
/// and through any that were soft-failed or rejected, their prev events in
/// turn, up to the first timeline events. A forward extremity among them is
/// one no longer (spec "Soft failure": a soft-failed event is not an
/// extremity, so an event after it would otherwise leave the one before it
/// dangling as an extremity).
async fn covered_events(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    prev_events: &[OwnedEventId],
) -> Result<HashSet<OwnedEventId>> {
    let mut covered: HashSet<OwnedEventId> = prev_events.iter().cloned().collect();
    let mut frontier: Vec<String> = prev_events.iter().map(|e| e.to_string()).collect();
    let mut walked = 0;
    while !frontier.is_empty() && walked < MAX_SKIPPED_WALK {
        let skipped = fed_store::graph_outliers(&mut **tx, &frontier).await?;
        frontier.clear();
        for outlier in skipped {
            walked += 1;
            if outlier.room_id != room_id.as_str() {
                continue;
            }
            let value: Value = serde_json::from_str(&outlier.json).unwrap_or_default();
            for prev in pdu::referenced_ids(&value, "prev_events") {
                if let Ok(id) = EventId::parse(&prev)
                    && covered.insert(id)
                {
                    frontier.push(prev);
                }
            }
        }
    }
    Ok(covered)
}

/// How many events one `/get_missing_events` asks for (and at most accepts).
const MISSING_EVENTS_LIMIT: usize = 20;
/// The largest auth chain accepted for one event (`/event_auth` answers).
pub const MAX_AUTH_CHAIN: usize = 2000;

/// Asks `origin` for the events between our forward extremities and `latest`,
/// and receives them oldest first (without fetching further gaps).
async fn fetch_missing_prevs(
    app: &AppState,
    origin: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    latest: &EventId,
) {
    let earliest = rooms::forward_extremities(&app.db, room_id.as_str())
        .await
        .unwrap_or_default();
    let earliest = earliest
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let mut request =
        get_missing_events::v1::Request::new(room_id.to_owned(), earliest, vec![latest.to_owned()]);
    request.limit = ruma::UInt::from(MISSING_EVENTS_LIMIT as u32);
    let reply = match app.federation.send(origin, request).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%latest, error = %e, "get_missing_events failed");
            return;
        }
    };
    let mut found: Vec<Value> = super::pdu_values(&reply.events);
    // No more than we asked for: a bigger answer costs a signature check each.
    found.truncate(MISSING_EVENTS_LIMIT);
    found.sort_by_key(|v| v["depth"].as_i64().unwrap_or(0));
    let acl_group = rooms::get(&app.db, room_id.as_str())
        .await
        .ok()
        .flatten()
        .and_then(|r| r.current_state_group);
    for value in found {
        let checked = match check_pdu(app, rules, &value).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "missing event refused");
                continue;
            }
        };
        let sender_server: OwnedServerName = checked.pdu.sender.server_name().to_owned();
        let id = checked.event_id.clone();
        // The room's server ACL holds for events fetched on another server's
        // word as for those it sends.
        if !super::acl::allowed_at(app, acl_group, sender_server.as_str())
            .await
            .unwrap_or(false)
        {
            tracing::info!(event_id = %id, "missing event from a server the ACL denies refused");
            continue;
        }
        if let Err(e) = Box::pin(receive_checked(
            app,
            &sender_server,
            rules,
            room_id,
            checked,
            Mode::Pulled(origin),
        ))
        .await
        {
            tracing::info!(event_id = %id, error = %e, "missing event not accepted");
        }
    }
}

/// The room's current state if `pdu` (with state `group` after it, leaving
/// `covered` behind) joins the forward extremities `extremities`: its own
/// state when it replaces them all, else the resolution of its state and the
/// states of the others.
async fn fork_state(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
    covered: &HashSet<OwnedEventId>,
    extremities: &[OwnedEventId],
    group: Option<i64>,
) -> Result<Option<i64>> {
    let others: Vec<String> = extremities
        .iter()
        .filter(|e| !covered.contains(*e))
        .map(|e| e.to_string())
        .collect();
    if others.is_empty() {
        return Ok(group);
    }
    let mut groups: Vec<i64> = load_pdus(&mut **tx, room_id, &others)
        .await?
        .values()
        .filter_map(|(_, g)| *g)
        .collect();
    groups.extend(group);
    // The event itself is not stored yet: resolution must still see it.
    resolved_group_with(tx, rules, room_id, &groups, Some(pdu)).await
}

/// The state group of the resolved state of several groups (the one group
/// itself when there is one, or all are equal).
pub async fn resolved_group(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    groups: &[i64],
) -> Result<Option<i64>> {
    resolved_group_with(tx, rules, room_id, groups, None).await
}

/// [`resolved_group`] where one of the groups holds `unstored`, an event that
/// is being received and is not in the database yet.
async fn resolved_group_with(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    groups: &[i64],
    unstored: Option<&Pdu>,
) -> Result<Option<i64>> {
    let mut unique: Vec<i64> = groups.to_vec();
    unique.sort_unstable();
    unique.dedup();
    match unique.as_slice() {
        [] => return Ok(None),
        [one] => return Ok(Some(*one)),
        _ => {}
    }
    let mut forks = Vec::new();
    let mut ids = HashSet::new();
    for g in &unique {
        let fork: HashMap<(String, String), OwnedEventId> = state::full_state(&mut **tx, *g)
            .await?
            .into_iter()
            .filter_map(|(k, id)| EventId::parse(id).ok().map(|id| (k, id)))
            .collect();
        ids.extend(fork.values().cloned());
        forks.push(fork);
    }
    if forks.windows(2).all(|w| w[0] == w[1]) {
        return Ok(Some(unique[0]));
    }
    // Every event of the forks and their auth chains.
    let mut events_map: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut todo: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    if let Some(pdu) = unstored {
        for a in &pdu.auth_events {
            if ids.insert(a.clone()) {
                todo.push(a.to_string());
            }
        }
        events_map.insert(pdu.event_id.clone(), pdu.clone());
    }
    while !todo.is_empty() {
        let loaded = load_pdus(&mut **tx, room_id, &todo).await?;
        todo.clear();
        for (id, (pdu, _)) in loaded {
            for a in &pdu.auth_events {
                if !events_map.contains_key(a) && !ids.contains(a) {
                    ids.insert(a.clone());
                    todo.push(a.to_string());
                }
            }
            events_map.insert(id, pdu);
        }
    }
    // CPU-bound on big rooms: off the async workers.
    let rules = rules.clone();
    let resolved =
        tokio::task::spawn_blocking(move || state_res::resolve(&rules, &forks, &events_map))
            .await
            .map_err(|e| anyhow::anyhow!("state resolution task: {e}"))?
            .map_err(|e| anyhow::anyhow!("state resolution: {e}"))?;
    let full: HashMap<(String, String), String> = resolved
        .into_iter()
        .map(|(k, id)| (k, id.to_string()))
        .collect();
    Ok(Some(
        event::write_snapshot(tx, room_id.as_str(), full).await?,
    ))
}

/// The whole state of a group as parsed PDUs.
pub async fn full_state_pdus(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    group: Option<i64>,
) -> Result<auth::StateMap> {
    let Some(group) = group else {
        return Ok(HashMap::new());
    };
    let entries = state::full_state(&mut **tx, group).await?;
    state_map_pdus(tx, room_id, entries).await
}

/// The part of the state at `group` that the auth rules consult for `pdu`
/// (the spec's auth events selection, plus the create event), as parsed
/// PDUs: all [`auth::authorize_with`] looks up. Loading the whole state
/// instead cost O(state) per received event, under the room lock, in big
/// rooms. An event whose content gives no selection (it will fail the rules)
/// is checked against the whole state, as before.
pub async fn auth_state_pdus(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    group: Option<i64>,
    pdu: &Pdu,
) -> Result<auth::StateMap> {
    let Some(group) = group else {
        return Ok(HashMap::new());
    };
    let Ok(keys) = event::auth_keys(
        rules,
        &pdu.kind,
        &pdu.sender,
        pdu.state_key.as_deref(),
        &pdu.content,
    ) else {
        return full_state_pdus(tx, room_id, Some(group)).await;
    };
    let entries = state::state_for_keys(&mut **tx, group, &keys).await?;
    state_map_pdus(tx, room_id, entries).await
}

/// The events of state entries, parsed; entries whose event is not held are
/// left out.
async fn state_map_pdus(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    entries: Vec<((String, String), String)>,
) -> Result<auth::StateMap> {
    let ids: Vec<String> = entries.iter().map(|(_, id)| id.clone()).collect();
    let loaded = load_pdus(&mut **tx, room_id, &ids).await?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, id)| {
            let id = EventId::parse(id).ok()?;
            loaded.get(&id).map(|(p, _)| (k, p.clone()))
        })
        .collect())
}

/// After a resolution changed the current state, brings `room_members` in line
/// with the member events now current.
pub(super) async fn sync_memberships(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room_id: &RoomId,
    old: Option<i64>,
    new: Option<i64>,
) -> Result<()> {
    let Some(new) = new else { return Ok(()) };
    let old: HashMap<(String, String), String> = match old {
        Some(g) => state::full_state(&mut **tx, g).await?.into_iter().collect(),
        None => HashMap::new(),
    };
    let changed: Vec<((String, String), String)> = state::full_state(&mut **tx, new)
        .await?
        .into_iter()
        .filter(|(k, id)| k.0 == "m.room.member" && old.get(k) != Some(id))
        .collect();
    let ids: Vec<String> = changed.iter().map(|(_, id)| id.clone()).collect();
    let loaded = load_pdus(&mut **tx, room_id, &ids).await?;
    for ((_, user), id) in changed {
        let Some((pdu, _)) = EventId::parse(&id)
            .ok()
            .and_then(|i| loaded.get(&i).cloned())
        else {
            continue;
        };
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let membership = content["membership"].as_str().unwrap_or("leave");
        let stream = events::get(&mut **tx, &id)
            .await?
            .map(|e| e.stream_ordering)
            .unwrap_or(0);
        rooms::set_membership(&mut **tx, room_id.as_str(), &user, membership, &id, stream).await?;
    }
    Ok(())
}

pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
