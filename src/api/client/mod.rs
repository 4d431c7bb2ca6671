//! The Client-Server API, one module per group of endpoints as in the spec.

mod account;
mod appservice;
mod devices;
mod directory;
mod discovery;
mod e2ee;
mod fallback;
mod legacy_sync;
mod mutual_rooms;
mod openid;
mod presence;
mod profile;
mod push;
mod register;
mod rooms;
mod search;
mod session;
mod sso;
mod sync;
mod thirdparty;
mod threepid;
mod timeline;
mod user_data;
mod voip;

use axum::Router;

use crate::service::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(discovery::router())
        .merge(register::router())
        .merge(session::router())
        .merge(sso::router())
        .merge(account::router())
        .merge(devices::router())
        .merge(rooms::router())
        .merge(timeline::router())
        .merge(directory::router())
        .merge(appservice::router())
        .merge(sync::router())
        .merge(legacy_sync::router())
        .merge(profile::router())
        .merge(push::router())
        .merge(e2ee::router())
        .merge(user_data::router())
        .merge(presence::router())
        .merge(search::router())
        .merge(thirdparty::router())
        .merge(threepid::router())
        .merge(mutual_rooms::router())
        .merge(voip::router())
        .merge(openid::router())
        .merge(fallback::router())
}
