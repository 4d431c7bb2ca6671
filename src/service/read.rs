//! Reading rooms: state, single events, pagination and members, with history
//! visibility enforced on every path (spec: "History visibility").
//!
//! An event is visible to a user when, in the state after the event:
//! - `history_visibility` is `world_readable`; or
//! - the user's membership was `join`; or
//! - it is `shared` and the user is joined now; or
//! - it is `invited` and the user's membership was `invite` (or `join`): from
//!   the invite on, never before it.
//!
//! An event of another room is never visible through a room's viewer, and
//! redactions that were not applied (see `domain::redaction`) are withheld.
//!
//! Room state is readable by current members, by anyone in world-readable rooms,
//! and, for users who left or were banned, as it was when they left.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    DeviceId, RoomId, RoomVersionId, UserId,
    events::{AnyStateEvent, AnyTimelineEvent, room::member::RoomMemberEvent},
    room_version_rules::RoomVersionRules,
    serde::Raw,
};
use serde_json::{Value, json};

use super::{
    client_event::raw,
    event::RoomCtx,
    session::Session,
    tokens::{RoomPos, TopoToken},
};
use crate::{
    domain::{
        filter::{Candidate, EventFilter},
        pdu::Pdu,
    },
    error::{Error, Result},
    service::AppState,
    storage::{
        Postgres, Transaction, events, events::StoredEvent, federation as fed_store, redactions,
        rooms, state,
    },
};

/// The creators of a room: the create event's sender, plus `additional_creators`
/// in room versions that have them.
pub async fn creators(tx: &mut Transaction<'_, Postgres>, room: &RoomCtx) -> Result<Vec<String>> {
    let key = ("m.room.create".to_owned(), String::new());
    let state =
        super::event::state_events(tx, room.state_group, std::slice::from_ref(&key)).await?;
    Ok(state
        .get(&key)
        .map(|create| creators_of(create, &room.rules))
        .unwrap_or_default())
}

/// The room's creators named by its create event: the sender, and in room
/// versions that have them, the `additional_creators`.
pub fn creators_of(create: &Pdu, rules: &RoomVersionRules) -> Vec<String> {
    let mut creators = vec![create.sender.to_string()];
    if rules.authorization.additional_room_creators {
        let content: Value = serde_json::from_str(create.content.get()).unwrap_or_default();
        for c in content["additional_creators"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_str() {
                creators.push(c.to_owned());
            }
        }
    }
    creators
}

/// A room as one user reads it, from one device (whose transaction IDs its own
/// events show; `None` where no device asks, as for push notifications).
pub struct Viewer<'a> {
    app: &'a AppState,
    user: &'a UserId,
    device: Option<&'a DeviceId>,
    room_id: &'a RoomId,
    pub rules: RoomVersionRules,
    current_group: Option<i64>,
    /// The user's current membership.
    pub membership: Option<String>,
    /// Per state group: (history visibility, the user's membership then).
    seen: HashMap<i64, (String, Option<String>)>,
    /// Redactions looked up in `unapplied_redactions`: whether each is withheld.
    withheld: HashMap<String, bool>,
}

