//! Device management:
//! `GET /_matrix/client/v3/devices`, `GET/PUT/DELETE /_matrix/client/v3/devices/{deviceId}`,
//! `POST /_matrix/client/v3/delete_devices` (spec: "Device management").

use axum::{Router, extract::State};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::device::{
        Device, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};

use crate::{
    api::{
        auth::{AuthUser, ClientIp, GuestOk},
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::devices,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_devices::v3::Request, _, _>(list)
        .ruma::<get_device::v3::Request, _, _>(get)
        .ruma::<update_device::v3::Request, _, _>(update)
        .ruma::<delete_device::v3::Request, _, _>(delete_one)
        .ruma::<delete_devices::v3::Request, _, _>(delete_many)
}

fn to_ruma(device: devices::Device) -> Device {
    let mut out = Device::new(device.device_id.into());
    out.display_name = device.display_name;
    out.last_seen_ip = device.last_seen_ip;
    out.last_seen_ts = device
        .last_seen_ts
        .and_then(|ts| UInt::try_from(ts).ok())
        .map(MilliSecondsSinceUnixEpoch);
    out
}

async fn list(
    State(state): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> Result<RumaResponse<get_devices::v3::Response>> {
    let list = devices::list(&state, &user).await?;
    Ok(RumaResponse(get_devices::v3::Response::new(
        list.into_iter().map(to_ruma).collect(),
    )))
}

async fn get(
    State(state): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> Result<RumaResponse<get_device::v3::Response>> {
    let device = devices::get(&state, &user, req.device_id.as_str()).await?;
    Ok(RumaResponse(get_device::v3::Response::new(to_ruma(device))))
}

async fn update(
    State(state): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<update_device::v3::Request>,
) -> Result<RumaResponse<update_device::v3::Response>> {
    match req.display_name {
        Some(name) => devices::rename(&state, &user, req.device_id.as_str(), Some(&name)).await?,
        // No display name: nothing changes, but the device must exist.
        None => drop(devices::get(&state, &user, req.device_id.as_str()).await?),
    }
    Ok(RumaResponse(update_device::v3::Response::new()))
}

async fn delete_one(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<delete_device::v3::Request>,
) -> Result<RumaResponse<delete_device::v3::Response>> {
    // The device must exist before UIA starts, or the client would authenticate
    // for nothing.
    devices::get(&state, &user, req.device_id.as_str()).await?;
    devices::delete(
        &state,
        &user,
        vec![req.device_id.to_string()],
        req.auth.as_ref(),
        ip.as_deref(),
    )
    .await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

async fn delete_many(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<delete_devices::v3::Request>,
) -> Result<RumaResponse<delete_devices::v3::Response>> {
    let ids = req.devices.into_iter().map(|d| d.to_string()).collect();
    devices::delete(&state, &user, ids, req.auth.as_ref(), ip.as_deref()).await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
