//! Accounts: registration, availability, password changes, deactivation, and
//! accounts created by administrators.

use ruma::{OwnedDeviceId, OwnedUserId, RoomId, UserId, api::client::uiaa::AuthData};

use super::{
    session::{self, Issued, Session},
    threepid, uia,
};
use crate::{
    domain::localpart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{
        devices, e2e_keys, profiles, pushers, rooms, threepids, uia as uia_store, user_streams,
        users,
    },
};

/// What `POST /register` asks for, after the HTTP layer.
pub struct Registration {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<OwnedDeviceId>,
    pub display_name: Option<String>,
    pub inhibit_login: bool,
    pub refreshable: bool,
    pub guest: bool,
    pub auth: Option<AuthData>,
    pub ip: Option<String>,
    /// A guest's access token, when the guest registers its own user ID to
    /// become a full account (spec: "Guest access").
    pub guest_access_token: Option<String>,
}

pub struct Registered {
    pub user_id: OwnedUserId,
    pub tokens: Option<Issued>,
}

/// The UIA flows registration offers under the current configuration.
/// With email set up, a flow with `m.login.email.identity` is offered beside
/// each (as Synapse does), or instead of each with `require_email`.
pub fn registration_flows(state: &AppState) -> Vec<Vec<&'static str>> {
    let email = state.mailer.is_some();
    let require_email = email && state.config.registration.require_email;
    let mut flows = Vec::new();
    if state.config.registration.open {
        if !require_email {
            flows.push(vec![uia::DUMMY]);
        }
        if email {
            flows.push(vec![uia::EMAIL_IDENTITY]);
        }
    }
    if state.config.registration.tokens {
        if !require_email {
            flows.push(vec![uia::REGISTRATION_TOKEN]);
        }
        if email {
            flows.push(vec![uia::REGISTRATION_TOKEN, uia::EMAIL_IDENTITY]);
        }
    }
    flows
}

