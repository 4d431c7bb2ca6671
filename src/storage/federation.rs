//! The federation send queue (`federation_outbox`), per-destination health
//! (`federation_destinations`), inbound transaction replies
//! (`federation_inbound_txns`) and outlier events.

use sqlx::PgExecutor;

/// How many PDUs of one room stay queued for a destination that is down: the
/// newest. One transaction's worth; a server away for longer than that fetches
/// the older ones (`/get_missing_events` reaches 20 back from Lattice, 10 from
/// Synapse; both backfill the rest of the gap when a page reaches it).
pub const DOWN_PDUS_PER_ROOM: i64 = 50;

/// Queues a PDU of `room_id` for each destination. For a destination that is
/// down (failing since `down_before` or earlier) only the newest
/// [`DOWN_PDUS_PER_ROOM`] PDUs of the room stay queued, so its queue stays
/// bounded however long it is away.
pub async fn enqueue_pdu(
    db: impl PgExecutor<'_>,
    destinations: &[String],
    event_id: &str,
    room_id: &str,
    now: i64,
    down_before: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "with down as (
             select destination from federation_destinations
             where destination = any($1) and failing_since_ts <= $5
         ), gone as (
             delete from federation_outbox where id in (
                 select id from (
                     select o.id, row_number() over (
                                partition by o.destination order by o.id desc) as newer
                     from federation_outbox o join down on o.destination = down.destination
                     where o.collapse_key = 'pdu ' || $4
                 ) q where q.newer >= $6
             )
         )
         insert into federation_outbox (destination, event_id, created_ts, collapse_key)
         select d, $2, $3,
                case when d in (select destination from down) then 'pdu ' || $4 end
         from unnest($1::text[]) as d",
        destinations,
        event_id,
        now,
        room_id,
        down_before,
        DOWN_PDUS_PER_ROOM
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Queues an EDU (JSON) for each destination. With a `collapse_key`, the EDU
/// replaces any still queued with the same key for that destination (typing,
/// receipts and presence: only the latest state matters).
pub async fn enqueue_edu(
    db: impl PgExecutor<'_>,
    destinations: &[String],
    edu: &str,
    now: i64,
    collapse_key: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "with gone as (
             delete from federation_outbox
             where $4::text is not null and collapse_key = $4 and destination = any($1)
         )
         insert into federation_outbox (destination, edu, created_ts, collapse_key)
         select d, $2, $3, $4 from unnest($1::text[]) as d",
        destinations,
        edu,
        now,
        collapse_key
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Bounds the PDUs queued for a destination that is down to the newest
/// [`DOWN_PDUS_PER_ROOM`] of each room (see [`enqueue_pdu`]), marking them so
/// that later ones push the oldest out. Returns the rows dropped or marked.
pub async fn collapse_down_queue(db: impl PgExecutor<'_>, destination: &str) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "with queued as (
             select o.id, e.room_id,
                    row_number() over (partition by e.room_id order by o.id desc) as newest
             from federation_outbox o join events e on e.event_id = o.event_id
             where o.destination = $1
         ), gone as (
             delete from federation_outbox o using queued q
             where o.id = q.id and q.newest > $2
             returning o.id
         )
         update federation_outbox o set collapse_key = 'pdu ' || q.room_id
         from queued q
         where o.id = q.id and q.newest <= $2 and o.collapse_key is null",
        destination,
        DOWN_PDUS_PER_ROOM
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Destinations failing since `down_before` or earlier: marked down.
pub async fn down_destinations(
    db: impl PgExecutor<'_>,
    down_before: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select destination from federation_destinations
         where failing_since_ts <= $1 order by destination",
        down_before
    )
    .fetch_all(db)
    .await
}

/// Destinations with queued items that are not backing off.
pub async fn ready_destinations(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct o.destination as "destination!"
           from federation_outbox o
           left join federation_destinations d on d.destination = o.destination
           where coalesce(d.retry_after_ts, 0) <= $1"#,
        now
    )
    .fetch_all(db)
    .await
}

/// The soonest time a backed-off destination with queued items may be retried.
pub async fn next_retry(db: impl PgExecutor<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "select min(d.retry_after_ts) from federation_destinations d
         where exists (select 1 from federation_outbox o where o.destination = d.destination)"
    )
    .fetch_one(db)
    .await
}

pub struct QueuedPdu {
    pub id: i64,
    pub json: String,
}

