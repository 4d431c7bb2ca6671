//! The `/sync` answer (spec: "Syncing", `GET /sync` 200 response), typed.
//!
//! Not ruma's `sync_events::v3::Response`: its serialiser leaves out every
//! section that is empty or default, where Lattice (like Synapse for the
//! parts below) writes them, and clients and SyTest read them:
//! - a room's `timeline`, `state`, `ephemeral` and `account_data` sections,
//!   and `timeline.limited` when `false`: SyTest asserts these keys
//!   (`assert_json_keys($room, qw(timeline state ephemeral))`,
//!   `assert_json_keys($room->{timeline}, qw(events limited prev_batch))`);
//! - `device_one_time_keys_count` when no key is left: Synapse always sends
//!   it, because Element Android uploads keys only when it is there
//!   (element-android#3725);
//! - `m.heroes: []` for a room without a name whose other members all left:
//!   a client that keeps the heroes it had when the key is missing
//!   (matrix-js-sdk reads `summary["m.heroes"]` only when present) would
//!   otherwise go on naming the room after them;
//! - the top-level `rooms` (with all four maps), `account_data`, `presence`
//!   and `to_device`, which this server has always sent (SyTest asserts
//!   `presence`), and `unread_thread_notifications: {}` when it was asked for.
//!
//! The events inside are ruma's `Raw`, built from their client JSON
//! ([`crate::service::client_event::raw`]); ruma's `DeviceLists` and
//! `UnreadNotificationsCount` are used where their serialisation is ours.

use std::collections::BTreeMap;

use ruma::{
    OneTimeKeyAlgorithm, OwnedEventId, OwnedRoomId, OwnedUserId, UInt,
    api::client::sync::sync_events::{DeviceLists, UnreadNotificationsCount},
    events::{
        AnyGlobalAccountDataEvent, AnyRoomAccountDataEvent, AnyStrippedStateEvent,
        AnySyncEphemeralRoomEvent, AnySyncStateEvent, AnySyncTimelineEvent, AnyToDeviceEvent,
        presence::PresenceEvent,
    },
    serde::Raw,
};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Response {
    pub next_batch: String,
    pub rooms: Rooms,
    pub account_data: Events<AnyGlobalAccountDataEvent>,
    pub presence: Events<PresenceEvent>,
    pub to_device: Events<AnyToDeviceEvent>,
    /// As Synapse: `device_lists` and each of its lists only when not empty
    /// (clients read a missing list as empty), as ruma's type writes it.
    #[serde(skip_serializing_if = "DeviceLists::is_empty")]
    pub device_lists: DeviceLists,
    pub device_one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    /// Always present: it tells clients that the server supports fallback
    /// keys (MSC2732).
    pub device_unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
}

/// `{"events": [...]}`, the envelope of every event list in `/sync`.
#[derive(Debug, Serialize)]
#[serde(bound = "")]
pub struct Events<T> {
    pub events: Vec<Raw<T>>,
}

impl<T> Default for Events<T> {
    fn default() -> Self {
        Self { events: Vec::new() }
    }
}

impl<T> From<Vec<Raw<T>>> for Events<T> {
    fn from(events: Vec<Raw<T>>) -> Self {
        Self { events }
    }
}