pub async fn register(state: &AppState, reg: Registration) -> Result<Registered> {
    if reg.guest {
        if !state.config.registration.guests {
            return Err(Error::new(ErrorKind::Forbidden, "Guest access is disabled"));
        }
        return register_guest(state, reg).await;
    }
    let flows = registration_flows(state);
    if flows.is_empty() {
        return Err(Error::forbidden("Registration has been disabled"));
    }
    let requirement = uia::Requirement {
        kind: "register",
        flows,
        user: None,
        ip: reg.ip.as_deref(),
        operation: None,
    };
    // A registration may span several requests of one UIA session; what the
    // earlier ones asked for is remembered on it (as Synapse does).
    let session_id = reg
        .auth
        .as_ref()
        .and_then(|a| a.session())
        .map(str::to_owned);
    let memory = match &session_id {
        Some(id) => {
            let lifetime_ms = state.config.auth.uia_session_lifetime_secs as i64 * 1000;
            uia_store::registration_memory(&state.db, id, state.clock.now_ms() - lifetime_ms)
                .await?
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    let params = Remembered::merge(&reg, memory.params.as_ref());
    if let Some(user_id) = memory.registered_user {
        // The session already registered its account: a retry of the request
        // that did it (a lost response) answers with the same account. A
        // request for another account cannot use the spent session.
        let same = reg.username.as_deref().is_none_or(|name| {
            localpart::new_user_id(name, &state.server_name)
                .is_ok_and(|wanted| wanted.as_str() == user_id)
        });
        if !same {
            return Err(Error::forbidden(
                "This authentication session has already been used",
            ));
        }
        return registered_again(state, &reg, params, &user_id).await;
    }

    // A guest that registers its own localpart with its own access token
    // becomes a full account under the same user ID (as Synapse does);
    // anyone else's token, or a full account's, earns 403.
    let upgrading_guest = match (&reg.guest_access_token, &params.username) {
        (Some(token), Some(name)) => {
            let refused = || {
                Error::forbidden("Cannot register taken user ID without valid guest credentials")
            };
            let guest = session::authenticate(state, token)
                .await
                .map_err(|_| refused())?;
            if !guest.is_guest || guest.user_id.localpart() != name {
                return Err(refused());
            }
            Some(guest.user_id)
        }
        _ => None,
    };

    // Validate the username before UIA, so a client learns of a bad or taken name
    // before spending a registration token on it.
    let requested = match &params.username {
        _ if upgrading_guest.is_some() => upgrading_guest.clone(),
        Some(name) => {
            let user_id = localpart::new_user_id(name, &state.server_name)
                .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
            super::appservice::check_user_not_claimed(state, &user_id, None)?;
            if users::exists(&state.db, user_id.as_str()).await? {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
            }
            Some(user_id)
        }
        None => None,
    };
    let fresh_hash = match reg.password.clone().filter(|p| !p.is_empty()) {
        Some(password) => Some(session::hash_password(state, password).await?),
        None => None,
    };
    let remembered = serde_json::to_value(&params).map_err(anyhow::Error::from)?;
    // The flows come first, as Synapse does: clients (and their test helpers)
    // start registration with `{}` to learn them and get a session.
    let completed = match &reg.auth {
        None => {
            let (session_id, challenge) = uia::start(state, &requirement).await?;
            uia_store::remember_registration(
                &state.db,
                &session_id,
                &remembered,
                fresh_hash.as_deref(),
            )
            .await?;
            return Err(challenge);
        }
        Some(auth) => {
            if let Some(id) = &session_id {
                uia_store::remember_registration(&state.db, id, &remembered, fresh_hash.as_deref())
                    .await?;
            }
            uia::authenticate(state, &requirement, Some(auth)).await?
        }
    };
    let Some(hash) = fresh_hash.or(memory.password_hash) else {
        // Lattice has no SSO, so an account made here needs a password
        // (appservices register theirs without one, in service::appservice).
        // The session stays valid: the client may send it again with one.
        return Err(Error::new(
            ErrorKind::MissingParam,
            "A password is required",
        ));
    };

    let mut tx = state.db.begin().await?;
    // Spend the session (and its token use) first: of concurrent requests that
    // present one completed session, only the first gets past here.
    uia::consume(&mut tx, &completed).await?;
    let now = state.clock.now_ms();
    let user_id = match requested {
        Some(user_id) if upgrading_guest.is_some() => {
            if !users::upgrade_guest(&mut *tx, user_id.as_str(), &hash).await? {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
            }
            user_id
        }
        Some(user_id) => {
            if !users::insert(&mut *tx, user_id.as_str(), Some(&hash), false, false, now).await? {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
            }
            user_id
        }
        None => insert_numeric_user(&mut tx, state, Some(&hash), false, now).await?,
    };
    uia_store::set_registered(&mut *tx, &completed.session_id, user_id.as_str()).await?;
    if let Some(sid) = &completed.threepid_sid {
        // The validated address goes with the account, or neither is made.
        let (address, validated_ts) = threepid::spend(&mut tx, sid).await?;
        threepid::bind(&mut tx, &user_id, &address, validated_ts).await?;
    }
    if upgrading_guest.is_none() {
        set_default_profile(&mut tx, &user_id).await?;
    }
    let tokens = if params.inhibit_login {
        None
    } else {
        Some(
            session::issue(
                &mut tx,
                state,
                &user_id,
                params.device_id.map(Into::into),
                params.display_name.as_deref(),
                params.refreshable,
                reg.ip.as_deref(),
            )
            .await?,
        )
    };
    tx.commit().await?;
    tracing::info!(user_id = %user_id, "registered");
    Ok(Registered { user_id, tokens })
}

/// The parameters a registration session remembers from its requests; a later
/// request's own parameters win.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Remembered {
    username: Option<String>,
    device_id: Option<String>,
    display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    #[serde(default)]
    refreshable: bool,
}

impl Remembered {
    fn merge(reg: &Registration, earlier: Option<&serde_json::Value>) -> Self {
        let earlier: Self = earlier
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        Self {
            username: reg.username.clone().or(earlier.username),
            device_id: reg
                .device_id
                .as_ref()
                .map(|d| d.to_string())
                .or(earlier.device_id),
            display_name: reg.display_name.clone().or(earlier.display_name),
            inhibit_login: reg.inhibit_login || earlier.inhibit_login,
            refreshable: reg.refreshable || earlier.refreshable,
        }
    }
}

/// The answer to a retry of a registration session that already created
/// `user_id`: the same account, logged in again unless login was inhibited.
async fn registered_again(
    state: &AppState,
    reg: &Registration,
    params: Remembered,
    user_id: &str,
) -> Result<Registered> {
    let user_id = UserId::parse(user_id).map_err(anyhow::Error::from)?;
    if users::get(&state.db, user_id.as_str())
        .await?
        .is_none_or(|u| u.deactivated)
    {
        return Err(Error::forbidden(
            "This authentication session has already been used",
        ));
    }
    if params.inhibit_login {
        return Ok(Registered {
            user_id,
            tokens: None,
        });
    }
    let mut tx = state.db.begin().await?;
    let tokens = session::issue(
        &mut tx,
        state,
        &user_id,
        params.device_id.map(Into::into),
        params.display_name.as_deref(),
        params.refreshable,
        reg.ip.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Registered {
        user_id,
        tokens: Some(tokens),
    })
}

/// Guests get a numeric user ID, no password, and a device.
async fn register_guest(state: &AppState, reg: Registration) -> Result<Registered> {
    let mut tx = state.db.begin().await?;
    let now = state.clock.now_ms();
    let user_id = insert_numeric_user(&mut tx, state, None, true, now).await?;
    set_default_profile(&mut tx, &user_id).await?;
    let tokens = session::issue(
        &mut tx,
        state,
        &user_id,
        reg.device_id,
        reg.display_name.as_deref(),
        reg.refreshable,
        reg.ip.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Registered {
        user_id,
        tokens: Some(tokens),
    })
}

/// Picks the next free all-digit localpart, as Synapse does for registrations
/// without a username.
async fn insert_numeric_user(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    state: &AppState,
    hash: Option<&str>,
    guest: bool,
    now: i64,
) -> Result<OwnedUserId> {
    let mut next = users::max_numeric_localpart(&mut **tx).await? + 1;
    loop {
        let user_id = UserId::parse(format!("@{next}:{}", state.server_name))
            .map_err(|e| anyhow::anyhow!("generated user id: {e}"))?;
        if users::insert(&mut **tx, user_id.as_str(), hash, false, guest, now).await? {
            return Ok(user_id);
        }
        next += 1;
    }
}

/// `GET /register/available`.
pub async fn username_available(state: &AppState, username: &str) -> Result<()> {
    let user_id = localpart::new_user_id(username, &state.server_name)
        .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
    super::appservice::check_user_not_claimed(state, &user_id, None)?;
    if users::exists(&state.db, user_id.as_str()).await? {
        return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
    }
    Ok(())
}

/// `POST /account/password` (behind UIA with the current password). With
/// `logout_devices`, every other device is logged out. `new_password` may be
/// left out of requests that only make UIA progress.
pub async fn change_password(
    state: &AppState,
    session: &Session,
    new_password: Option<String>,
    logout_devices: bool,
    auth: Option<&AuthData>,
    ip: Option<&str>,
) -> Result<()> {
    let requirement = uia::Requirement {
        kind: "change_password",
        flows: uia::reauth_flows(state, &session.user_id).await?,
        user: Some(&session.user_id),
        ip,
        operation: None,
    };
    // UIA first, as Synapse does: a first request may carry nothing but `{}`.
    let completed = uia::authenticate(state, &requirement, auth).await?;
    let Some(new_password) = new_password else {
        return Err(Error::new(
            ErrorKind::MissingParam,
            "Missing params: new_password",
        ));
    };
    if new_password.is_empty() {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            "The new password may not be empty",
        ));
    }
    let hash = session::hash_password(state, new_password).await?;
    let mut tx = state.db.begin().await?;
    users::set_password_hash(&mut *tx, session.user_id.as_str(), Some(&hash)).await?;
    let guard = if logout_devices {
        let gone = devices::delete_all_except(
            &mut *tx,
            session.user_id.as_str(),
            Some(session.device_id.as_str()),
        )
        .await?;
        Some(
            super::stream::device_list_changed(
                &mut tx,
                state,
                session.user_id.as_str(),
                super::stream::DeviceChange::Devices(&gone),
            )
            .await?,
        )
    } else {
        None
    };
    uia::consume(&mut tx, &completed).await?;
    tx.commit().await?;
    drop(guard);
    tracing::info!(user_id = %session.user_id, logout_devices, "password changed");
    Ok(())
}

