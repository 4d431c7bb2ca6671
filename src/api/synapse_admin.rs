//! The parts of Synapse's admin API that deployment tools rely on: shared-secret
//! registration, `GET/POST /_synapse/admin/v1/register`; and media moderation
//! for server admins: quarantine (and release) one item, quarantine every local
//! item a room refers to, delete a user's uploads.
//!
//! 1. `GET` returns a single-use nonce, valid for 60 seconds.
//! 2. `POST` carries `nonce`, `username`, `password`, `admin` and `mac`, the hex
//!    HMAC-SHA1 keyed by `registration.shared_secret` over
//!    `nonce \0 username \0 password \0 ("admin" | "notadmin")` (plus `\0 user_type`
//!    when given), exactly as Synapse computes it.

use axum::{
    Json as AxumJson, Router,
    extract::{Path, State},
    routing::{delete, get, post},
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;

use super::{json::Json, rate_limited};
use crate::{
    api::auth::{AdminUser, ClientIp},
    domain::token,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{account, media},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_synapse/admin/v1/register", get(nonce).post(register))
        .route(
            "/_synapse/admin/v1/media/quarantine/{server}/{id}",
            post(quarantine),
        )
        .route(
            "/_synapse/admin/v1/media/unquarantine/{server}/{id}",
            post(unquarantine),
        )
        .route(
            "/_synapse/admin/v1/room/{room_id}/media/quarantine",
            post(quarantine_room),
        )
        .route(
            "/_synapse/admin/v1/users/{user_id}/media",
            delete(purge_user_media).get(list_user_media),
        )
}

async fn quarantine(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path((server, id)): Path<(String, String)>,
) -> Result<AxumJson<Value>> {
    media::quarantine(&app, &format!("mxc://{server}/{id}"), true).await?;
    Ok(AxumJson(json!({})))
}

async fn unquarantine(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path((server, id)): Path<(String, String)>,
) -> Result<AxumJson<Value>> {
    media::quarantine(&app, &format!("mxc://{server}/{id}"), false).await?;
    Ok(AxumJson(json!({})))
}

async fn quarantine_room(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(room_id): Path<String>,
) -> Result<AxumJson<Value>> {
    let n = media::quarantine_room(&app, &room_id).await?;
    Ok(AxumJson(json!({ "num_quarantined": n })))
}

async fn purge_user_media(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(user_id): Path<String>,
) -> Result<AxumJson<Value>> {
    let ids = media::purge_user(&app, &user_id).await?;
    Ok(AxumJson(
        json!({ "total": ids.len(), "deleted_media": ids }),
    ))
}

fn enabled(state: &AppState) -> Result<&str> {
    state.config.shared_secret().ok_or_else(|| {
        Error::new(
            ErrorKind::BadRequest,
            "Shared secret registration is not enabled",
        )
    })
}

async fn nonce(State(state): State<AppState>, ClientIp(ip): ClientIp) -> Result<AxumJson<Value>> {
    enabled(&state)?;
    // Unauthenticated: limited per IP like the registration it leads to, and the
    // set of outstanding nonces is capped (service::nonces).
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    let nonce = token::random_string(32);
    state.nonces.issue(nonce.clone());
    Ok(AxumJson(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
    #[serde(default)]
    displayname: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<RegisterBody>,
) -> Result<AxumJson<Value>> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    let secret = enabled(&state)?.to_owned();
    if !state.nonces.take(&body.nonce) {
        return Err(Error::new(ErrorKind::BadRequest, "unrecognised nonce"));
    }
    if body.user_type.is_some() {
        return Err(Error::invalid_param("user_type is not supported"));
    }
    let _ = body.displayname; // profiles come with the rooms work

    let expected = mac(
        &secret,
        &body.nonce,
        &body.username,
        &body.password,
        body.admin,
    );
    let given = hex::decode(&body.mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    if !constant_time_eq(&expected, &given) {
        return Err(Error::forbidden("HMAC incorrect"));
    }

    let registered =
        account::create_by_admin(&state, &body.username, &body.password, body.admin, true).await?;
    let tokens = registered
        .tokens
        .expect("create_by_admin with login issues tokens");
    Ok(AxumJson(json!({
        "user_id": registered.user_id,
        "access_token": tokens.access_token,
        "device_id": tokens.device_id,
        "home_server": state.server_name,
    })))
}

fn mac(secret: &str, nonce: &str, username: &str, password: &str, admin: bool) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(username.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if admin { b"admin" } else { b"notadmin" });
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MAC Synapse's docs compute with Python's `hmac.new(secret, digestmod=sha1)`
    /// over `nonce\0user\0pass\0notadmin`, checked with Python's hmac module:
    /// `hmac.new(b"secret", b"abc\x00alice\x00pw\x00notadmin", hashlib.sha1).hexdigest()`.
    #[test]
    fn mac_matches_python_hmac() {
        let got = hex::encode(mac("secret", "abc", "alice", "pw", false));
        assert_eq!(got, "42e32623fe124933c326f9d2d67ff7c617915a10");
    }
}

#[derive(Deserialize)]
struct Page {
    from: Option<i64>,
    limit: Option<i64>,
}

/// `GET /_synapse/admin/v1/users/{userId}/media`: the user's uploads.
async fn list_user_media(
    State(app): State<AppState>,
    AdminUser(_): AdminUser,
    Path(user_id): Path<String>,
    crate::api::json::Query(page): crate::api::json::Query<Page>,
) -> Result<AxumJson<crate::service::admin::media::UserMediaList>> {
    Ok(AxumJson(
        crate::service::admin::user_media(
            &app,
            &user_id,
            page.from.unwrap_or(0),
            page.limit.unwrap_or(100),
        )
        .await?,
    ))
}
