//! History a user may not see stays hidden on every read path: `invited`
//! visibility starts at the invite, and search neither returns nor counts
//! matches in hidden history.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc, messages};

const V3: &str = "/_matrix/client/v3";

fn msg(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

async fn search(server: &TestServer, who: &Login, term: &str, limit: u64) -> Value {
    let (status, body) = server
        .post(
            &format!("{V3}/search"),
            Some(&who.access_token),
            json!({"search_categories": {"room_events": {
                "search_term": term, "filter": {"limit": limit}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

#[tokio::test]
async fn invited_visibility_starts_at_the_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "private_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "invited"}}]}),
        )
        .await;
    let r = enc(&room);
    let early = server
        .send_message(&alice, &room, msg("quagga before invite"))
        .await;
    server
        .send_message(&alice, &room, msg("quagga also before"))
        .await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{r}/invite"),
            Some(&alice.access_token),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let invited = server
        .send_message(&alice, &room, msg("after invite"))
        .await;
    server.join(&bob, &room).await;
    server.send_message(&alice, &room, msg("after join")).await;

    // /messages
    assert_eq!(
        messages(&server, &bob.access_token, &room).await,
        vec!["after invite", "after join"]
    );
    // /event
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{r}/event/{}", enc(&early)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // /context: not of an earlier event, and not around a later one.
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{r}/context/{}", enc(&early)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{r}/context/{}?limit=20", enc(&invited)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains("quagga"), "{body}");
    // /sync (initial)
    let (status, body) = server
        .get(
            &format!(
                "{V3}/sync?filter={}",
                enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string())
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timeline = &body["rooms"]["join"][&room]["timeline"]["events"];
    assert!(timeline.to_string().contains("after invite"), "{timeline}");
    assert!(!timeline.to_string().contains("quagga"), "{timeline}");
    // /search: neither results nor count.
    let found = search(&server, &bob, "quagga", 10).await;
    assert_eq!(found["count"], 0, "{found}");
    assert_eq!(found["results"], json!([]), "{found}");
    // Alice, a member throughout, sees all of it.
    assert_eq!(
        messages(&server, &alice.access_token, &room).await,
        vec![
            "quagga before invite",
            "quagga also before",
            "after invite",
            "after join"
        ]
    );
}

#[tokio::test]
async fn search_counts_only_visible_history() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    server
        .send_message(&alice, &room, msg("the password is zanzibar"))
        .await;
    server
        .send_message(&alice, &room, msg("zanzibar again"))
        .await;
    server.join(&bob, &room).await;
    server
        .send_message(&alice, &room, msg("zebra crossing"))
        .await;

    // Bob joined after the secret: no prefix of it counts, or pages.
    for term in ["zanzibar", "zanz", "zan", "za"] {
        let found = search(&server, &bob, term, 1).await;
        assert_eq!(found["count"], 0, "{term}: {found}");
        assert_eq!(found["results"], json!([]), "{term}: {found}");
        assert!(found.get("next_batch").is_none(), "{term}: {found}");
    }
    // "z" matches the visible "zebra" only.
    let found = search(&server, &bob, "z", 1).await;
    assert_eq!(found["count"], 1, "{found}");
    assert_eq!(
        found["results"][0]["result"]["content"]["body"],
        "zebra crossing"
    );
    assert!(found.get("next_batch").is_none(), "{found}");
    // Alice sees what she may: the two, paged one at a time.
    let found = search(&server, &alice, "zan", 1).await;
    assert_eq!(found["count"], 2, "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "{found}");
    let next = found["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, body) = server
        .post(
            &format!("{V3}/search?next_batch={}", enc(&next)),
            Some(&alice.access_token),
            json!({"search_categories": {"room_events": {
                "search_term": "zan", "filter": {"limit": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = &body["search_categories"]["room_events"];
    assert_eq!(page["results"].as_array().unwrap().len(), 1, "{page}");
    assert!(page.get("next_batch").is_none(), "{page}");
    // Newest first pages the same way.
    let (status, body) = server
        .post(
            &format!("{V3}/search"),
            Some(&bob.access_token),
            json!({"search_categories": {"room_events": {
                "search_term": "za", "order_by": "recent", "filter": {"limit": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = &body["search_categories"]["room_events"];
    assert_eq!(page["count"], 0, "{page}");
    assert!(page.get("next_batch").is_none(), "{page}");
}

/// A user who left pages back from the room's end and sees history up to and
/// including their own leave, nothing after it (SyTest: "Can get
/// rooms/{roomId}/messages for a departed room (SPEC-216)").
#[tokio::test]
async fn a_departed_user_reads_up_to_their_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = server
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    server.join(&bob, &room).await;
    server.send_message(&alice, &room, msg("before")).await;
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.send_message(&alice, &room, msg("after")).await;
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&alice.access_token),
            json!({"name": "renamed after"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, page) = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=2", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2, "{page}");
    assert_eq!(chunk[0]["type"], "m.room.member");
    assert_eq!(chunk[0]["state_key"], bob.user_id.as_str());
    assert_eq!(chunk[0]["content"]["membership"], "leave");
    assert_eq!(chunk[1]["content"]["body"], "before", "{page}");
    assert!(!page.to_string().contains("after"), "{page}");
}

/// A history visibility change is visible to whoever could see either side
/// of it (the more permissive of the old and new settings, as Synapse): a
/// late joiner sees where the boundaries moved, not what they hid.
#[tokio::test]
async fn visibility_changes_are_seen_on_their_boundaries() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let set = |value: &'static str| {
        let server = &server;
        let token = alice.access_token.clone();
        let path = format!("{V3}/rooms/{}/state/m.room.history_visibility/", enc(&room));
        async move {
            let (status, body) = server
                .put(&path, Some(&token), json!({ "history_visibility": value }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    set("joined").await;
    server.send_message(&alice, &room, msg("one")).await;
    set("invited").await;
    server.send_message(&alice, &room, msg("two")).await;
    set("shared").await;
    server.send_message(&alice, &room, msg("three")).await;
    server.join(&bob, &room).await;

    let (_, sync) = server
        .get(&format!("{V3}/sync"), Some(&bob.access_token))
        .await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let seen: Vec<String> = timeline
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "m.room.history_visibility" => {
                format!(
                    "hv:{}",
                    e["content"]["history_visibility"].as_str().unwrap()
                )
            }
            "m.room.message" => format!("msg:{}", e["content"]["body"].as_str().unwrap()),
            other => other.to_owned(),
        })
        .collect();
    let tail = &seen[seen.len() - 4..];
    // shared→joined is seen (shared before); one, joined→invited and two are
    // not; invited→shared is (shared after), then three and bob's join.
    assert_eq!(
        tail,
        ["hv:joined", "hv:shared", "msg:three", "m.room.member"],
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s == "msg:one" || s == "msg:two" || s == "hv:invited"),
        "{seen:?}"
    );
}
