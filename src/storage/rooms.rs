//! `rooms`, forward extremities, current membership, transaction IDs.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Room {
    pub room_id: String,
    pub room_version: String,
    pub current_state_group: Option<i64>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    room_id: &str,
    room_version: &str,
    creator: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into rooms (room_id, room_version, creator, created_ts) values ($1, $2, $3, $4)",
        room_id,
        room_version,
        creator,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Option<Room>> {
    sqlx::query_as!(
        Room,
        "select room_id, room_version, current_state_group from rooms where room_id = $1",
        room_id
    )
    .fetch_optional(db)
    .await
}

/// Loads the room and locks its row until the transaction ends: the per-room
/// event-creation lock. Lock order: room row first, then anything else.
pub async fn lock(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Option<Room>> {
    sqlx::query_as!(
        Room,
        "select room_id, room_version, current_state_group from rooms where room_id = $1 for update",
        room_id
    )
    .fetch_optional(db)
    .await
}

pub async fn set_current_state_group(
    db: impl PgExecutor<'_>,
    room_id: &str,
    group: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update rooms set current_state_group = $2 where room_id = $1",
        room_id,
        group
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn forward_extremities(
    db: impl PgExecutor<'_>,
    room_id: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select event_id from forward_extremities where room_id = $1 order by event_id",
        room_id
    )
    .fetch_all(db)
    .await
}

/// The room's forward extremities with their depths (timeline events, or else
/// outliers), in one round trip. Extremities not stored are left out.
pub async fn forward_extremities_with_depth(
    db: impl PgExecutor<'_>,
    room_id: &str,
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"select f.event_id as "event_id!", coalesce(e.depth, o.depth) as "depth!"
           from forward_extremities f
           left join events e on e.event_id = f.event_id
           left join outlier_events o on e.event_id is null and o.event_id = f.event_id
           where f.room_id = $1 and (e.event_id is not null or o.event_id is not null)"#,
        room_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.event_id, r.depth)).collect())
}

/// The new event replaces the extremities it references.
pub async fn replace_extremities(
    db: impl PgExecutor<'_>,
    room_id: &str,
    prev_events: &[String],
    event_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "with gone as (
             delete from forward_extremities where room_id = $1 and event_id = any($2)
         )
         insert into forward_extremities (room_id, event_id) values ($1, $3)
         on conflict do nothing",
        room_id,
        prev_events,
        event_id
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_membership(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
    stream_ordering: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into room_members (room_id, user_id, membership, event_id, stream_ordering)
         values ($1, $2, $3, $4, $5)
         on conflict (room_id, user_id) do update
         set membership = excluded.membership, event_id = excluded.event_id,
             stream_ordering = excluded.stream_ordering",
        room_id,
        user_id,
        membership,
        event_id,
        stream_ordering
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn membership(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select membership from room_members where room_id = $1 and user_id = $2",
        room_id,
        user_id
    )
    .fetch_optional(db)
    .await
}

/// A user's current membership in a room and the event that set it.
pub async fn member_event(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query!(
        "select membership, event_id from room_members where room_id = $1 and user_id = $2",
        room_id,
        user_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.membership, r.event_id)))
}

pub async fn rooms_for_user(
    db: impl PgExecutor<'_>,
    user_id: &str,
    membership: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select room_id from room_members where user_id = $1 and membership = $2 order by room_id",
        user_id,
        membership
    )
    .fetch_all(db)
    .await
}

/// Current members of a room with the given membership, with their member event.
pub async fn members(
    db: impl PgExecutor<'_>,
    room_id: &str,
    membership: &str,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "select user_id, event_id from room_members where room_id = $1 and membership = $2
         order by user_id",
        room_id,
        membership
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.event_id)).collect())
}

/// A room's summary for `user`: joined and invited member counts, and up to
/// five other members (joined first, then invited, each by user ID) as heroes.
pub async fn summary(
    db: &crate::storage::Pool,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<(i64, i64, Vec<String>)> {
    let counts = sqlx::query!(
        r#"select count(*) filter (where membership = 'join') as "joined!",
                  count(*) filter (where membership = 'invite') as "invited!"
           from room_members where room_id = $1"#,
        room_id
    )
    .fetch_one(db)
    .await?;
    let heroes = sqlx::query_scalar!(
        "select user_id from room_members
         where room_id = $1 and membership in ('join', 'invite') and user_id <> $2
         order by membership <> 'join', user_id limit 5",
        room_id,
        user_id
    )
    .fetch_all(db)
    .await?;
    Ok((counts.joined, counts.invited, heroes))
}

/// Joined members with the display name and avatar of their member event
/// (taken out of the event in the database, not shipped whole and parsed here).
pub async fn joined_profiles(
    db: impl PgExecutor<'_>,
    room_id: &str,
) -> sqlx::Result<Vec<(String, Option<String>, Option<String>)>> {
    let rows = sqlx::query!(
        r#"select m.user_id as "user_id!",
                  c.content ->> 'displayname' as displayname,
                  c.content ->> 'avatar_url' as avatar_url
           from room_members m
           left join events e on e.event_id = m.event_id
           left join outlier_events o on e.event_id is null and o.event_id = m.event_id
           cross join lateral (select coalesce(e.json, o.json)::jsonb -> 'content' as content) c
           where m.room_id = $1 and m.membership = 'join'"#,
        room_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_id, r.displayname, r.avatar_url))
        .collect())
}

