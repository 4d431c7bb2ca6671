//! `registration_tokens`: tokens for `m.login.registration_token`.
//!
//! A token use is *pending* from the UIA stage that presents it until the account is
//! created (then *completed*) or the session expires (then released), so a token with
//! `uses_allowed = 1` cannot register two accounts in parallel.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i32>,
    pub pending: i32,
    pub completed: i32,
    pub expiry_ts: Option<i64>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    token: &str,
    uses_allowed: Option<i32>,
    expiry_ts: Option<i64>,
    now: i64,
) -> sqlx::Result<bool> {
    let row = sqlx::query!(
        "insert into registration_tokens (token, uses_allowed, expiry_ts, created_ts)
         values ($1, $2, $3, $4) on conflict (token) do nothing returning token",
        token,
        uses_allowed,
        expiry_ts,
        now
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<RegistrationToken>> {
    sqlx::query_as!(
        RegistrationToken,
        "select token, uses_allowed, pending, completed, expiry_ts
         from registration_tokens order by created_ts"
    )
    .fetch_all(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from registration_tokens where token = $1", token)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the token exists, has not expired and has uses left.
pub async fn is_valid(db: impl PgExecutor<'_>, token: &str, now: i64) -> sqlx::Result<bool> {
    let row = sqlx::query_scalar!(
        "select 1 as one from registration_tokens
         where token = $1
           and (expiry_ts is null or expiry_ts > $2)
           and (uses_allowed is null or pending + completed < uses_allowed)",
        token,
        now
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Reserves one use of a valid token. Returns `false` if the token is unknown,
/// expired or used up.
pub async fn reserve(db: impl PgExecutor<'_>, token: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update registration_tokens set pending = pending + 1
         where token = $1
           and (expiry_ts is null or expiry_ts > $2)
           and (uses_allowed is null or pending + completed < uses_allowed)",
        token,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Turns a pending use into a completed one, if the token still has a use left
/// (an administrator may have lowered `uses_allowed` or deleted the token since
/// the reservation). `false`: no use was taken.
pub async fn complete(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<bool> {
    let row = sqlx::query_scalar!(
        "update registration_tokens set pending = greatest(pending - 1, 0), completed = completed + 1
         where token = $1 and (uses_allowed is null or completed < uses_allowed)
         returning token",
        token
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Releases a pending use (its UIA session expired unfinished).
pub async fn release(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "update registration_tokens set pending = greatest(pending - 1, 0) where token = $1",
        token
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<Option<RegistrationToken>> {
    sqlx::query_as!(
        RegistrationToken,
        "select token, uses_allowed, pending, completed, expiry_ts
         from registration_tokens where token = $1",
        token
    )
    .fetch_optional(db)
    .await
}

/// Sets a token's allowed uses and expiry; false when it does not exist.
pub async fn update(
    db: impl PgExecutor<'_>,
    token: &str,
    uses_allowed: Option<i32>,
    expiry_ts: Option<i64>,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update registration_tokens set uses_allowed = $2, expiry_ts = $3 where token = $1",
        token,
        uses_allowed,
        expiry_ts
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
