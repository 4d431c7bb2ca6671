//! Push rules: the defaults, and changing them (stored as `m.push_rules` account
//! data, which sync delivers).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestServer;

const RULES: &str = "/_matrix/client/v3/pushrules/global";

#[tokio::test]
async fn push_rules_crud_and_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());

    let (status, rule) = server
        .get(&format!("{RULES}/override/.m.rule.master"), t)
        .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["enabled"], false);

    let (status, body) = server
        .put(
            &format!("{RULES}/content/cats"),
            t,
            json!({ "pattern": "cat*", "actions": ["notify", { "set_tweak": "highlight" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, rule) = server.get(&format!("{RULES}/content/cats"), t).await;
    assert_eq!(rule["pattern"], "cat*");
    assert_eq!(rule["default"], false);

    let (status, _) = server
        .put(
            &format!("{RULES}/content/cats/enabled"),
            t,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, enabled) = server
        .get(&format!("{RULES}/content/cats/enabled"), t)
        .await;
    assert_eq!(enabled, json!({ "enabled": false }));
    let (status, _) = server
        .put(
            &format!("{RULES}/content/cats/actions"),
            t,
            json!({ "actions": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, actions) = server
        .get(&format!("{RULES}/content/cats/actions"), t)
        .await;
    assert_eq!(actions, json!({ "actions": [] }));

    // Sync carries the changed rules as m.push_rules account data.
    let (_, sync) = server.get("/_matrix/client/v3/sync", t).await;
    let pr = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in sync")
        .clone();
    assert!(
        pr["content"]["global"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule_id"] == "cats"),
        "{pr}"
    );

    let (status, _) = server
        .call(Method::DELETE, &format!("{RULES}/content/cats"), t, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&format!("{RULES}/content/cats"), t).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    // Server-default rules cannot be deleted, nor rules created with a dot.
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("{RULES}/override/.m.rule.master"),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .put(&format!("{RULES}/room/.x"), t, json!({ "actions": [] }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Setting m.push_rules directly is refused.
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                alice.user_id
            ),
            t,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unread_counts_follow_push_rules_and_receipts() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let v3 = "/_matrix/client/v3";
    let (_, created) = server
        .post(
            &format!("{v3}/createRoom"),
            Some(&alice.access_token),
            json!({ "preset": "public_chat" }),
        )
        .await;
    let r = created["room_id"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("{v3}/rooms/{r}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let send = |txn: &'static str, content: serde_json::Value| {
        let server = &server;
        let token = alice.access_token.clone();
        let r = r.clone();
        async move {
            let (status, body) = server
                .put(
                    &format!("{v3}/rooms/{r}/send/m.room.message/{txn}"),
                    Some(&token),
                    content,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    send("1", json!({ "msgtype": "m.text", "body": "hello" })).await;
    let last = send(
        "2",
        json!({ "msgtype": "m.text", "body": "look", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    // Bob muted nothing: both notify, the mention highlights.
    let counts = |who: &crate::harness::Login| {
        let server = &server;
        let token = who.access_token.clone();
        let r = r.clone();
        async move {
            let (_, s) = server.get(&format!("{v3}/sync"), Some(&token)).await;
            s["rooms"]["join"][&r]["unread_notifications"].clone()
        }
    };
    assert_eq!(
        counts(&bob).await,
        json!({ "notification_count": 2, "highlight_count": 1 })
    );
    // The sender is never notified by their own events.
    assert_eq!(
        counts(&alice).await,
        json!({ "notification_count": 0, "highlight_count": 0 })
    );
    // A rule that silences the room for Bob stops further notifications.
    let (status, body) = server
        .put(
            &format!("{RULES}/room/{r}"),
            Some(&bob.access_token),
            json!({ "actions": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send("3", json!({ "msgtype": "m.text", "body": "quiet" })).await;
    assert_eq!(counts(&bob).await["notification_count"], 2);
    // Reading up to the last event clears the counts.
    let (status, _) = server
        .post(
            &format!("{v3}/rooms/{r}/receipt/m.read/{last}"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        counts(&bob).await,
        json!({ "notification_count": 0, "highlight_count": 0 })
    );
}
