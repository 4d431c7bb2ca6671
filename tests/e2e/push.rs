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
