//! `openid_tokens`: OpenID tokens, keyed by sha256 of the token.

use sqlx::PgExecutor;

pub async fn insert(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user_id: &str,
    expires_ts: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into openid_tokens (token_hash, user_id, expires_ts) values ($1, $2, $3)",
        token_hash,
        user_id,
        expires_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The owner of a token that has not expired at `now`, unless the owner has
/// been deactivated since.
pub async fn lookup(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    now: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select t.user_id from openid_tokens t join users u using (user_id)
         where t.token_hash = $1 and t.expires_ts > $2 and not u.deactivated",
        token_hash,
        now
    )
    .fetch_optional(db)
    .await
}

/// Deletes the tokens that expired before `now`; returns how many.
pub async fn delete_expired(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!("delete from openid_tokens where expires_ts <= $1", now)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}