/// `POST /account/password` without an access token: a password reset,
/// authorised by an email address validated for it (the
/// `m.login.email.identity` stage after `/account/password/email/requestToken`).
/// The account that has the address gets the new password; with
/// `logout_devices` (the default) all its devices are logged out, as on Synapse.
pub async fn reset_password(
    state: &AppState,
    new_password: Option<String>,
    logout_devices: bool,
    auth: Option<&AuthData>,
    ip: Option<&str>,
) -> Result<()> {
    if state.mailer.is_none() {
        return Err(Error::new(ErrorKind::MissingToken, "Missing access token"));
    }
    let requirement = uia::Requirement {
        kind: "reset_password",
        flows: vec![vec![uia::EMAIL_IDENTITY]],
        user: None,
        ip,
        operation: None,
    };
    let completed = uia::authenticate(state, &requirement, auth).await?;
    let Some(new_password) = new_password else {
        return Err(Error::new(
            ErrorKind::MissingParam,
            "Missing params: new_password",
        ));
    };
    if new_password.is_empty() {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            "The new password may not be empty",
        ));
    }
    let Some(sid) = completed.threepid_sid.clone() else {
        return Err(Error::new(
            ErrorKind::ThreepidAuthFailed,
            "No validated email session",
        ));
    };
    let hash = session::hash_password(state, new_password).await?;
    let mut tx = state.db.begin().await?;
    uia::consume(&mut tx, &completed).await?;
    let (address, _) = threepid::spend(&mut tx, &sid).await?;
    let user = match threepids::owner(&mut *tx, crate::domain::threepid::EMAIL, &address).await? {
        Some(user) => users::get(&mut *tx, &user)
            .await?
            .filter(|u| !u.deactivated),
        None => None,
    };
    let Some(user) = user else {
        return Err(Error::new(
            ErrorKind::ThreepidNotFound,
            "Email address not found",
        ));
    };
    users::set_password_hash(&mut *tx, &user.user_id, Some(&hash)).await?;
    let guard = if logout_devices {
        let gone = devices::delete_all_except(&mut *tx, &user.user_id, None).await?;
        Some(
            super::stream::device_list_changed(
                &mut tx,
                state,
                &user.user_id,
                super::stream::DeviceChange::Devices(&gone),
            )
            .await?,
        )
    } else {
        None
    };
    tx.commit().await?;
    drop(guard);
    tracing::info!(user_id = %user.user_id, logout_devices, "password reset by email");
    Ok(())
}

