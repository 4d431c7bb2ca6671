//! Profiles: `GET /_matrix/client/v3/profile/{userId}`,
//! `GET/PUT /_matrix/client/v3/profile/{userId}/displayname` and `…/avatar_url`,
//! and every other field (spec v1.16): `GET/PUT/DELETE
//! /_matrix/client/v3/profile/{userId}/{keyName}` (spec: "Profiles"). Remote
//! users' profiles are asked of their server.

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use ruma::{
    api::client::profile::{
        delete_profile_field, get_avatar_url, get_display_name, get_profile, get_profile_field,
        set_avatar_url, set_display_name, set_profile_field,
    },
    profile::{ProfileFieldValue, UserProfile},
};
use serde_json::json;

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        json::JsonOrEmpty,
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::profile::{self, Field},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_profile::v3::Request, _, _>(get_all)
        .ruma::<get_display_name::v3::Request, _, _>(get_name)
        .ruma::<get_avatar_url::v3::Request, _, _>(get_avatar)
        .ruma::<set_display_name::v3::Request, _, _>(set_name)
        .ruma::<set_avatar_url::v3::Request, _, _>(set_avatar)
        // Any field (ruma's typed field requests would answer a body without
        // the key with M_BAD_JSON, where the spec wants M_MISSING_PARAM).
        // `displayname` and `avatar_url` keep their typed GET and PUT above.
        .route(
            "/_matrix/client/v3/profile/{user_id}/{key}",
            get(get_field).put(put_field).delete(delete_field),
        )
        .route(
            "/_matrix/client/v3/profile/{user_id}/displayname",
            axum::routing::delete(delete_field),
        )
        .route(
            "/_matrix/client/v3/profile/{user_id}/avatar_url",
            axum::routing::delete(delete_field),
        )
}

fn user_param(user_id: &str) -> Result<ruma::OwnedUserId> {
    ruma::UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))
}

async fn get_field(
    State(app): State<AppState>,
    Path((user_id, key)): Path<(String, String)>,
) -> Result<Response> {
    let user = user_param(&user_id)?;
    let value = profile::field(&app, &user, &key).await?;
    Ok(match ProfileFieldValue::new(&key, value.clone()) {
        Ok(value) => RumaResponse(get_profile_field::v3::Response::new(value)).into_response(),
        // Another server's `displayname`, `avatar_url` or `m.tz` that is not a
        // string, which ruma's value cannot hold: relayed as it came.
        Err(_) => Json(json!({ key: value })).into_response(),
    })
}

async fn put_field(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((user_id, key)): Path<(String, String)>,
    JsonOrEmpty(mut body): JsonOrEmpty,
) -> Result<RumaResponse<set_profile_field::v3::Response>> {
    // The spec rate-limits this endpoint (by user, as the `Ruma` extractor does).
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    let user = user_param(&user_id)?;
    if !body.is_object() {
        return Err(Error::bad_json("The body must be a JSON object"));
    }
    let Some(value) = body.as_object_mut().and_then(|o| o.remove(&key)) else {
        return Err(Error::new(
            ErrorKind::MissingParam,
            format!("Missing key '{key}'"),
        ));
    };
    profile::set_field(&app, &session, &user, &key, value).await?;
    Ok(RumaResponse(set_profile_field::v3::Response::new()))
}

async fn delete_field(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path(params): Path<Vec<(String, String)>>,
    uri: axum::http::Uri,
) -> Result<RumaResponse<delete_profile_field::v3::Response>> {
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    let user_id = params
        .iter()
        .find(|(k, _)| k == "user_id")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let user = user_param(user_id)?;
    // `{key}`, or the last segment of the fixed displayname/avatar_url paths.
    let key = match params.iter().find(|(k, _)| k == "key") {
        Some((_, key)) => key.clone(),
        None => uri.path().rsplit('/').next().unwrap_or_default().to_owned(),
    };
    profile::delete_field(&app, &session, &user, &key).await?;
    Ok(RumaResponse(delete_profile_field::v3::Response::new()))
}

async fn get_all(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_profile::v3::Request>,
) -> Result<RumaResponse<get_profile::v3::Response>> {
    let fields = profile::full(&app, &req.user_id).await?;
    Ok(RumaResponse(get_profile::v3::Response::from(
        fields.into_iter().collect::<UserProfile>(),
    )))
}

async fn get_name(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_display_name::v3::Request>,
) -> Result<RumaResponse<get_display_name::v3::Response>> {
    let p = profile::get(&app, &req.user_id).await?;
    // No name: `{}`, as Synapse answers.
    Ok(RumaResponse(get_display_name::v3::Response::new(
        p.displayname,
    )))
}

async fn get_avatar(
    State(app): State<AppState>,
    Ruma(req): Ruma<get_avatar_url::v3::Request>,
) -> Result<RumaResponse<get_avatar_url::v3::Response>> {
    let p = profile::get(&app, &req.user_id).await?;
    // No avatar: `{}`, as Synapse answers.
    Ok(RumaResponse(get_avatar_url::v3::Response::new(
        p.avatar_url.map(Into::into),
    )))
}

async fn set_name(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<set_display_name::v3::Request>,
) -> Result<RumaResponse<set_display_name::v3::Response>> {
    profile::set(
        &app,
        &user,
        &req.user_id,
        Field::DisplayName,
        req.displayname,
    )
    .await?;
    Ok(RumaResponse(set_display_name::v3::Response::new()))
}

async fn set_avatar(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_avatar_url::v3::Request>,
) -> Result<RumaResponse<set_avatar_url::v3::Response>> {
    profile::set(
        &app,
        &user,
        &req.user_id,
        Field::AvatarUrl,
        req.avatar_url.map(|u| u.to_string()),
    )
    .await?;
    Ok(RumaResponse(set_avatar_url::v3::Response::new()))
}
