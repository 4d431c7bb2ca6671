//! `remote_device_lists` / `remote_devices`: the device lists of remote users
//! who share a room with one of our users, kept current by their servers'
//! `m.device_list_update` and `m.signing_key_update` EDUs.

use sqlx::PgExecutor;

/// One cached device of a remote user.
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub keys: Option<String>,
}

/// A remote user's cached list: their server's last stream ID and their
/// cross-signing keys.
#[derive(Debug, Clone)]
pub struct RemoteList {
    pub user_id: String,
    pub stream_id: i64,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
}

/// Whether `user_id` shares a joined room with a user of `server_name` (ours):
/// only then do we hold, and accept updates of, their device list.
pub async fn tracked(
    db: impl PgExecutor<'_>,
    user_id: &str,
    server_name: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (
               select 1 from room_members a
               join room_members b on b.room_id = a.room_id and b.membership = 'join'
               where a.user_id = $1 and a.membership = 'join'
                 and b.user_id like '%:' || $2) as "tracked!""#,
        user_id,
        server_name
    )
    .fetch_one(db)
    .await
}

/// The cached list of `user_id`, locked for the rest of the transaction (an
/// update and a refetch of one user apply one after the other).
pub async fn list(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Option<RemoteList>> {
    sqlx::query_as!(
        RemoteList,
        "select user_id, stream_id, master_key, self_signing_key from remote_device_lists
         where user_id = $1 for update",
        user_id
    )
    .fetch_optional(db)
    .await
}

/// The cached lists of several users.
pub async fn lists(db: impl PgExecutor<'_>, users: &[String]) -> sqlx::Result<Vec<RemoteList>> {
    sqlx::query_as!(
        RemoteList,
        "select user_id, stream_id, master_key, self_signing_key from remote_device_lists
         where user_id = any($1)",
        users
    )
    .fetch_all(db)
    .await
}

/// The cached devices of several users.
pub async fn devices(db: impl PgExecutor<'_>, users: &[String]) -> sqlx::Result<Vec<RemoteDevice>> {
    sqlx::query_as!(
        RemoteDevice,
        "select user_id, device_id, display_name, keys from remote_devices
         where user_id = any($1) order by user_id, device_id",
        users
    )
    .fetch_all(db)
    .await
}

/// Replaces a user's whole cached list (a refetch).
pub async fn replace(
    db: &mut sqlx::PgConnection,
    list: &RemoteList,
    devices: &[RemoteDevice],
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into remote_device_lists (user_id, stream_id, master_key, self_signing_key, updated_ts)
         values ($1, $2, $3, $4, $5)
         on conflict (user_id) do update set stream_id = excluded.stream_id,
             master_key = excluded.master_key, self_signing_key = excluded.self_signing_key,
             updated_ts = excluded.updated_ts",
        list.user_id,
        list.stream_id,
        list.master_key,
        list.self_signing_key,
        now
    )
    .execute(&mut *db)
    .await?;
    sqlx::query!(
        "delete from remote_devices where user_id = $1",
        list.user_id
    )
    .execute(&mut *db)
    .await?;
    let ids: Vec<String> = devices.iter().map(|d| d.device_id.clone()).collect();
    let names: Vec<Option<String>> = devices.iter().map(|d| d.display_name.clone()).collect();
    let keys: Vec<Option<String>> = devices.iter().map(|d| d.keys.clone()).collect();
    sqlx::query!(
        "insert into remote_devices (user_id, device_id, display_name, keys)
         select $1, d, n, k from unnest($2::text[], $3::text[], $4::text[]) as u(d, n, k)
         on conflict do nothing",
        list.user_id,
        &ids,
        &names as &[Option<String>],
        &keys as &[Option<String>]
    )
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// Applies one device's update (`None`: the device was deleted) and moves the
/// list to `stream_id`.
pub async fn apply(
    db: &mut sqlx::PgConnection,
    user_id: &str,
    stream_id: i64,
    device_id: &str,
    device: Option<(Option<&str>, Option<&str>)>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update remote_device_lists set stream_id = $2, updated_ts = $3 where user_id = $1",
        user_id,
        stream_id,
        now
    )
    .execute(&mut *db)
    .await?;
    match device {
        Some((name, keys)) => {
            sqlx::query!(
                "insert into remote_devices (user_id, device_id, display_name, keys)
                 values ($1, $2, $3, $4)
                 on conflict (user_id, device_id) do update
                 set display_name = excluded.display_name, keys = excluded.keys",
                user_id,
                device_id,
                name,
                keys
            )
            .execute(&mut *db)
            .await?;
        }
        None => {
            sqlx::query!(
                "delete from remote_devices where user_id = $1 and device_id = $2",
                user_id,
                device_id
            )
            .execute(&mut *db)
            .await?;
        }
    }
    Ok(())
}

/// How many devices of `user_id` are cached.
pub async fn device_count(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from remote_devices where user_id = $1"#,
        user_id
    )
    .fetch_one(db)
    .await
}

/// Sets a user's cross-signing keys (`m.signing_key_update`); `None` keeps one.
pub async fn set_signing_keys(
    db: impl PgExecutor<'_>,
    user_id: &str,
    master_key: Option<&str>,
    self_signing_key: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update remote_device_lists
         set master_key = coalesce($2, master_key),
             self_signing_key = coalesce($3, self_signing_key), updated_ts = $4
         where user_id = $1",
        user_id,
        master_key,
        self_signing_key,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// After a membership change away from `join` in `room_id`: drops the cached
/// lists of the remote users who no longer share a room with a user of
/// `server_name`, since their updates stop coming. `target` is the member
/// whose membership changed; when `target_local`, every member of the room
/// may have stopped sharing one.
pub async fn forget_untracked(
    db: impl PgExecutor<'_>,
    room_id: &str,
    target: &str,
    target_local: bool,
    server_name: &str,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from remote_device_lists d
         where (d.user_id = $2
                or ($3 and d.user_id in (select m.user_id from room_members m
                                         where m.room_id = $1 and m.membership = 'join')))
           and not exists (
               select 1 from room_members a
               join room_members b on b.room_id = a.room_id and b.membership = 'join'
               where a.user_id = d.user_id and a.membership = 'join'
                 and b.user_id like '%:' || $4)",
        room_id,
        target,
        target_local,
        server_name
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
