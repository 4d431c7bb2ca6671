//! Devices: list, rename, delete (deletion behind UIA).

use ruma::api::client::uiaa::AuthData;

use super::{session::Session, uia};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::devices,
};

pub use devices::Device;

pub async fn list(state: &AppState, session: &Session) -> Result<Vec<Device>> {
    Ok(devices::list(&state.db, session.user_id.as_str()).await?)
}

pub async fn get(state: &AppState, session: &Session, device_id: &str) -> Result<Device> {
    devices::get(&state.db, session.user_id.as_str(), device_id)
        .await?
        .ok_or_else(|| Error::not_found("Device not found"))
}

pub async fn rename(
    state: &AppState,
    session: &Session,
    device_id: &str,
    display_name: Option<&str>,
) -> Result<()> {
    if devices::set_display_name(&state.db, session.user_id.as_str(), device_id, display_name)
        .await?
    {
        super::stream::device_list_changed_now(
            state,
            session.user_id.as_str(),
            super::stream::DeviceChange::Devices(&[device_id.to_owned()]),
        )
        .await
    } else {
        Err(Error::not_found("Device not found"))
    }
}

/// Deletes devices (and so logs them out) after the user re-authenticates with
/// their password. Unknown device IDs are ignored, as the spec allows.
pub async fn delete(
    state: &AppState,
    session: &Session,
    device_ids: Vec<String>,
    auth: Option<&AuthData>,
    ip: Option<&str>,
) -> Result<()> {
    let mut which = device_ids.clone();
    which.sort_unstable();
    which.dedup();
    let requirement = uia::Requirement {
        kind: "delete_devices",
        flows: uia::reauth_flows(state, &session.user_id).await?,
        user: Some(&session.user_id),
        ip,
        operation: Some(which.join("\n")),
    };
    let completed = uia::authenticate(state, &requirement, auth).await?;
    let mut tx = state.db.begin().await?;
    let gone = devices::delete_many(&mut *tx, session.user_id.as_str(), &device_ids).await?;
    let guard = super::stream::device_list_changed(
        &mut tx,
        state,
        session.user_id.as_str(),
        super::stream::DeviceChange::Devices(&gone),
    )
    .await?;
    uia::consume(&mut tx, &completed).await?;
    tx.commit().await?;
    drop(guard);
    Ok(())
}
