//! Device lists and presence across two Lattice servers: a remote user's key
//! and device changes reach the local users sharing a room with them (and only
//! them) through `m.device_list_update`, `/keys/query` answers from the list
//! held, presence travels as `m.presence`; forged updates are ignored.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, dev_tls, enc, eventually};

const V3: &str = "/_matrix/client/v3";

async fn sync(server: &TestServer, who: &Login, since: Option<&str>) -> Value {
    let path = match since {
        Some(s) => format!("{V3}/sync?since={s}&timeout=0&set_presence=offline"),
        None => format!("{V3}/sync?timeout=0&set_presence=offline"),
    };
    let (status, body) = server.get(&path, Some(&who.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn changed(body: &Value) -> Vec<String> {
    body["device_lists"]["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

fn presence_senders(body: &Value) -> Vec<String> {
    body["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["sender"].as_str().map(str::to_owned))
        .collect()
}

async fn upload_keys(server: &TestServer, who: &Login, key: &str) {
    let (status, body) = server
        .post(
            &format!("{V3}/keys/upload"),
            Some(&who.access_token),
            json!({"device_keys": {
                "user_id": who.user_id,
                "device_id": who.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": { format!("ed25519:{}", who.device_id): key },
                "signatures": {},
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn query_keys(server: &TestServer, who: &Login, user: &str) -> Value {
    let (status, body) = server
        .post(
            &format!("{V3}/keys/query"),
            Some(&who.access_token),
            json!({"device_keys": { user: [] }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Alice (A) and Dave (A) share a room with Bob (B); Carol (A) shares none.
async fn two_servers() -> (TestServer, TestServer, Login, Login, Login, Login, String) {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let carol = a.register("carol", "password-c").await;
    let dave = a.register("dave", "password-d").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "devs"}),
        )
        .await;
    let (status, body) = a
        .post(
            &format!("{V3}/join/{}", enc(&room)),
            Some(&dave.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .post(
            &format!("{V3}/join/{}", enc(&format!("#devs:{}", a.name()))),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("bob's join on A", || async {
        let (_, members) = a
            .get(
                &format!("{V3}/rooms/{}/joined_members", enc(&room)),
                Some(&alice.access_token),
            )
            .await;
        members["joined"].get(&bob.user_id).is_some()
    })
    .await;
    (a, b, alice, carol, dave, bob, room)
}

#[tokio::test]
async fn remote_device_changes_reach_room_members_only() {
    let (a, b, alice, carol, _dave, bob, _room) = two_servers().await;
    let alice_since = sync(&a, &alice, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_since = sync(&a, &carol, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob's keys reach Alice's server: she sees him changed, and A answers
    // her query from the list it now holds.
    upload_keys(&b, &bob, "first-key").await;
    eventually("bob in alice's device_lists.changed", || async {
        changed(&sync(&a, &alice, Some(&alice_since)).await).contains(&bob.user_id)
    })
    .await;
    eventually("bob's first key on A", || async {
        let keys = query_keys(&a, &alice, &bob.user_id).await;
        keys["device_keys"][&bob.user_id][&bob.device_id]["keys"]
            [format!("ed25519:{}", bob.device_id)]
            == "first-key"
    })
    .await;

    // A rename travels as an update following on from the last (prev_id).
    let (status, body) = b
        .put(
            &format!("{V3}/devices/{}", enc(&bob.device_id)),
            Some(&bob.access_token),
            json!({"display_name": "Bob's phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("bob's device name on A", || async {
        let keys = query_keys(&a, &alice, &bob.user_id).await;
        keys["device_keys"][&bob.user_id][&bob.device_id]["unsigned"]["device_display_name"]
            == "Bob's phone"
    })
    .await;

    // Carol shares no room with Bob: none of it is hers to see.
    let c = sync(&a, &carol, Some(&carol_since)).await;
    assert!(!changed(&c).contains(&bob.user_id), "{c}");

    // Presence: Bob's status reaches Alice, not Carol.
    let (status, body) = b
        .put(
            &format!("{V3}/presence/{}/status", enc(&bob.user_id)),
            Some(&bob.access_token),
            json!({"presence": "online", "status_msg": "from B"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("bob's presence in alice's sync", || async {
        let s = sync(&a, &alice, Some(&alice_since)).await;
        s["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["sender"] == bob.user_id.as_str() && e["content"]["status_msg"] == "from B")
    })
    .await;
    let c = sync(&a, &carol, Some(&carol_since)).await;
    assert!(!presence_senders(&c).contains(&bob.user_id), "{c}");
    let (status, _) = a
        .get(
            &format!("{V3}/presence/{}/status", enc(&bob.user_id)),
            Some(&carol.access_token),
        )
        .await;
    assert_ne!(status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

/// An HTTPS client that trusts the development CA (as a peer server would).
fn https_client() -> reqwest::Client {
    let pem = std::fs::read(&dev_tls().ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// `from` sends `to` a transaction of EDUs, signed with its own key.
async fn send_edus(from: &TestServer, to: &TestServer, txn: &str, edus: Vec<Value>) {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let body = json!({"origin": from.name(), "origin_server_ts": 1, "pdus": [], "edus": edus});
    let origin = ruma::ServerName::parse(from.name()).unwrap();
    let destination = ruma::ServerName::parse(to.name()).unwrap();
    let mut object = lattice::domain::xmatrix::request_object(
        "PUT",
        &path,
        &origin,
        &destination,
        Some(body.clone().try_into().unwrap()),
    );
    let key = &from.state.signing_key.pair;
    ruma::signatures::sign_json(origin.as_str(), key, &mut object).unwrap();
    let object = serde_json::to_value(&object).unwrap();
    let sig = object["signatures"][origin.as_str()]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let header = lattice::domain::xmatrix::XMatrix {
        origin: origin.clone(),
        destination: Some(destination),
        key: format!("ed25519:{}", key.version()).try_into().unwrap(),
        sig,
    }
    .to_header();
    let response = https_client()
        .put(format!("{}{}", to.federation_url(), path))
        .header("Authorization", header)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn updates_for_another_servers_users_are_ignored() {
    let (a, b, alice, _carol, dave, bob, _room) = two_servers().await;
    upload_keys(&a, &alice, "alice-key").await;
    let dave_since = sync(&a, &dave, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = a
        .put(
            &format!("{V3}/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.access_token),
            json!({"presence": "online", "status_msg": "mine"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // B claims things about Alice, a user of A, who shares a room with Bob.
    send_edus(
        &b,
        &a,
        "forged-1",
        vec![
            json!({"edu_type": "m.device_list_update", "content": {
                "user_id": alice.user_id, "device_id": "EVIL", "stream_id": 99,
                "prev_id": [], "deleted": false,
                "keys": {"user_id": alice.user_id, "device_id": "EVIL",
                         "algorithms": [], "keys": {"ed25519:EVIL": "evil"}, "signatures": {}},
            }}),
            json!({"edu_type": "m.signing_key_update", "content": {
                "user_id": alice.user_id,
                "master_key": {"user_id": alice.user_id, "usage": ["master"],
                               "keys": {"ed25519:evil": "evil"}},
            }}),
            json!({"edu_type": "m.presence", "content": {"push": [
                {"user_id": alice.user_id, "presence": "unavailable", "status_msg": "forged",
                 "last_active_ago": 0},
            ]}}),
        ],
    )
    .await;
    // And a genuine update of Bob's, so we know the transaction was handled.
    upload_keys(&b, &bob, "bob-key").await;
    eventually("bob's key on A", || async {
        let keys = query_keys(&a, &dave, &bob.user_id).await;
        keys["device_keys"][&bob.user_id][&bob.device_id]["keys"]
            [format!("ed25519:{}", bob.device_id)]
            == "bob-key"
    })
    .await;

    // Alice's keys and presence on A are hers alone.
    let keys = query_keys(&a, &dave, &alice.user_id).await;
    let devices = keys["device_keys"][&alice.user_id].as_object().unwrap();
    assert!(!devices.contains_key("EVIL"), "{keys}");
    assert!(keys["master_keys"].get(&alice.user_id).is_none(), "{keys}");
    let (status, presence) = a
        .get(
            &format!("{V3}/presence/{}/status", enc(&alice.user_id)),
            Some(&dave.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{presence}");
    assert_eq!(presence["status_msg"], "mine", "{presence}");
    assert_eq!(presence["presence"], "online", "{presence}");
    // Dave was told of Bob's change, nothing of Alice's (the forged update).
    let s = sync(&a, &dave, Some(&dave_since)).await;
    assert!(changed(&s).contains(&bob.user_id), "{s}");
    assert!(!changed(&s).contains(&alice.user_id), "{s}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn device_list_of_a_user_who_shares_no_room_is_not_held() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    upload_keys(&b, &bob, "lonely-key").await;
    // No shared room: B's update about Bob is dropped, and a query asks B.
    send_edus(
        &b,
        &a,
        "unshared-1",
        vec![json!({"edu_type": "m.device_list_update", "content": {
            "user_id": bob.user_id, "device_id": bob.device_id, "stream_id": 5,
            "prev_id": [], "deleted": false,
        }})],
    )
    .await;
    let s = sync(&a, &alice, None).await;
    let since = s["next_batch"].as_str().unwrap().to_owned();
    let s = sync(&a, &alice, Some(&since)).await;
    assert!(!changed(&s).contains(&bob.user_id), "{s}");
    let held: i64 = sqlx::query_scalar("select count(*) from remote_device_lists")
        .fetch_one(&a.state.db)
        .await
        .unwrap();
    assert_eq!(held, 0);
    let keys = query_keys(&a, &alice, &bob.user_id).await;
    assert_eq!(
        keys["device_keys"][&bob.user_id][&bob.device_id]["keys"]
            [format!("ed25519:{}", bob.device_id)],
        "lonely-key",
        "{keys}"
    );
    a.stop().await;
    b.stop().await;
}
