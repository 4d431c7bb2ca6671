//! Push rule evaluation in the event path (spec: "Push Notifications", "Push
//! Rules"): events sent through `service::event::send`, and the actions
//! `persist` recorded for each member read back, for the spec's predefined
//! rules and for rules a user adds (room, sender, keyword, override).

use lattice::{
    domain::{pdu::NewEvent, push_rules::Kind},
    service::{
        AppState, event,
        membership::{self, Change, JoinContent},
        push,
    },
    storage::user_streams,
};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

/// How an event came out for one user: not at all, or notified (and whether
/// highlighted, and the sound tweak).
#[derive(Debug, PartialEq)]
enum Push {
    Nothing,
    Notify {
        highlight: bool,
        sound: Option<String>,
    },
}

const PLAIN: Push = Push::Notify {
    highlight: false,
    sound: None,
};

fn with_sound(highlight: bool) -> Push {
    Push::Notify {
        highlight,
        sound: Some("default".into()),
    }
}

async fn outcome(app: &AppState, user: &UserId, event_id: &OwnedEventId) -> Push {
    let rows = user_streams::notifications(&app.db, user.as_str(), i64::MAX, false, 1000)
        .await
        .unwrap();
    let Some(row) = rows.iter().find(|r| r.event_id == event_id.as_str()) else {
        return Push::Nothing;
    };
    let actions: Value = serde_json::from_str(&row.actions).unwrap();
    let tweak = |name: &str| {
        actions
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["set_tweak"] == name)
            .cloned()
    };
    let highlight = tweak("highlight").is_some_and(|t| t.get("value") != Some(&json!(false)));
    assert_eq!(
        row.highlight, highlight,
        "the row's highlight flag follows the actions"
    );
    Push::Notify {
        highlight,
        sound: tweak("sound").and_then(|t| t["value"].as_str().map(str::to_owned)),
    }
}

async fn send(
    app: &AppState,
    room: &RoomId,
    sender: &UserId,
    kind: &str,
    content: Value,
) -> OwnedEventId {
    send_state(app, room, sender, kind, None, content).await
}

