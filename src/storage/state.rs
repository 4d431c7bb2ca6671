//! State groups: a room's state at an event, stored as a delta against a parent
//! group with bounded chain depth, keyed by interned `(event_type, state_key)` ids.

use sqlx::PgExecutor;

/// One state entry: `((event_type, state_key), event_id)`.
pub type Entry = ((String, String), String);

/// Interns `(event_type, state_key)` pairs, returning their ids in input order.
/// The input must not contain duplicates.
pub async fn intern_keys(
    db: impl PgExecutor<'_>,
    keys: &[(String, String)],
) -> sqlx::Result<Vec<i32>> {
    let (types, state_keys): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"insert into state_keys (event_type, state_key)
           select * from unnest($1::text[], $2::text[])
           on conflict (event_type, state_key) do update set event_type = excluded.event_type
           returning state_key_id, event_type, state_key"#,
        &types,
        &state_keys
    )
    .fetch_all(db)
    .await?;
    let ids = keys
        .iter()
        .map(|(t, k)| {
            rows.iter()
                .find(|r| &r.event_type == t && &r.state_key == k)
                .map(|r| r.state_key_id)
                .unwrap_or_default()
        })
        .collect();
    Ok(ids)
}

/// Creates a group. With a parent, `entries` is the delta; without, the full state.
pub async fn insert_group(
    db: impl PgExecutor<'_>,
    room_id: &str,
    parent: Option<i64>,
    chain_depth: i32,
    key_ids: &[i32],
    event_ids: &[String],
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"with g as (
               insert into state_groups (room_id, parent_group, chain_depth) values ($1, $2, $3)
               returning state_group
           ),
           e as (
               insert into state_group_entries (state_group, state_key_id, event_id)
               select g.state_group, u.k, u.e from g, unnest($4::int[], $5::text[]) as u(k, e)
           )
           select state_group as "state_group!" from g"#,
        room_id,
        parent,
        chain_depth,
        key_ids,
        event_ids
    )
    .fetch_one(db)
    .await
}

/// A group's chain depth, and the event its state holds at `key` (if any), in
/// one round trip: what a new state group on top of it needs.
pub async fn depth_and_entry(
    db: impl PgExecutor<'_>,
    group: i64,
    key: &(String, String),
) -> sqlx::Result<(i32, Option<String>)> {
    let row = sqlx::query!(
        r#"with recursive chain(state_group, parent_group, n) as (
               select state_group, parent_group, 0 from state_groups where state_group = $1
               union all
               select g.state_group, g.parent_group, c.n + 1
               from state_groups g join chain c on g.state_group = c.parent_group
           )
           select (select chain_depth from state_groups where state_group = $1) as "depth!",
                  (select e.event_id from chain c
                   join state_group_entries e on e.state_group = c.state_group
                   join state_keys k on k.state_key_id = e.state_key_id
                   where k.event_type = $2 and k.state_key = $3
                   order by c.n limit 1) as "event_id?""#,
        group,
        key.0,
        key.1
    )
    .fetch_one(db)
    .await?;
    Ok((row.depth, row.event_id))
}

/// The full state map of a group: the nearest entry along the chain wins.
pub async fn full_state(db: impl PgExecutor<'_>, group: i64) -> sqlx::Result<Vec<Entry>> {
    let rows = sqlx::query!(
        r#"with recursive chain(state_group, parent_group, n) as (
               select state_group, parent_group, 0 from state_groups where state_group = $1
               union all
               select g.state_group, g.parent_group, c.n + 1
               from state_groups g join chain c on g.state_group = c.parent_group
           )
           select distinct on (e.state_key_id)
                  k.event_type as "event_type!", k.state_key as "state_key!", e.event_id as "event_id!"
           from chain c
           join state_group_entries e on e.state_group = c.state_group
           join state_keys k on k.state_key_id = e.state_key_id
           order by e.state_key_id, c.n"#,
        group
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.event_type, r.state_key), r.event_id))
        .collect())
}

/// Only the listed keys of a group's state (what the auth rules need).
pub async fn state_for_keys(
    db: impl PgExecutor<'_>,
    group: i64,
    keys: &[(String, String)],
) -> sqlx::Result<Vec<Entry>> {
    Ok(state_for_keys_at(db, &[group], keys)
        .await?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect())
}

