//! Push rules: the defaults, and changing them (stored as `m.push_rules` account
//! data, which sync delivers).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Login, TestServer, enc, password_auth};

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

#[tokio::test]
async fn notifications_list_and_thread_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let v3 = "/_matrix/client/v3";
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let root = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "root" }),
        )
        .await;
    let reply = server
        .send_message(
            &alice,
            &room,
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.mentions": { "user_ids": [bob.user_id] },
                "m.relates_to": { "rel_type": "m.thread", "event_id": root },
            }),
        )
        .await;

    // /notifications: newest first, highlight filter, read flags.
    let t = Some(bob.access_token.as_str());
    let (status, list) = server.get(&format!("{v3}/notifications"), t).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let n = list["notifications"].as_array().unwrap();
    assert_eq!(n.len(), 2, "{list}");
    assert_eq!(n[0]["event"]["event_id"], reply.as_str());
    assert_eq!(n[0]["room_id"], room.as_str());
    assert_eq!(n[0]["read"], false);
    assert!(
        n[0].as_object().unwrap().contains_key("profile_tag"),
        "{list}"
    );
    assert!(
        n[0]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["set_tweak"] == "highlight"),
        "{list}"
    );
    let (_, highlights) = server
        .get(&format!("{v3}/notifications?only=highlight"), t)
        .await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let (_, paged) = server.get(&format!("{v3}/notifications?limit=1"), t).await;
    let next = paged["next_token"].as_str().expect("next_token").to_owned();
    let (_, rest) = server
        .get(&format!("{v3}/notifications?limit=1&from={next}"), t)
        .await;
    assert_eq!(rest["notifications"][0]["event"]["event_id"], root.as_str());

    // Counts split by thread when the filter asks.
    let filter = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;
    let sync = || {
        let url = format!("{v3}/sync?filter={filter}");
        let token = bob.access_token.clone();
        let server = &server;
        async move { server.get(&url, Some(&token)).await.1 }
    };
    let s = sync().await;
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(
        joined["unread_notifications"],
        json!({ "notification_count": 1, "highlight_count": 0 }),
        "{joined}"
    );
    assert_eq!(
        joined["unread_thread_notifications"][&root],
        json!({ "notification_count": 1, "highlight_count": 1 })
    );
    // A threaded receipt clears the thread only.
    let (status, body) = server
        .post(
            &format!("{v3}/rooms/{room}/receipt/m.read/{reply}"),
            t,
            json!({ "thread_id": root }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s = sync().await;
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1);
    assert!(
        joined["unread_thread_notifications"].get(&root).is_none(),
        "{joined}"
    );
    // Without the filter option, one total.
    let (_, plain) = server.get(&format!("{v3}/sync"), t).await;
    assert_eq!(
        plain["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        1
    );
    assert!(
        plain["rooms"]["join"][&room]
            .get("unread_thread_notifications")
            .is_none()
    );
}

/// A push gateway on loopback: answers 503 to the first request, then 200, and
/// reports each notification it accepted.
async fn gateway(
    reject: &'static str,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/_matrix/push/v1/notify",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let tx = tx.clone();
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({})),
                    );
                }
                let rejected = body["notification"]["devices"][0]["pushkey"] == reject;
                tx.send(body).unwrap();
                let rejected: Vec<&str> = if rejected { vec![reject] } else { vec![] };
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({ "rejected": rejected })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/_matrix/push/v1/notify"), rx)
}

