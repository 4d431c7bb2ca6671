//! Account data, tags, receipts, read markers and typing (spec: "Client Config",
//! "Room Tagging", "Receipts", "Fully read markers", "Typing Notifications"),
//! and deleting account data (MSC3391, unstable, as Synapse serves it):
//! `DELETE /_matrix/client/unstable/org.matrix.msc3391/user/{userId}/account_data/{type}`
//! and `…/user/{userId}/rooms/{roomId}/account_data/{type}`.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::delete,
};
use ruma::api::client::{
    config::{
        get_global_account_data, get_room_account_data, set_global_account_data,
        set_room_account_data,
    },
    read_marker::set_read_marker,
    receipt::create_receipt,
    tag::{create_tag, delete_tag, get_tags},
    typing::create_typing_event,
};
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
    error::{Error, Result},
    service::{account_data, receipts},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<set_global_account_data::v3::Request, _, _>(set_global)
        .ruma::<get_global_account_data::v3::Request, _, _>(get_global)
        .ruma::<set_room_account_data::v3::Request, _, _>(set_room)
        .ruma::<get_room_account_data::v3::Request, _, _>(get_room)
        .ruma::<get_tags::v3::Request, _, _>(tags)
        .ruma::<create_tag::v3::Request, _, _>(put_tag)
        .ruma::<delete_tag::v3::Request, _, _>(remove_tag)
        .ruma::<create_receipt::v3::Request, _, _>(receipt)
        .ruma::<set_read_marker::v3::Request, _, _>(read_markers)
        // The path of ruma's request type, read by `typing` (see `TypingBody`).
        .ruma::<create_typing_event::v3::Request, _, _>(typing)
        // MSC3391: ruma has no request types for these.
        .route(
            "/_matrix/client/unstable/org.matrix.msc3391/user/{user_id}/account_data/{data_type}",
            delete(delete_global),
        )
        .route(
            "/_matrix/client/unstable/org.matrix.msc3391/user/{user_id}/rooms/{room_id}/account_data/{data_type}",
            delete(delete_room),
        )
}

fn user_param(user_id: &str) -> Result<OwnedUserId> {
    UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))
}

async fn delete_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((user_id, data_type)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user = user_param(&user_id)?;
    account_data::delete(&app, &session, &user, None, &data_type).await?;
    Ok(Json(json!({})))
}

async fn delete_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let user = user_param(&user_id)?;
    let room = RoomId::parse(&room_id)
        .map_err(|_| Error::invalid_param(format!("{room_id} is not a valid room ID")))?;
    account_data::delete(&app, &session, &user, Some(&room), &data_type).await?;
    Ok(Json(json!({})))
}

fn raw_object<T>(raw: &ruma::serde::Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

async fn set_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_global_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let content = raw_object(&req.data)?;
    let kind = req.event_type.to_string();
    account_data::set(&app, &session, &req.user_id, None, &kind, &content).await?;
    Ok(Json(json!({})))
}

async fn get_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_global_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let kind = req.event_type.to_string();
    Ok(Json(
        account_data::get(&app, &session, &req.user_id, None, &kind).await?,
    ))
}

async fn set_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_room_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let content = raw_object(&req.data)?;
    let kind = req.event_type.to_string();
    account_data::set(
        &app,
        &session,
        &req.user_id,
        Some(&req.room_id),
        &kind,
        &content,
    )
    .await?;
    Ok(Json(json!({})))
}

async fn get_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_room_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let kind = req.event_type.to_string();
    Ok(Json(
        account_data::get(&app, &session, &req.user_id, Some(&req.room_id), &kind).await?,
    ))
}

async fn tags(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_tags::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        account_data::tags(&app, &session, &req.user_id, &req.room_id).await?,
    ))
}

async fn put_tag(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_tag::v3::Request>,
) -> Result<Json<Value>> {
    let info = serde_json::to_value(&req.tag_info).map_err(|e| Error::bad_json(e.to_string()))?;
    account_data::set_tag(
        &app,
        &session,
        &req.user_id,
        &req.room_id,
        &req.tag,
        Some(info),
    )
    .await?;
    Ok(Json(json!({})))
}

async fn remove_tag(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_tag::v3::Request>,
) -> Result<Json<Value>> {
    account_data::set_tag(&app, &session, &req.user_id, &req.room_id, &req.tag, None).await?;
    Ok(Json(json!({})))
}

async fn receipt(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> Result<Json<Value>> {
    let receipt_type = req.receipt_type.to_string();
    receipts::post(
        &app,
        &session,
        &req.room_id,
        &receipt_type,
        req.event_id.as_str(),
        req.thread.as_str(),
    )
    .await?;
    Ok(Json(json!({})))
}

async fn read_markers(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> Result<Json<Value>> {
    receipts::read_markers(
        &app,
        &session,
        &req.room_id,
        req.fully_read.as_ref().map(|e| e.as_str()),
        req.read_receipt.as_ref().map(|e| e.as_str()),
        req.private_read_receipt.as_ref().map(|e| e.as_str()),
    )
    .await?;
    Ok(Json(json!({})))
}

/// The body of `PUT /rooms/{roomId}/typing/{userId}`. `timeout` may be left
/// out when typing (Synapse then takes 30 s; ruma's request type requires it,
/// so the body is read here).
#[derive(serde::Deserialize)]
struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

async fn typing(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
    crate::api::json::Json(body): crate::api::json::Json<TypingBody>,
) -> Result<Json<Value>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let user_id = UserId::parse(&user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    let timeout = body.typing.then(|| {
        Duration::from_millis(body.timeout.unwrap_or(30_000)).min(Duration::from_secs(120))
    });
    receipts::typing(&app, &session, &room_id, &user_id, timeout).await?;
    Ok(Json(json!({})))
}
