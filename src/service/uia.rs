//! User-interactive authentication (client-server API, "User-interactive
//! authentication API").
//!
//! 1. No `auth`: a session is created and the flows are returned (401).
//! 2. `auth` with a stage: the stage is checked. Without a `session`, one is created
//!    on the spot (matrix-nio registers with a bare `m.login.dummy`, and Synapse
//!    accepts that).
//! 3. When the completed stages cover a flow, the operation may proceed; the caller
//!    spends the session ([`consume`]) in the transaction that performs it, so
//!    one completed session authorises one operation even when several requests
//!    present it at once.

use ruma::{
    UserId,
    api::client::uiaa::{AuthData, UserIdentifier},
};
use serde_json::json;

use crate::{
    app::AppState,
    domain::{localpart, token},
    error::{Error, ErrorKind, Result},
    storage::{Postgres, Transaction, now_ms, registration_tokens, uia},
};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// What the operation needs: its kind (sessions are bound to one kind), the flows,
/// and the user it acts for (stages must authenticate as that user).
pub struct Requirement<'a> {
    pub kind: &'static str,
    pub flows: Vec<Vec<&'static str>>,
    pub user: Option<&'a UserId>,
    /// The client's IP: password stages are rate-limited by it (and by user).
    pub ip: Option<&'a str>,
}

/// A completed authentication.
#[derive(Debug)]
pub struct Completed {
    pub session_id: String,
}

pub async fn authenticate(
    state: &AppState,
    req: &Requirement<'_>,
    auth: Option<&AuthData>,
) -> Result<Completed> {
    let Some(auth) = auth else {
        let session_id = new_session(state, req).await?;
        return Err(challenge(req, &session_id, &[], None));
    };
    let session_id = match auth.session() {
        Some(s) => s.to_owned(),
        None => new_session(state, req).await?,
    };

    // Everything but a token reservation is checked before the transaction, so no
    // pooled connection (nor the session's row lock) is held while argon2 runs or
    // waits for its turn.
    let session = valid_session(state, req, uia::get(&state.db, &session_id).await?)?;

    let Some(stage) = auth.auth_type().map(|t| t.to_string()) else {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "Fallback authentication is not supported",
        ));
    };
    if !req.flows.iter().any(|f| f.contains(&stage.as_str())) {
        return Err(challenge(
            req,
            &session_id,
            &session.completed,
            Some((
                "M_UNRECOGNIZED",
                format!("Authentication type {stage} is not offered here"),
            )),
        ));
    }
    let stage_error = match auth {
        AuthData::Dummy(_) | AuthData::RegistrationToken(_) => None,
        AuthData::Password(p) => {
            check_password_stage(state, req, &p.identifier, &p.password).await?
        }
        _ => Some((
            "M_UNRECOGNIZED",
            format!("Authentication type {stage} is not supported"),
        )),
    };
    if let Some(err) = stage_error {
        return Err(challenge(req, &session_id, &session.completed, Some(err)));
    }

    let mut tx = state.db.begin().await?;
    let session = valid_session(
        state,
        req,
        uia::get_for_update(&mut *tx, &session_id).await?,
    )?;
    let mut reserved_token = None;
    if let AuthData::RegistrationToken(t) = auth
        && session.registration_token.is_none()
    {
        if !registration_tokens::reserve(&mut *tx, &t.token, now_ms()).await? {
            return Err(challenge(
                req,
                &session_id,
                &session.completed,
                Some(("M_UNAUTHORIZED", "Invalid registration token".to_owned())),
            ));
        }
        reserved_token = Some(t.token.clone());
    }

    uia::add_completed(&mut *tx, &session_id, &stage, reserved_token.as_deref()).await?;
    tx.commit().await?;

    let mut completed = session.completed;
    if !completed.contains(&stage) {
        completed.push(stage);
    }
    let done = req
        .flows
        .iter()
        .any(|flow| flow.iter().all(|s| completed.iter().any(|c| c == s)));
    if done {
        Ok(Completed { session_id })
    } else {
        Err(challenge(req, &session_id, &completed, None))
    }
}