#[tokio::test]
async fn pushers_deliver_to_the_gateway_with_retry() {
    // Gateways are reached under the outbound address policy: allow the one
    // loopback address the test gateway listens on.
    let server =
        TestServer::start_with(|c| c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()])
            .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let v3 = "/_matrix/client/v3";
    let t = Some(bob.access_token.as_str());
    let (url, mut received) = gateway("gone-key").await;
    let pusher = |pushkey: &str, url: &str| {
        json!({
            "pushkey": pushkey, "kind": "http", "app_id": "org.example.app",
            "app_display_name": "Example", "device_display_name": "Phone",
            "lang": "en", "data": { "url": url, "extra": 1 },
        })
    };
    // The URL must be the push gateway's notify path.
    let (status, body) = server
        .post(
            &format!("{v3}/pushers/set"),
            t,
            pusher("k1", "http://127.0.0.1:1/elsewhere"),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
    let (status, body) = server
        .post(&format!("{v3}/pushers/set"), t, pusher("k1", &url))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = server.get(&format!("{v3}/pushers"), t).await;
    assert_eq!(listed["pushers"][0]["pushkey"], "k1");
    assert_eq!(listed["pushers"][0]["data"]["url"], url.as_str());

    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let event = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "ping" }),
        )
        .await;
    // The first attempt gets 503; the retry after backoff is accepted.
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("gateway called within 30 s")
        .unwrap();
    let n = &got["notification"];
    assert_eq!(n["event_id"], event.as_str(), "{got}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["content"]["body"], "ping");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["pushkey"], "k1");
    assert_eq!(n["devices"][0]["data"], json!({ "extra": 1 }));

    // Someone else's read receipt changes nothing of Bob's: no push.
    let receipt = format!("{v3}/rooms/{room}/receipt/m.read/{event}");
    let (status, _) = server
        .post(&receipt, Some(&alice.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(received.try_recv().is_err(), "Alice's receipt pushed Bob");
    // Bob's own receipt: a badge-only push with his new unread count and no
    // event, as Synapse sends (SyTest "Test that a message is pushed").
    let (status, _) = server.post(&receipt, t, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("badge within 30 s")
        .unwrap();
    let n = &got["notification"];
    assert_eq!(n["counts"]["unread"], 0, "{got}");
    assert!(n.get("event_id").is_none(), "{got}");
    assert_eq!(n["id"], "");
    assert_eq!(n["devices"][0]["pushkey"], "k1");
    assert_eq!(n["devices"][0]["data"], json!({ "extra": 1 }));

    // Deleting with kind null.
    let mut delete = pusher("k1", &url);
    delete["kind"] = serde_json::Value::Null;
    let (status, _) = server.post(&format!("{v3}/pushers/set"), t, delete).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = server.get(&format!("{v3}/pushers"), t).await;
    assert_eq!(listed["pushers"], json!([]));

    // A pushkey the gateway rejects is removed.
    let (status, _) = server
        .post(&format!("{v3}/pushers/set"), t, pusher("gone-key", &url))
        .await;
    assert_eq!(status, StatusCode::OK);
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "again" }),
        )
        .await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("gateway called")
        .unwrap();
    assert_eq!(got["notification"]["devices"][0]["pushkey"], "gone-key");
    let mut gone = false;
    for _ in 0..50 {
        let (_, listed) = server.get(&format!("{v3}/pushers"), t).await;
        if listed["pushers"] == json!([]) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "rejected pusher removed");
}

/// A push gateway that accepts connections and never answers (each request
/// runs into the push client's 15 s timeout).
async fn dead_gateway() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}/_matrix/push/v1/notify")
}

/// One slow or dead gateway delays only its own pushers: with three users'
/// pushers on a gateway that never answers (15 s each, 45 s in a row), a
/// fourth user's pusher on a working gateway is still called promptly.
#[tokio::test]
async fn a_dead_gateway_delays_only_its_own_pushers() {
    let server =
        TestServer::start_with(|c| c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()])
            .await;
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let dead = dead_gateway().await;
    let (live, mut received) = gateway("none").await;
    for (name, url) in [
        ("aa1", &dead),
        ("aa2", &dead),
        ("aa3", &dead),
        ("zz", &live),
    ] {
        let user = server.register(name, "pw").await;
        server.join(&user, &room).await;
        let (status, body) = server
            .post(
                "/_matrix/client/v3/pushers/set",
                Some(&user.access_token),
                json!({
                    "pushkey": format!("key-{name}"), "kind": "http", "app_id": "org.example.app",
                    "app_display_name": "Example", "device_display_name": "Phone",
                    "lang": "en", "data": { "url": url },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "ping" }),
        )
        .await;
    // The working gateway answers 503 once, then takes the retry (1 s later).
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("the working gateway is called while the dead one hangs")
        .unwrap();
    assert_eq!(got["notification"]["devices"][0]["pushkey"], "key-zz");
    assert_eq!(got["notification"]["content"]["body"], "ping");
    server.stop().await;
}

