//! `event_relations` (threads, reactions, edits, references) and `event_reports`.

use sqlx::PgExecutor;

use super::events::StoredEvent;

pub struct NewRelation<'a> {
    pub event_id: &'a str,
    pub relates_to: &'a str,
    pub rel_type: &'a str,
    pub room_id: &'a str,
    pub event_type: &'a str,
    pub sender: &'a str,
    pub stream_ordering: i64,
}

pub async fn insert(db: impl PgExecutor<'_>, r: &NewRelation<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_relations (event_id, relates_to, rel_type, room_id, event_type, sender, stream_ordering)
         values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
        r.event_id,
        r.relates_to,
        r.rel_type,
        r.room_id,
        r.event_type,
        r.sender,
        r.stream_ordering
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Where a page of relations may lie, in topological order (depth, stream
/// ordering): each bound is a gap, either after a topological position or after
/// a stream position; `None` leaves that side open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    /// Only events after the gap after this (depth, stream) position.
    pub topo_after: Option<(i64, i64)>,
    /// Only events at or before this (depth, stream) position.
    pub topo_upto: Option<(i64, i64)>,
    /// Only events with a stream ordering above this.
    pub stream_after: Option<i64>,
    /// Only events with a stream ordering at or below this.
    pub stream_upto: Option<i64>,
}

/// Events of `room_id` relating to `target`, directly or (with `hops` > 1)
/// through up to `hops` relations, optionally of one relation and event type,
/// within `bounds`, newest first (`backwards`) or oldest first in topological
/// order. (Any room's event may name any event: only the target's room counts.)
#[allow(clippy::too_many_arguments)]
pub async fn children(
    db: impl PgExecutor<'_>,
    room_id: &str,
    target: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    hops: i32,
    bounds: Bounds,
    backwards: bool,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    let (after_depth, after_stream) = bounds.topo_after.unzip();
    let (upto_depth, upto_stream) = bounds.topo_upto.unzip();
    sqlx::query_as!(
        StoredEvent,
        r#"with recursive related (event_id, hops) as (
               select r.event_id, 1 from event_relations r
               where r.relates_to = $1 and r.room_id = $6
             union
               select r.event_id, related.hops + 1
               from event_relations r join related on r.relates_to = related.event_id
               where related.hops < $7 and r.room_id = $6
           )
           select e.event_id, e.room_id, e.stream_ordering, e.depth, e.event_type, e.state_key, e.sender,
                  e.json, e.state_group, e.rejected, e.redacted_by
           from event_relations r join events e on e.event_id = r.event_id
           where r.event_id in (select event_id from related)
             and ($2::text is null or r.rel_type = $2)
             and ($3::text is null or r.event_type = $3)
             and not e.rejected
             and r.room_id = $6 and e.room_id = $6
             and ($8::bigint is null or (e.depth, e.stream_ordering) > ($8, $9::bigint))
             and ($10::bigint is null or (e.depth, e.stream_ordering) <= ($10, $11::bigint))
             and ($12::bigint is null or e.stream_ordering > $12)
             and ($13::bigint is null or e.stream_ordering <= $13)
           order by case when $4 then e.depth end desc, case when $4 then e.stream_ordering end desc,
                    e.depth, e.stream_ordering
           limit $5"#,
        target,
        rel_type,
        event_type,
        backwards,
        limit,
        room_id,
        hops,
        after_depth,
        after_stream,
        upto_depth,
        upto_stream,
        bounds.stream_after,
        bounds.stream_upto,
    )
    .fetch_all(db)
    .await
}

pub struct ThreadRoot {
    pub root: String,
    pub latest_stream: i64,
}

