//! `media`, `media_thumbnails`, `url_previews`: the media repository's index.
//! The bytes are files named by their SHA-256 (see `service::media`).

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Media {
    pub server_name: String,
    pub media_id: String,
    pub user_id: Option<String>,
    pub content_type: Option<String>,
    pub upload_name: Option<String>,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub created_ts: i64,
    pub unused_expires_ts: Option<i64>,
    pub quarantined: bool,
}

pub async fn insert(db: impl PgExecutor<'_>, m: &Media) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into media (server_name, media_id, user_id, content_type, upload_name, size,
             sha256, created_ts, unused_expires_ts, quarantined)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        m.server_name,
        m.media_id,
        m.user_id,
        m.content_type,
        m.upload_name,
        m.size,
        m.sha256,
        m.created_ts,
        m.unused_expires_ts,
        m.quarantined
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records (or refreshes) a cached copy of remote media.
pub async fn upsert_remote(db: impl PgExecutor<'_>, m: &Media) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into media (server_name, media_id, user_id, content_type, upload_name, size,
             sha256, created_ts, unused_expires_ts, quarantined)
         values ($1, $2, null, $3, $4, $5, $6, $7, null, false)
         on conflict (server_name, media_id) do update
         set content_type = excluded.content_type, upload_name = excluded.upload_name,
             size = excluded.size, sha256 = excluded.sha256",
        m.server_name,
        m.media_id,
        m.content_type,
        m.upload_name,
        m.size,
        m.sha256,
        m.created_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_id: &str,
) -> sqlx::Result<Option<Media>> {
    sqlx::query_as!(
        Media,
        "select server_name, media_id, user_id, content_type, upload_name, size, sha256,
                created_ts, unused_expires_ts, quarantined
         from media where server_name = $1 and media_id = $2",
        server_name,
        media_id
    )
    .fetch_optional(db)
    .await
}

/// Fills an id reserved by `/create` with its bytes; false if it was already
/// filled (or is not the user's, or lapsed).
pub async fn fill(
    db: impl PgExecutor<'_>,
    m: &Media,
    user_id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update media set content_type = $3, upload_name = $4, size = $5, sha256 = $6,
             unused_expires_ts = null
         where server_name = $1 and media_id = $2 and user_id = $7 and sha256 is null
           and unused_expires_ts > $8",
        m.server_name,
        m.media_id,
        m.content_type,
        m.upload_name,
        m.size,
        m.sha256,
        user_id,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Unfilled `/create` ids a user holds.
pub async fn pending_count(db: impl PgExecutor<'_>, user_id: &str, now: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from media
           where user_id = $1 and sha256 is null and unused_expires_ts > $2"#,
        user_id,
        now
    )
    .fetch_one(db)
    .await
}

pub async fn touch(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update media set last_access_ts = $3 where server_name = $1 and media_id = $2",
        server_name,
        media_id,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_quarantined(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_id: &str,
    quarantined: bool,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update media set quarantined = $3 where server_name = $1 and media_id = $2",
        server_name,
        media_id,
        quarantined
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a user's uploads and their thumbnails; returns the media ids and the
/// file hashes they used (for the caller to delete files no other row uses).
pub async fn delete_by_user(
    db: impl PgExecutor<'_>,
    user_id: &str,
) -> sqlx::Result<(Vec<String>, Vec<String>)> {
    let rows = sqlx::query!(
        r#"with gone as (
               delete from media where user_id = $1 returning server_name, media_id, sha256
           ), thumbs as (
               delete from media_thumbnails t using gone g
               where t.server_name = g.server_name and t.media_id = g.media_id
               returning t.sha256
           )
           select media_id as "media_id?", sha256 as "sha256?" from gone
           union all select null, sha256 from thumbs"#,
        user_id
    )
    .fetch_all(db)
    .await?;
    let ids = rows.iter().filter_map(|r| r.media_id.clone()).collect();
    let hashes = rows.into_iter().filter_map(|r| r.sha256).collect();
    Ok((ids, hashes))
}

/// Quarantines the given local media ids; returns how many were found.
pub async fn quarantine_many(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_ids: &[String],
) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "update media set quarantined = true where server_name = $1 and media_id = any($2)",
        server_name,
        media_ids
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Event JSON in a room that mentions `needle` (an `mxc://server/` prefix).
pub async fn room_events_mentioning(
    db: impl PgExecutor<'_>,
    room_id: &str,
    needle: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select json from events where room_id = $1 and strpos(json, $2) > 0",
        room_id,
        needle
    )
    .fetch_all(db)
    .await
}