/// The ids of the rules of one kind, as `GET /pushrules/` lists them.
async fn rule_ids(server: &TestServer, token: &str, kind: &str) -> Vec<String> {
    let (status, all) = server
        .get("/_matrix/client/v3/pushrules/", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    all["global"][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn push_rules_of_every_kind_are_added_listed_ordered_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let notify = || json!({ "actions": ["notify"] });
    let notice =
        json!([{ "kind": "event_match", "key": "content.msgtype", "pattern": "m.notice" }]);
    // A room rule may be named by an alias (Synapse takes any string), a content
    // rule by any text.
    let added = [
        ("room", "#spam:example.com", notify()),
        ("sender", "@bob:example.com", notify()),
        (
            "content",
            "тест",
            json!({ "actions": ["notify"], "pattern": "тест" }),
        ),
        (
            "override",
            "mine",
            json!({ "actions": ["notify"], "conditions": notice }),
        ),
        (
            "underride",
            "mine",
            json!({ "actions": ["notify"], "conditions": notice }),
        ),
    ];
    for (kind, id, body) in &added {
        let path = format!("{RULES}/{kind}/{}", enc(id));
        let (status, reply) = server.put(&path, t, body.clone()).await;
        assert_eq!(
            (status, reply.clone()),
            (StatusCode::OK, json!({})),
            "{kind}"
        );
        let (status, rule) = server.get(&path, t).await;
        assert_eq!(status, StatusCode::OK, "{rule}");
        assert_eq!(
            (&rule["rule_id"], &rule["enabled"], &rule["default"]),
            (&json!(id), &json!(true), &json!(false)),
            "{rule}"
        );
        // The kind's listing (trailing slash), the scope's and the whole set.
        let (status, listed) = server.get(&format!("{RULES}/{kind}/"), t).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        assert!(listed.as_array().unwrap().contains(&rule), "{listed}");
        let (_, scope) = server.get(&format!("{RULES}/"), t).await;
        assert!(scope[kind].as_array().unwrap().contains(&rule), "{scope}");
        assert!(
            rule_ids(&server, &alice.access_token, kind)
                .await
                .contains(&id.to_string())
        );
        let (_, enabled) = server.get(&format!("{path}/enabled"), t).await;
        assert_eq!(enabled, json!({ "enabled": true }));
        let (_, actions) = server.get(&format!("{path}/actions"), t).await;
        assert_eq!(actions, json!({ "actions": ["notify"] }));
    }
    // A user override rule comes right after `.m.rule.master`.
    let overrides = rule_ids(&server, &alice.access_token, "override").await;
    assert_eq!(overrides[..2], [".m.rule.master", "mine"]);

    // New rules go first; `before` and `after` place them among user rules.
    let room = |id: &str| format!("{RULES}/room/{}", enc(id));
    server.put(&room("#a:x"), t, notify()).await;
    server.put(&room("#b:x"), t, notify()).await;
    let (status, _) = server
        .put(
            &format!("{}?before={}", room("#c:x"), enc("#a:x")),
            t,
            notify(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!("{}?after={}", room("#d:x"), enc("#b:x")),
            t,
            notify(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rule_ids(&server, &alice.access_token, "room").await,
        ["#b:x", "#d:x", "#c:x", "#a:x", "#spam:example.com"]
    );
    // Relative to a rule that does not exist, or to a server-default rule: 400.
    let (status, body) = server
        .put(&format!("{}?before=nope", room("#e:x")), t, notify())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .put(
            &format!("{RULES}/override/x?after=.m.rule.master"),
            t,
            json!({ "actions": [], "conditions": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Disabling, then deleting.
    let (status, _) = server
        .put(
            &format!("{}/enabled", room("#a:x")),
            t,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, rule) = server.get(&room("#a:x"), t).await;
    assert_eq!(rule["enabled"], false);
    let (status, _) = server.call(Method::DELETE, &room("#a:x"), t, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&room("#a:x"), t).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    assert_eq!(
        rule_ids(&server, &alice.access_token, "room").await,
        ["#b:x", "#d:x", "#c:x", "#spam:example.com"]
    );
    // m.push_rules (what sync carries) holds the alias-named rule too.
    let (_, sync) = server.get("/_matrix/client/v3/sync", t).await;
    let rules = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in sync")
        .clone();
    assert_eq!(
        rules["content"]["global"]["room"][0]["rule_id"], "#b:x",
        "{rules}"
    );

    // Rules are per user: bob neither sees nor touches alice's.
    let bob = server.register("bob", "pw").await;
    let b = Some(bob.access_token.as_str());
    let (status, _) = server.get(&room("#b:x"), b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call(Method::DELETE, &room("#b:x"), b, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .put(
            &format!("{}/enabled", room("#b:x")),
            b,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        rule_ids(&server, &bob.access_token, "room")
            .await
            .is_empty()
    );
    let (_, rule) = server.get(&room("#b:x"), t).await;
    assert_eq!(rule["enabled"], true);
}

#[tokio::test]
async fn malformed_push_rule_requests_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let v3 = "/_matrix/client/v3/pushrules";
    let notify = json!({ "actions": ["notify"] });

    // Paths naming no rule, listing or attribute: 400 M_UNRECOGNIZED (Synapse).
    let paths = [
        (Method::PUT, "/"),
        (Method::PUT, "/not_a_scope/room/x"),
        (Method::PUT, "/global"),
        (Method::PUT, "/global/"),
        (Method::PUT, "/global/room"),
        (Method::PUT, "/global/room/"),
        (Method::PUT, "/global/not_a_kind/x"),
        (Method::PUT, "/global/override/.m.rule.master/not_an_attr"),
        (Method::DELETE, "/global/room"),
        (Method::GET, "/global"),
        (Method::GET, "/global/room"),
        (Method::GET, "/not_a_scope/"),
        (Method::GET, "/global/not_a_kind/"),
        (Method::GET, "/global/not_a_kind/x"),
        (Method::GET, "/global/override/.m.rule.master/not_an_attr"),
    ];
    for (method, path) in paths {
        let (status, body) = server
            .call(
                method.clone(),
                &format!("{v3}{path}"),
                t,
                Some(notify.clone()),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_UNRECOGNIZED")),
            "{method} {path}: {body}"
        );
    }
    // Without a trailing slash `/pushrules` is no endpoint at all.
    let (status, _) = server.get(v3, t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // These still need an access token.
    let (status, _) = server.get(&format!("{v3}/global/room"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bodies and rule IDs the spec or Synapse refuse: 400, and nothing stored.
    let bodies = [
        ("override/x", json!({ "actions": ["notify"] })),
        (
            "underride/x",
            json!({ "actions": ["notify"], "conditions": [{}] }),
        ),
        ("content/x", json!({ "actions": ["notify"] })),
        ("room/%23r:x", json!({})),
        ("room/%23r:x", json!({ "actions": ["not_an_action"] })),
        ("room/%23r:x", json!({ "actions": [{ "tweak": "sound" }] })),
        ("room/.reserved", json!({ "actions": ["notify"] })),
        ("room/a%5Cb", json!({ "actions": ["notify"] })),
        ("room/%23r:x", json!(["notify"])),
    ];
    for (path, body) in bodies {
        let (status, reply) = server
            .put(&format!("{v3}/global/{path}"), t, body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {reply}");
    }
    let (status, body) = server
        .put(
            &format!("{v3}/global/override/.m.rule.master/actions"),
            t,
            json!({ "actions": ["not_an_action"] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .put(
            &format!("{v3}/global/override/.m.rule.master/enabled"),
            t,
            json!({ "enabled": "yes" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server.get(&format!("{v3}/global/override/nope"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        rule_ids(&server, &alice.access_token, "room")
            .await
            .is_empty()
    );
    assert!(
        rule_ids(&server, &alice.access_token, "content")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn invites_are_pushed_to_the_invitee() {
    let server =
        TestServer::start_with(|c| c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()])
            .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (url, mut received) = gateway("none").await;
    server.set_http_pusher(&alice, &url).await;
    let room = server
        .create_room(&bob, json!({ "preset": "private_chat" }))
        .await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&bob.access_token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // `.m.rule.invite_for_me` notifies alice though she is not in the room.
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("gateway called within 30 s")
        .unwrap();
    let n = &got["notification"];
    assert_eq!(n["type"], "m.room.member", "{got}");
    assert_eq!(n["membership"], "invite", "{got}");
    assert_eq!(n["user_is_target"], true, "{got}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["sender"], bob.user_id.as_str());
    // Synapse's deprecated `id` beside `event_id`.
    assert!(n["event_id"].is_string(), "{got}");
    assert_eq!(n["id"], n["event_id"], "{got}");
    // /notifications lists it too.
    let (_, listed) = server
        .get(
            "/_matrix/client/v3/notifications",
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(
        listed["notifications"][0]["event"]["content"]["membership"], "invite",
        "{listed}"
    );
}

async fn set_pusher(server: &TestServer, who: &Login, pushkey: &str) {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&who.access_token),
            json!({
                "pushkey": pushkey, "kind": "http", "app_id": "org.example.app",
                "app_display_name": "Example", "device_display_name": "Phone",
                "lang": "en", "append": true,
                "data": { "url": "https://push.example.org/_matrix/push/v1/notify" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn pushkeys(server: &TestServer, who: &Login) -> Vec<String> {
    let (status, body) = server
        .get("/_matrix/client/v3/pushers", Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut keys: Vec<String> = body["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

async fn change_password(server: &TestServer, who: &Login, old: &str, new: &str, logout: bool) {
    let path = "/_matrix/client/v3/account/password";
    let token = Some(who.access_token.as_str());
    let (status, body) = server.post(path, token, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            path,
            token,
            json!({
                "new_password": new, "logout_devices": logout,
                "auth": password_auth(&who.user_id, old, &session),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn pushers_go_with_the_sessions_that_set_them() {
    let server = TestServer::start().await;
    let main = server.register("pat", "one").await;
    let other = Login::from_json(&server.login("pat", "one").await.1);
    set_pusher(&server, &main, "main-key").await;
    set_pusher(&server, &other, "other-key").await;
    assert_eq!(pushkeys(&server, &main).await, ["main-key", "other-key"]);

    // Keeping the other sessions keeps their pushers.
    change_password(&server, &main, "one", "two", false).await;
    assert_eq!(pushkeys(&server, &main).await, ["main-key", "other-key"]);
    // Logging them out (the default) deletes their pushers, not this session's.
    change_password(&server, &main, "two", "three", true).await;
    assert_eq!(pushkeys(&server, &main).await, ["main-key"]);

    // Logging out deletes the session's pushers too, as does deleting its device.
    let third = Login::from_json(&server.login("pat", "three").await.1);
    set_pusher(&server, &third, "third-key").await;
    let (status, _) = server
        .post(
            "/_matrix/client/v3/logout",
            Some(&third.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pushkeys(&server, &main).await, ["main-key"]);
    // A pusher set again from another session moves to that session.
    let fourth = Login::from_json(&server.login("pat", "three").await.1);
    set_pusher(&server, &fourth, "main-key").await;
    let (status, _) = server
        .post(
            "/_matrix/client/v3/logout",
            Some(&fourth.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(pushkeys(&server, &main).await.is_empty());
}

/// An invite from another server into a room this server is not in comes
/// through the federation invite API, not the event writer, and is pushed all
/// the same (as Synapse pushes it; SyTest "Invites over federation are
/// correctly pushed [with name]"): named from the stripped state sent with
/// it, listed in `/notifications`, and only when the invitee's own rules say
/// so.
#[tokio::test]
async fn invites_from_another_server_are_pushed_by_the_invitees_rules() {
    let home = TestServer::start_federating().await;
    let remote = TestServer::start_federating().await;
    let v3 = "/_matrix/client/v3";
    let alice = home.register("alice", "pw").await;
    let carol = home.register("carol", "pw").await;
    let bob = remote.register("bob", "pw").await;
    let (url, mut received) = gateway("no-such-key").await;
    home.set_http_pusher(&alice, &url).await;
    // Carol turned invites off: her rules, not the defaults, decide.
    let (status, body) = home
        .put(
            &format!("{RULES}/override/.m.rule.invite_for_me/enabled"),
            Some(&carol.access_token),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let room = remote
        .create_room(
            &bob,
            json!({ "preset": "private_chat", "name": "Test Name" }),
        )
        .await;
    for invitee in [&carol, &alice] {
        let (status, body) = remote
            .post(
                &format!("{v3}/rooms/{room}/invite"),
                Some(&bob.access_token),
                json!({ "user_id": invitee.user_id }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // The gateway's first answer is a 503; the retry is accepted.
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
        .await
        .expect("the invite pushed within 30 s")
        .unwrap();
    let n = &got["notification"];
    assert_eq!(n["type"], "m.room.member", "{got}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["sender"], bob.user_id.as_str());
    assert_eq!(n["membership"], "invite");
    assert_eq!(n["user_is_target"], true);
    assert_eq!(n["room_name"], "Test Name", "named from the stripped state");
    assert_eq!(n["devices"][0]["pushkey"], "k1");

    let (status, listed) = home
        .get(&format!("{v3}/notifications"), Some(&alice.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let first = &listed["notifications"][0];
    assert_eq!(first["room_id"], room.as_str(), "{listed}");
    assert_eq!(first["event"]["type"], "m.room.member");
    assert_eq!(first["event"]["state_key"], alice.user_id.as_str());
    assert_eq!(first["event"]["content"]["membership"], "invite");

    let (status, listed) = home
        .get(&format!("{v3}/notifications"), Some(&carol.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed["notifications"],
        json!([]),
        "carol's disabled rule holds"
    );
}
