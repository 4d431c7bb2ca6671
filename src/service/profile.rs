//! Profiles: display name and avatar of local users, shown in member events.
//! Changing them updates the user's member event in every room they are in, as
//! Synapse does, so other members see the new name. Other fields (spec v1.16:
//! `m.tz` and custom namespaced keys, any JSON value) are stored with them;
//! the whole profile stays under 64 KiB.

use ruma::{RoomId, UserId, api::federation::query::get_profile_information};
use serde_json::{Map, Value, json};

use super::{event, session::Session};
use crate::{
    domain::pdu::NewEvent,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{Postgres, Transaction, profiles, rooms, users},
};

pub use profiles::Profile;

pub async fn get(app: &AppState, user_id: &UserId) -> Result<Profile> {
    if user_id.server_name() != app.server_name {
        return remote(app, user_id).await;
    }
    let mut user = users::get(&app.db, user_id.as_str()).await?;
    if user.is_none()
        && !app.appservices.current().is_empty()
        && super::appservice::user_exists(app, user_id).await?
    {
        user = users::get(&app.db, user_id.as_str()).await?;
    }
    match user {
        Some(u) if !u.deactivated => Ok(profiles::get(&app.db, user_id.as_str())
            .await?
            .unwrap_or_default()),
        _ => Err(Error::not_found("Profile not found")),
    }
}

/// A remote user's profile, asked of their server.
async fn remote(app: &AppState, user_id: &UserId) -> Result<Profile> {
    let body = remote_body(app, user_id, None).await?;
    Ok(Profile {
        displayname: body["displayname"].as_str().map(str::to_owned),
        avatar_url: body["avatar_url"].as_str().map(str::to_owned),
    })
}

/// A remote user's profile as their server answers `/query/profile` (one
/// `field` of it when given).
async fn remote_body(app: &AppState, user_id: &UserId, field: Option<&str>) -> Result<Value> {
    if !app.config.federation.enabled {
        return Err(Error::not_found("Profile not found (federation is off)"));
    }
    let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
    request.field = field.map(Into::into);
    // On a client's behalf: a profile is under 64 KiB (spec), and the client
    // waits at most the federation query time for it.
    let answer = app
        .federation
        .send_bounded(
            user_id.server_name(),
            request,
            2 * MAX_PROFILE_BYTES,
            super::directory::query_timeout(app),
        )
        .await;
    match answer {
        Ok(response) => Ok(Value::Object(response.into_iter().collect())),
        Err(e) if e.is_not_found() => Err(Error::not_found("Profile not found")),
        Err(e) => {
            // An answer that is not a JSON object is ruma's parse error here.
            tracing::info!(%user_id, error = %e, "remote profile lookup failed");
            Err(Error::not_found("Profile not available"))
        }
    }
}

/// The largest profile, as canonical JSON, in bytes (spec: "MUST be under 64 KiB").
const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// The longest profile key, in bytes.
const MAX_KEY_BYTES: usize = 255;

/// The whole profile (`GET /profile/{userId}`, federation `/query/profile`):
/// display name, avatar and every other field.
pub async fn full(app: &AppState, user_id: &UserId) -> Result<Map<String, Value>> {
    if user_id.server_name() != app.server_name {
        let body = remote_body(app, user_id, None).await?;
        return Ok(body.as_object().cloned().unwrap_or_default());
    }
    let p = get(app, user_id).await?;
    let fields = profiles::fields(&app.db, user_id.as_str()).await?;
    Ok(assemble(&p, fields.as_deref()))
}

fn assemble(p: &Profile, fields: Option<&str>) -> Map<String, Value> {
    let mut out: Map<String, Value> = fields
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default();
    if let Some(name) = &p.displayname {
        out.insert("displayname".into(), name.as_str().into());
    }
    if let Some(url) = &p.avatar_url {
        out.insert("avatar_url".into(), url.as_str().into());
    }
    out
}

/// One field of a profile: `404` when the user has no such field.
pub async fn field(app: &AppState, user_id: &UserId, key: &str) -> Result<Value> {
    check_key(key)?;
    let value = if user_id.server_name() != app.server_name {
        remote_body(app, user_id, Some(key)).await?[key].take()
    } else {
        full(app, user_id).await?.remove(key).unwrap_or(Value::Null)
    };
    if value.is_null() {
        return Err(Error::not_found("Profile field not found"));
    }
    Ok(value)
}

/// The spec's key rules: 1 to 255 bytes of the Common Namespaced Identifier
/// Grammar (as Synapse checks it: a lowercase letter, then lowercase letters,
/// digits, `_`, `-` and `.`).
fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::new(
            ErrorKind::KeyTooLarge,
            "Profile keys are limited to 255 bytes",
        ));
    }
    let mut chars = key.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !valid {
        return Err(Error::invalid_param(
            "The key does not follow the Common Namespaced Identifier Grammar",
        ));
    }
    Ok(())
}

