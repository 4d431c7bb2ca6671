//! `presence`: the last presence each local user set, and when they were last active.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Presence {
    pub user_id: String,
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
    pub stream_ordering: i64,
}

pub async fn get(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Option<Presence>> {
    sqlx::query_as!(
        Presence,
        "select user_id, state, status_msg, last_active_ts, stream_ordering
         from presence where user_id = $1",
        user_id
    )
    .fetch_optional(db)
    .await
}

/// Stores a change others should see, at stream position `stream`.
pub async fn set(db: impl PgExecutor<'_>, p: &Presence) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into presence (user_id, state, status_msg, last_active_ts, stream_ordering)
         values ($1, $2, $3, $4, $5)
         on conflict (user_id) do update set state = excluded.state,
             status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,
             stream_ordering = excluded.stream_ordering",
        p.user_id,
        p.state,
        p.status_msg,
        p.last_active_ts,
        p.stream_ordering
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records activity without telling anyone (no stream position).
pub async fn touch(db: impl PgExecutor<'_>, user_id: &str, ts: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "update presence set last_active_ts = $2 where user_id = $1",
        user_id,
        ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Presence changes in `(after, upto]` that `user_id` may see: their own and
/// those of users sharing a joined room with them.
pub async fn visible_changes(
    db: impl PgExecutor<'_>,
    user_id: &str,
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<Presence>> {
    sqlx::query_as!(
        Presence,
        "select p.user_id, p.state, p.status_msg, p.last_active_ts, p.stream_ordering
         from presence p
         where p.stream_ordering > $2 and p.stream_ordering <= $3
           and (p.user_id = $1 or exists (
               select 1 from room_members a join room_members b on a.room_id = b.room_id
               where a.user_id = $1 and a.membership = 'join'
                 and b.user_id = p.user_id and b.membership = 'join'))",
        user_id,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// The presence of `users` changed in `(after, upto]` (all they ever set
/// when `after` is 0).
pub async fn changes_of(
    db: impl PgExecutor<'_>,
    users: &[String],
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<Presence>> {
    sqlx::query_as!(
        Presence,
        "select user_id, state, status_msg, last_active_ts, stream_ordering
         from presence
         where user_id = any($1) and stream_ordering > $2 and stream_ordering <= $3",
        users,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// The presence rows of the room's joined members who are users of
/// `server_name` (ours).
pub async fn of_local_members(
    db: impl PgExecutor<'_>,
    room_id: &str,
    server_name: &str,
) -> sqlx::Result<Vec<Presence>> {
    sqlx::query_as!(
        Presence,
        "select p.user_id, p.state, p.status_msg, p.last_active_ts, p.stream_ordering
         from room_members m join presence p on p.user_id = m.user_id
         where m.room_id = $1 and m.membership = 'join' and m.user_id like '%:' || $2",
        room_id,
        server_name
    )
    .fetch_all(db)
    .await
}

/// Whether a user of `server` other than `except` is joined to the room.
pub async fn server_already_joined(
    db: impl PgExecutor<'_>,
    room_id: &str,
    server: &str,
    except: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from room_members
                          where room_id = $1 and membership = 'join' and user_id <> $3
                            and user_id like '%:' || $2) as "joined!""#,
        room_id,
        server,
        except
    )
    .fetch_one(db)
    .await
}
