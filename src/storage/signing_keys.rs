//! `server_signing_keys`: our own signing keys, current and expired (remote
//! servers' keys are `server_keys`).

use sqlx::PgExecutor;

pub struct StoredKey {
    pub key_id: String,
    pub pkcs8: Vec<u8>,
}

pub async fn current(db: impl PgExecutor<'_>) -> sqlx::Result<Option<StoredKey>> {
    sqlx::query_as!(
        StoredKey,
        "select key_id, pkcs8 from server_signing_keys where expired_ts is null
         order by created_ts desc limit 1"
    )
    .fetch_optional(db)
    .await
}

/// Inserts a key unless one is already in use (two processes starting at once keep
/// the first). Returns whether this one was stored.
pub async fn insert_if_none(
    db: impl PgExecutor<'_>,
    key_id: &str,
    pkcs8: &[u8],
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into server_signing_keys (key_id, pkcs8, created_ts)
         select $1, $2, $3
         where not exists (select 1 from server_signing_keys where expired_ts is null)",
        key_id,
        pkcs8,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub struct ExpiredKey {
    pub key_id: String,
    pub pkcs8: Vec<u8>,
    pub expired_ts: i64,
}

/// Keys no longer in use, for `old_verify_keys`.
pub async fn expired(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<ExpiredKey>> {
    sqlx::query_as!(
        ExpiredKey,
        r#"select key_id, pkcs8, expired_ts as "expired_ts!" from server_signing_keys
           where expired_ts is not null order by expired_ts"#
    )
    .fetch_all(db)
    .await
}
