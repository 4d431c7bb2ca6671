//! Push rules (spec: "Push Rules"): the user's ruleset, stored as the global
//! account data `m.push_rules` (`{"global": …}`), which is also how sync delivers
//! it, as Synapse does. Users who never changed a rule have the spec's defaults.

use ruma::{
    UserId,
    push::{Action, AnyPushRule, NewPushRule, RuleKind, Ruleset},
};
use serde_json::{Value, json};

use super::account_data;
use crate::{
    app::AppState,
    error::{Error, Result},
    storage::user_streams,
};

pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

pub async fn ruleset(app: &AppState, user: &UserId) -> Result<Ruleset> {
    let stored =
        user_streams::get_account_data(&app.db, user.as_str(), "", ACCOUNT_DATA_TYPE).await?;
    if let Some(text) = stored
        && let Ok(value) = serde_json::from_str::<Value>(&text)
        && let Ok(rules) = serde_json::from_value::<Ruleset>(value["global"].clone())
    {
        return Ok(rules);
    }
    Ok(Ruleset::server_default(user))
}

/// The `m.push_rules` account data event for a user (defaults included).
pub fn account_data_content(rules: &Ruleset) -> Value {
    json!({ "global": rules })
}

async fn save(app: &AppState, user: &UserId, rules: &Ruleset) -> Result<()> {
    account_data::store(
        app,
        user,
        None,
        ACCOUNT_DATA_TYPE,
        &account_data_content(rules),
    )
    .await
}

fn not_found() -> Error {
    Error::not_found("Push rule not found")
}

pub async fn get(
    app: &AppState,
    user: &UserId,
    kind: RuleKind,
    rule_id: &str,
) -> Result<AnyPushRule> {
    let rules = ruleset(app, user).await?;
    rules
        .get(kind, rule_id)
        .map(|r| r.to_owned())
        .ok_or_else(not_found)
}

pub async fn set(
    app: &AppState,
    user: &UserId,
    rule: NewPushRule,
    after: Option<&str>,
    before: Option<&str>,
) -> Result<()> {
    let mut rules = ruleset(app, user).await?;
    rules.insert(rule, after, before).map_err(|e| match e {
        ruma::push::InsertPushRuleError::UnknownRuleId => not_found(),
        other => Error::invalid_param(other.to_string()),
    })?;
    save(app, user, &rules).await
}

pub async fn delete(app: &AppState, user: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
    let mut rules = ruleset(app, user).await?;
    rules.remove(kind, rule_id).map_err(|e| match e {
        ruma::push::RemovePushRuleError::NotFound => not_found(),
        other => Error::forbidden(other.to_string()),
    })?;
    save(app, user, &rules).await
}

pub async fn set_enabled(
    app: &AppState,
    user: &UserId,
    kind: RuleKind,
    rule_id: &str,
    enabled: bool,
) -> Result<()> {
    let mut rules = ruleset(app, user).await?;
    rules
        .set_enabled(kind, rule_id, enabled)
        .map_err(|_| not_found())?;
    save(app, user, &rules).await
}

pub async fn set_actions(
    app: &AppState,
    user: &UserId,
    kind: RuleKind,
    rule_id: &str,
    actions: Vec<Action>,
) -> Result<()> {
    let mut rules = ruleset(app, user).await?;
    rules
        .set_actions(kind, rule_id, actions)
        .map_err(|_| not_found())?;
    save(app, user, &rules).await
}
