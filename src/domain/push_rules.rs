//! A user's push ruleset and the edits of the push rules API (spec: "Push
//! Rules", `PUT/DELETE /pushrules/global/{kind}/{ruleId}`, `…/enabled`,
//! `…/actions`).
//!
//! The ruleset is kept in its JSON form (`{"override": […], "content": […], …}`,
//! as `m.push_rules` carries it) rather than as ruma's `Ruleset`, because
//! clients may name a room rule by something that is not a room ID (an alias,
//! as SyTest does) or a sender rule by something that is not a user ID, and
//! Synapse accepts both: such a rule is kept and listed, and since its implied
//! condition (`room_id` or `sender` equal to the rule ID) can never hold, it is
//! left out of the [`Ruleset`] that evaluates events ([`Rules::evaluator`]).
//! Every rule stored is checked to be one ruma can read when it is added.

use ruma::{
    RoomId, UserId,
    push::{ConditionalPushRule, PatternedPushRule, Ruleset, SimplePushRule},
};
use serde_json::{Map, Value, json};

/// The kinds of push rules, in the order the spec evaluates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Override,
    Content,
    Room,
    Sender,
    Underride,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Override,
        Kind::Content,
        Kind::Room,
        Kind::Sender,
        Kind::Underride,
    ];

    /// The kind named in a path; `None` for anything the spec does not define.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Override => "override",
            Kind::Content => "content",
            Kind::Room => "room",
            Kind::Sender => "sender",
            Kind::Underride => "underride",
        }
    }
}

/// Why an edit was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RuleError {
    /// No rule of that kind has that ID.
    NotFound,
    /// `before`/`after` names no user-defined rule of that kind (a `400`: the
    /// spec's example is "before/after rule not found").
    RelativeNotFound(String),
    /// Server-default rules cannot be deleted.
    ServerDefault,
    /// The rule ID, body, or actions are not acceptable.
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> RuleError {
    RuleError::Invalid(message.into())
}

/// A user's ruleset (the content of `m.push_rules` under `global`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    global: Map<String, Value>,
}

impl Rules {
    /// The spec's server-default rules for `user`.
    pub fn server_default(user: &UserId) -> Rules {
        let value = serde_json::to_value(Ruleset::server_default(user)).unwrap_or_default();
        Rules::from_global(value).unwrap_or(Rules { global: Map::new() })
    }

    /// Reads the `m.push_rules` account data content (`{"global": {…}}`);
    /// `None` if it is not a ruleset.
    pub fn from_content(content: &Value) -> Option<Rules> {
        Rules::from_global(content.get("global")?.clone())
    }

    fn from_global(global: Value) -> Option<Rules> {
        let Value::Object(mut global) = global else {
            return None;
        };
        for kind in Kind::ALL {
            match global.get(kind.as_str()) {
                None => {
                    global.insert(kind.as_str().to_owned(), Value::Array(Vec::new()));
                }
                Some(Value::Array(_)) => {}
                Some(_) => return None,
            }
        }
        Some(Rules { global })
    }

    /// The `m.push_rules` account data content, also the body of `GET /pushrules/`.
    pub fn to_content(&self) -> Value {
        json!({ "global": self.global })
    }

    /// The body of `GET /pushrules/global/`.
    pub fn global(&self) -> &Map<String, Value> {
        &self.global
    }