/// `POST /account/deactivate` (behind UIA): see [`deactivate_user`].
pub async fn deactivate(
    state: &AppState,
    session: &Session,
    erase: bool,
    auth: Option<&AuthData>,
    ip: Option<&str>,
    id_server: Option<&str>,
) -> Result<super::identity::Unbound> {
    // An application service deactivates its own users without UIA (they
    // have no password), as Synapse allows.
    if session.appservice.is_some() {
        return deactivate_user(state, &session.user_id, erase, None, id_server).await;
    }
    let requirement = uia::Requirement {
        kind: "deactivate",
        flows: uia::reauth_flows(state, &session.user_id).await?,
        user: Some(&session.user_id),
        ip,
        operation: None,
    };
    let completed = uia::authenticate(state, &requirement, auth).await?;
    deactivate_user(state, &session.user_id, erase, Some(&completed), id_server).await
}

/// Deactivates an account (also used by administrators), as Synapse does: the
/// account can no longer log in and its ID is never reused; its devices, tokens,
/// pushers, account data and key backups are deleted; it leaves the user
/// directory (which lists active accounts only). With `erase` its display name
/// and avatar are removed and it is marked erased, so that the events it sent
/// are served redacted to anyone who was not joined when they were sent (see
/// [`super::client_event`]). Then it leaves every room it is joined to
/// (forgetting them), and rejects its invites and withdraws its knocks. Rooms
/// stay in the published room directory, as on Synapse.
///
/// First, the addresses bound on identity servers through this server are
/// unbound there (at `id_server` when given); the answer says whether every
/// identity server did.
pub async fn deactivate_user(
    state: &AppState,
    user_id: &UserId,
    erase: bool,
    uia_session: Option<&uia::Completed>,
    id_server: Option<&str>,
) -> Result<super::identity::Unbound> {
    let unbound = super::identity::unbind_all(state, user_id, id_server).await;
    let user = user_id.as_str();
    let mut tx = state.db.begin().await?;
    users::deactivate(&mut *tx, user, erase).await?;
    let gone = devices::delete_all_except(&mut *tx, user, None).await?;
    pushers::delete_all(&mut *tx, user).await?;
    user_streams::delete_all_account_data(&mut *tx, user).await?;
    e2e_keys::delete_all_backups(&mut *tx, user).await?;
    // As Synapse does: a deactivated account's addresses are free again.
    threepids::delete_all(&mut *tx, user).await?;
    if erase {
        profiles::set_displayname(&mut *tx, user, None).await?;
        profiles::set_avatar_url(&mut *tx, user, None).await?;
        profiles::set_fields(&mut *tx, user, "{}").await?;
    }
    let guard = super::stream::device_list_changed(
        &mut tx,
        state,
        user,
        super::stream::DeviceChange::Devices(&gone),
    )
    .await?;
    if let Some(completed) = uia_session {
        uia::consume(&mut tx, completed).await?;
    }
    tx.commit().await?;
    drop(guard);
    tracing::info!(user_id = %user_id, erase, "deactivated");

    // Out of the account's rooms, one room at a time (each takes that room's
    // lock; a remote invite or knock is answered through its server). A room
    // that fails is logged and skipped, as Synapse does.
    for membership in ["join", "invite", "knock"] {
        for room in rooms::rooms_for_user(&state.db, user, membership).await? {
            let Ok(room_id) = RoomId::parse(&room) else {
                continue;
            };
            let left = super::membership::leave(state, user_id, &room_id, None).await;
            if let Err(e) = &left {
                tracing::warn!(%user_id, %room_id, membership, error = %e, "deactivation: could not leave");
            } else if membership == "join"
                && let Err(e) = super::membership::forget(state, user_id, &room_id).await
            {
                tracing::warn!(%user_id, %room_id, error = %e, "deactivation: could not forget");
            }
        }
    }
    Ok(unbound)
}

