//! Positions on the global stream for rows other than events (account data,
//! receipts, to-device messages, device-list changes). Taken inside the writing
//! transaction; readers see the position once the returned guard drops after
//! commit (see `notify`).

use crate::storage::{Postgres, Transaction};

use crate::{error::Result, notify::InFlight, service::AppState, storage::events};

/// Takes the next position. Hold the guard until the transaction has committed.
pub async fn take(tx: &mut Transaction<'_, Postgres>, app: &AppState) -> Result<(i64, InFlight)> {
    let position = events::next_stream_ordering(&mut **tx).await?;
    Ok((position, app.notifier.begin(position)))
}

/// What changed in a user's device list.
#[derive(Debug, Clone, Copy)]
pub enum DeviceChange<'a> {
    /// These devices were added, renamed, deleted, or had their keys or
    /// signatures changed (for a remote user: their list, told by their server).
    Devices(&'a [String]),
    /// The user's master or self-signing key (or a signature on the master key).
    SigningKeys,
    /// A change only `viewer` sees: their own user-signing key, or their
    /// signature on the user's master key. Never federated.
    Private { viewer: &'a str },
}

/// The positions a device-list change took; drop after commit.
#[must_use]
pub struct DeviceListGuard(Vec<InFlight>);

impl std::fmt::Debug for DeviceListGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceListGuard({} positions)", self.0.len())
    }
}

/// Records that `user_id`'s devices or keys changed, in the caller's
/// transaction: a position per changed device (each local device's change is
/// one `m.device_list_update`, chained by `prev_id`, for the servers sharing a
/// room with the user; a signing-key change is one `m.signing_key_update`).
pub async fn device_list_changed(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    user_id: &str,
    change: DeviceChange<'_>,
) -> Result<DeviceListGuard> {
    use crate::service::federation::e2ee;
    let local = ruma::UserId::parse(user_id).is_ok_and(|u| u.server_name() == app.server_name);
    let mut guards = Vec::new();
    let only_for = match change {
        DeviceChange::Private { viewer } => Some(viewer),
        _ => None,
    };
    let servers = match (local, change) {
        (true, DeviceChange::Devices(_) | DeviceChange::SigningKeys) => {
            e2ee::servers_to_tell(tx, app, user_id).await?
        }
        _ => Vec::new(),
    };
    let mut queued = false;
    match change {
        DeviceChange::Devices(devices) if local && !devices.is_empty() => {
            for device in devices {
                let (position, guard) = take(tx, app).await?;
                crate::storage::user_streams::device_list_changed(
                    &mut **tx, user_id, position, None,
                )
                .await?;
                guards.push(guard);
                queued |=
                    e2ee::queue_device_update(tx, &servers, user_id, device, position).await?;
            }
        }
        _ => {
            let (position, guard) = take(tx, app).await?;
            crate::storage::user_streams::device_list_changed(
                &mut **tx, user_id, position, only_for,
            )
            .await?;
            guards.push(guard);
            if local && matches!(change, DeviceChange::SigningKeys) {
                queued |= e2ee::queue_signing_key_update(tx, &servers, user_id).await?;
            }
        }
    }
    if !matches!(change, DeviceChange::Private { .. }) {
        crate::service::appservice::ephemeral::on_device_list_change(tx, app, user_id).await?;
    }
    if queued && let Some(last) = guards.pop() {
        guards.push(last.also_wake(app.federation_wake.clone()));
    }
    Ok(DeviceListGuard(guards))
}

/// [`device_list_changed`] in a transaction of its own.
pub async fn device_list_changed_now(
    app: &AppState,
    user_id: &str,
    change: DeviceChange<'_>,
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    let guard = device_list_changed(&mut tx, app, user_id, change).await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}
