//! The end-to-end encryption key store: device keys, one-time and fallback keys,
//! cross-signing keys and uploaded signatures, and server-side key backups.
//! Key JSON is stored verbatim as the client signed it.

use sqlx::PgExecutor;

pub async fn set_device_keys(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    json: &str,
) -> sqlx::Result<bool> {
    // Reports whether anything changed, so an identical re-upload is not a
    // device-list change.
    let done = sqlx::query!(
        "insert into device_keys (user_id, device_id, json) values ($1, $2, $3)
         on conflict (user_id, device_id) do update set json = excluded.json
         where device_keys.json is distinct from excluded.json",
        user_id,
        device_id,
        json
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub struct DeviceKeys {
    pub user_id: String,
    pub device_id: String,
    pub json: String,
    pub display_name: Option<String>,
}

/// Device keys of `user_id`'s devices (all of them when `device_ids` is empty).
pub async fn device_keys(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_ids: &[String],
) -> sqlx::Result<Vec<DeviceKeys>> {
    sqlx::query_as!(
        DeviceKeys,
        "select k.user_id, k.device_id, k.json, d.display_name from device_keys k
         join devices d on d.user_id = k.user_id and d.device_id = k.device_id
         where k.user_id = $1 and (cardinality($2::text[]) = 0 or k.device_id = any($2))",
        user_id,
        device_ids
    )
    .fetch_all(db)
    .await
}

pub async fn add_one_time_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    json: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into one_time_keys (user_id, device_id, algorithm, key_id, json)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
        user_id,
        device_id,
        algorithm,
        key_id,
        json
    )
    .execute(db)
    .await?;
    Ok(())
}

pub struct KeyCount {
    pub algorithm: String,
    pub count: i64,
}

pub async fn one_time_key_counts(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<Vec<KeyCount>> {
    sqlx::query_as!(
        KeyCount,
        r#"select algorithm, count(*) as "count!" from one_time_keys
           where user_id = $1 and device_id = $2 group by algorithm"#,
        user_id,
        device_id
    )
    .fetch_all(db)
    .await
}

pub struct ClaimedKey {
    pub key_id: String,
    pub json: String,
}

/// Takes (deletes and returns) one one-time key of `algorithm`, if any is left.
pub async fn claim_one_time_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> sqlx::Result<Option<ClaimedKey>> {
    sqlx::query_as!(
        ClaimedKey,
        "delete from one_time_keys where ctid = (
             select ctid from one_time_keys
             where user_id = $1 and device_id = $2 and algorithm = $3
             order by key_id limit 1 for update skip locked)
         returning key_id, json",
        user_id,
        device_id,
        algorithm
    )
    .fetch_optional(db)
    .await
}

pub async fn set_fallback_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    json: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into fallback_keys (user_id, device_id, algorithm, key_id, json, used)
         values ($1, $2, $3, $4, $5, false)
         on conflict (user_id, device_id, algorithm) do update
         set key_id = excluded.key_id, json = excluded.json,
             used = fallback_keys.used and fallback_keys.key_id = excluded.key_id",
        user_id,
        device_id,
        algorithm,
        key_id,
        json
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Hands out the fallback key of `algorithm` (marking it used); it stays until replaced.
pub async fn claim_fallback_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> sqlx::Result<Option<ClaimedKey>> {
    sqlx::query_as!(
        ClaimedKey,
        "update fallback_keys set used = true
         where user_id = $1 and device_id = $2 and algorithm = $3
         returning key_id, json",
        user_id,
        device_id,
        algorithm
    )
    .fetch_optional(db)
    .await
}

/// Algorithms of the device's fallback keys that have not been used yet.
pub async fn unused_fallback_algorithms(
    db: impl PgExecutor<'_>,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select algorithm from fallback_keys where user_id = $1 and device_id = $2 and not used",
        user_id,
        device_id
    )
    .fetch_all(db)
    .await
}

pub async fn set_cross_signing_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    key_type: &str,
    json: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into cross_signing_keys (user_id, key_type, json) values ($1, $2, $3)
         on conflict (user_id, key_type) do update set json = excluded.json",
        user_id,
        key_type,
        json
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn cross_signing_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    key_type: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select json from cross_signing_keys where user_id = $1 and key_type = $2",
        user_id,
        key_type
    )
    .fetch_optional(db)
    .await
}

pub struct Signature {
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub signature: String,
}

