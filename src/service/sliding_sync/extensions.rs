//! Sliding-sync extensions: `to_device`, `e2ee`, `account_data`, `receipts`
//! and `typing`, each only when the request enables it.

use std::collections::{BTreeMap, HashSet};

use ruma::{
    OwnedUserId, RoomId, UserId,
    api::client::sync::sync_events::v5::{Request, response},
};
use serde_json::{Map, Value, json};

use super::{RoomConfig, connections::ConnState, to_device_since};
use crate::{
    error::Result,
    service::AppState,
    service::{client_event::raw, session::Session},
    storage::user_streams,
};

/// At most this many to-device messages per response, whatever the client asks.
const TO_DEVICE_LIMIT: i64 = 100;

/// The extensions the request enabled, and whether they carry anything new
/// (to wake a long-poll).
#[allow(clippy::too_many_arguments)]
pub(super) async fn extensions(
    app: &AppState,
    session: &Session,
    req: &Request,
    prev: Option<&ConnState>,
    now: i64,
    typing_now: u64,
    selected: &BTreeMap<String, RoomConfig>,
    initial_rooms: &HashSet<String>,
) -> Result<(response::Extensions, bool)> {
    let user = session.user_id.as_str();
    let device = session.device_id.as_str();
    let since = prev.map_or(0, |p| p.stream);
    let ext = &req.extensions;
    let mut out = response::Extensions::default();
    let rooms: Vec<String> = selected.keys().cloned().collect();
    let mut news = false;

    if ext.to_device.enabled == Some(true) {
        let limit = ext.to_device.limit.map_or(TO_DEVICE_LIMIT, |l| {
            (u64::from(l) as i64).clamp(1, TO_DEVICE_LIMIT)
        });
        let pending = user_streams::to_device_pending(&app.db, user, device, now, limit).await?;
        let since_id = match ext.to_device.since.as_deref() {
            Some(s) => to_device_since(s)?,
            None => 0,
        };
        let next_batch = pending.last().map_or(since_id, |m| m.id);
        news |= !pending.is_empty();
        let mut to_device = response::ToDevice::default();
        to_device.next_batch = next_batch.to_string();
        to_device.events = pending
            .into_iter()
            .map(|m| {
                raw(&json!({
                    "sender": m.sender,
                    "type": m.event_type,
                    "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default(),
                }))
            })
            .collect();
        out.to_device = Some(to_device);
    }

    if ext.e2ee.enabled == Some(true) {
        let mut e2ee = response::E2EE::default();
        if prev.is_some() {
            let (changed, left) =
                crate::service::e2e_keys::device_list_delta(app, &session.user_id, since, now)
                    .await?;
            e2ee.device_lists.changed = user_ids(changed);
            e2ee.device_lists.left = user_ids(left);
        }
        // Counts and fallback types are state, not news: only the first response
        // and device-list changes make the response non-empty.
        let lists_changed = !e2ee.device_lists.is_empty();
        news |= lists_changed;
        if prev.is_none() || lists_changed {
            let (counts, fallback) =
                crate::service::e2e_keys::sync_key_counts(app, user, device).await?;
            e2ee.device_one_time_keys_count = counts;
            // Always there: it tells the client that fallback keys are supported.
            e2ee.device_unused_fallback_key_types = Some(fallback);
            out.e2ee = e2ee;
        }
    }

    if ext.account_data.enabled == Some(true) {
        let mut account_data = response::AccountData::default();
        let mut push_rules_sent = false;
        let mut push_room = |row: user_streams::AccountData| {
            let content: Value = serde_json::from_str(&row.content).unwrap_or_default();
            let event = json!({ "type": row.data_type, "content": content });
            if row.room_id.is_empty() {
                push_rules_sent |= row.data_type == crate::service::push::ACCOUNT_DATA_TYPE;
                account_data.global.push(raw(&event));
            } else if rooms.contains(&row.room_id)
                && let Ok(room_id) = RoomId::parse(&row.room_id)
            {
                account_data
                    .rooms
                    .entry(room_id)
                    .or_default()
                    .push(raw(&event));
            }
        };
        let mut sent_rooms: HashSet<String> = HashSet::new();
        if prev.is_some() && !initial_rooms.is_empty() {
            // Everything for rooms new to the connection.
            for row in user_streams::account_data_since(&app.db, user, 0, now).await? {
                if initial_rooms.contains(&row.room_id) {
                    sent_rooms.insert(row.room_id.clone());
                    push_room(row);
                }
            }
        }
        for row in user_streams::account_data_since(&app.db, user, since, now).await? {
            if !sent_rooms.contains(&row.room_id) {
                push_room(row);
            }
        }
        if prev.is_none() && !push_rules_sent {
            let rules = crate::service::push::rules(app, &session.user_id).await?;
            account_data.global.push(raw(&json!({
                "type": crate::service::push::ACCOUNT_DATA_TYPE,
                "content": rules.to_content(),
            })));
        }
        if !account_data.is_empty() {
            news |= prev.is_some();
            out.account_data = account_data;
        }
    }

    if ext.receipts.enabled == Some(true) && !rooms.is_empty() {
        let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let fresh: Vec<String> = rooms
            .iter()
            .filter(|r| initial_rooms.contains(*r))
            .cloned()
            .collect();
        let old: Vec<String> = rooms
            .iter()
            .filter(|r| !initial_rooms.contains(*r))
            .cloned()
            .collect();
        let mut receipts = user_streams::receipts_since(&app.db, &old, since, now).await?;
        receipts.extend(user_streams::receipts_since(&app.db, &fresh, 0, now).await?);
        // The same privacy rule as `/sync`: private receipts only to their owner.
        content.extend(crate::service::receipts::contents(
            receipts,
            &session.user_id,
        ));
        for (room, c) in content {
            if let Ok(room_id) = RoomId::parse(&room) {
                let event = json!({ "type": "m.receipt", "content": c });
                out.receipts.rooms.insert(room_id, raw(&event));
            }
        }
        news |= !out.receipts.is_empty();
    }

    if ext.typing.enabled == Some(true) && !rooms.is_empty() {
        let typing_since = prev.map_or(0, |p| p.typing);
        for (room, users) in app.typing.changed_since(&rooms, typing_since) {
            if prev.is_none() && users.is_empty() {
                continue;
            }
            if let Ok(room_id) = RoomId::parse(&room) {
                let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
                out.typing.rooms.insert(room_id, raw(&event));
            }
        }
        let _ = typing_now;
        news |= !out.typing.is_empty();
    }
    Ok((out, news))
}

/// User IDs as read from the database (valid when they were stored).
fn user_ids(ids: Vec<String>) -> Vec<OwnedUserId> {
    ids.iter().filter_map(|u| UserId::parse(u).ok()).collect()
}
