//! Profiles: `GET /_matrix/client/v3/profile/{userId}`,
//! `GET/PUT /_matrix/client/v3/profile/{userId}/displayname` and `…/avatar_url`
//! (spec: "Profiles"). Local users only until federation lands.

use axum::{Json, Router, extract::State};
use ruma::api::client::profile::{
    get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::Result,
    service::profile::{self, Field},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_profile::v3::Request, _, _>(get_all)
        .ruma::<get_display_name::v3::Request, _, _>(get_name)
        .ruma::<get_avatar_url::v3::Request, _, _>(get_avatar)
        .ruma::<set_display_name::v3::Request, _, _>(set_name)
        .ruma::<set_avatar_url::v3::Request, _, _>(set_avatar)
}

async fn get_all(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_profile::v3::Request>,
) -> Result<Json<Value>> {
    let p = profile::get(&app, &req.user_id).await?;
    let mut out = Map::new();
    if let Some(name) = p.displayname {
        out.insert("displayname".into(), name.into());
    }
    if let Some(url) = p.avatar_url {
        out.insert("avatar_url".into(), url.into());
    }
    Ok(Json(Value::Object(out)))
}

async fn get_name(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_display_name::v3::Request>,
) -> Result<Json<Value>> {
    let p = profile::get(&app, &req.user_id).await?;
    Ok(Json(json!({ "displayname": p.displayname })))
}

async fn get_avatar(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_avatar_url::v3::Request>,
) -> Result<Json<Value>> {
    let p = profile::get(&app, &req.user_id).await?;
    Ok(Json(json!({ "avatar_url": p.avatar_url })))
}

async fn set_name(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<set_display_name::v3::Request>,
) -> Result<Json<Value>> {
    profile::set(
        &app,
        &user,
        &req.user_id,
        Field::DisplayName,
        req.displayname,
    )
    .await?;
    Ok(Json(json!({})))
}

async fn set_avatar(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_avatar_url::v3::Request>,
) -> Result<Json<Value>> {
    profile::set(
        &app,
        &user,
        &req.user_id,
        Field::AvatarUrl,
        req.avatar_url.map(|u| u.to_string()),
    )
    .await?;
    Ok(Json(json!({})))
}
