//! `GET /events`: the event stream of the pre-`/sync` API (spec: "Syncing",
//! deprecated since r0) and its peeking form with `room_id` (spec: "Room
//! Previews"). Kept because Synapse serves it and older clients (and SyTest's
//! own fixtures) still use it.
//!
//! Tokens are `/sync`'s [`SyncToken`]s, so a token from `/sync`, `/initialSync`
//! or a room's `initialSync` continues here. A call returns what happened in
//! `(from, now]`, oldest first, and long-polls on the notifier (and the typing
//! serial) like `/sync` when nothing has:
//! - room events of the rooms the user is joined to (or of `room_id` only),
//!   each held to history visibility by [`Viewer`], plus the user's own
//!   membership changes in other rooms (invites, leaves), in this API's
//!   format ([`legacy_format`]);
//! - `m.presence` of the user and users sharing a room with them (of the room's
//!   members when `room_id` is given), with `content.user_id` as this API has it;
//! - `m.typing` and `m.receipt`, each with its `room_id`;
//! - account data, global and per room (`room_id`), tags included; not when
//!   streaming a single room.
//!
//! At most `limit` room events come back; when there were more, the returned
//! `end` stops at the last one given, and everything else on the stream is cut
//! there too, so the next call continues without a gap or a repeat.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use super::{
    presence,
    read::{Viewer, legacy_format, plain_client_event},
    receipts,
    session::Session,
    sync::SyncToken,
};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{events::StoredEvent, presence as presence_rows, rooms, sync as rows, user_streams},
};

/// The longest a call waits.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Params {
    pub from: Option<SyncToken>,
    pub timeout: Duration,
    /// Room events per call, at least 1.
    pub limit: usize,
    pub room_id: Option<OwnedRoomId>,
}

/// Which rooms a call streams.
enum Scope {
    /// The user's joined rooms, read again on every pass (joins and leaves
    /// while waiting count).
    Joined,
    /// One room: joined, or peeked (world-readable, not joined). What a
    /// peeking user may see of it is [`Viewer`]'s to say, event by event.
    Room(OwnedRoomId),
}

pub async fn events(app: &AppState, session: &Session, params: &Params) -> Result<Value> {
    let scope = match &params.room_id {
        None if session.is_guest => {
            return Err(Error::new(
                ErrorKind::MissingParam,
                "Guests must give a room_id",
            ));
        }
        None => Scope::Joined,
        Some(room_id) => {
            let mut viewer = Viewer::for_session(app, session, room_id).await?;
            if !viewer.is_joined() && !viewer.world_readable_now().await? {
                return Err(Error::forbidden(
                    "You are not joined to this room and it is not world-readable",
                ));
            }
            Scope::Room(room_id.clone())
        }
    };
    if !session.is_guest {
        // Streaming keeps the user online, as syncing does.
        presence::on_sync(app, &session.user_id, "online").await?;
    }

    let deadline = Instant::now() + params.timeout.min(MAX_TIMEOUT);
    let mut wake = app.notifier.subscribe();
    let mut typing_wake = app.typing.subscribe();
    let published = app.notifier.current();
    let from = match params.from {
        Some(from) if from.stream > published => {
            return Err(Error::invalid_param("Invalid from token"));
        }
        Some(from) => from,
        None => SyncToken {
            stream: published,
            typing: app.typing.current(),
            to_device: 0,
        },
    };
    loop {
        wake.borrow_and_update();
        typing_wake.borrow_and_update();
        let now = app.notifier.current();
        let typing_now = app.typing.current();
        let (chunk, end) =
            window(app, session, &scope, params.limit, from, now, typing_now).await?;
        if !chunk.is_empty() || Instant::now() >= deadline {
            return Ok(json!({
                "chunk": chunk,
                "start": from.to_string(),
                "end": end.to_string(),
            }));
        }
        if app.notifier.current() != now || app.typing.current() != typing_now {
            continue;
        }
        // Woken or timed out, the next pass answers with what is there then.
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = app.notifier.wait(&mut wake, remaining) => {}
            _ = typing_wake.changed() => {}
        }
    }
}