impl<'a> Viewer<'a> {
    /// `M_FORBIDDEN` for unknown rooms too, so room existence does not leak.
    pub async fn new(
        app: &'a AppState,
        user: &'a UserId,
        device: Option<&'a DeviceId>,
        room_id: &'a RoomId,
    ) -> Result<Self> {
        let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
            return Err(Error::forbidden("You are not allowed to view this room"));
        };
        let version = RoomVersionId::try_from(room.room_version.as_str())
            .map_err(|e| anyhow::anyhow!("stored room version: {e}"))?;
        let rules = version
            .rules()
            .ok_or_else(|| anyhow::anyhow!("unsupported stored version"))?;
        let membership = rooms::membership(&app.db, room_id.as_str(), user.as_str()).await?;
        Ok(Self {
            app,
            user,
            device,
            room_id,
            rules,
            current_group: room.current_state_group,
            membership,
            seen: HashMap::new(),
            withheld: HashMap::new(),
        })
    }

    /// The viewer for a signed-in device.
    pub async fn for_session(
        app: &'a AppState,
        session: &'a Session,
        room_id: &'a RoomId,
    ) -> Result<Self> {
        Self::new(app, &session.user_id, Some(&session.device_id), room_id).await
    }

    pub fn is_joined(&self) -> bool {
        self.membership.as_deref() == Some("join")
    }

    async fn visibility_at(&mut self, group: i64) -> Result<(String, Option<String>)> {
        if let Some(v) = self.seen.get(&group) {
            return Ok(v.clone());
        }
        self.prefetch(&[group]).await?;
        Ok(self.seen[&group].clone())
    }

    /// [`Self::prefetch`] for the state groups of a page of events.
    pub async fn prefetch_events(&mut self, events: &[StoredEvent]) -> Result<()> {
        let groups: Vec<i64> = events.iter().filter_map(|e| e.state_group).collect();
        self.prefetch(&groups).await?;
        let redactions: Vec<String> = events
            .iter()
            .filter(|e| e.event_type == "m.room.redaction")
            .filter(|e| !self.withheld.contains_key(&e.event_id))
            .map(|e| e.event_id.clone())
            .collect();
        self.prefetch_withheld(redactions).await
    }

    async fn prefetch_withheld(&mut self, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let unapplied = redactions::unapplied(&self.app.db, &ids).await?;
        for id in ids {
            let held = unapplied.contains(&id);
            self.withheld.insert(id, held);
        }
        Ok(())
    }

    /// Looks up the history visibility and the viewer's membership at every
    /// state group not seen yet, in two queries (not two per group): a
    /// timeline's events mostly sit at different groups.
    pub async fn prefetch(&mut self, groups: &[i64]) -> Result<()> {
        let mut missing: Vec<i64> = groups
            .iter()
            .copied()
            .filter(|g| !self.seen.contains_key(g))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let keys = [
            ("m.room.history_visibility".to_owned(), String::new()),
            ("m.room.member".to_owned(), self.user.to_string()),
        ];
        let entries = state::state_for_keys_at(&self.app.db, &missing, &keys).await?;
        let mut ids: Vec<String> = entries.iter().map(|(_, (_, id))| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let contents: HashMap<String, Value> = events::get_many(&self.app.db, &ids)
            .await?
            .into_iter()
            .map(|ev| {
                let json: Value = serde_json::from_str(&ev.json).unwrap_or_default();
                (ev.event_id, json["content"].clone())
            })
            .collect();
        for group in missing {
            self.seen.insert(group, ("shared".to_owned(), None));
        }
        for (group, ((kind, _), id)) in entries {
            let (Some(content), Some(seen)) = (contents.get(&id), self.seen.get_mut(&group)) else {
                continue;
            };
            match kind.as_str() {
                "m.room.history_visibility" => {
                    if let Some(v) = content["history_visibility"].as_str() {
                        seen.0 = v.to_owned();
                    }
                }
                "m.room.member" => {
                    seen.1 = content["membership"].as_str().map(str::to_owned);
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub async fn may_see(&mut self, event: &StoredEvent) -> Result<bool> {
        self.may_see_parts(
            &event.room_id,
            &event.event_id,
            &event.event_type,
            event.state_group,
        )
        .await
    }

    /// [`Self::may_see`] for an event known by its room, ID, type and state group.
    pub async fn may_see_parts(
        &mut self,
        room_id: &str,
        event_id: &str,
        event_type: &str,
        state_group: Option<i64>,
    ) -> Result<bool> {
        // Relations and thread roots name events by ID, from any room: a room's
        // viewer sees only that room's.
        if room_id != self.room_id.as_str() {
            return Ok(false);
        }
        let Some(group) = state_group else {
            return Ok(false);
        };
        if event_type == "m.room.redaction" {
            if !self.withheld.contains_key(event_id) {
                self.prefetch_withheld(vec![event_id.to_owned()]).await?;
            }
            if self.withheld[event_id] {
                return Ok(false);
            }
        }
        let (mut visibility, membership_then) = self.visibility_at(group).await?;
        // A change of history visibility is seen by whoever could see either
        // side of it: the more permissive of the old and new settings (as
        // Synapse), so members see where the boundaries moved.
        if event_type == "m.room.history_visibility" {
            let before = events::replaced_content(&self.app.db, event_id)
                .await?
                .and_then(|c| c["history_visibility"].as_str().map(str::to_owned));
            let before = before.unwrap_or_else(|| "shared".to_owned());
            if permissiveness(&before) < permissiveness(&visibility) {
                visibility = before;
            }
        }
        Ok(match visibility.as_str() {
            "world_readable" => true,
            "shared" => self.is_joined() || membership_then.as_deref() == Some("join"),
            // From the invite on only: joining later does not open what came
            // before it.
            "invited" => matches!(membership_then.as_deref(), Some("join" | "invite")),
            _ => membership_then.as_deref() == Some("join"),
        })
    }

    /// Whether the room's history is `world_readable` now.
    pub async fn world_readable_now(&mut self) -> Result<bool> {
        match self.current_group {
            Some(g) => Ok(self.visibility_at(g).await?.0 == "world_readable"),
            None => Ok(false),
        }
    }

    /// The state group this user may read room state at, or `M_FORBIDDEN`.
    pub async fn readable_state_group(&mut self) -> Result<i64> {
        let forbidden = || Error::forbidden("You are not allowed to view this room");
        if self.is_joined() || self.world_readable_now().await? {
            return self.current_group.ok_or_else(forbidden);
        }
        // A user who left reads the state as it was when they left; a banned
        // user reads nothing (as Synapse: a ban is not a departure).
        if self.membership.as_deref() == Some("leave") {
            let member = state::state_for_keys(
                &self.app.db,
                self.current_group.ok_or_else(forbidden)?,
                &[("m.room.member".to_owned(), self.user.to_string())],
            )
            .await?;
            if let Some((_, event_id)) = member.first()
                && let Some(ev) = events::get(&self.app.db, event_id).await?
                && let Some(group) = ev.state_group
            {
                return Ok(group);
            }
        }
        Err(forbidden())
    }

    /// Whether the user may page through history at all: anyone with a
    /// membership but a ban (as Synapse refuses banned users `/messages`,
    /// `/context` and the rest), or anyone at all in a world-readable room.
    pub async fn may_read_history(&mut self) -> Result<bool> {
        Ok(
            self.membership.is_some() && self.membership.as_deref() != Some("ban")
                || self.world_readable_now().await?,
        )
    }

    pub fn room_id(&self) -> &RoomId {
        self.room_id
    }

    pub fn user(&self) -> &'a UserId {
        self.user
    }

    pub fn device(&self) -> Option<&'a DeviceId> {
        self.device
    }

    pub fn app(&self) -> &'a AppState {
        self.app
    }

    /// The user's membership in a state group looked up before ([`Self::prefetch`]):
    /// `Some(None)` when they had none there.
    pub fn membership_at(&self, group: i64) -> Option<Option<&str>> {
        self.seen.get(&group).map(|(_, m)| m.as_deref())
    }

    /// The client form of stored events of this room, as this reader gets them
    /// (see [`super::client_event`]).
    pub async fn client_events(&mut self, stored: &[StoredEvent]) -> Result<Vec<Value>> {
        super::client_event::format(self, stored).await
    }
}

/// The content of the room's `event_type` state event (empty state key) in
/// state group `group`, or in its current state when `group` is `None`.
pub async fn state_content(
    app: &AppState,
    room_id: &RoomId,
    group: Option<i64>,
    event_type: &str,
) -> Result<Option<Value>> {
    let group = match group {
        Some(g) => Some(g),
        None => rooms::get(&app.db, room_id.as_str())
            .await?
            .and_then(|r| r.current_state_group),
    };
    let Some(group) = group else {
        return Ok(None);
    };
    let key = (event_type.to_owned(), String::new());
    let found = state::state_events_for_keys(&app.db, group, std::slice::from_ref(&key)).await?;
    Ok(found.into_iter().next().and_then(|(_, json)| {
        serde_json::from_str::<Value>(&json)
            .ok()
            .map(|e| e["content"].clone())
    }))
}

/// Rank of a history visibility setting, most permissive first (an unknown
/// value counts as `shared`, the spec's default).
fn permissiveness(visibility: &str) -> u8 {
    match visibility {
        "world_readable" => 0,
        "invited" => 2,
        "joined" => 3,
        _ => 1,
    }
}

/// The client form of an event of a room this server is not in (an invite
/// from another server, its rejection), whose room version is unknown here:
/// the fields as the PDU has them, nothing redacted.
pub fn plain_client_event(ev: &StoredEvent) -> Value {
    let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
    json!({
        "type": pdu["type"],
        "state_key": pdu["state_key"],
        "content": pdu["content"],
        "sender": pdu["sender"],
        "origin_server_ts": pdu["origin_server_ts"],
        "event_id": ev.event_id,
        "room_id": ev.room_id,
    })
}

/// The pre-r0 client format that the legacy endpoints (`/events`, the
/// `initialSync`s, `/events/{eventId}`) serve, as Synapse serves them: the
/// client event, plus `user_id` (the sender) and `age`, `prev_content`,
/// `redacted_because` and `replaces_state` copied up from `unsigned`.
pub fn legacy_format(mut event: Value) -> Value {
    if let Some(sender) = event.get("sender").cloned() {
        event["user_id"] = sender;
    }
    for key in ["age", "prev_content", "redacted_because", "replaces_state"] {
        if let Some(v) = event.get("unsigned").and_then(|u| u.get(key)).cloned() {
            event[key] = v;
        }
    }
    event
}

/// `GET /rooms/{roomId}/state`.
pub async fn room_state(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
) -> Result<Vec<Raw<AnyStateEvent>>> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    let group = viewer.readable_state_group().await?;
    let ids: Vec<String> = state::full_state(&app.db, group)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let stored = events::get_many(&app.db, &ids).await?;
    Ok(viewer
        .client_events(&stored)
        .await?
        .iter()
        .map(raw)
        .collect())
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`: the event (client form).
pub async fn state_event(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    event_type: &str,
    state_key: &str,
) -> Result<Value> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    let group = viewer.readable_state_group().await?;
    let found = state::state_for_keys(
        &app.db,
        group,
        &[(event_type.to_owned(), state_key.to_owned())],
    )
    .await?;
    let Some((_, event_id)) = found.into_iter().next() else {
        return Err(Error::not_found("Event not found"));
    };
    let stored = events::get_many(&app.db, &[event_id]).await?;
    viewer
        .client_events(&stored)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found("Event not found"))
}

/// `GET /rooms/{roomId}/event/{eventId}`.
pub async fn event(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    event_id: &str,
) -> Result<Value> {
    let not_found = || Error::not_found("Event not found");
    // An event the reader may not see is not found, whether the room is
    // unknown, its history hidden from them, or the event (as Synapse
    // answers): the same answer in every case, so it tells nothing apart.
    let mut viewer = match Viewer::for_session(app, reader, room_id).await {
        Err(Error::Matrix {
            kind: crate::error::ErrorKind::Forbidden,
            ..
        }) => return Err(not_found()),
        other => other?,
    };
    if !viewer.may_read_history().await? {
        return Err(not_found());
    }
    let stored = events::get(&app.db, event_id)
        .await?
        .ok_or_else(not_found)?;
    if stored.room_id != room_id.as_str() || stored.rejected || !viewer.may_see(&stored).await? {
        return Err(not_found());
    }
    let out = viewer.client_events(&[stored]).await?;
    out.into_iter().next().ok_or_else(not_found)
}

/// Whether a room event passes a filter (its content parsed only when the
/// filter needs it; a redacted event's content has no `url`).
pub fn filter_allows(filter: &EventFilter, ev: &StoredEvent) -> bool {
    let content = if filter.needs_content() && ev.redacted_by.is_none() {
        serde_json::from_str::<Value>(&ev.json)
            .ok()
            .map(|mut pdu| pdu["content"].take())
    } else {
        None
    };
    filter.allows(Candidate {
        event_type: &ev.event_type,
        sender: Some(&ev.sender),
        room_id: Some(&ev.room_id),
        content: content.as_ref(),
    })
}

pub struct Page {
    pub chunk: Vec<Raw<AnyTimelineEvent>>,
    /// The `from` token as given, or the room's edge.
    pub start: String,
    pub end: Option<TopoToken>,
    /// Member events for the senders in `chunk` (lazy loading).
    pub state: Vec<Raw<AnyStateEvent>>,
}

/// `GET /rooms/{roomId}/messages`.
///
/// `end` is omitted only when paging backwards reached the start of the room,
/// or when nothing at all lay past `from`. A forward page that reached the
/// newest event still gets one (clients continue from it once more arrives, and
/// Synapse gives one), and so does a page stopped by `to`.
#[allow(clippy::too_many_arguments)]
pub async fn messages(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    from: Option<&str>,
    to: Option<&str>,
    backwards: bool,
    limit: usize,
    lazy_load_members: bool,
    filter: &EventFilter,
) -> Result<Page> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    if !viewer.may_read_history().await? {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let from = match from {
        Some(token) => Some((token, RoomPos::parse(app, "from", token).await?)),
        None => None,
    };
    let to = match to {
        Some(token) => Some(RoomPos::parse(app, "to", token).await?),
        None => None,
    };
    let (start, mut cursor) = match from {
        Some((token, pos)) => (token.to_owned(), pos),
        None => {
            // The room's edge: after its newest event, or before its first.
            let edge = if backwards {
                let (depth, stream) = events::room_end(&app.db, room_id.as_str()).await?;
                TopoToken { depth, stream }
            } else {
                TopoToken {
                    depth: 0,
                    stream: 0,
                }
            };
            (edge.to_string(), RoomPos::Topo(edge))
        }
    };
    let limit = limit.clamp(1, 1000);
    // Message-like events of users the reader ignores are left out (spec:
    // "Ignoring Users"); state events are not.
    let ignored = super::account_data::ignored_users(app, &reader.user_id).await?;
    let mut chunk_events = Vec::new();
    let mut scanned_any = false;
    // Reached the start of the room going backwards: no `end`.
    let mut at_start = false;
    let batch_size = (limit * 2) as i64;
    // Backfill requests one page may make.
    const MAX_BACKFILLS: usize = 3;
    let mut backfills = 0;
    // Gaps in the middle of the timeline this page tried to fill.
    let mut gap_state = GapFills::of_room(app, room_id).await?;
    // A page that starts just below an event with a gap before it (the last
    // page ended there) starts by filling it.
    if backwards && let RoomPos::Topo(t) = cursor {
        let at = (t.depth, t.stream.saturating_add(1));
        let gaps = gap_state.gaps_between(app, room_id, at).await?;
        fill_gaps(app, room_id, &gaps, to, &mut gap_state).await?;
    }
    // Fetch in batches until `limit` visible events, the `to` token or the room's end.
    'fill: loop {
        let by_stream = matches!(cursor, RoomPos::Stream(_));
        let batch = match cursor {
            // `page` bounds are exclusive event positions: the gap after
            // (d, s) going backwards is "below (d, s + 1)". Parsed and issued
            // streams are at most the stream's head, so `+ 1` cannot overflow.
            RoomPos::Topo(t) => {
                let stream = if backwards { t.stream + 1 } else { t.stream };
                events::page(
                    &app.db,
                    room_id.as_str(),
                    t.depth,
                    stream,
                    backwards,
                    batch_size,
                )
                .await?
            }
            RoomPos::Stream(s) => {
                events::page_by_stream(&app.db, room_id.as_str(), s, backwards, batch_size).await?
            }
        };
        // Gaps in the middle of the timeline just before events of this
        // batch (issue #20): filled when the page reaches them (going back,
        // after the event; going forward, before it).
        let gaps = gap_state.gaps_at(app, room_id, &batch).await?;
        let fetched = batch.len() as i64;
        let mut scanned_batch = false;
        viewer.prefetch_events(&batch).await?;
        for ev in batch {
            // Past `to`: the page ends here, with a token to go on from.
            if to.is_some_and(|to| to.holds_event(&ev) == backwards) {
                break 'fill;
            }
            let gap = gaps.get(&ev.event_id);
            // Going forward, a gap just before this event (within `to`, as
            // the event is) is filled before it is read, and the page reads
            // on from where it stands with the gap's events in place.
            if !backwards
                && let Some(gap) = gap
                && fill_gaps(
                    app,
                    room_id,
                    std::slice::from_ref(gap),
                    None,
                    &mut gap_state,
                )
                .await?
            {
                continue 'fill;
            }
            scanned_any = true;
            scanned_batch = true;
            cursor = RoomPos::Topo(if backwards {
                TopoToken::before(&ev)
            } else {
                TopoToken::after(&ev)
            });
            // The reader's own membership events are theirs to see (their
            // leave above all, which history visibility after it would hide;
            // as Synapse's filter, and as `/sync`'s leave section shows it).
            let own_membership = ev.event_type == "m.room.member"
                && ev.state_key.as_deref() == Some(reader.user_id.as_str());
            if filter_allows(filter, &ev)
                && !(ev.state_key.is_none() && ignored.contains(&ev.sender))
                && (own_membership || viewer.may_see(&ev).await?)
            {
                chunk_events.push(ev);
                if chunk_events.len() == limit {
                    break 'fill;
                }
            }
            // The page goes on past an event with a gap before it: the gap's
            // events are asked for, and the page reads on from just before
            // that event with them in place. A gap that stays open is passed
            // over, and the page returns what is held.
            if backwards
                && let Some(gap) = gap
                && fill_gaps(app, room_id, std::slice::from_ref(gap), to, &mut gap_state).await?
            {
                continue 'fill;
            }
        }
        if fetched < batch_size {
            // A batch bounded by stream ordering is done; what lies beyond its
            // last event in topological order is looked at once more.
            if by_stream && scanned_batch {
                continue;
            }
            // At the start of what we hold: a room joined over federation may
            // have history on other servers.
            if backwards
                && to.is_none()
                && backfills < MAX_BACKFILLS
                && super::federation::backfill::backfill(app, room_id).await?
            {
                backfills += 1;
                continue;
            }
            at_start = backwards;
            break;
        }
    }
    let chunk = viewer.client_events(&chunk_events).await?;
    let state = if lazy_load_members && !chunk_events.is_empty() {
        lazy_members(app, &mut viewer, &chunk_events).await?
    } else {
        Vec::new()
    };
    let end = match cursor {
        RoomPos::Topo(t) if scanned_any && !at_start => Some(t),
        _ => None,
    };
    Ok(Page {
        chunk: chunk.iter().map(raw).collect(),
        start,
        end,
        state: state.iter().map(raw).collect(),
    })
}

/// How many gaps one `/messages` page (or one side of `/context`) may try to
/// fill (each one `/backfill` round, possibly with `/state_ids` and
/// `/event_auth`).
pub(super) const MAX_GAP_FILLS: usize = 3;

/// The gaps a page tried to fill.
#[derive(Default)]
pub(super) struct GapFills {
    pub(super) fills: usize,
    tried: std::collections::HashSet<String>,
    /// Every gap of the room, when one look-up at the start of the page found
    /// them all (most rooms have none): the page's look-ups are answered from
    /// it, without a statement each. Dropped once a fill is tried, as a fill
    /// closes gaps and may open others.
    known: Option<Vec<fed_store::Gap>>,
}

/// The most gaps [`fed_store::gaps_between`] returns at once.
const GAPS_PER_LOOKUP: usize = 20;

impl GapFills {
    /// A page's gap state, with the room's gaps looked up once.
    pub(super) async fn of_room(app: &AppState, room_id: &RoomId) -> Result<Self> {
        let all =
            fed_store::gaps_between(&app.db, room_id.as_str(), None, (i64::MAX, i64::MAX)).await?;
        Ok(Self {
            known: (all.len() < GAPS_PER_LOOKUP).then_some(all),
            ..Self::default()
        })
    }

    /// The gap just before the event at `at` (depth, stream ordering).
    async fn gaps_between(
        &self,
        app: &AppState,
        room_id: &RoomId,
        at: (i64, i64),
    ) -> Result<Vec<fed_store::Gap>> {
        Ok(match &self.known {
            Some(known) => known
                .iter()
                .filter(|g| (g.depth, g.stream_ordering) == at)
                .cloned()
                .collect(),
            None => fed_store::gaps_between(&app.db, room_id.as_str(), Some(at), at).await?,
        })
    }

    /// The gaps just before events of `batch`, by the event naming them;
    /// none once the page has used its fills.
    pub(super) async fn gaps_at(
        &self,
        app: &AppState,
        room_id: &RoomId,
        batch: &[events::StoredEvent],
    ) -> Result<HashMap<String, fed_store::Gap>> {
        if self.fills >= MAX_GAP_FILLS {
            return Ok(HashMap::new());
        }
        if let Some(known) = &self.known {
            let ids: std::collections::HashSet<&str> =
                batch.iter().map(|e| e.event_id.as_str()).collect();
            return Ok(known
                .iter()
                .filter(|g| ids.contains(g.event_id.as_str()))
                .map(|g| (g.event_id.clone(), g.clone()))
                .collect());
        }
        let ids: Vec<String> = batch.iter().map(|e| e.event_id.clone()).collect();
        Ok(fed_store::gaps_at(&app.db, room_id.as_str(), &ids)
            .await?
            .into_iter()
            .map(|g| (g.event_id.clone(), g))
            .collect())
    }
}

/// Tries to fill `gaps` (newest first) until one fills, each at most once per
/// page and none past `to` nor in its backoff; returns whether one did.
pub(super) async fn fill_gaps(
    app: &AppState,
    room_id: &RoomId,
    gaps: &[fed_store::Gap],
    to: Option<RoomPos>,
    state: &mut GapFills,
) -> Result<bool> {
    for gap in gaps {
        if state.fills >= MAX_GAP_FILLS {
            break;
        }
        // A gap before an event at or past `to` lies beyond the page; one
        // whose last fill failed waits out its backoff.
        if to.is_some_and(|to| to.holds(gap.depth, gap.stream_ordering))
            || gap.next_try_ts > app.clock.now_ms()
            || !state.tried.insert(gap.event_id.clone())
        {
            continue;
        }
        state.fills += 1;
        state.known = None;
        if super::federation::backfill::fill_gap(app, room_id, gap).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The member events of the chunk's senders, as of the newest event in the chunk.
async fn lazy_members(
    app: &AppState,
    viewer: &mut Viewer<'_>,
    chunk: &[StoredEvent],
) -> Result<Vec<Value>> {
    let Some(group) = chunk
        .iter()
        .max_by_key(|e| (e.depth, e.stream_ordering))
        .and_then(|e| e.state_group)
    else {
        return Ok(Vec::new());
    };
    let mut senders: Vec<(String, String)> = chunk
        .iter()
        .map(|e| ("m.room.member".to_owned(), e.sender.clone()))
        .collect();
    senders.sort();
    senders.dedup();
    let ids: Vec<String> = state::state_for_keys(&app.db, group, &senders)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let stored = events::get_many(&app.db, &ids).await?;
    viewer.client_events(&stored).await
}

/// `GET /rooms/{roomId}/members`: member events, optionally filtered; with `at`
/// (a `prev_batch` or `next_batch` of `/sync`, or a `/messages` token), as of
/// that position. Where the user may not see that point of the room's history,
/// the state they may read now.
pub async fn members(
    app: &AppState,
    reader: &Session,
    room_id: &RoomId,
    at: Option<&str>,
    membership: Option<&str>,
    not_membership: Option<&str>,
) -> Result<Vec<Raw<RoomMemberEvent>>> {
    let mut viewer = Viewer::for_session(app, reader, room_id).await?;
    // A room joined with partial state: wait for the full member list (as
    // Synapse does), for a while; then answer from what is known.
    crate::service::federation::partial_state::wait_for_full_state(
        app,
        room_id,
        crate::service::federation::partial_state::MEMBERS_WAIT,
    )
    .await;
    let mut group = viewer.readable_state_group().await?;
    if let Some(at) = at {
        // The state after the newest event at or before the position (by
        // stream ordering for a sync token, as Synapse does), if the user may
        // see it; none before the room's first event.
        let before = match RoomPos::parse(app, "at", at).await? {
            RoomPos::Topo(t) => {
                events::page(&app.db, room_id.as_str(), t.depth, t.stream + 1, true, 1).await?
            }
            RoomPos::Stream(s) => events::newest_at_stream(&app.db, room_id.as_str(), s)
                .await?
                .into_iter()
                .collect(),
        };
        let Some(ev) = before.first() else {
            return Ok(Vec::new());
        };
        if viewer.may_see(ev).await?
            && let Some(g) = ev.state_group
        {
            group = g;
        }
    }
    let ids: Vec<String> = state::full_state(&app.db, group)
        .await?
        .into_iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|(_, id)| id)
        .collect();
    let stored = events::get_many(&app.db, &ids).await?;
    let all = viewer.client_events(&stored).await?;
    Ok(all
        .into_iter()
        .filter(|ev| {
            let m = ev["content"]["membership"].as_str().unwrap_or_default();
            membership.is_none_or(|want| m == want) && not_membership.is_none_or(|not| m != not)
        })
        .map(|ev| raw(&ev))
        .collect())
}

/// A joined member in `/joined_members`: both keys always there, `null` when
/// unset (as Synapse answers; SyTest's "/joined_members return joined
/// members" wants the keys).
#[derive(Debug, serde::Serialize)]
pub struct JoinedMember {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// `GET /rooms/{roomId}/joined_members`: only for members, and (as Synapse
/// allows it, bridges rely on it) for an application service when one of the
/// joined members is its sender or in its user namespace.
pub async fn joined_members(
    app: &AppState,
    user: &UserId,
    appservice: Option<&crate::domain::appservice::Registration>,
    room_id: &RoomId,
) -> Result<BTreeMap<String, JoinedMember>> {
    let viewer = Viewer::new(app, user, None, room_id).await?;
    let joined = rooms::joined_profiles(&app.db, room_id.as_str()).await?;
    let allowed = viewer.is_joined()
        || appservice.is_some_and(|reg| {
            joined
                .iter()
                .any(|(member, _, _)| reg.is_interested_in_user(member))
        });
    if !allowed {
        return Err(Error::forbidden("You are not in this room"));
    }
    Ok(joined
        .into_iter()
        .map(|(user, display_name, avatar_url)| {
            (
                user,
                JoinedMember {
                    display_name,
                    avatar_url,
                },
            )
        })
        .collect())
}

pub async fn joined_rooms(app: &AppState, user: &UserId) -> Result<Vec<String>> {
    Ok(rooms::rooms_for_user(&app.db, user.as_str(), "join").await?)
}

/// The room an event we hold belongs to (no visibility check: callers check).
pub async fn room_of_event(app: &AppState, event_id: &str) -> Result<Option<ruma::OwnedRoomId>> {
    Ok(crate::storage::events::get(&app.db, event_id)
        .await?
        .and_then(|e| ruma::OwnedRoomId::try_from(e.room_id).ok()))
}
