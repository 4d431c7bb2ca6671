//! The local event path (ARCHITECTURE.md, "The two paths every event takes"):
//!
//! 1. The caller holds the room's event-creation lock (its row, `FOR UPDATE`) in an
//!    open transaction, as a [`RoomCtx`].
//! 2. [`append`] picks `prev_events` (the forward extremities), the auth events the
//!    spec selects for the event, and `depth`; builds a PDU of the room's version
//!    (content hash, signature, reference-hash ID).
//! 3. The auth rules run against the state before the event.
//! 4. [`persist`], the single writer, stores event + state delta + extremities +
//!    membership in the caller's transaction and registers the new stream position;
//!    it becomes visible to readers when the transaction commits and the guard drops.

use std::collections::HashMap;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
    events::TimelineEventType, room_version_rules::RoomVersionRules,
    state_res::auth_types_for_event,
};
use serde_json::value::to_raw_value;

use crate::{
    domain::{
        auth,
        pdu::{self, Built, NewEvent, Pdu, PduError, Position},
        redaction::{self, Refusal},
    },
    error::{Error, ErrorKind, Result},
    notify::InFlight,
    service::AppState,
    storage::{Postgres, Transaction, events, redactions, relations, rooms, search, state},
};

/// Deltas a state group may stack on its snapshot before a new snapshot is written:
/// bounds the work of reading state, at a small storage cost.
pub const MAX_STATE_CHAIN: i32 = 32;

/// At most this many `prev_events` in a new event (the spec allows 20).
const MAX_PREV_EVENTS: usize = 20;

/// A room locked for event creation within one transaction.
pub struct RoomCtx {
    pub room_id: Option<OwnedRoomId>,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub extremities: Vec<OwnedEventId>,
    pub depth: i64,
    pub state_group: Option<i64>,
    /// Stream positions taken in this transaction; released after commit.
    pub in_flight: Vec<InFlight>,
    /// Set when this transaction queued events for other servers: the sender is
    /// woken after commit.
    pub federation_wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl RoomCtx {
    /// A room that does not exist yet (for its create event).
    pub fn new_room(version: RoomVersionId) -> Result<Self> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::new(ErrorKind::BadRequest, "Unsupported room version"))?;
        Ok(Self {
            room_id: None,
            version,
            rules,
            extremities: Vec::new(),
            depth: 0,
            state_group: None,
            in_flight: Vec::new(),
            federation_wake: None,
        })
    }

    /// Locks an existing room. `None` if the room is unknown.
    pub async fn lock(
        tx: &mut Transaction<'_, Postgres>,
        room_id: &RoomId,
    ) -> Result<Option<Self>> {
        let Some(room) = rooms::lock(&mut **tx, room_id.as_str()).await? else {
            return Ok(None);
        };
        let version = RoomVersionId::try_from(room.room_version.as_str())
            .map_err(|e| anyhow::anyhow!("stored room version: {e}"))?;
        let rules = version
            .rules()
            .ok_or_else(|| anyhow::anyhow!("stored room version unsupported"))?;
        let (extremities, depth) = current_extremities(tx, room_id).await?;
        Ok(Some(Self {
            room_id: Some(room_id.to_owned()),
            version,
            rules,
            extremities,
            depth,
            state_group: room.current_state_group,
            in_flight: Vec::new(),
            federation_wake: None,
        }))
    }

    /// Loads a room's version, rules and current state group for reading,
    /// taking no lock (unlike [`RoomCtx::lock`]): another transaction may
    /// append to the room meanwhile, so nothing may be appended through it.
    pub async fn load_unlocked(
        tx: &mut Transaction<'_, Postgres>,
        room_id: &RoomId,
    ) -> Result<Option<Self>> {
        let Some(room) = rooms::get(&mut **tx, room_id.as_str()).await? else {
            return Ok(None);
        };
        let version = RoomVersionId::try_from(room.room_version.as_str())
            .map_err(|e| anyhow::anyhow!("stored room version: {e}"))?;
        let rules = version
            .rules()
            .ok_or_else(|| anyhow::anyhow!("stored room version unsupported"))?;
        Ok(Some(Self {
            room_id: Some(room_id.to_owned()),
            version,
            rules,
            extremities: Vec::new(),
            depth: 0,
            state_group: room.current_state_group,
            in_flight: Vec::new(),
            federation_wake: None,
        }))
    }

    pub fn room_id(&self) -> &RoomId {
        self.room_id
            .as_deref()
            .expect("room exists after its create event")
    }
}

