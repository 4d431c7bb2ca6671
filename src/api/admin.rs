//! The commonly used part of Synapse's admin API (`/_synapse/admin`), so tools
//! such as synapse-admin work: server version, users (list, query,
//! create/modify with external IDs, deactivate, reset password, whois, login
//! as the user, find by external ID), rooms (list, details,
//! members, state, delete/purge with block), server notices, event, room and
//! user reports and registration tokens. Server admins only (`M_FORBIDDEN`
//! otherwise); every change is logged with the acting admin.

use axum::{
    Json as AxumJson, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::{Json, JsonOrEmpty};
use crate::{
    api::auth::AdminUser,
    api::json::Query,
    error::{Error, Result},
    service::AppState,
    service::{admin, server_notices},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .route("/_lattice/admin/v1/appservices", get(appservices))
        .route("/_synapse/admin/v2/users", get(list_users))
        .route(
            "/_synapse/admin/v2/users/{user_id}",
            get(user).put(put_user),
        )
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(deactivate))
        .route(
            "/_synapse/admin/v1/reset_password/{user_id}",
            post(reset_password),
        )
        .route("/_synapse/admin/v1/whois/{user_id}", get(whois))
        .route(
            "/_synapse/admin/v1/auth_providers/{provider}/users/{external_id}",
            get(user_by_external_id),
        )
        .route("/_synapse/admin/v1/users/{user_id}/login", post(login_as))
        .route("/_synapse/admin/v1/rooms", get(list_rooms))
        .route(
            "/_synapse/admin/v1/rooms/{room_id}",
            get(room).delete(delete_room),
        )
        .route(
            "/_synapse/admin/v2/rooms/{room_id}",
            axum::routing::delete(delete_room_v2),
        )
        .route(
            "/_synapse/admin/v2/rooms/{room_id}/delete_status",
            get(room_delete_status),
        )
        .route(
            "/_synapse/admin/v2/rooms/delete_status/{delete_id}",
            get(delete_status),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/block",
            get(block_status).put(set_block),
        )
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(room_state))
        .route(
            "/_synapse/admin/v1/send_server_notice",
            post(send_server_notice),
        )
        .route(
            "/_synapse/admin/v1/send_server_notice/{txn_id}",
            axum::routing::put(send_server_notice_txn),
        )
        .route("/_synapse/admin/v1/event_reports", get(event_reports))
        .route("/_synapse/admin/v1/room_reports", get(room_reports))
        .route(
            "/_synapse/admin/v1/room_reports/{report_id}",
            get(room_report),
        )
        .route("/_synapse/admin/v1/user_reports", get(user_reports))
        .route(
            "/_synapse/admin/v1/user_reports/{report_id}",
            get(user_report).delete(delete_user_report),
        )
        .route(
            "/_synapse/admin/v1/event_reports/{report_id}",
            get(event_report).delete(delete_event_report),
        )
        .route("/_synapse/admin/v1/registration_tokens", get(list_tokens))
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(create_token),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(get_token).put(update_token).delete(delete_token),
        )
}

async fn server_version(AdminUser(_): AdminUser) -> AxumJson<Value> {
    AxumJson(json!({ "server_version": format!("Lattice {}", env!("CARGO_PKG_VERSION")) }))
}

#[derive(Deserialize)]
struct UserQuery {
    from: Option<String>,
    limit: Option<i64>,
    name: Option<String>,
    user_id: Option<String>,
    guests: Option<bool>,
    deactivated: Option<bool>,
}

fn offset(from: Option<&str>) -> Result<i64> {
    match from {
        None => Ok(0),
        Some(f) => f
            .parse()
            .map_err(|_| Error::invalid_param("from must be a number")),
    }
}

async fn list_users(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<UserQuery>,
) -> Result<AxumJson<admin::users::UserList>> {
    let name = q.name.as_deref().or(q.user_id.as_deref());
    Ok(AxumJson(
        admin::list_users(
            &app,
            offset(q.from.as_deref())?,
            q.limit.unwrap_or(100),
            name,
            q.guests.unwrap_or(true),
            q.deactivated.unwrap_or(false),
        )
        .await?,
    ))
}

