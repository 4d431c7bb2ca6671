//! Push rules: `GET /pushrules/`, `GET /pushrules/global/`, and per rule
//! `GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}` with `…/enabled` and
//! `…/actions` (spec: "Push Rules"). Rules live in `m.push_rules` account data.
//! Also `/pushers`, `/pushers/set` and `/notifications`.

use axum::{Json, Router, extract::State};
use ruma::api::client::push::{
    delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
    get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule,
    set_pushrule_actions, set_pushrule_enabled,
};
use ruma::push::AnyPushRule;
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    app::AppState,
    error::{Error, Result},
    service::{push, pusher},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_pushrules_all::v3::Request, _, _>(all)
        .ruma::<get_pushrules_global_scope::v3::Request, _, _>(global)
        .ruma::<get_pushrule::v3::Request, _, _>(get_rule)
        .ruma::<set_pushrule::v3::Request, _, _>(set_rule)
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
) -> Result<Json<Value>> {
    Ok(Json(pusher::list(&app, &user).await?))
}

async fn set_pusher_handler(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pusher::v3::Request>,
) -> Result<Json<Value>> {
    let body = serde_json::to_value(&req.action).map_err(|e| Error::bad_json(e.to_string()))?;
    pusher::set(&app, &user, &body).await?;
    Ok(Json(json!({})))
}

async fn notifications(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_notifications::v3::Request>,
) -> Result<Json<Value>> {
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

async fn all(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> Result<RumaResponse<get_pushrules_all::v3::Response>> {
    let rules = push::ruleset(&app, &user.user_id).await?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(rules)))
}

async fn global(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<RumaResponse<get_pushrules_global_scope::v3::Response>> {
    let rules = push::ruleset(&app, &user.user_id).await?;
    Ok(RumaResponse(get_pushrules_global_scope::v3::Response::new(
        rules,
    )))
}

async fn get_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule::v3::Request>,
) -> Result<Json<Value>> {
    let rule = push::get(&app, &user.user_id, req.kind, &req.rule_id).await?;
    let value = match rule {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => serde_json::to_value(r),
        AnyPushRule::Content(r) => serde_json::to_value(r),
        AnyPushRule::Room(r) => serde_json::to_value(r),
        AnyPushRule::Sender(r) => serde_json::to_value(r),
        _ => return Err(Error::not_found("Push rule not found")),
    };
    Ok(Json(value.map_err(|e| anyhow::anyhow!("{e}"))?))
}

async fn set_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pushrule::v3::Request>,
) -> Result<Json<Value>> {
    push::set(
        &app,
        &user.user_id,
        req.rule,
        req.after.as_deref(),
        req.before.as_deref(),
    )
    .await?;
    Ok(Json(json!({})))
}

async fn delete_rule(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<delete_pushrule::v3::Request>,
) -> Result<Json<Value>> {
    push::delete(&app, &user.user_id, req.kind, &req.rule_id).await?;
    Ok(Json(json!({})))
}

async fn get_enabled(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<Json<Value>> {
    let rule = push::get(&app, &user.user_id, req.kind, &req.rule_id).await?;
    Ok(Json(json!({ "enabled": rule.enabled() })))
}

async fn set_enabled(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<Json<Value>> {
    push::set_enabled(&app, &user.user_id, req.kind, &req.rule_id, req.enabled).await?;
    Ok(Json(json!({})))
}

async fn get_actions(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<get_pushrule_actions::v3::Request>,
) -> Result<Json<Value>> {
    let rule = push::get(&app, &user.user_id, req.kind, &req.rule_id).await?;
    Ok(Json(json!({ "actions": rule.actions() })))
}

async fn set_actions(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<set_pushrule_actions::v3::Request>,
) -> Result<Json<Value>> {
    push::set_actions(&app, &user.user_id, req.kind, &req.rule_id, req.actions).await?;
    Ok(Json(json!({})))
}
