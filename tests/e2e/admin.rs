//! The Synapse-compatible admin API: admins only, and what synapse-admin and
//! scripts use works.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Login, TestServer, enc};

/// Registers `@root` and makes it a server admin.
async fn register_admin(server: &TestServer) -> Login {
    let admin = server.register("root", "root-password").await;
    lattice::storage::users::set_admin(&server.state.db, &admin.user_id, true)
        .await
        .unwrap();
    admin
}

#[tokio::test]
async fn admin_api_refuses_non_admins_and_works_for_admins() {
    let server = TestServer::start().await;
    let admin = register_admin(&server).await;
    let alice = server.register("alice", "alice-password").await;
    let a = Some(admin.access_token.as_str());

    // Non-admins and anonymous callers are refused.
    for path in [
        "/_synapse/admin/v1/server_version",
        "/_synapse/admin/v2/users",
        "/_synapse/admin/v1/rooms",
        "/_synapse/admin/v1/registration_tokens",
    ] {
        let (status, body) = server.get(path, Some(&alice.access_token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        let (status, _) = server.get(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }

    let (status, body) = server.get("/_synapse/admin/v1/server_version", a).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["server_version"]
            .as_str()
            .unwrap()
            .starts_with("Lattice")
    );

    // Users: list with paging, filter, query.
    let (status, body) = server.get("/_synapse/admin/v2/users?limit=1", a).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    assert_eq!(body["next_token"], "1");
    let (_, body) = server.get("/_synapse/admin/v2/users?name=ali", a).await;
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![alice.user_id.as_str()]);
    let (status, body) = server
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&alice.user_id)),
            a,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["admin"], false);
    assert_eq!(body["displayname"], "alice");

    // Create a user; modify one (name, admin flag, password).
    let bob_id = format!("@bob:{}", crate::harness::SERVER_NAME);
    let (status, body) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", enc(&bob_id)),
            a,
            json!({"password": "bob-password", "displayname": "Bob B"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = server.login("bob", "bob-password").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", enc(&alice.user_id)),
            a,
            json!({"displayname": "Alice A", "admin": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["displayname"], "Alice A");
    assert_eq!(body["admin"], true);

    // Reset a password (logging the user out), whois, deactivate.
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/reset_password/{}", enc(&alice.user_id)),
            a,
            json!({"new_password": "new-alice-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.whoami(&alice.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged out by the reset");
    let (status, _) = server.login("alice", "new-alice-password").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .get(
            &format!("/_synapse/admin/v1/whois/{}", enc(&alice.user_id)),
            a,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["devices"].as_object().unwrap().len(), 1, "{body}");
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", enc(&bob_id)),
            a,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.login("bob", "bob-password").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Reactivation needs a new password, then the account logs in again.
    let user_path = format!("/_synapse/admin/v2/users/{}", enc(&bob_id));
    let (status, body) = server
        .put(&user_path, a, json!({ "deactivated": false }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .put(
            &user_path,
            a,
            json!({ "deactivated": false, "password": "bob-again" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deactivated"], false);
    let (status, _) = server.login("bob", "bob-again").await;
    assert_eq!(status, StatusCode::OK);

    // Rooms: list, details, members, state.
    let room = server
        .create_room(
            &admin,
            json!({"name": "Admin room", "preset": "public_chat"}),
        )
        .await;
    let (status, body) = server.get("/_synapse/admin/v1/rooms", a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total_rooms"], 1);
    assert_eq!(body["rooms"][0]["room_id"], room.as_str());
    assert_eq!(body["rooms"][0]["name"], "Admin room");
    assert_eq!(body["rooms"][0]["joined_local_members"], 1);
    let (status, body) = server
        .get(&format!("/_synapse/admin/v1/rooms/{}", enc(&room)), a)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["state_events"].as_i64().unwrap() >= 5, "{body}");
    let (_, body) = server
        .get(
            &format!("/_synapse/admin/v1/rooms/{}/members", enc(&room)),
            a,
        )
        .await;
    assert_eq!(body["members"], json!([admin.user_id]));
    let (_, body) = server
        .get(&format!("/_synapse/admin/v1/rooms/{}/state", enc(&room)), a)
        .await;
    assert!(
        body["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    let (status, _) = server
        .get("/_synapse/admin/v1/rooms/!nope:test.local", a)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Event reports: list, read (with the event), delete.
    let event = server
        .send_message(&admin, &room, json!({"msgtype": "m.text", "body": "spam"}))
        .await;
    server.join(&alice_again(&server).await, &room).await;
    let reporter = alice_again(&server).await;
    let (status, _) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/report/{}",
                enc(&room),
                enc(&event)
            ),
            Some(&reporter.access_token),
            json!({"reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, reports) = server.get("/_synapse/admin/v1/event_reports", a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reports["total"], 1);
    let id = reports["event_reports"][0]["id"].as_i64().unwrap();
    let (_, report) = server
        .get(&format!("/_synapse/admin/v1/event_reports/{id}"), a)
        .await;
    assert_eq!(report["reason"], "spam");
    assert_eq!(report["event_json"]["content"]["body"], "spam");
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/_synapse/admin/v1/event_reports/{id}"),
            a,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get("/_synapse/admin/v1/event_reports/x", a).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    // A user's uploads.
    let resp = server
        .client
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=a.txt",
            server.base
        ))
        .bearer_auth(&admin.access_token)
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, media) = server
        .get(
            &format!("/_synapse/admin/v1/users/{}/media", enc(&admin.user_id)),
            a,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{media}");
    assert_eq!(media["total"], 1);
    assert_eq!(media["media"][0]["media_length"], 5);
    assert_eq!(media["media"][0]["upload_name"], "a.txt");

    // Registration tokens: create, read, update, list, delete.
    let (status, created) = server
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            a,
            json!({"token": "invite-42", "uses_allowed": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["uses_allowed"], 3);
    let (status, updated) = server
        .put(
            "/_synapse/admin/v1/registration_tokens/invite-42",
            a,
            json!({"uses_allowed": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["uses_allowed"], 5);
    let (_, random) = server
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            a,
            json!({"length": 8}),
        )
        .await;
    assert_eq!(random["token"].as_str().unwrap().len(), 8);
    let (_, list) = server
        .get("/_synapse/admin/v1/registration_tokens", a)
        .await;
    assert_eq!(list["registration_tokens"].as_array().unwrap().len(), 2);
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            "/_synapse/admin/v1/registration_tokens/invite-42",
            a,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .get("/_synapse/admin/v1/registration_tokens/invite-42", a)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad input gets Matrix errors.
    let (status, body) = server
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            a,
            json!({"uses_allowed": -1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}

/// Alice after her password reset: a fresh login.
async fn alice_again(server: &TestServer) -> crate::harness::Login {
    let (status, body) = server.login("alice", "new-alice-password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    crate::harness::Login::from_json(&body)
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}` with block and purge: local
/// members are removed, aliases deleted, the room's rows are gone, and local
/// users cannot join it again until it is unblocked.
#[tokio::test]
async fn room_deletion_removes_members_purges_and_blocks() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let admin = register_admin(&server).await;
    let a = Some(admin.access_token.as_str());
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "doomed", "visibility": "public" }),
        )
        .await;
    server.join(&bob, &room).await;
    server
        .send_message(&bob, &room, json!({ "msgtype": "m.text", "body": "hello" }))
        .await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.access_token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/_synapse/admin/v1/rooms/{}", enc(&room));

    // Not for non-admins.
    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            Some(&alice.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            a,
            Some(json!({ "block": true, "purge": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut kicked: Vec<&str> = body["kicked_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    kicked.sort();
    assert_eq!(kicked, [alice.user_id.as_str(), bob.user_id.as_str()]);
    assert_eq!(body["failed_to_kick_users"], json!([]));
    assert_eq!(body["local_aliases"], json!(["#doomed:test.local"]));

    // Gone: details, alias, the members' room lists, every row.
    let (status, _) = server.get(&path, a).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#doomed:test.local")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for who in [&alice, &bob] {
        let (_, joined) = server
            .get("/_matrix/client/v3/joined_rooms", Some(&who.access_token))
            .await;
        assert_eq!(joined["joined_rooms"], json!([]), "{}", who.user_id);
    }
    for table in [
        "events",
        "state_groups",
        "room_members",
        "event_search",
        "rooms",
    ] {
        let n: i64 =
            sqlx::query_scalar(&format!("select count(*) from {table} where room_id = $1"))
                .bind(&room)
                .fetch_one(&server.state.db)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} still holds rows of the purged room");
    }
    // Sync still works for a former member.
    let (status, _) = server
        .get("/_matrix/client/v3/sync", Some(&carol.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Blocked: no local user may join; the block can be read and lifted.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = server.get(&format!("{path}/block"), a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "block": true, "user_id": admin.user_id }));
    let (status, body) = server
        .put(&format!("{path}/block"), a, json!({ "block": false }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = server.get(&format!("{path}/block"), a).await;
    assert_eq!(body, json!({ "block": false }));

    // An unknown room without block is 404; a replacement room is refused.
    let (status, _) = server
        .call(
            Method::DELETE,
            "/_synapse/admin/v1/rooms/!nothing:test.local",
            a,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = server.create_room(&alice, json!({})).await;
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/_synapse/admin/v1/rooms/{}", enc(&other)),
            a,
            Some(json!({ "new_room_user_id": admin.user_id })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// `POST /_synapse/admin/v1/users/{userId}/login`: a token acting as the user,
/// on a device the user can see; not for oneself, not for non-admins.
#[tokio::test]
async fn admin_can_log_in_as_a_user() {
    let server = TestServer::start().await;
    let admin = register_admin(&server).await;
    let a = Some(admin.access_token.as_str());
    let alice = server.register("alice", "pw").await;
    let path = format!("/_synapse/admin/v1/users/{}/login", enc(&alice.user_id));

    let (status, body) = server
        .post(&path, Some(&alice.access_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .post(
            &format!("/_synapse/admin/v1/users/{}/login", enc(&admin.user_id)),
            a,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .post(&path, a, json!({ "valid_until_ms": 1000 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let until = lattice::storage::now_ms() + 3_600_000;
    let (status, body) = server
        .post(&path, a, json!({ "valid_until_ms": until }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (status, me) = server.whoami(token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], alice.user_id.as_str());
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&alice.access_token))
        .await;
    let names: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["display_name"].as_str())
        .collect();
    assert!(
        names.contains(&format!("Admin login by {}", admin.user_id).as_str()),
        "{devices}"
    );
}

/// `send_server_notice`: off unless configured; then the recipient is invited
/// to a room of the system user, tagged `m.server_notice`, where they cannot
/// write; later notices go to the same room, and a PUT with a transaction ID
/// is idempotent.
#[tokio::test]
async fn server_notices_reach_users_in_a_tagged_room() {
    let off = TestServer::start().await;
    let admin = register_admin(&off).await;
    let bob = off.register("bob", "pw").await;
    let (status, body) = off
        .post(
            "/_synapse/admin/v1/send_server_notice",
            Some(&admin.access_token),
            json!({ "user_id": bob.user_id, "content": { "msgtype": "m.text", "body": "hi" } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    off.stop().await;

    let server = TestServer::start_with(|c| c.server_notices.localpart = "notices".into()).await;
    let admin = register_admin(&server).await;
    let a = Some(admin.access_token.as_str());
    let alice = server.register("alice", "pw").await;
    let notice = |body: &str| json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": body } });
    let (status, body) = server
        .post(
            "/_synapse/admin/v1/send_server_notice",
            Some(&alice.access_token),
            notice("not from an admin"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, first) = server
        .post(
            "/_synapse/admin/v1/send_server_notice",
            a,
            notice("maintenance at noon"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let path = "/_synapse/admin/v1/send_server_notice/t1";
    let (status, second) = server.put(path, a, notice("back online")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let (_, again) = server.put(path, a, notice("back online")).await;
    assert_eq!(
        again["event_id"], second["event_id"],
        "PUT with a txnId is idempotent"
    );

    // Alice is invited by the system user, to a room named for notices.
    let (_, sync) = server
        .get("/_matrix/client/v3/sync", Some(&alice.access_token))
        .await;
    let invites = sync["rooms"]["invite"].as_object().unwrap();
    assert_eq!(invites.len(), 1, "{sync}");
    let (room, invite) = invites.iter().next().unwrap();
    let state = invite["invite_state"]["events"].as_array().unwrap();
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Server Notices")
    );
    server.join(&alice, room).await;
    let bodies = crate::harness::messages(&server, &alice.access_token, room).await;
    assert!(
        bodies.contains(&"maintenance at noon".to_owned()),
        "{bodies:?}"
    );
    assert!(bodies.contains(&"back online".to_owned()), "{bodies:?}");
    assert_eq!(
        bodies.iter().filter(|b| *b == "back online").count(),
        1,
        "{bodies:?}"
    );
    let (_, tags) = server
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags",
                enc(&alice.user_id),
                enc(room)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert!(tags["tags"].get("m.server_notice").is_some(), "{tags}");
    // Read-only for her.
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/x",
                enc(room)
            ),
            Some(&alice.access_token),
            json!({ "msgtype": "m.text", "body": "reply" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nobody can log in as the system user.
    let (status, _) = server.login("notices", "x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The asynchronous deletion (`DELETE /_synapse/admin/v2/rooms/{roomId}`, what
/// synapse-admin uses): a delete ID at once, then its status by ID and by room.
#[tokio::test]
async fn rooms_are_deleted_in_the_background_with_status() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let admin = register_admin(&server).await;
    let a = Some(admin.access_token.as_str());
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;

    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            Some(&alice.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            a,
            Some(json!({ "purge": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delete_id = body["delete_id"].as_str().unwrap().to_owned();

    let by_id = format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}");
    crate::harness::eventually("the deletion to complete", || async {
        server.get(&by_id, a).await.1["status"] == "complete"
    })
    .await;
    let (status, body) = server.get(&by_id, a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["shutdown_room"]["kicked_users"],
        json!([alice.user_id])
    );
    let (status, body) = server
        .get(
            &format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&room)),
            a,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["delete_id"], delete_id.as_str());
    assert_eq!(body["results"][0]["status"], "complete");
    let (status, _) = server
        .get(&format!("/_synapse/admin/v1/rooms/{}", enc(&room)), a)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Unknown IDs and rooms: 404; a bad request is refused before it starts.
    let (status, _) = server
        .get("/_synapse/admin/v2/rooms/delete_status/nothing", a)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .call(
            Method::DELETE,
            "/_synapse/admin/v2/rooms/!nothing:test.local",
            a,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
