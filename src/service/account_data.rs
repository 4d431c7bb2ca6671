//! Account data, global and per room, and room tags (spec: "Client Config",
//! "Room Tagging"). Tags are the `m.tag` room account data, as in Synapse.
//! Deleting account data (MSC3391) stores empty content: `GET` then answers
//! 404, initial syncs leave the type out and incremental syncs carry `{}`.

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{session::Session, stream};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::user_streams,
};

/// Types the server manages itself; clients may not set them through this API.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn check_owner(session: &Session, user: &UserId) -> Result<()> {
    if session.user_id != user {
        return Err(Error::forbidden("Cannot access other users' account data"));
    }
    Ok(())
}

pub async fn set(
    app: &AppState,
    session: &Session,
    user: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
    content: &Value,
) -> Result<()> {
    check_owner(session, user)?;
    if SERVER_MANAGED.contains(&data_type) {
        return Err(Error::new(
            ErrorKind::ServerControlled,
            format!("Cannot set {data_type} through the account data API"),
        ));
    }
    if !content.is_object() {
        return Err(Error::bad_json("Account data content must be an object"));
    }
    store(app, user, room, data_type, content).await
}

/// Writes account data without the client-facing checks (also used for
/// `m.fully_read` and tags).
pub async fn store(
    app: &AppState,
    user: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
    content: &Value,
) -> Result<()> {
    let text = serde_json::to_string(content).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tx = app.db.begin().await?;
    let (position, guard) = stream::take(&mut tx, app).await?;
    user_streams::set_account_data(
        &mut *tx,
        user.as_str(),
        room.map_or("", |r| r.as_str()),
        data_type,
        &text,
        position,
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// The users `user` ignores (`m.ignored_user_list`, spec: "Ignoring Users"):
/// their non-state events and invites are kept from `user`.
pub async fn ignored_users(
    app: &AppState,
    user: &UserId,
) -> Result<std::collections::HashSet<String>> {
    Ok(load(app, user, None, "m.ignored_user_list")
        .await?
        .and_then(|v| match v.get("ignored_users") {
            Some(Value::Object(users)) => Some(users.keys().cloned().collect()),
            _ => None,
        })
        .unwrap_or_default())
}

pub async fn get(
    app: &AppState,
    session: &Session,
    user: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
) -> Result<Value> {
    check_owner(session, user)?;
    // Empty content is a deleted type (MSC3391), as on Synapse.
    load(app, user, room, data_type)
        .await?
        .filter(|v| v.as_object().is_none_or(|o| !o.is_empty()))
        .ok_or_else(|| Error::not_found("Account data not found"))
}

/// `DELETE /unstable/org.matrix.msc3391/user/{userId}[/rooms/{roomId}]/account_data/{type}`
/// (MSC3391): the type reads as absent again, and incremental syncs carry it
/// with empty content, as Synapse does. `PUT` with `{}` is the same deletion.
/// Deleting a type that is not set changes nothing.
pub async fn delete(
    app: &AppState,
    session: &Session,
    user: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
) -> Result<()> {
    check_owner(session, user)?;
    if SERVER_MANAGED.contains(&data_type) {
        return Err(Error::new(
            ErrorKind::ServerControlled,
            format!("Cannot delete {data_type} through the account data API"),
        ));
    }
    let set = load(app, user, room, data_type)
        .await?
        .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()));
    if set {
        store(app, user, room, data_type, &json!({})).await?;
    }
    Ok(())
}

async fn load(
    app: &AppState,
    user: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
) -> Result<Option<Value>> {
    let text = user_streams::get_account_data(
        &app.db,
        user.as_str(),
        room.map_or("", |r| r.as_str()),
        data_type,
    )
    .await?;
    Ok(match text {
        Some(t) => Some(
            serde_json::from_str(&t).map_err(|e| anyhow::anyhow!("stored account data: {e}"))?,
        ),
        None => None,
    })
}

/// On a room upgrade (as Synapse does): `user`'s tags for `old` are copied to
/// `new`, and `new` joins every `m.direct` list that names `old`.
pub async fn copy_to_upgraded_room(
    app: &AppState,
    user: &UserId,
    old: &RoomId,
    new: &RoomId,
) -> Result<()> {
    if let Some(Value::Object(mut direct)) = load(app, user, None, "m.direct").await? {
        let mut changed = false;
        for rooms in direct.values_mut().filter_map(Value::as_array_mut) {
            if rooms.iter().any(|r| r == old.as_str()) && !rooms.iter().any(|r| r == new.as_str()) {
                rooms.push(new.as_str().into());
                changed = true;
            }
        }
        if changed {
            store(app, user, None, "m.direct", &Value::Object(direct)).await?;
        }
    }
    let tags = load(app, user, Some(old), "m.tag")
        .await?
        .and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
        .filter(|t| !t.is_empty());
    if let Some(tags) = tags {
        let mut merged: Map<String, Value> = load(app, user, Some(new), "m.tag")
            .await?
            .and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
            .unwrap_or_default();
        for (tag, info) in tags {
            merged.entry(tag).or_insert(info);
        }
        store(app, user, Some(new), "m.tag", &json!({ "tags": merged })).await?;
    }
    Ok(())
}

/// `GET /user/{userId}/rooms/{roomId}/tags`: each tag's info as the client
/// wrote it.
pub async fn tags(
    app: &AppState,
    session: &Session,
    user: &UserId,
    room: &RoomId,
) -> Result<Map<String, Value>> {
    check_owner(session, user)?;
    Ok(load(app, user, Some(room), "m.tag")
        .await?
        .and_then(|mut v| match v.get_mut("tags").map(Value::take) {
            Some(Value::Object(tags)) => Some(tags),
            _ => None,
        })
        .unwrap_or_default())
}

/// `PUT` (with `Some(info)`) or `DELETE` a tag.
pub async fn set_tag(
    app: &AppState,
    session: &Session,
    user: &UserId,
    room: &RoomId,
    tag: &str,
    info: Option<Value>,
) -> Result<()> {
    check_owner(session, user)?;
    let mut tags: Map<String, Value> = load(app, user, Some(room), "m.tag")
        .await?
        .and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    match info {
        Some(info) => {
            tags.insert(tag.to_owned(), info);
        }
        None => {
            tags.remove(tag);
        }
    }
    store(app, user, Some(room), "m.tag", &json!({ "tags": tags })).await
}
