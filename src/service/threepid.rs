//! Email addresses: validation by a mail this server sends (no identity
//! server), and the addresses bound to accounts.
//!
//! 1. `requestToken` ([`request_token`]): a validation session keyed by the
//!    client's secret, the address and the purpose; a mail with a link and a
//!    token for each higher `send_attempt` (a repeat of the same attempt answers
//!    the same `sid` and sends nothing). Rate-limited per address and per IP.
//! 2. The user opens the link ([`validate_link`]) or the client posts the token
//!    to `submit_url` ([`submit_token`]): the session is validated; the token is
//!    used up.
//! 3. The operation (registration, password reset, adding the address) checks
//!    the validated session with the client's `sid` and `client_secret`, and
//!    spends it in its own transaction: one validation, one operation.

use ruma::UserId;
use subtle::ConstantTimeEq;

use crate::{
    domain::{
        threepid::{self, EMAIL, Purpose},
        token,
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{Postgres, Transaction, now_ms, pushers, threepids},
};

/// The path of the page the mailed link opens.
pub const LINK_PATH: &str = "_synapse/client/email/validate";
/// The path clients post a typed-in token to (the requestToken `submit_url`).
pub const SUBMIT_PATH: &str = "_synapse/client/email/submit_token";

/// A `requestToken` request, after the HTTP layer.
pub struct TokenRequest {
    pub purpose: Purpose,
    pub client_secret: String,
    pub email: String,
    pub send_attempt: u64,
    pub next_link: Option<String>,
    pub ip: Option<String>,
}

pub struct TokenSent {
    pub sid: String,
    pub submit_url: String,
}

/// `POST /register/email/requestToken`, `/account/password/email/requestToken`,
/// `/account/3pid/email/requestToken`.
pub async fn request_token(state: &AppState, req: TokenRequest) -> Result<TokenSent> {
    let Some(mailer) = state.mailer.clone() else {
        return Err(Error::new(
            ErrorKind::ThreepidDenied,
            "This server does not send email",
        ));
    };
    let address = threepid::canonical_email(&req.email)
        .ok_or_else(|| Error::invalid_param("Unable to parse email address"))?;
    if req.client_secret.is_empty() || req.client_secret.len() > 255 {
        return Err(Error::invalid_param("Invalid client_secret"));
    }
    if let Some(next_link) = &req.next_link
        && !threepid::next_link_allowed(next_link, &state.config.email.next_link_domain_allowlist)
    {
        return Err(Error::invalid_param("next_link is not allowed"));
    }
    // Every request counts, as on Synapse: the address's bucket keeps anyone
    // from flooding a mailbox, the IP's keeps one client from mailing many.
    limit(
        state
            .email_ip_limiter
            .check(req.ip.as_deref().unwrap_or("")),
    )?;
    limit(state.email_address_limiter.check(&address))?;

    let submit_url = format!("{}{SUBMIT_PATH}", state.config.public_baseurl());
    let owner = threepids::owner(&state.db, EMAIL, &address).await?;
    let refusal = match (req.purpose, owner) {
        (Purpose::Register | Purpose::AddThreepid, Some(_)) => Some(Error::new(
            ErrorKind::ThreepidInUse,
            "Email is already in use",
        )),
        (Purpose::PasswordReset, None) => {
            Some(Error::new(ErrorKind::ThreepidNotFound, "Email not found"))
        }
        _ => None,
    };
    if let Some(refusal) = refusal {
        if state.config.email.inhibit_3pid_errors {
            // A session ID that names nothing: the answer looks like any other.
            return Ok(TokenSent {
                sid: token::random_string(32),
                submit_url,
            });
        }
        return Err(refusal);
    }

    let send_attempt = i64::try_from(req.send_attempt)
        .map_err(|_| Error::invalid_param("send_attempt is too large"))?;
    let now = state.clock.now_ms();
    let mail_token = token::random_string(32);
    let token_hash = token::hash(&mail_token);
    let token_expires_ts = now + state.config.email.token_lifetime_secs as i64 * 1000;
    let mut tx = state.db.begin().await?;
    let existing = threepids::find_for_update(
        &mut *tx,
        &req.client_secret,
        EMAIL,
        &address,
        req.purpose.as_str(),
    )
    .await?;
    let (sid, previous_attempt) = match existing {
        // The same attempt again (a retry): the same session, no new mail.
        Some(s) if send_attempt <= s.last_send_attempt || s.spent => {
            tx.commit().await?;
            return Ok(TokenSent {
                sid: s.session_id,
                submit_url,
            });
        }
        Some(s) => {
            threepids::renew_token(
                &mut *tx,
                &s.session_id,
                send_attempt,
                &token_hash,
                token_expires_ts,
                req.next_link.as_deref(),
            )
            .await?;
            (s.session_id, s.last_send_attempt)
        }
        None => {
            let sid = token::random_string(32);
            let inserted = threepids::insert_session(
                &mut *tx,
                &threepids::NewSession {
                    session_id: &sid,
                    purpose: req.purpose.as_str(),
                    medium: EMAIL,
                    address: &address,
                    client_secret: &req.client_secret,
                    send_attempt,
                    token_hash: &token_hash,
                    token_expires_ts,
                    next_link: req.next_link.as_deref(),
                    now,
                },
            )
            .await?;
            if !inserted {
                // A concurrent request of the same client made it (and sends).
                tx.rollback().await?;
                let s = threepids::find_for_update(
                    &state.db,
                    &req.client_secret,
                    EMAIL,
                    &address,
                    req.purpose.as_str(),
                )
                .await?
                .ok_or_else(|| anyhow::anyhow!("validation session vanished"))?;
                return Ok(TokenSent {
                    sid: s.session_id,
                    submit_url,
                });
            }
            (sid, -1)
        }
    };
    tx.commit().await?;

    // No database connection is held while the SMTP server answers.
    let link = format!(
        "{}{LINK_PATH}?sid={}&token={}",
        state.config.public_baseurl(),
        enc(&sid),
        enc(&mail_token)
    );
    if let Err(e) = mailer
        .send_validation(req.purpose, &address, &link, &mail_token)
        .await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            purpose = req.purpose.as_str(),
            "validation mail not sent"
        );
        threepids::undo_send(&state.db, &sid, &token_hash, previous_attempt).await?;
        return Err(Error::new(
            ErrorKind::Unknown,
            "Unable to send the validation email; try again later",
        ));
    }
    tracing::info!(purpose = req.purpose.as_str(), "validation mail sent");
    Ok(TokenSent { sid, submit_url })
}

