//! What another server may read of a room (spec: "History visibility", applied
//! to servers: an event is visible to a server when it is visible to any of that
//! server's users). Every federation read — `/event`, `/state`, `/state_ids`,
//! `/backfill`, `/get_missing_events`, `/event_auth`, `/timestamp_to_event` —
//! goes through a [`ServerView`].
//!
//! At an event (the room's state after it):
//! - `world_readable`: visible;
//! - one of the server's users was joined: visible;
//! - `shared`: visible when one of the server's users is joined now;
//! - `invited`: visible when one of the server's users was invited;
//! - otherwise (`joined`, unknown values fall back to `shared`): not visible.
//!
//! Outliers (auth and state events held without state of their own) are
//! visible to servers with a joined user when they are state events.
//!
//! Reading the graph around events (state, auth chains, backfill, missing
//! events) also needs a joined user now, as Synapse requires.

use std::collections::HashMap;

use ruma::{RoomId, ServerName};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, events::StoredEvent, rooms, state, users},
};

pub struct ServerView<'a> {
    app: &'a AppState,
    /// The server's users with a membership in the room, and which it is now.
    users: Vec<(String, String)>,
    /// Per state group: whether the server may see events at it.
    seen: HashMap<i64, bool>,
}

impl<'a> ServerView<'a> {
    /// The room as `server` may read it; `M_FORBIDDEN` when the room's server
    /// ACL denies the server, `M_NOT_FOUND` for rooms we do not know.
    pub async fn new(app: &'a AppState, server: &ServerName, room_id: &RoomId) -> Result<Self> {
        if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        super::acl::check(app, room_id.as_str(), server.as_str()).await?;
        let users = rooms::members_of_server(&app.db, room_id.as_str(), server.as_str()).await?;
        Ok(Self {
            app,
            users,
            seen: HashMap::new(),
        })
    }

    /// Whether one of the server's users is joined now.
    pub fn in_room(&self) -> bool {
        self.users.iter().any(|(_, m)| m == "join")
    }

    /// `403 M_FORBIDDEN` unless one of the server's users is joined now.
    pub fn require_in_room(&self) -> Result<()> {
        if self.in_room() {
            Ok(())
        } else {
            Err(Error::forbidden("Your server is not in this room"))
        }
    }

    /// Whether the server may see each event (same order).
    pub async fn visible(&mut self, stored: &[StoredEvent]) -> Result<Vec<bool>> {
        let groups: Vec<i64> = stored.iter().filter_map(|e| e.state_group).collect();
        self.prefetch(&groups).await?;
        let in_room = self.in_room();
        Ok(stored
            .iter()
            .map(|e| match e.state_group {
                Some(g) => self.seen[&g],
                // An outlier (an auth or state event held without its own
                // state, from a join through another server): state is what
                // joined servers read anyway.
                None => in_room && e.state_key.is_some(),
            })
            .collect())
    }

    /// Whether the server may receive each event whole where the graph is
    /// walked (`/backfill`, `/get_missing_events`): visible, and not sent by a
    /// user who asked for erasure (those go out redacted, as Synapse sends them;
    /// spec: "Account deactivation").
    pub async fn whole(&mut self, stored: &[StoredEvent]) -> Result<Vec<bool>> {
        let visible = self.visible(stored).await?;
        let mut senders: Vec<String> = stored.iter().map(|e| e.sender.clone()).collect();
        senders.sort_unstable();
        senders.dedup();
        let erased = users::erased_among(&self.app.db, &senders).await?;
        Ok(stored
            .iter()
            .zip(visible)
            .map(|(e, v)| v && !erased.contains(&e.sender))
            .collect())
    }

    /// Whether the server may see one event.
    pub async fn may_see(&mut self, stored: &StoredEvent) -> Result<bool> {
        Ok(self.visible(std::slice::from_ref(stored)).await?[0])
    }

    /// The history visibility and the server's users' memberships at every
    /// state group not judged yet, in two queries.
    async fn prefetch(&mut self, groups: &[i64]) -> Result<()> {
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
        let mut keys = vec![("m.room.history_visibility".to_owned(), String::new())];
        keys.extend(
            self.users
                .iter()
                .map(|(u, _)| ("m.room.member".to_owned(), u.clone())),
        );
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
        // (visibility, memberships of the server's users) per group.
        let mut at: HashMap<i64, (String, Vec<String>)> = missing
            .iter()
            .map(|g| (*g, ("shared".to_owned(), Vec::new())))
            .collect();
        for (group, ((kind, _), id)) in entries {
            let (Some(content), Some(entry)) = (contents.get(&id), at.get_mut(&group)) else {
                continue;
            };
            match kind.as_str() {
                "m.room.history_visibility" => {
                    if let Some(v) = content["history_visibility"].as_str() {
                        entry.0 = v.to_owned();
                    }
                }
                _ => entry
                    .1
                    .extend(content["membership"].as_str().map(str::to_owned)),
            }
        }
        let in_room = self.in_room();
        for (group, (visibility, memberships)) in at {
            let was = |m: &str| memberships.iter().any(|x| x == m);
            let visible = match visibility.as_str() {
                "world_readable" => true,
                _ if was("join") => true,
                "invited" => was("invite"),
                "joined" => false,
                // `shared`, and values we do not understand (spec: as shared).
                _ => in_room,
            };
            self.seen.insert(group, visible);
        }
        Ok(())
    }
}

/// The PDU a server receives for an event it may not see, where the graph must
/// stay connected (`/backfill`, `/get_missing_events`): the redacted form, as
/// Synapse sends.
pub fn redacted_pdu(rules: &ruma::room_version_rules::RoomVersionRules, pdu: Value) -> Value {
    let Ok(ruma::CanonicalJsonValue::Object(object)) = ruma::CanonicalJsonValue::try_from(pdu)
    else {
        return Value::Null;
    };
    match ruma::canonical_json::redact(object, &rules.redaction, None) {
        Ok(redacted) => serde_json::to_value(redacted).unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

/// `/timestamp_to_event` for `origin`: the event closest to `ts` in `dir`
/// (backwards or not), if `origin` is in the room and may see it.
pub async fn closest_to_ts(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    ts: i64,
    backwards: bool,
) -> Result<Option<(String, i64)>> {
    let mut view = ServerView::new(app, origin, room_id).await?;
    view.require_in_room()?;
    let Some((event_id, origin_server_ts)) =
        events::closest_to_ts(&app.db, room_id.as_str(), ts, backwards).await?
    else {
        return Ok(None);
    };
    let Some(stored) = events::get(&app.db, &event_id).await? else {
        return Ok(None);
    };
    Ok(view
        .may_see(&stored)
        .await?
        .then_some((event_id, origin_server_ts)))
}