/// The oldest queued PDUs of a destination, with their stored JSON (events
/// since purged are skipped).
pub async fn queued_pdus(
    db: impl PgExecutor<'_>,
    destination: &str,
    limit: i64,
) -> sqlx::Result<Vec<QueuedPdu>> {
    sqlx::query_as!(
        QueuedPdu,
        r#"select o.id, e.json from federation_outbox o
           join events e on e.event_id = o.event_id
           where o.destination = $1 and o.event_id is not null
           order by o.id limit $2"#,
        destination,
        limit
    )
    .fetch_all(db)
    .await
}

pub struct QueuedEdu {
    pub id: i64,
    pub edu: String,
}

pub async fn queued_edus(
    db: impl PgExecutor<'_>,
    destination: &str,
    limit: i64,
) -> sqlx::Result<Vec<QueuedEdu>> {
    sqlx::query_as!(
        QueuedEdu,
        r#"select id, edu as "edu!" from federation_outbox
           where destination = $1 and edu is not null
           order by id limit $2"#,
        destination,
        limit
    )
    .fetch_all(db)
    .await
}

/// Removes delivered items (and PDU rows whose event no longer exists).
pub async fn delete_delivered(
    db: impl PgExecutor<'_>,
    destination: &str,
    ids: &[i64],
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from federation_outbox where destination = $1
         and (id = any($2) or (event_id is not null
              and not exists (select 1 from events e where e.event_id = federation_outbox.event_id)))",
        destination,
        ids
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn record_success(
    db: impl PgExecutor<'_>,
    destination: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into federation_destinations (destination, failures, retry_after_ts, last_success_ts)
         values ($1, 0, 0, $2)
         on conflict (destination) do update
         set failures = 0, retry_after_ts = 0, last_error = null, last_success_ts = $2,
             failing_since_ts = null",
        destination,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// What [`record_failure`] leaves: the consecutive failures, and whether the
/// destination is now down (failing since `down_before` or earlier).
pub struct Failure {
    pub failures: i32,
    pub down: bool,
}

/// Records a failure and backs off: `base_ms` after the first, doubling with each
/// further failure up to `cap_ms`, or `down_cap_ms` once the destination is
/// down (failing since `down_before` or earlier).
#[allow(clippy::too_many_arguments)]
pub async fn record_failure(
    db: impl PgExecutor<'_>,
    destination: &str,
    error: &str,
    now: i64,
    base_ms: i64,
    cap_ms: i64,
    down_cap_ms: i64,
    down_before: i64,
) -> sqlx::Result<Failure> {
    let row = sqlx::query!(
        r#"insert into federation_destinations
               (destination, failures, last_error, retry_after_ts, failing_since_ts)
           values ($1, 1, $2, $3::bigint + $4::bigint, $3)
           on conflict (destination) do update
           set failures = federation_destinations.failures + 1, last_error = $2,
               failing_since_ts = coalesce(federation_destinations.failing_since_ts, $3),
               retry_after_ts = $3::bigint + least(
                   $4::bigint * power(2, least(federation_destinations.failures, 30))::bigint,
                   case when federation_destinations.failing_since_ts <= $7
                        then $6::bigint else $5::bigint end)
           returning failures as "failures!", failing_since_ts <= $7 as "down!""#,
        destination,
        error,
        now,
        base_ms,
        cap_ms,
        down_cap_ms,
        down_before
    )
    .fetch_one(db)
    .await?;
    Ok(Failure {
        failures: row.failures,
        down: row.down,
    })
}

/// Clears a destination's backoff (it just talked to us: it is up again).
pub async fn clear_backoff(db: impl PgExecutor<'_>, destination: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update federation_destinations set retry_after_ts = 0
         where destination = $1 and retry_after_ts > 0",
        destination
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The stored reply to an inbound transaction already processed.
pub async fn inbound_reply(
    db: impl PgExecutor<'_>,
    origin: &str,
    txn_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select response from federation_inbound_txns where origin = $1 and txn_id = $2",
        origin,
        txn_id
    )
    .fetch_optional(db)
    .await
}

pub async fn store_inbound_reply(
    db: impl PgExecutor<'_>,
    origin: &str,
    txn_id: &str,
    response: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into federation_inbound_txns (origin, txn_id, response, received_ts)
         values ($1, $2, $3, $4) on conflict do nothing",
        origin,
        txn_id,
        response,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub struct NewOutlier<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub json: &'a str,
    pub rejected: bool,
    pub received_ts: i64,
}

/// Stores an outlier unless the event is known already (as outlier or timeline
/// event).
pub async fn insert_outlier(db: impl PgExecutor<'_>, o: &NewOutlier<'_>) -> sqlx::Result<()> {
    insert_outliers(db, std::slice::from_ref(o)).await
}

/// [`insert_outlier`] for many events in one statement (a big room's state
/// and auth chain are tens of thousands of events).
pub async fn insert_outliers(db: impl PgExecutor<'_>, rows: &[NewOutlier<'_>]) -> sqlx::Result<()> {
    fn column<'a>(rows: &[NewOutlier<'a>], f: fn(&NewOutlier<'a>) -> &'a str) -> Vec<&'a str> {
        rows.iter().map(f).collect()
    }
    let state_keys: Vec<Option<&str>> = rows.iter().map(|o| o.state_key).collect();
    let depths: Vec<i64> = rows.iter().map(|o| o.depth).collect();
    let rejected: Vec<bool> = rows.iter().map(|o| o.rejected).collect();
    let received: Vec<i64> = rows.iter().map(|o| o.received_ts).collect();
    sqlx::query!(
        "insert into outlier_events (event_id, room_id, depth, event_type, state_key, sender,
                                     json, rejected, received_ts)
         select r.event_id, r.room_id, r.depth, r.event_type, r.state_key, r.sender,
                r.json, r.rejected, r.received_ts
         from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::boolean[], $9::bigint[])
              as r(event_id, room_id, depth, event_type, state_key, sender, json,
                   rejected, received_ts)
         where not exists (select 1 from events e where e.event_id = r.event_id)
         on conflict (event_id) do nothing",
        &column(rows, |o| o.event_id) as &[&str],
        &column(rows, |o| o.room_id) as &[&str],
        &depths,
        &column(rows, |o| o.event_type) as &[&str],
        &state_keys as &[Option<&str>],
        &column(rows, |o| o.sender) as &[&str],
        &column(rows, |o| o.json) as &[&str],
        &rejected,
        &received
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps the state group of an outlier in the room's graph (a soft-failed
/// event's state after it, a rejected one's state before it).
pub async fn set_outlier_state_group(
    db: impl PgExecutor<'_>,
    event_id: &str,
    state_group: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update outlier_events set state_group = $2 where event_id = $1",
        event_id,
        state_group
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A soft-failed or rejected event in a room's graph.
#[derive(Debug, Clone)]
pub struct GraphOutlier {
    pub event_id: String,
    pub room_id: String,
    pub state_group: i64,
    pub rejected: bool,
    pub json: String,
}

/// The outliers among `event_ids` that are in a room's graph (those with a
/// state group).
pub async fn graph_outliers(
    db: impl PgExecutor<'_>,
    event_ids: &[String],
) -> sqlx::Result<Vec<GraphOutlier>> {
    sqlx::query_as!(
        GraphOutlier,
        r#"select event_id, room_id, state_group as "state_group!", rejected, json
           from outlier_events o
           where event_id = any($1) and state_group is not null
             and not exists (select 1 from events e where e.event_id = o.event_id)"#,
        event_ids
    )
    .fetch_all(db)
    .await
}

/// Whether an event is known, as timeline event or outlier (and whether it was
/// rejected).
pub async fn known(db: impl PgExecutor<'_>, event_id: &str) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar!(
        r#"select rejected as "rejected!" from events where event_id = $1
           union all
           select rejected from outlier_events where event_id = $1
           limit 1"#,
        event_id
    )
    .fetch_optional(db)
    .await
}

