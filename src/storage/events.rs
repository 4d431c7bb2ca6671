//! `events`: every PDU with its orderings and the state group after it.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: String,
    pub room_id: String,
    pub stream_ordering: i64,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub json: String,
    pub state_group: Option<i64>,
    pub rejected: bool,
    pub redacted_by: Option<String>,
}

pub struct NewEventRow<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub json: &'a str,
    pub state_group: Option<i64>,
    pub rejected: bool,
    pub received_ts: i64,
}

/// Takes the next global stream position. Called inside the persisting
/// transaction; the position becomes visible to readers only through the stream
/// tracker once the transaction commits (see `notify`).
pub async fn next_stream_ordering(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select nextval('events_stream_seq') as "n!""#)
        .fetch_one(db)
        .await
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    row: &NewEventRow<'_>,
    stream_ordering: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into events (event_id, room_id, stream_ordering, depth, event_type, state_key,
                             sender, origin_server_ts, json, state_group, rejected, received_ts)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        row.event_id,
        row.room_id,
        stream_ordering,
        row.depth,
        row.event_type,
        row.state_key,
        row.sender,
        row.origin_server_ts,
        row.json,
        row.state_group,
        row.rejected,
        row.received_ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// [`insert`] at the next stream position, which it returns (one round trip).
pub async fn insert_next(db: impl PgExecutor<'_>, row: &NewEventRow<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"insert into events (event_id, room_id, stream_ordering, depth, event_type, state_key,
                             sender, origin_server_ts, json, state_group, rejected, received_ts)
           values ($1, $2, nextval('events_stream_seq'), $3, $4, $5, $6, $7, $8, $9, $10, $11)
           returning stream_ordering as "stream_ordering!""#,
        row.event_id,
        row.room_id,
        row.depth,
        row.event_type,
        row.state_key,
        row.sender,
        row.origin_server_ts,
        row.json,
        row.state_group,
        row.rejected,
        row.received_ts
    )
    .fetch_one(db)
    .await
}

/// An event by ID: a timeline event, or else an outlier (stream ordering 0, no
/// state group).
pub async fn get(db: impl PgExecutor<'_>, event_id: &str) -> sqlx::Result<Option<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        r#"select event_id as "event_id!", room_id as "room_id!",
                  stream_ordering as "stream_ordering!", depth as "depth!",
                  event_type as "event_type!", state_key, sender as "sender!", json as "json!",
                  state_group, rejected as "rejected!", redacted_by
           from (select event_id, room_id, stream_ordering, depth, event_type, state_key, sender,
                        json, state_group, rejected, redacted_by, 0 as pref
                 from events where event_id = $1
                 union all
                 select event_id, room_id, 0::bigint, depth, event_type, state_key, sender, json,
                        null::bigint, rejected, null::text, 1
                 from outlier_events where event_id = $1) e
           order by pref limit 1"#,
        event_id
    )
    .fetch_optional(db)
    .await
}

pub async fn get_many(
    db: impl PgExecutor<'_>,
    event_ids: &[String],
) -> sqlx::Result<Vec<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        r#"select event_id as "event_id!", room_id as "room_id!",
                  stream_ordering as "stream_ordering!", depth as "depth!",
                  event_type as "event_type!", state_key, sender as "sender!", json as "json!",
                  state_group, rejected as "rejected!", redacted_by
           from events where event_id = any($1)
           union all
           select event_id, room_id, 0::bigint, depth, event_type, state_key, sender, json,
                  null::bigint, rejected, null::text
           from outlier_events o where event_id = any($1)
             and not exists (select 1 from events e where e.event_id = o.event_id)"#,
        event_ids
    )
    .fetch_all(db)
    .await
}

/// What an event is, without its JSON: enough to place it in a state map.
#[derive(Debug, Clone)]
pub struct EventKey {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub rejected: bool,
}

/// [`get_many`] without the JSON (timeline events, else outliers): a state of
/// tens of thousands of events is placed without reading them all.
pub async fn keys_of(db: impl PgExecutor<'_>, event_ids: &[String]) -> sqlx::Result<Vec<EventKey>> {
    sqlx::query_as!(
        EventKey,
        r#"select event_id as "event_id!", room_id as "room_id!", event_type as "event_type!",
                  state_key, rejected as "rejected!"
           from events where event_id = any($1)
           union all
           select event_id, room_id, event_type, state_key, rejected
           from outlier_events o where event_id = any($1)
             and not exists (select 1 from events e where e.event_id = o.event_id)"#,
        event_ids
    )
    .fetch_all(db)
    .await
}

