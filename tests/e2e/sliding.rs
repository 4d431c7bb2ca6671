//! Simplified sliding sync (MSC4186) over HTTP: lists, ranges, ordering,
//! incremental responses, long-poll, subscriptions, invites and extensions.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn slide(server: &TestServer, who: &Login, query: &str, body: Value) -> Value {
    let (status, response) = server
        .post(&format!("{PATH}{query}"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

fn all_rooms(range_end: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": [[0, range_end]],
            "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
        } },
        "extensions": {
            "e2ee": { "enabled": true },
            "to_device": { "enabled": true },
            "account_data": { "enabled": true },
        },
    })
}

#[tokio::test]
async fn sliding_sync_lists_rooms_by_recency_and_sends_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let alpha = server
        .create_room(&alice, json!({ "name": "Alpha", "preset": "public_chat" }))
        .await;
    let beta = server.create_room(&alice, json!({})).await;
    server
        .send_message(&alice, &alpha, json!({ "msgtype": "m.text", "body": "a1" }))
        .await;
    server
        .send_message(&alice, &beta, json!({ "msgtype": "m.text", "body": "b1" }))
        .await;
    let a2 = server
        .send_message(&alice, &alpha, json!({ "msgtype": "m.text", "body": "a2" }))
        .await;

    // The client advertises support where Synapse does.
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(
        versions["unstable_features"]["org.matrix.simplified_msc3575"],
        true
    );

    let first = slide(&server, &alice, "", all_rooms(10)).await;
    assert_eq!(first["lists"]["all"]["count"], 2, "{first}");
    let pos = first["pos"].as_str().expect("pos").to_owned();
    let a = &first["rooms"][&alpha];
    assert_eq!(a["initial"], true);
    assert_eq!(a["name"], "Alpha");
    assert_eq!(a["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(a["timeline"][0]["event_id"], a2.as_str());
    assert_eq!(a["limited"], true);
    assert!(a["prev_batch"].is_string());
    assert_eq!(a["joined_count"], 1);
    // required_state: the name, and Alice's member event (she sent the timeline).
    let state = a["required_state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{a}");
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
    );
    assert!(!state.iter().any(|e| e["type"] == "m.room.join_rules"));
    // The room with the newest message sorts first.
    assert!(
        a["bump_stamp"].as_i64().unwrap() > first["rooms"][&beta]["bump_stamp"].as_i64().unwrap()
    );
    assert!(first["rooms"][&beta].get("name").is_none());
    assert!(first["rooms"][&beta]["heroes"].is_array());
    // Extensions: the default push rules, key counts.
    let global = first["extensions"]["account_data"]["global"]
        .as_array()
        .unwrap();
    assert!(global.iter().any(|e| e["type"] == "m.push_rules"));
    // The e2ee extension says fallback keys are supported, and counts
    // `signed_curve25519` even with no key uploaded.
    let e2ee = &first["extensions"]["e2ee"];
    assert!(
        e2ee["device_unused_fallback_key_types"].is_array(),
        "{e2ee}"
    );
    assert_eq!(
        e2ee["device_one_time_keys_count"],
        json!({ "signed_curve25519": 0 }),
        "{e2ee}"
    );
    assert!(first["extensions"]["to_device"]["next_batch"].is_string());

    // Only the newest room fits a one-room range.
    // (On a connection of its own: a request without pos restarts its connection.)
    let mut body = all_rooms(0);
    body["conn_id"] = "narrow".into();
    let narrow = slide(&server, &alice, "", body).await;
    let rooms = narrow["rooms"].as_object().unwrap();
    assert_eq!(rooms.len(), 1, "{narrow}");
    assert!(rooms.contains_key(&alpha));

    // Incremental: only the room that changed, only the new event.
    let b2 = server
        .send_message(&alice, &beta, json!({ "msgtype": "m.text", "body": "b2" }))
        .await;
    let next = slide(&server, &alice, &format!("?pos={pos}"), all_rooms(10)).await;
    let rooms = next["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&beta], "{next}");
    let b = &rooms[&beta];
    assert!(b.get("initial").is_none());
    assert_eq!(b["num_live"], 1);
    assert_eq!(b["timeline"][0]["event_id"], b2.as_str());
    let pos = next["pos"].as_str().unwrap().to_owned();

    // Long-poll: nothing new, then a message wakes it.
    let query = format!("?pos={pos}&timeout=20000");
    let parked = server.parked();
    let poll = slide(&server, &alice, &query, all_rooms(10));
    let send = async {
        server.until_parked(parked).await;
        server
            .send_message(&alice, &alpha, json!({ "msgtype": "m.text", "body": "a3" }))
            .await
    };
    let (woke, a3) = tokio::join!(poll, send);
    assert_eq!(
        woke["rooms"][&alpha]["timeline"][0]["event_id"],
        a3.as_str(),
        "{woke}"
    );
    let pos = woke["pos"].as_str().unwrap().to_owned();
    // Empty at timeout.
    let idle = slide(
        &server,
        &alice,
        &format!("?pos={pos}&timeout=200"),
        all_rooms(10),
    )
    .await;
    assert!(
        idle["rooms"].as_object().is_none_or(|r| r.is_empty()),
        "{idle}"
    );
    // The same pos may be retried (a lost response).
    let retried = slide(&server, &alice, &format!("?pos={pos}"), all_rooms(10)).await;
    assert!(retried["pos"].is_string());

    // An unknown pos: the client must start over.
    let (status, body) = server
        .post(
            &format!("{PATH}?pos=999999"),
            Some(&alice.access_token),
            all_rooms(10),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_UNKNOWN_POS"))
    );

    // Bob: an invite shows with its stripped state; a subscription outside
    // any list is sent in full.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{beta}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.join(&bob, &alpha).await;
    let bobs = slide(
        &server,
        &bob,
        "",
        json!({
            "lists": { "invites": {
                "ranges": [[0, 5]], "timeline_limit": 0,
                "filters": { "is_invite": true },
            } },
            "room_subscriptions": { (alpha.clone()): {
                "timeline_limit": 2, "required_state": [["*", "*"]],
            } },
        }),
    )
    .await;
    assert_eq!(bobs["lists"]["invites"]["count"], 1, "{bobs}");
    let invite = &bobs["rooms"][&beta];
    assert!(
        invite["invite_state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "{invite}"
    );
    let sub = &bobs["rooms"][&alpha];
    assert_eq!(sub["timeline"].as_array().unwrap().len(), 2, "{sub}");
    assert!(
        sub["required_state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.join_rules")
    );
    assert_eq!(sub["joined_count"], 2);
}

#[tokio::test]
async fn sliding_sync_to_device_extension_acknowledges_with_since() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let ext = |since: Option<&str>| {
        let mut to_device = json!({ "enabled": true });
        if let Some(s) = since {
            to_device["since"] = s.into();
        }
        json!({ "extensions": { "to_device": to_device } })
    };
    let first = slide(&server, &bob, "", ext(None)).await;
    let since = first["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let pos = first["pos"].as_str().unwrap().to_owned();
    let (status, _) = server
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            Some(&alice.access_token),
            json!({ "messages": { (bob.user_id.clone()): { (bob.device_id.clone()): { "n": 1 } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = slide(
        &server,
        &bob,
        &format!("?pos={pos}&timeout=10000"),
        ext(Some(&since)),
    )
    .await;
    let td = &got["extensions"]["to_device"];
    assert_eq!(td["events"][0]["type"], "m.test", "{got}");
    assert_eq!(td["events"][0]["content"]["n"], 1);
    let next_since = td["next_batch"].as_str().unwrap().to_owned();
    let pos = got["pos"].as_str().unwrap().to_owned();
    // Presenting the new since acknowledges: nothing again.
    let again = slide(
        &server,
        &bob,
        &format!("?pos={pos}"),
        ext(Some(&next_since)),
    )
    .await;
    assert!(
        again["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{again}"
    );
}