/// The room's forward extremities as new events reference them, with the
/// greatest depth among them. With federation the room may have forked: a new
/// local event references every extremity (the newest 20), and the room's
/// current state is the resolved state of all of them.
pub async fn current_extremities(
    db: &mut crate::storage::PgConnection,
    room_id: &RoomId,
) -> Result<(Vec<OwnedEventId>, i64)> {
    let mut known = rooms::forward_extremities_with_depth(&mut *db, room_id.as_str()).await?;
    known.sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
    known.truncate(MAX_PREV_EVENTS);
    let depth = known.iter().map(|(_, depth)| *depth).max().unwrap_or(0);
    let mut extremities: Vec<OwnedEventId> = known
        .iter()
        .filter_map(|(id, _)| EventId::parse(id).ok())
        .collect();
    extremities.sort();
    Ok((extremities, depth))
}

/// Loads the given keys of the room's current state, as parsed PDUs.
pub async fn state_events(
    tx: &mut Transaction<'_, Postgres>,
    group: Option<i64>,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), Pdu>> {
    let Some(group) = group else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for ((key, event_id), json) in state::state_events_for_keys(&mut **tx, group, keys).await? {
        let id = EventId::parse(&event_id).map_err(|e| anyhow::anyhow!("stored id: {e}"))?;
        let pdu = Pdu::from_json(&id, &json).map_err(|e| anyhow::anyhow!("stored pdu: {e}"))?;
        out.insert(key, pdu);
    }
    Ok(out)
}

/// The state keys the auth rules need for an event (the spec's selection, plus
/// the create event, which the rules always consult).
pub fn auth_keys(
    rules: &RoomVersionRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &serde_json::value::RawValue,
) -> Result<Vec<(String, String)>> {
    let mut keys: Vec<(String, String)> =
        auth_types_for_event(kind, sender, state_key, content, &rules.authorization)
            .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?
            .into_iter()
            .map(|(t, k)| (t.to_string(), k))
            .collect();
    let create_key = ("m.room.create".to_owned(), String::new());
    if !keys.contains(&create_key) {
        keys.push(create_key);
    }
    keys.dedup();
    Ok(keys)
}

/// The `auth_events` of a new event: the selected state, minus the create event
/// in room versions whose room ID names it; sorted.
pub fn auth_event_ids(
    rules: &RoomVersionRules,
    state: &HashMap<(String, String), Pdu>,
) -> Vec<OwnedEventId> {
    let mut ids: Vec<OwnedEventId> = state
        .iter()
        .filter(|((t, k), _)| {
            !(rules.authorization.room_create_event_id_as_room_id
                && t == "m.room.create"
                && k.is_empty())
        })
        .map(|(_, pdu)| pdu.event_id.clone())
        .collect();
    ids.sort();
    ids
}

/// The result of appending an event.
pub struct Appended {
    pub event_id: OwnedEventId,
    pub stream_ordering: i64,
    /// The room's joined members just after the event (push and federation
    /// fan-out both need them: loaded once).
    pub joined: Vec<String>,
}

/// Builds, authorises and persists one local event in a locked room.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &mut RoomCtx,
    sender: &UserId,
    event: NewEvent,
) -> Result<Appended> {
    let built = prepare(tx, app, room, sender, event).await?;
    persist(tx, app, room, built).await
}

