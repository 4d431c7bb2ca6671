//! Sessions: access-token authentication, login, refresh and logout.

use std::time::Duration;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use crate::{
    domain::{password, token},
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{self, Postgres, Transaction, devices, tokens, users},
};

/// Who a request's access token belongs to.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
    pub is_guest: bool,
    /// Set when the request was made with an application service's token.
    pub appservice: Option<std::sync::Arc<crate::domain::appservice::Registration>>,
}

/// The tokens a login (or registration, or refresh) hands out.
#[derive(Debug)]
pub struct Issued {
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
    /// A new device is a device-list change (others sharing a room see it):
    /// the position it took, held until the caller has committed.
    pub new_device: Option<super::stream::DeviceListGuard>,
}

/// Resolves an access token. Expired refreshable tokens are a soft logout: the
/// client keeps its device and refreshes or logs in again.
pub async fn authenticate(state: &AppState, access_token: &str) -> Result<Session> {
    let hash = token::hash(access_token);
    let owner = tokens::lookup_access(&state.db, &hash).await?;
    let Some(owner) = owner else {
        return Err(Error::new(
            ErrorKind::UnknownToken { soft_logout: false },
            "Unrecognised access token",
        ));
    };
    if owner.deactivated {
        return Err(Error::new(
            ErrorKind::UnknownToken { soft_logout: false },
            "This account has been deactivated",
        ));
    }
    if owner
        .expires_ts
        .is_some_and(|exp| exp <= state.clock.now_ms())
    {
        return Err(Error::new(
            ErrorKind::UnknownToken { soft_logout: true },
            "Access token has expired",
        ));
    }
    Ok(Session {
        user_id: UserId::parse(owner.user_id)
            .map_err(|e| anyhow::anyhow!("stored user id: {e}"))?,
        device_id: owner.device_id.into(),
        is_admin: owner.is_admin,
        is_guest: owner.is_guest,
        appservice: None,
    })
}

/// Creates (or re-uses) a device and issues tokens for it, inside the caller's
/// transaction. Re-using a device ID invalidates the tokens it had.
pub async fn issue(
    tx: &mut Transaction<'_, Postgres>,
    state: &AppState,
    user_id: &UserId,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
    refreshable: bool,
    ip: Option<&str>,
) -> Result<Issued> {
    let device_id = device_id.unwrap_or_else(|| token::new_device_id().into());
    let now = state.clock.now_ms();
    let created = devices::upsert(
        &mut **tx,
        user_id.as_str(),
        device_id.as_str(),
        display_name,
        ip,
        now,
    )
    .await?;
    let new_device = if created {
        Some(
            super::stream::device_list_changed(
                tx,
                state,
                user_id.as_str(),
                super::stream::DeviceChange::Devices(&[device_id.to_string()]),
            )
            .await?,
        )
    } else {
        None
    };
    tokens::delete_for_device(&mut **tx, user_id.as_str(), device_id.as_str()).await?;
    let mut issued = issue_tokens(tx, state, user_id, device_id, refreshable, now).await?;
    issued.new_device = new_device;
    Ok(issued)
}

async fn issue_tokens(
    tx: &mut Transaction<'_, Postgres>,
    state: &AppState,
    user_id: &UserId,
    device_id: OwnedDeviceId,
    refreshable: bool,
    now: i64,
) -> Result<Issued> {
    let access_token = token::new_access_token();
    let (expires_ts, expires_in, refresh_token) = if refreshable {
        let lifetime = Duration::from_secs(state.config.auth.refreshable_token_lifetime_secs);
        let refresh = token::new_refresh_token();
        tokens::insert_refresh(
            &mut **tx,
            &token::hash(&refresh),
            user_id.as_str(),
            device_id.as_str(),
            now,
        )
        .await?;
        (
            Some(now + lifetime.as_millis() as i64),
            Some(lifetime),
            Some(refresh),
        )
    } else {
        (None, None, None)
    };
    tokens::insert_access(
        &mut **tx,
        &token::hash(&access_token),
        user_id.as_str(),
        device_id.as_str(),
        expires_ts,
        now,
    )
    .await?;
    Ok(Issued {
        device_id,
        access_token,
        refresh_token,
        expires_in,
        new_device: None,
    })
}

/// `m.login.password`: checks the password (argon2 off the async workers) and logs
/// the user in. Unknown users and wrong passwords get the same answer.
pub async fn login_password(
    state: &AppState,
    user_id: &UserId,
    password: String,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
    refreshable: bool,
    ip: Option<&str>,
) -> Result<Issued> {
    check_password(state, user_id, password, ip).await?;
    let mut tx = state.db.begin().await?;
    let issued = issue(
        &mut tx,
        state,
        user_id,
        device_id,
        display_name,
        refreshable,
        ip,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user_id, device_id = %issued.device_id, "login");
    Ok(issued)
}

