//! The Synapse-compatible admin API: admins only, and what synapse-admin and
//! scripts use works.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestServer, enc};

#[tokio::test]
async fn admin_api_refuses_non_admins_and_works_for_admins() {
    let server = TestServer::start().await;
    let admin = server.register("root", "root-password").await;
    lattice::storage::users::set_admin(&server.state.db, &admin.user_id, true)
        .await
        .unwrap();
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