impl<T> Events<T> {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Rooms {
    pub join: BTreeMap<OwnedRoomId, JoinedRoom>,
    pub invite: BTreeMap<OwnedRoomId, InvitedRoom>,
    pub knock: BTreeMap<OwnedRoomId, KnockedRoom>,
    pub leave: BTreeMap<OwnedRoomId, LeftRoom>,
}

impl Rooms {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty()
            && self.invite.is_empty()
            && self.knock.is_empty()
            && self.leave.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct JoinedRoom {
    pub timeline: Timeline,
    pub state: Events<AnySyncStateEvent>,
    pub ephemeral: Events<AnySyncEphemeralRoomEvent>,
    pub account_data: Events<AnyRoomAccountDataEvent>,
    pub summary: RoomSummary,
    /// Both counts always set.
    pub unread_notifications: UnreadNotificationsCount,
    /// Only when the filter asked for counts by thread, then even when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_thread_notifications: Option<BTreeMap<OwnedEventId, UnreadNotificationsCount>>,
}

impl JoinedRoom {
    /// Whether the room has nothing to say besides its counts and summary
    /// (an incremental sync leaves such a room out).
    pub fn has_no_events(&self) -> bool {
        self.timeline.events.is_empty()
            && self.state.is_empty()
            && self.ephemeral.is_empty()
            && self.account_data.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct LeftRoom {
    pub timeline: Timeline,
    pub state: Events<AnySyncStateEvent>,
    pub account_data: Events<AnyRoomAccountDataEvent>,
}

#[derive(Debug, Serialize)]
pub struct InvitedRoom {
    pub invite_state: Events<AnyStrippedStateEvent>,
}

#[derive(Debug, Serialize)]
pub struct KnockedRoom {
    pub knock_state: Events<AnyStrippedStateEvent>,
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub events: Vec<Raw<AnySyncTimelineEvent>>,
    pub limited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RoomSummary {
    #[serde(rename = "m.joined_member_count")]
    pub joined_member_count: UInt,
    #[serde(rename = "m.invited_member_count")]
    pub invited_member_count: UInt,
    /// Only for rooms without a name or canonical alias, as Synapse sends it;
    /// then even when empty.
    #[serde(rename = "m.heroes", skip_serializing_if = "Option::is_none")]
    pub heroes: Option<Vec<OwnedUserId>>,
}

/// Both counts of a room or thread, as `unread_notifications` carries them.
pub fn counts(notifications: i64, highlights: i64) -> UnreadNotificationsCount {
    let mut counts = UnreadNotificationsCount::new();
    counts.notification_count = Some(uint(notifications));
    counts.highlight_count = Some(uint(highlights));
    counts
}

/// A count from the database (never negative) as the spec's integer.
pub fn uint(n: i64) -> UInt {
    UInt::try_from(n.max(0)).unwrap_or(UInt::MAX)
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, owned_user_id};
    use serde_json::{json, to_value};

    use super::*;

    fn quiet_room(heroes: Option<Vec<OwnedUserId>>) -> JoinedRoom {
        JoinedRoom {
            timeline: Timeline {
                events: Vec::new(),
                limited: false,
                prev_batch: Some("s1_0_0".to_owned()),
            },
            state: Events::default(),
            ephemeral: Events::default(),
            account_data: Events::default(),
            summary: RoomSummary {
                joined_member_count: uint(1),
                invited_member_count: uint(0),
                heroes,
            },
            unread_notifications: counts(0, 0),
            unread_thread_notifications: None,
        }
    }

    /// What ruma's type would leave out is written: empty sections, `limited:
    /// false`, empty key counts, `m.heroes: []`.
    #[test]
    fn empty_sections_are_written() {
        let mut rooms = Rooms::default();
        rooms.join.insert(
            owned_room_id!("!a:example.org"),
            quiet_room(Some(Vec::new())),
        );
        let response = Response {
            next_batch: "s1_0_0".to_owned(),
            rooms,
            account_data: Events::default(),
            presence: Events::default(),
            to_device: Events::default(),
            device_lists: DeviceLists::new(),
            device_one_time_keys_count: BTreeMap::new(),
            device_unused_fallback_key_types: Vec::new(),
        };
        assert_eq!(
            to_value(&response).unwrap(),
            json!({
                "next_batch": "s1_0_0",
                "rooms": {
                    "join": {
                        "!a:example.org": {
                            "timeline": { "events": [], "limited": false, "prev_batch": "s1_0_0" },
                            "state": { "events": [] },
                            "ephemeral": { "events": [] },
                            "account_data": { "events": [] },
                            "summary": {
                                "m.joined_member_count": 1,
                                "m.invited_member_count": 0,
                                "m.heroes": [],
                            },
                            "unread_notifications": {
                                "notification_count": 0,
                                "highlight_count": 0,
                            },
                        },
                    },
                    "invite": {},
                    "knock": {},
                    "leave": {},
                },
                "account_data": { "events": [] },
                "presence": { "events": [] },
                "to_device": { "events": [] },
                "device_one_time_keys_count": {},
                "device_unused_fallback_key_types": [],
            })
        );
    }

    /// A named room has no `m.heroes`; thread counts are written when asked
    /// for, even empty; device lists only with their non-empty lists.
    #[test]
    fn optional_parts() {
        let mut room = quiet_room(None);
        room.unread_thread_notifications = Some(BTreeMap::new());
        let value = to_value(&room).unwrap();
        assert!(value["summary"].get("m.heroes").is_none(), "{value}");
        assert_eq!(value["unread_thread_notifications"], json!({}));

        let mut lists = DeviceLists::new();
        lists.changed = vec![owned_user_id!("@b:example.org")];
        assert_eq!(
            to_value(&lists).unwrap(),
            json!({ "changed": ["@b:example.org"] })
        );
    }
}
