//! Invites over federation: a remote user invites a namespace user into a
//! room none of this server's users is in (the invite arrives through
//! `PUT /_matrix/federation/v2/invite`, not the event writer). Two Lattice
//! servers.

use reqwest::StatusCode;
use serde_json::json;

use super::{
    V3,
    ephemeral::{as_token, listen, registration},
};
use crate::harness::{Login, TestServer, enc, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invite_over_federation_reaches_the_appservice_and_the_ghost_joins() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, addr) = listen("fed").await;
    let ours = TestServer::start_federating_with(|c| {
        c.appservices = vec![registration(dir.path(), "fed", addr, "", &c.server_name)];
    })
    .await;
    let theirs = TestServer::start_federating().await;

    let (status, body) = ours
        .post(
            &format!("{V3}/register"),
            Some(&as_token("fed")),
            json!({ "type": "m.login.application_service", "username": "fed_bob" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ghost = Login::from_json(&body);
    let carol = ours.register("carol", "pw").await;

    let alice = theirs.register("alice", "pw").await;
    // A room Alice invites carol (no namespace user) into first, then one
    // she invites the ghost into.
    let other = theirs.create_room(&alice, json!({})).await;
    let room = theirs.create_room(&alice, json!({})).await;
    for (room, who) in [(&other, &carol.user_id), (&room, &ghost.user_id)] {
        let (status, body) = theirs
            .post(
                &format!("{V3}/rooms/{}/invite", enc(room)),
                Some(&alice.access_token),
                json!({ "user_id": who }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    eventually("the invite at the appservice", || {
        let rec = rec.clone();
        let room = room.clone();
        async move {
            rec.all("events")
                .iter()
                .any(|e| e["room_id"] == room.as_str())
        }
    })
    .await;
    let events = rec.all("events");
    let invite = events
        .iter()
        .find(|e| e["room_id"] == room.as_str())
        .unwrap();
    assert_eq!(invite["type"], "m.room.member");
    assert_eq!(invite["state_key"], ghost.user_id.as_str());
    assert_eq!(invite["sender"], alice.user_id.as_str());
    assert_eq!(invite["content"]["membership"], "invite");
    assert!(invite["event_id"].is_string());
    assert!(
        events.iter().all(|e| e["room_id"] != other.as_str()),
        "carol's invite is not the appservice's business: {events:?}"
    );

    // The bridge accepts as the ghost, through the inviting server, and then
    // gets the room's events.
    let (status, body) = ours
        .post(
            &format!(
                "{V3}/join/{}?user_id={}&server_name={}",
                enc(&room),
                enc(&ghost.user_id),
                enc(theirs.name())
            ),
            Some(&as_token("fed")),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = theirs
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "over there" }),
        )
        .await;
    eventually("alice's message at the appservice", || {
        let rec = rec.clone();
        let sent = sent.clone();
        async move {
            rec.all("events")
                .iter()
                .any(|e| e["event_id"] == sent.as_str())
        }
    })
    .await;
    let invites = rec
        .all("events")
        .iter()
        .filter(|e| {
            e["state_key"] == ghost.user_id.as_str() && e["content"]["membership"] == "invite"
        })
        .count();
    assert_eq!(invites, 1, "the invite once");
}
