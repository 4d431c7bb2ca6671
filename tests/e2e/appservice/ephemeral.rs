//! What appservices get besides room events: ephemeral events (MSC2409) for
//! registrations that ask for them, and to-device messages, device lists and
//! key counts (MSC4203, MSC3202) for encrypted bridges. Real HTTP appservices
//! on loopback, each recording whole transaction bodies.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode as AxStatus},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::V3;
use crate::harness::{Login, SERVER_NAME, TestServer, enc, eventually};

/// One appservice: its tokens, and the bodies of the transactions it
/// accepted (each transaction ID once).
pub(super) struct Recorder {
    hs_token: String,
    bodies: Mutex<Vec<(String, Value)>>,
}

impl Recorder {
    pub(super) fn bodies(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Every entry of `field` across transactions.
    pub(super) fn all(&self, field: &str) -> Vec<Value> {
        self.bodies()
            .iter()
            .flat_map(|b| b[field].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Whether any transaction carried `field` at all.
    fn any_has(&self, field: &str) -> bool {
        self.bodies().iter().any(|b| b.get(field).is_some())
    }
}

async fn transaction(
    State(rec): State<Arc<Recorder>>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (AxStatus, axum::Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {}", rec.hs_token) {
        return (AxStatus::FORBIDDEN, axum::Json(json!({})));
    }
    let mut bodies = rec.bodies.lock().unwrap();
    if !bodies.iter().any(|(id, _)| *id == txn) {
        bodies.push((txn, body));
    }
    (AxStatus::OK, axum::Json(json!({})))
}

/// Starts an appservice `id` (users `@{id}_.*`) on loopback and writes its
/// registration with `flags` (YAML lines).
async fn appservice(dir: &std::path::Path, id: &str, flags: &str) -> (Arc<Recorder>, PathBuf) {
    let (rec, addr) = listen(id).await;
    (rec, registration(dir, id, addr, flags, SERVER_NAME))
}

/// An appservice `id` listening on loopback.
pub(super) async fn listen(id: &str) -> (Arc<Recorder>, std::net::SocketAddr) {
    let rec = Arc::new(Recorder {
        hs_token: format!("hs-{id}-token"),
        bodies: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(transaction),
        )
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rec, addr)
}

/// Writes appservice `id`'s registration (users `@{id}_.*:{server}`).
pub(super) fn registration(
    dir: &std::path::Path,
    id: &str,
    addr: std::net::SocketAddr,
    flags: &str,
    server: &str,
) -> PathBuf {
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(
        &path,
        format!(
            r##"id: {id}
url: "http://{addr}"
as_token: "as-{id}-token"
hs_token: "hs-{id}-token"
sender_localpart: {id}bot
rate_limited: false
{flags}
namespaces:
  users:
    - exclusive: true
      regex: "@{id}_.*:{server}"
"##
        ),
    )
    .unwrap();
    path
}

pub(super) fn as_token(id: &str) -> String {
    format!("as-{id}-token")
}

/// Registers `@{localpart}` through appservice `id` (with a device and a
/// token) and joins it to `room` after `inviter` invites it.
async fn ghost_in_room(
    server: &TestServer,
    id: &str,
    localpart: &str,
    inviter: &Login,
    room: &str,
) -> Login {
    let (status, body) = server
        .post(
            &format!("{V3}/register"),
            Some(&as_token(id)),
            json!({ "type": "m.login.application_service", "username": localpart }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ghost = Login::from_json(&body);
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(room)),
            Some(&inviter.access_token),
            json!({ "user_id": ghost.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/join/{}?user_id={}", enc(room), enc(&ghost.user_id)),
            Some(&as_token(id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ghost
}

async fn typing(server: &TestServer, who: &Login, room: &str, on: bool) {
    let body = if on {
        json!({ "typing": true, "timeout": 30000 })
    } else {
        json!({ "typing": false })
    };
    let (status, resp) = server
        .put(
            &format!("{V3}/rooms/{}/typing/{}", enc(room), enc(&who.user_id)),
            Some(&who.access_token),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

async fn receipt(server: &TestServer, who: &Login, room: &str, kind: &str, event: &str) {
    let (status, resp) = server
        .post(
            &format!("{V3}/rooms/{}/receipt/{kind}/{}", enc(room), enc(event)),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

#[tokio::test]
async fn typing_receipts_and_presence_reach_the_appservices_that_ask_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (eph, eph_path) = appservice(dir.path(), "eph", "receive_ephemeral: true").await;
    let (legacy, legacy_path) = appservice(
        dir.path(),
        "leg",
        "de.sorunome.msc2409.push_ephemeral: true",
    )
    .await;
    let (plain, plain_path) = appservice(dir.path(), "plain", "").await;
    let server = TestServer::start_with(|c| {
        c.appservices = vec![eph_path, legacy_path, plain_path];
    })
    .await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    for (id, name) in [
        ("eph", "eph_bob"),
        ("leg", "leg_bob"),
        ("plain", "plain_bob"),
    ] {
        ghost_in_room(&server, id, name, &alice, &room).await;
    }
    // A room without any namespace user: its typing concerns nobody.
    let quiet = server.create_room(&alice, json!({})).await;
    typing(&server, &alice, &quiet, true).await;
    typing(&server, &alice, &room, true).await;
    let event = server
        .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": "hi" }))
        .await;
    receipt(&server, &alice, &room, "m.read.private", &event).await;
    receipt(&server, &alice, &room, "m.read", &event).await;
    let (status, resp) = server
        .put(
            &format!("{V3}/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.access_token),
            json!({ "presence": "online", "status_msg": "bridging" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    typing(&server, &alice, &room, false).await;

    for (rec, field) in [
        (&eph, "ephemeral"),
        (&legacy, "de.sorunome.msc2409.ephemeral"),
    ] {
        eventually("typing stopped, at the appservice", || {
            let rec = rec.clone();
            let room = room.clone();
            async move {
                rec.all(field).iter().any(|e| {
                    e["type"] == "m.typing"
                        && e["room_id"] == room.as_str()
                        && e["content"]["user_ids"] == json!([])
                })
            }
        })
        .await;
        let ephemeral = rec.all(field);
        let typing: Vec<&Value> = ephemeral
            .iter()
            .filter(|e| e["type"] == "m.typing")
            .collect();
        assert_eq!(
            typing[0],
            &json!({ "type": "m.typing", "room_id": room, "content": { "user_ids": [alice.user_id] } }),
            "{ephemeral:?}"
        );
        assert!(
            typing.iter().all(|e| e["room_id"] == room.as_str()),
            "the room without namespace users is not told: {typing:?}"
        );
        let receipts: Vec<&Value> = ephemeral
            .iter()
            .filter(|e| e["type"] == "m.receipt")
            .collect();
        assert_eq!(
            receipts.len(),
            1,
            "the private receipt stays private: {receipts:?}"
        );
        assert_eq!(receipts[0]["room_id"], room.as_str());
        assert!(
            receipts[0]["content"][event.as_str()]["m.read"][alice.user_id.as_str()]["ts"].is_i64(),
            "{receipts:?}"
        );
        let presence: Vec<&Value> = ephemeral
            .iter()
            .filter(|e| e["type"] == "m.presence" && e["sender"] == alice.user_id.as_str())
            .collect();
        assert!(
            presence.iter().any(|p| p["content"]["presence"] == "online"
                && p["content"]["status_msg"] == "bridging"),
            "{ephemeral:?}"
        );
        // The ephemeral events ride in the same transactions as the room
        // events, under one name only.
        let other = if field == "ephemeral" {
            "de.sorunome.msc2409.ephemeral"
        } else {
            "ephemeral"
        };
        assert!(!rec.any_has(other));
        assert!(!rec.any_has("de.sorunome.msc2409.to_device"));
    }
    // Without the flag: the room's events, nothing ephemeral.
    eventually("the message at the plain appservice", || {
        let plain = plain.clone();
        let event = event.clone();
        async move {
            plain
                .all("events")
                .iter()
                .any(|e| e["event_id"] == event.as_str())
        }
    })
    .await;
    assert!(!plain.any_has("ephemeral"));
    assert!(!plain.any_has("de.sorunome.msc2409.ephemeral"));
}

fn device_keys(who: &Login) -> Value {
    json!({
        "user_id": who.user_id,
        "device_id": who.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", who.device_id): "curve",
            format!("ed25519:{}", who.device_id): "edkey",
        },
        "signatures": { who.user_id.clone(): { format!("ed25519:{}", who.device_id): "sig" } },
    })
}

/// Uploads keys for `ghost`'s device as its appservice does: the as_token,
/// masquerading as the user and the device (MSC3202).
async fn upload_as(server: &TestServer, id: &str, ghost: &Login, body: Value) -> Value {
    let (status, resp) = server
        .post(
            &format!(
                "{V3}/keys/upload?user_id={}&device_id={}",
                enc(&ghost.user_id),
                enc(&ghost.device_id)
            ),
            Some(&as_token(id)),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp
}

async fn send_to_device(server: &TestServer, from: &Login, txn: &str, to: &Login, content: Value) {
    let (status, body) = server
        .put(
            &format!("{V3}/sendToDevice/m.room.encrypted/{txn}"),
            Some(&from.access_token),
            json!({ "messages": { to.user_id.clone(): { to.device_id.clone(): content } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_encrypted_bridge_gets_to_device_messages_device_lists_and_key_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, bridge_path) = appservice(dir.path(), "enc", "org.matrix.msc3202: true").await;
    let (plain, plain_path) = appservice(dir.path(), "plain", "").await;
    let server = TestServer::start_with(|c| {
        c.appservices = vec![bridge_path, plain_path];
    })
    .await;
    let alice = server.register("alice", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let ghost = ghost_in_room(&server, "enc", "enc_bob", &alice, &room).await;
    let plain_ghost = ghost_in_room(&server, "plain", "plain_bob", &alice, &room).await;

    // The bridge publishes the ghost device's keys: five one-time keys and a
    // fallback key.
    let otks: serde_json::Map<String, Value> = (0..5)
        .map(|i| {
            (
                format!("signed_curve25519:K{i}"),
                json!({ "key": format!("k{i}"), "signatures": {} }),
            )
        })
        .collect();
    let resp = upload_as(
        &server,
        "enc",
        &ghost,
        json!({
            "device_keys": device_keys(&ghost),
            "one_time_keys": otks,
            "fallback_keys": { "signed_curve25519:F1": { "key": "f", "fallback": true, "signatures": {} } },
        }),
    )
    .await;
    assert_eq!(
        resp["one_time_key_counts"]["signed_curve25519"], 5,
        "{resp}"
    );

    // Alice starts an Olm session with the ghost's device: claims a one-time
    // key, then sends it an encrypted to-device message.
    let (status, claimed) = server
        .post(
            &format!("{V3}/keys/claim"),
            Some(&alice.access_token),
            json!({ "one_time_keys": { ghost.user_id.clone(): { ghost.device_id.clone(): "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let olm = json!({ "algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "alicekey", "ciphertext": { "curve": { "type": 0, "body": "secret" } } });
    // First to carol (no namespace user): this one is not the bridge's.
    send_to_device(
        &server,
        &alice,
        "to-carol",
        &carol,
        json!({ "for": "carol" }),
    )
    .await;
    send_to_device(
        &server,
        &alice,
        "to-plain",
        &plain_ghost,
        json!({ "for": "plain" }),
    )
    .await;
    send_to_device(&server, &alice, "to-ghost", &ghost, olm.clone()).await;

    eventually("the to-device message at the bridge", || {
        let bridge = bridge.clone();
        async move { !bridge.all("de.sorunome.msc2409.to_device").is_empty() }
    })
    .await;
    let to_device = bridge.all("de.sorunome.msc2409.to_device");
    assert_eq!(
        to_device,
        vec![json!({
            "type": "m.room.encrypted",
            "sender": alice.user_id,
            "content": olm,
            "to_user_id": ghost.user_id,
            "to_device_id": ghost.device_id,
        })],
        "only the ghost's message, once"
    );
    // The transaction that carried it has the device's key state as it is
    // after the claim.
    let carrying = bridge
        .bodies()
        .into_iter()
        .find(|b| b.get("de.sorunome.msc2409.to_device").is_some())
        .unwrap();
    assert_eq!(
        carrying["org.matrix.msc3202.device_one_time_keys_count"][ghost.user_id.as_str()]
            [ghost.device_id.as_str()]["signed_curve25519"],
        4,
        "{carrying}"
    );
    assert_eq!(
        carrying["org.matrix.msc3202.device_unused_fallback_key_types"][ghost.user_id.as_str()]
            [ghost.device_id.as_str()],
        json!(["signed_curve25519"]),
        "{carrying}"
    );
    // Only the namespace's users' devices are counted.
    let counted: Vec<&String> = carrying["org.matrix.msc3202.device_one_time_keys_count"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(counted.iter().all(|u| u.starts_with("@enc")), "{counted:?}");

    // Alice's device list changes (a new login, new keys): she shares a room
    // with the ghost, so the bridge is told.
    let (status, body) = server.login("alice", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("alice in device_lists.changed", || {
        let bridge = bridge.clone();
        let alice = alice.user_id.clone();
        async move {
            bridge.bodies().iter().any(|b| {
                b["org.matrix.msc3202.device_lists"]["changed"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|u| u == alice.as_str()))
            })
        }
    })
    .await;
    // Carol shares no room with a namespace user: her changes are not the
    // bridge's. She joins, then leaves: "left".
    let (status, body) = server.login("carol", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.join(&carol, &room).await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            Some(&carol.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("carol in device_lists.left", || {
        let bridge = bridge.clone();
        let carol = carol.user_id.clone();
        async move {
            bridge.bodies().iter().any(|b| {
                b["org.matrix.msc3202.device_lists"]["left"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|u| u == carol.as_str()))
            })
        }
    })
    .await;
    let carol_changed = bridge.bodies().iter().any(|b| {
        b["org.matrix.msc3202.device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == carol.user_id.as_str()))
    });
    assert!(
        !carol_changed,
        "carol's new login came before she shared a room"
    );
    // No to-device message but the ghost's ever reached the bridge.
    assert_eq!(bridge.all("de.sorunome.msc2409.to_device").len(), 1);

    // The appservice without the flags: the room's events, none of the rest.
    eventually("the leave at the plain appservice", || {
        let plain = plain.clone();
        let carol = carol.user_id.clone();
        async move {
            plain
                .all("events")
                .iter()
                .any(|e| e["state_key"] == carol.as_str() && e["content"]["membership"] == "leave")
        }
    })
    .await;
    for field in [
        "de.sorunome.msc2409.to_device",
        "org.matrix.msc3202.device_lists",
        "org.matrix.msc3202.device_one_time_keys_count",
        "org.matrix.msc3202.device_unused_fallback_key_types",
        "ephemeral",
    ] {
        assert!(!plain.any_has(field), "{field} sent without the flag");
    }
}
