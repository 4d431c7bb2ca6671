//! Application service queues: events waiting for delivery (`appservice_outbox`)
//! and the rooms each appservice lists in its own directory.

use sqlx::PgExecutor;

/// Queues one event for each of `appservices`.
pub async fn enqueue(
    db: impl PgExecutor<'_>,
    appservices: &[String],
    event_id: &str,
    event_json: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into appservice_outbox (appservice_id, event_id, event_json)
         select a, $2, $3 from unnest($1::text[]) as a",
        appservices,
        event_id,
        event_json
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Queues one row that is not a room event (`kind`: `ephemeral`,
/// `to_device`, `device_list`; see the migration) for each of `appservices`.
pub async fn enqueue_other(
    db: impl PgExecutor<'_>,
    appservices: &[String],
    kind: &str,
    json: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into appservice_outbox (appservice_id, kind, event_json)
         select a, $2, $3 from unnest($1::text[]) as a",
        appservices,
        kind,
        json
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A transaction for one appservice: its ID and its rows (kind, JSON),
/// oldest first.
pub struct Pending {
    pub txn_id: i64,
    pub rows: Vec<(String, String)>,
}

/// The transaction already formed and not yet acknowledged, if any.
pub async fn open_transaction(
    db: impl PgExecutor<'_>,
    appservice_id: &str,
) -> sqlx::Result<Option<Pending>> {
    let rows = sqlx::query!(
        "select txn_id as \"txn_id!\", kind, event_json from appservice_outbox
         where appservice_id = $1
           and txn_id = (select min(txn_id) from appservice_outbox
                         where appservice_id = $1 and txn_id is not null)
         order by id",
        appservice_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows.first().map(|first| Pending {
        txn_id: first.txn_id,
        rows: rows
            .iter()
            .map(|r| (r.kind.clone(), r.event_json.clone()))
            .collect(),
    }))
}

/// Puts up to `limit` of the oldest queued rows into a new transaction, whose
/// ID is the first row's; `None` when nothing is queued.
pub async fn form_transaction(
    db: impl PgExecutor<'_>,
    appservice_id: &str,
    limit: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "with batch as (
             select id from appservice_outbox
             where appservice_id = $1 and txn_id is null
             order by id limit $2
         )
         update appservice_outbox set txn_id = (select min(id) from batch)
         where id in (select id from batch)
         returning txn_id as \"txn_id!\"",
        appservice_id,
        limit
    )
    .fetch_all(db)
    .await
    .map(|ids| ids.first().copied())
}

/// The appservice acknowledged the transaction: its rows are done.
pub async fn complete(
    db: impl PgExecutor<'_>,
    appservice_id: &str,
    txn_id: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from appservice_outbox where appservice_id = $1 and txn_id = $2",
        appservice_id,
        txn_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Rows waiting per appservice (for `/metrics`).
pub async fn depth(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        "select appservice_id, count(*) as \"n!\" from appservice_outbox group by appservice_id"
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.appservice_id, r.n)).collect())
}

/// One appservice's queue, for the admin API.
pub struct QueueState {
    pub appservice_id: String,
    /// Events waiting, the open transaction's included.
    pub queued: i64,
    /// The transaction sent (or about to be) and not yet acknowledged.
    pub open_txn_id: Option<i64>,
    pub open_txn_events: i64,
}

/// Every appservice's queue that has rows.
pub async fn queue_states(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<QueueState>> {
    let rows = sqlx::query!(
        r#"select appservice_id, count(*) as "queued!", min(txn_id) as open_txn_id,
                  count(txn_id) as "open_txn_events!"
           from appservice_outbox group by appservice_id"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| QueueState {
            appservice_id: r.appservice_id,
            queued: r.queued,
            open_txn_id: r.open_txn_id,
            open_txn_events: r.open_txn_events,
        })
        .collect())
}

/// Adds or removes a room from an appservice's directory list.
pub async fn set_listed(
    db: impl PgExecutor<'_>,
    appservice_id: &str,
    network_id: &str,
    room_id: &str,
    listed: bool,
) -> sqlx::Result<()> {
    if listed {
        sqlx::query!(
            "insert into appservice_room_list (appservice_id, network_id, room_id)
             values ($1, $2, $3) on conflict do nothing",
            appservice_id,
            network_id,
            room_id
        )
        .execute(db)
        .await?;
    } else {
        sqlx::query!(
            "delete from appservice_room_list
             where appservice_id = $1 and network_id = $2 and room_id = $3",
            appservice_id,
            network_id,
            room_id
        )
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Rooms appservices list (all of them, or one appservice's network), with
/// their current state group and joined-member count, largest first.
pub async fn listed(
    db: impl PgExecutor<'_>,
    network: Option<(&str, &str)>,
) -> sqlx::Result<Vec<(String, Option<i64>, i64)>> {
    let (appservice_id, network_id) = network.unzip();
    let rows = sqlx::query!(
        r#"select r.room_id, r.current_state_group,
                  (select count(*) from room_members m
                   where m.room_id = r.room_id and m.membership = 'join') as "joined!"
           from rooms r
           where exists (select 1 from appservice_room_list l
                         where l.room_id = r.room_id
                           and ($1::text is null or l.appservice_id = $1)
                           and ($2::text is null or l.network_id = $2))
           order by 3 desc, r.room_id"#,
        appservice_id,
        network_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.room_id, r.current_state_group, r.joined))
        .collect())
}

/// This server's users joined to or invited into a room (the appservice
/// interest check reads them in the writing transaction).
pub async fn local_members(db: impl PgExecutor<'_>, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select user_id from room_members
         where room_id = $1 and membership in ('join', 'invite')",
        room_id
    )
    .fetch_all(db)
    .await
}

/// One-time keys left per device and algorithm of `users`' devices (every
/// device, with no algorithm and a count of 0 when it has none).
pub async fn one_time_key_counts(
    db: impl PgExecutor<'_>,
    users: &[String],
) -> sqlx::Result<Vec<(String, String, Option<String>, i64)>> {
    let rows = sqlx::query!(
        r#"select d.user_id, d.device_id, k.algorithm as "algorithm?", count(k.key_id) as "count!"
           from devices d
           left join one_time_keys k on k.user_id = d.user_id and k.device_id = d.device_id
           where d.user_id = any($1)
           group by d.user_id, d.device_id, k.algorithm"#,
        users
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_id, r.device_id, r.algorithm, r.count))
        .collect())
}

/// The unused fallback key algorithms of `users`' devices (every device, with
/// no algorithm when it has none unused).
pub async fn unused_fallback_keys(
    db: impl PgExecutor<'_>,
    users: &[String],
) -> sqlx::Result<Vec<(String, String, Option<String>)>> {
    let rows = sqlx::query!(
        r#"select d.user_id, d.device_id, f.algorithm as "algorithm?"
           from devices d
           left join fallback_keys f
             on f.user_id = d.user_id and f.device_id = d.device_id and not f.used
           where d.user_id = any($1)"#,
        users
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_id, r.device_id, r.algorithm))
        .collect())
}

/// This server's users joined to any room `user_id` is joined to (presence
/// and device-list interest).
pub async fn local_users_sharing_rooms(
    db: impl PgExecutor<'_>,
    user_id: &str,
    server_suffix: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct m.user_id as "user_id!" from room_members m
           where m.membership = 'join' and right(m.user_id, length($2)) = $2
             and m.room_id in (select room_id from room_members
                               where user_id = $1 and membership = 'join')"#,
        user_id,
        server_suffix
    )
    .fetch_all(db)
    .await
}
