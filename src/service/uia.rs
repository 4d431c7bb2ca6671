//! User-interactive authentication (client-server API, "User-interactive
//! authentication API").
//!
//! 1. No `auth`: a session is created and the flows are returned (401).
//! 2. `auth` with a stage: the stage is checked. Without a `session`, one is created
//!    on the spot (matrix-nio registers with a bare `m.login.dummy`, and Synapse
//!    accepts that). `auth` with only a `session`: a stage was completed out of
//!    band, on a fallback page ([`complete_fallback`]); the session's completed
//!    stages are checked as they are.
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
    domain::{localpart, token},
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{Postgres, Transaction, registration_tokens, uia},
};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
pub const EMAIL_IDENTITY: &str = "m.login.email.identity";
/// Completed on the fallback page, by signing in at an identity provider.
pub const SSO: &str = "m.login.sso";

/// The flows that re-authenticate `user_id` (deleting devices, changing the
/// password, ...), as Synapse offers them: the password if the account has
/// one, single sign-on if it is linked at a configured identity provider.
/// An account with neither gets the password flow, which it cannot pass.
pub async fn reauth_flows(state: &AppState, user_id: &UserId) -> Result<Vec<Vec<&'static str>>> {
    let mut flows = Vec::new();
    let has_password = crate::storage::users::get(&state.db, user_id.as_str())
        .await?
        .is_some_and(|u| u.password_hash.is_some());
    if has_password {
        flows.push(vec![PASSWORD]);
    }
    if !super::sso::providers_of(state, user_id).await?.is_empty() {
        flows.push(vec![SSO]);
    }
    if flows.is_empty() {
        flows.push(vec![PASSWORD]);
    }
    Ok(flows)
}

/// What the operation needs: its kind (sessions are bound to one kind), the flows,
/// and the user it acts for (stages must authenticate as that user).
pub struct Requirement<'a> {
    pub kind: &'static str,
    pub flows: Vec<Vec<&'static str>>,
    pub user: Option<&'a UserId>,
    /// The client's IP: password stages are rate-limited by it (and by user).
    pub ip: Option<&'a str>,
    /// What exactly is authorised, when more than the kind and user (which
    /// devices are deleted): a session started for one operation completes no
    /// other (SyTest "The operation must be consistent through an interactive
    /// authentication session"; Synapse compares the request).
    pub operation: Option<String>,
}

