//! Whether a redaction takes effect (spec: room versions 3+, "Handling
//! redactions"; client-server API, "Redactions").
//!
//! The auth rules accept any `m.room.redaction` its sender may send and never
//! look at the event it names. Whether that event is redacted is decided here,
//! once both events are known, by one rule for every path (local redactions,
//! `/send`, backfill):
//! 1. a state-keyed `m.room.redaction` means nothing in the spec: it redacts
//!    nothing;
//! 2. the original must be in the redaction's room;
//! 3. the redaction's sender sent the original, or has at least the `redact`
//!    power level in the state before the redaction (v12 room creators have
//!    infinite power), or is on the original sender's server — the spec's second
//!    condition: that server vouches for its users and could as well have sent
//!    the redaction as the original sender. This server vouches for its own
//!    users only for their own events ([`Grant::allows_local`]).

use ruma::{
    EventId, OwnedEventId, OwnedUserId, RoomId, UserId,
    events::{
        TimelineEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
    room_version_rules::RoomVersionRules,
};
use serde_json::Value;

use super::pdu::Pdu;

/// Why a redaction may be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// The sender redacts their own event.
    OwnEvent,
    /// The sender's power level reaches the room's `redact` level.
    Power,
    /// The sender is on the original sender's server (another user).
    SameServer,
}

impl Grant {
    /// Whether a local user may redact on this ground: this server does not
    /// vouch for one of its users redacting another's event without power.
    pub fn allows_local(self) -> bool {
        !matches!(self, Grant::SameServer)
    }
}

/// Why a redaction is not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("m.room.redaction is not a state event")]
    StateKey,
    #[error("the event is not in this room")]
    OtherRoom,
    #[error("you may not redact other users' events")]
    NoPower,
}

/// The event a redaction names, where its room version puts it: under
/// `content` from v11 on, at the top level before. `None` for other events.
pub fn target(rules: &RoomVersionRules, redaction: &Pdu) -> Option<OwnedEventId> {
    if redaction.kind != TimelineEventType::RoomRedaction {
        return None;
    }
    if rules.redaction.content_field_redacts {
        let content: Value = serde_json::from_str(redaction.content.get()).ok()?;
        EventId::parse(content.get("redacts")?.as_str()?).ok()
    } else {
        redaction.redacts.clone()
    }
}

