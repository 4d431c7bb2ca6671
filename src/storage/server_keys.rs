//! `server_keys` and `server_key_responses`: remote servers' verify keys.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct ServerKey {
    pub key_id: String,
    pub verify_key: String,
    pub valid_until_ts: i64,
    pub expired_ts: Option<i64>,
}

pub async fn keys_of(db: impl PgExecutor<'_>, server_name: &str) -> sqlx::Result<Vec<ServerKey>> {
    sqlx::query_as!(
        ServerKey,
        "select key_id, verify_key, valid_until_ts, expired_ts from server_keys
         where server_name = $1",
        server_name
    )
    .fetch_all(db)
    .await
}

/// Stores one key; a fresher fetch replaces the validity of a known key.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    server_name: &str,
    key: &ServerKey,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into server_keys (server_name, key_id, verify_key, valid_until_ts, expired_ts,
                                  fetched_ts)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (server_name, key_id) do update
         set valid_until_ts = greatest(server_keys.valid_until_ts, excluded.valid_until_ts),
             expired_ts = coalesce(excluded.expired_ts, server_keys.expired_ts),
             fetched_ts = excluded.fetched_ts
         where server_keys.verify_key = excluded.verify_key",
        server_name,
        key.key_id,
        key.verify_key,
        key.valid_until_ts,
        key.expired_ts,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn store_response(
    db: impl PgExecutor<'_>,
    server_name: &str,
    json: &str,
    valid_until_ts: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into server_key_responses (server_name, json, valid_until_ts, fetched_ts)
         values ($1, $2, $3, $4)
         on conflict (server_name) do update
         set json = excluded.json, valid_until_ts = excluded.valid_until_ts,
             fetched_ts = excluded.fetched_ts
         where server_key_responses.valid_until_ts <= excluded.valid_until_ts",
        server_name,
        json,
        valid_until_ts,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The newest stored response of a server: `(json, valid_until_ts)`.
pub async fn response(
    db: impl PgExecutor<'_>,
    server_name: &str,
) -> sqlx::Result<Option<(String, i64)>> {
    let row = sqlx::query!(
        "select json, valid_until_ts from server_key_responses where server_name = $1",
        server_name
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.json, r.valid_until_ts)))
}
