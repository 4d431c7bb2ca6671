//! Malformed input over the client API: wrong types, missing fields, arrays for
//! objects, deep nesting, huge strings, invalid IDs and bad UTF-8. Whatever the
//! endpoint, the answer is a Matrix error (4xx with an errcode, or a UIA
//! challenge: 401 with the flows) or a success —
//! never a 5xx, a panic or a hang.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, enc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_never_gets_a_server_error() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let room = server.create_room(&alice, json!({})).await;
    let event = server
        .send_message(&alice, &room, json!({"msgtype": "m.text", "body": "x"}))
        .await;
    let (r, e, u) = (enc(&room), enc(&event), enc(&alice.user_id));
    let d = enc(&alice.device_id);

    // (method, path) over the client API, with real IDs and with invalid ones.
    let mut endpoints: Vec<(Method, String)> = Vec::new();
    for (room, event, user) in [
        (r.as_str(), e.as_str(), u.as_str()),
        ("not-a-room", "not-an-event", "not-a-user"),
        ("%21x%3A", "%24", "%40"),
    ] {
        endpoints.extend([
            (Method::POST, "/_matrix/client/v3/createRoom".to_owned()),
            (Method::POST, format!("/_matrix/client/v3/join/{room}")),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/join"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/leave"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/invite"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/kick"),
            ),
            (Method::POST, format!("/_matrix/client/v3/rooms/{room}/ban")),
            (
                Method::PUT,
                format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s1"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/rooms/{room}/redact/{event}/s2"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/rooms/{room}/typing/{user}"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v3/rooms/{room}/messages?dir=x&limit=-5&from=zzz"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v3/rooms/{room}/context/{event}?limit=abc"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v1/rooms/{room}/relations/{event}?limit=-1"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v1/rooms/{room}/hierarchy?limit=0"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts=x&dir=q"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v1/room_summary/{room}"),
            ),
            (
                Method::GET,
                format!("/_matrix/client/v1/mutual_rooms?user_id={user}&from={event}"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/user/{user}/account_data/m.x"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags/u.t"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/user/{user}/filter"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/profile/{user}/displayname"),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/presence/{user}/status"),
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/directory/room/%23x%3Atest.local".to_owned(),
            ),
            (
                Method::PUT,
                format!("/_matrix/client/v3/directory/list/room/{room}"),
            ),
            (
                Method::POST,
                format!("/_matrix/client/v3/rooms/{room}/upgrade"),
            ),
        ]);
    }
    endpoints.extend([
        (
            Method::GET,
            "/_matrix/client/v3/sync?since=garbage&timeout=-1&filter=%7Bbad".to_owned(),
        ),
        (Method::POST, "/_matrix/client/v3/keys/upload".to_owned()),
        (Method::POST, "/_matrix/client/v3/keys/query".to_owned()),
        (Method::POST, "/_matrix/client/v3/keys/claim".to_owned()),
        (
            Method::POST,
            "/_matrix/client/v3/keys/device_signing/upload".to_owned(),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/keys/signatures/upload".to_owned(),
        ),
        (
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.x/t1".to_owned(),
        ),
        (Method::PUT, format!("/_matrix/client/v3/devices/{d}")),
        (Method::POST, "/_matrix/client/v3/delete_devices".to_owned()),
        (Method::POST, "/_matrix/client/v3/search".to_owned()),
        (
            Method::POST,
            "/_matrix/client/v3/user_directory/search".to_owned(),
        ),
        (Method::POST, "/_matrix/client/v3/publicRooms".to_owned()),
        (Method::POST, "/_matrix/client/v3/pushers/set".to_owned()),
        (
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/override/x".to_owned(),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/room_keys/version".to_owned(),
        ),
        (
            Method::PUT,
            "/_matrix/client/v3/room_keys/keys?version=1".to_owned(),
        ),
        (Method::POST, "/_matrix/client/v3/login".to_owned()),
        (Method::POST, "/_matrix/client/v3/register".to_owned()),
        (
            Method::POST,
            "/_matrix/client/v3/account/password".to_owned(),
        ),
        (Method::POST, "/_matrix/client/v3/refresh".to_owned()),
        (
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned(),
        ),
        (Method::POST, "/_matrix/media/v1/create".to_owned()),
        (
            Method::GET,
            "/_matrix/client/v1/media/thumbnail/test.local/x?width=-1&height=abc".to_owned(),
        ),
        (
            Method::GET,
            "/_matrix/client/v1/media/download/bad%20server/x".to_owned(),
        ),
    ]);

    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    // Under the 1 MiB body limit (the limit itself is tested in `errors`): a
    // huge value inside valid JSON.
    let huge = format!("{{\"body\": \"{}\"}}", "x".repeat(900 * 1024));
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("empty object", b"{}".to_vec()),
        (
            "wrong types",
            serde_json::to_vec(&json!({
                "name": 5, "topic": [], "user_id": 7, "room_id": {}, "body": null, "msgtype": 1,
                "membership": true, "displayname": {"a": 1}, "presence": 3, "filter": "x",
                "device_keys": "x", "one_time_keys": [], "messages": 1, "auth": "x", "type": 9,
                "identifier": 1, "password": 2, "new_version": 13, "users": "x", "events": 1,
                "visibility": 1, "typing": "yes", "timeout": "x", "lists": 1, "search_term": 1,
            }))
            .unwrap(),
        ),
        ("array", b"[1, 2, 3]".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("huge string", huge.into_bytes()),
        (
            "bad utf-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("not json", b"{nope".to_vec()),
    ];

    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for (method, path) in &endpoints {
        let bodies: Vec<(&str, Option<&Vec<u8>>)> = if *method == Method::GET {
            vec![("no body", None)]
        } else {
            payloads.iter().map(|(n, b)| (*n, Some(b))).collect()
        };
        for (label, body) in bodies {
            let mut req = http
                .request(method.clone(), format!("{}{path}", server.base))
                .bearer_auth(&alice.access_token)
                .header("Content-Type", "application/json");
            if let Some(body) = body {
                req = req.body(body.clone());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(err) => {
                    failures.push(format!("{method} {path} [{label}]: no answer: {err}"));
                    continue;
                }
            };
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.is_server_error() {
                failures.push(format!("{method} {path} [{label}]: {status} {text}"));
            } else if status.is_client_error() {
                let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // A UIA challenge (the flows and a session) is the spec's
                // answer to a first request without `auth`; it has no errcode.
                let uia_challenge = status == StatusCode::UNAUTHORIZED
                    && json["flows"].is_array()
                    && json["session"].is_string();
                if !json["errcode"].is_string() && !uia_challenge {
                    failures.push(format!(
                        "{method} {path} [{label}]: {status} without errcode: {text}"
                    ));
                }
            }
        }
    }
    // The server is still healthy afterwards.
    let (status, _) = server.get("/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