/// Builds, signs and authorises a local event at the room's head without storing
/// it (an invite is countersigned by the invitee's server before it is stored).
pub async fn prepare(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &RoomCtx,
    sender: &UserId,
    event: NewEvent,
) -> Result<Built> {
    let kind: TimelineEventType = event.kind.as_str().into();
    if kind == TimelineEventType::RoomRedaction && event.state_key.is_some() {
        // The spec gives a state-keyed `m.room.redaction` no meaning.
        return Err(Error::bad_json(Refusal::StateKey.to_string()));
    }
    let content_raw = to_raw_value(&event.content).map_err(|e| Error::bad_json(e.to_string()))?;
    let keys = auth_keys(
        &room.rules,
        &kind,
        sender,
        event.state_key.as_deref(),
        &content_raw,
    )?;
    let state_before = state_events(tx, room.state_group, &keys).await?;
    let auth_ids = auth_event_ids(&room.rules, &state_before);

    let hashes = if pdu::is_v1_format(&room.rules) {
        let mut ids = room.extremities.clone();
        ids.extend(auth_ids.iter().cloned());
        reference_hashes(tx, &room.rules, &ids).await?
    } else {
        HashMap::new()
    };

    let key = &app.signing_key;
    let built = pdu::build(
        &room.rules,
        &event,
        sender,
        &Position {
            room_id: room.room_id.as_deref(),
            prev_events: &room.extremities,
            auth_events: &auth_ids,
            reference_hashes: &hashes,
            depth: room.depth + 1,
        },
        event
            .origin_server_ts
            .unwrap_or_else(MilliSecondsSinceUnixEpoch::now),
        app.server_name.as_str(),
        &key.pair,
    )
    .map_err(build_error)?;

    authorize(&room.rules, &built.pdu, &state_before)?;
    Ok(built)
}

/// Event format v1 (room versions 1 and 2): the reference hashes of the stored
/// events a new event references (prev and auth events: in the room, stored).
pub async fn reference_hashes(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RoomVersionRules,
    ids: &[OwnedEventId],
) -> Result<HashMap<OwnedEventId, String>> {
    let wanted: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut out = HashMap::new();
    for ev in events::get_many(&mut **tx, &wanted).await? {
        let id = EventId::parse(&ev.event_id).map_err(|e| anyhow::anyhow!("stored id: {e}"))?;
        let (id, hash) = pdu::reference_pair(rules, &id, &ev.json)
            .map_err(|e| anyhow::anyhow!("reference hash: {e}"))?;
        out.insert(id, hash);
    }
    Ok(out)
}

/// A local event that cannot be built is the client's: too large or malformed.
fn build_error(e: PduError) -> Error {
    match e {
        PduError::TooLarge => Error::new(ErrorKind::TooLarge, "Event is larger than 65536 bytes"),
        e @ PduError::KeyTooLarge(_) => Error::new(ErrorKind::TooLarge, e.to_string()),
        PduError::Malformed(m) => Error::bad_json(m),
    }
}

/// The create event: no state before it, no prev or auth events.
pub async fn append_first(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &mut RoomCtx,
    sender: &UserId,
    content: serde_json::Map<String, serde_json::Value>,
) -> Result<Appended> {
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.create".into(),
        content: serde_json::Value::Object(content),
        state_key: Some(String::new()),
        redacts: None,
    };
    let mut ts = MilliSecondsSinceUnixEpoch::now();
    let built = loop {
        let built = pdu::build(
            &room.rules,
            &event,
            sender,
            &Position {
                room_id: room.room_id.as_deref(),
                prev_events: &[],
                auth_events: &[],
                reference_hashes: &HashMap::new(),
                depth: 1,
            },
            ts,
            app.server_name.as_str(),
            &app.signing_key.pair,
        )
        .map_err(build_error)?;
        // In v12 the room ID is the create event's hash: the same user creating
        // two rooms in one millisecond would create one room twice. The ID is
        // held until commit; a taken one moves the timestamp on (as Synapse does).
        if room.room_id.is_some() || events::claim_id(tx, built.event_id.as_str()).await? {
            break built;
        }
        ts = MilliSecondsSinceUnixEpoch(ts.0 + ruma::UInt::from(1u32));
    };
    authorize(&room.rules, &built.pdu, &HashMap::new())?;
    persist(tx, app, room, built).await
}

/// Runs the auth rules of the room version against the state before the event.
pub fn authorize(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state_before: &HashMap<(String, String), Pdu>,
) -> Result<()> {
    auth::authorize(rules, pdu, state_before)
        .map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))
}

