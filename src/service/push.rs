//! Push rules (spec: "Push Rules"): the user's ruleset, stored as the global
//! account data `m.push_rules` (`{"global": …}`), which is also how sync delivers
//! it, as Synapse does. Users who never changed a rule have the spec's defaults.

use std::collections::HashMap;

use ruma::{
    OwnedUserId, RoomId, UInt, UserId,
    events::{
        AnySyncTimelineEvent,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use serde_json::{Value, json};

use super::{account_data, event::RoomCtx};
use crate::{
    domain::{
        pdu::Pdu,
        push_rules::{Kind, RuleError, Rules},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{Postgres, Transaction, user_streams},
};

pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

/// The user's rules: the stored `m.push_rules`, else the spec's defaults.
pub async fn rules(app: &AppState, user: &UserId) -> Result<Rules> {
    let stored =
        user_streams::get_account_data(&app.db, user.as_str(), "", ACCOUNT_DATA_TYPE).await?;
    Ok(stored
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|content| Rules::from_content(&content))
        .unwrap_or_else(|| Rules::server_default(user)))
}

async fn save(app: &AppState, user: &UserId, rules: &Rules) -> Result<()> {
    account_data::store(app, user, None, ACCOUNT_DATA_TYPE, &rules.to_content()).await
}

fn rule_error(e: RuleError) -> Error {
    match e {
        RuleError::NotFound => Error::not_found("Push rule not found"),
        RuleError::RelativeNotFound(id) => Error::new(
            ErrorKind::BadRequest,
            format!("before/after rule not found: {id}"),
        ),
        RuleError::ServerDefault => Error::forbidden("Server-default rules cannot be deleted"),
        RuleError::Invalid(message) => Error::invalid_param(message),
    }
}

/// Applies one edit to the user's rules and stores them.
async fn edit(
    app: &AppState,
    user: &UserId,
    change: impl FnOnce(&mut Rules) -> std::result::Result<(), RuleError>,
) -> Result<()> {
    let mut rules = rules(app, user).await?;
    change(&mut rules).map_err(rule_error)?;
    // Every local event is matched against each member's rules inside the room
    // lock, so a user's rules are bounded in number and size.
    let size = serde_json::to_vec(&rules.to_content()).map_or(usize::MAX, |v| v.len());
    if rules.len() > MAX_RULES || size > MAX_RULES_BYTES {
        return Err(Error::invalid_param(format!(
            "At most {MAX_RULES} push rules, of at most {MAX_RULES_BYTES} bytes in all"
        )));
    }
    save(app, user, &rules).await
}

/// Bounds on one user's push rules (the server defaults included).
pub const MAX_RULES: usize = 500;
pub const MAX_RULES_BYTES: usize = 128 * 1024;

pub async fn get(app: &AppState, user: &UserId, kind: Kind, rule_id: &str) -> Result<Value> {
    rules(app, user)
        .await?
        .get(kind, rule_id)
        .cloned()
        .ok_or_else(|| Error::not_found("Push rule not found"))
}

pub async fn set(
    app: &AppState,
    user: &UserId,
    kind: Kind,
    rule_id: &str,
    body: &Value,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<()> {
    edit(app, user, |rules| {
        rules.insert(kind, rule_id, body, before, after)
    })
    .await
}

pub async fn delete(app: &AppState, user: &UserId, kind: Kind, rule_id: &str) -> Result<()> {
    edit(app, user, |rules| rules.remove(kind, rule_id)).await
}

pub async fn set_enabled(
    app: &AppState,
    user: &UserId,
    kind: Kind,
    rule_id: &str,
    enabled: bool,
) -> Result<()> {
    edit(app, user, |rules| rules.set_enabled(kind, rule_id, enabled)).await
}

pub async fn set_actions(
    app: &AppState,
    user: &UserId,
    kind: Kind,
    rule_id: &str,
    actions: &Value,
) -> Result<()> {
    edit(app, user, |rules| rules.set_actions(kind, rule_id, actions)).await
}

/// The actions of the first rule of `rules` that applies to `event`, as
/// `Ruleset::get_actions` gives them (the same rules in the same order), for
/// an event already flattened.
async fn first_match<'r>(
    rules: &'r Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> &'r [Action] {
    for rule in rules {
        if rule.applies(event, ctx).await {
            return rule.actions();
        }
    }
    &[]
}

/// The event as push rules match it (the client form's fields they read),
/// and as ruma takes it.
fn push_event(
    pdu: &Pdu,
    event_id: &str,
    content: Value,
) -> Result<(Value, Raw<AnySyncTimelineEvent>)> {
    let mut event = json!({
        "type": pdu.kind.to_string(),
        "content": content,
        "sender": pdu.sender,
        "event_id": event_id,
        "origin_server_ts": pdu.origin_server_ts,
        "room_id": pdu.room_id,
    });
    if let Some(key) = &pdu.state_key {
        event["state_key"] = key.clone().into();
    }
    let raw = Raw::from_json(
        serde_json::value::to_raw_value(&event).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    Ok((event, raw))
}

/// An invite of one of our users into a room this server is not in (it came
/// through the federation invite API, not the event writer, so
/// [`record_actions`] never sees it): the invitee's rules decide whether it
/// notifies, as Synapse pushes such invites. The room is known only through
/// the stripped state sent with the invite, which holds no power levels (the
/// conditions on them do not apply); the member count is that of the joined
/// members in it. `stream` is the invite's position in the invitee's stream.
pub async fn record_invite_actions(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    pdu: &Pdu,
    event_id: &str,
    stream: i64,
    stripped_state: &Value,
) -> Result<()> {
    let Some(invitee) = pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .filter(|u| u.server_name() == app.server_name && *u != pdu.sender)
    else {
        return Ok(());
    };
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    let (_, raw) = push_event(pdu, event_id, content)?;
    let stored =
        user_streams::account_data_for_users(&mut **tx, &[invitee.to_string()], ACCOUNT_DATA_TYPE)
            .await?
            .into_iter()
            .next()
            .and_then(|(_, text)| serde_json::from_str::<Value>(&text).ok())
            .and_then(|content| Rules::from_content(&content))
            .map(|rules| rules.evaluator());
    let rules = stored.unwrap_or_else(|| Ruleset::server_default(&invitee));
    let joined = stripped_state.as_array().map_or(0, |events| {
        events
            .iter()
            .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
            .count()
    });
    let ctx = PushConditionRoomCtx::new(
        pdu.room_id.clone(),
        UInt::try_from(joined as u64).unwrap_or(UInt::MAX),
        invitee.clone(),
        invitee.localpart().to_owned(),
    );
    let actions = first_match(&rules, &FlattenedJson::from_raw(&raw), &ctx).await;
    if !actions.iter().any(Action::should_notify) {
        return Ok(());
    }
    let notified = user_streams::PushActions {
        room_id: pdu.room_id.as_str(),
        stream_ordering: stream,
        event_id,
        thread_id: "",
        users: vec![invitee.as_str()],
        highlights: vec![actions.iter().any(Action::is_highlight)],
        actions: vec![serde_json::to_string(actions).map_err(|e| anyhow::anyhow!("{e}"))?],
    };
    user_streams::insert_push_actions(&mut **tx, &notified).await?;
    Ok(())
}

/// The server-default rules of many users evaluated against one event, with
/// one evaluation shared by most of them.
///
/// The defaults (`Ruleset::server_default`) depend on their user in two rules
/// only: `.m.rule.invite_for_me` (the event's `state_key` matches the user's
/// ID as a case-insensitive glob) and `.m.rule.is_user_mention` (the ID is in
/// `content.m.mentions.user_ids`). Everything else a condition reads (room,
/// member count, the sender's power) is the same for every member, and the
/// defaults hold no `contains_display_name`. So a user whose ID the event
/// names in neither place, and whose ID holds no glob wildcard, gets exactly
/// the actions of a stand-in user's defaults, evaluated once per event; the
/// others are evaluated on their own defaults. Without this, a join into a
/// room of 5,000 local members built and walked 5,000 rulesets under the room
/// lock.
struct SharedDefaults {
    /// The event's `state_key`, lower-cased as ruma's glob match does.
    state_key: Option<String>,
    mentioned: Vec<String>,
    sender: String,
    /// The event names the stand-in itself: nobody shares.
    names_stand_in: bool,
    /// The stand-in's actions, once evaluated.
    shared: Option<Vec<Action>>,
}

/// A user ID no event names unless it means to: if one does, nobody shares.
const STAND_IN: &str = "@lattice-push-defaults:stand-in.invalid";

impl SharedDefaults {
    fn new(event: &Value) -> Self {
        let mut defaults = Self {
            state_key: event["state_key"].as_str().map(str::to_lowercase),
            mentioned: event["content"]["m.mentions"]["user_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
            sender: event["sender"].as_str().unwrap_or_default().to_owned(),
            names_stand_in: false,
            shared: None,
        };
        defaults.names_stand_in = defaults.personal(STAND_IN);
        defaults
    }

    /// Whether the defaults of `user` may come out differently from the
    /// stand-in's for this event.
    fn personal(&self, user: &str) -> bool {
        user.contains(['*', '?'])
            || user == self.sender
            || self.state_key.as_deref() == Some(user.to_lowercase().as_str())
            || self.mentioned.iter().any(|m| m == user)
    }

    async fn actions(
        &mut self,
        user: &UserId,
        event: &FlattenedJson,
        context: &impl Fn(&UserId, String) -> PushConditionRoomCtx,
    ) -> Vec<Action> {
        if self.names_stand_in || self.personal(user.as_str()) {
            let rules = Ruleset::server_default(user);
            let ctx = context(user, user.localpart().to_owned());
            return first_match(&rules, event, &ctx).await.to_vec();
        }
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let Ok(stand_in) = UserId::parse(STAND_IN) else {
            return Vec::new();
        };
        let rules = Ruleset::server_default(&stand_in);
        let ctx = context(&stand_in, stand_in.localpart().to_owned());
        let shared = first_match(&rules, event, &ctx).await.to_vec();
        self.shared = Some(shared.clone());
        shared
    }
}

/// Evaluates the push rules of every local member (but the sender) for a newly
/// persisted event, in the persisting transaction, and records who it notifies
/// (and highlights). Sync turns these rows into `unread_notifications`.
/// `joined`: the room's joined users after the event.
#[allow(clippy::too_many_arguments)]
pub async fn record_actions(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &RoomCtx,
    room_id: &RoomId,
    event_id: &str,
    pdu: &Pdu,
    stream: i64,
    joined: &[String],
) -> Result<()> {
    let mut candidates: Vec<String> = joined.to_vec();
    // The invitee of an invite is not a member yet, but the default rule
    // `.m.rule.invite_for_me` is there to tell them (as Synapse does).
    if pdu.kind.to_string() == "m.room.member"
        && let Some(invitee) = &pdu.state_key
        && serde_json::from_str::<Value>(pdu.content.get())
            .is_ok_and(|c| c["membership"] == "invite")
        && !candidates.contains(invitee)
    {
        candidates.push(invitee.clone());
    }
    let local: Vec<String> = candidates
        .into_iter()
        .filter(|u| {
            u != pdu.sender.as_str()
                && UserId::parse(u.as_str()).is_ok_and(|u| u.server_name() == app.server_name)
        })
        .collect();
    if local.is_empty() {
        return Ok(());
    }
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    let stored: HashMap<String, Ruleset> =
        user_streams::account_data_for_users(&mut **tx, &local, ACCOUNT_DATA_TYPE)
            .await?
            .into_iter()
            .filter_map(|(user, text)| {
                let content: Value = serde_json::from_str(&text).ok()?;
                Some((user, Rules::from_content(&content)?.evaluator()))
            })
            .collect();
    // Room display names matter only to `contains_display_name`, which only a
    // user's own rules can hold (the server defaults do not) and which looks at
    // `body`: the member events loaded are those of users with rules of their
    // own, and only for events with a body (not for joins in a big room).
    let mut keys: Vec<(String, String)> = if content["body"].is_string() {
        stored
            .keys()
            .map(|u| ("m.room.member".to_owned(), u.clone()))
            .collect()
    } else {
        Vec::new()
    };
    keys.push(("m.room.power_levels".to_owned(), String::new()));
    let create_key = ("m.room.create".to_owned(), String::new());
    keys.push(create_key.clone());
    let state = super::event::state_events(tx, room.state_group, &keys).await?;
    let creators = state
        .get(&create_key)
        .map(|create| super::read::creators_of(create, &room.rules))
        .unwrap_or_default();
    let power_levels = state
        .get(&("m.room.power_levels".to_owned(), String::new()))
        .and_then(|pl| serde_json::from_str::<RoomPowerLevelsEventContent>(pl.content.get()).ok());
    let source = match power_levels {
        Some(content) => RoomPowerLevelsSource::Original(content),
        None => RoomPowerLevelsSource::None,
    };
    let creators: Vec<OwnedUserId> = creators
        .iter()
        .filter_map(|c| UserId::parse(c.as_str()).ok())
        .collect();
    let pl_ctx: PushConditionPowerLevelsCtx =
        RoomPowerLevels::new(source, &room.rules.authorization, creators).into();

    let (event, raw) = push_event(pdu, event_id, content)?;
    // Flattened once for every member (ruma's `get_actions` flattens the event
    // again for each call: O(members) flattenings per event in a big room).
    let flat = FlattenedJson::from_raw(&raw);
    let thread_id = match (
        event["content"]["m.relates_to"]["rel_type"].as_str(),
        event["content"]["m.relates_to"]["event_id"].as_str(),
    ) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => String::new(),
    };
    let member_count = UInt::try_from(joined.len() as u64).unwrap_or(UInt::MAX);
    let context = |user_id: &UserId, display_name: String| {
        let mut ctx = PushConditionRoomCtx::new(
            room_id.to_owned(),
            member_count,
            user_id.to_owned(),
            display_name,
        );
        ctx.power_levels = Some(pl_ctx.clone());
        ctx
    };
    let mut defaults = SharedDefaults::new(&event);
    let mut notified = user_streams::PushActions {
        room_id: room_id.as_str(),
        stream_ordering: stream,
        event_id,
        thread_id: &thread_id,
        users: Vec::new(),
        highlights: Vec::new(),
        actions: Vec::new(),
    };
    for user in &local {
        let Ok(user_id) = UserId::parse(user.as_str()) else {
            continue;
        };
        let actions: Vec<Action> = match stored.get(user) {
            Some(rules) => {
                let display_name = state
                    .get(&("m.room.member".to_owned(), user.clone()))
                    .and_then(|m| serde_json::from_str::<Value>(m.content.get()).ok())
                    .and_then(|c| c["displayname"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| user_id.localpart().to_owned());
                first_match(rules, &flat, &context(&user_id, display_name))
                    .await
                    .to_vec()
            }
            None => defaults.actions(&user_id, &flat, &context).await,
        };
        if actions.iter().any(Action::should_notify) {
            notified.users.push(user);
            notified
                .highlights
                .push(actions.iter().any(Action::is_highlight));
            notified
                .actions
                .push(serde_json::to_string(&actions).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
    }
    user_streams::insert_push_actions(&mut **tx, &notified).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ruma::{
        events::room::power_levels::RoomPowerLevelsEventContent,
        room_version_rules::{AuthorizationRules, RoomVersionRules},
    };

    use super::*;

    /// Every member's actions through [`SharedDefaults`] are exactly those of
    /// ruma's own evaluation of that member's server-default rules, for events
    /// that hit each user-dependent rule and for those that hit none.
    #[tokio::test]
    async fn shared_defaults_give_each_member_their_own_defaults_actions() {
        let room = ruma::owned_room_id!("!room:here");
        let sender = "@sender:there";
        let users = [
            "@alice:here",
            "@bob:here",
            "@ALICE:here",
            "@a*:here",
            "@?lice:here",
            "@carol:here",
            STAND_IN,
        ];
        let message = |content: Value| json!({"type": "m.room.message", "content": content});
        let member = |key: &str, membership: &str| json!({"type": "m.room.member", "state_key": key, "content": {"membership": membership}});
        let events = [
            message(json!({"msgtype": "m.text", "body": "hello"})),
            message(json!({"msgtype": "m.text", "body": "hi alice",
                "m.mentions": {"user_ids": ["@alice:here"]}})),
            message(json!({"msgtype": "m.text", "body": "hi all",
                "m.mentions": {"user_ids": ["@alice:here", "@a*:here"], "room": true}})),
            message(json!({"msgtype": "m.text", "body": "@room",
                "m.mentions": {"room": true}})),
            message(json!({"msgtype": "m.notice", "body": "beep"})),
            message(json!({"msgtype": "m.text", "body": "them",
                "m.mentions": {"user_ids": [STAND_IN]}})),
            json!({"type": "m.room.encrypted", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}),
            json!({"type": "m.reaction", "content": {"m.relates_to":
                {"rel_type": "m.annotation", "event_id": "$x", "key": "1"}}}),
            member("@alice:here", "invite"),
            member("@Alice:HERE", "invite"),
            member("@bob:here", "join"),
            member("@dave:here", "invite"),
            json!({"type": "m.room.tombstone", "state_key": "", "content":
                {"body": "moved", "replacement_room": "!new:here"}}),
        ];
        let power: PushConditionPowerLevelsCtx = RoomPowerLevels::new(
            RoomPowerLevelsSource::Original(RoomPowerLevelsEventContent::new(
                &AuthorizationRules::V1,
            )),
            &RoomVersionRules::V10.authorization,
            Vec::new(),
        )
        .into();
        for members in [2u32, 20] {
            for mut event in events.clone() {
                event["sender"] = sender.into();
                event["room_id"] = room.as_str().into();
                event["event_id"] = "$e".into();
                event["origin_server_ts"] = 1.into();
                let raw: Raw<AnySyncTimelineEvent> =
                    Raw::from_json(serde_json::value::to_raw_value(&event).unwrap());
                let flat = FlattenedJson::from_raw(&raw);
                let context = |user: &UserId, name: String| {
                    let mut ctx =
                        PushConditionRoomCtx::new(room.clone(), members.into(), user.into(), name);
                    ctx.power_levels = Some(power.clone());
                    ctx
                };
                let mut shared = SharedDefaults::new(&event);
                for user in users {
                    let user = UserId::parse(user).unwrap();
                    let got = shared.actions(&user, &flat, &context).await;
                    let ctx = context(&user, user.localpart().to_owned());
                    let own = Ruleset::server_default(&user);
                    let want = own.get_actions(&raw, &ctx).await;
                    assert_eq!(
                        serde_json::to_value(&got).unwrap(),
                        serde_json::to_value(want).unwrap(),
                        "{user} in a room of {members}, event {event}"
                    );
                }
            }
        }
    }

    /// The cases the test above relies on do come out differently per user:
    /// without per-user evaluation it would not tell anything.
    #[tokio::test]
    async fn mentions_and_invites_do_differ_between_members() {
        let event = json!({"type": "m.room.message", "sender": "@s:there", "room_id": "!r:here",
            "content": {"msgtype": "m.text", "body": "x",
                "m.mentions": {"user_ids": ["@alice:here"]}}});
        let shared = SharedDefaults::new(&event);
        assert!(shared.personal("@alice:here"));
        assert!(!shared.personal("@bob:here"));
        assert!(
            shared.personal("@b*:here"),
            "a glob in an ID matches other state keys"
        );
        let invite = json!({"type": "m.room.member", "state_key": "@Bob:Here",
            "content": {"membership": "invite"}});
        assert!(SharedDefaults::new(&invite).personal("@bob:here"));
    }
}
