//! `users`: accounts.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub created_ts: i64,
}

/// Inserts a new account. Returns `false` when the user ID is taken (including by a
/// deactivated account: IDs are never reused).
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: &str,
    password_hash: Option<&str>,
    is_admin: bool,
    is_guest: bool,
    now: i64,
) -> sqlx::Result<bool> {
    let row = sqlx::query!(
        "insert into users (user_id, password_hash, is_admin, is_guest, created_ts)
         values ($1, $2, $3, $4, $5)
         on conflict (user_id) do nothing
         returning user_id",
        user_id,
        password_hash,
        is_admin,
        is_guest,
        now
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Makes guest `user_id` a full account with this password; false when it
/// is not (or no longer) a guest.
pub async fn upgrade_guest(
    db: impl PgExecutor<'_>,
    user_id: &str,
    password_hash: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update users set is_guest = false, password_hash = $2
         where user_id = $1 and is_guest and not deactivated",
        user_id,
        password_hash
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as!(
        User,
        "select user_id, password_hash, is_admin, is_guest, deactivated, created_ts
         from users where user_id = $1",
        user_id
    )
    .fetch_optional(db)
    .await
}

pub async fn exists(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!("select 1 as one from users where user_id = $1", user_id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

pub async fn set_password_hash(
    db: impl PgExecutor<'_>,
    user_id: &str,
    password_hash: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update users set password_hash = $2 where user_id = $1",
        user_id,
        password_hash
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_admin(
    db: impl PgExecutor<'_>,
    user_id: &str,
    is_admin: bool,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update users set is_admin = $2 where user_id = $1",
        user_id,
        is_admin
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Reactivates a deactivated account with a new password (admin API).
pub async fn reactivate(
    db: impl PgExecutor<'_>,
    user_id: &str,
    password_hash: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update users set deactivated = false, erased = false, password_hash = $2
         where user_id = $1 and deactivated",
        user_id,
        password_hash
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the account deactivated, and erased when asked (an erasure is never
/// undone by a later deactivation without it); devices and tokens are deleted
/// by the caller in the same transaction. The password hash stays, so that only
/// someone who knows the password learns that the account is deactivated (login
/// checks it first); reactivation sets a new one.
pub async fn deactivate(db: impl PgExecutor<'_>, user_id: &str, erase: bool) -> sqlx::Result<()> {
    sqlx::query!(
        "update users set deactivated = true, erased = erased or $2 where user_id = $1",
        user_id,
        erase
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Which of `user_ids` asked for their account to be erased.
pub async fn erased_among(
    db: impl PgExecutor<'_>,
    user_ids: &[String],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select user_id from users where erased and user_id = any($1)",
        user_ids
    )
    .fetch_all(db)
    .await
}

/// The largest all-digit localpart in use, for generating the next free one the way
/// Synapse does when a client registers without a username. Every row is a local
/// user, so the server name need not be matched.
pub async fn max_numeric_localpart(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    let max = sqlx::query_scalar!(
        r#"select coalesce(max(substring(user_id from '^@([0-9]{1,18}):')::bigint), 0) as "max!"
           from users where user_id ~ '^@[0-9]{1,18}:'"#
    )
    .fetch_one(db)
    .await?;
    Ok(max)
}

/// A user as the admin API lists it.
pub struct AdminRow {
    pub user_id: String,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub erased: bool,
    pub created_ts: i64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// Users by ID, `offset`/`limit` paged, optionally filtered by a substring of
/// the ID or display name; with the total matching.
pub async fn admin_list(
    db: impl PgExecutor<'_> + Copy,
    offset: i64,
    limit: i64,
    name: Option<&str>,
    guests: bool,
    deactivated: bool,
) -> sqlx::Result<(Vec<AdminRow>, i64)> {
    let pattern = name.map(|n| format!("%{}%", n.replace('%', "\\%").replace('_', "\\_")));
    let rows = sqlx::query_as!(
        AdminRow,
        r#"select u.user_id, u.is_admin, u.is_guest, u.deactivated, u.erased, u.created_ts,
                  p.displayname as "displayname?", p.avatar_url as "avatar_url?"
           from users u left join profiles p on p.user_id = u.user_id
           where ($1::text is null or u.user_id ilike $1 or p.displayname ilike $1)
             and ($2 or not u.is_guest) and ($3 or not u.deactivated)
           order by u.user_id offset $4 limit $5"#,
        pattern,
        guests,
        deactivated,
        offset,
        limit
    )
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar!(
        r#"select count(*) as "n!" from users u left join profiles p on p.user_id = u.user_id
           where ($1::text is null or u.user_id ilike $1 or p.displayname ilike $1)
             and ($2 or not u.is_guest) and ($3 or not u.deactivated)"#,
        pattern,
        guests,
        deactivated
    )
    .fetch_one(db)
    .await?;
    Ok((rows, total))
}
