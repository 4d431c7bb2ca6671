//! Room versions 1 and 2 (spec rooms/v1.md, rooms/v2.md): event format v1 (the
//! event carries `$opaque:origin` as its ID; references are `[id, hashes]`
//! pairs), state resolution v1 in room version 1 and v2 in room version 2.

use reqwest::StatusCode;
use ruma::RoomVersionId;
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, enc, eventually, wait_for_message},
    hostile::{HostilePeer, now_ms},
};

async fn state(server: &TestServer, who: &Login, room: &str, kind: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            Some(&who.access_token),
        )
        .await
}

async fn event(server: &TestServer, who: &Login, room: &str, id: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id)),
            Some(&who.access_token),
        )
        .await
}

/// A v1 or v2 room on one Lattice server, joined from a second: the events are
/// of event format v1 (IDs of the sending server), messages and state flow both
/// ways, redactions apply.
#[tokio::test]
async fn v1_and_v2_rooms_are_created_joined_and_used_over_federation() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    for version in ["1", "2"] {
        let room = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version,
                       "room_alias_name": format!("old{version}")}),
            )
            .await;
        let (status, create) = state(&a, &alice, &room, "m.room.create").await;
        assert_eq!(status, StatusCode::OK, "{create}");
        assert_eq!(create["room_version"], version);
        assert_eq!(create["creator"], alice.user_id);

        // Local events get IDs of this server, not reference hashes.
        let first = a
            .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "one"}))
            .await;
        assert!(
            first.starts_with('$') && first.ends_with(&format!(":{}", a.name())),
            "v{version}: {first}"
        );
        let (status, got) = event(&a, &alice, &room, &first).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["content"]["body"], "one");

        // Bob's server joins through A (make_join offers v1/v2).
        let alias = format!("#old{version}:{}", a.name());
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                Some(&bob.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        eventually("bob's join on A", || async {
            let (_, members) = a
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
                    Some(&alice.access_token),
                )
                .await;
            members["joined"].get(&bob.user_id).is_some()
        })
        .await;
        let (_, bob_member) = a
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob.user_id)
                ),
                Some(&alice.access_token),
            )
            .await;
        assert_eq!(bob_member["membership"], "join", "{bob_member}");

        a.send_message(
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "to bob"}),
        )
        .await;
        wait_for_message(&b, &bob, &room, "to bob").await;
        let from_bob = b
            .send_message(
                &bob,
                &room,
                json!({"msgtype": "m.text", "body": "to alice"}),
            )
            .await;
        assert!(from_bob.ends_with(&format!(":{}", b.name())), "{from_bob}");
        wait_for_message(&a, &alice, &room, "to alice").await;

        // State converges; a redaction applies on both servers.
        let (status, _) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&alice.access_token),
                json!({"topic": format!("topic {version}")}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        eventually("the topic on B", || async {
            state(&b, &bob, &room, "m.room.topic").await.1["topic"] == format!("topic {version}")
        })
        .await;
        let (status, body) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r{version}",
                    enc(&room),
                    enc(&first)
                ),
                Some(&alice.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, got) = event(&a, &alice, &room, &first).await;
        assert_eq!(got["content"], json!({}), "{got}");
        eventually("the redaction on B", || async {
            let (status, got) = event(&b, &bob, &room, &first).await;
            // B may not hold the pre-join message at all; where it does, redacted.
            status == StatusCode::NOT_FOUND || got["content"] == json!({})
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
}

/// A remote server (the test double) joins v1 and v2 rooms and sends event
/// format v1 PDUs: an honest one is accepted; an event ID naming another server
/// (which did not sign it), references in the later format, a bad signature
/// are rejected; a content-hash mismatch is kept redacted (spec "Checks
/// performed on receipt of a PDU").
#[tokio::test]
async fn a_remote_v1_format_event_is_checked_on_receipt() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    for version in ["1", "2"] {
        let room = lattice
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version}),
            )
            .await;
        let mut joined = peer.join(&lattice, &room, "mallory").await;
        assert_eq!(joined.version, RoomVersionId::try_from(version).unwrap());
        assert!(
            joined.join_id.ends_with(&format!(":{}", peer.name())),
            "{}",
            joined.join_id
        );
        // The room's state came back in event format v1 (IDs carried, pairs).
        let create = joined
            .state
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .unwrap();
        assert!(
            create["event_id"]
                .as_str()
                .unwrap()
                .ends_with(lattice.name())
        );
        let pl = joined
            .state
            .iter()
            .find(|e| e["type"] == "m.room.power_levels")
            .unwrap();
        assert!(pl["prev_events"][0][1]["sha256"].is_string(), "{pl}");

        let (honest, pdu) = peer.message(&joined, "honest");
        let result = peer.send(&lattice, vec![pdu]).await;
        assert_eq!(result[&honest], json!({}), "v{version}: {result}");
        joined.advance(&honest);
        let (status, got) = event(&lattice, &alice, &room, &honest).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["content"]["body"], "honest");
        assert_eq!(got["event_id"], honest);

        // An ID of another server: that server did not sign the event.
        let forged_id = format!("$forged{version}:other.example");
        let (id, pdu) = peer.pdu(
            &joined.version,
            json!({
                "event_id": forged_id, "room_id": room, "sender": joined.user_id,
                "type": "m.room.message", "content": {"msgtype": "m.text", "body": "forged"},
                "prev_events": [joined.latest], "auth_events": joined.message_auth(),
                "depth": joined.depth + 1,
            }),
        );
        assert_eq!(id, forged_id);
        // References as plain IDs (the v3+ shape) in a v1-format room.
        let (flat, mut flat_pdu) = peer.message(&joined, "flat");
        flat_pdu["prev_events"] = json!([joined.latest]);
        // A signature that does not verify: the signed type changed after signing.
        let (bad_sig, mut bad_sig_pdu) = peer.message(&joined, "bad sig");
        bad_sig_pdu["type"] = "m.room.other".into();
        let result = peer.send(&lattice, vec![pdu, flat_pdu, bad_sig_pdu]).await;
        for id in [&forged_id, &flat, &bad_sig] {
            assert!(
                result[id.as_str()]["error"].is_string(),
                "v{version}: {id} accepted: {result}"
            );
            let (status, _) = event(&lattice, &alice, &room, id).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "v{version}: {id}");
        }

        // Content changed after signing: the hash fails, the event is kept redacted.
        let (tampered, mut tampered_pdu) = peer.message(&joined, "original");
        tampered_pdu["content"]["body"] = "tampered".into();
        let result = peer.send(&lattice, vec![tampered_pdu]).await;
        assert_eq!(result[&tampered], json!({}), "v{version}: {result}");
        let (status, got) = event(&lattice, &alice, &room, &tampered).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["content"], json!({}), "v{version}: {got}");
    }
    peer.stop();
    lattice.stop().await;
}