    /// The rules of one kind, most important first.
    pub fn list(&self, kind: Kind) -> &[Value] {
        self.global
            .get(kind.as_str())
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn list_mut(&mut self, kind: Kind) -> &mut Vec<Value> {
        let entry = self
            .global
            .entry(kind.as_str())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entry.is_array() {
            *entry = Value::Array(Vec::new());
        }
        entry.as_array_mut().expect("made an array above")
    }

    fn position(&self, kind: Kind, rule_id: &str) -> Option<usize> {
        self.list(kind)
            .iter()
            .position(|r| r["rule_id"].as_str() == Some(rule_id))
    }

    pub fn get(&self, kind: Kind, rule_id: &str) -> Option<&Value> {
        self.position(kind, rule_id).map(|i| &self.list(kind)[i])
    }

    /// The number of rules of every kind.
    pub fn len(&self) -> usize {
        Kind::ALL.iter().map(|k| self.list(*k).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}`: adds the rule, or updates the
    /// one with that ID (which keeps its `enabled`). A new rule without
    /// `before`/`after` becomes the most important user-defined rule of its
    /// kind (for `override`, after `.m.rule.master`, which stays first);
    /// `before` wins over `after`, and both must name user-defined rules.
    pub fn insert(
        &mut self,
        kind: Kind,
        rule_id: &str,
        body: &Value,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<(), RuleError> {
        check_rule_id(rule_id)?;
        for relative in [before, after].into_iter().flatten() {
            if relative.starts_with('.') {
                return Err(invalid(
                    "A rule cannot be placed relative to a server-default rule",
                ));
            }
        }
        let actions = body
            .get("actions")
            .ok_or_else(|| invalid("No actions found"))?;
        check_actions(actions)?;
        let mut rule = json!({
            "rule_id": rule_id,
            "default": false,
            "enabled": true,
            "actions": actions,
        });
        match kind {
            Kind::Override | Kind::Underride => {
                let conditions = body
                    .get("conditions")
                    .and_then(Value::as_array)
                    .ok_or_else(|| invalid("Missing 'conditions'"))?;
                if conditions
                    .iter()
                    .any(|c| !c.get("kind").is_some_and(Value::is_string))
                {
                    return Err(invalid("Condition without 'kind'"));
                }
                rule["conditions"] = Value::Array(conditions.clone());
                serde_json::from_value::<ConditionalPushRule>(rule.clone())
                    .map_err(|e| invalid(format!("Invalid rule: {e}")))?;
            }
            Kind::Content => {
                let pattern = body
                    .get("pattern")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("Content rule missing 'pattern'"))?;
                rule["pattern"] = pattern.into();
                serde_json::from_value::<PatternedPushRule>(rule.clone())
                    .map_err(|e| invalid(format!("Invalid rule: {e}")))?;
            }
            Kind::Room | Kind::Sender => {
                serde_json::from_value::<SimplePushRule<String>>(rule.clone())
                    .map_err(|e| invalid(format!("Invalid rule: {e}")))?;
            }
        }

        let existing = self.position(kind, rule_id);
        if let Some(i) = existing {
            rule["enabled"] = self.list(kind)[i]["enabled"].clone();
            if before.is_none() && after.is_none() {
                self.list_mut(kind)[i] = rule;
                return Ok(());
            }
        }
        // Where the rule goes, computed without it in the list.
        let mut without = self.list(kind).to_vec();
        if let Some(i) = existing {
            without.remove(i);
        }
        let index_of = |id: &str| {
            without
                .iter()
                .position(|r| r["rule_id"].as_str() == Some(id))
                .ok_or_else(|| RuleError::RelativeNotFound(id.to_owned()))
        };
        let mut to = match kind {
            Kind::Override => usize::from(
                without.first().and_then(|r| r["rule_id"].as_str()) == Some(".m.rule.master"),
            ),
            _ => 0,
        };
        if let Some(id) = after {
            to = index_of(id)? + 1;
        }
        if let Some(id) = before {
            let i = index_of(id)?;
            if after.is_some() && i < to {
                return Err(invalid("'before' names a rule more important than 'after'"));
            }
            to = i;
        }
        without.insert(to, rule);
        *self.list_mut(kind) = without;
        Ok(())
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}` (user-defined rules only).
    pub fn remove(&mut self, kind: Kind, rule_id: &str) -> Result<(), RuleError> {
        let i = self.position(kind, rule_id).ok_or(RuleError::NotFound)?;
        if rule_id.starts_with('.') || self.list(kind)[i]["default"] == true {
            return Err(RuleError::ServerDefault);
        }
        self.list_mut(kind).remove(i);
        Ok(())
    }

    /// `PUT …/enabled`.
    pub fn set_enabled(
        &mut self,
        kind: Kind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<(), RuleError> {
        let i = self.position(kind, rule_id).ok_or(RuleError::NotFound)?;
        self.list_mut(kind)[i]["enabled"] = enabled.into();
        Ok(())
    }

    /// `PUT …/actions`.
    pub fn set_actions(
        &mut self,
        kind: Kind,
        rule_id: &str,
        actions: &Value,
    ) -> Result<(), RuleError> {
        let i = self.position(kind, rule_id).ok_or(RuleError::NotFound)?;
        check_actions(actions)?;
        self.list_mut(kind)[i]["actions"] = actions.clone();
        Ok(())
    }

    /// The ruleset that evaluates events: every rule ruma can read. Room rules
    /// whose ID is not a room ID and sender rules whose ID is not a user ID
    /// are left out, as they can match no event.
    pub fn evaluator(&self) -> Ruleset {
        let mut global = Map::new();
        for kind in Kind::ALL {
            let readable: Vec<Value> = self
                .list(kind)
                .iter()
                .filter(|rule| match kind {
                    Kind::Override | Kind::Underride => {
                        serde_json::from_value::<ConditionalPushRule>((*rule).clone()).is_ok()
                    }
                    Kind::Content => {
                        serde_json::from_value::<PatternedPushRule>((*rule).clone()).is_ok()
                    }
                    Kind::Room => rule["rule_id"]
                        .as_str()
                        .is_some_and(|id| RoomId::parse(id).is_ok()),
                    Kind::Sender => rule["rule_id"]
                        .as_str()
                        .is_some_and(|id| UserId::parse(id).is_ok()),
                })
                .cloned()
                .collect();
            global.insert(kind.as_str().to_owned(), Value::Array(readable));
        }
        serde_json::from_value(Value::Object(global)).unwrap_or_default()
    }
}

/// The spec: a rule ID starting with `.` is reserved for server-default rules;
/// slashes and backslashes are not allowed.
fn check_rule_id(rule_id: &str) -> Result<(), RuleError> {
    if rule_id.is_empty() {
        return Err(invalid("The rule ID may not be empty"));
    }
    if rule_id.starts_with('.') {
        return Err(invalid(
            "Rule IDs starting with '.' are reserved for server-default rules",
        ));
    }
    if rule_id.contains(['/', '\\']) {
        return Err(invalid("Rule IDs may not contain slashes"));
    }
    Ok(())
}

/// Actions are a list of `notify` (or the deprecated `dont_notify` and
/// `coalesce`, which do nothing) and `set_tweak` objects, as Synapse checks.
fn check_actions(actions: &Value) -> Result<(), RuleError> {
    let actions = actions
        .as_array()
        .ok_or_else(|| invalid("'actions' must be a list"))?;
    for action in actions {
        let known = match action {
            Value::String(s) => matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(o) => o.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        };
        if !known {
            return Err(invalid(format!("Unrecognised action: {action}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ruma::OwnedUserId {
        UserId::parse("@alice:example.org").unwrap()
    }

    fn ids(rules: &Rules, kind: Kind) -> Vec<String> {
        rules
            .list(kind)
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn notify() -> Value {
        json!({ "actions": ["notify"] })
    }

    #[test]
    fn new_rules_go_first_and_before_after_place_them() {
        let mut rules = Rules::server_default(&user());
        rules
            .insert(Kind::Room, "#a:x", &notify(), None, None)
            .unwrap();
        rules
            .insert(Kind::Room, "#b:x", &notify(), None, None)
            .unwrap();
        assert_eq!(ids(&rules, Kind::Room), ["#b:x", "#a:x"]);
        rules
            .insert(Kind::Room, "#c:x", &notify(), Some("#a:x"), None)
            .unwrap();
        assert_eq!(ids(&rules, Kind::Room), ["#b:x", "#c:x", "#a:x"]);
        rules
            .insert(Kind::Room, "#c:x", &notify(), None, Some("#a:x"))
            .unwrap();
        assert_eq!(ids(&rules, Kind::Room), ["#b:x", "#a:x", "#c:x"]);
        // Updating in place keeps the position and `enabled`.
        rules.set_enabled(Kind::Room, "#b:x", false).unwrap();
        rules
            .insert(Kind::Room, "#b:x", &json!({ "actions": [] }), None, None)
            .unwrap();
        assert_eq!(ids(&rules, Kind::Room), ["#b:x", "#a:x", "#c:x"]);
        assert_eq!(rules.get(Kind::Room, "#b:x").unwrap()["enabled"], false);
        assert_eq!(
            rules.insert(Kind::Room, "#d:x", &notify(), Some("#nope:x"), None),
            Err(RuleError::RelativeNotFound("#nope:x".into()))
        );
        assert!(matches!(
            rules.insert(Kind::Room, "#d:x", &notify(), Some(".m.rule.master"), None),
            Err(RuleError::Invalid(_))
        ));
    }

    #[test]
    fn override_rules_stay_behind_the_master_rule() {
        let mut rules = Rules::server_default(&user());
        let body = json!({ "actions": ["notify"], "conditions": [] });
        rules
            .insert(Kind::Override, "mine", &body, None, None)
            .unwrap();
        assert_eq!(ids(&rules, Kind::Override)[..2], [".m.rule.master", "mine"]);
    }

    #[test]
    fn bodies_are_checked_per_kind() {
        let mut rules = Rules::server_default(&user());
        let refused = [
            (Kind::Override, "x", json!({ "actions": [] })),
            (
                Kind::Underride,
                "x",
                json!({ "actions": [], "conditions": [{}] }),
            ),
            (Kind::Content, "x", json!({ "actions": [] })),
            (Kind::Room, "#r:x", json!({})),
            (Kind::Room, "#r:x", json!({ "actions": ["not_an_action"] })),
            (Kind::Room, "#r:x", json!({ "actions": "notify" })),
            (Kind::Room, ".dot", notify()),
            (Kind::Room, "a/b", notify()),
            (Kind::Room, "a\\b", notify()),
            (Kind::Room, "", notify()),
        ];
        for (kind, id, body) in refused {
            assert!(
                matches!(
                    rules.insert(kind, id, &body, None, None),
                    Err(RuleError::Invalid(_))
                ),
                "{kind:?} {id} {body}"
            );
        }
        assert_eq!(rules, Rules::server_default(&user()));
    }

    #[test]
    fn default_rules_cannot_be_removed_and_unknown_rules_are_not_found() {
        let mut rules = Rules::server_default(&user());
        assert_eq!(
            rules.remove(Kind::Override, ".m.rule.master"),
            Err(RuleError::ServerDefault)
        );
        assert_eq!(rules.remove(Kind::Room, "#a:x"), Err(RuleError::NotFound));
        assert_eq!(
            rules.set_actions(Kind::Room, "#a:x", &json!([])),
            Err(RuleError::NotFound)
        );
    }

    #[test]
    fn the_evaluator_leaves_out_rules_that_cannot_match() {
        let mut rules = Rules::server_default(&user());
        rules
            .insert(Kind::Room, "#alias:x", &notify(), None, None)
            .unwrap();
        rules
            .insert(Kind::Room, "!room:x", &notify(), None, None)
            .unwrap();
        rules
            .insert(Kind::Sender, "@bob:x", &notify(), None, None)
            .unwrap();
        let evaluator = rules.evaluator();
        let room: Vec<&str> = evaluator.room.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(room, ["!room:x"]);
        assert_eq!(evaluator.sender.len(), 1);
        assert_eq!(
            evaluator.override_.len(),
            Ruleset::server_default(&user()).override_.len()
        );
    }
}
