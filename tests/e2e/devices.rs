//! Device management, with user-interactive auth on deletion.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Login, TestServer, password_auth};

#[tokio::test]
async fn list_get_rename_devices() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "dora", "password": "pw", "initial_device_display_name": "Laptop",
                    "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let dora = Login::from_json(&body);
    let token = Some(dora.access_token.as_str());

    let (status, body) = server.get("/_matrix/client/v3/devices", token).await;
    assert_eq!(status, StatusCode::OK);
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], dora.device_id);
    assert_eq!(devices[0]["display_name"], "Laptop");
    assert!(devices[0]["last_seen_ts"].as_u64().unwrap() > 1_600_000_000_000);

    let path = format!("/_matrix/client/v3/devices/{}", dora.device_id);
    let (status, _) = server
        .put(&path, token, json!({ "display_name": "Phone" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&path, token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["display_name"], "Phone");

    let (status, body) = server.get("/_matrix/client/v3/devices/NOPE", token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = server
        .put(
            "/_matrix/client/v3/devices/NOPE",
            token,
            json!({ "display_name": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[tokio::test]
async fn delete_device_needs_uia_with_the_password() {
    let server = TestServer::start().await;
    let main = server.register("ed", "pw").await;
    let other = Login::from_json(&server.login("ed", "pw").await.1);
    let token = Some(main.access_token.as_str());
    let path = format!("/_matrix/client/v3/devices/{}", other.device_id);

    let (status, body) = server
        .call(Method::DELETE, &path, token, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap().to_owned();

    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            token,
            Some(json!({ "auth": password_auth("ed", "bad", &session) })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(server.whoami(&other.access_token).await.0, StatusCode::OK);

    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            token,
            Some(json!({ "auth": password_auth("ed", "pw", &session) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        server.whoami(&other.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.get(&path, token).await.0, StatusCode::NOT_FOUND);

    // The completed session cannot be replayed.
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", main.device_id),
            token,
            Some(json!({ "auth": password_auth("ed", "pw", &session) })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(server.whoami(&main.access_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn delete_devices_in_bulk() {
    let server = TestServer::start().await;
    let main = server.register("fay", "pw").await;
    let a = Login::from_json(&server.login("fay", "pw").await.1);
    let b = Login::from_json(&server.login("fay", "pw").await.1);
    let token = Some(main.access_token.as_str());
    let body = json!({ "devices": [a.device_id, b.device_id, "UNKNOWN"] });
    let (status, challenge) = server
        .post("/_matrix/client/v3/delete_devices", token, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut body = body;
    body["auth"] = password_auth(
        "@fay:test.local",
        "pw",
        challenge["session"].as_str().unwrap(),
    );
    let (status, resp) = server
        .post("/_matrix/client/v3/delete_devices", token, body)
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (_, list) = server.get("/_matrix/client/v3/devices", token).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    assert_eq!(
        server.whoami(&a.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.whoami(&b.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn uia_session_is_bound_to_its_operation() {
    let server = TestServer::start().await;
    let main = server.register("gil", "pw").await;
    let token = Some(main.access_token.as_str());
    // A session started for a password change ...
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            token,
            json!({ "new_password": "n" }),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    // ... cannot delete devices.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            token,
            json!({ "devices": [main.device_id], "auth": password_auth("gil", "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(server.whoami(&main.access_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_uia_session_for_one_device_cannot_delete_another() {
    // SyTest "The operation must be consistent through an interactive
    // authentication session": the session started to delete one device is
    // refused for another, and that device stays.
    let server = TestServer::start().await;
    let main = server.register("fay", "pw").await;
    let first = Login::from_json(&server.login("fay", "pw").await.1);
    let second = Login::from_json(&server.login("fay", "pw").await.1);
    let token = Some(main.access_token.as_str());
    let first_path = format!("/_matrix/client/v3/devices/{}", first.device_id);
    let second_path = format!("/_matrix/client/v3/devices/{}", second.device_id);
    let (status, body) = server
        .call(Method::DELETE, &first_path, token, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();

    let (status, body) = server
        .call(
            Method::DELETE,
            &second_path,
            token,
            Some(json!({ "auth": password_auth("fay", "pw", &session) })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(server.whoami(&second.access_token).await.0, StatusCode::OK);
    // Nor through the bulk endpoint with a different list.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            token,
            json!({ "devices": [first.device_id, second.device_id],
                    "auth": password_auth("fay", "pw", &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(server.whoami(&second.access_token).await.0, StatusCode::OK);

    // The operation it was started for still completes.
    let (status, body) = server
        .call(
            Method::DELETE,
            &first_path,
            token,
            Some(json!({ "auth": password_auth("fay", "pw", &session) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        server.whoami(&first.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.whoami(&second.access_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn deleting_a_device_with_another_users_password_is_refused() {
    // A stolen access token and the thief's own password: 403, the device
    // stays; the owner's password then deletes it.
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    server.register("eve", "eve-pw").await;
    let device = Login::from_json(&server.login("alice", "alice-pw").await.1);
    let path = format!("/_matrix/client/v3/devices/{}", device.device_id);
    let token = Some(alice.access_token.as_str());
    let eve_auth = json!({ "type": "m.login.password", "password": "eve-pw",
                           "identifier": { "type": "m.id.user", "user": "eve" } });
    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            token,
            Some(json!({ "auth": eve_auth })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(server.get(&path, token).await.0, StatusCode::OK);
    let alice_auth = json!({ "type": "m.login.password", "password": "alice-pw",
                             "identifier": { "type": "m.id.user", "user": "alice" } });
    let (status, body) = server
        .call(
            Method::DELETE,
            &path,
            token,
            Some(json!({ "auth": alice_auth })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.get(&path, token).await.0, StatusCode::NOT_FOUND);
}