/// An account created by an administrator (CLI or shared-secret registration),
/// bypassing the registration policy. Optionally logs it in.
pub async fn create_by_admin(
    state: &AppState,
    username: &str,
    password: &str,
    admin: bool,
    login: bool,
) -> Result<Registered> {
    let user_id = localpart::new_user_id(username, &state.server_name)
        .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
    let hash = session::hash_password(state, password.to_owned()).await?;
    let mut tx = state.db.begin().await?;
    if !users::insert(
        &mut *tx,
        user_id.as_str(),
        Some(&hash),
        admin,
        false,
        state.clock.now_ms(),
    )
    .await?
    {
        return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
    }
    set_default_profile(&mut tx, &user_id).await?;
    let tokens = if login {
        Some(session::issue(&mut tx, state, &user_id, None, None, false, None).await?)
    } else {
        None
    };
    tx.commit().await?;
    tracing::info!(user_id = %user_id, admin, "account created by an administrator");
    Ok(Registered { user_id, tokens })
}

/// New accounts show their localpart as display name until they set one, as on
/// Synapse.
async fn set_default_profile(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    user_id: &UserId,
) -> Result<()> {
    crate::storage::profiles::set_displayname(
        &mut **tx,
        user_id.as_str(),
        Some(user_id.localpart()),
    )
    .await?;
    Ok(())
}

/// Whether a registration token may be used now
/// (`GET /register/m.login.registration_token/validity`).
pub async fn registration_token_valid(app: &AppState, token: &str) -> Result<bool> {
    Ok(crate::storage::registration_tokens::is_valid(&app.db, token, app.clock.now_ms()).await?)
}