/// A completed authentication.
#[derive(Debug)]
pub struct Completed {
    pub session_id: String,
    /// The email validation session of its m.login.email.identity stage: the
    /// operation spends it and acts on its address.
    pub threepid_sid: Option<String>,
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
        // `{"session": …}` alone: the client says a stage was completed out of
        // band (the fallback page); the session's completed stages decide.
        return if flow_done(req, &session.completed) {
            Ok(Completed {
                session_id,
                threepid_sid: session.threepid_sid,
            })
        } else {
            Err(challenge(req, &session_id, &session.completed, None))
        };
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
    if stage == SSO {
        // Done on the fallback page, never in this request: the session's
        // completed stages decide, as for `{"session": …}` alone.
        return if flow_done(req, &session.completed) {
            Ok(Completed {
                session_id,
                threepid_sid: session.threepid_sid,
            })
        } else {
            Err(challenge(req, &session_id, &session.completed, None))
        };
    }
    let mut threepid_sid = None;
    let stage_error = match auth {
        AuthData::Dummy(_) | AuthData::RegistrationToken(_) => None,
        AuthData::Password(p) => {
            check_password_stage(state, req, &p.identifier, &p.password).await?
        }
        AuthData::EmailIdentity(e) => {
            let creds = &e.thirdparty_id_creds;
            match email_purpose(req.kind) {
                Some(purpose)
                    if super::threepid::validated_session(
                        state,
                        purpose,
                        creds.sid.as_str(),
                        creds.client_secret.as_str(),
                    )
                    .await?
                    .is_some() =>
                {
                    threepid_sid = Some(creds.sid.to_string());
                    None
                }
                // Not validated (yet: clients poll this stage while the user
                // reads the mail), unknown, or another client's: one answer
                // for all, as Synapse gives.
                _ => Some((
                    "M_UNAUTHORIZED".to_owned(),
                    "The email address has not been validated".to_owned(),
                )),
            }
        }
        _ => Some((
            "M_UNRECOGNIZED".to_owned(),
            format!("Authentication type {stage} is not supported"),
        )),
    };
    if let Some((errcode, message)) = stage_error {
        let error = Some((errcode.as_str(), message));
        return Err(challenge(req, &session_id, &session.completed, error));
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
        if !registration_tokens::reserve(&mut *tx, &t.token, state.clock.now_ms()).await? {
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
    if let Some(sid) = &threepid_sid {
        uia::set_threepid(&mut *tx, &session_id, sid).await?;
    }
    tx.commit().await?;

    let mut completed = session.completed;
    if !completed.contains(&stage) {
        completed.push(stage);
    }
    if flow_done(req, &completed) {
        Ok(Completed {
            session_id,
            threepid_sid: threepid_sid.or(session.threepid_sid),
        })
    } else {
        Err(challenge(req, &session_id, &completed, None))
    }
}

/// Which validation sessions an operation's email stage accepts.
fn email_purpose(kind: &str) -> Option<crate::domain::threepid::Purpose> {
    use crate::domain::threepid::Purpose;
    match kind {
        "register" => Some(Purpose::Register),
        "reset_password" => Some(Purpose::PasswordReset),
        _ => None,
    }
}

/// Whether the completed stages cover one of the flows.
fn flow_done(req: &Requirement<'_>, completed: &[String]) -> bool {
    req.flows
        .iter()
        .any(|flow| flow.iter().all(|s| completed.iter().any(|c| c == s)))
}

/// The stages the fallback pages can complete (as Synapse: of the stages
/// Lattice offers, only the registration token needs a page; the dummy and
/// password stages are every client's own).
pub const FALLBACK_STAGES: &[&str] = &[REGISTRATION_TOKEN, SSO];

/// What the fallback page learns about a session before showing its form.
pub enum Fallback {
    /// The stage is done (or was already): show the page that tells the client.
    Done,
    /// The stage failed: show the form again with this message.
    Retry(String),
}

/// Checks that `session_id` names a live session whose operation offers
/// `stage`, for the fallback page's GET.
pub async fn fallback_session(
    state: &AppState,
    session_id: &str,
    stage: &str,
) -> Result<uia::UiaSession> {
    let session = live_session(state, uia::get(&state.db, session_id).await?)?;
    offered_for(state, &session, stage).await?;
    Ok(session)
}

/// Completes the `m.login.sso` stage of `session_id`, after `user_id` signed
/// in at an identity provider: only the session's own user completes it.
pub async fn complete_sso(state: &AppState, session_id: &str, user_id: &UserId) -> Result<()> {
    // Checked before the transaction: no pooled connection is held waiting
    // for another.
    fallback_session(state, session_id, SSO).await?;
    let mut tx = state.db.begin().await?;
    let session = live_session(state, uia::get_for_update(&mut *tx, session_id).await?)?;
    if session.user_id.as_deref() != Some(user_id.as_str()) {
        return Err(Error::forbidden(
            "You signed in as another user than the one this request is for",
        ));
    }
    uia::add_completed(&mut *tx, session_id, SSO, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Completes a stage out of band, from the fallback page's form (the client then
/// sends `{"auth": {"session": …}}`). Only the registration-token stage has a
/// page.
pub async fn complete_fallback(
    state: &AppState,
    session_id: &str,
    stage: &str,
    token: &str,
) -> Result<Fallback> {
    if stage != REGISTRATION_TOKEN {
        return Err(Error::forbidden(
            "This authentication type has no fallback page",
        ));
    }
    let mut tx = state.db.begin().await?;
    let session = live_session(state, uia::get_for_update(&mut *tx, session_id).await?)?;
    offered_for(state, &session, stage).await?;
    if session.completed.iter().any(|c| c == stage) {
        return Ok(Fallback::Done);
    }
    if token.is_empty()
        || !registration_tokens::reserve(&mut *tx, token, state.clock.now_ms()).await?
    {
        return Ok(Fallback::Retry("Invalid registration token".to_owned()));
    }
    uia::add_completed(&mut *tx, session_id, stage, Some(token)).await?;
    tx.commit().await?;
    Ok(Fallback::Done)
}

/// A session that exists and has not expired (whatever its operation).
fn live_session(state: &AppState, session: Option<uia::UiaSession>) -> Result<uia::UiaSession> {
    let lifetime_ms = state.config.auth.uia_session_lifetime_secs as i64 * 1000;
    session
        .filter(|s| s.created_ts + lifetime_ms > state.clock.now_ms() && !s.spent)
        .ok_or_else(|| Error::new(ErrorKind::InvalidParam, "Unknown or expired session ID"))
}

/// Whether the session's operation offers `stage` in one of its flows now.
async fn offered_for(state: &AppState, session: &uia::UiaSession, stage: &str) -> Result<()> {
    let offered = match (session.kind.as_str(), &session.user_id) {
        ("register", _) => super::account::registration_flows(state)
            .iter()
            .any(|f| f.contains(&stage)),
        // Re-authentication of a user: the SSO stage, when it is one of theirs.
        (_, Some(user)) if stage == SSO => {
            let user = UserId::parse(user.as_str()).map_err(anyhow::Error::from)?;
            reauth_flows(state, &user)
                .await?
                .iter()
                .any(|f| f.contains(&stage))
        }
        _ => false,
    };
    if !offered {
        return Err(Error::forbidden(
            "This authentication type is not offered for this session",
        ));
    }
    Ok(())
}

/// Spends a completed session inside the transaction that performs its operation:
/// marks the session spent and turns the registration-token use it reserved into
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
    let Some(session) = session.filter(|s| s.created_ts + lifetime_ms > state.clock.now_ms())
    else {
        return Err(Error::new(
            ErrorKind::InvalidParam,
            "Unknown or expired session ID",
        ));
    };
    if session.spent {
        // As if it were gone (it is kept only for a registration's retry).
        return Err(Error::new(
            ErrorKind::InvalidParam,
            "Unknown or expired session ID",
        ));
    }
    if session.kind != req.kind
        || session.user_id.as_deref() != req.user.map(|u| u.as_str())
        || session.operation != req.operation
    {
        return Err(Error::forbidden(
            "This session was created for another request",
        ));
    }
    Ok(session)
}

/// Starts a session for `req` and returns its ID, with the challenge a client
/// gets for it (what [`authenticate`] answers a request without `auth`): for
/// an operation that remembers something on the session before answering.
pub async fn start(state: &AppState, req: &Requirement<'_>) -> Result<(String, Error)> {
    let session_id = new_session(state, req).await?;
    let challenge = challenge(req, &session_id, &[], None);
    Ok((session_id, challenge))
}

async fn new_session(state: &AppState, req: &Requirement<'_>) -> Result<String> {
    let session_id = token::random_string(32);
    uia::create(
        &state.db,
        &session_id,
        req.kind,
        req.user.map(|u| u.as_str()),
        req.operation.as_deref(),
        state.clock.now_ms(),
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
) -> Result<Option<(String, String)>> {
    let Some(expected) = req.user else {
        return Ok(Some((
            "M_FORBIDDEN".to_owned(),
            "Password authentication needs a user".to_owned(),
        )));
    };
    let named = match identifier {
        UserIdentifier::Matrix(id) => {
            localpart::login_user_id(id.user.as_str(), &state.server_name)
        }
        UserIdentifier::Email(e) => super::threepid::user_for_email(state, &e.address)
            .await?
            .and_then(|u| UserId::parse(u).ok()),
        _ => None,
    };
    match named.as_deref() {
        Some(named) if named == expected => {}
        // Another user's credentials (a stolen access token and the thief's own
        // password): the request is refused outright, as Synapse does (403).
        Some(_) => {
            return Err(Error::forbidden(
                "The authenticated user does not match the user of this request",
            ));
        }
        None => {
            return Ok(Some((
                "M_FORBIDDEN".to_owned(),
                "Invalid username or password".to_owned(),
            )));
        }
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
        Err(Error::Matrix { kind, message }) => Ok(Some((kind.errcode().to_owned(), message))),
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
    // `completed` even when empty, as Synapse sends it (SyTest checks for it).
    let mut body = json!({
        "flows": flows,
        "params": {},
        "session": session_id,
        "completed": completed,
    });
    if let Some((errcode, message)) = error {
        body["errcode"] = json!(errcode);
        body["error"] = json!(message);
    }
    Error::Uia(Box::new(body))
}

/// Releases token reservations of sessions that expired unfinished, and deletes
/// those sessions. Run periodically.
pub async fn purge_expired(state: &AppState) -> Result<()> {
    let cutoff = state.clock.now_ms() - state.config.auth.uia_session_lifetime_secs as i64 * 1000;
    let mut tx = state.db.begin().await?;
    for token in uia::delete_expired(&mut *tx, cutoff).await? {
        registration_tokens::release(&mut *tx, &token).await?;
    }
    tx.commit().await?;
    Ok(())
}