async fn user(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(user_id): Path<String>,
) -> Result<AxumJson<admin::users::UserDetails>> {
    Ok(AxumJson(admin::user(&app, &user_id).await?))
}

async fn put_user(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, AxumJson<admin::users::UserDetails>)> {
    let (created, user) = admin::put_user(&app, &by, &user_id, &body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AxumJson(user)))
}

async fn deactivate(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(user_id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty,
) -> Result<AxumJson<Value>> {
    let erase = match &body["erase"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return Err(Error::invalid_param("erase must be a boolean")),
    };
    admin::deactivate(&app, &by, &user_id, erase).await?;
    Ok(AxumJson(json!({ "id_server_unbind_result": "success" })))
}

async fn reset_password(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<AxumJson<Value>> {
    let password = body["new_password"]
        .as_str()
        .ok_or_else(|| Error::invalid_param("new_password is required"))?;
    let logout = body["logout_devices"].as_bool().unwrap_or(true);
    admin::reset_password(&app, &by, &user_id, password, logout).await?;
    Ok(AxumJson(json!({})))
}

async fn user_by_external_id(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path((provider, external_id)): Path<(String, String)>,
) -> Result<AxumJson<admin::users::ExternalUser>> {
    Ok(AxumJson(
        admin::user_by_external_id(&app, &provider, &external_id).await?,
    ))
}

async fn whois(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(user_id): Path<String>,
) -> Result<AxumJson<admin::users::Whois>> {
    Ok(AxumJson(admin::whois(&app, &user_id).await?))
}

#[derive(Deserialize)]
struct RoomQuery {
    from: Option<i64>,
    limit: Option<i64>,
}

/// Lattice's own: the registered application services and their queues.
async fn appservices(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
) -> Result<AxumJson<Value>> {
    Ok(AxumJson(
        crate::service::appservice::admin_list(&app).await?,
    ))
}

async fn list_rooms(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<RoomQuery>,
) -> Result<AxumJson<admin::rooms::RoomList>> {
    Ok(AxumJson(
        admin::list_rooms(&app, q.from.unwrap_or(0), q.limit.unwrap_or(100)).await?,
    ))
}

async fn room(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<admin::rooms::RoomDetails>> {
    Ok(AxumJson(admin::room(&app, &room_id).await?))
}

async fn delete_room(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(room_id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty,
) -> Result<AxumJson<admin::deletion::ShutdownRoom>> {
    Ok(AxumJson(
        admin::delete_room(&app, &by, &room_id, &body).await?,
    ))
}

async fn delete_room_v2(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(room_id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty,
) -> Result<AxumJson<admin::deletion::DeletionStarted>> {
    Ok(AxumJson(
        admin::delete_room_async(&app, &by, &room_id, &body).await?,
    ))
}

async fn room_delete_status(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<admin::deletion::RoomDeletions>> {
    Ok(AxumJson(admin::room_deletion_statuses(&app, &room_id)?))
}

async fn delete_status(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(delete_id): Path<String>,
) -> Result<AxumJson<admin::deletion::DeletionProgress>> {
    Ok(AxumJson(admin::deletion_status(&app, &delete_id)?))
}

async fn block_status(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<admin::rooms::BlockStatus>> {
    Ok(AxumJson(admin::block_status(&app, &room_id).await?))
}

async fn set_block(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(room_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<AxumJson<admin::rooms::BlockStatus>> {
    Ok(AxumJson(
        admin::set_block(&app, &by, &room_id, &body).await?,
    ))
}

async fn login_as(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<AxumJson<admin::users::AdminLogin>> {
    Ok(AxumJson(admin::login_as(&app, &by, &user_id, &body).await?))
}

async fn send_server_notice(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Json(body): Json<Value>,
) -> Result<AxumJson<Value>> {
    Ok(AxumJson(
        server_notices::send(&app, &by, &body, None).await?,
    ))
}

async fn send_server_notice_txn(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(txn_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<AxumJson<Value>> {
    Ok(AxumJson(
        server_notices::send(&app, &by, &body, Some(&txn_id)).await?,
    ))
}

async fn members(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<admin::rooms::RoomMembers>> {
    Ok(AxumJson(admin::room_members(&app, &room_id).await?))
}

async fn room_state(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<admin::rooms::RoomState>> {
    Ok(AxumJson(admin::room_state(&app, &room_id).await?))
}

async fn list_tokens(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
) -> Result<AxumJson<admin::registration_tokens::RegistrationTokens>> {
    Ok(AxumJson(admin::list_tokens(&app).await?))
}

async fn create_token(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Json(body): Json<Value>,
) -> Result<AxumJson<admin::registration_tokens::RegistrationToken>> {
    Ok(AxumJson(admin::create_token(&app, &by, &body).await?))
}

async fn get_token(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(token): Path<String>,
) -> Result<AxumJson<admin::registration_tokens::RegistrationToken>> {
    Ok(AxumJson(admin::get_token(&app, &token).await?))
}

async fn update_token(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(token): Path<String>,
    Json(body): Json<Value>,
) -> Result<AxumJson<admin::registration_tokens::RegistrationToken>> {
    Ok(AxumJson(
        admin::update_token(&app, &by, &token, &body).await?,
    ))
}

async fn delete_token(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(token): Path<String>,
) -> Result<AxumJson<Value>> {
    admin::delete_token(&app, &by, &token).await?;
    Ok(AxumJson(json!({})))
}

async fn event_reports(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<RoomQuery>,
) -> Result<AxumJson<admin::reports::EventReports>> {
    Ok(AxumJson(
        admin::event_reports(&app, q.from.unwrap_or(0), q.limit.unwrap_or(100)).await?,
    ))
}

async fn event_report(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(report_id): Path<String>,
) -> Result<AxumJson<admin::reports::EventReportDetails>> {
    Ok(AxumJson(
        admin::event_report(&app, report_number(&report_id)?).await?,
    ))
}

async fn delete_event_report(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(report_id): Path<String>,
) -> Result<AxumJson<Value>> {
    admin::delete_event_report(&app, &by, report_number(&report_id)?).await?;
    Ok(AxumJson(json!({})))
}

#[derive(Deserialize)]
struct ReportQuery {
    from: Option<i64>,
    limit: Option<i64>,
    /// The reporter.
    user_id: Option<String>,
    room_id: Option<String>,
    target_user_id: Option<String>,
}

async fn room_reports(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<ReportQuery>,
) -> Result<AxumJson<admin::reports::RoomReports>> {
    Ok(AxumJson(
        admin::room_reports(
            &app,
            q.from.unwrap_or(0),
            q.limit.unwrap_or(100),
            q.room_id.as_deref(),
            q.user_id.as_deref(),
        )
        .await?,
    ))
}

async fn room_report(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(report_id): Path<String>,
) -> Result<AxumJson<admin::reports::RoomReport>> {
    Ok(AxumJson(
        admin::room_report(&app, report_number(&report_id)?).await?,
    ))
}

async fn user_reports(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<ReportQuery>,
) -> Result<AxumJson<admin::reports::UserReports>> {
    Ok(AxumJson(
        admin::user_reports(
            &app,
            q.from.unwrap_or(0),
            q.limit.unwrap_or(100),
            q.target_user_id.as_deref(),
            q.user_id.as_deref(),
        )
        .await?,
    ))
}

async fn user_report(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(report_id): Path<String>,
) -> Result<AxumJson<admin::reports::UserReport>> {
    Ok(AxumJson(
        admin::user_report(&app, report_number(&report_id)?).await?,
    ))
}

async fn delete_user_report(
    State(app): State<AppState>,
    AdminUser(by): AdminUser,
    Path(report_id): Path<String>,
) -> Result<AxumJson<Value>> {
    admin::delete_user_report(&app, &by, report_number(&report_id)?).await?;
    Ok(AxumJson(json!({})))
}

fn report_number(id: &str) -> Result<i64> {
    id.parse()
        .map_err(|_| Error::invalid_param("The report ID must be a number"))
}