/// Thread roots of a room, most recently active first, active before `before`;
/// with `participant`, only threads the user started or replied in. Roots and
/// replies are both of the room.
pub async fn thread_roots(
    db: impl PgExecutor<'_>,
    room_id: &str,
    before: i64,
    participant: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<ThreadRoot>> {
    sqlx::query_as!(
        ThreadRoot,
        r#"select r.relates_to as "root!", max(r.stream_ordering) as "latest_stream!"
           from event_relations r
           where r.room_id = $1 and r.rel_type = 'm.thread'
             and exists (select 1 from events root
                         where root.event_id = r.relates_to and root.room_id = $1)
           group by r.relates_to
           having max(r.stream_ordering) < $2
              and ($3::text is null
                   or bool_or(r.sender = $3)
                   or exists (select 1 from events e where e.event_id = r.relates_to and e.sender = $3))
           order by max(r.stream_ordering) desc
           limit $4"#,
        room_id,
        before,
        participant,
        limit
    )
    .fetch_all(db)
    .await
}

pub async fn insert_report(
    db: impl PgExecutor<'_>,
    room_id: &str,
    event_id: &str,
    reporter: &str,
    reason: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_reports (room_id, event_id, reporter, reason, created_ts) values ($1, $2, $3, $4, $5)",
        room_id,
        event_id,
        reporter,
        reason,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

pub struct RootSummary {
    pub root: String,
    pub count: i64,
    pub latest: String,
    pub participated: bool,
}

/// Thread summaries for those of `roots` (events of `room_id`) that have
/// replies in that room (for bundling).
pub async fn thread_summaries(
    db: impl PgExecutor<'_>,
    room_id: &str,
    roots: &[String],
    user: &str,
) -> sqlx::Result<Vec<RootSummary>> {
    sqlx::query_as!(
        RootSummary,
        r#"select r.relates_to as "root!", count(*) as "count!",
                  (array_agg(r.event_id order by r.stream_ordering desc))[1] as "latest!",
                  (bool_or(r.sender = $2)
                   or bool_or(exists (select 1 from events e where e.event_id = r.relates_to and e.sender = $2)))
                   as "participated!"
           from event_relations r
           where r.relates_to = any($1) and r.rel_type = 'm.thread' and r.room_id = $3
           group by r.relates_to"#,
        roots,
        user,
        room_id
    )
    .fetch_all(db)
    .await
}

pub struct Report {
    pub report_id: i64,
    pub room_id: String,
    pub event_id: String,
    pub reporter: String,
    pub reason: Option<String>,
    pub score: Option<i32>,
    pub created_ts: i64,
}

/// Event reports, newest first, `offset`/`limit` paged, with the total.
pub async fn reports(
    db: impl PgExecutor<'_> + Copy,
    offset: i64,
    limit: i64,
) -> sqlx::Result<(Vec<Report>, i64)> {
    let rows = sqlx::query_as!(
        Report,
        "select report_id, room_id, event_id, reporter, reason, score, created_ts
         from event_reports order by report_id desc offset $1 limit $2",
        offset,
        limit
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(r#"select count(*) as "n!" from event_reports"#)
        .fetch_one(db)
        .await?;
    Ok((rows, total))
}

pub async fn report(db: impl PgExecutor<'_>, report_id: i64) -> sqlx::Result<Option<Report>> {
    sqlx::query_as!(
        Report,
        "select report_id, room_id, event_id, reporter, reason, score, created_ts
         from event_reports where report_id = $1",
        report_id
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_report(db: impl PgExecutor<'_>, report_id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from event_reports where report_id = $1", report_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A child event and the event it relates to.
pub struct Child {
    pub relates_to: String,
    pub event: StoredEvent,
}

struct ChildRow {
    relates_to: String,
    event_id: String,
    room_id: String,
    stream_ordering: i64,
    depth: i64,
    event_type: String,
    state_key: Option<String>,
    sender: String,
    json: String,
    state_group: Option<i64>,
    rejected: bool,
    redacted_by: Option<String>,
}

impl From<ChildRow> for Child {
    fn from(r: ChildRow) -> Self {
        Self {
            relates_to: r.relates_to,
            event: StoredEvent {
                event_id: r.event_id,
                room_id: r.room_id,
                stream_ordering: r.stream_ordering,
                depth: r.depth,
                event_type: r.event_type,
                state_key: r.state_key,
                sender: r.sender,
                json: r.json,
                state_group: r.state_group,
                rejected: r.rejected,
                redacted_by: r.redacted_by,
            },
        }
    }
}

/// The newest (by `origin_server_ts`, then the larger event ID) `per_target`
/// edits of each of `targets` that can be valid replacements: of the room, by the
/// original's sender, of its type, neither a state event, not rejected, not
/// redacted. The caller checks the rest (the original is no edit itself, the
/// edit has `m.new_content`, the reader may see it). Newest first per target.
pub async fn edits(
    db: impl PgExecutor<'_>,
    room_id: &str,
    targets: &[String],
    per_target: i64,
) -> sqlx::Result<Vec<Child>> {
    let rows = sqlx::query_as!(
        ChildRow,
        r#"select relates_to as "relates_to!", event_id as "event_id!", room_id as "room_id!",
                  stream_ordering as "stream_ordering!", depth as "depth!",
                  event_type as "event_type!", state_key, sender as "sender!", json as "json!",
                  state_group, rejected as "rejected!", redacted_by
           from (select r.relates_to, e.event_id, e.room_id, e.stream_ordering, e.depth,
                        e.event_type, e.state_key, e.sender, e.json, e.state_group, e.rejected,
                        e.redacted_by,
                        row_number() over (partition by r.relates_to
                                           order by e.origin_server_ts desc,
                                                    e.event_id collate "C" desc) as n
                 from event_relations r
                 join events e on e.event_id = r.event_id
                 join events o on o.event_id = r.relates_to
                 where r.relates_to = any($2) and r.rel_type = 'm.replace' and r.room_id = $1
                   and e.room_id = $1 and o.room_id = $1
                   and not e.rejected and e.redacted_by is null
                   and e.sender = o.sender and e.event_type = o.event_type
                   and e.state_key is null and o.state_key is null) c
           where n <= $3
           order by relates_to, n"#,
        room_id,
        targets,
        per_target
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Child::from).collect())
}

/// The first `per_target` events of the room (in topological order) that
/// reference each of `targets` (`m.reference`), not rejected, not redacted.
pub async fn references(
    db: impl PgExecutor<'_>,
    room_id: &str,
    targets: &[String],
    per_target: i64,
) -> sqlx::Result<Vec<Child>> {
    let rows = sqlx::query_as!(
        ChildRow,
        r#"select relates_to as "relates_to!", event_id as "event_id!", room_id as "room_id!",
                  stream_ordering as "stream_ordering!", depth as "depth!",
                  event_type as "event_type!", state_key, sender as "sender!", json as "json!",
                  state_group, rejected as "rejected!", redacted_by
           from (select r.relates_to, e.event_id, e.room_id, e.stream_ordering, e.depth,
                        e.event_type, e.state_key, e.sender, e.json, e.state_group, e.rejected,
                        e.redacted_by,
                        row_number() over (partition by r.relates_to
                                           order by e.depth, e.stream_ordering) as n
                 from event_relations r
                 join events e on e.event_id = r.event_id
                 where r.relates_to = any($2) and r.rel_type = 'm.reference' and r.room_id = $1
                   and e.room_id = $1 and not e.rejected and e.redacted_by is null) c
           where n <= $3
           order by relates_to, n"#,
        room_id,
        targets,
        per_target
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Child::from).collect())
}