/// `PUT /profile/{userId}/{keyName}`: own profile only. `displayname` and
/// `avatar_url` must be strings and update the member events; `m.tz` must be a
/// string; other `m.` keys are reserved for the spec; custom keys take any
/// JSON value but `null` (refused, as Synapse does).
pub async fn set_field(
    app: &AppState,
    session: &Session,
    target: &UserId,
    key: &str,
    value: Value,
) -> Result<()> {
    check_key(key)?;
    if *target != *session.user_id {
        return Err(Error::forbidden("You can only change your own profile"));
    }
    if value.is_null() {
        return Err(Error::invalid_param(format!("'{key}' can not be null")));
    }
    let must_be_string = || Error::invalid_param(format!("'{key}' must be a string"));
    match key {
        "displayname" | "avatar_url" => {
            let text = value.as_str().ok_or_else(must_be_string)?.to_owned();
            let field = if key == "displayname" {
                Field::DisplayName
            } else {
                Field::AvatarUrl
            };
            check_size(app, target, key, &value).await?;
            return apply(app, target, field, Some(text)).await;
        }
        "m.tz" if !value.is_string() => return Err(must_be_string()),
        "m.tz" => {}
        _ if key.starts_with("m.") => {
            return Err(Error::invalid_param(
                "Keys in the m. namespace are reserved for the specification",
            ));
        }
        _ => {}
    }
    let mut tx = app.db.begin().await?;
    let mut fields = locked_fields(&mut tx, target).await?;
    fields.insert(key.to_owned(), value);
    let p = profiles::get(&mut *tx, target.as_str())
        .await?
        .unwrap_or_default();
    let text = serde_json::to_string(&fields).map_err(|e| anyhow::anyhow!("{e}"))?;
    if size(&p, &text) >= MAX_PROFILE_BYTES {
        return Err(too_large());
    }
    profiles::set_fields(&mut *tx, target.as_str(), &text).await?;
    tx.commit().await?;
    Ok(())
}

/// `DELETE /profile/{userId}/{keyName}`: own profile only; deleting a field that
/// is not set succeeds.
pub async fn delete_field(
    app: &AppState,
    session: &Session,
    target: &UserId,
    key: &str,
) -> Result<()> {
    check_key(key)?;
    if *target != *session.user_id {
        return Err(Error::forbidden("You can only change your own profile"));
    }
    match key {
        "displayname" => return apply(app, target, Field::DisplayName, None).await,
        "avatar_url" => return apply(app, target, Field::AvatarUrl, None).await,
        _ => {}
    }
    let mut tx = app.db.begin().await?;
    let mut fields = locked_fields(&mut tx, target).await?;
    if fields.remove(key).is_some() {
        let text = serde_json::to_string(&fields).map_err(|e| anyhow::anyhow!("{e}"))?;
        profiles::set_fields(&mut *tx, target.as_str(), &text).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn locked_fields(
    tx: &mut Transaction<'_, Postgres>,
    user: &UserId,
) -> Result<Map<String, Value>> {
    Ok(profiles::fields_for_update(&mut **tx, user.as_str())
        .await?
        .and_then(|f| serde_json::from_str(&f).ok())
        .unwrap_or_default())
}

/// Refuses a display name or avatar that would take the profile past the limit.
async fn check_size(app: &AppState, user: &UserId, key: &str, value: &Value) -> Result<()> {
    let p = profiles::get(&app.db, user.as_str())
        .await?
        .unwrap_or_default();
    let fields = profiles::fields(&app.db, user.as_str()).await?;
    let mut all = assemble(&p, fields.as_deref());
    all.insert(key.to_owned(), value.clone());
    if serde_json::to_string(&all).map_or(0, |t| t.len()) >= MAX_PROFILE_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn size(p: &Profile, fields: &str) -> usize {
    serde_json::to_string(&assemble(p, Some(fields))).map_or(0, |t| t.len())
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::ProfileTooLarge,
        "The profile would exceed its 64 KiB limit",
    )
}

/// Adds the user's profile to a member event's content (joins and invites).
pub async fn decorate(
    tx: &mut Transaction<'_, Postgres>,
    user_id: &str,
    content: &mut Value,
) -> Result<()> {
    if let Some(p) = profiles::get(&mut **tx, user_id).await? {
        if let Some(name) = p.displayname {
            content["displayname"] = name.into();
        }
        if let Some(url) = p.avatar_url {
            content["avatar_url"] = url.into();
        }
    }
    Ok(())
}

pub enum Field {
    DisplayName,
    AvatarUrl,
}

pub async fn set(
    app: &AppState,
    session: &Session,
    target: &UserId,
    field: Field,
    value: Option<String>,
) -> Result<()> {
    if *target != *session.user_id {
        return Err(Error::forbidden("You can only change your own profile"));
    }
    apply(app, target, field, value).await
}

/// Sets a profile field and updates the user's member event in every joined
/// room (also used by administrators, for any local user).
pub async fn apply(
    app: &AppState,
    target: &UserId,
    field: Field,
    value: Option<String>,
) -> Result<()> {
    if value.as_ref().is_some_and(|v| v.len() > 1024) {
        return Err(Error::bad_json("Profile values are limited to 1024 bytes"));
    }
    match field {
        Field::DisplayName => {
            profiles::set_displayname(&app.db, target.as_str(), value.as_deref()).await?
        }
        Field::AvatarUrl => {
            profiles::set_avatar_url(&app.db, target.as_str(), value.as_deref()).await?
        }
    }
    let profile = profiles::get(&app.db, target.as_str())
        .await?
        .unwrap_or_default();
    for room in rooms::rooms_for_user(&app.db, target.as_str(), "join").await? {
        let Ok(room_id) = RoomId::parse(&room) else {
            continue;
        };
        let mut content = json!({ "membership": "join" });
        if let Some(name) = &profile.displayname {
            content["displayname"] = name.as_str().into();
        }
        if let Some(url) = &profile.avatar_url {
            content["avatar_url"] = url.as_str().into();
        }
        let member = NewEvent {
            origin_server_ts: None,
            kind: "m.room.member".into(),
            content,
            state_key: Some(target.to_string()),
            redacts: None,
        };
        if let Err(e) = event::send(app, &room_id, target, member, None).await {
            tracing::warn!(%room_id, error = %e, "could not update the member event after a profile change");
        }
    }
    Ok(())
}
