//! `devices`: a user's logged-in sessions. Deleting a device deletes its tokens
//! (foreign keys cascade).

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Device {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

/// Creates the device, or keeps the existing one of that ID (a login that names an
/// existing device re-uses it). The display name is only set on creation.
/// Returns whether the device is new.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    ip: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"insert into devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts)
         values ($1, $2, $3, $5, $4, $5)
         on conflict (user_id, device_id) do update
         set last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip
         returning (xmax = 0) as "created!""#,
        user_id,
        device_id,
        display_name,
        ip,
        now
    )
    .fetch_one(db)
    .await
}

pub async fn list(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<Device>> {
    sqlx::query_as!(
        Device,
        "select device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent from devices
         where user_id = $1 order by created_ts, device_id",
        user_id
    )
    .fetch_all(db)
    .await
}

pub async fn get(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<Option<Device>> {
    sqlx::query_as!(
        Device,
        "select device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent from devices
         where user_id = $1 and device_id = $2",
        user_id,
        device_id
    )
    .fetch_optional(db)
    .await
}

/// Returns `false` when there is no such device.
pub async fn set_display_name(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update devices set display_name = $3 where user_id = $1 and device_id = $2",
        user_id,
        device_id,
        display_name
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn touch(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    ip: Option<&str>,
    user_agent: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update devices set last_seen_ts = $3, last_seen_ip = coalesce($4, last_seen_ip),
                            last_seen_user_agent = coalesce($5, last_seen_user_agent)
         where user_id = $1 and device_id = $2",
        user_id,
        device_id,
        now,
        ip,
        user_agent
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the listed devices (and their tokens); unknown IDs are ignored.
pub async fn delete_many(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_ids: &[String],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "delete from devices where user_id = $1 and device_id = any($2) returning device_id",
        user_id,
        device_ids
    )
    .fetch_all(db)
    .await
}

/// Deletes every device of the user except `keep` (when given); returns the
/// deleted devices' IDs.
pub async fn delete_all_except(
    db: impl PgExecutor<'_>,
    user_id: &str,
    keep: Option<&str>,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "delete from devices where user_id = $1 and device_id is distinct from $2
         returning device_id",
        user_id,
        keep
    )
    .fetch_all(db)
    .await
}
