//! Guest accounts (spec: "Guest access"): a guest becoming a full account
//! under its own user ID, guests leaving rooms that stop admitting them, and
//! guests joining rooms on other servers.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ClientApi, Login, TestServer, enc, eventually};

const V3: &str = "/_matrix/client/v3";

async fn guest(server: &ClientApi) -> Login {
    let (status, body) = server
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Login::from_json(&body)
}

fn localpart(user_id: &str) -> &str {
    user_id[1..].split(':').next().unwrap()
}

/// `POST /register` with `guest_access_token`, through the UIA dummy stage.
async fn upgrade(server: &ClientApi, name: &str, token: &str) -> (StatusCode, Value) {
    let body = json!({ "username": name, "password": "upgraded-pw", "guest_access_token": token });
    let (status, first) = server
        .post(&format!("{V3}/register"), None, body.clone())
        .await;
    if status != StatusCode::UNAUTHORIZED {
        return (status, first);
    }
    let mut body = body;
    body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
    server.post(&format!("{V3}/register"), None, body).await
}

async fn membership(server: &ClientApi, reader: &Login, room: &str, user: &str) -> Value {
    let (_, member) = server
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{}", enc(room), enc(user)),
            Some(&reader.access_token),
        )
        .await;
    member["membership"].clone()
}

async fn set_guest_access(server: &ClientApi, who: &Login, room: &str, value: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.guest_access/", enc(room)),
            Some(&who.access_token),
            json!({ "guest_access": value }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_guest_becomes_a_full_account_only_with_its_own_token() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let alice = server.register("alice", "alice-pw").await;
    let first = guest(&server).await;
    let second = guest(&server).await;
    let name = localpart(&first.user_id).to_owned();

    // Another guest's token cannot take this guest's ID.
    let (status, body) = upgrade(&server, &name, &second.access_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nor can a full account's token, nor a made-up one.
    let (status, body) = upgrade(&server, &name, &alice.access_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = upgrade(&server, &name, "lat_not_a_token").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A guest's token does not take a full account's ID either.
    let (status, body) = upgrade(&server, "alice", &second.access_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // With its own token the guest becomes a full account, same ID.
    let (status, body) = upgrade(&server, &name, &first.access_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], first.user_id.as_str());
    let upgraded = Login::from_json(&body);
    let (_, who) = server.whoami(&upgraded.access_token).await;
    assert_ne!(who["is_guest"], true, "{who}");
    // It logs in with its new password, and may join a room closed to guests.
    let (status, body) = server.login(&name, "upgraded-pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&upgraded, &room).await;
    // The second guest is still a guest, kept out of that room.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/join", enc(&room)),
            Some(&second.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Done once: the account is no longer a guest to upgrade.
    let (status, body) = upgrade(&server, &name, &first.access_token).await;
    assert!(status.is_client_error(), "{status} {body}");
}

#[tokio::test]
async fn guests_leave_a_room_that_stops_admitting_them() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let alice = server.register("alice", "alice-pw").await;
    let bob = server.register("bob", "bob-pw").await;
    let visitor = guest(&server).await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    set_guest_access(&server, &alice, &room, "can_join").await;
    server.join(&visitor, &room).await;
    server.join(&bob, &room).await;

    // Another state change keeps the guest in.
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)),
            Some(&alice.access_token),
            json!({ "topic": "still open" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    set_guest_access(&server, &alice, &room, "can_join").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        membership(&server, &alice, &room, &visitor.user_id).await,
        "join"
    );

    set_guest_access(&server, &alice, &room, "forbidden").await;
    eventually("the guest leaves", || async {
        membership(&server, &alice, &room, &visitor.user_id).await == "leave"
    })
    .await;
    // Full members stay.
    assert_eq!(
        membership(&server, &alice, &room, &bob.user_id).await,
        "join"
    );
    // And the guest cannot come back.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/join", enc(&room)),
            Some(&visitor.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_guest_joins_another_servers_room_only_where_guests_may() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| c.registration.guests = true).await;
    let alice = a.register("alice", "alice-pw").await;
    let visitor = guest(&b).await;

    // A private room that admits guests: the invited guest joins through A.
    let open = a
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [visitor.user_id] }),
        )
        .await;
    set_guest_access(&a, &alice, &open, "can_join").await;
    // A private room that does not.
    let closed = a
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [visitor.user_id] }),
        )
        .await;
    set_guest_access(&a, &alice, &closed, "forbidden").await;
    for room in [&open, &closed] {
        eventually("the invite reaches B", || async {
            let (_, sync) = b
                .get(&format!("{V3}/sync"), Some(&visitor.access_token))
                .await;
            sync["rooms"]["invite"].get(room.as_str()).is_some()
        })
        .await;
    }

    let (status, body) = b
        .post(
            &format!("{V3}/rooms/{}/join", enc(&closed)),
            Some(&visitor.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_ne!(
        membership(&a, &alice, &closed, &visitor.user_id).await,
        "join"
    );

    let (status, body) = b
        .post(
            &format!("{V3}/rooms/{}/join", enc(&open)),
            Some(&visitor.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the guest's join on A", || async {
        membership(&a, &alice, &open, &visitor.user_id).await == "join"
    })
    .await;

    // A revokes guest access: B, which alone knows its user is a guest,
    // makes the guest leave.
    set_guest_access(&a, &alice, &open, "forbidden").await;
    eventually("the guest leaves, seen on A", || async {
        membership(&a, &alice, &open, &visitor.user_id).await == "leave"
    })
    .await;
}
