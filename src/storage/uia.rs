//! `uia_sessions`: user-interactive authentication sessions.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct UiaSession {
    pub session_id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub completed: Vec<String>,
    pub registration_token: Option<String>,
    pub created_ts: i64,
    /// Spent by the operation it authorised (kept until it expires).
    pub spent: bool,
    /// What it authorises beyond its kind and user, if anything.
    pub operation: Option<String>,
    /// The email validation session its m.login.email.identity stage used.
    pub threepid_sid: Option<String>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    session_id: &str,
    kind: &str,
    user_id: Option<&str>,
    operation: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into uia_sessions (session_id, kind, user_id, operation, created_ts)
         values ($1, $2, $3, $4, $5)",
        session_id,
        kind,
        user_id,
        operation,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Loads a session (no lock).
pub async fn get(db: impl PgExecutor<'_>, session_id: &str) -> sqlx::Result<Option<UiaSession>> {
    sqlx::query_as!(
        UiaSession,
        "select session_id, kind, user_id, completed, registration_token, created_ts, spent,
                operation, threepid_sid
         from uia_sessions where session_id = $1",
        session_id
    )
    .fetch_optional(db)
    .await
}

/// Loads a session and locks its row until the transaction ends, so two requests
/// racing on one session complete it once.
pub async fn get_for_update(
    db: impl PgExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<UiaSession>> {
    sqlx::query_as!(
        UiaSession,
        "select session_id, kind, user_id, completed, registration_token, created_ts, spent,
                operation, threepid_sid
         from uia_sessions where session_id = $1 for update",
        session_id
    )
    .fetch_optional(db)
    .await
}

pub async fn add_completed(
    db: impl PgExecutor<'_>,
    session_id: &str,
    stage: &str,
    registration_token: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update uia_sessions
         set completed = array_append(completed, $2),
             registration_token = coalesce($3, registration_token)
         where session_id = $1 and not ($2 = any(completed))",
        session_id,
        stage,
        registration_token
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records the validation session an m.login.email.identity stage used.
pub async fn set_threepid(
    db: impl PgExecutor<'_>,
    session_id: &str,
    threepid_sid: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update uia_sessions set threepid_sid = $2 where session_id = $1",
        session_id,
        threepid_sid
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Spends a session. `None` when it was already spent (by a concurrent
/// request that completed it too) or is gone (expired); otherwise the
/// registration token whose use it reserved, if any. Concurrent claims of one
/// session wait on its row, and only the first finds it unspent. The row stays
/// until it expires, for [`registered`].
pub async fn claim(
    db: impl PgExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar!(
        "update uia_sessions set spent = true
         where session_id = $1 and not spent returning registration_token",
        session_id
    )
    .fetch_optional(db)
    .await
}

/// What a registration session remembers.
#[derive(Debug, Default)]
pub struct RegistrationMemory {
    /// The parameters of its earlier requests (JSON, written by the service).
    pub params: Option<serde_json::Value>,
    pub password_hash: Option<String>,
    /// The account it registered, once spent.
    pub registered_user: Option<String>,
}

/// The memory of registration session `session_id` if it was created at or
/// after `cutoff` (none for other kinds).
pub async fn registration_memory(
    db: impl PgExecutor<'_>,
    session_id: &str,
    cutoff: i64,
) -> sqlx::Result<Option<RegistrationMemory>> {
    sqlx::query_as!(
        RegistrationMemory,
        "select params, password_hash, registered_user from uia_sessions
         where session_id = $1 and kind = 'register' and created_ts >= $2",
        session_id,
        cutoff
    )
    .fetch_optional(db)
    .await
}

/// Remembers a registration request's parameters (and password hash, when it
/// carried a password) on an unspent registration session.
pub async fn remember_registration(
    db: impl PgExecutor<'_>,
    session_id: &str,
    params: &serde_json::Value,
    password_hash: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update uia_sessions set params = $2, password_hash = coalesce($3, password_hash)
         where session_id = $1 and kind = 'register' and not spent",
        session_id,
        params,
        password_hash
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records the account a spent registration session created.
pub async fn set_registered(
    db: impl PgExecutor<'_>,
    session_id: &str,
    user_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update uia_sessions set registered_user = $2 where session_id = $1",
        session_id,
        user_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes sessions created before `cutoff`; returns the registration tokens whose
/// pending uses they held, to be released.
pub async fn delete_expired(db: impl PgExecutor<'_>, cutoff: i64) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query_scalar!(
        "delete from uia_sessions where created_ts < $1
         returning case when spent then null else registration_token end",
        cutoff
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().flatten().collect())
}
