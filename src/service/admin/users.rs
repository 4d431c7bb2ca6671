//! Users: listing and details, creating and changing accounts (`PUT
//! /_synapse/admin/v2/users/{userId}`), deactivation, password resets, logging
//! in as a user, whois and the users linked to an identity provider.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde::Serialize;
use serde_json::Value;

use super::{local_user, next_offset};
use crate::{
    domain::localpart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{account, profile, session::Session},
    storage::{devices, users},
};

/// A user as Synapse's admin API lists them (`GET /_synapse/admin/v2/users`).
#[derive(Debug, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub creation_ts: i64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    /// Always `null`: Lattice has no user types.
    pub user_type: Option<String>,
    pub shadow_banned: bool,
    pub locked: bool,
    pub erased: bool,
}

impl From<&users::AdminRow> for UserInfo {
    fn from(row: &users::AdminRow) -> Self {
        Self {
            name: row.user_id.clone(),
            admin: row.is_admin,
            is_guest: row.is_guest,
            deactivated: row.deactivated,
            creation_ts: row.created_ts,
            displayname: row.displayname.clone(),
            avatar_url: row.avatar_url.clone(),
            user_type: None,
            shadow_banned: false,
            locked: false,
            erased: row.erased,
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize)]
pub struct UserList {
    pub users: Vec<UserInfo>,
    pub total: i64,
    /// The next page's offset, as a string (as Synapse writes it here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// One user (`GET /_synapse/admin/v2/users/{userId}`): the listed fields, the
/// user's addresses and their external IDs.
#[derive(Debug, Serialize)]
pub struct UserDetails {
    #[serde(flatten)]
    pub info: UserInfo,
    pub threepids: Vec<Threepid>,
    pub external_ids: Vec<ExternalId>,
}

/// A third-party address of a user, in Synapse's shape.
#[derive(Debug, Serialize)]
pub struct Threepid {
    pub medium: String,
    pub address: String,
    pub added_at: i64,
    pub validated_at: i64,
}

/// A user's identity at an identity provider (single sign-on).
#[derive(Debug, Serialize)]
pub struct ExternalId {
    pub auth_provider: String,
    pub external_id: String,
}

/// The user an external ID belongs to.
#[derive(Debug, Serialize)]
pub struct ExternalUser {
    pub user_id: String,
}

/// The token of a login as a user.
#[derive(Debug, Serialize)]
pub struct AdminLogin {
    pub access_token: String,
}

/// A user's devices and where they were last seen (whois).
///
/// Not ruma's `get_user_info` response: its `ConnectionInfo` writes an unknown
/// `ip`, `last_seen` or `user_agent` as `null` where Synapse leaves it out,
/// and it drops `devices` when the user has none.
#[derive(Debug, Serialize)]
pub struct Whois {
    pub user_id: OwnedUserId,
    pub devices: BTreeMap<String, WhoisDevice>,
}

#[derive(Debug, Serialize)]
pub struct WhoisDevice {
    pub sessions: Vec<WhoisSession>,
}

#[derive(Debug, Serialize)]
pub struct WhoisSession {
    pub connections: Vec<Connection>,
}

/// Where a device was last seen; each part left out while unknown.
#[derive(Debug, Serialize)]
pub struct Connection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// `GET /_synapse/admin/v2/users`: `from` is an offset token.
pub async fn list_users(
    app: &AppState,
    from: i64,
    limit: i64,
    name: Option<&str>,
    guests: bool,
    deactivated: bool,
) -> Result<UserList> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        users::admin_list(&app.db, from.max(0), limit, name, guests, deactivated).await?;
    Ok(UserList {
        users: rows.iter().map(UserInfo::from).collect(),
        total,
        next_token: next_offset(from, limit, total).map(|n| n.to_string()),
    })
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn user(app: &AppState, user_id: &str) -> Result<UserDetails> {
    let user = local_user(app, user_id)?;
    let (rows, _) = users::admin_list(&app.db, 0, 1, Some(user.as_str()), true, true).await?;
    let row = rows
        .iter()
        .find(|r| r.user_id == user.as_str())
        .ok_or_else(|| Error::not_found("User not found"))?;
    let threepids = crate::storage::threepids::list(&app.db, user.as_str())
        .await?
        .into_iter()
        .map(|t| Threepid {
            medium: t.medium,
            address: t.address,
            added_at: t.added_ts,
            validated_at: t.validated_ts,
        })
        .collect();
    let external_ids = crate::storage::sso::list_for_user(&app.db, user.as_str())
        .await?
        .into_iter()
        .map(|e| ExternalId {
            auth_provider: e.auth_provider,
            external_id: e.external_id,
        })
        .collect();
    Ok(UserDetails {
        info: UserInfo::from(row),
        threepids,
        external_ids,
    })
}

/// `GET /_synapse/admin/v1/auth_providers/{provider}/users/{externalId}`:
/// the user an identity provider's subject is linked to.
pub async fn user_by_external_id(
    app: &AppState,
    auth_provider: &str,
    external_id: &str,
) -> Result<ExternalUser> {
    let user_id = crate::storage::sso::user_for(&app.db, auth_provider, external_id)
        .await?
        .ok_or_else(|| Error::not_found("User not found"))?;
    Ok(ExternalUser { user_id })
}

/// The `external_ids` of a `PUT /_synapse/admin/v2/users/{userId}` body:
/// `[{"auth_provider": …, "external_id": …}]`, replacing the user's list.
fn parse_external_ids(value: &Value) -> Result<Option<Vec<(String, String)>>> {
    let Some(list) = value.as_array() else {
        return match value {
            Value::Null => Ok(None),
            _ => Err(Error::invalid_param("external_ids must be a list")),
        };
    };
    list.iter()
        .map(
            |e| match (e["auth_provider"].as_str(), e["external_id"].as_str()) {
                (Some(p), Some(id)) if !p.is_empty() && !id.is_empty() => {
                    Ok((p.to_owned(), id.to_owned()))
                }
                _ => Err(Error::invalid_param(
                    "each of external_ids needs auth_provider and external_id",
                )),
            },
        )
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

async fn set_external_ids(
    app: &AppState,
    by: &Session,
    user: &UserId,
    ids: &[(String, String)],
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    crate::storage::sso::delete_for_user(&mut *tx, user.as_str()).await?;
    for (provider, id) in ids {
        if !crate::storage::sso::link(&mut *tx, provider, id, user.as_str(), app.clock.now_ms())
            .await?
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                "External id is already in use",
            ));
        }
    }
    tx.commit().await?;
    tracing::info!(admin = %by.user_id, user = %user, count = ids.len(), "admin API: external IDs set");
    Ok(())
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the user when missing, or
/// changes password, display name, avatar, admin flag, deactivation. Returns
/// whether the user was created, and the user.
pub async fn put_user(
    app: &AppState,
    by: &Session,
    user_id: &str,
    body: &Value,
) -> Result<(bool, UserDetails)> {
    let user = local_user(app, user_id)?;
    let existing = users::get(&app.db, user.as_str()).await?;
    let created = existing.is_none();
    let external_ids = parse_external_ids(&body["external_ids"])?;
    let admin_flag = match &body["admin"] {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        _ => return Err(Error::invalid_param("admin must be a boolean")),
    };
    let password = match &body["password"] {
        Value::Null => None,
        Value::String(p) if !p.is_empty() => Some(p.clone()),
        _ => return Err(Error::invalid_param("password must be a non-empty string")),
    };
    if created {
        localpart::new_user_id(user.localpart(), &app.server_name)
            .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
        let hash = match &password {
            Some(p) => Some(crate::service::session::hash_password(app, p.clone()).await?),
            None => None,
        };
        users::insert(
            &app.db,
            user.as_str(),
            hash.as_deref(),
            admin_flag.unwrap_or(false),
            false,
            app.clock.now_ms(),
        )
        .await?;
        crate::storage::profiles::set_displayname(&app.db, user.as_str(), Some(user.localpart()))
            .await?;
        tracing::info!(admin = %by.user_id, user = %user, "admin API: user created");
    } else if body["deactivated"] == Value::Bool(false)
        && existing.as_ref().is_some_and(|u| u.deactivated)
    {
        // Reactivation needs a new password, as on Synapse.
        let Some(p) = password else {
            return Err(Error::invalid_param(
                "A password is required to reactivate an account",
            ));
        };
        let hash = crate::service::session::hash_password(app, p).await?;
        users::reactivate(&app.db, user.as_str(), &hash).await?;
        tracing::info!(admin = %by.user_id, user = %user, "admin API: user reactivated");
        if let Some(flag) = admin_flag {
            users::set_admin(&app.db, user.as_str(), flag).await?;
        }
    } else {
        if let Some(p) = password {
            let logout = body["logout_devices"].as_bool().unwrap_or(true);
            reset_password(app, by, user.as_str(), &p, logout).await?;
        }
        if let Some(flag) = admin_flag {
            users::set_admin(&app.db, user.as_str(), flag).await?;
            tracing::info!(admin = %by.user_id, user = %user, flag, "admin API: admin flag set");
        }
        match &body["deactivated"] {
            Value::Bool(true) if !existing.as_ref().is_some_and(|u| u.deactivated) => {
                deactivate(app, by, user.as_str(), false).await?;
            }
            _ => {}
        }
    }
    for (key, field) in [
        ("displayname", profile::Field::DisplayName),
        ("avatar_url", profile::Field::AvatarUrl),
    ] {
        if let Some(value) = body[key].as_str() {
            profile::apply(app, &user, field, Some(value.to_owned())).await?;
        }
    }
    if let Some(ids) = &external_ids {
        set_external_ids(app, by, &user, ids).await?;
    }
    Ok((created, self::user(app, user.as_str()).await?))
}

/// `POST /_synapse/admin/v1/deactivate/{userId}` (body `{"erase": bool}`).
pub async fn deactivate(app: &AppState, by: &Session, user_id: &str, erase: bool) -> Result<()> {
    let user = local_user(app, user_id)?;
    if users::get(&app.db, user.as_str()).await?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    account::deactivate_user(app, &user, erase, None, None).await?;
    tracing::info!(admin = %by.user_id, user = %user, erase, "admin API: user deactivated");
    Ok(())
}

/// `POST /_synapse/admin/v1/users/{userId}/login`: an access token acting as
/// the user, optionally expiring at `valid_until_ms`. Unlike Synapse's puppet
/// tokens it gets a device of its own, named after the admin, so the user sees
/// it in their device list and can log it out.
pub async fn login_as(
    app: &AppState,
    by: &Session,
    user_id: &str,
    body: &Value,
) -> Result<AdminLogin> {
    let user = local_user(app, user_id)?;
    if user == by.user_id {
        return Err(Error::invalid_param(
            "Cannot use the admin API to log in as yourself",
        ));
    }
    let row = users::get(&app.db, user.as_str())
        .await?
        .ok_or_else(|| Error::not_found("User not found"))?;
    if row.deactivated {
        return Err(Error::invalid_param("The user is deactivated"));
    }
    let now = app.clock.now_ms();
    let valid_until = match &body["valid_until_ms"] {
        Value::Null => None,
        v => match v.as_i64() {
            Some(ts) if ts > now => Some(ts),
            _ => {
                return Err(Error::invalid_param(
                    "valid_until_ms must be a time in the future, in milliseconds",
                ));
            }
        },
    };
    let device_id = crate::domain::token::new_device_id();
    let access_token = crate::domain::token::new_access_token();
    let mut tx = app.db.begin().await?;
    devices::upsert(
        &mut *tx,
        user.as_str(),
        &device_id,
        Some(&format!("Admin login by {}", by.user_id)),
        None,
        now,
    )
    .await?;
    crate::storage::tokens::insert_access(
        &mut *tx,
        &crate::domain::token::hash(&access_token),
        user.as_str(),
        &device_id,
        valid_until,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(admin = %by.user_id, user = %user, device = %device_id, "admin API: logged in as user");
    Ok(AdminLogin { access_token })
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`.
pub async fn reset_password(
    app: &AppState,
    by: &Session,
    user_id: &str,
    new_password: &str,
    logout_devices: bool,
) -> Result<()> {
    let user = local_user(app, user_id)?;
    if users::get(&app.db, user.as_str()).await?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    if new_password.is_empty() {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            "The password may not be empty",
        ));
    }
    let hash = crate::service::session::hash_password(app, new_password.to_owned()).await?;
    let mut tx = app.db.begin().await?;
    users::set_password_hash(&mut *tx, user.as_str(), Some(&hash)).await?;
    let guard = if logout_devices {
        let gone = devices::delete_all_except(&mut *tx, user.as_str(), None).await?;
        Some(
            crate::service::stream::device_list_changed(
                &mut tx,
                app,
                user.as_str(),
                crate::service::stream::DeviceChange::Devices(&gone),
            )
            .await?,
        )
    } else {
        None
    };
    tx.commit().await?;
    drop(guard);
    tracing::info!(admin = %by.user_id, user = %user, logout_devices, "admin API: password reset");
    Ok(())
}

/// `GET /_synapse/admin/v1/whois/{userId}` and the client API's
/// `GET /_matrix/client/v3/admin/whois/{userId}`: devices and where they were
/// last seen: address, time and user agent (each left out while unknown, as
/// the spec allows).
pub async fn whois(app: &AppState, user_id: &str) -> Result<Whois> {
    let user_id = local_user(app, user_id)?;
    let devices = devices::list(&app.db, user_id.as_str())
        .await?
        .into_iter()
        .map(|d| {
            let connection = Connection {
                ip: d.last_seen_ip,
                last_seen: d.last_seen_ts,
                user_agent: d.last_seen_user_agent,
            };
            let device = WhoisDevice {
                sessions: vec![WhoisSession {
                    connections: vec![connection],
                }],
            };
            (d.device_id, device)
        })
        .collect();
    Ok(Whois { user_id, devices })
}

/// The client API's whois: the user themself, or a server admin (as Synapse
/// allows); local users only.
pub async fn whois_for(app: &AppState, by: &Session, user_id: &str) -> Result<Whois> {
    if by.user_id.as_str() != user_id && !by.is_admin {
        return Err(Error::forbidden("You are not a server admin"));
    }
    whois(app, user_id).await
}
