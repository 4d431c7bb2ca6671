//! Which rooms a sliding-sync list holds: the user's rooms, each list's
//! filters (`is_invite`, `is_dm`, `is_encrypted`, room types).

use std::collections::{HashMap, HashSet};

use ruma::{UserId, api::client::sync::sync_events::v5::request};
use serde_json::Value;

use crate::{
    error::Result,
    service::AppState,
    storage::{events, rooms, state, user_streams},
};

/// One candidate room of the user's.
pub(super) struct Candidate {
    pub(super) room_id: String,
    pub(super) membership: String,
    pub(super) membership_event: String,
    pub(super) membership_stream: i64,
    /// Its place in the lists (the newest event of a bump type).
    pub(super) stamp: i64,
}

/// Per-room facts some list filters need, read once per request.
#[derive(Default)]
pub(super) struct RoomFacts {
    direct: Option<HashSet<String>>,
    encrypted: HashMap<String, bool>,
    room_type: HashMap<String, Option<String>>,
}

/// Whether a list's filters let a room in.
pub(super) async fn list_allows(
    app: &AppState,
    user: &UserId,
    facts: &mut RoomFacts,
    filters: Option<&request::ListFilters>,
    c: &Candidate,
) -> Result<bool> {
    let Some(f) = filters else {
        return Ok(true);
    };
    if let Some(is_invite) = f.is_invite
        && is_invite != (c.membership == "invite")
    {
        return Ok(false);
    }
    if let Some(is_dm) = f.is_dm {
        if facts.direct.is_none() {
            facts.direct = Some(direct_rooms(app, user).await?);
        }
        let dm = facts
            .direct
            .as_ref()
            .is_some_and(|d| d.contains(&c.room_id));
        if dm != is_dm {
            return Ok(false);
        }
    }
    if let Some(is_encrypted) = f.is_encrypted {
        if !facts.encrypted.contains_key(&c.room_id) {
            let found = current_state(app, &c.room_id, &[("m.room.encryption", "")]).await?;
            facts.encrypted.insert(c.room_id.clone(), !found.is_empty());
        }
        if facts.encrypted[&c.room_id] != is_encrypted {
            return Ok(false);
        }
    }
    if !f.room_types.is_empty() || !f.not_room_types.is_empty() {
        if !facts.room_type.contains_key(&c.room_id) {
            let create = current_state(app, &c.room_id, &[("m.room.create", "")]).await?;
            let kind = create
                .first()
                .and_then(|e| e["content"]["type"].as_str().map(str::to_owned));
            facts.room_type.insert(c.room_id.clone(), kind);
        }
        let kind = facts.room_type[&c.room_id].as_deref();
        let is = |filter: &ruma::directory::RoomTypeFilter| match filter {
            ruma::directory::RoomTypeFilter::Default => kind.is_none(),
            other => other.as_str() == kind,
        };
        if !f.room_types.is_empty() && !f.room_types.iter().any(is) {
            return Ok(false);
        }
        if f.not_room_types.iter().any(is) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rooms the user marked as direct chats (`m.direct` account data).
async fn direct_rooms(app: &AppState, user: &UserId) -> Result<HashSet<String>> {
    let content = user_streams::get_account_data(&app.db, user.as_str(), "", "m.direct").await?;
    let content: Value = content
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default();
    Ok(content
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Current state events of a room for some keys, as PDU JSON.
async fn current_state(app: &AppState, room_id: &str, keys: &[(&str, &str)]) -> Result<Vec<Value>> {
    let Some(group) = rooms::get(&app.db, room_id)
        .await?
        .and_then(|r| r.current_state_group)
    else {
        return Ok(Vec::new());
    };
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
        .collect();
    let ids: Vec<String> = state::state_for_keys(&app.db, group, &keys)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    Ok(events::get_many(&app.db, &ids)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_str(&e.json).ok())
        .collect())
}