/// [`state_for_keys`] with each event's JSON (a timeline event, or else an
/// outlier), in one round trip: `(key, event ID, JSON)`. Entries whose event is
/// not stored are left out.
///
/// The chain's groups are given to the entry look-up as an array, so that it
/// uses both columns of the key `(state_group, state_key_id)`. Joined on the
/// chain instead, PostgreSQL scanned the whole key index for each wanted key
/// (the `state_key_id` column alone): a cost that grows with every entry of
/// every room, about 3 ms per key at 70,000 entries.
pub async fn state_events_for_keys(
    db: impl PgExecutor<'_>,
    group: i64,
    keys: &[(String, String)],
) -> sqlx::Result<Vec<(Entry, String)>> {
    let (types, state_keys): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"with recursive chain(state_group, parent_group, n) as (
               select state_group, parent_group, 0
               from state_groups where state_group = $1
               union all
               select g.state_group, g.parent_group, c.n + 1
               from state_groups g join chain c on g.state_group = c.parent_group
           ),
           wanted as (
               select k.state_key_id, k.event_type, k.state_key
               from unnest($2::text[], $3::text[]) as w(event_type, state_key)
               join state_keys k on k.event_type = w.event_type and k.state_key = w.state_key
           ),
           found as (
               select distinct on (e.state_key_id)
                      w.event_type, w.state_key, e.event_id
               from wanted w
               join state_group_entries e on e.state_key_id = w.state_key_id
                    and e.state_group = any(array(select state_group from chain))
               join chain c on c.state_group = e.state_group
               order by e.state_key_id, c.n
           )
           select f.event_type as "event_type!", f.state_key as "state_key!",
                  f.event_id as "event_id!", coalesce(ev.json, o.json) as "json!"
           from found f
           left join events ev on ev.event_id = f.event_id
           left join outlier_events o on ev.event_id is null and o.event_id = f.event_id
           where ev.event_id is not null or o.event_id is not null"#,
        group,
        &types,
        &state_keys
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (((r.event_type, r.state_key), r.event_id), r.json))
        .collect())
}

/// [`state_for_keys`] for many groups in one query: `(group, key, event ID)`;
/// the entries looked up by both key columns, as in [`state_events_for_keys`].
pub async fn state_for_keys_at(
    db: impl PgExecutor<'_>,
    groups: &[i64],
    keys: &[(String, String)],
) -> sqlx::Result<Vec<(i64, Entry)>> {
    let (types, state_keys): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"with recursive chain(root, state_group, parent_group, n) as (
               select state_group, state_group, parent_group, 0
               from state_groups where state_group = any($1)
               union all
               select c.root, g.state_group, g.parent_group, c.n + 1
               from state_groups g join chain c on g.state_group = c.parent_group
           ),
           wanted as (
               select k.state_key_id, k.event_type, k.state_key
               from unnest($2::text[], $3::text[]) as w(event_type, state_key)
               join state_keys k on k.event_type = w.event_type and k.state_key = w.state_key
           )
           select distinct on (c.root, e.state_key_id)
                  c.root as "group!", w.event_type as "event_type!",
                  w.state_key as "state_key!", e.event_id as "event_id!"
           from wanted w
           join state_group_entries e on e.state_key_id = w.state_key_id
                and e.state_group = any(array(select state_group from chain))
           join chain c on c.state_group = e.state_group
           order by c.root, e.state_key_id, c.n"#,
        groups,
        &types,
        &state_keys
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.group, ((r.event_type, r.state_key), r.event_id)))
        .collect())
}

/// Bytes the state tables take for one room (for the storage benchmark).
pub async fn room_state_bytes(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<i64> {
    let bytes = sqlx::query_scalar!(
        r#"select (coalesce(sum(pg_column_size(g.*)), 0)
                 + coalesce((select sum(pg_column_size(e.*)) from state_group_entries e
                             join state_groups g2 on g2.state_group = e.state_group
                             where g2.room_id = $1), 0))::bigint as "bytes!"
           from state_groups g where g.room_id = $1"#,
        room_id
    )
    .fetch_one(db)
    .await?;
    Ok(bytes)
}

/// (state groups, full snapshots among them, entry rows) of a room.
pub async fn room_state_shape(
    db: impl PgExecutor<'_>,
    room_id: &str,
) -> sqlx::Result<(i64, i64, i64)> {
    let row = sqlx::query!(
        r#"select count(*) as "groups!",
                  count(*) filter (where parent_group is null) as "snapshots!",
                  (select count(*) from state_group_entries e join state_groups g2 using (state_group)
                   where g2.room_id = $1) as "entries!"
           from state_groups where room_id = $1"#,
        room_id
    )
    .fetch_one(db)
    .await?;
    Ok((row.groups, row.snapshots, row.entries))
}

/// The snapshot (parent-less group) at the bottom of a group's chain.
pub async fn chain_root(db: impl PgExecutor<'_>, group: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"with recursive chain(state_group, parent_group) as (
               select state_group, parent_group from state_groups where state_group = $1
               union all
               select g.state_group, g.parent_group
               from state_groups g join chain c on g.state_group = c.parent_group
           )
           select state_group as "state_group!" from chain where parent_group is null"#,
        group
    )
    .fetch_one(db)
    .await
}

/// Records that state event `event_id` replaced `replaces` (the same key in the
/// state before it).
pub async fn record_replaced(
    db: impl PgExecutor<'_>,
    event_id: &str,
    replaces: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into state_replaced (event_id, replaces_state) values ($1, $2)
         on conflict do nothing",
        event_id,
        replaces
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The events each of `event_ids` replaced, where known: `(event ID, replaced ID)`.
pub async fn replaced(
    db: impl PgExecutor<'_>,
    event_ids: &[String],
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "select event_id, replaces_state from state_replaced where event_id = any($1)",
        event_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, r.replaces_state))
        .collect())
}
