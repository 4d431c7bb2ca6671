//! `GET /_matrix/federation/v1/query/profile` and `…/query/directory`: what other
//! servers ask about our users and aliases.

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use ruma::{RoomAliasId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FedRequest;
use crate::{
    app::AppState,
    error::{Error, Result},
    service::{directory, profile},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query_directory),
        )
}

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

async fn query_profile(
    State(app): State<AppState>,
    Query(q): Query<ProfileQuery>,
    _fed: FedRequest,
) -> Result<Json<Value>> {
    let user_id = UserId::parse(&q.user_id).map_err(|_| Error::invalid_param("Invalid user_id"))?;
    if user_id.server_name() != app.server_name {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    let p = profile::get(&app, &user_id).await?;
    let mut out = serde_json::Map::new();
    let want = |f: &str| q.field.as_deref().is_none_or(|w| w == f);
    if want("displayname")
        && let Some(name) = p.displayname
    {
        out.insert("displayname".into(), name.into());
    }
    if want("avatar_url")
        && let Some(url) = p.avatar_url
    {
        out.insert("avatar_url".into(), url.into());
    }
    Ok(Json(Value::Object(out)))
}

#[derive(Deserialize)]
struct DirectoryQuery {
    room_alias: String,
}

async fn query_directory(
    State(app): State<AppState>,
    Query(q): Query<DirectoryQuery>,
    _fed: FedRequest,
) -> Result<Json<Value>> {
    let alias = RoomAliasId::parse(&q.room_alias)
        .map_err(|_| Error::invalid_param("Invalid room_alias"))?;
    if alias.server_name() != app.server_name {
        return Err(Error::invalid_param("The alias is not on this server"));
    }
    let Some(room_id) = directory::resolve_local(&app, alias.as_str()).await? else {
        return Err(Error::not_found("Room alias not found"));
    };
    let mut servers = directory::joined_servers(&app, &room_id).await?;
    // This server first: it certainly knows the room.
    servers.retain(|s| s != app.server_name.as_str());
    servers.insert(0, app.server_name.to_string());
    Ok(Json(json!({"room_id": room_id, "servers": servers})))
}
