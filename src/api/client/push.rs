//! Push rules: `GET /pushrules/`, `GET /pushrules/global/`, and per rule
//! `GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}` with `…/enabled` and
//! `…/actions` (spec: "Push Rules"). Rules live in `m.push_rules` account data.
//! Also `/pushers`, `/pushers/set` and `/notifications`.
//!
//! Where the spec is silent, as Synapse: `GET /pushrules/global/{kind}/` lists
//! the rules of one kind, and any other path under `/pushrules/` (no scope, an
//! unknown scope or kind, a missing or empty rule ID, an unknown attribute, a
//! missing trailing slash) is `400 M_UNRECOGNIZED`.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{any, get, on},
};
use ruma::api::{
    Metadata,
    client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
        set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    path_builder::PathBuilder,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        json::{Json as Body, Query},
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::push_rules::Kind,
    error::{Error, Result},
    service::AppState,
    service::{push, pusher},
};

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    // `PUT /pushrules/global/{kind}/{ruleId}` reads its body itself: a room rule
    // may be named by something other than a room ID (see `domain::push_rules`),
    // which ruma's request type refuses.
    let put = axum::routing::MethodFilter::try_from(set_pushrule::v3::Request::METHOD)
        .expect("a standard method");
    for path in set_pushrule::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, on(put, set_rule));
    }
    // Synapse's paths beside the spec's, under each version's `/pushrules/`.
    for base in get_pushrules_all::v3::Request::PATH_BUILDER.all_paths() {
        router = router
            .route(base, on(NOT_GET, unrecognized))
            .route(&format!("{base}global/"), on(NOT_GET, unrecognized))
            .route(
                &format!("{base}global/{{kind}}/"),
                get(list_kind).merge(on(NOT_GET, unrecognized)),
            )
            .route(&format!("{base}{{*rest}}"), any(unrecognized));
    }
    router
        .ruma::<get_pushrules_all::v3::Request, _, _>(all)
        .ruma::<get_pushrules_global_scope::v3::Request, _, _>(global)
        .ruma::<get_pushrule::v3::Request, _, _>(get_rule)
        .ruma::<delete_pushrule::v3::Request, _, _>(delete_rule)
        .ruma::<get_pushrule_enabled::v3::Request, _, _>(get_enabled)
        .ruma::<set_pushrule_enabled::v3::Request, _, _>(set_enabled)
        .ruma::<get_pushrule_actions::v3::Request, _, _>(get_actions)
        .ruma::<set_pushrule_actions::v3::Request, _, _>(set_actions)
        .ruma::<get_pushers::v3::Request, _, _>(pushers)
        .ruma::<set_pusher::v3::Request, _, _>(set_pusher_handler)
        .ruma::<get_notifications::v3::Request, _, _>(notifications)
}

async fn pushers(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushers::v3::Request>,
) -> Result<RumaResponse<get_pushers::v3::Response>> {
    Ok(RumaResponse(get_pushers::v3::Response::new(
        pusher::list(&app, &user).await?,
    )))
}

async fn set_pusher_handler(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pusher::v3::Request>,
) -> Result<RumaResponse<set_pusher::v3::Response>> {
    let body = serde_json::to_value(&req.action).map_err(|e| Error::bad_json(e.to_string()))?;
    pusher::set(&app, &user, &body).await?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}

/// Not ruma's response: see [`pusher::Notifications`].
async fn notifications(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_notifications::v3::Request>,
) -> Result<Json<pusher::Notifications>> {
    Ok(Json(
        pusher::notifications(
            &app,
            &user,
            req.from.as_deref(),
            req.limit.map(u64::from),
            req.only.as_deref(),
        )
        .await?,
    ))
}

/// Every method but `GET` (whose routes are the listings).
const NOT_GET: axum::routing::MethodFilter = axum::routing::MethodFilter::PUT
    .or(axum::routing::MethodFilter::POST)
    .or(axum::routing::MethodFilter::DELETE)
    .or(axum::routing::MethodFilter::PATCH);