pub async fn set_redacted_by(
    db: impl PgExecutor<'_>,
    event_id: &str,
    redaction_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update events set redacted_by = $2 where event_id = $1 and redacted_by is null",
        event_id,
        redaction_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Events of a room in topological order, strictly before (`backwards`) or after
/// the position `(depth, stream)`, at most `limit`. Rejected events are skipped.
pub async fn page(
    db: impl PgExecutor<'_>,
    room_id: &str,
    depth: i64,
    stream: i64,
    backwards: bool,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    if backwards {
        sqlx::query_as!(
            StoredEvent,
            "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                    state_group, rejected, redacted_by
             from events
             where room_id = $1 and not rejected and (depth, stream_ordering) < ($2, $3)
             order by depth desc, stream_ordering desc limit $4",
            room_id,
            depth,
            stream,
            limit
        )
        .fetch_all(db)
        .await
    } else {
        sqlx::query_as!(
            StoredEvent,
            "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                    state_group, rejected, redacted_by
             from events
             where room_id = $1 and not rejected and (depth, stream_ordering) > ($2, $3)
             order by depth, stream_ordering limit $4",
            room_id,
            depth,
            stream,
            limit
        )
        .fetch_all(db)
        .await
    }
}

/// A page of a room's events in topological order bounded by stream ordering:
/// going backwards, those at or below `stream`; forwards, those above it.
pub async fn page_by_stream(
    db: impl PgExecutor<'_>,
    room_id: &str,
    stream: i64,
    backwards: bool,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    if backwards {
        sqlx::query_as!(
            StoredEvent,
            "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                    state_group, rejected, redacted_by
             from events
             where room_id = $1 and not rejected and stream_ordering <= $2
             order by depth desc, stream_ordering desc limit $3",
            room_id,
            stream,
            limit
        )
        .fetch_all(db)
        .await
    } else {
        sqlx::query_as!(
            StoredEvent,
            "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                    state_group, rejected, redacted_by
             from events
             where room_id = $1 and not rejected and stream_ordering > $2
             order by depth, stream_ordering limit $3",
            room_id,
            stream,
            limit
        )
        .fetch_all(db)
        .await
    }
}

/// The room's newest event in stream order at or below `stream`.
pub async fn newest_at_stream(
    db: impl PgExecutor<'_>,
    room_id: &str,
    stream: i64,
) -> sqlx::Result<Option<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                state_group, rejected, redacted_by
         from events
         where room_id = $1 and not rejected and stream_ordering <= $2
         order by stream_ordering desc limit 1",
        room_id,
        stream
    )
    .fetch_optional(db)
    .await
}

/// The room's greatest depth and stream ordering: as a position, the gap after
/// its newest event ((0, 0) for a room without events).
pub async fn room_end(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query!(
        r#"select coalesce(max(depth), 0) as "depth!", coalesce(max(stream_ordering), 0) as "stream!"
           from events where room_id = $1"#,
        room_id
    )
    .fetch_one(db)
    .await?;
    Ok((row.depth, row.stream))
}

pub async fn count_in_room(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from events where room_id = $1"#,
        room_id
    )
    .fetch_one(db)
    .await
}

/// The highest stream position taken so far. At startup nothing is in flight, so
/// every position up to it is final (those rolled back are simply gaps).
/// Locks `event_id` until the transaction ends (other transactions asking for
/// the same ID wait) and tells whether it is still free. For IDs derived from
/// content that may repeat: v12 create events, whose hash is the room ID.
pub async fn claim_id(tx: &mut sqlx::PgConnection, event_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select 1 as "locked!" from pg_advisory_xact_lock(hashtextextended($1, 0))"#,
        event_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let taken = sqlx::query_scalar!(
        r#"select exists(select 1 from events where event_id = $1) as "taken!""#,
        event_id
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(!taken)
}

pub async fn max_stream_ordering(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select (case when is_called then last_value else 0 end) as "n!" from events_stream_seq"#
    )
    .fetch_one(db)
    .await
}

/// The event closest to `ts`: the last at or before it (`backwards`), or the first
/// at or after it.
pub async fn closest_to_ts(
    db: impl PgExecutor<'_>,
    room_id: &str,
    ts: i64,
    backwards: bool,
) -> sqlx::Result<Option<(String, i64)>> {
    let row = sqlx::query!(
        r#"select event_id, origin_server_ts from events
           where room_id = $1 and not rejected
             and case when $3 then origin_server_ts <= $2 else origin_server_ts >= $2 end
           order by case when $3 then -origin_server_ts else origin_server_ts end, stream_ordering
           limit 1"#,
        room_id,
        ts,
        backwards
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.event_id, r.origin_server_ts)))
}