/// Deletes `/create` ids that lapsed unfilled.
pub async fn delete_lapsed(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "delete from media where sha256 is null and unused_expires_ts <= $1",
        now
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes cached remote media last read before `before`; returns the files
/// they used (the caller deletes those no other row uses).
pub async fn delete_stale_remote(
    db: impl PgExecutor<'_>,
    local_server: &str,
    before: i64,
) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query!(
        r#"with gone as (
               delete from media
               where server_name <> $1 and coalesce(last_access_ts, created_ts) < $2
               returning server_name, media_id, sha256
           )
           select sha256 as "sha256!" from gone where sha256 is not null
           union
           select t.sha256 from media_thumbnails t
           join gone g on g.server_name = t.server_name and g.media_id = t.media_id"#,
        local_server,
        before
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.sha256).collect())
}

/// Whether any media or thumbnail row still uses a file.
pub async fn file_in_use(db: impl PgExecutor<'_>, sha256: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from media where sha256 = $1)
               or exists (select 1 from media_thumbnails where sha256 = $1) as "used!""#,
        sha256
    )
    .fetch_one(db)
    .await
}

#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub width: i32,
    pub height: i32,
    pub method: String,
    pub animated: bool,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
}

pub async fn thumbnail(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_id: &str,
    width: i32,
    height: i32,
    method: &str,
    animated: bool,
) -> sqlx::Result<Option<Thumbnail>> {
    sqlx::query_as!(
        Thumbnail,
        "select width, height, method, animated, content_type, size, sha256
         from media_thumbnails
         where server_name = $1 and media_id = $2 and width = $3 and height = $4
           and method = $5 and animated = $6",
        server_name,
        media_id,
        width,
        height,
        method,
        animated
    )
    .fetch_optional(db)
    .await
}

pub async fn insert_thumbnail(
    db: impl PgExecutor<'_>,
    server_name: &str,
    media_id: &str,
    t: &Thumbnail,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into media_thumbnails (server_name, media_id, width, height, method, animated,
             content_type, size, sha256)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing",
        server_name,
        media_id,
        t.width,
        t.height,
        t.method,
        t.animated,
        t.content_type,
        t.size,
        t.sha256
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn preview(db: impl PgExecutor<'_>, url: &str, now: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select og from url_previews where url = $1 and expires_ts > $2",
        url,
        now
    )
    .fetch_optional(db)
    .await
}

pub async fn put_preview(
    db: impl PgExecutor<'_>,
    url: &str,
    og: &str,
    expires_ts: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into url_previews (url, og, expires_ts) values ($1, $2, $3)
         on conflict (url) do update set og = excluded.og, expires_ts = excluded.expires_ts",
        url,
        og,
        expires_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn delete_expired_previews(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    Ok(
        sqlx::query!("delete from url_previews where expires_ts <= $1", now)
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// A user's uploads, newest first, `offset`/`limit` paged, with the total.
pub async fn by_user(
    db: impl PgExecutor<'_> + Copy,
    user_id: &str,
    offset: i64,
    limit: i64,
) -> sqlx::Result<(Vec<Media>, i64)> {
    let rows = sqlx::query_as!(
        Media,
        "select server_name, media_id, user_id, content_type, upload_name, size, sha256,
                created_ts, unused_expires_ts, quarantined
         from media where user_id = $1
         order by created_ts desc, media_id offset $2 limit $3",
        user_id,
        offset,
        limit
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(
        r#"select count(*) as "n!" from media where user_id = $1"#,
        user_id
    )
    .fetch_one(db)
    .await?;
    Ok((rows, total))
}