/// The single writer for local events: event, state delta, extremities,
/// membership — in the caller's transaction — and the federation send queue for
/// the servers in the room. The new stream position is published after the caller
/// commits.
pub async fn persist(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &mut RoomCtx,
    built: Built,
) -> Result<Appended> {
    if room.room_id.is_none() {
        room.room_id = Some(built.room_id.clone());
    }
    let group = match &built.pdu.state_key {
        Some(state_key) => Some(
            new_state_group(
                tx,
                built.room_id.as_str(),
                room.state_group,
                (built.pdu.kind.to_string(), state_key.clone()),
                built.event_id.as_str(),
            )
            .await?,
        ),
        None => room.state_group,
    };
    let prev = room.extremities.clone();
    let federate = built.pdu.sender.server_name() == app.server_name;
    let pdu = built.pdu.clone();
    let appended = write_event(
        tx,
        app,
        room,
        built,
        Placement {
            state_group: group,
            replaces_extremities: &prev,
            // A message leaves the room's state (and its stored current group,
            // which a locked room's `state_group` is) as it was.
            current_state_group: pdu.state_key.is_some().then_some(group).flatten(),
            membership: true,
        },
    )
    .await?;
    room.extremities = vec![appended.event_id.clone()];
    room.depth = pdu.depth;
    room.state_group = group;
    if federate {
        crate::service::federation::enqueue_pdu(
            tx,
            app,
            room,
            &pdu,
            &appended.event_id,
            Some(&appended.joined),
        )
        .await?;
    }
    Ok(appended)
}

/// Where an event goes in the room: the state after it, the extremities it
/// replaces, the room's current state after it (`None`: unchanged), and whether
/// its membership change is part of the current state.
pub struct Placement<'a> {
    pub state_group: Option<i64>,
    pub replaces_extremities: &'a [OwnedEventId],
    pub current_state_group: Option<i64>,
    pub membership: bool,
}