fn limit(verdict: std::result::Result<(), std::time::Duration>) -> Result<()> {
    verdict.map_err(|wait| {
        Error::new(
            ErrorKind::LimitExceeded {
                retry_after_ms: wait.as_millis().max(1) as u64,
            },
            "Too many validation emails requested; try again later",
        )
    })
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Whether opening the link of session `sid` must be confirmed with a second
/// step: for password resets (an unknown session shows the same page; its
/// form then fails).
pub async fn link_needs_confirmation(state: &AppState, sid: &str) -> Result<bool> {
    Ok(threepids::get(&state.db, sid)
        .await?
        .is_none_or(|s| s.purpose == Purpose::PasswordReset.as_str()))
}

/// The link's page: validates the session with the mailed token. Returns where
/// to send the user next (the request's `next_link`), if anywhere.
pub async fn validate_link(
    state: &AppState,
    sid: &str,
    mail_token: &str,
) -> Result<Option<String>> {
    let session = threepids::validate(
        &state.db,
        sid,
        &token::hash(mail_token),
        state.clock.now_ms(),
    )
    .await?
    .ok_or_else(invalid_token)?;
    tracing::info!(purpose = session.purpose, "email address validated");
    Ok(session.next_link)
}

/// `POST submit_url`: the token typed into the client, with the session's
/// `sid` and `client_secret` (the identity-service `submitToken` shape).
pub async fn submit_token(
    state: &AppState,
    sid: &str,
    client_secret: &str,
    mail_token: &str,
) -> Result<()> {
    let session = threepids::get(&state.db, sid)
        .await?
        .filter(|s| secret_matches(s, client_secret))
        .ok_or_else(invalid_token)?;
    validate_link(state, &session.session_id, mail_token).await?;
    Ok(())
}

fn invalid_token() -> Error {
    Error::new(
        ErrorKind::ThreepidAuthFailed,
        "The token is wrong, expired or already used",
    )
}

fn secret_matches(session: &threepids::ValidationSession, client_secret: &str) -> bool {
    bool::from(
        session
            .client_secret
            .as_bytes()
            .ct_eq(client_secret.as_bytes()),
    )
}

/// Checks `m.login.email.identity` credentials: a validated, unspent session of
/// `purpose` that started within the session lifetime, with this secret.
/// `None` otherwise, for any reason (the stage error does not tell which).
pub async fn validated_session(
    state: &AppState,
    purpose: Purpose,
    sid: &str,
    client_secret: &str,
) -> Result<Option<threepids::ValidationSession>> {
    let lifetime_ms = state.config.email.session_lifetime_secs as i64 * 1000;
    Ok(threepids::get(&state.db, sid).await?.filter(|s| {
        secret_matches(s, client_secret)
            && s.purpose == purpose.as_str()
            && s.validated_ts.is_some()
            && !s.spent
            && s.created_ts + lifetime_ms > state.clock.now_ms()
    }))
}

/// Spends validation session `sid` inside the operation's transaction and
/// returns its address. Of concurrent operations presenting one session only
/// the first gets it.
pub async fn spend(tx: &mut Transaction<'_, Postgres>, sid: &str) -> Result<(String, i64)> {
    let session = threepids::spend(&mut **tx, sid).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::ThreepidAuthFailed,
            "This email validation has already been used",
        )
    })?;
    Ok((session.address, session.validated_ts.unwrap_or_default()))
}

