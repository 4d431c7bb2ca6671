//! `server_keys` and `server_key_json`: remote servers' verify keys, and the
//! signed responses that listed them (served again by the notary).

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

/// Stores one key; a fresher fetch replaces the validity of a known key. A
/// key ID already stored with another key is left alone: returns whether the
/// key is now stored as given.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    server_name: &str,
    key: &ServerKey,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
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
    Ok(done.rows_affected() == 1)
}

/// Records `json` (a signed key response valid until `valid_until_ts`) as the
/// response listing `key_id`, unless one valid for longer is stored.
pub async fn store_response(
    db: impl PgExecutor<'_>,
    server_name: &str,
    key_id: &str,
    json: &str,
    valid_until_ts: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into server_key_json (server_name, key_id, json, valid_until_ts, fetched_ts)
         values ($1, $2, $3, $4, $5)
         on conflict (server_name, key_id) do update
         set json = excluded.json, valid_until_ts = excluded.valid_until_ts,
             fetched_ts = excluded.fetched_ts
         where server_key_json.valid_until_ts <= excluded.valid_until_ts",
        server_name,
        key_id,
        json,
        valid_until_ts,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A stored key response and the key it was kept for.
#[derive(Debug, Clone)]
pub struct KeyResponse {
    pub key_id: String,
    pub json: String,
    pub valid_until_ts: i64,
}

/// The responses stored for a server's keys, one per key ID.
pub async fn responses(
    db: impl PgExecutor<'_>,
    server_name: &str,
) -> sqlx::Result<Vec<KeyResponse>> {
    sqlx::query_as!(
        KeyResponse,
        "select key_id, json, valid_until_ts from server_key_json where server_name = $1
         order by key_id",
        server_name
    )
    .fetch_all(db)
    .await
}
