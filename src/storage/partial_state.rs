//! Rooms joined with partial state (faster joins, MSC3902): the mark the
//! resync clears (`partial_state_rooms`), and the one write the swap needs
//! (entries added to a snapshot state group).

use sqlx::PgExecutor;

/// A room joined with partial state.
#[derive(Debug, Clone)]
pub struct PartialRoom {
    pub room_id: String,
    pub join_event_id: String,
    /// The snapshot group of the partial state before the join.
    pub state_group: i64,
    /// Where to fetch the full state, in order.
    pub servers: Vec<String>,
    pub attempts: i32,
}

/// Marks a room as joined with partial state.
pub async fn insert(db: impl PgExecutor<'_>, room: &PartialRoom, now: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into partial_state_rooms (room_id, join_event_id, state_group, servers, created_ts)
         values ($1, $2, $3, $4, $5)
         on conflict (room_id) do nothing",
        room.room_id,
        room.join_event_id,
        room.state_group,
        &room.servers,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The mark of one room, if it is partial-stated.
pub async fn get(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Option<PartialRoom>> {
    let row = sqlx::query!(
        "select room_id, join_event_id, state_group, servers, attempts
         from partial_state_rooms where room_id = $1",
        room_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| PartialRoom {
        room_id: r.room_id,
        join_event_id: r.join_event_id,
        state_group: r.state_group,
        servers: r.servers,
        attempts: r.attempts,
    }))
}

/// Every partial-stated room (what the resync worker works through).
pub async fn all(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<PartialRoom>> {
    let rows = sqlx::query!(
        "select room_id, join_event_id, state_group, servers, attempts
         from partial_state_rooms order by created_ts"
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PartialRoom {
            room_id: r.room_id,
            join_event_id: r.join_event_id,
            state_group: r.state_group,
            servers: r.servers,
            attempts: r.attempts,
        })
        .collect())
}

/// Whether the room is partial-stated.
pub async fn is_partial(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from partial_state_rooms where room_id = $1) as "found!""#,
        room_id
    )
    .fetch_one(db)
    .await
}

/// The servers to send the room's events to while it is partial-stated (we
/// do not know all its members): empty when it is not.
pub async fn servers(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    Ok(sqlx::query_scalar!(
        "select servers from partial_state_rooms where room_id = $1",
        room_id
    )
    .fetch_optional(db)
    .await?
    .unwrap_or_default())
}

/// Records a failed resync round.
pub async fn record_failure(
    db: impl PgExecutor<'_>,
    room_id: &str,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update partial_state_rooms set attempts = attempts + 1, last_error = $2
         where room_id = $1",
        room_id,
        error
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Clears the mark: the room has its full state.
pub async fn delete(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from partial_state_rooms where room_id = $1",
        room_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Adds entries to a state group where it has none for the key (the
/// omitted memberships joining the partial snapshot); entries it has win.
pub async fn add_missing_entries(
    db: impl PgExecutor<'_>,
    group: i64,
    key_ids: &[i32],
    event_ids: &[String],
) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "insert into state_group_entries (state_group, state_key_id, event_id)
         select $1, k, e from unnest($2::int[], $3::text[]) as u(k, e)
         on conflict (state_group, state_key_id) do nothing",
        group,
        key_ids,
        event_ids
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// The room's snapshot groups (no parent) made after `group`: forks
/// resolved while the room was partial-stated, which copied the partial
/// state rather than inheriting from its snapshot.
pub async fn snapshots_after(
    db: impl PgExecutor<'_>,
    room_id: &str,
    group: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        "select state_group from state_groups
         where room_id = $1 and parent_group is null and state_group > $2",
        room_id,
        group
    )
    .fetch_all(db)
    .await
}

/// The room's timeline events after `stream` (events that arrived while it
/// was partial-stated), in stream order, rejected ones left out: (event ID,
/// state group).
pub async fn events_after(
    db: impl PgExecutor<'_>,
    room_id: &str,
    stream: i64,
) -> sqlx::Result<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query!(
        "select event_id, state_group from events
         where room_id = $1 and stream_ordering > $2 and not rejected
         order by stream_ordering",
        room_id,
        stream
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| (r.event_id, r.state_group))
    .collect())
}

/// The users with a `room_members` row in the room, whatever the membership.
pub async fn member_users(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select user_id from room_members where room_id = $1",
        room_id
    )
    .fetch_all(db)
    .await
}

/// Records that `room_id` got its full state at stream position `position`.
pub async fn record_completion(
    db: impl PgExecutor<'_>,
    room_id: &str,
    position: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into partial_state_completions (room_id, stream_ordering) values ($1, $2)
         on conflict do nothing",
        room_id,
        position
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Of `rooms`, those whose full state came in `(after, upto]`.
pub async fn completed_between(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct room_id as "room_id!" from partial_state_completions
           where room_id = any($1) and stream_ordering > $2 and stream_ordering <= $3"#,
        rooms,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// Marks an event rejected (it failed the auth rules against the full state
/// once that came in), with `state_group` the state before it (a rejected
/// event changes no state): reads that leave out rejected events no longer
/// show it, and the events after it see the state without it.
pub async fn mark_rejected(
    db: impl PgExecutor<'_>,
    event_id: &str,
    state_group: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update events set rejected = true, state_group = $2 where event_id = $1",
        event_id,
        state_group
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Sets the state after an event again (recomputed once an event before it
/// was rejected).
pub async fn set_state_group(
    db: impl PgExecutor<'_>,
    event_id: &str,
    state_group: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update events set state_group = $2 where event_id = $1",
        event_id,
        state_group
    )
    .execute(db)
    .await?;
    Ok(())
}
