//! Presence (spec: "Presence"), kept cheap: nothing runs on a timer.
//!
//! A row per user holds the state they (or their syncing client) last set and
//! when they were last seen. Only a change of state or status message takes a
//! stream position and so reaches other users' syncs; being seen again updates
//! `last_active_ts` at most once a minute and tells no one. An `online` user not
//! seen for [`OFFLINE_AFTER_MS`] (their client stopped syncing) reads as
//! `offline`, computed whenever presence is read.

use ruma::{
    UInt, UserId, api::client::presence::get_presence, events::presence::PresenceEventContent,
    presence::PresenceState,
};
use serde_json::{Value, json};

use super::{session::Session, stream};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{
        Postgres, Transaction, now_ms, presence as rows, presence::Presence, user_streams, users,
    },
};

/// An `online` user unseen for this long reads as `offline`.
pub const OFFLINE_AFTER_MS: i64 = 3 * 60 * 1000;
/// Seen within this long: `currently_active`.
const ACTIVE_WINDOW_MS: i64 = 60 * 1000;
/// `last_active_ts` is rewritten at most this often per user.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

const STATES: [&str; 3] = ["online", "unavailable", "offline"];

/// The state others see, given the time.
fn effective(p: &Presence, now: i64) -> &str {
    if p.state == "online" && now - p.last_active_ts > OFFLINE_AFTER_MS {
        "offline"
    } else {
        &p.state
    }
}

/// The `m.presence` content for `p`.
pub fn content(p: &Presence, now: i64) -> Value {
    serde_json::to_value(typed_content(p, now)).unwrap_or_default()
}

/// [`content`] as ruma's type.
fn typed_content(p: &Presence, now: i64) -> PresenceEventContent {
    let state = effective(p, now);
    let mut content = PresenceEventContent::new(PresenceState::from(state));
    content.last_active_ago = UInt::try_from((now - p.last_active_ts).max(0)).ok();
    if state == "online" {
        content.currently_active = Some(now - p.last_active_ts < ACTIVE_WINDOW_MS);
    }
    content.status_msg = p.status_msg.clone();
    content
}