/// Forgets an outlier that has become a timeline event.
pub async fn delete_outlier(db: impl PgExecutor<'_>, event_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from outlier_events where event_id = $1", event_id)
        .execute(db)
        .await?;
    Ok(())
}

pub struct RemoteMembership {
    pub membership: String,
    pub event_id: String,
    pub room_version: String,
    pub via_server: String,
    pub stripped_state: serde_json::Value,
}

/// Records (or replaces) a local user's invite to / knock on a remote room.
pub async fn upsert_remote_membership(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
    m: &RemoteMembership,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into remote_memberships (room_id, user_id, membership, event_id, room_version,
                                         via_server, stripped_state)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (room_id, user_id) do update
         set membership = excluded.membership, event_id = excluded.event_id,
             room_version = excluded.room_version, via_server = excluded.via_server,
             stripped_state = excluded.stripped_state",
        room_id,
        user_id,
        m.membership,
        m.event_id,
        m.room_version,
        m.via_server,
        m.stripped_state
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn remote_membership(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<RemoteMembership>> {
    sqlx::query_as!(
        RemoteMembership,
        "select membership, event_id, room_version, via_server, stripped_state
         from remote_memberships where room_id = $1 and user_id = $2",
        room_id,
        user_id
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_remote_membership(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from remote_memberships where room_id = $1 and user_id = $2",
        room_id,
        user_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The stripped state received with a remote invite or knock, by its event ID.
pub async fn remote_stripped_state(
    db: impl PgExecutor<'_>,
    event_id: &str,
) -> sqlx::Result<Option<serde_json::Value>> {
    sqlx::query_scalar!(
        "select stripped_state from remote_memberships where event_id = $1",
        event_id
    )
    .fetch_optional(db)
    .await
}

/// Queued items per destination (for metrics).
pub async fn queue_depths(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"select destination, count(*) as "n!" from federation_outbox group by destination"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.destination, r.n)).collect())
}

/// Destinations backing off, with when they are retried (for metrics).
pub async fn backoffs(db: impl PgExecutor<'_>, now: i64) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        "select destination, retry_after_ts from federation_destinations
         where retry_after_ts > $1",
        now
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.destination, r.retry_after_ts))
        .collect())
}

