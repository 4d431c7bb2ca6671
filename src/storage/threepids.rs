//! `user_threepids` (addresses bound to accounts) and
//! `threepid_validation_sessions` (requestToken sessions and their tokens).

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Threepid {
    pub medium: String,
    pub address: String,
    pub validated_ts: i64,
    pub added_ts: i64,
}

/// A user's addresses, oldest first.
pub async fn list(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<Threepid>> {
    sqlx::query_as!(
        Threepid,
        "select medium, address, validated_ts, added_ts from user_threepids
         where user_id = $1 order by added_ts, address",
        user_id
    )
    .fetch_all(db)
    .await
}

/// The account an address belongs to.
pub async fn owner(
    db: impl PgExecutor<'_>,
    medium: &str,
    address: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select user_id from user_threepids where medium = $1 and address = $2",
        medium,
        address
    )
    .fetch_optional(db)
    .await
}

/// Binds an address to `user_id`. False when it is bound already (to anyone).
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: &str,
    medium: &str,
    address: &str,
    validated_ts: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let row = sqlx::query_scalar!(
        "insert into user_threepids (medium, address, user_id, validated_ts, added_ts)
         values ($1, $2, $3, $4, $5)
         on conflict (medium, address) do nothing
         returning user_id",
        medium,
        address,
        user_id,
        validated_ts,
        now
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Unbinds one of `user_id`'s addresses; false when it had no such address.
pub async fn delete(
    db: impl PgExecutor<'_>,
    user_id: &str,
    medium: &str,
    address: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "delete from user_threepids where user_id = $1 and medium = $2 and address = $3",
        user_id,
        medium,
        address
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn delete_all(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from user_threepids where user_id = $1", user_id)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ValidationSession {
    pub session_id: String,
    pub purpose: String,
    pub medium: String,
    pub address: String,
    pub client_secret: String,
    pub last_send_attempt: i64,
    pub next_link: Option<String>,
    pub validated_ts: Option<i64>,
    pub spent: bool,
    pub created_ts: i64,
}

/// The session a client's repeated requestToken names (same secret, address
/// and purpose), locked until the transaction ends.
pub async fn find_for_update(
    db: impl PgExecutor<'_>,
    client_secret: &str,
    medium: &str,
    address: &str,
    purpose: &str,
) -> sqlx::Result<Option<ValidationSession>> {
    sqlx::query_as!(
        ValidationSession,
        "select session_id, purpose, medium, address, client_secret, last_send_attempt,
                next_link, validated_ts, spent, created_ts
         from threepid_validation_sessions
         where client_secret = $1 and medium = $2 and address = $3 and purpose = $4
         for update",
        client_secret,
        medium,
        address,
        purpose
    )
    .fetch_optional(db)
    .await
}

pub async fn get(
    db: impl PgExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<ValidationSession>> {
    sqlx::query_as!(
        ValidationSession,
        "select session_id, purpose, medium, address, client_secret, last_send_attempt,
                next_link, validated_ts, spent, created_ts
         from threepid_validation_sessions where session_id = $1",
        session_id
    )
    .fetch_optional(db)
    .await
}

pub struct NewSession<'a> {
    pub session_id: &'a str,
    pub purpose: &'a str,
    pub medium: &'a str,
    pub address: &'a str,
    pub client_secret: &'a str,
    pub send_attempt: i64,
    pub token_hash: &'a [u8],
    pub token_expires_ts: i64,
    pub next_link: Option<&'a str>,
    pub now: i64,
}

/// A new session; false when a concurrent request created the same one.
pub async fn insert_session(db: impl PgExecutor<'_>, s: &NewSession<'_>) -> sqlx::Result<bool> {
    let row = sqlx::query_scalar!(
        "insert into threepid_validation_sessions
             (session_id, purpose, medium, address, client_secret, last_send_attempt,
              token_hash, token_expires_ts, next_link, created_ts)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (client_secret, medium, address, purpose) do nothing
         returning session_id",
        s.session_id,
        s.purpose,
        s.medium,
        s.address,
        s.client_secret,
        s.send_attempt,
        s.token_hash,
        s.token_expires_ts,
        s.next_link,
        s.now
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// A resend: a new token (the old one stops working) for a higher send_attempt.
pub async fn renew_token(
    db: impl PgExecutor<'_>,
    session_id: &str,
    send_attempt: i64,
    token_hash: &[u8],
    token_expires_ts: i64,
    next_link: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update threepid_validation_sessions
         set last_send_attempt = $2, token_hash = $3, token_expires_ts = $4,
             next_link = coalesce($5, next_link)
         where session_id = $1",
        session_id,
        send_attempt,
        token_hash,
        token_expires_ts,
        next_link
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The mail carrying `token_hash` could not be sent: the token is withdrawn
/// and the send attempt forgotten, so the client's retry sends again.
pub async fn undo_send(
    db: impl PgExecutor<'_>,
    session_id: &str,
    token_hash: &[u8],
    previous_attempt: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update threepid_validation_sessions
         set last_send_attempt = $3, token_hash = null
         where session_id = $1 and token_hash = $2",
        session_id,
        token_hash,
        previous_attempt
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Validates a session with its token: the token is used up (it validates
/// once). `None` when the session, the token or its lifetime do not match.
pub async fn validate(
    db: impl PgExecutor<'_>,
    session_id: &str,
    token_hash: &[u8],
    now: i64,
) -> sqlx::Result<Option<ValidationSession>> {
    sqlx::query_as!(
        ValidationSession,
        "update threepid_validation_sessions
         set validated_ts = coalesce(validated_ts, $3), token_hash = null
         where session_id = $1 and token_hash = $2 and token_expires_ts > $3 and not spent
         returning session_id, purpose, medium, address, client_secret, last_send_attempt,
                   next_link, validated_ts, spent, created_ts",
        session_id,
        token_hash,
        now
    )
    .fetch_optional(db)
    .await
}

/// Spends a validated session for the operation it authorised. `None` when it
/// was spent already, or is not validated; otherwise the session.
pub async fn spend(
    db: impl PgExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<ValidationSession>> {
    sqlx::query_as!(
        ValidationSession,
        "update threepid_validation_sessions set spent = true
         where session_id = $1 and not spent and validated_ts is not null
         returning session_id, purpose, medium, address, client_secret, last_send_attempt,
                   next_link, validated_ts, spent, created_ts",
        session_id
    )
    .fetch_optional(db)
    .await
}

/// Deletes sessions created before `cutoff`.
pub async fn delete_expired(db: impl PgExecutor<'_>, cutoff: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from threepid_validation_sessions where created_ts < $1",
        cutoff
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
