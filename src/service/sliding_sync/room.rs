//! One room's section in a sliding-sync response: its timeline since it was
//! last sent on the connection, the required state (with `$LAZY` members),
//! name, avatar, heroes, counts and `bump_stamp`.

use std::collections::{HashMap, HashSet};

use ruma::{RoomId, UserId, api::client::sync::sync_events::v5::response};
use serde_json::Value;

use super::{RoomConfig, connections::SentRoom, lists::Candidate};
use crate::{
    error::Result,
    service::AppState,
    service::{
        client_event::raw,
        read::Viewer,
        session::Session,
        sync::{
            recent_events,
            response::{counts, uint},
            stripped_state,
        },
        tokens::TopoToken,
    },
    storage::{events, rooms, state, sync as rows, user_streams},
};

/// A room's section as built for a response.
pub(super) struct Built {
    pub(super) section: response::Room,
    /// Whether the room is new to the connection (`initial`).
    pub(super) initial: bool,
    /// The `$LAZY` member events the connection holds after this response.
    pub(super) lazy_members: HashMap<String, String>,
}

/// A room's section, if there is anything to send.
pub(super) async fn room_section(
    app: &AppState,
    session: &Session,
    c: &Candidate,
    config: &RoomConfig,
    sent: Option<&SentRoom>,
    resynced: bool,
    now: i64,
) -> Result<Option<Built>> {
    let user: &UserId = &session.user_id;
    let room_id = RoomId::parse(&c.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
    let membership_changed = sent.is_none_or(|s| s.membership_event != c.membership_event);
    if c.membership == "invite" || c.membership == "knock" {
        if !membership_changed {
            return Ok(None);
        }
        let mut section = response::Room::new();
        section.initial = Some(true);
        section.bump_stamp = Some(uint(c.stamp));
        if c.membership == "invite" {
            section.invite_state = Some(stripped_state(app, &room_id, &c.membership_event).await?);
        }
        return Ok(Some(Built {
            section,
            initial: true,
            lazy_members: HashMap::new(),
        }));
    }

    if c.membership != "join"
        && crate::storage::rooms::get(&app.db, room_id.as_str())
            .await?
            .is_none()
    {
        // A rejected invite to a room this server was never in.
        return Ok(None);
    }
    // Newly joined, or its full state came in since it was sent (faster
    // joins): the room is sent afresh, with all of its state.
    let initial = sent.is_none() || (membership_changed && c.membership == "join") || resynced;
    let config_changed = sent.is_some_and(|s| s.config != config.fingerprint());
    let after = match sent {
        Some(s) if !initial => s.upto,
        _ => i64::MIN,
    };
    // A left room shows events up to the leave.
    let upto = if c.membership == "join" {
        now
    } else {
        c.membership_stream
    };
    if !initial
        && !config_changed
        && rows::room_events(&app.db, room_id.as_str(), after, upto, 1)
            .await?
            .is_empty()
        && !own_receipt_changed(app, user, &room_id, after, now).await?
    {
        // Nothing since the room was last sent.
        return Ok(None);
    }
    let mut viewer = Viewer::for_session(app, session, &room_id).await?;
    // A room new to the connection (or newly joined) gets its recent history,
    // as far as the user may see it; later, what came since it was last sent.
    // Always the user's own membership changes.
    let recent = recent_events(
        app,
        &mut viewer,
        &room_id,
        after,
        upto,
        config.timeline_limit as usize,
        |ev, visible| visible || ev.state_key.as_deref() == Some(user.as_str()),
    )
    .await?;
    let limited = recent.more;
    let timeline = recent.events;

    // required_state: all of it when the room is new to the connection or asked
    // for differently; else what changed since it was last sent.
    let now_group = rows::state_group_at(&app.db, room_id.as_str(), upto).await?;
    let current: Vec<((String, String), String)> = match now_group {
        Some(g) => state::full_state(&app.db, g).await?,
        None => Vec::new(),
    };
    let changed: Vec<((String, String), String)> = if initial || config_changed {
        current.clone()
    } else {
        let old: HashMap<(String, String), String> =
            match rows::state_group_at(&app.db, room_id.as_str(), after).await? {
                Some(g) if Some(g) != now_group => {
                    state::full_state(&app.db, g).await?.into_iter().collect()
                }
                Some(_) => current.iter().cloned().collect(),
                None => HashMap::new(),
            };
        current
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .cloned()
            .collect()
    };
    let senders: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
    let lazy = config.lazy_members();
    let ids: Vec<String> = changed
        .iter()
        .filter(|((t, k), _)| {
            config.wants(user, t, k)
                || (lazy
                    && t == "m.room.member"
                    && (senders.contains(k.as_str()) || k == user.as_str()))
        })
        .map(|(_, id)| id.clone())
        .collect();
    // The member events this connection holds for the room: none when the
    // room is sent afresh.
    let mut lazy_members: HashMap<String, String> = match sent {
        Some(s) if !(initial || config_changed) => s.lazy_members.clone(),
        _ => HashMap::new(),
    };
    let mut lazy_extra: Vec<String> = Vec::new();
    if lazy && !(initial || config_changed) {
        // Members of the senders whose member events the connection lacks,
        // even if those did not change.
        for ((t, k), id) in &current {
            if t == "m.room.member"
                && senders.contains(k.as_str())
                && !ids.contains(id)
                && lazy_members.get(k) != Some(id)
            {
                lazy_extra.push(id.clone());
            }
        }
    }
    let state_ids: Vec<String> = ids.into_iter().chain(lazy_extra).collect();
    let state_events = events::get_many(&app.db, &state_ids).await?;
    if lazy {
        for ev in state_events.iter().chain(&timeline) {
            if ev.event_type == "m.room.member"
                && let Some(member) = &ev.state_key
            {
                lazy_members.insert(member.clone(), ev.event_id.clone());
            }
        }
    }

    let mut section = response::Room::new();
    section.timeline = viewer
        .client_events(&timeline)
        .await?
        .iter()
        .map(raw)
        .collect();
    section.required_state = viewer
        .client_events(&state_events)
        .await?
        .iter()
        .map(raw)
        .collect();
    section.limited = limited;
    section.bump_stamp = Some(uint(c.stamp));
    if initial {
        section.initial = Some(true);
    } else {
        section.num_live = Some(uint(timeline.len() as i64));
    }
    section.prev_batch = timeline
        .first()
        .map(|first| TopoToken::before(first).to_string());
    let names_changed = initial
        || changed
            .iter()
            .any(|((t, _), _)| t == "m.room.name" || t == "m.room.avatar" || t == "m.room.member");
    if names_changed {
        describe(app, user, &room_id, &current, &mut section).await?;
    }
    let (n, h) = user_streams::unread_by_thread(&app.db, user.as_str(), room_id.as_str())
        .await?
        .iter()
        .fold((0, 0), |(n, h), r| (n + r.notifications, h + r.highlights));
    section.unread_notifications = counts(n, h);
    Ok(Some(Built {
        section,
        initial,
        lazy_members,
    }))
}

/// Whether the user's own read receipts in the room moved (their counts changed).
async fn own_receipt_changed(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    after: i64,
    upto: i64,
) -> Result<bool> {
    Ok(
        user_streams::receipts_since(&app.db, &[room_id.to_string()], after, upto)
            .await?
            .iter()
            .any(|r| r.user_id == user.as_str()),
    )
}

/// `name`, `avatar`, `heroes`, `joined_count`, `invited_count`.
async fn describe(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    current: &[((String, String), String)],
    section: &mut response::Room,
) -> Result<()> {
    let find = |t: &str| {
        current
            .iter()
            .find(|((et, k), _)| et == t && k.is_empty())
            .map(|(_, id)| id.clone())
    };
    let ids: Vec<String> = [find("m.room.name"), find("m.room.avatar")]
        .into_iter()
        .flatten()
        .collect();
    for ev in events::get_many(&app.db, &ids).await? {
        let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
        match ev.event_type.as_str() {
            "m.room.name" => {
                if let Some(name) = pdu["content"]["name"].as_str().filter(|n| !n.is_empty()) {
                    section.name = Some(name.to_owned());
                }
            }
            _ => {
                // `null` for a removed avatar (no `url`): ruma's `JsOption`
                // (not re-exported by ruma) reads a JSON `null` so.
                section.avatar =
                    serde_json::from_value(pdu["content"]["url"].clone()).unwrap_or_default();
            }
        }
    }
    let joined = rooms::members(&app.db, room_id.as_str(), "join").await?;
    let invited = rooms::members(&app.db, room_id.as_str(), "invite").await?;
    section.joined_count = Some(uint(joined.len() as i64));
    section.invited_count = Some(uint(invited.len() as i64));
    if section.name.is_none() {
        let hero_ids: Vec<String> = joined
            .iter()
            .chain(invited.iter())
            .filter(|(u, _)| u.as_str() != user.as_str())
            .take(5)
            .map(|(_, event_id)| event_id.clone())
            .collect();
        let mut heroes = Vec::new();
        for ev in events::get_many(&app.db, &hero_ids).await? {
            let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
            let Some(user_id) = ev.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
                continue;
            };
            let mut hero = response::Hero::new(user_id);
            hero.name = pdu["content"]["displayname"].as_str().map(str::to_owned);
            hero.avatar = pdu["content"]["avatar_url"].as_str().map(Into::into);
            heroes.push(hero);
        }
        section.heroes = Some(heroes);
    }
    Ok(())
}
