//! `unapplied_redactions`: redactions waiting for the event they name, or
//! refused, and withheld from clients (see `domain::redaction`).

use sqlx::PgExecutor;

/// The room and sender of a timeline event (not an outlier), for the
/// redaction rule.
pub async fn origin(
    db: impl PgExecutor<'_>,
    event_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query!(
        "select room_id, sender from events where event_id = $1",
        event_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.room_id, r.sender)))
}

/// Records a redaction as not applied.
pub async fn hold(
    db: impl PgExecutor<'_>,
    redaction_id: &str,
    redacts: &str,
    room_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into unapplied_redactions (redaction_id, redacts, room_id) values ($1, $2, $3)
         on conflict do nothing",
        redaction_id,
        redacts,
        room_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The unapplied redactions naming `event_id`.
pub async fn naming(db: impl PgExecutor<'_>, event_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select redaction_id from unapplied_redactions where redacts = $1 order by redaction_id",
        event_id
    )
    .fetch_all(db)
    .await
}

/// A held redaction was applied.
pub async fn release(db: impl PgExecutor<'_>, redaction_id: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from unapplied_redactions where redaction_id = $1",
        redaction_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Which of these redactions are not applied.
pub async fn unapplied(db: impl PgExecutor<'_>, ids: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select redaction_id from unapplied_redactions where redaction_id = any($1)",
        ids
    )
    .fetch_all(db)
    .await
}
