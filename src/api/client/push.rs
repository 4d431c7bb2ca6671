//! Push rules, read side: `GET /_matrix/client/v3/pushrules/` and
//! `GET /_matrix/client/v3/pushrules/global/` (spec: "Push Rules"). Every user has
//! the spec's default rules; changing them (PUT/DELETE) arrives with push
//! notifications, and until then those endpoints are absent.

use axum::Router;
use ruma::{
    api::client::push::{get_pushrules_all, get_pushrules_global_scope},
    push::Ruleset,
};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    app::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_pushrules_all::v3::Request, _, _>(all)
        .ruma::<get_pushrules_global_scope::v3::Request, _, _>(global)
}

async fn all(
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> RumaResponse<get_pushrules_all::v3::Response> {
    RumaResponse(get_pushrules_all::v3::Response::new(
        Ruleset::server_default(&user.user_id),
    ))
}

async fn global(
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> RumaResponse<get_pushrules_global_scope::v3::Response> {
    RumaResponse(get_pushrules_global_scope::v3::Response::new(
        Ruleset::server_default(&user.user_id),
    ))
}