/// Verifies a user's password: every check (login and each user-interactive
/// re-authentication) goes through here, so every one is rate-limited per user
/// and per IP, and runs argon2 under [`AppState::password_hashing`].
///
/// `M_FORBIDDEN` for a wrong password, an unknown user or an account without a
/// password (indistinguishable, in answer and in time); `M_USER_DEACTIVATED`
/// only once the password has been proven, so the answer reveals nothing about
/// an account to someone who does not know its password.
/// The answer to a login naming no account (an unknown user, or an email
/// address bound to none), after the time a real password check takes, so
/// that neither answer nor timing reveals which accounts exist.
pub async fn unknown_login(state: &AppState) -> Error {
    if let Err(e) = hash_password(state, "timing".to_owned()).await {
        return e;
    }
    Error::forbidden("Invalid username or password")
}

pub async fn check_password(
    state: &AppState,
    user_id: &UserId,
    password: String,
    ip: Option<&str>,
) -> Result<()> {
    let attempt = PasswordAttempt::take(state, user_id, ip)?;
    let user = users::get(&state.db, user_id.as_str()).await?;
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let Some(stored) = stored else {
        return Err(unknown_login(state).await);
    };
    if !verify_password(state, password, stored).await? {
        // The attempt's tokens stay spent: this is a failed guess.
        return Err(Error::forbidden("Invalid username or password"));
    }
    attempt.succeeded();
    if user.is_some_and(|u| u.deactivated) {
        return Err(Error::new(
            ErrorKind::UserDeactivated,
            "This account has been deactivated",
        ));
    }
    Ok(())
}

/// One password check's tokens from [`AppState::password_limiter`]: one keyed by
/// the user, one by the client's IP. A correct password gives them back.
struct PasswordAttempt<'a> {
    state: &'a AppState,
    keys: Vec<String>,
}

impl<'a> PasswordAttempt<'a> {
    fn take(state: &'a AppState, user_id: &UserId, ip: Option<&str>) -> Result<Self> {
        let mut attempt = Self {
            state,
            keys: Vec::with_capacity(2),
        };
        let keys =
            std::iter::once(format!("user:{user_id}")).chain(ip.map(|ip| format!("ip:{ip}")));
        for key in keys {
            if let Err(wait) = state.password_limiter.check(&key) {
                // Give back what this attempt took before it was refused.
                attempt.succeeded();
                return Err(Error::new(
                    ErrorKind::LimitExceeded {
                        retry_after_ms: wait.as_millis().max(1) as u64,
                    },
                    "Too many password attempts; try again later",
                ));
            }
            attempt.keys.push(key);
        }
        Ok(attempt)
    }

    fn succeeded(self) {
        for key in &self.keys {
            self.state.password_limiter.refund(key);
        }
    }
}

/// Hashes a password with the configured argon2 cost, off the async workers and
/// under the argon2 concurrency bound.
pub async fn hash_password(state: &AppState, password: String) -> Result<String> {
    let cost = password_cost(state);
    let _permit = argon2_permit(state).await?;
    Ok(super::blocking(move || password::hash(&password, cost)).await??)
}

async fn verify_password(state: &AppState, password: String, stored: String) -> Result<bool> {
    let _permit = argon2_permit(state).await?;
    Ok(super::blocking(move || password::verify(&password, &stored)).await?)
}

