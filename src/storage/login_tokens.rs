//! `login_tokens`: single-use tokens for `m.login.token`.

use sqlx::PgExecutor;

pub async fn insert(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user_id: &str,
    expires_ts: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into login_tokens (token_hash, user_id, expires_ts, created_ts)
         values ($1, $2, $3, $4)",
        token_hash,
        user_id,
        expires_ts,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Uses a token up: deletes it and returns its user if it had not expired.
/// Of concurrent logins with one token only the first finds it.
pub async fn take(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    now: i64,
) -> sqlx::Result<Option<String>> {
    let row = sqlx::query!(
        "delete from login_tokens where token_hash = $1 returning user_id, expires_ts",
        token_hash
    )
    .fetch_optional(db)
    .await?;
    Ok(row.filter(|r| r.expires_ts > now).map(|r| r.user_id))
}

pub async fn delete_expired(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!("delete from login_tokens where expires_ts <= $1", now)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}