/// The lowest and highest stream positions taken so far: backfilled events
/// count down from -1, everything else up from 1 (0 stands for "none yet").
pub async fn stream_range(db: impl PgExecutor<'_>) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query!(
        r#"select (select case when is_called then -last_value else 0 end from events_backfill_seq) as "low!",
                  (select case when is_called then last_value else 0 end from events_stream_seq) as "high!""#
    )
    .fetch_one(db)
    .await?;
    Ok((row.low, row.high))
}

/// The next (negative) stream position for a backfilled event.
pub async fn next_backfill_ordering(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select -nextval('events_backfill_seq') as "n!""#)
        .fetch_one(db)
        .await
}

/// The oldest timeline events of a room (lowest depth), for finding where its
/// history stops: their JSON and state group.
pub async fn oldest_in_room(
    db: impl PgExecutor<'_>,
    room_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    sqlx::query_as!(
        StoredEvent,
        "select event_id, room_id, stream_ordering, depth, event_type, state_key, sender, json,
                state_group, rejected, redacted_by
         from events where room_id = $1
         order by depth, stream_ordering limit $2",
        room_id,
        limit
    )
    .fetch_all(db)
    .await
}

/// Which of these IDs are timeline events (not outliers).
pub async fn in_timeline(db: impl PgExecutor<'_>, ids: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!("select event_id from events where event_id = any($1)", ids)
        .fetch_all(db)
        .await
}

/// What the client form of a page of events needs besides the events, in one
/// round trip (see `service::client_event`).
#[derive(Debug, Default)]
pub struct Annotations {
    /// Event ID to the transaction ID it was sent with, for the reader's device.
    pub txns: std::collections::HashMap<String, String>,
    /// Senders (of the page, or of the state events the page's replaced) who
    /// asked for erasure.
    pub erased: std::collections::HashSet<String>,
    /// State event ID to the event it replaced.
    pub replaced: std::collections::HashMap<String, String>,
    /// Event ID to the relation types of the page's room naming it (`m.thread`,
    /// `m.replace`, `m.reference`, ...).
    pub related: std::collections::HashMap<String, Vec<String>>,
}

/// What the page asks about: `own` events looked up for the transaction IDs of
/// `user`'s `device` (none without a device), `senders` checked for erasure,
/// `state` events looked up for what they replaced, `targets` for relations in
/// `room_id`.
pub struct AnnotationQuery<'a> {
    pub user_id: &'a str,
    pub device_id: Option<&'a str>,
    pub own: &'a [String],
    pub senders: &'a [String],
    pub state: &'a [String],
    pub targets: &'a [String],
    pub room_id: &'a str,
}

pub async fn annotations(
    db: impl PgExecutor<'_>,
    q: AnnotationQuery<'_>,
) -> sqlx::Result<Annotations> {
    let rows = sqlx::query!(
        r#"select 1 as "kind!", event_id as "a!", txn_id as "b?" from event_txn_ids
           where event_id = any($1) and user_id = $2 and device_id = $3
           union all
           select 2, user_id, null from users
           where user_id = any($4::text[] || array(select e.sender from state_replaced r
                                                  join events e on e.event_id = r.replaces_state
                                                  where r.event_id = any($5)))
             and erased
           union all
           select 3, event_id, replaces_state from state_replaced where event_id = any($5)
           union all
           select distinct 4, relates_to, rel_type from event_relations
           where relates_to = any($6) and room_id = $7"#,
        q.own,
        q.user_id,
        q.device_id.unwrap_or(""),
        q.senders,
        q.state,
        q.targets,
        q.room_id,
    )
    .fetch_all(db)
    .await?;
    let mut out = Annotations::default();
    for row in rows {
        match (row.kind, row.b) {
            (1, Some(txn)) => {
                out.txns.insert(row.a, txn);
            }
            (2, _) => {
                out.erased.insert(row.a);
            }
            (3, Some(replaced)) => {
                out.replaced.insert(row.a, replaced);
            }
            (4, Some(rel_type)) => out.related.entry(row.a).or_default().push(rel_type),
            _ => {}
        }
    }
    Ok(out)
}

/// The content of the state event `event_id` replaced (same type and state
/// key, before it), if any.
pub async fn replaced_content(
    db: impl PgExecutor<'_>,
    event_id: &str,
) -> sqlx::Result<Option<serde_json::Value>> {
    let json = sqlx::query_scalar!(
        "select e.json from state_replaced r
         join events e on e.event_id = r.replaces_state
         where r.event_id = $1",
        event_id
    )
    .fetch_optional(db)
    .await?;
    Ok(json.and_then(|j| {
        serde_json::from_str::<serde_json::Value>(&j)
            .ok()
            .map(|v| v["content"].clone())
    }))
}