/// Writes one event that has passed its checks: the event row, extremities,
/// current state, membership, relations, redaction, search index and push
/// actions, in the caller's transaction.
pub async fn write_event(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &mut RoomCtx,
    built: Built,
    placement: Placement<'_>,
) -> Result<Appended> {
    let Built {
        event_id,
        room_id,
        json,
        pdu,
    } = built;
    let group = placement.state_group;
    let text = serde_json::to_string(&json).map_err(|e| anyhow::anyhow!("serialising pdu: {e}"))?;
    let event_type = pdu.kind.to_string();
    // Our users' events are created here, and no redaction can name an event
    // before it exists (its ID is its hash): only others' are looked up, and
    // only others' can have been stored as outliers before.
    let received = pdu.sender.server_name() != app.server_name;
    if received {
        crate::storage::federation::delete_outlier(&mut **tx, event_id.as_str()).await?;
    }
    // The position is taken by the insert itself and registered at once: it is
    // in flight until the caller's transaction ends (crate::notify).
    let stream = events::insert_next(
        &mut **tx,
        &events::NewEventRow {
            event_id: event_id.as_str(),
            room_id: room_id.as_str(),
            depth: pdu.depth,
            event_type: &event_type,
            state_key: pdu.state_key.as_deref(),
            sender: pdu.sender.as_str(),
            origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
            json: &text,
            state_group: group,
            rejected: false,
            received_ts: app.clock.now_ms(),
        },
    )
    .await?;
    room.in_flight.push(app.notifier.begin(stream));
    app.metrics.event_persisted();
    let prev: Vec<String> = placement
        .replaces_extremities
        .iter()
        .map(|e| e.to_string())
        .collect();
    rooms::replace_extremities(&mut **tx, room_id.as_str(), &prev, event_id.as_str()).await?;
    if let Some(current) = placement.current_state_group {
        rooms::set_current_state_group(&mut **tx, room_id.as_str(), current).await?;
    }
    if placement.membership
        && pdu.kind == TimelineEventType::RoomMember
        && let Some(target) = &pdu.state_key
    {
        let membership: serde_json::Value = serde_json::from_str(pdu.content.get())
            .map_err(|e| anyhow::anyhow!("member content: {e}"))?;
        let membership = membership["membership"].as_str().unwrap_or("leave");
        let was = rooms::membership(&mut **tx, room_id.as_str(), target).await?;
        rooms::set_membership(
            &mut **tx,
            room_id.as_str(),
            target,
            membership,
            event_id.as_str(),
            stream,
        )
        .await?;
        if membership == "join"
            && was.as_deref() != Some("join")
            && let Ok(target) = UserId::parse(target.as_str())
            && super::presence::on_join(tx, app, room_id.as_str(), &target).await?
        {
            room.federation_wake = Some(app.federation_wake.clone());
        }
        if membership != "join" {
            // Remote users no longer sharing a room with ours: their device
            // lists stop being updated, so they are not kept.
            let target_local =
                UserId::parse(target.as_str()).is_ok_and(|u| u.server_name() == app.server_name);
            crate::storage::remote_devices::forget_untracked(
                &mut **tx,
                room_id.as_str(),
                target,
                target_local,
                app.server_name.as_str(),
            )
            .await?;
        }
    }
    if let Ok(content) = serde_json::from_str::<serde_json::Value>(pdu.content.get())
        && let (Some(rel_type), Some(target)) = (
            content["m.relates_to"]["rel_type"].as_str(),
            content["m.relates_to"]["event_id"].as_str(),
        )
    {
        relations::insert(
            &mut **tx,
            &relations::NewRelation {
                event_id: event_id.as_str(),
                relates_to: target,
                rel_type,
                room_id: room_id.as_str(),
                event_type: &event_type,
                sender: pdu.sender.as_str(),
                stream_ordering: stream,
            },
        )
        .await?;
    }
    settle_redactions(tx, app, &room.rules, &pdu, group, received).await?;
    if pdu.kind == TimelineEventType::RoomGuestAccess
        && pdu.state_key.as_deref() == Some("")
        && placement.current_state_group.is_some()
    {
        super::membership::kick_guests_after_commit(app.clone(), room_id.clone());
    }
    if let Ok(content) = serde_json::from_str::<serde_json::Value>(pdu.content.get())
        && let Some((key, text)) = super::search::indexable(&event_type, &content)
    {
        search::index(
            &mut **tx,
            event_id.as_str(),
            room_id.as_str(),
            stream,
            key,
            text,
        )
        .await?;
    }
    let joined = rooms::joined_users(&mut **tx, room_id.as_str()).await?;
    if !app.appservices.current().is_empty() {
        super::appservice::enqueue(
            tx,
            app,
            &room.rules,
            &room_id,
            event_id.as_str(),
            &text,
            &pdu,
        )
        .await?;
    }
    // Push rules see the state at the event.
    let current = room.state_group;
    room.state_group = group.or(current);
    let pushed = super::push::record_actions(
        tx,
        app,
        room,
        &room_id,
        event_id.as_str(),
        &pdu,
        stream,
        &joined,
    )
    .await;
    room.state_group = current;
    pushed?;
    Ok(Appended {
        event_id,
        stream_ordering: stream,
        joined,
    })
}

/// What a newly written event changes about redactions (spec: "Handling
/// redactions"), by the one rule of [`redaction::check`]:
/// - a redaction whose original is known is applied when allowed, else held;
/// - one whose original is not known yet is held until it is;
/// - with `look_up_held`, held redactions naming this event are applied now if
///   allowed.
///
/// Held redactions are withheld from clients (`read::Viewer::may_see`). Every
/// writer calls this: [`write_event`] (local events, `/send`, joins) and backfill.
/// `state_group` is the state stored with the event (for a redaction, a message
/// event, the state before it).
pub async fn settle_redactions(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    rules: &RoomVersionRules,
    event: &Pdu,
    state_group: Option<i64>,
    look_up_held: bool,
) -> Result<()> {
    if let Some(target) = redaction::target(rules, event) {
        let applied = match redactions::origin(&mut **tx, target.as_str()).await? {
            Some(original) => {
                apply_redaction(tx, app, rules, event, state_group, &target, original).await?
            }
            None => false,
        };
        if !applied {
            redactions::hold(
                &mut **tx,
                event.event_id.as_str(),
                target.as_str(),
                event.room_id.as_str(),
            )
            .await?;
        }
    }
    if !look_up_held {
        return Ok(());
    }
    for id in redactions::naming(&mut **tx, event.event_id.as_str()).await? {
        let Some(stored) = events::get(&mut **tx, &id).await? else {
            continue;
        };
        let held = EventId::parse(&stored.event_id)
            .ok()
            .and_then(|eid| Pdu::from_json(&eid, &stored.json).ok());
        let Some(held) = held else {
            continue;
        };
        let original = (event.room_id.to_string(), event.sender.to_string());
        if apply_redaction(
            tx,
            app,
            rules,
            &held,
            stored.state_group,
            &event.event_id,
            original,
        )
        .await?
        {
            redactions::release(&mut **tx, &id).await?;
        }
    }
    Ok(())
}