/// A fork on which each side changes the topic: Alice (local) early in depth
/// but late in time, the peer deeper but with an older timestamp. State
/// resolution v1 (room version 1) keeps the deeper event; v2 (room version 2)
/// orders the two topics by timestamp after their equal power-level mainline,
/// so the later one, Alice's, wins.
#[tokio::test]
async fn state_resolution_v1_picks_the_deeper_topic_and_v2_the_later() {
    let lattice = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = lattice.register("alice", "password-a").await;
    let mallory = peer.user("mallory");
    for (version, winner) in [("1", "peer"), ("2", "alice")] {
        let room = lattice
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version,
                "power_level_content_override": {
                    "users": { alice.user_id.clone(): 100, mallory.clone(): 100 }
                }}),
            )
            .await;
        let mut joined = peer.join(&lattice, &room, "mallory").await;
        // Alice's topic, after the peer's join.
        let (status, _) = lattice
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&alice.access_token),
                json!({"topic": "alice"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        // The peer, not having seen it: three messages, then its topic, stamped
        // an hour before Alice's.
        let mut pdus = Vec::new();
        for body in ["m1", "m2", "m3"] {
            let (id, pdu) = peer.message(&joined, body);
            pdus.push(pdu);
            joined.advance(&id);
        }
        let (topic_id, topic) = peer.pdu(
            &joined.version,
            json!({
                "room_id": room, "sender": joined.user_id, "type": "m.room.topic",
                "state_key": "", "content": {"topic": "peer"},
                "prev_events": [joined.latest], "auth_events": joined.message_auth(),
                "depth": joined.depth + 1, "origin_server_ts": now_ms() - 3_600_000,
            }),
        );
        pdus.push(topic);
        let result = peer.send(&lattice, pdus).await;
        assert_eq!(result[&topic_id], json!({}), "v{version}: {result}");
        let (status, got) = state(&lattice, &alice, &room, "m.room.topic").await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["topic"], winner, "v{version}");
    }
    peer.stop();
    lattice.stop().await;
}
