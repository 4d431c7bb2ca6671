//! `event_search`: the full-text index behind `POST /search`.

use sqlx::PgExecutor;

pub async fn index(
    db: impl PgExecutor<'_>,
    event_id: &str,
    room_id: &str,
    stream_ordering: i64,
    key: &str,
    text: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_search (event_id, room_id, stream_ordering, key, vector)
         values ($1, $2, $3, $4, to_tsvector('english', $5))
         on conflict do nothing",
        event_id,
        room_id,
        stream_ordering,
        key,
        text
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn remove(db: impl PgExecutor<'_>, event_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from event_search where event_id = $1", event_id)
        .execute(db)
        .await?;
    Ok(())
}

/// A match with what deciding its visibility needs.
pub struct Candidate {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub sender: String,
    pub state_group: Option<i64>,
    pub stream_ordering: i64,
    pub rank: f32,
}

/// Matches of the tsquery `query` (in `to_tsquery` syntax) in `rooms`, for `keys`.
/// `by_rank`: best first; otherwise newest first, below `before` stream position.
pub struct Query<'a> {
    pub query: &'a str,
    pub rooms: &'a [String],
    pub keys: &'a [String],
    pub by_rank: bool,
    pub before: i64,
    pub limit: i64,
}

/// The first `limit` matches, in the order asked for.
pub async fn candidates(db: impl PgExecutor<'_>, q: &Query<'_>) -> sqlx::Result<Vec<Candidate>> {
    sqlx::query_as!(
        Candidate,
        r#"select s.event_id, e.room_id, e.event_type, e.sender, e.state_group,
                  s.stream_ordering, ts_rank_cd(s.vector, q) as "rank!"
           from event_search s join events e on e.event_id = s.event_id,
                to_tsquery('english', $1) q
           where s.vector @@ q and s.room_id = any($2) and s.key = any($3)
             and ($4 or s.stream_ordering < $5) and not e.rejected
           order by case when $4 then ts_rank_cd(s.vector, q) else 0 end desc,
                    s.stream_ordering desc
           limit $6"#,
        q.query,
        q.rooms,
        q.keys,
        q.by_rank,
        q.before,
        q.limit
    )
    .fetch_all(db)
    .await
}
