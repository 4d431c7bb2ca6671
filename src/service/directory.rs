//! Room aliases (local ones; remote resolution arrives with federation).

use ruma::{OwnedRoomId, RoomId, UserId};

use super::session::Session;
use crate::{
    app::AppState,
    error::{Error, ErrorKind, Result},
    storage::{Postgres, Transaction, now_ms, rooms},
};

pub async fn resolve_local(app: &AppState, alias: &str) -> Result<Option<OwnedRoomId>> {
    let room = rooms::alias_room(&app.db, alias).await?;
    Ok(room.and_then(|r| RoomId::parse(r).ok()))
}

pub async fn insert_alias(
    tx: &mut Transaction<'_, Postgres>,
    alias: &str,
    room_id: &RoomId,
    creator: &UserId,
) -> Result<()> {
    if rooms::insert_alias(
        &mut **tx,
        alias,
        room_id.as_str(),
        creator.as_str(),
        now_ms(),
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"))
    }
}

/// `PUT /directory/room/{alias}`: local aliases, for rooms the user is joined to.
pub async fn create_alias(
    app: &AppState,
    user: &Session,
    alias: &str,
    room_id: &RoomId,
) -> Result<()> {
    if !alias.ends_with(&format!(":{}", app.server_name)) {
        return Err(Error::invalid_param(
            "Aliases can only be created on this server",
        ));
    }
    if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    if rooms::membership(&app.db, room_id.as_str(), user.user_id.as_str())
        .await?
        .as_deref()
        != Some("join")
    {
        return Err(Error::forbidden("You are not in this room"));
    }
    if rooms::insert_alias(
        &app.db,
        alias,
        room_id.as_str(),
        user.user_id.as_str(),
        now_ms(),
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Conflict,
            format!("Room alias {alias} already exists"),
        ))
    }
}

/// `DELETE /directory/room/{alias}`: by its creator or a server admin.
pub async fn delete_alias(app: &AppState, user: &Session, alias: &str) -> Result<()> {
    let Some(creator) = rooms::alias_creator(&app.db, alias).await? else {
        return Err(Error::not_found("Room alias not found"));
    };
    if creator != user.user_id.as_str() && !user.is_admin {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    rooms::delete_alias(&app.db, alias).await?;
    Ok(())
}

/// `GET /rooms/{roomId}/aliases`: for those who may read the room's state.
pub async fn room_aliases(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<Vec<String>> {
    let mut viewer = super::read::Viewer::new(app, user, room_id).await?;
    viewer.readable_state_group().await?;
    Ok(rooms::aliases_of(&app.db, room_id.as_str()).await?)
}
