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
}

pub async fn create(
    db: impl PgExecutor<'_>,
    session_id: &str,
    kind: &str,
    user_id: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into uia_sessions (session_id, kind, user_id, created_ts) values ($1, $2, $3, $4)",
        session_id,
        kind,
        user_id,
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
        "select session_id, kind, user_id, completed, registration_token, created_ts
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
        "select session_id, kind, user_id, completed, registration_token, created_ts
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

/// Deletes a session to spend it. `None` when it was already gone (spent by a
/// concurrent request that completed it too, or expired); otherwise the
/// registration token whose use it reserved, if any. Concurrent claims of one
/// session wait on its row, and only the first finds it.
pub async fn claim(
    db: impl PgExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar!(
        "delete from uia_sessions where session_id = $1 returning registration_token",
        session_id
    )
    .fetch_optional(db)
    .await
}

/// Deletes sessions created before `cutoff`; returns the registration tokens whose
/// pending uses they held, to be released.
pub async fn delete_expired(db: impl PgExecutor<'_>, cutoff: i64) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query_scalar!(
        "delete from uia_sessions where created_ts < $1 returning registration_token",
        cutoff
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().flatten().collect())
}