async fn send_state(
    app: &AppState,
    room: &RoomId,
    sender: &UserId,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> OwnedEventId {
    event::send(
        app,
        room,
        sender,
        NewEvent {
            kind: kind.into(),
            content,
            state_key: state_key.map(str::to_owned),
            redacts: None,
            origin_server_ts: None,
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("sending {kind}: {e:?}"))
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

async fn join(app: &AppState, user: &UserId, room: &RoomId) {
    membership::join_via(
        app,
        user,
        room,
        JoinContent::from_body(Default::default()),
        &[],
    )
    .await
    .unwrap();
}

/// Alice's room with Bob and Carol joined (three members: no 1:1 rules).
async fn three(app: &AppState) -> (OwnedRoomId, OwnedUserId, OwnedUserId, OwnedUserId) {
    let alice = crate::user(app, "alice").await;
    let bob = crate::user(app, "bob").await;
    let carol = crate::user(app, "carol").await;
    let room = crate::room(app, &alice, "10").await;
    for user in [&bob, &carol] {
        membership::change(app, &alice, &room, user, Change::Invite, None, false)
            .await
            .unwrap();
        join(app, user, &room).await;
    }
    (room, alice, bob, carol)
}

#[tokio::test]
async fn the_predefined_rules_decide_who_is_notified_and_how() {
    let app = crate::state().await;
    let (room, alice, bob, carol) = three(&app).await;

    // `.m.rule.message`: notify, no sound; never the sender.
    let hello = send(&app, &room, &alice, "m.room.message", text("hello all")).await;
    assert_eq!(outcome(&app, &bob, &hello).await, PLAIN);
    assert_eq!(outcome(&app, &carol, &hello).await, PLAIN);
    assert_eq!(outcome(&app, &alice, &hello).await, Push::Nothing);

    // `.m.rule.suppress_notices`, `.m.rule.reaction`, `.m.rule.suppress_edits`.
    let notice = send(
        &app,
        &room,
        &alice,
        "m.room.message",
        json!({"msgtype": "m.notice", "body": "a bot speaks"}),
    )
    .await;
    let reaction = send(
        &app,
        &room,
        &alice,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "👍"}}),
    )
    .await;
    let edit = send(
        &app,
        &room,
        &alice,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "* hello everyone",
            "m.new_content": text("hello everyone"),
            "m.relates_to": {"rel_type": "m.replace", "event_id": hello},
        }),
    )
    .await;
    for quiet in [&notice, &reaction, &edit] {
        assert_eq!(outcome(&app, &bob, quiet).await, Push::Nothing, "{quiet}");
    }

    // `.m.rule.is_user_mention`: only the mentioned user, with sound and highlight.
    let mention = send(
        &app,
        &room,
        &alice,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [bob]}}),
    )
    .await;
    assert_eq!(outcome(&app, &bob, &mention).await, with_sound(true));
    assert_eq!(outcome(&app, &carol, &mention).await, PLAIN);

    // `.m.rule.is_room_mention`: highlights everyone, when the sender has the
    // `notifications.room` power (50 by default): Alice (100) has it, Bob (0) not.
    let everyone = json!({"msgtype": "m.text", "body": "all", "m.mentions": {"room": true}});
    let by_alice = send(&app, &room, &alice, "m.room.message", everyone.clone()).await;
    let by_bob = send(&app, &room, &bob, "m.room.message", everyone).await;
    let highlight = Push::Notify {
        highlight: true,
        sound: None,
    };
    assert_eq!(outcome(&app, &bob, &by_alice).await, highlight);
    assert_eq!(outcome(&app, &carol, &by_alice).await, highlight);
    assert_eq!(outcome(&app, &carol, &by_bob).await, PLAIN);

    // The legacy `.m.rule.contains_display_name` and `.m.rule.roomnotif` are
    // no longer predefined (spec v1.17): a name or "@room" in the body, without
    // `m.mentions`, is an ordinary message.
    let named = send(
        &app,
        &room,
        &alice,
        "m.room.message",
        text("bob: lunch? @room"),
    )
    .await;
    assert_eq!(outcome(&app, &bob, &named).await, PLAIN);

    // `.m.rule.member_event`: a member change notifies nobody.
    let dave = crate::user(&app, "dave").await;
    membership::change(&app, &alice, &room, &dave, Change::Invite, None, false)
        .await
        .unwrap();
    let invites = user_streams::notifications(&app.db, dave.as_str(), i64::MAX, false, 10)
        .await
        .unwrap();
    // …but `.m.rule.invite_for_me` (before it) tells the invitee, with sound.
    assert_eq!(invites.len(), 1);
    let invite_id: OwnedEventId = invites[0].event_id.parse().unwrap();
    assert_eq!(outcome(&app, &dave, &invite_id).await, with_sound(false));
    assert_eq!(outcome(&app, &bob, &invite_id).await, Push::Nothing);

    // `.m.rule.tombstone`: an upgrade notice highlights.
    let tombstone = send_state(
        &app,
        &room,
        &alice,
        "m.room.tombstone",
        Some(""),
        json!({"body": "moved", "replacement_room": "!new:test.local"}),
    )
    .await;
    assert_eq!(outcome(&app, &bob, &tombstone).await, highlight);
}

#[tokio::test]
async fn a_room_of_two_rings_with_sound() {
    let app = crate::state().await;
    let alice = crate::user(&app, "alice").await;
    let bob = crate::user(&app, "bob").await;
    let room = crate::room(&app, &alice, "10").await;
    membership::change(&app, &alice, &room, &bob, Change::Invite, None, false)
        .await
        .unwrap();
    join(&app, &bob, &room).await;
    // `.m.rule.room_one_to_one`.
    let hi = send(&app, &room, &alice, "m.room.message", text("hi")).await;
    assert_eq!(outcome(&app, &bob, &hi).await, with_sound(false));
    // `.m.rule.call`: a call rings.
    let call = send(
        &app,
        &room,
        &alice,
        "m.call.invite",
        json!({"call_id": "c1", "lifetime": 60000, "version": "1",
               "offer": {"type": "offer", "sdp": "v=0"}}),
    )
    .await;
    assert_eq!(
        outcome(&app, &bob, &call).await,
        Push::Notify {
            highlight: false,
            sound: Some("ring".into())
        }
    );
}

