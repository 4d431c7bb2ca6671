//! Context, relations, threads, timestamp lookup, reports and the room directory.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer};

const V3: &str = "/_matrix/client/v3";
const V1: &str = "/_matrix/client/v1";

async fn room(server: &TestServer, who: &Login, body: Value) -> String {
    let (status, resp) = server
        .post(&format!("{V3}/createRoom"), Some(&who.access_token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["room_id"].as_str().unwrap().to_owned()
}

async fn send(server: &TestServer, who: &Login, room: &str, txn: &str, content: Value) -> String {
    let kind = if content
        .get("m.relates_to")
        .and_then(|r| r.get("key"))
        .is_some()
    {
        "m.reaction"
    } else {
        "m.room.message"
    };
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/send/{kind}/{txn}"),
            Some(&who.access_token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn context_around_an_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let r = room(&server, &alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(
            send(
                &server,
                &alice,
                &r,
                &format!("t{i}"),
                json!({ "msgtype": "m.text", "body": format!("m{i}") }),
            )
            .await,
        );
    }
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{r}/context/{}?limit=4", ids[4]),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["content"]["body"], "m4");
    let before: Vec<&str> = body["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let after: Vec<&str> = body["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(before, vec!["m3", "m2"]);
    assert_eq!(after, vec!["m5", "m6"]);
    assert!(
        body["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    // The tokens continue with /messages.
    let (_, older) = server
        .get(
            &format!(
                "{V3}/rooms/{r}/messages?dir=b&limit=1&from={}",
                body["start"].as_str().unwrap()
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(older["chunk"][0]["content"]["body"], "m1");
    let (status, _) = server
        .get(
            &format!("{V3}/rooms/{r}/context/$missing"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn relations_threads_and_bundled_summaries() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let r = room(&server, &alice, json!({ "preset": "public_chat" })).await;
    server
        .post(
            &format!("{V3}/rooms/{r}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    let root = send(
        &server,
        &alice,
        &r,
        "root",
        json!({ "msgtype": "m.text", "body": "root" }),
    )
    .await;
    let thread = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    send(&server, &bob, &r, "r1", thread("reply 1")).await;
    let last = send(&server, &bob, &r, "r2", thread("reply 2")).await;
    send(
        &server,
        &alice,
        &r,
        "x1",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } }),
    )
    .await;

    let t = Some(alice.access_token.as_str());
    let (status, all) = server
        .get(&format!("{V1}/rooms/{r}/relations/{root}"), t)
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["chunk"].as_array().unwrap().len(), 3);
    let (_, threads_only) = server
        .get(&format!("{V1}/rooms/{r}/relations/{root}/m.thread"), t)
        .await;
    let bodies: Vec<&str> = threads_only["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["reply 2", "reply 1"]);
    let (_, reactions) = server
        .get(
            &format!("{V1}/rooms/{r}/relations/{root}/m.annotation/m.reaction"),
            t,
        )
        .await;
    assert_eq!(reactions["chunk"].as_array().unwrap().len(), 1);
    // Paging: one at a time.
    let (_, page1) = server
        .get(
            &format!("{V1}/rooms/{r}/relations/{root}/m.thread?limit=1"),
            t,
        )
        .await;
    let next = page1["next_batch"].as_str().unwrap();
    let (_, page2) = server
        .get(
            &format!("{V1}/rooms/{r}/relations/{root}/m.thread?limit=1&from={next}"),
            t,
        )
        .await;
    assert_eq!(page2["chunk"][0]["content"]["body"], "reply 1");
    assert!(page2.get("next_batch").is_none(), "{page2}");

    let (status, threads) = server.get(&format!("{V1}/rooms/{r}/threads"), t).await;
    assert_eq!(status, StatusCode::OK, "{threads}");
    let chunk = threads["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    let summary = &chunk[0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(chunk[0]["event_id"], root);
    assert_eq!(summary["count"], 2);
    assert_eq!(summary["latest_event"]["event_id"], last);
    assert_eq!(
        summary["current_user_participated"], true,
        "alice started the thread"
    );
    let (_, mine) = server
        .get(
            &format!("{V1}/rooms/{r}/threads?include=participated"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(mine["chunk"].as_array().unwrap().len(), 1);

    // /messages bundles the summary too.
    let (_, page) = server
        .get(&format!("{V3}/rooms/{r}/messages?dir=b&limit=20"), t)
        .await;
    let root_in_timeline = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .unwrap();
    assert_eq!(
        root_in_timeline["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );
}

#[tokio::test]
async fn timestamp_to_event_and_reports() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let eve = server.register("eve", "pw").await;
    let r = room(&server, &alice, json!({})).await;
    let first = send(
        &server,
        &alice,
        &r,
        "a",
        json!({ "msgtype": "m.text", "body": "a" }),
    )
    .await;
    let t = Some(alice.access_token.as_str());
    let (_, ev) = server
        .get(&format!("{V3}/rooms/{r}/event/{first}"), t)
        .await;
    let ts = ev["origin_server_ts"].as_i64().unwrap();
    let (status, found) = server
        .get(
            &format!("{V1}/rooms/{r}/timestamp_to_event?ts={ts}&dir=b"),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["origin_server_ts"].as_i64().unwrap(), ts);
    let (status, _) = server
        .get(
            &format!(
                "{V1}/rooms/{r}/timestamp_to_event?ts={}&dir=f",
                ts + 3_600_000
            ),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/report/{first}"),
            t,
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reports: i64 =
        sqlx::query_scalar("select count(*) from event_reports where reason = 'spam'")
            .fetch_one(&server.state.db)
            .await
            .unwrap();
    assert_eq!(reports, 1);
    // Outsiders cannot report (or probe) events of a private room.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{r}/report/{first}"),
            Some(&eve.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(&format!("{V3}/rooms/{r}/report/$nope"), t, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn public_room_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let public = room(&server, &alice, json!({ "visibility": "public", "preset": "public_chat", "name": "Rust Lab", "topic": "crabs", "room_alias_name": "rust" })).await;
    let private = room(&server, &alice, json!({ "name": "Secret" })).await;

    let (status, dir) = server.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(status, StatusCode::OK, "{dir}");
    let chunk = dir["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["room_id"], public);
    assert_eq!(chunk[0]["name"], "Rust Lab");
    assert_eq!(chunk[0]["topic"], "crabs");
    assert_eq!(chunk[0]["canonical_alias"], "#rust:test.local");
    assert_eq!(chunk[0]["join_rule"], "public");
    assert_eq!(chunk[0]["num_joined_members"], 1);

    // Bob may not publish Alice's private room; Alice may.
    let vis = format!("{V3}/directory/list/room/{private}");
    let (status, _) = server
        .put(
            &vis,
            Some(&bob.access_token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .put(
            &vis,
            Some(&alice.access_token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.get(&vis, None).await.1["visibility"], "public");

    let (_, searched) = server
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.access_token),
            json!({ "filter": { "generic_search_term": "crab" } }),
        )
        .await;
    assert_eq!(searched["chunk"].as_array().unwrap().len(), 1, "{searched}");
    let (_, page) = server.get(&format!("{V3}/publicRooms?limit=1"), None).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(page["total_room_count_estimate"], 2);
    let (_, page2) = server
        .get(
            &format!(
                "{V3}/publicRooms?limit=1&since={}",
                page["next_batch"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_ne!(page2["chunk"][0]["room_id"], page["chunk"][0]["room_id"]);
}

#[tokio::test]
async fn room_upgrade_moves_state_aliases_and_tombstones_the_old_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let eve = server.register("eve", "pw").await;
    let old = room(&server, &alice, json!({ "room_version": "10", "preset": "public_chat", "name": "Old", "room_alias_name": "up" })).await;
    let t = Some(alice.access_token.as_str());
    server
        .post(
            &format!("{V3}/rooms/{old}/join"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    server
        .post(
            &format!("{V3}/rooms/{old}/ban"),
            t,
            json!({ "user_id": eve.user_id }),
        )
        .await;

    // Bob (power 0) may not upgrade.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            Some(&bob.access_token),
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            t,
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();

    let (_, create) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.create/"), t)
        .await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old);
    let (_, name) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.name/"), t)
        .await;
    assert_eq!(name["name"], "Old");
    let (_, rules) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.join_rules/"), t)
        .await;
    assert_eq!(rules["join_rule"], "public");
    let (_, ban) = server
        .get(
            &format!("{V3}/rooms/{new}/state/m.room.member/{}", eve.user_id),
            t,
        )
        .await;
    assert_eq!(ban["membership"], "ban");
    let (_, power) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.power_levels/"), t)
        .await;
    assert!(
        power["users"].get(&alice.user_id).is_none(),
        "v12 creators are not listed: {power}"
    );

    let (_, tomb) = server
        .get(&format!("{V3}/rooms/{old}/state/m.room.tombstone/"), t)
        .await;
    assert_eq!(tomb["replacement_room"], new);
    // Ordinary members can no longer talk in the old room.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{old}/send/m.room.message/late"),
            Some(&bob.access_token),
            json!({ "body": "hi" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The alias follows; Bob can join the new room through it.
    let (_, resolved) = server
        .get(&format!("{V3}/directory/room/%23up:test.local"), None)
        .await;
    assert_eq!(resolved["room_id"], new);
    let (status, _) = server
        .post(
            &format!("{V3}/join/%23up:test.local"),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, canonical) = server
        .get(
            &format!("{V3}/rooms/{new}/state/m.room.canonical_alias/"),
            t,
        )
        .await;
    assert_eq!(canonical["alias"], "#up:test.local");
}

#[tokio::test]
async fn space_hierarchy_lists_visible_children() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let t = Some(alice.access_token.as_str());
    let space = room(&server, &alice, json!({ "preset": "public_chat", "name": "Space", "creation_content": { "type": "m.space" } })).await;
    let public = room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "name": "Public child" }),
    )
    .await;
    let private = room(&server, &alice, json!({ "name": "Private child" })).await;
    let sub = room(&server, &alice, json!({ "preset": "public_chat", "name": "Sub space", "creation_content": { "type": "m.space" } })).await;
    let deep = room(
        &server,
        &alice,
        json!({ "preset": "public_chat", "name": "Deep" }),
    )
    .await;
    // Explicit `order`s: children are listed by order, then timestamp, then ID.
    for (parent, child, order) in [
        (&space, &public, "a"),
        (&space, &private, "b"),
        (&space, &sub, "c"),
        (&sub, &deep, "a"),
    ] {
        let content =
            json!({ "via": ["test.local"], "suggested": child == &public, "order": order });
        let (status, body) = server
            .put(
                &format!("{V3}/rooms/{parent}/state/m.space.child/{child}"),
                t,
                content,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let names = |body: &Value| -> Vec<String> {
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = server
        .get(
            &format!("{V1}/rooms/{space}/hierarchy"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Bob sees the space, the public child, the sub-space and its child; not the private room.
    assert_eq!(
        names(&body),
        vec!["Space", "Public child", "Sub space", "Deep"]
    );
    assert_eq!(body["rooms"][0]["room_type"], "m.space");
    assert_eq!(
        body["rooms"][0]["children_state"].as_array().unwrap().len(),
        3
    );
    // Alice, a member of everything, sees the private child too.
    let (_, all) = server
        .get(&format!("{V1}/rooms/{space}/hierarchy"), t)
        .await;
    assert!(names(&all).contains(&"Private child".to_owned()));

    let (_, shallow) = server
        .get(
            &format!("{V1}/rooms/{space}/hierarchy?max_depth=1"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(names(&shallow), vec!["Space", "Public child", "Sub space"]);
    let (_, suggested) = server
        .get(
            &format!("{V1}/rooms/{space}/hierarchy?suggested_only=true"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(names(&suggested), vec!["Space", "Public child"]);
    let (_, page) = server
        .get(
            &format!("{V1}/rooms/{space}/hierarchy?limit=2"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(names(&page).len(), 2);
    let (_, rest) = server
        .get(
            &format!(
                "{V1}/rooms/{space}/hierarchy?limit=2&from={}",
                page["next_batch"].as_str().unwrap()
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(names(&rest), vec!["Sub space", "Deep"]);

    let (status, _) = server
        .get(
            &format!("{V1}/rooms/{private}/hierarchy"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Before v12 the new room's create event names the tombstone that replaced
/// the old room (`predecessor.event_id`; SyTest's "/upgrade creates a new
/// room"), and a room without guest access keeps none: it gets an explicit
/// `forbidden`, never a preset's `can_join`.
#[tokio::test]
async fn upgrade_before_v12_names_the_tombstone_and_keeps_guests_out() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let alice = server.register("alice", "pw").await;
    let old = room(
        &server,
        &alice,
        json!({
            "room_version": "10",
            "preset": "public_chat",
            "visibility": "public",
            "room_alias_name": "v10",
            "creation_content": { "m.federate": false },
        }),
    )
    .await;
    let t = Some(alice.access_token.as_str());
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            t,
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, state) = server.get(&format!("{V3}/rooms/{old}/state"), t).await;
    let tombstone = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.tombstone")
        .cloned()
        .expect("tombstone in the old room");
    assert_eq!(tombstone["content"]["replacement_room"], new.as_str());
    let (_, create) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.create/"), t)
        .await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(
        create["predecessor"],
        json!({ "room_id": old, "event_id": tombstone["event_id"] }),
        "{create}"
    );
    // Closed to federation before, closed after.
    assert_eq!(create["m.federate"], false, "{create}");
    // The directory lists the new room instead of the old.
    let (_, public) = server.get(&format!("{V3}/publicRooms"), None).await;
    let listed: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["room_id"].as_str())
        .collect();
    assert_eq!(listed, [new.as_str()], "{public}");
    // The old room no longer claims the alias; the new one does.
    let (_, old_alias) = server
        .get(
            &format!("{V3}/rooms/{old}/state/m.room.canonical_alias/"),
            t,
        )
        .await;
    assert!(old_alias.get("alias").is_none(), "{old_alias}");
    let (_, new_alias) = server
        .get(
            &format!("{V3}/rooms/{new}/state/m.room.canonical_alias/"),
            t,
        )
        .await;
    assert_eq!(new_alias["alias"], "#v10:test.local", "{new_alias}");
    let (status, guests) = server
        .get(&format!("{V3}/rooms/{new}/state/m.room.guest_access/"), t)
        .await;
    assert_eq!(status, StatusCode::OK, "{guests}");
    assert_eq!(guests["guest_access"], "forbidden");
    // A guest cannot join the new public room.
    let (status, guest) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{new}/join"),
            guest["access_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn upgrade_carries_members_tags_and_direct_entries_and_refuses_unknown_versions() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let old = room(
        &server,
        &alice,
        json!({ "room_version": "10", "invite": [bob.user_id] }),
    )
    .await;
    server.join(&bob, &old).await;
    for (who, tag) in [(&alice, "u.work"), (&bob, "m.favourite"), (&carol, "u.spy")] {
        // Carol is not in the room: a tag she set on its ID is hers alone.
        let (status, body) = server
            .put(
                &format!("{V3}/user/{}/rooms/{old}/tags/{tag}", who.user_id),
                Some(&who.access_token),
                json!({ "order": 0.5 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = server
        .put(
            &format!("{V3}/user/{}/account_data/m.direct", alice.user_id),
            Some(&alice.access_token),
            json!({ bob.user_id.clone(): [old], "@other:elsewhere": ["!x:elsewhere"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A version that is not even an identifier, and one that is unknown.
    let t = Some(alice.access_token.as_str());
    for bad in ["my_bad_version", "999"] {
        let (status, body) = server
            .post(
                &format!("{V3}/rooms/{old}/upgrade"),
                t,
                json!({ "new_version": bad }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "{body}");
    }
    // An unknown room is 404; a room Carol is not in, 403 (as Synapse).
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/!nowhere:unknown/upgrade"),
            t,
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            Some(&carol.access_token),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A body without one is still malformed.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            t,
            json!({ "new_version": 11 }),
        )
        .await;
    assert_eq!(body["errcode"], "M_BAD_JSON", "{status} {body}");

    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{old}/upgrade"),
            t,
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();

    let tags = |who: &Login, room: &str| {
        let path = format!("{V3}/user/{}/rooms/{room}/tags", who.user_id);
        let token = who.access_token.clone();
        let server = &server;
        async move { server.get(&path, Some(&token)).await.1["tags"].clone() }
    };
    assert!(tags(&alice, &new).await.get("u.work").is_some());
    assert!(tags(&bob, &new).await.get("m.favourite").is_some());
    assert_eq!(tags(&carol, &new).await, json!({}));
    let (_, direct) = server
        .get(
            &format!("{V3}/user/{}/account_data/m.direct", alice.user_id),
            t,
        )
        .await;
    assert_eq!(direct[&bob.user_id], json!([old, new]), "{direct}");
    assert_eq!(
        direct["@other:elsewhere"],
        json!(["!x:elsewhere"]),
        "{direct}"
    );
}