/// Spends a completed session inside the transaction that performs its operation:
/// deletes the session row and turns the registration-token use it reserved into
/// a completed one. Concurrent requests that completed the same session queue on
/// its row; all but the first find it gone and fail, and their transaction (the
/// account, the deletion, ...) rolls back.
pub async fn consume(tx: &mut Transaction<'_, Postgres>, completed: &Completed) -> Result<()> {
    let Some(token) = uia::claim(&mut **tx, &completed.session_id).await? else {
        return Err(Error::forbidden(
            "This authentication session has already been used",
        ));
    };
    if let Some(token) = token
        && !registration_tokens::complete(&mut **tx, &token).await?
    {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            "Invalid registration token",
        ));
    }
    Ok(())
}

/// The session, if it exists, has not expired and was made for this operation and
/// user.
fn valid_session(
    state: &AppState,
    req: &Requirement<'_>,
    session: Option<uia::UiaSession>,
) -> Result<uia::UiaSession> {
    let lifetime_ms = state.config.auth.uia_session_lifetime_secs as i64 * 1000;
    let Some(session) = session.filter(|s| s.created_ts + lifetime_ms > now_ms()) else {
        return Err(Error::new(
            ErrorKind::InvalidParam,
            "Unknown or expired session ID",
        ));
    };
    if session.kind != req.kind || session.user_id.as_deref() != req.user.map(|u| u.as_str()) {
        return Err(Error::forbidden(
            "This session was created for another request",
        ));
    }
    Ok(session)
}

async fn new_session(state: &AppState, req: &Requirement<'_>) -> Result<String> {
    let session_id = token::random_string(32);
    uia::create(
        &state.db,
        &session_id,
        req.kind,
        req.user.map(|u| u.as_str()),
        now_ms(),
    )
    .await?;
    Ok(session_id)
}

/// A password stage must name the user the operation is for, and carry their
/// password. Returns the stage error, if any.
async fn check_password_stage(
    state: &AppState,
    req: &Requirement<'_>,
    identifier: &UserIdentifier,
    password: &str,
) -> Result<Option<(&'static str, String)>> {
    let Some(expected) = req.user else {
        return Ok(Some((
            "M_FORBIDDEN",
            "Password authentication needs a user".to_owned(),
        )));
    };
    let named = match identifier {
        UserIdentifier::Matrix(id) => {
            localpart::login_user_id(id.user.as_str(), &state.server_name)
        }
        _ => None,
    };
    if named.as_deref() != Some(expected) {
        return Ok(Some((
            "M_FORBIDDEN",
            "Invalid username or password".to_owned(),
        )));
    }
    match super::session::check_password(state, expected, password.to_owned(), req.ip).await {
        Ok(()) => Ok(None),
        // Too many attempts is the request's answer (429), not a stage error.
        Err(
            e @ Error::Matrix {
                kind: ErrorKind::LimitExceeded { .. },
                ..
            },
        ) => Err(e),
        Err(Error::Matrix { kind, message }) => Ok(Some((kind.errcode(), message))),
        Err(e) => Err(e),
    }
}

/// The 401 body: flows, params, session, completed stages and the stage error.
fn challenge(
    req: &Requirement<'_>,
    session_id: &str,
    completed: &[String],
    error: Option<(&str, String)>,
) -> Error {
    let flows: Vec<_> = req
        .flows
        .iter()
        .map(|stages| json!({ "stages": stages }))
        .collect();
    let mut body = json!({
        "flows": flows,
        "params": {},
        "session": session_id,
    });
    if !completed.is_empty() {
        body["completed"] = json!(completed);
    }
    if let Some((errcode, message)) = error {
        body["errcode"] = json!(errcode);
        body["error"] = json!(message);
    }
    Error::Uia(Box::new(body))
}

/// Releases token reservations of sessions that expired unfinished, and deletes
/// those sessions. Run periodically.
pub async fn purge_expired(state: &AppState) -> Result<()> {
    let cutoff = now_ms() - state.config.auth.uia_session_lifetime_secs as i64 * 1000;
    let mut tx = state.db.begin().await?;
    for token in uia::delete_expired(&mut *tx, cutoff).await? {
        registration_tokens::release(&mut *tx, &token).await?;
    }
    tx.commit().await?;
    Ok(())
}
