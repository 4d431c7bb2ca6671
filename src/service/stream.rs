//! Positions on the global stream for rows other than events (account data,
//! receipts, to-device messages, device-list changes). Taken inside the writing
//! transaction; readers see the position once the returned guard drops after
//! commit (see `notify`).

use sqlx::{Postgres, Transaction};

use crate::{app::AppState, error::Result, notify::InFlight, storage::events};

/// Takes the next position. Hold the guard until the transaction has committed.
pub async fn take(tx: &mut Transaction<'_, Postgres>, app: &AppState) -> Result<(i64, InFlight)> {
    let position = events::next_stream_ordering(&mut **tx).await?;
    Ok((position, app.notifier.begin(position)))
}

/// Records that `user_id`'s devices or keys changed, in the caller's transaction;
/// for a local user, the servers sharing a room with them are told (after commit).
pub async fn device_list_changed(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user_id: &str,
) -> Result<InFlight> {
    let (position, guard) = take(tx, app).await?;
    crate::storage::user_streams::device_list_changed(&mut **tx, user_id, position).await?;
    let local = ruma::UserId::parse(user_id).is_ok_and(|u| u.server_name() == app.server_name);
    if local
        && crate::service::federation::e2ee::queue_device_list_update(tx, app, user_id, position)
            .await?
    {
        return Ok(guard.also_wake(app.federation_wake.clone()));
    }
    Ok(guard)
}

/// [`device_list_changed`] in a transaction of its own.
pub async fn device_list_changed_now(app: &AppState, user_id: &str) -> Result<()> {
    let mut tx = app.db.begin().await?;
    let guard = device_list_changed(&mut tx, app, user_id).await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}
