//! `access_tokens` and `refresh_tokens`, keyed by sha256 of the token.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
}

pub async fn insert_access(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user_id: &str,
    device_id: &str,
    expires_ts: Option<i64>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into access_tokens (token_hash, user_id, device_id, expires_ts, created_ts)
         values ($1, $2, $3, $4, $5)",
        token_hash,
        user_id,
        device_id,
        expires_ts,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn lookup_access(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<Option<TokenOwner>> {
    sqlx::query_as!(
        TokenOwner,
        "select t.user_id, t.device_id, t.expires_ts, u.is_admin, u.is_guest, u.deactivated
         from access_tokens t join users u using (user_id)
         where t.token_hash = $1",
        token_hash
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_access(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from access_tokens where token_hash = $1",
        token_hash
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Drops every access and refresh token of one device (a re-login with the same
/// device ID, or a refresh that replaces the pair).
pub async fn delete_for_device(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "with gone as (
             delete from access_tokens where user_id = $1 and device_id = $2
         )
         delete from refresh_tokens where user_id = $1 and device_id = $2",
        user_id,
        device_id
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn insert_refresh(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user_id: &str,
    device_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into refresh_tokens (token_hash, user_id, device_id, created_ts)
         values ($1, $2, $3, $4)",
        token_hash,
        user_id,
        device_id,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Consumes a refresh token: deletes it and returns its owner. A second use finds
/// nothing.
pub async fn take_refresh(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query!(
        "delete from refresh_tokens where token_hash = $1 returning user_id, device_id",
        token_hash
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.user_id, r.device_id)))
}
