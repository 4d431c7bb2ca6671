//! Presence, the user directory and server-side search.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::TestServer;

const V3: &str = "/_matrix/client/v3";

fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user && e["type"] == "m.presence")
}

#[tokio::test]
async fn presence_is_shared_with_room_members_and_wakes_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;

    let status_path = format!("{V3}/presence/{}/status", alice.user_id);
    let (status, body) = server
        .put(
            &status_path,
            Some(&alice.access_token),
            json!({ "presence": "online", "status_msg": "writing tests" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Nobody sets another user's presence.
    let (status, _) = server
        .put(
            &status_path,
            Some(&bob.access_token),
            json!({ "presence": "offline" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, seen) = server.get(&status_path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "writing tests");
    assert_eq!(seen["currently_active"], true);
    // Carol shares no room with Alice.
    let (status, body) = server.get(&status_path, Some(&carol.access_token)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
    );

    // Bob's initial sync carries Alice's presence; Carol's does not.
    let (_, sync) = server
        .get(
            &format!("{V3}/sync?set_presence=offline"),
            Some(&bob.access_token),
        )
        .await;
    let p = presence_of(&sync, &alice.user_id).expect("alice's presence");
    assert_eq!(p["content"]["status_msg"], "writing tests");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, carol_sync) = server
        .get(&format!("{V3}/sync"), Some(&carol.access_token))
        .await;
    assert!(
        presence_of(&carol_sync, &alice.user_id).is_none(),
        "{carol_sync}"
    );

    // A change wakes Bob's long-poll.
    let parked = server.parked();
    let poll = {
        let url = format!("{V3}/sync?since={since}&timeout=20000&set_presence=offline");
        let token = bob.access_token.clone();
        let server = &server;
        async move { server.get(&url, Some(&token)).await }
    };
    let change = async {
        server.until_parked(parked).await;
        server
            .put(
                &status_path,
                Some(&alice.access_token),
                json!({ "presence": "unavailable" }),
            )
            .await
    };
    let ((status, woke), _) = tokio::join!(poll, change);
    assert_eq!(status, StatusCode::OK);
    let p = presence_of(&woke, &alice.user_id).expect("presence change");
    assert_eq!(p["content"]["presence"], "unavailable");
    assert!(p["content"].get("status_msg").is_none(), "{p}");

    // A filter that leaves out presence.
    let since = woke["next_batch"].as_str().unwrap().to_owned();
    server
        .put(
            &status_path,
            Some(&alice.access_token),
            json!({ "presence": "online" }),
        )
        .await;
    let filter = r#"{"presence":{"not_types":["m.presence"]}}"#;
    let (_, filtered) = server
        .get(
            &format!("{V3}/sync?since={since}&set_presence=offline&filter={filter}"),
            Some(&bob.access_token),
        )
        .await;
    assert!(
        presence_of(&filtered, &alice.user_id).is_none(),
        "{filtered}"
    );

    // Syncing makes an unknown user online.
    let (_, _) = server
        .get(&format!("{V3}/sync"), Some(&carol.access_token))
        .await;
    let (_, own) = server
        .get(
            &format!("{V3}/presence/{}/status", carol.user_id),
            Some(&carol.access_token),
        )
        .await;
    assert_eq!(own["presence"], "online");
}

#[tokio::test]
async fn user_directory_finds_room_mates_and_public_room_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let _dave = server.register("dave", "pw").await;
    let shared = server.create_room(&alice, json!({})).await;
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{shared}/invite"),
            Some(&alice.access_token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.join(&bob, &shared).await;
    server
        .create_room(
            &carol,
            json!({ "preset": "public_chat", "visibility": "public" }),
        )
        .await;
    let (status, _) = server
        .put(
            &format!("{V3}/profile/{}/displayname", bob.user_id),
            Some(&bob.access_token),
            json!({ "displayname": "Robert Tables" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let search = |term: &'static str| {
        let server = &server;
        let token = alice.access_token.clone();
        async move {
            let (status, body) = server
                .post(
                    &format!("{V3}/user_directory/search"),
                    Some(&token),
                    json!({ "search_term": term }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let found = search("rob").await;
    assert_eq!(ids(&found), vec![bob.user_id.clone()], "{found}");
    assert_eq!(found["results"][0]["display_name"], "Robert Tables");
    assert_eq!(found["limited"], false);
    assert_eq!(ids(&search("bob").await), vec![bob.user_id.clone()]);
    // Carol is in a published room; Dave shares nothing.
    assert_eq!(ids(&search("car").await), vec![carol.user_id.clone()]);
    assert!(ids(&search("dave").await).is_empty());
    // LIKE wildcards in the term are literal.
    assert!(ids(&search("%").await).is_empty());
    // The searcher is not visible to themself through a private room (as on
    // Synapse; SyTest "Users appear/disappear from directory when ... are
    // changed" starts from that).
    assert!(ids(&search("alice").await).is_empty());

    // A room is public for the directory by its state, not its listing (as
    // on Synapse): Erin's unlisted private room, opened and closed again.
    let erin = server.register("erin", "pw").await;
    let hers = server
        .create_room(&erin, json!({ "preset": "private_chat" }))
        .await;
    assert!(ids(&search("erin").await).is_empty());
    let set = |kind: &'static str, content: Value| {
        let server = &server;
        let token = erin.access_token.clone();
        let path = format!("{V3}/rooms/{hers}/state/{kind}/");
        async move {
            let (status, body) = server.put(&path, Some(&token), content).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    set("m.room.join_rules", json!({ "join_rule": "public" })).await;
    assert_eq!(ids(&search("erin").await), vec![erin.user_id.clone()]);
    set("m.room.join_rules", json!({ "join_rule": "invite" })).await;
    assert!(ids(&search("erin").await).is_empty());
    set(
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    assert_eq!(ids(&search("erin").await), vec![erin.user_id.clone()]);
    set(
        "m.room.history_visibility",
        json!({ "history_visibility": "shared" }),
    )
    .await;
    assert!(ids(&search("erin").await).is_empty());
}

#[tokio::test]
async fn search_finds_visible_messages_ranked_and_paginated() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    let early = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "secret cats plan" }),
        )
        .await;
    server.join(&bob, &room).await;
    let fox = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "the quick brown foxes jumped" }),
        )
        .await;
    let mut cats = Vec::new();
    for body in ["cats one", "cats two and cats", "cats three"] {
        cats.push(
            server
                .send_message(&alice, &room, json!({ "msgtype": "m.text", "body": body }))
                .await,
        );
    }

    let search = |who: &crate::harness::Login, criteria: Value, next: Option<String>| {
        let server = &server;
        let token = who.access_token.clone();
        async move {
            let path = match next {
                Some(n) => format!("{V3}/search?next_batch={n}"),
                None => format!("{V3}/search"),
            };
            let (status, body) = server
                .post(
                    &path,
                    Some(&token),
                    json!({ "search_categories": { "room_events": criteria } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["search_categories"]["room_events"].clone()
        }
    };
    let ids = |r: &Value| -> Vec<String> {
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["result"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Stemming and prefixes: "fox" finds "foxes".
    let found = search(&alice, json!({ "search_term": "fox" }), None).await;
    assert_eq!(ids(&found), vec![fox.clone()], "{found}");
    assert_eq!(
        found["results"][0]["result"]["content"]["body"],
        "the quick brown foxes jumped"
    );

    // Newest first, one per page, continuing with next_batch.
    let mut seen = Vec::new();
    let mut next = None;
    loop {
        let page = search(
            &alice,
            json!({ "search_term": "cats", "order_by": "recent", "filter": { "limit": 1 } }),
            next.clone(),
        )
        .await;
        seen.extend(ids(&page));
        match page["next_batch"].as_str() {
            Some(n) if seen.len() < 10 => next = Some(n.to_owned()),
            _ => break,
        }
    }
    let mut expected: Vec<String> = cats.iter().rev().cloned().collect();
    expected.push(early.clone());
    assert_eq!(seen, expected);

    // Ranked: the message saying "cats" twice comes first.
    let ranked = search(&alice, json!({ "search_term": "cats" }), None).await;
    assert_eq!(ids(&ranked)[0], cats[1], "{ranked}");
    assert_eq!(ranked["count"], 4);

    // Bob joined after the early message, which history visibility hides from him.
    let bobs = search(
        &bob,
        json!({ "search_term": "cats", "order_by": "recent" }),
        None,
    )
    .await;
    let mut bob_expected: Vec<String> = cats.iter().rev().cloned().collect();
    bob_expected.sort();
    let mut bob_ids = ids(&bobs);
    bob_ids.sort();
    assert_eq!(bob_ids, bob_expected);

    // Context around a result.
    let with_context = search(
        &alice,
        json!({ "search_term": "three", "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true } }),
        None,
    )
    .await;
    let ctx = &with_context["results"][0]["context"];
    assert_eq!(
        ctx["events_before"][0]["event_id"],
        cats[1].as_str(),
        "{ctx}"
    );
    assert_eq!(ctx["events_after"].as_array().unwrap().len(), 0);
    assert!(ctx["profile_info"][&alice.user_id].is_object(), "{ctx}");

    // A redacted message is no longer found.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{room}/redact/{fox}/r1"),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ids(&search(&alice, json!({ "search_term": "fox" }), None).await).is_empty());

    // Bad input.
    let (status, body) = server
        .post(
            &format!("{V3}/search?next_batch=garbage"),
            Some(&alice.access_token),
            json!({ "search_categories": { "room_events": { "search_term": "cats" } } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
    let (status, _) = server
        .post(
            &format!("{V3}/search"),
            Some(&alice.access_token),
            json!({ "search_categories": { "room_events": { "search_term": 5 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `presence.enabled = false` (as Synapse's `presence.enabled: false`): updates
/// are accepted and ignored, everyone reads as offline, and syncs carry no
/// presence. Bad updates are still refused.
#[tokio::test]
async fn presence_off_accepts_updates_and_shares_nothing() {
    let server = TestServer::start_with(|c| c.presence.enabled = false).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let status_path = format!("{V3}/presence/{}/status", alice.user_id);
    let (status, body) = server
        .put(
            &status_path,
            Some(&alice.access_token),
            json!({ "presence": "online", "status_msg": "writing tests" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Still no setting of another user's presence, nor an unknown state.
    let (status, _) = server
        .put(
            &status_path,
            Some(&bob.access_token),
            json!({ "presence": "offline" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .put(
            &status_path,
            Some(&alice.access_token),
            json!({ "presence": "away" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Alice reads as offline, without her status message.
    let (status, seen) = server.get(&status_path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["presence"], "offline", "{seen}");
    assert!(seen.get("status_msg").is_none(), "{seen}");
    // A sync that would set her online, then Bob's sync: no presence at all.
    let (status, _) = server
        .get(
            &format!("{V3}/sync?set_presence=online&timeout=0"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, sync) = server
        .get(&format!("{V3}/sync?timeout=0"), Some(&bob.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = sync["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(events.is_empty(), "{sync}");
    server.stop().await;
}