/// A slot for one argon2 computation: each holds an argon2 memory block
/// (`auth.argon2_memory_kib`), so at most one per core runs at once and the
/// rest queue here instead of piling up blocking threads and memory.
async fn argon2_permit(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>> {
    Ok(state
        .password_hashing
        .acquire()
        .await
        .map_err(|e| anyhow::anyhow!("argon2 semaphore closed: {e}"))?)
}

fn password_cost(state: &AppState) -> password::Cost {
    password::Cost {
        memory_kib: state.config.auth.argon2_memory_kib,
        iterations: state.config.auth.argon2_iterations,
    }
}

/// `POST /refresh`: consumes the refresh token and issues a new pair for the same
/// device; the old access token stops working.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<Issued> {
    let mut tx = state.db.begin().await?;
    let owner = tokens::take_refresh(&mut *tx, &token::hash(refresh_token)).await?;
    let Some((user_id, device_id)) = owner else {
        return Err(Error::new(
            ErrorKind::UnknownToken { soft_logout: false },
            "Unknown refresh token",
        ));
    };
    let user_id = UserId::parse(user_id).map_err(|e| anyhow::anyhow!("stored user id: {e}"))?;
    tokens::delete_for_device(&mut *tx, user_id.as_str(), &device_id).await?;
    let issued = issue_tokens(
        &mut tx,
        state,
        &user_id,
        device_id.into(),
        true,
        state.clock.now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(issued)
}

/// `POST /logout`: the device and its tokens go.
pub async fn logout(state: &AppState, session: &Session) -> Result<()> {
    let mut tx = state.db.begin().await?;
    let gone = devices::delete_many(
        &mut *tx,
        session.user_id.as_str(),
        &[session.device_id.to_string()],
    )
    .await?;
    let guard = super::stream::device_list_changed(
        &mut tx,
        state,
        session.user_id.as_str(),
        super::stream::DeviceChange::Devices(&gone),
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// `POST /logout/all`: every device of the user goes.
pub async fn logout_all(state: &AppState, session: &Session) -> Result<()> {
    let mut tx = state.db.begin().await?;
    let gone = devices::delete_all_except(&mut *tx, session.user_id.as_str(), None).await?;
    let guard = super::stream::device_list_changed(
        &mut tx,
        state,
        session.user_id.as_str(),
        super::stream::DeviceChange::Devices(&gone),
    )
    .await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}

/// Records when a device was last seen, at most once a minute per device so busy
/// clients do not turn every request into a write.
pub async fn touch_device(
    state: &AppState,
    session: &Session,
    ip: Option<&str>,
    user_agent: Option<&str>,
) {
    let key = format!("{}|{}", session.user_id, session.device_id);
    if state.device_touch_limiter.check(&key).is_err() {
        return;
    }
    let result = devices::touch(
        &state.db,
        session.user_id.as_str(),
        session.device_id.as_str(),
        ip,
        user_agent,
        state.clock.now_ms(),
    )
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record device last-seen");
    }
}

/// Deletes a user's devices other than `keep`: used by password changes.
pub async fn logout_other_devices(
    db: &storage::Pool,
    user_id: &UserId,
    keep: Option<&str>,
) -> Result<()> {
    devices::delete_all_except(db, user_id.as_str(), keep).await?;
    Ok(())
}

/// `POST /login/get_token` (MSC3882, behind UIA with the password): a
/// single-use token for `m.login.token`, valid `auth.login_token_lifetime_secs`.
/// `None` when the feature is off.
pub async fn issue_login_token(
    state: &AppState,
    session: &Session,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
    ip: Option<&str>,
) -> Result<(String, Duration)> {
    let requirement = super::uia::Requirement {
        kind: "get_login_token",
        flows: super::uia::reauth_flows(state, &session.user_id).await?,
        user: Some(&session.user_id),
        ip,
        operation: None,
    };
    let completed = super::uia::authenticate(state, &requirement, auth).await?;
    let lifetime = Duration::from_secs(state.config.auth.login_token_lifetime_secs);
    let login_token = token::random_string(43);
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    storage::login_tokens::insert(
        &mut *tx,
        &token::hash(&login_token),
        session.user_id.as_str(),
        now + lifetime.as_millis() as i64,
        now,
    )
    .await?;
    super::uia::consume(&mut tx, &completed).await?;
    tx.commit().await?;
    tracing::info!(user_id = %session.user_id, "login token issued");
    Ok((login_token, lifetime))
}

/// `m.login.token`: the token is used up whether or not the login succeeds;
/// unknown, used and expired tokens are all `403 M_FORBIDDEN`.
pub async fn login_token(
    state: &AppState,
    login_token: &str,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
    refreshable: bool,
    ip: Option<&str>,
) -> Result<(OwnedUserId, Issued)> {
    let user =
        storage::login_tokens::take(&state.db, &token::hash(login_token), state.clock.now_ms())
            .await?
            .ok_or_else(|| Error::forbidden("Invalid login token"))?;
    if users::get(&state.db, &user)
        .await?
        .is_none_or(|u| u.deactivated)
    {
        return Err(Error::new(
            ErrorKind::UserDeactivated,
            "This account has been deactivated",
        ));
    }
    let user_id = UserId::parse(user).map_err(|e| anyhow::anyhow!("stored user id: {e}"))?;
    let mut tx = state.db.begin().await?;
    let issued = issue(
        &mut tx,
        state,
        &user_id,
        device_id,
        display_name,
        refreshable,
        ip,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user_id, device_id = %issued.device_id, "login with a login token");
    Ok((user_id, issued))
}

/// Deletes expired login tokens. Run periodically.
pub async fn purge_expired_login_tokens(state: &AppState) -> Result<()> {
    storage::login_tokens::delete_expired(&state.db, state.clock.now_ms()).await?;
    Ok(())
}
