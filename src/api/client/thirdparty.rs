//! Third-party networks (spec: "Third-party Networks"):
//! `GET /_matrix/client/v3/thirdparty/protocols`, `/protocol/{protocol}`,
//! `/user/{protocol}`, `/location/{protocol}`, and the reverse lookups
//! `/user?userid=` and `/location?alias=`. The answers come from the
//! application services that registered each protocol
//! (`service::appservice`); with none, `/protocols` is `{}` (Element asks on
//! every start and reports an error on a 404).
//!
//! The handlers answer with the appservices' JSON as it came (instance IDs
//! added), not ruma's responses: ruma's `Protocol`, `User` and `Location`
//! would drop the fields bridges add beyond the spec's and refuse an answer
//! whose `fields` are not all strings, where Synapse passes both on.

use axum::{Json, Router, extract::State};
use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
    get_user_for_protocol, get_user_for_user_id,
};
use serde_json::Value;

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma},
    },
    error::{Error, Result},
    service::AppState,
    service::appservice,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_protocols::v3::Request, _, _>(protocols)
        .ruma::<get_protocol::v3::Request, _, _>(protocol)
        .ruma::<get_user_for_protocol::v3::Request, _, _>(user_for_protocol)
        .ruma::<get_location_for_protocol::v3::Request, _, _>(location_for_protocol)
        .ruma::<get_user_for_user_id::v3::Request, _, _>(user_for_user_id)
        .ruma::<get_location_for_room_alias::v3::Request, _, _>(location_for_alias)
}

/// The appservices' JSON, passed through (see the module's note).
async fn protocols(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(_): Ruma<get_protocols::v3::Request>,
) -> Json<Value> {
    Json(Value::Object(appservice::protocols(&app, None).await))
}

/// The appservices' JSON, passed through (see the module's note).
async fn protocol(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_protocol::v3::Request>,
) -> Result<Json<Value>> {
    appservice::protocols(&app, Some(&req.protocol))
        .await
        .remove(&req.protocol)
        .map(Json)
        .ok_or_else(|| Error::not_found("Unknown protocol"))
}

/// The protocol's fields from the query string: every parameter but the
/// client's own `access_token` (never passed on to an appservice).
fn pairs(fields: std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    fields
        .into_iter()
        .filter(|(k, _)| k != "access_token")
        .collect()
}

/// The appservices' JSON, passed through (see the module's note).
async fn user_for_protocol(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_user_for_protocol::v3::Request>,
) -> Json<Value> {
    let found =
        appservice::third_party_lookup(&app, "user", Some(&req.protocol), &pairs(req.fields)).await;
    Json(Value::Array(found))
}

/// The appservices' JSON, passed through (see the module's note).
async fn location_for_protocol(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_location_for_protocol::v3::Request>,
) -> Json<Value> {
    let found =
        appservice::third_party_lookup(&app, "location", Some(&req.protocol), &pairs(req.fields))
            .await;
    Json(Value::Array(found))
}

/// The appservices' JSON, passed through (see the module's note).
async fn user_for_user_id(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_user_for_user_id::v3::Request>,
) -> Json<Value> {
    let query = [("userid".to_owned(), req.userid.to_string())];
    Json(Value::Array(
        appservice::third_party_lookup(&app, "user", None, &query).await,
    ))
}

/// The appservices' JSON, passed through (see the module's note).
async fn location_for_alias(
    State(app): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(req): Ruma<get_location_for_room_alias::v3::Request>,
) -> Json<Value> {
    let query = [("alias".to_owned(), req.alias.to_string())];
    Json(Value::Array(
        appservice::third_party_lookup(&app, "location", None, &query).await,
    ))
}
