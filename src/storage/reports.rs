//! `room_reports`, `user_reports`: what users reported of rooms and users, for
//! the administrators (event reports live with relations, `event_reports`).

use sqlx::PgExecutor;

/// A report of a room or of a user: `subject` is the room ID or the user ID.
pub struct Report {
    pub report_id: i64,
    pub subject: String,
    pub reporter: String,
    pub reason: String,
    pub created_ts: i64,
}

pub async fn insert_room_report(
    db: impl PgExecutor<'_>,
    room_id: &str,
    reporter: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into room_reports (room_id, reporter, reason, created_ts) values ($1, $2, $3, $4)",
        room_id,
        reporter,
        reason,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn insert_user_report(
    db: impl PgExecutor<'_>,
    target_user_id: &str,
    reporter: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into user_reports (target_user_id, reporter, reason, created_ts)
         values ($1, $2, $3, $4)",
        target_user_id,
        reporter,
        reason,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Room reports, newest first, `offset`/`limit` paged, optionally of one room
/// or by one reporter; with the total matching.
pub async fn room_reports(
    db: impl PgExecutor<'_> + Copy,
    offset: i64,
    limit: i64,
    room_id: Option<&str>,
    reporter: Option<&str>,
) -> sqlx::Result<(Vec<Report>, i64)> {
    let rows = sqlx::query_as!(
        Report,
        r#"select report_id, room_id as subject, reporter, reason, created_ts
           from room_reports
           where ($3::text is null or room_id = $3) and ($4::text is null or reporter = $4)
           order by report_id desc offset $1 limit $2"#,
        offset,
        limit,
        room_id,
        reporter
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(
        r#"select count(*) as "n!" from room_reports
           where ($1::text is null or room_id = $1) and ($2::text is null or reporter = $2)"#,
        room_id,
        reporter
    )
    .fetch_one(db)
    .await?;
    Ok((rows, total))
}

pub async fn room_report(db: impl PgExecutor<'_>, report_id: i64) -> sqlx::Result<Option<Report>> {
    sqlx::query_as!(
        Report,
        "select report_id, room_id as subject, reporter, reason, created_ts
         from room_reports where report_id = $1",
        report_id
    )
    .fetch_optional(db)
    .await
}

/// User reports, newest first, `offset`/`limit` paged, optionally of one user
/// or by one reporter; with the total matching.
pub async fn user_reports(
    db: impl PgExecutor<'_> + Copy,
    offset: i64,
    limit: i64,
    target_user_id: Option<&str>,
    reporter: Option<&str>,
) -> sqlx::Result<(Vec<Report>, i64)> {
    let rows = sqlx::query_as!(
        Report,
        r#"select report_id, target_user_id as subject, reporter, reason, created_ts
           from user_reports
           where ($3::text is null or target_user_id = $3) and ($4::text is null or reporter = $4)
           order by report_id desc offset $1 limit $2"#,
        offset,
        limit,
        target_user_id,
        reporter
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(
        r#"select count(*) as "n!" from user_reports
           where ($1::text is null or target_user_id = $1) and ($2::text is null or reporter = $2)"#,
        target_user_id,
        reporter
    )
    .fetch_one(db)
    .await?;
    Ok((rows, total))
}

pub async fn user_report(db: impl PgExecutor<'_>, report_id: i64) -> sqlx::Result<Option<Report>> {
    sqlx::query_as!(
        Report,
        "select report_id, target_user_id as subject, reporter, reason, created_ts
         from user_reports where report_id = $1",
        report_id
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_user_report(db: impl PgExecutor<'_>, report_id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from user_reports where report_id = $1", report_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
