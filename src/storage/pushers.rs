//! `pushers`: where to send push notifications for a user's devices.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct Pusher {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: String,
    pub created_ts: i64,
    pub last_stream_ordering: i64,
    /// The device that set it; the pusher is deleted with it.
    pub device_id: Option<String>,
    /// Raised by each read receipt of the user: a badge-only push is due
    /// while it is above `badge_sent`.
    pub badge_wanted: i64,
    /// The `badge_wanted` the last badge-only push was sent for.
    pub badge_sent: i64,
}

pub async fn for_user(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<Pusher>> {
    sqlx::query_as!(
        Pusher,
        "select * from pushers where user_id = $1 order by created_ts",
        user_id
    )
    .fetch_all(db)
    .await
}

/// Inserts or replaces the user's pusher with this app id and pushkey.
/// A replaced pusher keeps its position, so nothing is pushed twice.
pub async fn upsert(db: impl PgExecutor<'_>, p: &Pusher) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into pushers (user_id, app_id, pushkey, kind, app_display_name,
             device_display_name, profile_tag, lang, data, created_ts, last_stream_ordering,
             device_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         on conflict (app_id, pushkey, user_id) do update set kind = excluded.kind,
             app_display_name = excluded.app_display_name,
             device_display_name = excluded.device_display_name,
             profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data,
             device_id = excluded.device_id",
        p.user_id,
        p.app_id,
        p.pushkey,
        p.kind,
        p.app_display_name,
        p.device_display_name,
        p.profile_tag,
        p.lang,
        p.data,
        p.created_ts,
        p.last_stream_ordering,
        p.device_id
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "delete from pushers where user_id = $1 and app_id = $2 and pushkey = $3",
        user_id,
        app_id,
        pushkey
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Removes every pusher of a user (deactivation).
pub async fn delete_all(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from pushers where user_id = $1", user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Removes other users' pushers for the same app and pushkey (the device now
/// belongs to someone else).
pub async fn delete_for_others(
    db: impl PgExecutor<'_>,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from pushers where user_id <> $1 and app_id = $2 and pushkey = $3",
        user_id,
        app_id,
        pushkey
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn advance(
    db: impl PgExecutor<'_>,
    p: &Pusher,
    stream_ordering: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update pushers set last_stream_ordering = greatest(last_stream_ordering, $4)
         where user_id = $1 and app_id = $2 and pushkey = $3",
        p.user_id,
        p.app_id,
        p.pushkey,
        stream_ordering
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Asks for a badge-only push to each of the user's HTTP pushers (their
/// unread count changed).
pub async fn want_badge(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "update pushers set badge_wanted = badge_wanted + 1
         where user_id = $1 and kind = 'http'",
        user_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records that a badge was sent for `p.badge_wanted`.
pub async fn badge_sent(db: impl PgExecutor<'_>, p: &Pusher) -> sqlx::Result<()> {
    sqlx::query!(
        "update pushers set badge_sent = greatest(badge_sent, $4)
         where user_id = $1 and app_id = $2 and pushkey = $3",
        p.user_id,
        p.app_id,
        p.pushkey,
        p.badge_wanted
    )
    .execute(db)
    .await?;
    Ok(())
}

/// All HTTP pushers with notifications they have not been sent, or a badge.
pub async fn pending(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Pusher>> {
    sqlx::query_as!(
        Pusher,
        "select p.* from pushers p
         where p.kind = 'http' and (p.badge_wanted > p.badge_sent or exists (
             select 1 from event_push_actions a
             where a.user_id = p.user_id and a.stream_ordering > p.last_stream_ordering))"
    )
    .fetch_all(db)
    .await
}

/// One of a user's pushers.
pub async fn get(
    db: impl PgExecutor<'_>,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> sqlx::Result<Option<Pusher>> {
    sqlx::query_as!(
        Pusher,
        "select * from pushers where user_id = $1 and app_id = $2 and pushkey = $3",
        user_id,
        app_id,
        pushkey
    )
    .fetch_optional(db)
    .await
}

/// An email pusher with its mail state.
pub struct EmailPusher {
    pub pusher: Pusher,
    pub unsubscribe_token: String,
    pub last_mail_ts: i64,
}

/// Gives a new email pusher its unsubscribe token; a replaced one keeps its
/// own (links already mailed keep working) and its throttle.
pub async fn init_email_state(
    db: impl PgExecutor<'_>,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
    unsubscribe_token: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into email_pusher_state (user_id, app_id, pushkey, unsubscribe_token)
         values ($1, $2, $3, $4) on conflict do nothing",
        user_id,
        app_id,
        pushkey,
        unsubscribe_token
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Every email pusher with its mail state.
pub async fn email_pushers(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<EmailPusher>> {
    let rows = sqlx::query!(
        r#"select p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name,
                  p.device_display_name, p.profile_tag, p.lang, p.data, p.created_ts,
                  p.last_stream_ordering, p.device_id, p.badge_wanted, p.badge_sent,
                  s.unsubscribe_token, s.last_mail_ts
           from pushers p join email_pusher_state s
             on s.user_id = p.user_id and s.app_id = p.app_id and s.pushkey = p.pushkey
           where p.kind = 'email'"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EmailPusher {
            pusher: Pusher {
                user_id: r.user_id,
                app_id: r.app_id,
                pushkey: r.pushkey,
                kind: r.kind,
                app_display_name: r.app_display_name,
                device_display_name: r.device_display_name,
                profile_tag: r.profile_tag,
                lang: r.lang,
                data: r.data,
                created_ts: r.created_ts,
                last_stream_ordering: r.last_stream_ordering,
                device_id: r.device_id,
                badge_wanted: r.badge_wanted,
                badge_sent: r.badge_sent,
            },
            unsubscribe_token: r.unsubscribe_token,
            last_mail_ts: r.last_mail_ts,
        })
        .collect())
}

/// The unsubscribe token of a user's email pusher.
pub async fn unsubscribe_token(
    db: impl PgExecutor<'_>,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select s.unsubscribe_token from email_pusher_state s
         join pushers p on s.user_id = p.user_id and s.app_id = p.app_id and s.pushkey = p.pushkey
         where s.user_id = $1 and s.app_id = $2 and s.pushkey = $3 and p.kind = 'email'",
        user_id,
        app_id,
        pushkey
    )
    .fetch_optional(db)
    .await
}

/// Records a mail sent at `ts` (the throttle's start).
pub async fn mail_sent(db: impl PgExecutor<'_>, p: &Pusher, ts: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "update email_pusher_state set last_mail_ts = $4
         where user_id = $1 and app_id = $2 and pushkey = $3",
        p.user_id,
        p.app_id,
        p.pushkey,
        ts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Removes a user's email pushers for an address (it is no longer theirs).
pub async fn delete_email(
    db: impl PgExecutor<'_>,
    user_id: &str,
    address: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from pushers where user_id = $1 and kind = 'email' and lower(pushkey) = lower($2)",
        user_id,
        address
    )
    .execute(db)
    .await?;
    Ok(())
}
