//! The authorisation matrix: for the room endpoints, a user outside the room, a
//! banned user, a guest and an unauthenticated caller each get the right
//! refusal, and the member the same request succeeds for. A banned user reads
//! nothing, not even history from before the ban (as Synapse), while a user
//! who left reads up to their leave (`rooms::left_user_reads_up_to_the_leave`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
}

#[tokio::test]
async fn room_endpoints_refuse_outsiders_banned_users_guests_and_anonymous_callers() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let owner = server.register("owner", "owner-password").await;
    let outsider = server.register("outsider", "outsider-password").await;
    let banned = server.register("banned", "banned-password").await;
    let (status, body) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guest = Login::from_json(&body);

    // A private room: the banned user was invited, joined, then banned.
    let room = server
        .create_room(
            &owner,
            json!({"preset": "private_chat", "invite": [banned.user_id]}),
        )
        .await;
    server.join(&banned, &room).await;
    let event = server
        .send_message(
            &owner,
            &room,
            json!({"msgtype": "m.text", "body": "secret"}),
        )
        .await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&owner.access_token),
            json!({"user_id": banned.user_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let r = enc(&room);
    let e = enc(&event);
    let cases = |who: &Login| -> Vec<Case> {
        let u = enc(&who.user_id);
        vec![
            Case {
                name: "send",
                method: Method::PUT,
                path: format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/authz{u}"),
                body: Some(json!({"msgtype": "m.text", "body": "hi"})),
            },
            Case {
                name: "set state",
                method: Method::PUT,
                path: format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"),
                body: Some(json!({"topic": "mine"})),
            },
            Case {
                name: "invite",
                method: Method::POST,
                path: format!("/_matrix/client/v3/rooms/{r}/invite"),
                body: Some(json!({"user_id": "@someone:test.local"})),
            },
            Case {
                name: "join",
                method: Method::POST,
                path: format!("/_matrix/client/v3/rooms/{r}/join"),
                body: Some(json!({})),
            },
            Case {
                name: "redact",
                method: Method::PUT,
                path: format!("/_matrix/client/v3/rooms/{r}/redact/{e}/authz{u}"),
                body: Some(json!({})),
            },
            Case {
                name: "typing",
                method: Method::PUT,
                path: format!("/_matrix/client/v3/rooms/{r}/typing/{u}"),
                body: Some(json!({"typing": true, "timeout": 1000})),
            },
            Case {
                name: "receipt",
                method: Method::POST,
                path: format!("/_matrix/client/v3/rooms/{r}/receipt/m.read/{e}"),
                body: Some(json!({})),
            },
            Case {
                name: "joined members",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/joined_members"),
                body: None,
            },
            Case {
                name: "messages",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/messages?dir=b"),
                body: None,
            },
            Case {
                name: "state",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/state"),
                body: None,
            },
            Case {
                name: "members",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/members"),
                body: None,
            },
            Case {
                name: "event",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/event/{e}"),
                body: None,
            },
            Case {
                name: "context",
                method: Method::GET,
                path: format!("/_matrix/client/v3/rooms/{r}/context/{e}"),
                body: None,
            },
        ]
    };

    let refused = |status: StatusCode, body: &Value| {
        matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
            && matches!(
                body["errcode"].as_str(),
                // Guests are refused before the room is looked at (#16 F13).
                Some("M_FORBIDDEN" | "M_NOT_FOUND" | "M_GUEST_ACCESS_FORBIDDEN")
            )
    };
    for (label, who) in [
        ("outsider", &outsider),
        ("guest", &guest),
        ("banned", &banned),
    ] {
        for case in cases(who) {
            let (status, body) = server
                .call(
                    case.method.clone(),
                    &case.path,
                    Some(&who.access_token),
                    case.body.clone(),
                )
                .await;
            assert!(
                refused(status, &body),
                "{label} {}: {status} {body}",
                case.name
            );
        }
    }
    // No token at all: 401 M_MISSING_TOKEN everywhere.
    for case in cases(&owner) {
        let (status, body) = server
            .call(case.method.clone(), &case.path, None, case.body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "anonymous {}: {body}",
            case.name
        );
        assert_eq!(
            body["errcode"], "M_MISSING_TOKEN",
            "anonymous {}",
            case.name
        );
    }
    // And the member succeeds where the others were refused (reads; the writes
    // are covered by the room tests).
    for case in cases(&owner)
        .into_iter()
        .filter(|c| c.method == Method::GET)
    {
        let (status, body) = server
            .call(
                case.method.clone(),
                &case.path,
                Some(&owner.access_token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "owner {}: {body}", case.name);
    }
}
