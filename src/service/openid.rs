//! OpenID tokens (client-server API, "OpenID"; server-server API, "OpenID"): a
//! user asks for a short-lived token and hands it to a third party (a widget,
//! an integration manager, Element Call's SFU), which asks us over federation
//! whose it is. The token proves nothing else: it lives in a table of its own,
//! so it is no access token, and an access token is no OpenID token.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::{
    domain::token,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::session::Session,
    storage::openid,
};

/// How long a token is valid (Synapse: one hour).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A new token for the session's own user; another user's ID is refused.
pub async fn request_token(
    app: &AppState,
    session: &Session,
    user_id: &UserId,
) -> Result<(String, Duration)> {
    if user_id != session.user_id {
        return Err(Error::forbidden(
            "Cannot request an OpenID token for another user",
        ));
    }
    let token = format!("lato_{}", token::random_string(43));
    let expires_ts = app.clock.now_ms() + TOKEN_LIFETIME.as_millis() as i64;
    openid::insert(
        &app.db,
        &token::hash(&token),
        session.user_id.as_str(),
        expires_ts,
    )
    .await?;
    Ok((token, TOKEN_LIFETIME))
}

/// The user a token was issued to; `401 M_UNKNOWN_TOKEN` when it is unknown,
/// expired, or its user has been deactivated.
pub async fn userinfo(app: &AppState, token: &str) -> Result<OwnedUserId> {
    let owner = openid::lookup(&app.db, &token::hash(token), app.clock.now_ms()).await?;
    let Some(owner) = owner else {
        return Err(Error::new(
            ErrorKind::UnknownToken { soft_logout: false },
            "Access token unknown or expired",
        ));
    };
    Ok(UserId::parse(owner).map_err(|e| anyhow::anyhow!("stored user id: {e}"))?)
}

/// Deletes expired tokens. Run periodically.
pub async fn purge_expired(app: &AppState) -> Result<()> {
    openid::delete_expired(&app.db, app.clock.now_ms()).await?;
    Ok(())
}
