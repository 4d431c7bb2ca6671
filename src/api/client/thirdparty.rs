//! Third-party networks: `GET /_matrix/client/v3/thirdparty/protocols` (spec:
//! "Third-party Networks"). Bridges are application services, which Lattice
//! does not have yet, so there are no protocols: `{}`. Element asks on every
//! start and reports an error on a 404. The other `/thirdparty` endpoints stay
//! unrouted (`404 M_UNRECOGNIZED`) until application services exist.

use axum::{Json, Router};
use ruma::api::client::thirdparty::get_protocols;
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    app::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().ruma::<get_protocols::v3::Request, _, _>(protocols)
}

async fn protocols(
    AuthUser(_): AuthUser,
    Ruma(_): Ruma<get_protocols::v3::Request>,
) -> Json<Value> {
    Json(json!({}))
}
