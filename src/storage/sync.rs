//! Queries behind `/sync`, and stored filters.

use sqlx::PgExecutor;

use super::events::StoredEvent;

pub struct Membership {
    pub room_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_ordering: i64,
}

/// Every room the user has a membership row in, except forgotten ones.
pub async fn memberships(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<Membership>> {
    sqlx::query_as!(
        Membership,
        "select m.room_id, m.membership, m.event_id, m.stream_ordering from room_members m
         where m.user_id = $1
           and not exists (select 1 from forgotten_rooms f where f.user_id = $1 and f.room_id = m.room_id)",
        user_id
    )
    .fetch_all(db)
    .await
}

/// The rooms among `rooms` with events in `(after, upto]`.
pub async fn rooms_with_events(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct room_id as "room_id!" from events
           where room_id = any($1) and stream_ordering > $2 and stream_ordering <= $3"#,
        rooms,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// A room's events in `(after, upto]`, newest first, at most `limit`.
pub async fn room_events(
    db: impl PgExecutor<'_>,
    room_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                state_group, rejected, redacted_by
         from events
         where room_id = $1 and stream_ordering > $2 and stream_ordering <= $3 and not rejected
         order by stream_ordering desc limit $4",
        room_id,
        after,
        upto,
        limit
    )
    .fetch_all(db)
    .await
}

/// The events of any of `rooms` in `(after, upto]`, oldest first, at most
/// `limit` (the legacy `/events` stream).
pub async fn events_in_rooms(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    after: i64,
    upto: i64,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                state_group, rejected, redacted_by
         from events
         where room_id = any($1) and stream_ordering > $2 and stream_ordering <= $3
           and not rejected
         order by stream_ordering limit $4",
        rooms,
        after,
        upto,
        limit
    )
    .fetch_all(db)
    .await
}

/// The state group after the room's last event at or before `stream`.
pub async fn state_group_at(
    db: impl PgExecutor<'_>,
    room_id: &str,
    stream: i64,
) -> sqlx::Result<Option<i64>> {
    let group = sqlx::query_scalar!(
        "select state_group from events
         where room_id = $1 and stream_ordering <= $2 and not rejected
         order by stream_ordering desc limit 1",
        room_id,
        stream
    )
    .fetch_optional(db)
    .await?;
    Ok(group.flatten())
}

pub async fn insert_filter(
    db: impl PgExecutor<'_>,
    user_id: &str,
    json: &str,
    now: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "insert into filters (user_id, filter_json, created_ts) values ($1, $2, $3) returning filter_id",
        user_id,
        json,
        now
    )
    .fetch_one(db)
    .await
}

pub async fn get_filter(
    db: impl PgExecutor<'_>,
    user_id: &str,
    filter_id: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select filter_json from filters where user_id = $1 and filter_id = $2",
        user_id,
        filter_id
    )
    .fetch_optional(db)
    .await
}

pub struct BumpStamp {
    pub room_id: String,
    pub stream_ordering: Option<i64>,
}

/// For each room, the position of its newest event at or before `upto` whose
/// type is one of `types` (what moves a room up a sliding-sync list). Walks each
/// room's stream index backwards, so it stops at the first match.
pub async fn bump_stamps(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    types: &[String],
    upto: i64,
) -> sqlx::Result<Vec<BumpStamp>> {
    sqlx::query_as!(
        BumpStamp,
        r#"select r as "room_id!",
                  (select e.stream_ordering from events e
                   where e.room_id = r and e.event_type = any($2)
                     and e.stream_ordering <= $3 and not e.rejected
                   order by e.stream_ordering desc limit 1) as stream_ordering
           from unnest($1::text[]) r"#,
        rooms,
        types,
        upto
    )
    .fetch_all(db)
    .await
}
