//! Per-user streams besides room events: account data, receipts, to-device
//! messages and device-list changes. Positions come from `events_stream_seq`
//! (see migration 0006), taken with [`super::events::next_stream_ordering`].

use sqlx::PgExecutor;

pub struct AccountData {
    pub room_id: String,
    pub data_type: String,
    pub content: String,
}

pub async fn set_account_data(
    db: impl PgExecutor<'_>,
    user_id: &str,
    room_id: &str,
    data_type: &str,
    content: &str,
    stream: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into account_data (user_id, room_id, data_type, content, stream_ordering)
         values ($1, $2, $3, $4, $5)
         on conflict (user_id, room_id, data_type)
         do update set content = excluded.content, stream_ordering = excluded.stream_ordering",
        user_id,
        room_id,
        data_type,
        content,
        stream
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Removes all of a user's account data, global and per room (deactivation).
pub async fn delete_all_account_data(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from account_data where user_id = $1", user_id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get_account_data(
    db: impl PgExecutor<'_>,
    user_id: &str,
    room_id: &str,
    data_type: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select content from account_data where user_id = $1 and room_id = $2 and data_type = $3",
        user_id,
        room_id,
        data_type
    )
    .fetch_optional(db)
    .await
}

/// The user's account data changed in `(after, upto]`. When `after` is 0 (an
/// initial sync), all of it but deleted types: a deletion (MSC3391) is stored as
/// empty content, which only incremental syncs carry.
pub async fn account_data_since(
    db: impl PgExecutor<'_>,
    user_id: &str,
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<AccountData>> {
    sqlx::query_as!(
        AccountData,
        "select room_id, data_type, content from account_data
         where user_id = $1 and stream_ordering > $2 and stream_ordering <= $3
           and ($2 > 0 or content <> '{}')
         order by stream_ordering",
        user_id,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

pub struct Receipt {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

pub struct NewReceipt<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub receipt_type: &'a str,
    pub thread_id: &'a str,
    pub event_id: &'a str,
    pub ts: i64,
}

/// Stores a receipt, unless it would move the user's receipt of this type
/// (and thread) back to an older event: whether it was stored.
pub async fn set_receipt(
    db: impl PgExecutor<'_>,
    r: &NewReceipt<'_>,
    stream: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_ordering)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (room_id, user_id, receipt_type, thread_id)
         do update set event_id = excluded.event_id, ts = excluded.ts,
                       stream_ordering = excluded.stream_ordering
         -- Receipts only move forward (as Synapse's do): one for an event
         -- older than the receipt's current event is ignored.
         where coalesce(
             (select e.stream_ordering from events e where e.event_id = excluded.event_id)
             > (select e.stream_ordering from events e where e.event_id = receipts.event_id),
             true)",
        r.room_id,
        r.user_id,
        r.receipt_type,
        r.thread_id,
        r.event_id,
        r.ts,
        stream
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Receipts in the given rooms changed in `(after, upto]`.
pub async fn receipts_since(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<Receipt>> {
    sqlx::query_as!(
        Receipt,
        "select room_id, user_id, receipt_type, thread_id, event_id, ts from receipts
         where room_id = any($1) and stream_ordering > $2 and stream_ordering <= $3
         order by stream_ordering",
        rooms,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// The stream position of `user`'s receipt of `receipt_type` in a room (any
/// thread), to count unread events after it.
pub async fn read_position(
    db: impl PgExecutor<'_>,
    room_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        r#"select max(e.stream_ordering) as "n" from receipts r
           join events e on e.event_id = r.event_id
           where r.room_id = $1 and r.user_id = $2
             and r.receipt_type in ('m.read', 'm.read.private', 'm.fully_read')"#,
        room_id,
        user_id
    )
    .fetch_one(db)
    .await
}

pub struct ToDevice {
    pub id: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// Queues a message for each of `device_ids` that exists (unknown devices are
/// skipped, as in Synapse).
pub async fn insert_to_device(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_ids: &[String],
    stream: i64,
    sender: &str,
    event_type: &str,
    content: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into to_device (user_id, device_id, stream_ordering, sender, event_type, content)
         select $1, d, $3, $4, $5, $6 from unnest($2::text[]) as d
         where exists (select 1 from devices where user_id = $1 and device_id = d)",
        user_id,
        device_ids,
        stream,
        sender,
        event_type,
        content
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records a sendToDevice transaction; false when it was seen before.
pub async fn claim_to_device_txn(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into to_device_txns (user_id, device_id, txn_id, created_ts) values ($1, $2, $3, $4)
         on conflict do nothing",
        user_id,
        device_id,
        txn_id,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Pending to-device messages for a device up to `upto`, oldest first.
pub async fn to_device_pending(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    upto: i64,
    limit: i64,
) -> sqlx::Result<Vec<ToDevice>> {
    sqlx::query_as!(
        ToDevice,
        "select id, sender, event_type, content from to_device
         where user_id = $1 and device_id = $2 and stream_ordering <= $3
         order by id limit $4",
        user_id,
        device_id,
        upto,
        limit
    )
    .fetch_all(db)
    .await
}

/// Deletes the messages a device acknowledged: those up to `max_id`, delivered by
/// the sync whose token it now presents.
pub async fn ack_to_device(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    max_id: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from to_device where user_id = $1 and device_id = $2 and id <= $3",
        user_id,
        device_id,
        max_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records that `user_id`'s devices or keys changed at `stream`; with
/// `only_for`, a change only that user sees.
pub async fn device_list_changed(
    db: impl PgExecutor<'_>,
    user_id: &str,
    stream: i64,
    only_for: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into device_list_changes (stream_ordering, user_id, only_for) values ($1, $2, $3)
         on conflict do nothing",
        stream,
        user_id,
        only_for
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The position of `user_id`'s last change before `before` that other servers
/// were told of (the `prev_id` of the next `m.device_list_update`).
pub async fn previous_device_list_change(
    db: impl PgExecutor<'_>,
    user_id: &str,
    before: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "select max(stream_ordering) from device_list_changes
         where user_id = $1 and stream_ordering < $2 and only_for is null",
        user_id,
        before
    )
    .fetch_one(db)
    .await
}

/// Users whose devices changed in `(after, upto]` and who share a room with
/// `user_id` now (or are `user_id`), and changes only `user_id` may see.
pub async fn device_lists_changed_since(
    db: impl PgExecutor<'_>,
    user_id: &str,
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct c.user_id as "user_id!" from device_list_changes c
           where c.stream_ordering > $2 and c.stream_ordering <= $3
             and (c.only_for = $1
                  or (c.only_for is null and (c.user_id = $1 or exists (
                   select 1 from room_members a join room_members b on a.room_id = b.room_id
                   where a.user_id = $1 and a.membership = 'join'
                     and b.user_id = c.user_id and b.membership = 'join'))))"#,
        user_id,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// Users sharing at least one joined room with `user_id`, among `candidates`.
pub async fn sharing_a_room(
    db: impl PgExecutor<'_>,
    user_id: &str,
    candidates: &[String],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct b.user_id as "user_id!" from room_members a
           join room_members b on a.room_id = b.room_id
           where a.user_id = $1 and a.membership = 'join'
             and b.user_id = any($2) and b.membership = 'join'"#,
        user_id,
        candidates
    )
    .fetch_all(db)
    .await
}

/// Membership changes in `(after, upto]` in rooms `user_id` is or was in: who,
/// in which room, to what. Feeds device_lists.changed / left.
pub struct MemberChange {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
}

pub async fn member_changes_since(
    db: impl PgExecutor<'_>,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<MemberChange>> {
    sqlx::query_as!(
        MemberChange,
        r#"select room_id, state_key as "user_id!",
                  coalesce(json::jsonb -> 'content' ->> 'membership', '') as "membership!"
           from events
           where room_id = any($1) and event_type = 'm.room.member' and state_key is not null
             and stream_ordering > $2 and stream_ordering <= $3 and not rejected
           order by stream_ordering"#,
        rooms,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// Stored account data of one type for several users: (user, content).
pub async fn account_data_for_users(
    db: impl PgExecutor<'_>,
    users: &[String],
    data_type: &str,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "select user_id, content from account_data
         where user_id = any($1) and room_id = '' and data_type = $2",
        users,
        data_type
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.content)).collect())
}

/// Who one event notifies: one row per user, with the actions of the rule
/// that matched (as JSON) and whether it highlights.
pub struct PushActions<'a> {
    pub room_id: &'a str,
    pub stream_ordering: i64,
    pub event_id: &'a str,
    pub thread_id: &'a str,
    pub users: Vec<&'a str>,
    pub highlights: Vec<bool>,
    pub actions: Vec<String>,
}

/// Records an event's push actions for all its users in one statement.
pub async fn insert_push_actions(db: impl PgExecutor<'_>, a: &PushActions<'_>) -> sqlx::Result<()> {
    if a.users.is_empty() {
        return Ok(());
    }
    let users: Vec<String> = a.users.iter().map(|u| (*u).to_owned()).collect();
    sqlx::query!(
        "insert into event_push_actions
             (user_id, room_id, stream_ordering, event_id, thread_id, highlight, actions)
         select u, $2, $3, $4, $5, h, a
         from unnest($1::text[], $6::bool[], $7::text[]) as t(u, h, a)
         on conflict do nothing",
        &users,
        a.room_id,
        a.stream_ordering,
        a.event_id,
        a.thread_id,
        &a.highlights,
        &a.actions
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Unread (notifications, highlights) in one thread (`""` for the main timeline)
/// of a room: events after the newer of the user's unthreaded read receipt and
/// their receipt in that thread (`"main"` for the main timeline).
pub struct ThreadUnread {
    pub thread_id: String,
    pub notifications: i64,
    pub highlights: i64,
}

pub async fn unread_by_thread(
    db: impl PgExecutor<'_>,
    user_id: &str,
    room_id: &str,
) -> sqlx::Result<Vec<ThreadUnread>> {
    sqlx::query_as!(
        ThreadUnread,
        r#"select a.thread_id, count(*) as "notifications!",
                  count(*) filter (where a.highlight) as "highlights!"
           from event_push_actions a
           where a.user_id = $1 and a.room_id = $2
             and a.stream_ordering > coalesce((
                 select max(e.stream_ordering) from receipts r
                 join events e on e.event_id = r.event_id
                 where r.room_id = $2 and r.user_id = $1
                   and r.receipt_type in ('m.read', 'm.read.private')
                   and (r.thread_id = ''
                        or r.thread_id = case when a.thread_id = '' then 'main'
                                              else a.thread_id end)), 0)
           group by a.thread_id"#,
        user_id,
        room_id
    )
    .fetch_all(db)
    .await
}

/// Unread notifications in all of a user's rooms (the badge count pushed to
/// their devices).
pub async fn unread_total(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from event_push_actions a
           where a.user_id = $1
             and a.stream_ordering > coalesce((
                 select max(e.stream_ordering) from receipts r
                 join events e on e.event_id = r.event_id
                 where r.room_id = a.room_id and r.user_id = $1
                   and r.receipt_type in ('m.read', 'm.read.private')
                   and (r.thread_id = ''
                        or r.thread_id = case when a.thread_id = '' then 'main'
                                              else a.thread_id end)), 0)"#,
        user_id
    )
    .fetch_one(db)
    .await
}

pub struct Notification {
    pub room_id: String,
    pub stream_ordering: i64,
    pub event_id: String,
    pub highlight: bool,
    pub actions: String,
}

/// A user's notifications below stream position `before`, newest first.
pub async fn notifications(
    db: impl PgExecutor<'_>,
    user_id: &str,
    before: i64,
    only_highlight: bool,
    limit: i64,
) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as!(
        Notification,
        "select room_id, stream_ordering, event_id, highlight, actions
         from event_push_actions
         where user_id = $1 and stream_ordering < $2 and (highlight or not $3)
         order by stream_ordering desc limit $4",
        user_id,
        before,
        only_highlight,
        limit
    )
    .fetch_all(db)
    .await
}

/// A user's notifications after stream position `after`, oldest first.
pub async fn notifications_after(
    db: impl PgExecutor<'_>,
    user_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as!(
        Notification,
        "select room_id, stream_ordering, event_id, highlight, actions
         from event_push_actions
         where user_id = $1 and stream_ordering > $2
         order by stream_ordering limit $3",
        user_id,
        after,
        limit
    )
    .fetch_all(db)
    .await
}

/// The servers of everyone sharing a joined room with `user_id` (theirs included).
pub async fn servers_sharing_rooms(
    db: impl PgExecutor<'_>,
    user_id: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select distinct substring(o.user_id from position(':' in o.user_id) + 1) as "server!"
           from room_members m
           join room_members o on o.room_id = m.room_id and o.membership = 'join'
           where m.user_id = $1 and m.membership = 'join'"#,
        user_id
    )
    .fetch_all(db)
    .await
}

/// The latest position at which `user_id`'s device list changed (0: never).
pub async fn device_list_position(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select coalesce(max(stream_ordering), 0) as "n!" from device_list_changes
           where user_id = $1 and only_for is null"#,
        user_id
    )
    .fetch_one(db)
    .await
}

/// A notification an email pusher may mail.
pub struct MailCandidate {
    pub room_id: String,
    pub stream_ordering: i64,
    pub event_id: String,
    /// When this server received the event (the mail delay counts from it).
    pub received_ts: i64,
    /// A read receipt of the user's in the room is at or past it.
    pub read: bool,
}

/// A user's notifications after stream position `after`, oldest first, with
/// when each arrived and whether it has been read.
pub async fn mail_candidates(
    db: impl PgExecutor<'_>,
    user_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<MailCandidate>> {
    sqlx::query_as!(
        MailCandidate,
        r#"select a.room_id, a.stream_ordering, a.event_id, e.received_ts,
                  a.stream_ordering <= coalesce((
                      select max(re.stream_ordering) from receipts r
                      join events re on re.event_id = r.event_id
                      where r.room_id = a.room_id and r.user_id = a.user_id
                        and r.receipt_type in ('m.read', 'm.read.private', 'm.fully_read')
                  ), 0) as "read!"
           from event_push_actions a join events e on e.event_id = a.event_id
           where a.user_id = $1 and a.stream_ordering > $2
           order by a.stream_ordering limit $3"#,
        user_id,
        after,
        limit
    )
    .fetch_all(db)
    .await
}