/// A path under `/pushrules/` that names no rule, listing or attribute.
async fn unrecognized(AuthUser(_): AuthUser) -> Error {
    Error::unrecognized(StatusCode::BAD_REQUEST)
}

/// The kind named in the path; an unknown one is an unrecognized request.
fn kind(name: &str) -> Result<Kind> {
    Kind::parse(name).ok_or_else(|| Error::unrecognized(StatusCode::BAD_REQUEST))
}

// The rules are answered as JSON, not as ruma's `Ruleset` and `PushRule`:
// rules are kept as clients wrote them (see `domain::push_rules`), and a room
// rule's ID need not be a room ID, which ruma's types refuse; their typed
// actions and conditions would also rewrite what they do not know.

async fn all(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(push::rules(&app, &user.user_id).await?.to_content()))
}

async fn global(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<Json<Value>> {
    let rules = push::rules(&app, &user.user_id).await?;
    Ok(Json(Value::Object(rules.global().clone())))
}

/// `GET /pushrules/global/{kind}/` (Synapse): the rules of one kind.
async fn list_kind(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let kind = kind(&name)?;
    let rules = push::rules(&app, &user.user_id).await?;
    Ok(Json(Value::Array(rules.list(kind).to_vec())))
}

async fn get_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule::v3::Request>,
) -> Result<Json<Value>> {
    let kind = kind(req.kind.as_str())?;
    Ok(Json(
        push::get(&app, &user.user_id, kind, &req.rule_id).await?,
    ))
}

#[derive(Deserialize)]
struct Placement {
    before: Option<String>,
    after: Option<String>,
}

async fn set_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Path((name, rule_id)): Path<(String, String)>,
    Query(placement): Query<Placement>,
    Body(body): Body<Value>,
) -> Result<RumaResponse<set_pushrule::v3::Response>> {
    // The spec marks this endpoint rate-limited (`Ruma<T>` would take the token).
    rate_limited(app.client_limiter.check(user.user_id.as_str()))?;
    let kind = kind(&name)?;
    if !body.is_object() {
        return Err(Error::bad_json("The body must be a JSON object"));
    }
    push::set(
        &app,
        &user.user_id,
        kind,
        &rule_id,
        &body,
        placement.before.as_deref().filter(|s| !s.is_empty()),
        placement.after.as_deref().filter(|s| !s.is_empty()),
    )
    .await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

async fn delete_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<delete_pushrule::v3::Request>,
) -> Result<RumaResponse<delete_pushrule::v3::Response>> {
    let kind = kind(req.kind.as_str())?;
    push::delete(&app, &user.user_id, kind, &req.rule_id).await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

async fn get_enabled(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let kind = kind(req.kind.as_str())?;
    let rule = push::get(&app, &user.user_id, kind, &req.rule_id).await?;
    // Every rule has `enabled` (`domain::push_rules` writes it on each).
    let enabled = rule["enabled"].as_bool().unwrap_or(true);
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(
        enabled,
    )))
}

async fn set_enabled(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<set_pushrule_enabled::v3::Response>> {
    let kind = kind(req.kind.as_str())?;
    push::set_enabled(&app, &user.user_id, kind, &req.rule_id, req.enabled).await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

/// JSON, as the rules are (see above [`all`]).
async fn get_actions(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule_actions::v3::Request>,
) -> Result<Json<Value>> {
    let kind = kind(req.kind.as_str())?;
    let rule = push::get(&app, &user.user_id, kind, &req.rule_id).await?;
    Ok(Json(json!({ "actions": rule["actions"] })))
}

async fn set_actions(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<set_pushrule_actions::v3::Response>> {
    let kind = kind(req.kind.as_str())?;
    let actions = serde_json::to_value(&req.actions).map_err(|e| Error::bad_json(e.to_string()))?;
    push::set_actions(&app, &user.user_id, kind, &req.rule_id, &actions).await?;
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}