#[tokio::test]
async fn rules_a_user_adds_come_before_the_predefined_ones() {
    let app = crate::state().await;
    let (room, alice, bob, carol) = three(&app).await;
    let other = crate::room(&app, &alice, "10").await;
    membership::change(&app, &alice, &other, &bob, Change::Invite, None, false)
        .await
        .unwrap();
    join(&app, &bob, &other).await;

    // A room rule: Bob mutes `room`, not `other`.
    push::set(
        &app,
        &bob,
        Kind::Room,
        room.as_str(),
        &json!({"actions": []}),
        None,
        None,
    )
    .await
    .unwrap();
    let muted = send(&app, &room, &alice, "m.room.message", text("in room")).await;
    let heard = send(&app, &other, &alice, "m.room.message", text("in other")).await;
    assert_eq!(outcome(&app, &bob, &muted).await, Push::Nothing);
    // (`other` has two members: `.m.rule.room_one_to_one`.)
    assert_eq!(outcome(&app, &bob, &heard).await, with_sound(false));
    // …and only for Bob.
    assert_eq!(outcome(&app, &carol, &muted).await, PLAIN);

    // A sender rule: Carol mutes Alice, not Bob.
    push::set(
        &app,
        &carol,
        Kind::Sender,
        alice.as_str(),
        &json!({"actions": []}),
        None,
        None,
    )
    .await
    .unwrap();
    let from_alice = send(&app, &room, &alice, "m.room.message", text("from alice")).await;
    let from_bob = send(&app, &room, &bob, "m.room.message", text("from bob")).await;
    assert_eq!(outcome(&app, &carol, &from_alice).await, Push::Nothing);
    assert_eq!(outcome(&app, &carol, &from_bob).await, PLAIN);

    // A keyword (content rule): whole words of the body, any case.
    push::set(
        &app,
        &carol,
        Kind::Content,
        "cheese",
        &json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]}),
        None,
        None,
    )
    .await
    .unwrap();
    let word = send(&app, &room, &bob, "m.room.message", text("Got CHEESE?")).await;
    let inside = send(&app, &room, &bob, "m.room.message", text("cheesecake")).await;
    let highlight = Push::Notify {
        highlight: true,
        sound: None,
    };
    assert_eq!(outcome(&app, &carol, &word).await, highlight);
    assert_eq!(outcome(&app, &carol, &inside).await, PLAIN);
    // Content rules come before sender rules (override, content, room, sender,
    // underride): Alice's "cheese" highlights for Carol, who muted Alice.
    let alice_cheese = send(&app, &room, &alice, "m.room.message", text("cheese")).await;
    assert_eq!(outcome(&app, &carol, &alice_cheese).await, highlight);

    // An override with the (deprecated) `contains_display_name` condition:
    // Bob's name in the room (his member event's `displayname`) in the body.
    push::set(
        &app,
        &bob,
        Kind::Override,
        "my_name",
        &json!({
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "highlight"}],
        }),
        None,
        None,
    )
    .await
    .unwrap();
    let named = send(&app, &other, &alice, "m.room.message", text("ask bob")).await;
    let unnamed = send(&app, &other, &alice, "m.room.message", text("ask bobby")).await;
    assert_eq!(outcome(&app, &bob, &named).await, highlight);
    assert_eq!(outcome(&app, &bob, &unnamed).await, with_sound(false));
    // Overrides come before room rules: in the muted room his name still highlights.
    let named_muted = send(&app, &room, &alice, "m.room.message", text("bob!")).await;
    assert_eq!(outcome(&app, &bob, &named_muted).await, highlight);
}
