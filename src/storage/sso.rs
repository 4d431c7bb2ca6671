//! `user_external_ids` (a user's accounts at identity providers) and
//! `sso_sessions` (sign-ins in progress at a provider).

use sqlx::PgExecutor;

/// The user linked to `external_id` at `auth_provider`.
pub async fn user_for(
    db: impl PgExecutor<'_>,
    auth_provider: &str,
    external_id: &str,
) -> sqlx::Result<Option<String>> {
    let row = sqlx::query!(
        "select user_id from user_external_ids
         where auth_provider = $1 and external_id = $2",
        auth_provider,
        external_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.user_id))
}

/// Links an external ID to a user; false when it is linked already (to anyone).
pub async fn link(
    db: impl PgExecutor<'_>,
    auth_provider: &str,
    external_id: &str,
    user_id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into user_external_ids (auth_provider, external_id, user_id, created_ts)
         values ($1, $2, $3, $4)
         on conflict (auth_provider, external_id) do nothing",
        auth_provider,
        external_id,
        user_id,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub struct ExternalId {
    pub auth_provider: String,
    pub external_id: String,
}

/// A user's external IDs, by provider.
pub async fn list_for_user(
    db: impl PgExecutor<'_>,
    user_id: &str,
) -> sqlx::Result<Vec<ExternalId>> {
    sqlx::query_as!(
        ExternalId,
        "select auth_provider, external_id from user_external_ids
         where user_id = $1 order by auth_provider, external_id",
        user_id
    )
    .fetch_all(db)
    .await
}

/// Removes every external ID of a user (the admin API replaces the list).
pub async fn delete_for_user(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from user_external_ids where user_id = $1", user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// A sign-in in progress.
pub struct PendingSignIn {
    pub idp_id: String,
    pub nonce: String,
    pub code_verifier: Option<String>,
    pub redirect_url: Option<String>,
    pub uia_session: Option<String>,
    pub created_ts: i64,
}

pub async fn insert_session(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    browser_hash: &[u8],
    pending: &PendingSignIn,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into sso_sessions (state_hash, browser_hash, idp_id, nonce, code_verifier,
                                   redirect_url, uia_session, created_ts)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        state_hash,
        browser_hash,
        pending.idp_id,
        pending.nonce,
        pending.code_verifier,
        pending.redirect_url,
        pending.uia_session,
        pending.created_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Takes (deletes and returns) the sign-in with this state, if this browser
/// started it: a state with another browser's cookie (or none) takes nothing
/// and leaves the sign-in to its own browser.
pub async fn take_session(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    browser_hash: &[u8],
) -> sqlx::Result<Option<PendingSignIn>> {
    sqlx::query_as!(
        PendingSignIn,
        "delete from sso_sessions where state_hash = $1 and browser_hash = $2
         returning idp_id, nonce, code_verifier, redirect_url, uia_session, created_ts",
        state_hash,
        browser_hash
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_sessions_before(db: impl PgExecutor<'_>, cutoff: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!("delete from sso_sessions where created_ts < $1", cutoff)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}