/// Stores a local user's new presence at a new position and, in the same
/// transaction, queues it as `m.presence` for the servers sharing a room with
/// them.
async fn write(app: &AppState, mut p: Presence) -> Result<()> {
    let mut tx = app.db.begin().await?;
    let (position, mut guard) = stream::take(&mut tx, app).await?;
    p.stream_ordering = position;
    rows::set(&mut *tx, &p).await?;
    super::appservice::ephemeral::on_presence(&mut tx, app, &p).await?;
    if app.config.federation.enabled {
        let mut servers = user_streams::servers_sharing_rooms(&mut *tx, &p.user_id).await?;
        servers.retain(|s| s != app.server_name.as_str());
        if !servers.is_empty() {
            queue_edu(&mut tx, &servers, std::slice::from_ref(&p)).await?;
            guard = guard.also_wake(app.federation_wake.clone());
        }
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// Queues one `m.presence` EDU carrying `states` for `servers`.
async fn queue_edu(
    tx: &mut Transaction<'_, Postgres>,
    servers: &[String],
    states: &[Presence],
) -> Result<()> {
    let now = now_ms();
    let push: Vec<Value> = states
        .iter()
        .map(|p| {
            let mut entry = content(p, now);
            entry["user_id"] = p.user_id.clone().into();
            entry
        })
        .collect();
    let edu = json!({ "edu_type": "m.presence", "content": { "push": push } });
    let text = serde_json::to_string(&edu).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One user's presence replaces that user's still queued; an EDU carrying
    // several users (a join's catch-up) is kept as it is.
    let key = match states {
        [one] => Some(format!("m.presence {}", one.user_id)),
        _ => None,
    };
    crate::storage::federation::enqueue_edu(&mut **tx, servers, &text, now, key.as_deref()).await?;
    Ok(())
}

/// A join was written (in the caller's transaction): servers newly sharing
/// the room learn the presence they have not had. Our user's join tells the
/// room's other servers their presence; a remote user's join, the first of
/// their server in the room, tells that server our members' presence.
/// Returns whether something was queued.
pub async fn on_join(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room_id: &str,
    target: &UserId,
) -> Result<bool> {
    if !app.config.federation.enabled || !app.config.presence.enabled {
        return Ok(false);
    }
    if target.server_name() == app.server_name {
        let Some(p) = rows::get(&mut **tx, target.as_str()).await? else {
            return Ok(false);
        };
        let mut servers = crate::storage::rooms::joined_servers(&mut **tx, room_id).await?;
        servers.retain(|s| s != app.server_name.as_str());
        if servers.is_empty() {
            return Ok(false);
        }
        queue_edu(tx, &servers, &[p]).await?;
        return Ok(true);
    }
    let server = target.server_name().as_str();
    if rows::server_already_joined(&mut **tx, room_id, server, target.as_str()).await? {
        return Ok(false);
    }
    let ours = rows::of_local_members(&mut **tx, room_id, app.server_name.as_str()).await?;
    if ours.is_empty() {
        return Ok(false);
    }
    for chunk in ours.chunks(MAX_PRESENCE_PER_EDU) {
        queue_edu(tx, &[server.to_owned()], chunk).await?;
    }
    Ok(true)
}

/// The most presence updates one `m.presence` EDU may carry that we look at
/// (and that we put in one).
pub const MAX_PRESENCE_PER_EDU: usize = 500;

/// An `m.presence` EDU from `origin`: the presence of its own users is
/// stored, the first [`MAX_PRESENCE_PER_EDU`] of them, all at one new position
/// in one transaction, so our users' syncs carry it — to those sharing a room
/// with them only (see `storage::presence::visible_changes`). As Synapse, it
/// is not required that they share a room already: a server sends its
/// members' presence as soon as it has accepted our user's join, which may
/// be before we have written that join.
pub async fn receive_edu(app: &AppState, origin: &ruma::ServerName, content: &Value) -> Result<()> {
    if !app.config.presence.enabled {
        return Ok(());
    }
    let now = app.clock.now_ms();
    let mut updates = Vec::new();
    for entry in content["push"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_PRESENCE_PER_EDU)
    {
        let Some(user) = entry["user_id"]
            .as_str()
            .and_then(|u| UserId::parse(u).ok())
        else {
            continue;
        };
        let Some(state) = entry["presence"].as_str().filter(|s| STATES.contains(s)) else {
            continue;
        };
        if user.server_name() != origin {
            continue;
        }
        let ago = entry["last_active_ago"].as_i64().unwrap_or(0).clamp(0, now);
        let status_msg = entry["status_msg"]
            .as_str()
            .filter(|m| m.len() <= 1024)
            .map(str::to_owned);
        updates.push(Presence {
            user_id: user.to_string(),
            state: state.to_owned(),
            status_msg,
            last_active_ts: now - ago,
            stream_ordering: 0,
        });
    }
    if updates.is_empty() {
        return Ok(());
    }
    let mut tx = app.db.begin().await?;
    let (position, guard) = stream::take(&mut tx, app).await?;
    for mut p in updates {
        p.stream_ordering = position;
        rows::set(&mut *tx, &p).await?;
        super::appservice::ephemeral::on_presence(&mut tx, app, &p).await?;
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// `PUT /presence/{userId}/status`.
pub async fn set(
    app: &AppState,
    session: &Session,
    target: &UserId,
    state: &str,
    status_msg: Option<String>,
) -> Result<()> {
    if target != session.user_id {
        return Err(Error::forbidden("Cannot set another user's presence"));
    }
    if !STATES.contains(&state) {
        return Err(Error::invalid_param("Unknown presence state"));
    }
    if !app.config.presence.enabled {
        return Ok(());
    }
    write(
        app,
        Presence {
            user_id: target.to_string(),
            state: state.to_owned(),
            status_msg,
            last_active_ts: app.clock.now_ms(),
            stream_ordering: 0,
        },
    )
    .await
}

/// `GET /presence/{userId}/status`: for the user themself and users sharing a room.
pub async fn get(
    app: &AppState,
    session: &Session,
    target: &UserId,
) -> Result<get_presence::v3::Response> {
    if target.server_name() != app.server_name
        || users::get(&app.db, target.as_str()).await?.is_none()
    {
        return Err(Error::not_found("Unknown user"));
    }
    if target != session.user_id
        && user_streams::sharing_a_room(&app.db, session.user_id.as_str(), &[target.to_string()])
            .await?
            .is_empty()
    {
        return Err(Error::forbidden(
            "You are not allowed to see their presence",
        ));
    }
    if !app.config.presence.enabled {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    }
    let now = app.clock.now_ms();
    Ok(match rows::get(&app.db, target.as_str()).await? {
        Some(p) => {
            let c = typed_content(&p, now);
            let mut out = get_presence::v3::Response::new(c.presence);
            out.status_msg = c.status_msg;
            out.currently_active = c.currently_active;
            out.last_active_ago = c
                .last_active_ago
                .map(|ms| std::time::Duration::from_millis(ms.into()));
            out
        }
        None => get_presence::v3::Response::new(PresenceState::Offline),
    })
}

/// A sync with `set_presence`: `offline` leaves presence alone; otherwise the
/// user is seen, and an `offline` user comes `online` (an explicit
/// `unavailable` stays until changed).
pub async fn on_sync(app: &AppState, user: &UserId, set_presence: &str) -> Result<()> {
    if set_presence == "offline" || !app.config.presence.enabled {
        return Ok(());
    }
    let now = app.clock.now_ms();
    let current = rows::get(&app.db, user.as_str()).await?;
    let wanted = match (&current, set_presence) {
        (None, s) => s.to_owned(),
        (Some(p), "online") if effective(p, now) == "offline" => "online".to_owned(),
        (Some(p), "online") => p.state.clone(),
        (Some(_), s) => s.to_owned(),
    };
    match current {
        Some(p) if effective(&p, now) == wanted.as_str() => {
            if now - p.last_active_ts >= TOUCH_EVERY_MS {
                rows::touch(&app.db, user.as_str(), now).await?;
            }
            Ok(())
        }
        current => {
            let status_msg = current.and_then(|p| p.status_msg);
            write(
                app,
                Presence {
                    user_id: user.to_string(),
                    state: wanted,
                    status_msg,
                    last_active_ts: now,
                    stream_ordering: 0,
                },
            )
            .await
        }
    }
}

/// `m.presence` events for a sync window: the changes the user may see, and
/// the presence (unchanged, but not yet seen) of `newly_met`, the users who
/// came to share a room with them in the window (spec: a client learns a
/// user's presence when it starts sharing a room with them).
pub async fn sync_events(
    app: &AppState,
    user: &UserId,
    after: i64,
    upto: i64,
    newly_met: &std::collections::HashSet<String>,
) -> Result<Vec<Value>> {
    if !app.config.presence.enabled {
        return Ok(Vec::new());
    }
    let now = app.clock.now_ms();
    let mut changes = rows::visible_changes(&app.db, user.as_str(), after, upto).await?;
    let others: Vec<String> = newly_met
        .iter()
        .filter(|u| !changes.iter().any(|p| &p.user_id == *u))
        .cloned()
        .collect();
    let mut events: Vec<Value> = Vec::new();
    if !others.is_empty() {
        let known = rows::changes_of(&app.db, &others, 0, upto).await?;
        // Users who never set a presence read as offline (as Synapse says).
        for u in &others {
            if !known.iter().any(|p| &p.user_id == u) {
                events.push(json!({
                    "type": "m.presence",
                    "sender": u,
                    "content": { "presence": "offline" },
                }));
            }
        }
        changes.extend(known);
    }
    events.splice(0..0, changes.iter().map(|p| event(p, now)));
    Ok(events)
}

/// The `m.presence` event for `p`.
pub fn event(p: &Presence, now: i64) -> Value {
    json!({ "type": "m.presence", "sender": p.user_id, "content": content(p, now) })
}

/// The `m.presence` event as the legacy endpoints (`/events`, `/initialSync`)
/// give it: the user is also named in `content.user_id`, as in the pre-r0 API
/// these endpoints come from (and Synapse gives them).
pub fn legacy_event(p: &Presence, now: i64) -> Value {
    let mut event = event(p, now);
    event["content"]["user_id"] = p.user_id.clone().into();
    event
}

/// The legacy `m.presence` event of a user with no presence set: offline.
pub fn legacy_offline(user: &str) -> Value {
    json!({
        "type": "m.presence",
        "sender": user,
        "content": { "presence": "offline", "user_id": user },
    })
}

/// Whether `p` reads as offline now.
pub fn is_offline(p: &Presence, now: i64) -> bool {
    effective(p, now) == "offline"
}