pub async fn add_signature(
    db: impl PgExecutor<'_>,
    target_user_id: &str,
    target_key: &str,
    signer_user_id: &str,
    signer_key_id: &str,
    signature: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into key_signatures (target_user_id, target_key, signer_user_id, signer_key_id, signature)
         values ($1, $2, $3, $4, $5)
         on conflict (target_user_id, target_key, signer_user_id, signer_key_id)
         do update set signature = excluded.signature",
        target_user_id,
        target_key,
        signer_user_id,
        signer_key_id,
        signature
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Signatures on a key that `viewer` may see: the owner's own, and the viewer's.
pub async fn signatures(
    db: impl PgExecutor<'_>,
    target_user_id: &str,
    target_key: &str,
    viewer: &str,
) -> sqlx::Result<Vec<Signature>> {
    sqlx::query_as!(
        Signature,
        "select signer_user_id, signer_key_id, signature from key_signatures
         where target_user_id = $1 and target_key = $2
           and (signer_user_id = $1 or signer_user_id = $3)",
        target_user_id,
        target_key,
        viewer
    )
    .fetch_all(db)
    .await
}

// ---- Server-side key backups ----

pub struct Backup {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
}

pub async fn create_backup(
    db: impl PgExecutor<'_>,
    user_id: &str,
    algorithm: &str,
    auth_data: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"insert into room_key_backups (user_id, version, algorithm, auth_data)
           values ($1, (select coalesce(max(version), 0) + 1 from room_key_backups where user_id = $1), $2, $3)
           returning version"#,
        user_id,
        algorithm,
        auth_data
    )
    .fetch_one(db)
    .await
}

/// A live backup version; the newest when `version` is None.
pub async fn backup(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: Option<i64>,
) -> sqlx::Result<Option<Backup>> {
    sqlx::query_as!(
        Backup,
        "select version, algorithm, auth_data, etag from room_key_backups
         where user_id = $1 and not deleted and ($2::bigint is null or version = $2)
         order by version desc limit 1",
        user_id,
        version
    )
    .fetch_optional(db)
    .await
}

pub async fn update_backup(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
    algorithm: &str,
    auth_data: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update room_key_backups set algorithm = $3, auth_data = $4
         where user_id = $1 and version = $2 and not deleted",
        user_id,
        version,
        algorithm,
        auth_data
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_backup(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update room_key_backups set deleted = true where user_id = $1 and version = $2 and not deleted",
        user_id,
        version
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes every key backup of a user, with its keys (deactivation).
pub async fn delete_all_backups(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from room_key_backups where user_id = $1", user_id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn bump_backup_etag(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update room_key_backups set etag = etag + 1 where user_id = $1 and version = $2",
        user_id,
        version
    )
    .execute(db)
    .await?;
    Ok(())
}

pub struct BackupKey {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: String,
}

/// Stores a session key unless the stored one is better (spec: verified beats
/// unverified, then lower first_message_index, then lower forwarded_count).
/// Returns whether it was stored.
pub async fn put_backup_key(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
    key: &BackupKey,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "insert into room_key_backup_keys
             (user_id, version, room_id, session_id, first_message_index, forwarded_count,
              is_verified, session_data)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (user_id, version, room_id, session_id) do update
         set first_message_index = excluded.first_message_index,
             forwarded_count = excluded.forwarded_count,
             is_verified = excluded.is_verified,
             session_data = excluded.session_data
         where (excluded.is_verified, -excluded.first_message_index, -excluded.forwarded_count)
             > (room_key_backup_keys.is_verified, -room_key_backup_keys.first_message_index,
                -room_key_backup_keys.forwarded_count)",
        user_id,
        version,
        key.room_id,
        key.session_id,
        key.first_message_index,
        key.forwarded_count,
        key.is_verified,
        key.session_data
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn backup_keys(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> sqlx::Result<Vec<BackupKey>> {
    sqlx::query_as!(
        BackupKey,
        "select room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
         from room_key_backup_keys
         where user_id = $1 and version = $2
           and ($3::text is null or room_id = $3) and ($4::text is null or session_id = $4)",
        user_id,
        version,
        room_id,
        session_id
    )
    .fetch_all(db)
    .await
}

pub async fn delete_backup_keys(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from room_key_backup_keys
         where user_id = $1 and version = $2
           and ($3::text is null or room_id = $3) and ($4::text is null or session_id = $4)",
        user_id,
        version,
        room_id,
        session_id
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

pub async fn backup_key_count(
    db: impl PgExecutor<'_>,
    user_id: &str,
    version: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from room_key_backup_keys where user_id = $1 and version = $2"#,
        user_id,
        version
    )
    .fetch_one(db)
    .await
}