/// Drops everything queued for `destination` (a server name that cannot be
/// sent to).
pub async fn clear_queue(db: impl PgExecutor<'_>, destination: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from federation_outbox where destination = $1",
        destination
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records gaps: `event_id`, a timeline event of `room_id`, names the prev
/// events `missing`, which we do not hold.
pub async fn insert_gaps(
    db: impl PgExecutor<'_>,
    room_id: &str,
    event_id: &str,
    missing: &[String],
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_gaps (room_id, event_id, prev_event_id)
         select $1, $2, unnest($3::text[])
         on conflict do nothing",
        room_id,
        event_id,
        missing
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A gap in a room's timeline: the event just after it and the prev events
/// of that event we do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub event_id: String,
    pub depth: i64,
    pub stream_ordering: i64,
    pub missing: Vec<String>,
    /// Fills that brought none of its events, in a row.
    pub failures: i32,
    /// Not asked for before this time (ms).
    pub next_try_ts: i64,
}

/// The gaps of `room_id` just before events whose topological position
/// (depth, stream ordering) lies within `[low, high]` (`low` none: no lower
/// bound), the newest first; at most 20 (`/messages` relies on that number:
/// `service::read::GAPS_PER_LOOKUP`).
pub async fn gaps_between(
    db: impl PgExecutor<'_>,
    room_id: &str,
    low: Option<(i64, i64)>,
    high: (i64, i64),
) -> sqlx::Result<Vec<Gap>> {
    let (low_depth, low_stream) = low.unwrap_or((i64::MIN, i64::MIN));
    sqlx::query_as!(
        Gap,
        r#"select g.event_id, e.depth, e.stream_ordering,
                  array_agg(g.prev_event_id order by g.prev_event_id) as "missing!",
                  max(g.failures) as "failures!", max(g.next_try_ts) as "next_try_ts!"
           from event_gaps g join events e on e.event_id = g.event_id
           where g.room_id = $1
             and (e.depth, e.stream_ordering) <= ($2, $3)
             and (e.depth, e.stream_ordering) >= ($4, $5)
           group by g.event_id, e.depth, e.stream_ordering
           order by e.depth desc, e.stream_ordering desc
           limit 20"#,
        room_id,
        high.0,
        high.1,
        low_depth,
        low_stream
    )
    .fetch_all(db)
    .await
}

/// The gaps just before any of `event_ids` (a page read by stream ordering),
/// the newest first.
pub async fn gaps_at(
    db: impl PgExecutor<'_>,
    room_id: &str,
    event_ids: &[String],
) -> sqlx::Result<Vec<Gap>> {
    sqlx::query_as!(
        Gap,
        r#"select g.event_id, e.depth, e.stream_ordering,
                  array_agg(g.prev_event_id order by g.prev_event_id) as "missing!",
                  max(g.failures) as "failures!", max(g.next_try_ts) as "next_try_ts!"
           from event_gaps g join events e on e.event_id = g.event_id
           where g.room_id = $1 and g.event_id = any($2)
           group by g.event_id, e.depth, e.stream_ordering
           order by e.depth desc, e.stream_ordering desc"#,
        room_id,
        event_ids
    )
    .fetch_all(db)
    .await
}

/// Records a fill of the gap before `event_id` that brought none of its
/// events: `failures` in a row, not to be asked for before `next_try_ts`.
pub async fn record_gap_failure(
    db: impl PgExecutor<'_>,
    event_id: &str,
    failures: i32,
    next_try_ts: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update event_gaps set failures = $2, next_try_ts = $3 where event_id = $1",
        event_id,
        failures,
        next_try_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Closes the gaps of `room_id` whose missing prev event is now in the
/// timeline (the gap fallback holds it as an outlier with the state after
/// it, which is not in the timeline: that gap stays); returns how many rows
/// went.
pub async fn close_filled_gaps(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from event_gaps g
         where g.room_id = $1
           and exists (select 1 from events e
                       where e.event_id = g.prev_event_id and e.room_id = $1)",
        room_id
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
