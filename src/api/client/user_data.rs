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
use ruma::{OwnedUserId, RoomId, UserId, serde::Raw};
use serde::Serialize;
use serde_json::Value;

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, Result},
    service::AppState,
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

/// ruma has no request type for MSC3391's `DELETE`; it answers `{}`, as the
/// `PUT` does.
async fn delete_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((user_id, data_type)): Path<(String, String)>,
) -> Result<RumaResponse<set_global_account_data::v3::Response>> {
    let user = user_param(&user_id)?;
    account_data::delete(&app, &session, &user, None, &data_type).await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

/// As [`delete_global`], for a room's account data.
async fn delete_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
) -> Result<RumaResponse<set_room_account_data::v3::Response>> {
    let user = user_param(&user_id)?;
    let room = RoomId::parse(&room_id)
        .map_err(|_| Error::invalid_param(format!("{room_id} is not a valid room ID")))?;
    account_data::delete(&app, &session, &user, Some(&room), &data_type).await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

fn raw_object<T>(raw: &Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

/// Stored content as ruma's raw type, unchanged.
fn to_raw<T>(content: &Value) -> Result<Raw<T>> {
    let json = serde_json::value::to_raw_value(content)
        .map_err(|e| anyhow::anyhow!("account data content: {e}"))?;
    Ok(Raw::from_json(json))
}

async fn set_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_global_account_data::v3::Request>,
) -> Result<RumaResponse<set_global_account_data::v3::Response>> {
    let content = raw_object(&req.data)?;
    let kind = req.event_type.to_string();
    account_data::set(&app, &session, &req.user_id, None, &kind, &content).await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

async fn get_global(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_global_account_data::v3::Request>,
) -> Result<RumaResponse<get_global_account_data::v3::Response>> {
    let kind = req.event_type.to_string();
    let content = account_data::get(&app, &session, &req.user_id, None, &kind).await?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(
        to_raw(&content)?,
    )))
}

async fn set_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_room_account_data::v3::Request>,
) -> Result<RumaResponse<set_room_account_data::v3::Response>> {
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
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

async fn get_room(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_room_account_data::v3::Request>,
) -> Result<RumaResponse<get_room_account_data::v3::Response>> {
    let kind = req.event_type.to_string();
    let content =
        account_data::get(&app, &session, &req.user_id, Some(&req.room_id), &kind).await?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(
        to_raw(&content)?,
    )))
}

/// The answer of `GET /tags`. Not ruma's response: ruma's `TagInfo` holds
/// only `order`, as a float, so it would drop any other field of a tag
/// (clients may set `m.tag` through the account data API) and write an
/// `order` of `1` as `1.0`.
#[derive(Serialize)]
struct Tags {
    tags: serde_json::Map<String, Value>,
}

async fn tags(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<get_tags::v3::Request>,
) -> Result<Json<Tags>> {
    Ok(Json(Tags {
        tags: account_data::tags(&app, &session, &req.user_id, &req.room_id).await?,
    }))
}

async fn put_tag(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_tag::v3::Request>,
) -> Result<RumaResponse<create_tag::v3::Response>> {
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
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

async fn remove_tag(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<delete_tag::v3::Request>,
) -> Result<RumaResponse<delete_tag::v3::Response>> {
    account_data::set_tag(&app, &session, &req.user_id, &req.room_id, &req.tag, None).await?;
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}

async fn receipt(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> Result<RumaResponse<create_receipt::v3::Response>> {
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
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

async fn read_markers(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> Result<RumaResponse<set_read_marker::v3::Response>> {
    receipts::read_markers(
        &app,
        &session,
        &req.room_id,
        req.fully_read.as_ref().map(|e| e.as_str()),
        req.read_receipt.as_ref().map(|e| e.as_str()),
        req.private_read_receipt.as_ref().map(|e| e.as_str()),
    )
    .await?;
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
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
) -> Result<RumaResponse<create_typing_event::v3::Response>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let user_id = UserId::parse(&user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    let timeout = body.typing.then(|| {
        Duration::from_millis(body.timeout.unwrap_or(30_000)).min(Duration::from_secs(120))
    });
    receipts::typing(&app, &session, &room_id, &user_id, timeout).await?;
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}