/// The power levels in force for a redaction: the `m.room.power_levels`
/// content of the state before it (absent: the spec's defaults, in which the
/// creator has 100 before v12) and the room's creators (the create event's
/// sender, plus `additional_creators` where the version has them). `None` when
/// the power levels cannot be read: then nobody has power.
pub fn power_levels(
    rules: &RoomVersionRules,
    power_levels: Option<&Pdu>,
    create: Option<&Pdu>,
) -> Option<RoomPowerLevels> {
    let mut creators: Vec<OwnedUserId> = Vec::new();
    if let Some(create) = create {
        creators.push(create.sender.clone());
        if rules.authorization.additional_room_creators {
            let content: Value = serde_json::from_str(create.content.get()).unwrap_or_default();
            creators.extend(
                content["additional_creators"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().and_then(|c| UserId::parse(c).ok())),
            );
        }
    }
    let source = match power_levels {
        Some(pdu) => RoomPowerLevelsSource::Original(
            serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get()).ok()?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Some(RoomPowerLevels::new(source, &rules.authorization, creators))
}

/// Whether `redaction` may redact an event of `original_room` sent by
/// `original_sender`, given the power levels before the redaction.
pub fn check(
    redaction: &Pdu,
    original_room: &RoomId,
    original_sender: &UserId,
    power: Option<&RoomPowerLevels>,
) -> Result<Grant, Refusal> {
    if redaction.state_key.is_some() {
        return Err(Refusal::StateKey);
    }
    if redaction.room_id != original_room {
        return Err(Refusal::OtherRoom);
    }
    if redaction.sender == original_sender {
        return Ok(Grant::OwnEvent);
    }
    if power.is_some_and(|p| p.for_user(&redaction.sender) >= p.redact) {
        return Ok(Grant::Power);
    }
    if redaction.sender.server_name() == original_sender.server_name() {
        return Ok(Grant::SameServer);
    }
    Err(Refusal::NoPower)
}

#[cfg(test)]
mod tests {
    use ruma::{RoomVersionId, owned_event_id};
    use serde_json::json;

    use super::*;

    fn pdu(version: &RoomVersionId, value: Value) -> (RoomVersionRules, Pdu) {
        let rules = version.rules().unwrap();
        let pdu = Pdu::from_json(&owned_event_id!("$e"), &value.to_string()).unwrap();
        (rules, pdu)
    }

    fn event(kind: &str, sender: &str, content: Value) -> Value {
        json!({
            "type": kind, "room_id": "!r:a.test", "sender": sender, "content": content,
            "origin_server_ts": 1, "depth": 2, "prev_events": [], "auth_events": [],
        })
    }

    fn user(s: &str) -> OwnedUserId {
        UserId::parse(s).unwrap()
    }

    fn room(s: &str) -> ruma::OwnedRoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn the_target_is_where_the_room_version_puts_it() {
        let mut top = event("m.room.redaction", "@m:a.test", json!({}));
        top["redacts"] = "$top".into();
        let inner = event(
            "m.room.redaction",
            "@m:a.test",
            json!({"redacts": "$inner"}),
        );
        let v10 = RoomVersionId::V10;
        let v11 = RoomVersionId::V11;
        let (r, p) = pdu(&v10, top.clone());
        assert_eq!(target(&r, &p), Some(owned_event_id!("$top")));
        let (r, p) = pdu(&v10, inner.clone());
        assert_eq!(target(&r, &p), None, "v10 ignores content.redacts");
        let (r, p) = pdu(&v11, top);
        assert_eq!(target(&r, &p), None, "v11 ignores the top-level redacts");
        let (r, p) = pdu(&v11, inner);
        assert_eq!(target(&r, &p), Some(owned_event_id!("$inner")));
        let (r, p) = pdu(
            &v11,
            event("m.room.message", "@m:a.test", json!({"redacts": "$x"})),
        );
        assert_eq!(target(&r, &p), None, "only redactions redact");
    }

    #[test]
    fn only_the_sender_the_powerful_or_the_senders_server_redact_in_the_same_room() {
        let v10 = RoomVersionId::V10;
        let (rules, power) = pdu(
            &v10,
            event(
                "m.room.power_levels",
                "@owner:a.test",
                json!({"users": {"@owner:a.test": 100, "@mod:b.test": 50}, "redact": 50}),
            ),
        );
        let (_, create) = pdu(&v10, event("m.room.create", "@owner:a.test", json!({})));
        let levels = power_levels(&rules, Some(&power), Some(&create)).unwrap();
        let redaction = |sender: &str| {
            pdu(
                &v10,
                event("m.room.redaction", sender, json!({"redacts": "$x"})),
            )
            .1
        };
        let here = room("!r:a.test");
        let victim = user("@victim:a.test");
        let check = |sender: &str, room: &RoomId, original: &UserId| {
            super::check(&redaction(sender), room, original, Some(&levels))
        };
        assert_eq!(check("@victim:a.test", &here, &victim), Ok(Grant::OwnEvent));
        assert_eq!(check("@owner:a.test", &here, &victim), Ok(Grant::Power));
        assert_eq!(check("@mod:b.test", &here, &victim), Ok(Grant::Power));
        // Same server, no power: the spec's second condition (trusted from a
        // remote server only).
        let same = check("@other:a.test", &here, &victim);
        assert_eq!(same, Ok(Grant::SameServer));
        assert!(!same.unwrap().allows_local());
        assert_eq!(
            check("@nobody:c.test", &here, &victim),
            Err(Refusal::NoPower)
        );
        // Another room: refused even for the sender and the powerful.
        let other = room("!other:a.test");
        assert_eq!(
            check("@victim:a.test", &other, &victim),
            Err(Refusal::OtherRoom)
        );
        assert_eq!(
            check("@owner:a.test", &other, &victim),
            Err(Refusal::OtherRoom)
        );
        // A state-keyed redaction redacts nothing, whoever sends it.
        let mut state = event("m.room.redaction", "@owner:a.test", json!({}));
        state["state_key"] = "".into();
        state["redacts"] = "$x".into();
        let (_, state) = pdu(&v10, state);
        assert_eq!(
            super::check(&state, &here, &victim, Some(&levels)),
            Err(Refusal::StateKey)
        );
        // Unreadable power levels: nobody has power.
        assert_eq!(
            super::check(
                &redaction("@owner:a.test"),
                &here,
                &user("@victim:c.test"),
                None
            ),
            Err(Refusal::NoPower)
        );
    }

    #[test]
    fn creators_and_defaults_per_room_version() {
        // No power levels event: before v12 the creator has 100, others 0.
        let v10 = RoomVersionId::V10;
        let (rules, create) = pdu(&v10, event("m.room.create", "@owner:a.test", json!({})));
        let levels = power_levels(&rules, None, Some(&create)).unwrap();
        let (_, redaction) = pdu(&v10, event("m.room.redaction", "@owner:a.test", json!({})));
        let (_, other) = pdu(&v10, event("m.room.redaction", "@x:a.test", json!({})));
        let victim = user("@victim:z.test");
        let here = room("!r:a.test");
        assert_eq!(
            check(&redaction, &here, &victim, Some(&levels)),
            Ok(Grant::Power)
        );
        assert_eq!(
            check(&other, &here, &victim, Some(&levels)),
            Err(Refusal::NoPower)
        );

        // v12: creators (and additional creators) outrank any level, even when
        // the power levels ask more than anyone has.
        let v12 = RoomVersionId::V12;
        let mut create = event(
            "m.room.create",
            "@owner:a.test",
            json!({"additional_creators": ["@co:c.test"]}),
        );
        create.as_object_mut().unwrap().remove("room_id");
        let rules = v12.rules().unwrap();
        let create = Pdu::from_json(&owned_event_id!("$create"), &create.to_string()).unwrap();
        let (_, power) = pdu(
            &v12,
            event(
                "m.room.power_levels",
                "@owner:a.test",
                json!({"users": {"@admin:a.test": 100}, "redact": 101}),
            ),
        );
        let levels = power_levels(&rules, Some(&power), Some(&create)).unwrap();
        for (sender, expected) in [
            ("@owner:a.test", Ok(Grant::Power)),
            ("@co:c.test", Ok(Grant::Power)),
            ("@admin:a.test", Err(Refusal::NoPower)),
        ] {
            let (_, redaction) = pdu(&v12, event("m.room.redaction", sender, json!({})));
            assert_eq!(
                check(&redaction, &here, &victim, Some(&levels)),
                expected,
                "{sender}"
            );
        }
    }
}