/// Redacts `target` (sent by `original.1` in room `original.0`) if
/// [`redaction::check`] allows `redacting` with the power levels of
/// `state_group`. Our own users are trusted only for their own events or with
/// power (not for their server's sake: this is their server).
async fn apply_redaction(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    rules: &RoomVersionRules,
    redacting: &Pdu,
    state_group: Option<i64>,
    target: &EventId,
    (original_room, original_sender): (String, String),
) -> Result<bool> {
    let (Ok(original_room), Ok(original_sender)) = (
        RoomId::parse(&original_room),
        UserId::parse(&original_sender),
    ) else {
        return Ok(false);
    };
    let local = redacting.sender.server_name() == app.server_name;
    let allowed = |grant: redaction::Grant| !local || grant.allows_local();
    let granted = match redaction::check(redacting, &original_room, &original_sender, None) {
        Ok(grant) if allowed(grant) => true,
        Ok(_) | Err(Refusal::NoPower) => {
            let power = power_levels_at(tx, rules, state_group).await?;
            redaction::check(redacting, &original_room, &original_sender, power.as_ref())
                .is_ok_and(allowed)
        }
        Err(_) => false,
    };
    if granted {
        events::set_redacted_by(&mut **tx, target.as_str(), redacting.event_id.as_str()).await?;
        search::remove(&mut **tx, target.as_str()).await?;
    }
    Ok(granted)
}

/// Whether `user` is joined to the room and may send the state event
/// `event_type` under its current power levels (Synapse's test for who may
/// change a room's aliases and directory listing).
pub async fn may_send_state(
    app: &AppState,
    room_id: &RoomId,
    user: &UserId,
    event_type: &str,
) -> Result<bool> {
    may(app, room_id, user, |p| {
        p.user_can_send_state(user, event_type.into())
    })
    .await
}

/// Whether `user` is joined to the room and may invite under its current
/// power levels (checked before an invite by email asks an identity server
/// to store anything; the auth rules decide again when the event is sent).
pub async fn may_invite(app: &AppState, room_id: &RoomId, user: &UserId) -> Result<bool> {
    may(app, room_id, user, |p| p.user_can_invite(user)).await
}

async fn may(
    app: &AppState,
    room_id: &RoomId,
    user: &UserId,
    allowed: impl FnOnce(&ruma::events::room::power_levels::RoomPowerLevels) -> bool,
) -> Result<bool> {
    if rooms::membership(&app.db, room_id.as_str(), user.as_str())
        .await?
        .as_deref()
        != Some("join")
    {
        return Ok(false);
    }
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Ok(false);
    };
    let Some(rules) = RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
    else {
        return Ok(false);
    };
    let mut tx = app.db.begin().await?;
    let power = power_levels_at(&mut tx, &rules, room.current_state_group).await?;
    tx.commit().await?;
    Ok(power.is_some_and(|p| allowed(&p)))
}

/// The power levels (with the room's creators) of a state group, as the
/// redaction rule reads them.
async fn power_levels_at(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RoomVersionRules,
    state_group: Option<i64>,
) -> Result<Option<ruma::events::room::power_levels::RoomPowerLevels>> {
    let keys = [
        ("m.room.power_levels".to_owned(), String::new()),
        ("m.room.create".to_owned(), String::new()),
    ];
    let state = state_events(tx, state_group, &keys).await?;
    Ok(redaction::power_levels(
        rules,
        state.get(&keys[0]),
        state.get(&keys[1]),
    ))
}

