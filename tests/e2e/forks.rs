//! A fork built through two servers (issue #20's proof): A and B share a room
//! and are cut off from each other in turn, each changing the room's state
//! meanwhile; once they reach each other again, both resolve the fork (state
//! resolution v2) and end with the same current state, the one the spec's
//! algorithm gives.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, current_state, enc, eventually, wait_for_message};

async fn put_state(
    server: &TestServer,
    who: &Login,
    room: &str,
    kind: &str,
    content: Value,
) -> (StatusCode, Value) {
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            Some(&who.access_token),
            content,
        )
        .await
}

async fn state_content(server: &TestServer, who: &Login, room: &str, kind: &str) -> Value {
    member_or_state(server, who, room, kind, "").await
}

async fn member_or_state(
    server: &TestServer,
    who: &Login,
    room: &str,
    kind: &str,
    state_key: &str,
) -> Value {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(state_key)
            ),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}: {body}");
    body
}

async fn join(server: &TestServer, who: &Login, room: &str, via: &str) {
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(via)
            ),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Bob (on B, power 50) changes the topic while A is away; then, while B is
/// away, Alice (on A) demotes him to 0 and names the room; Carol joins
/// through B in the first partition. Once both are up, each holds both forks.
/// Resolution applies the demotion (a power event, by the more powerful
/// sender) before checking Bob's topic, which then fails: both servers keep
/// the topic from before the fork, Alice's name and power levels, and Carol's
/// join, which no power event touches.
#[tokio::test]
async fn a_fork_made_through_two_servers_resolves_the_same_on_both() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let carol = b.register("carol", "password-c").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "topic": "before the fork"}),
        )
        .await;
    join(&b, &bob, &room, a.name()).await;
    let mut levels = state_content(&a, &alice, &room, "m.room.power_levels").await;
    levels["users"][&bob.user_id] = json!(50);
    let (status, body) = put_state(&a, &alice, &room, "m.room.power_levels", levels.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "shared"}),
    )
    .await;
    wait_for_message(&b, &bob, &room, "shared").await;
    eventually("bob's power on B", || async {
        state_content(&b, &bob, &room, "m.room.power_levels").await["users"][&bob.user_id]
            == json!(50)
    })
    .await;

    // A is away: Bob sets the topic, Carol joins through B.
    let a_stopped = a.stop_for_now().await;
    let (status, body) = put_state(
        &b,
        &bob,
        &room,
        "m.room.topic",
        json!({"topic": "bob's topic"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&carol.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        state_content(&b, &bob, &room, "m.room.topic").await["topic"],
        "bob's topic"
    );

    // B is away: Alice demotes Bob and names the room.
    let b_stopped = b.stop_for_now().await;
    let a = a_stopped.start().await;
    levels["users"][&bob.user_id] = json!(0);
    let (status, body) = put_state(&a, &alice, &room, "m.room.power_levels", levels).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put_state(
        &a,
        &alice,
        &room,
        "m.room.name",
        json!({"name": "alice's name"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Both up: each sends its queue to the other.
    let b = b_stopped.start().await;
    b.send_message(
        &carol,
        &room,
        json!({"msgtype": "m.text", "body": "from carol"}),
    )
    .await;
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "from alice"}),
    )
    .await;
    wait_for_message(&a, &alice, &room, "from carol").await;
    wait_for_message(&b, &bob, &room, "from alice").await;
    eventually("the same current state on A and B", || async {
        current_state(&a, &alice, &room).await == current_state(&b, &bob, &room).await
    })
    .await;

    for (server, who) in [(&a, &alice), (&b, &bob)] {
        let topic = state_content(server, who, &room, "m.room.topic").await;
        assert_eq!(topic["topic"], "before the fork", "{}", server.name());
        let name = state_content(server, who, &room, "m.room.name").await;
        assert_eq!(name["name"], "alice's name", "{}", server.name());
        let levels = state_content(server, who, &room, "m.room.power_levels").await;
        assert_eq!(levels["users"][&bob.user_id], 0, "{}", server.name());
        let member = member_or_state(server, who, &room, "m.room.member", &carol.user_id).await;
        assert_eq!(member["membership"], "join", "{}", server.name());
    }
    // Bob, demoted, cannot set the topic on his own server now.
    let (status, body) =
        put_state(&b, &bob, &room, "m.room.topic", json!({"topic": "again"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    a.stop().await;
    b.stop().await;
}