/// The room's joined users.
pub async fn joined_users(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select user_id from room_members where room_id = $1 and membership = 'join'",
        room_id
    )
    .fetch_all(db)
    .await
}

/// Servers with joined members (for federation fan-out and `via`).
pub async fn joined_servers(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct substring(user_id from position(':' in user_id) + 1) as "server!"
           from room_members where room_id = $1 and membership = 'join'"#,
        room_id
    )
    .fetch_all(db)
    .await
}

/// The servers whose users the given member events make joined: the servers
/// in a room at a state, given that state's `m.room.member` event IDs (held in
/// the room's graph or as outliers).
pub async fn servers_joined_by(
    db: impl PgExecutor<'_>,
    member_event_ids: &[String],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct substring(m.state_key from position(':' in m.state_key) + 1) as "server!"
           from (select state_key, json from events where event_id = any($1)
                 union all
                 select state_key, json from outlier_events where event_id = any($1)) m
           where m.state_key is not null
             and m.json::jsonb -> 'content' ->> 'membership' = 'join'"#,
        member_event_ids
    )
    .fetch_all(db)
    .await
}

/// Users of `server` with a membership in the room, and which it is now.
pub async fn members_of_server(
    db: impl PgExecutor<'_>,
    room_id: &str,
    server: &str,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "select user_id, membership from room_members
         where room_id = $1 and substring(user_id from position(':' in user_id) + 1) = $2
         order by user_id",
        room_id,
        server
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_id, r.membership))
        .collect())
}

pub async fn forget(db: impl PgExecutor<'_>, user_id: &str, room_id: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into forgotten_rooms (user_id, room_id) values ($1, $2) on conflict do nothing",
        user_id,
        room_id
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn txn_event(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select event_id from event_txn_ids where user_id = $1 and device_id = $2 and txn_id = $3",
        user_id,
        device_id,
        txn_id
    )
    .fetch_optional(db)
    .await
}

pub async fn insert_txn(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
    event_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_txn_ids (user_id, device_id, txn_id, event_id, created_ts)
         values ($1, $2, $3, $4, $5)",
        user_id,
        device_id,
        txn_id,
        event_id,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn alias_room(db: impl PgExecutor<'_>, alias: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select room_id from room_aliases where room_alias = $1",
        alias
    )
    .fetch_optional(db)
    .await
}