/// What `(from, now]` holds for the user, and the token after it.
async fn window(
    app: &AppState,
    session: &Session,
    scope: &Scope,
    limit: usize,
    from: SyncToken,
    now: i64,
    typing_now: u64,
) -> Result<(Vec<Value>, SyncToken)> {
    let user = session.user_id.as_str();
    // The rooms streamed, and the user's own membership events in the window
    // in rooms not streamed (an invite, a leave).
    let (rooms, own) = match scope {
        Scope::Joined => {
            let (joined, other): (Vec<_>, Vec<_>) = rows::memberships(&app.db, user)
                .await?
                .into_iter()
                .partition(|m| m.membership == "join");
            let own: Vec<String> = other
                .into_iter()
                .filter(|m| m.stream_ordering > from.stream && m.stream_ordering <= now)
                .map(|m| m.event_id)
                .collect();
            (joined.into_iter().map(|m| m.room_id).collect(), own)
        }
        Scope::Room(room_id) => (vec![room_id.to_string()], Vec::new()),
    };

    // Their events in stream order, at most `limit`.
    let mut stored =
        rows::events_in_rooms(&app.db, &rooms, from.stream, now, limit as i64 + 1).await?;
    if !own.is_empty() {
        stored.extend(crate::storage::events::get_many(&app.db, &own).await?);
        stored.sort_by_key(|e| e.stream_ordering);
    }
    let upto = if stored.len() > limit {
        stored.truncate(limit);
        stored.last().map_or(now, |e| e.stream_ordering)
    } else {
        now
    };

    let mut chunk = room_events(app, session, &stored).await?;

    let at = app.clock.now_ms();
    let presence_rows = if matches!(scope, Scope::Room(_)) {
        let members: Vec<String> = rooms::members(&app.db, &rooms[0], "join")
            .await?
            .into_iter()
            .map(|(user, _)| user)
            .collect();
        presence_rows::changes_of(&app.db, &members, from.stream, upto).await?
    } else {
        presence_rows::visible_changes(&app.db, user, from.stream, upto).await?
    };
    chunk.extend(presence_rows.iter().map(|p| presence::legacy_event(p, at)));

    for (room, users) in app.typing.changed_since(&rooms, from.typing) {
        chunk
            .push(json!({ "type": "m.typing", "room_id": room, "content": { "user_ids": users } }));
    }
    let receipts = receipts::contents(
        user_streams::receipts_since(&app.db, &rooms, from.stream, upto).await?,
        &session.user_id,
    );
    for (room, content) in receipts {
        chunk.push(json!({ "type": "m.receipt", "room_id": room, "content": content }));
    }

    if matches!(scope, Scope::Joined) {
        for row in user_streams::account_data_since(&app.db, user, from.stream, upto).await? {
            let content: Value = serde_json::from_str(&row.content).unwrap_or_default();
            let mut event = json!({ "type": row.data_type, "content": content });
            if !row.room_id.is_empty() {
                event["room_id"] = row.room_id.into();
            }
            chunk.push(event);
        }
    }

    Ok((
        chunk,
        SyncToken {
            stream: upto,
            typing: typing_now,
            to_device: from.to_device,
        },
    ))
}

/// The client form of the events the user may see, in the order given. Their
/// own membership events are always theirs to see (an invite, their leave).
async fn room_events(
    app: &AppState,
    session: &Session,
    stored: &[StoredEvent],
) -> Result<Vec<Value>> {
    let mut room_ids: Vec<OwnedRoomId> = Vec::new();
    for ev in stored {
        if !room_ids.iter().any(|r| r.as_str() == ev.room_id) {
            room_ids.push(
                RoomId::parse(&ev.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?,
            );
        }
    }
    let mut viewers: HashMap<&str, Viewer<'_>> = HashMap::new();
    for room_id in &room_ids {
        if rooms::get(&app.db, room_id.as_str()).await?.is_some() {
            let mut viewer = Viewer::for_session(app, session, room_id).await?;
            let of_room: Vec<StoredEvent> = stored
                .iter()
                .filter(|e| e.room_id == room_id.as_str())
                .cloned()
                .collect();
            viewer.prefetch_events(&of_room).await?;
            viewers.insert(room_id.as_str(), viewer);
        }
    }
    let mut out = Vec::with_capacity(stored.len());
    for ev in stored {
        let own_membership = ev.event_type == "m.room.member"
            && ev.state_key.as_deref() == Some(session.user_id.as_str());
        let Some(viewer) = viewers.get_mut(ev.room_id.as_str()) else {
            // An invite to, or a rejection in, a room this server is not in.
            if own_membership {
                out.push(legacy_format(plain_client_event(ev)));
            }
            continue;
        };
        if own_membership || viewer.may_see(ev).await? {
            out.extend(
                viewer
                    .client_events(std::slice::from_ref(ev))
                    .await?
                    .into_iter()
                    .map(legacy_format),
            );
        }
    }
    Ok(out)
}
