//! `GET /initialSync` (spec: "Syncing", deprecated since r0) and
//! `GET /rooms/{roomId}/initialSync` (spec: "Getting events for a room", and
//! "Room Previews" for rooms the user has not joined): snapshots of the pre-
//! `/sync` API, which Synapse still serves. Their `end` tokens are `/sync`
//! tokens, so `GET /events` continues from them.
//!
//! A room's snapshot, for a member, is its current state and newest messages;
//! for a user who left (or was banned), the state and messages up to their
//! leave; for anyone else, when the room is world-readable, what a peeking
//! user may see. Every message goes through [`Viewer`], as `/messages` does.
//! Events are in this API's format ([`legacy_format`]).

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::{
    presence,
    read::{Viewer, legacy_format, plain_client_event},
    receipts,
    session::Session,
    sync::SyncToken,
    tokens::TopoToken,
};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, presence as presence_rows, rooms, state, sync as rows, user_streams},
};

/// Messages per room at most.
pub const MAX_LIMIT: usize = 1000;

/// `GET /initialSync`: every room the user is invited to or joined (and left,
/// with `archived`), with global account data, presence and receipts.
pub async fn all_rooms(
    app: &AppState,
    session: &Session,
    limit: usize,
    archived: bool,
) -> Result<Value> {
    let user = &session.user_id;
    // A client starting the legacy event stream is online, as with /events
    // (so a new user sees their own presence, with `last_active_ago`).
    presence::on_sync(app, user, "online").await?;
    let now = app.notifier.current();
    let typing_now = app.typing.current();
    let memberships = rows::memberships(&app.db, user.as_str()).await?;
    let account_data = user_streams::account_data_since(&app.db, user.as_str(), 0, now).await?;
    let mut joined = Vec::new();
    let mut out = Vec::new();
    for m in memberships {
        if m.stream_ordering > now {
            continue;
        }
        let room_id =
            RoomId::parse(&m.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
        let mut room = json!({
            "room_id": m.room_id,
            "membership": m.membership,
            "visibility": visibility(app, &room_id).await?,
        });
        match m.membership.as_str() {
            "invite" => {
                if let Some(invite) = events::get(&app.db, &m.event_id).await? {
                    room["inviter"] = invite.sender.clone().into();
                    room["invite"] = match rooms::get(&app.db, &m.room_id).await? {
                        Some(_) => {
                            let mut viewer = Viewer::for_session(app, session, &room_id).await?;
                            viewer
                                .client_events(&[invite])
                                .await?
                                .into_iter()
                                .next()
                                .map(legacy_format)
                                .unwrap_or_default()
                        }
                        None => legacy_format(plain_client_event(&invite)),
                    };
                }
            }
            "join" => {
                let mut viewer = Viewer::for_session(app, session, &room_id).await?;
                let end = SyncToken {
                    stream: now,
                    typing: typing_now,
                    to_device: 0,
                };
                fill(app, user, &mut viewer, &mut room, limit, now, end).await?;
                joined.push(m.room_id.clone());
            }
            "leave" if archived && rooms::get(&app.db, &m.room_id).await?.is_some() => {
                let mut viewer = Viewer::for_session(app, session, &room_id).await?;
                let end = SyncToken {
                    stream: m.stream_ordering,
                    typing: 0,
                    to_device: 0,
                };
                fill(
                    app,
                    user,
                    &mut viewer,
                    &mut room,
                    limit,
                    m.stream_ordering,
                    end,
                )
                .await?;
            }
            _ => continue,
        }
        room["account_data"] = room_account_data(&account_data, &m.room_id).into();
        out.push(room);
    }

    let at = app.clock.now_ms();
    let mut presence: Vec<Value> = presence_rows::visible_changes(&app.db, user.as_str(), 0, now)
        .await?
        .iter()
        .filter(|p| p.user_id == user.as_str() || !presence::is_offline(p, at))
        .map(|p| presence::legacy_event(p, at))
        .collect();
    if !presence.iter().any(|p| p["sender"] == user.as_str()) {
        presence.push(presence::legacy_offline(user.as_str()));
    }
    let receipts: Vec<Value> = receipts::contents(
        user_streams::receipts_since(&app.db, &joined, 0, now).await?,
        user,
    )
    .into_iter()
    .map(|(room, content)| json!({ "type": "m.receipt", "room_id": room, "content": content }))
    .collect();
    let global: Vec<Value> = account_data
        .iter()
        .filter(|row| row.room_id.is_empty())
        .map(|row| {
            json!({
                "type": row.data_type,
                "content": serde_json::from_str::<Value>(&row.content).unwrap_or_default(),
            })
        })
        .collect();
    Ok(json!({
        "rooms": out,
        "presence": presence,
        "account_data": global,
        "receipts": receipts,
        "end": SyncToken { stream: now, typing: typing_now, to_device: 0 }.to_string(),
    }))
}

/// `GET /rooms/{roomId}/initialSync`: a member's (or former member's) snapshot
/// of the room, or a peek into a world-readable room; `M_FORBIDDEN` otherwise.
pub async fn room(
    app: &AppState,
    session: &Session,
    room_id: &RoomId,
    limit: usize,
) -> Result<Value> {
    let user = &session.user_id;
    let mut viewer = Viewer::for_session(app, session, room_id).await?;
    let now = app.notifier.current();
    let mut room = json!({ "room_id": room_id });
    let membership = viewer.membership.clone();
    match membership.as_deref() {
        Some(m @ ("leave" | "ban")) => {
            let left_at = match rows::memberships(&app.db, user.as_str())
                .await?
                .into_iter()
                .find(|r| r.room_id == room_id.as_str())
            {
                Some(r) => r.stream_ordering,
                None => return Err(Error::forbidden("You are not allowed to view this room")),
            };
            let end = SyncToken {
                stream: left_at,
                typing: 0,
                to_device: 0,
            };
            fill(app, user, &mut viewer, &mut room, limit, left_at, end).await?;
            room["membership"] = m.into();
            room["presence"] = json!([]);
            room["receipts"] = json!([]);
        }
        m => {
            let joined = m == Some("join");
            if !joined && !viewer.world_readable_now().await? {
                return Err(Error::forbidden("You are not allowed to view this room"));
            }
            let end = SyncToken {
                stream: now,
                typing: app.typing.current(),
                to_device: 0,
            };
            fill(app, user, &mut viewer, &mut room, limit, now, end).await?;
            if joined {
                room["membership"] = "join".into();
            }
            room["presence"] = member_presence(app, room_id).await?.into();
            room["receipts"] = receipts::contents(
                user_streams::receipts_since(&app.db, &[room_id.to_string()], 0, now).await?,
                user,
            )
            .into_iter()
            .map(|(room, content)| json!({ "type": "m.receipt", "room_id": room, "content": content }))
            .collect::<Vec<_>>()
            .into();
        }
    }
    let account_data = user_streams::account_data_since(&app.db, user.as_str(), 0, now).await?;
    room["account_data"] = room_account_data(&account_data, room_id.as_str()).into();
    Ok(room)
}

/// Sets `messages` (the newest `limit` events at or before `upto` that the
/// viewer may see, oldest first) and `state` (the state the viewer may read:
/// current, or as they left) of a room's snapshot.
async fn fill(
    app: &AppState,
    user: &UserId,
    viewer: &mut Viewer<'_>,
    room: &mut Value,
    limit: usize,
    upto: i64,
    end: SyncToken,
) -> Result<()> {
    let room_id = viewer.room_id().to_owned();
    let fetched = if limit == 0 {
        Vec::new()
    } else {
        rows::room_events(
            &app.db,
            room_id.as_str(),
            0,
            upto,
            limit.min(MAX_LIMIT) as i64,
        )
        .await?
    };
    viewer.prefetch_events(&fetched).await?;
    let mut visible = Vec::with_capacity(fetched.len());
    for ev in &fetched {
        // Their own membership is the user's to see: the leave that ends a
        // former member's snapshot, above all.
        let own =
            ev.event_type == "m.room.member" && ev.state_key.as_deref() == Some(user.as_str());
        if own || viewer.may_see(ev).await? {
            visible.push(ev.clone());
        }
    }
    visible.reverse();
    let mut messages = json!({
        "chunk": legacy(viewer.client_events(&visible).await?),
        "end": end.to_string(),
    });
    // `start` continues backwards with /messages from the oldest event read.
    if let Some(oldest) = fetched.last() {
        messages["start"] = TopoToken::before(oldest).to_string().into();
    }
    let group = viewer.readable_state_group().await?;
    let ids: Vec<String> = state::full_state(&app.db, group)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let stored = events::get_many(&app.db, &ids).await?;
    room["messages"] = messages;
    room["state"] = legacy(viewer.client_events(&stored).await?).into();
    Ok(())
}

fn legacy(events: Vec<Value>) -> Vec<Value> {
    events.into_iter().map(legacy_format).collect()
}

/// `public` when the room is in the public room directory.
async fn visibility(app: &AppState, room_id: &RoomId) -> Result<&'static str> {
    Ok(
        if rooms::is_published(&app.db, room_id.as_str())
            .await?
            .unwrap_or(false)
        {
            "public"
        } else {
            "private"
        },
    )
}

/// The room's account data events (tags included, as `m.tag`).
fn room_account_data(rows: &[user_streams::AccountData], room_id: &str) -> Vec<Value> {
    rows.iter()
        .filter(|row| row.room_id == room_id)
        .map(|row| {
            json!({
                "type": row.data_type,
                "content": serde_json::from_str::<Value>(&row.content).unwrap_or_default(),
            })
        })
        .collect()
}

/// The presence of the room's joined members (offline for those who never set
/// any).
async fn member_presence(app: &AppState, room_id: &RoomId) -> Result<Vec<Value>> {
    let members: Vec<String> = rooms::members(&app.db, room_id.as_str(), "join")
        .await?
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    let at = app.clock.now_ms();
    let set = presence_rows::changes_of(&app.db, &members, 0, app.notifier.current()).await?;
    Ok(members
        .iter()
        .map(|m| match set.iter().find(|p| &p.user_id == m) {
            Some(p) => presence::legacy_event(p, at),
            None => presence::legacy_offline(m),
        })
        .collect())
}