/// Binds `address` to `user_id` in the caller's transaction;
/// `M_THREEPID_IN_USE` when another account has it.
pub async fn bind(
    tx: &mut Transaction<'_, Postgres>,
    user_id: &UserId,
    address: &str,
    validated_ts: i64,
) -> Result<()> {
    if threepids::insert(
        &mut **tx,
        user_id.as_str(),
        EMAIL,
        address,
        validated_ts,
        now_ms(),
    )
    .await?
    {
        return Ok(());
    }
    match threepids::owner(&mut **tx, EMAIL, address).await? {
        Some(owner) if owner == user_id.as_str() => Ok(()),
        _ => Err(Error::new(
            ErrorKind::ThreepidInUse,
            "Email is already in use",
        )),
    }
}

/// The local account an email address belongs to.
pub async fn user_for_email(state: &AppState, address: &str) -> Result<Option<String>> {
    let Some(address) = threepid::canonical_email(address) else {
        return Ok(None);
    };
    Ok(threepids::owner(&state.db, EMAIL, &address).await?)
}

/// `GET /account/3pid`.
pub async fn list(state: &AppState, user_id: &UserId) -> Result<Vec<threepids::Threepid>> {
    Ok(threepids::list(&state.db, user_id.as_str()).await?)
}

/// `POST /account/3pid/add` (behind UIA with the password): binds the address
/// of a validated add-session to the user.
pub async fn add(
    state: &AppState,
    session: &super::session::Session,
    client_secret: &str,
    sid: &str,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
    ip: Option<&str>,
) -> Result<()> {
    if state.mailer.is_none() {
        return Err(Error::new(
            ErrorKind::ThreepidDenied,
            "This server does not validate email addresses",
        ));
    }
    let requirement = super::uia::Requirement {
        kind: "add_threepid",
        flows: super::uia::reauth_flows(state, &session.user_id).await?,
        user: Some(&session.user_id),
        ip,
        // One authentication adds the address it was started for.
        operation: Some(sid.to_owned()),
    };
    let completed = super::uia::authenticate(state, &requirement, auth).await?;
    if validated_session(state, Purpose::AddThreepid, sid, client_secret)
        .await?
        .is_none()
    {
        return Err(Error::new(
            ErrorKind::ThreepidAuthFailed,
            "No validated email session found",
        ));
    }
    let mut tx = state.db.begin().await?;
    let (address, validated_ts) = spend(&mut tx, sid).await?;
    bind(&mut tx, &session.user_id, &address, validated_ts).await?;
    super::uia::consume(&mut tx, &completed).await?;
    tx.commit().await?;
    tracing::info!(user_id = %session.user_id, "email address added");
    Ok(())
}

/// `POST /account/3pid/delete`: unbinds one of the user's addresses. Nothing
/// was bound at an identity server, so the answer is `no-support` whether or
/// not the user had it, as Synapse answers without an identity server.
pub async fn delete(state: &AppState, user_id: &UserId, medium: &str, address: &str) -> Result<()> {
    let address = if medium == EMAIL {
        threepid::canonical_email(address).unwrap_or_else(|| address.to_owned())
    } else {
        address.to_owned()
    };
    if threepids::delete(&state.db, user_id.as_str(), medium, &address).await? {
        tracing::info!(%user_id, medium, "third-party identifier removed");
    }
    if medium == EMAIL {
        // Mail goes only to the user's own addresses, as Synapse removes the
        // address's email pushers with it.
        pushers::delete_email(&state.db, user_id.as_str(), &address).await?;
    }
    Ok(())
}

/// Deletes validation sessions older than their lifetime (and the token
/// lifetime). Run periodically.
pub async fn purge_expired(state: &AppState) -> Result<()> {
    let email = &state.config.email;
    let keep_ms = email.session_lifetime_secs.max(email.token_lifetime_secs) as i64 * 1000;
    threepids::delete_expired(&state.db, state.clock.now_ms() - keep_ms).await?;
    Ok(())
}