/// A new state group: the parent's state plus one entry, stored as
/// - a one-entry delta on the parent while the parent's chain is short;
/// - at the chain bound, a delta on the chain's snapshot holding every key changed
///   since it (a rebase), while that delta stays small next to the snapshot;
/// - otherwise a fresh full snapshot.
///
/// Reads merge at most `MAX_STATE_CHAIN + 1` groups; a growing room writes a full
/// snapshot only after many changes, not every `MAX_STATE_CHAIN`.
///
/// `parent` is the state before the event, so the event the new one replaces is
/// recorded here too (clients see it as `unsigned.replaces_state`).
pub async fn new_state_group(
    tx: &mut Transaction<'_, Postgres>,
    room_id: &str,
    parent: Option<i64>,
    key: (String, String),
    event_id: &str,
) -> Result<i64> {
    let Some(parent) = parent else {
        return write_snapshot(tx, room_id, HashMap::from([(key, event_id.to_owned())])).await;
    };
    let (depth, replaced) = state::depth_and_entry(&mut **tx, parent, &key).await?;
    if let Some(replaced) = replaced
        && replaced != event_id
    {
        state::record_replaced(&mut **tx, event_id, &replaced).await?;
    }
    if depth < MAX_STATE_CHAIN {
        let ids = state::intern_keys(&mut **tx, std::slice::from_ref(&key)).await?;
        return Ok(state::insert_group(
            &mut **tx,
            room_id,
            Some(parent),
            depth + 1,
            &ids,
            &[event_id.to_owned()],
        )
        .await?);
    }
    let mut full: HashMap<(String, String), String> = state::full_state(&mut **tx, parent)
        .await?
        .into_iter()
        .collect();
    full.insert(key, event_id.to_owned());
    let root = state::chain_root(&mut **tx, parent).await?;
    let base: HashMap<(String, String), String> = state::full_state(&mut **tx, root)
        .await?
        .into_iter()
        .collect();
    let delta: Vec<((String, String), String)> = full
        .iter()
        .filter(|(k, v)| base.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // State never loses keys, so `full` ⊇ `base` and the delta describes it exactly.
    if delta.len() <= (base.len() / 4).max(64) {
        let (keys, ids): (Vec<(String, String)>, Vec<String>) = delta.into_iter().unzip();
        let key_ids = state::intern_keys(&mut **tx, &keys).await?;
        return Ok(state::insert_group(&mut **tx, room_id, Some(root), 1, &key_ids, &ids).await?);
    }
    write_snapshot(tx, room_id, full).await
}

pub async fn write_snapshot(
    tx: &mut Transaction<'_, Postgres>,
    room_id: &str,
    full: HashMap<(String, String), String>,
) -> Result<i64> {
    let (keys, ids): (Vec<(String, String)>, Vec<String>) = full.into_iter().unzip();
    let key_ids = state::intern_keys(&mut **tx, &keys).await?;
    Ok(state::insert_group(&mut **tx, room_id, None, 0, &key_ids, &ids).await?)
}

/// Releases the stream positions of a committed (or abandoned) room transaction,
/// publishing them to readers, and wakes the federation sender if events were
/// queued. Called right after the commit, where the reader sees it; a room
/// context dropped without it (an early return) does the same on drop, so no
/// wake-up is ever lost.
pub fn release(room: RoomCtx) {
    drop(room);
}

impl Drop for RoomCtx {
    fn drop(&mut self) {
        // Positions first (readers may then look), then the sender.
        self.in_flight.clear();
        if let Some(wake) = self.federation_wake.take() {
            wake.notify_one();
        }
    }
}

/// Sends one event into an existing room in its own transaction, idempotently per
/// `(user, device, txn_id)` when a transaction ID is given.
pub async fn send(
    app: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    event: NewEvent,
    txn: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::forbidden("Unknown room, or you are not in it"));
    };
    if let Some((device, txn_id)) = txn
        && let Some(existing) = rooms::txn_event(&mut *tx, sender.as_str(), device, txn_id).await?
    {
        // A retry, or a concurrent request with the same txnId that won the
        // lock first (looked up under the lock only: retries are rare, and
        // every send saves the round trip).
        return Ok(EventId::parse(existing).map_err(|e| anyhow::anyhow!("stored id: {e}"))?);
    }
    if let Some(existing) = unchanged_state(&mut tx, &room, sender, &event).await? {
        return Ok(existing);
    }
    let appended = append(&mut tx, app, &mut room, sender, event).await?;
    if let Some((device, txn_id)) = txn {
        rooms::insert_txn(
            &mut *tx,
            sender.as_str(),
            device,
            txn_id,
            appended.event_id.as_str(),
            app.clock.now_ms(),
        )
        .await?;
    }
    tx.commit().await?;
    release(room);
    Ok(appended.event_id)
}