/// Returns `false` if the alias exists already.
pub async fn insert_alias(
    db: impl PgExecutor<'_>,
    alias: &str,
    room_id: &str,
    creator: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into room_aliases (room_alias, room_id, creator, created_ts) values ($1, $2, $3, $4)
         on conflict do nothing",
        alias,
        room_id,
        creator,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn alias_creator(db: impl PgExecutor<'_>, alias: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select creator from room_aliases where room_alias = $1",
        alias
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_alias(db: impl PgExecutor<'_>, alias: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from room_aliases where room_alias = $1", alias)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn aliases_of(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select room_alias from room_aliases where room_id = $1 order by room_alias",
        room_id
    )
    .fetch_all(db)
    .await
}

pub async fn set_published(
    db: impl PgExecutor<'_>,
    room_id: &str,
    published: bool,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update rooms set published = $2 where room_id = $1",
        room_id,
        published
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn is_published(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar!("select published from rooms where room_id = $1", room_id)
        .fetch_optional(db)
        .await
}

/// Published rooms with their joined-member counts, largest first.
pub async fn published(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, Option<i64>, i64)>> {
    let rows = sqlx::query!(
        r#"select r.room_id, r.current_state_group,
                  (select count(*) from room_members m where m.room_id = r.room_id and m.membership = 'join') as "joined!"
           from rooms r where r.published
           order by 3 desc, r.room_id"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.room_id, r.current_state_group, r.joined))
        .collect())
}

/// Rooms by ID for the admin API, `offset`/`limit` paged: (room ID, version,
/// current state group, joined members, local joined members), with the total.
pub async fn admin_list(
    db: impl PgExecutor<'_> + Copy,
    local_suffix: &str,
    offset: i64,
    limit: i64,
) -> sqlx::Result<(Vec<(String, String, Option<i64>, i64, i64)>, i64)> {
    let rows = sqlx::query!(
        r#"select r.room_id, r.room_version, r.current_state_group,
                  count(m.user_id) filter (where m.membership = 'join') as "joined!",
                  count(m.user_id) filter (where m.membership = 'join' and m.user_id like $1)
                      as "local!"
           from rooms r left join room_members m on m.room_id = r.room_id
           group by r.room_id order by r.room_id offset $2 limit $3"#,
        format!("%:{local_suffix}"),
        offset,
        limit
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(r#"select count(*) as "n!" from rooms"#)
        .fetch_one(db)
        .await?;
    Ok((
        rows.into_iter()
            .map(|r| {
                (
                    r.room_id,
                    r.room_version,
                    r.current_state_group,
                    r.joined,
                    r.local,
                )
            })
            .collect(),
        total,
    ))
}

/// Whether any user of `server_name` is joined to the room.
pub async fn has_joined_members_of(
    db: impl PgExecutor<'_>,
    room_id: &str,
    server_name: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (
               select 1 from room_members
               where room_id = $1 and membership = 'join'
                 and right(user_id, length($2) + 1) = ':' || $2
           ) as "found!""#,
        room_id,
        server_name
    )
    .fetch_one(db)
    .await
}

/// Blocks a room for local users (admin API); `false` if it already was.
pub async fn block(
    db: impl PgExecutor<'_>,
    room_id: &str,
    by: &str,
    ts: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into blocked_rooms (room_id, blocked_by, blocked_ts) values ($1, $2, $3)
         on conflict (room_id) do nothing",
        room_id,
        by,
        ts
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn unblock(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from blocked_rooms where room_id = $1", room_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The admin who blocked the room, if it is blocked.
pub async fn blocked_by(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select blocked_by from blocked_rooms where room_id = $1",
        room_id
    )
    .fetch_optional(db)
    .await
}

/// Deletes everything the server holds about a room (admin purge), table by
/// table, calling `progress(table, rows)` after each. Users' own key backups
/// and the block entry stay. The caller holds the room's lock.
pub async fn purge(
    tx: &mut sqlx::PgConnection,
    room_id: &str,
    mut progress: impl FnMut(&str, u64),
) -> sqlx::Result<u64> {
    let mut total = 0;
    let mut step = |table: &str, rows: u64| {
        total += rows;
        progress(table, rows);
    };
    // Rows keyed by the room's events, then the room's own tables, the events
    // themselves, and the room row last.
    let done = sqlx::query!(
        "delete from federation_outbox where event_id in
           (select event_id from events where room_id = $1)",
        room_id
    )
    .execute(&mut *tx)
    .await?;
    step("federation_outbox", done.rows_affected());
    let done = sqlx::query!(
        "delete from event_txn_ids where event_id in
           (select event_id from events where room_id = $1)",
        room_id
    )
    .execute(&mut *tx)
    .await?;
    step("event_txn_ids", done.rows_affected());
    let done = sqlx::query!(
        "delete from state_replaced where event_id in
           (select event_id from events where room_id = $1)",
        room_id
    )
    .execute(&mut *tx)
    .await?;
    step("state_replaced", done.rows_affected());
    macro_rules! by_room {
        ($table:literal) => {
            let done = sqlx::query!("delete from " + $table + " where room_id = $1", room_id)
                .execute(&mut *tx)
                .await?;
            step($table, done.rows_affected());
        };
    }
    by_room!("event_push_actions");
    by_room!("event_relations");
    by_room!("event_reports");
    by_room!("event_search");
    by_room!("receipts");
    by_room!("account_data");
    by_room!("forgotten_rooms");
    by_room!("forward_extremities");
    by_room!("room_members");
    by_room!("remote_memberships");
    by_room!("room_aliases");
    by_room!("server_notice_rooms");
    by_room!("outlier_events");
    by_room!("event_gaps");
    // State group entries go with their groups (on delete cascade).
    by_room!("state_groups");
    by_room!("events");
    by_room!("rooms");
    Ok(total)
}

/// The user's server notices room, if one was made.
pub async fn server_notice_room(
    db: impl PgExecutor<'_>,
    user_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select room_id from server_notice_rooms where user_id = $1",
        user_id
    )
    .fetch_optional(db)
    .await
}

pub async fn set_server_notice_room(
    db: impl PgExecutor<'_>,
    user_id: &str,
    room_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into server_notice_rooms (user_id, room_id) values ($1, $2)
         on conflict (user_id) do update set room_id = excluded.room_id",
        user_id,
        room_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The transaction IDs `(user, device)` sent any of `event_ids` with:
/// `(event ID, transaction ID)`.
pub async fn txn_ids_for_events(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    event_ids: &[String],
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "select event_id, txn_id from event_txn_ids
         where event_id = any($3) and user_id = $1 and device_id = $2",
        user_id,
        device_id,
        event_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.event_id, r.txn_id)).collect())
}
