//! Profiles: display name and avatar of local users, shown in member events.
//! Changing them updates the user's member event in every room they are in, as
//! Synapse does, so other members see the new name.

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::{event, session::Session};
use crate::{
    app::AppState,
    domain::pdu::NewEvent,
    error::{Error, Result},
    storage::{Postgres, Transaction, profiles, rooms, users},
};

pub use profiles::Profile;

pub async fn get(app: &AppState, user_id: &UserId) -> Result<Profile> {
    if user_id.server_name() != app.server_name {
        return remote(app, user_id).await;
    }
    match users::get(&app.db, user_id.as_str()).await? {
        Some(u) if !u.deactivated => Ok(profiles::get(&app.db, user_id.as_str())
            .await?
            .unwrap_or_default()),
        _ => Err(Error::not_found("Profile not found")),
    }
}

/// A remote user's profile, asked of their server.
async fn remote(app: &AppState, user_id: &UserId) -> Result<Profile> {
    if !app.config.federation.enabled {
        return Err(Error::not_found("Profile not found (federation is off)"));
    }
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        form_urlencoded::byte_serialize(user_id.as_str().as_bytes()).collect::<String>()
    );
    match app
        .federation
        .request_json(user_id.server_name(), http::Method::GET, &path, None)
        .await
    {
        Ok(body) => Ok(Profile {
            displayname: body["displayname"].as_str().map(str::to_owned),
            avatar_url: body["avatar_url"].as_str().map(str::to_owned),
        }),
        Err(e) if e.is_not_found() => Err(Error::not_found("Profile not found")),
        Err(e) => {
            tracing::info!(%user_id, error = %e, "remote profile lookup failed");
            Err(Error::not_found("Profile not available"))
        }
    }
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
