//! Registration tokens (`/_synapse/admin/v1/registration_tokens`): the
//! tokens that registration's `m.login.registration_token` stage takes.

use serde::Serialize;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::AppState,
    service::session::Session,
    storage::{now_ms, registration_tokens as tokens},
};

/// A registration token and its use, in Synapse's shape.
#[derive(Debug, Serialize)]
pub struct RegistrationToken {
    pub token: String,
    /// `null`: unlimited.
    pub uses_allowed: Option<i32>,
    pub pending: i32,
    pub completed: i32,
    /// `null`: never expires.
    pub expiry_time: Option<i64>,
}

impl From<tokens::RegistrationToken> for RegistrationToken {
    fn from(t: tokens::RegistrationToken) -> Self {
        Self {
            token: t.token,
            uses_allowed: t.uses_allowed,
            pending: t.pending,
            completed: t.completed,
            expiry_time: t.expiry_ts,
        }
    }
}

/// Every registration token.
#[derive(Debug, Serialize)]
pub struct RegistrationTokens {
    pub registration_tokens: Vec<RegistrationToken>,
}

/// `GET /_synapse/admin/v1/registration_tokens`.
pub async fn list_tokens(app: &AppState) -> Result<RegistrationTokens> {
    let all = tokens::list(&app.db).await?;
    Ok(RegistrationTokens {
        registration_tokens: all.into_iter().map(RegistrationToken::from).collect(),
    })
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn get_token(app: &AppState, token: &str) -> Result<RegistrationToken> {
    tokens::get(&app.db, token)
        .await?
        .map(RegistrationToken::from)
        .ok_or_else(|| Error::not_found("No such registration token"))
}

fn uses_and_expiry(body: &Value) -> Result<(Option<i32>, Option<i64>)> {
    let uses = match &body["uses_allowed"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .filter(|n| (0..=i32::MAX as i64).contains(n))
                .ok_or_else(|| {
                    Error::invalid_param("uses_allowed must be a non-negative integer")
                })? as i32,
        ),
    };
    let expiry = match &body["expiry_time"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .filter(|t| *t > now_ms())
                .ok_or_else(|| Error::invalid_param("expiry_time must be a future timestamp"))?,
        ),
    };
    Ok((uses, expiry))
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub async fn create_token(app: &AppState, by: &Session, body: &Value) -> Result<RegistrationToken> {
    let (uses, expiry) = uses_and_expiry(body)?;
    let token = match &body["token"] {
        Value::Null => {
            let length = body["length"].as_u64().unwrap_or(16).clamp(1, 64) as usize;
            crate::domain::token::random_string(length)
        }
        Value::String(t)
            if !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)) =>
        {
            t.clone()
        }
        _ => {
            return Err(Error::invalid_param(
                "token must be 1-64 of [A-Za-z0-9._~-]",
            ));
        }
    };
    if !tokens::insert(&app.db, &token, uses, expiry, app.clock.now_ms()).await? {
        return Err(Error::invalid_param("Token already exists"));
    }
    tracing::info!(admin = %by.user_id, "admin API: registration token created");
    get_token(app, &token).await
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn update_token(
    app: &AppState,
    by: &Session,
    token: &str,
    body: &Value,
) -> Result<RegistrationToken> {
    let current = tokens::get(&app.db, token)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    let (uses, expiry) = uses_and_expiry(body)?;
    let uses = if body.get("uses_allowed").is_some() {
        uses
    } else {
        current.uses_allowed
    };
    let expiry = if body.get("expiry_time").is_some() {
        expiry
    } else {
        current.expiry_ts
    };
    tokens::update(&app.db, token, uses, expiry).await?;
    tracing::info!(admin = %by.user_id, "admin API: registration token updated");
    get_token(app, token).await
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete_token(app: &AppState, by: &Session, token: &str) -> Result<()> {
    if !tokens::delete(&app.db, token).await? {
        return Err(Error::not_found("No such registration token"));
    }
    tracing::info!(admin = %by.user_id, "admin API: registration token deleted");
    Ok(())
}