/// The current state event a new state event would repeat: same key, same
/// sender, same content. Setting state to what it is makes no new event (as
/// Synapse does): the answer is the event already there.
pub async fn unchanged_state(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomCtx,
    sender: &UserId,
    event: &NewEvent,
) -> Result<Option<OwnedEventId>> {
    let Some(state_key) = &event.state_key else {
        return Ok(None);
    };
    let key = (event.kind.clone(), state_key.clone());
    let current = state_events(tx, room.state_group, std::slice::from_ref(&key)).await?;
    let Some(existing) = current.get(&key) else {
        return Ok(None);
    };
    let same_content = serde_json::from_str::<serde_json::Value>(existing.content.get())
        .is_ok_and(|content| content == event.content);
    Ok((existing.sender == sender && same_content).then(|| existing.event_id.clone()))
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}` and `PUT /rooms/{roomId}/send/
/// m.room.redaction/{txnId}` (and their `POST`s without a txnId, `txn` `None`):
/// the sender may redact their own events, or
/// others' with the `redact` power level ([`redaction::check`], the rule the
/// writer applies too). `content` is the redaction's (`reason`, ...).
pub async fn redact(
    app: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    target: &EventId,
    content: serde_json::Map<String, serde_json::Value>,
    txn: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::forbidden("Unknown room, or you are not in it"));
    };
    if let Some((device, txn_id)) = txn
        && let Some(existing) = rooms::txn_event(&mut *tx, sender.as_str(), device, txn_id).await?
    {
        // A retry, or a concurrent request with the same txnId that won the
        // lock first (looked up under the lock only: retries are rare, and
        // every send saves the round trip).
        return Ok(EventId::parse(existing).map_err(|e| anyhow::anyhow!("stored id: {e}"))?);
    }
    let not_found = || Error::not_found("Event not found");
    // Events of other rooms are "not found": their existence does not leak.
    let (original_room, original_sender) = redactions::origin(&mut *tx, target.as_str())
        .await?
        .filter(|(room, _)| room == room_id.as_str())
        .ok_or_else(not_found)?;
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.redaction".into(),
        content: serde_json::Value::Object(content),
        state_key: None,
        redacts: Some(target.to_owned()),
    };
    // Built and authorised first (the sender may not even be in the room), then
    // held to the redaction rule with the state before it.
    let built = prepare(&mut tx, app, &room, sender, event).await?;
    let original_room = RoomId::parse(original_room).map_err(|e| anyhow::anyhow!("{e}"))?;
    let original_sender = UserId::parse(original_sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    let power = power_levels_at(&mut tx, &room.rules, room.state_group).await?;
    match redaction::check(&built.pdu, &original_room, &original_sender, power.as_ref()) {
        Ok(grant) if grant.allows_local() => {}
        Err(Refusal::OtherRoom) => return Err(not_found()),
        Ok(_) | Err(Refusal::NoPower) => {
            return Err(Error::forbidden(Refusal::NoPower.to_string()));
        }
        Err(refusal) => return Err(Error::bad_json(refusal.to_string())),
    }
    let appended = persist(&mut tx, app, &mut room, built).await?;
    if let Some((device, txn_id)) = txn {
        rooms::insert_txn(
            &mut *tx,
            sender.as_str(),
            device,
            txn_id,
            appended.event_id.as_str(),
            app.clock.now_ms(),
        )
        .await?;
    }
    tx.commit().await?;
    release(room);
    Ok(appended.event_id)
}
