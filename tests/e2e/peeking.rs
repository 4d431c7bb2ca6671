//! Previews of world-readable rooms (#17 item 8): a user who is not in a room
//! whose history is `world_readable` reads its history, state, members and
//! events, as the spec's history visibility rules allow and Synapse does; a
//! guest too. Only events sent while the room was world-readable show, and
//! nothing shows once it stops being. `/joined_members` stays for members: the
//! spec says the user "must be in the room", and Synapse answers 403.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ClientApi, Login, TestServer, enc};

const V3: &str = "/_matrix/client/v3";

fn msg(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

async fn set_visibility(server: &TestServer, who: &Login, room: &str, visibility: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/state/m.room.history_visibility/", enc(room)),
            Some(&who.access_token),
            json!({"history_visibility": visibility}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The message bodies a reader gets from `/messages` (oldest first), or the
/// status when the answer is not 200.
async fn bodies(api: &ClientApi, token: &str, room: &str) -> Result<Vec<String>, StatusCode> {
    let (status, body) = api
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=50", enc(room)),
            Some(token),
        )
        .await;
    if status != StatusCode::OK {
        return Err(status);
    }
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    Ok(out)
}

/// Every read a previewer makes: `/messages`, `/state`, one state event,
/// `/members`, `/event`, `/context`. Returns the statuses in that order.
async fn reads(api: &ClientApi, token: &str, room: &str, event: &str) -> Vec<StatusCode> {
    let r = enc(room);
    let e = enc(event);
    let mut out = Vec::new();
    for path in [
        format!("{V3}/rooms/{r}/messages?dir=b"),
        format!("{V3}/rooms/{r}/state"),
        format!("{V3}/rooms/{r}/state/m.room.name/"),
        format!("{V3}/rooms/{r}/members"),
        format!("{V3}/rooms/{r}/event/{e}"),
        format!("{V3}/rooms/{r}/context/{e}"),
    ] {
        out.push(api.get(&path, Some(token)).await.0);
    }
    out
}

#[tokio::test]
async fn world_readable_rooms_can_be_previewed_by_non_members() {
    let server = TestServer::start_with(|c| c.registration.guests = true).await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Open"}))
        .await;
    // Sent while history is `shared`: never for non-members.
    server
        .send_message(&alice, &room, msg("members only"))
        .await;
    set_visibility(&server, &alice, &room, "world_readable").await;
    let public = server
        .send_message(&alice, &room, msg("for everyone"))
        .await;

    let ok = vec![StatusCode::OK; 6];
    assert_eq!(
        reads(&server.api, &bob.access_token, &room, &public).await,
        ok
    );
    assert_eq!(
        bodies(&server.api, &bob.access_token, &room).await,
        Ok(vec!["for everyone".to_owned()]),
        "a previewer sees what was sent while the room was world-readable, only that"
    );
    let (status, members) = server
        .get(
            &format!("{V3}/rooms/{}/members", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let members: Vec<&str> = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["state_key"].as_str())
        .collect();
    assert_eq!(members, vec!["@alice:test.local"]);

    // A guest previews too (the spec's guest-access endpoints include these).
    let (status, guest) = server
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    let guest = guest["access_token"].as_str().unwrap().to_owned();
    assert_eq!(reads(&server.api, &guest, &room, &public).await, ok);

    // `/joined_members` is for members (spec; Synapse answers 403 too).
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/joined_members", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Without a token: no preview (the client API needs one).
    let (status, _) = server
        .get(&format!("{V3}/rooms/{}/messages?dir=b", enc(&room)), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn previews_end_when_the_room_stops_being_world_readable() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Was open", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "world_readable"}}]}),
        )
        .await;
    let public = server.send_message(&alice, &room, msg("was public")).await;
    assert_eq!(
        bodies(&server.api, &bob.access_token, &room).await,
        Ok(vec!["was public".to_owned()])
    );
    set_visibility(&server, &alice, &room, "shared").await;
    server.send_message(&alice, &room, msg("now private")).await;
    // `/event` answers 404 for an event the reader may not see (as Synapse).
    let refused = {
        let mut r = vec![StatusCode::FORBIDDEN; 6];
        r[4] = StatusCode::NOT_FOUND;
        r
    };
    assert_eq!(
        reads(&server.api, &bob.access_token, &room, &public).await,
        refused
    );
    assert_eq!(
        bodies(&server.api, &bob.access_token, &room).await,
        Err(StatusCode::FORBIDDEN)
    );

    // A room that never was world-readable: no preview, and the same answer as
    // for a room that does not exist (no existence oracle).
    let private = server
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let secret = server.send_message(&alice, &private, msg("secret")).await;
    assert_eq!(
        reads(&server.api, &bob.access_token, &private, &secret).await,
        refused
    );
    assert_eq!(
        reads(
            &server.api,
            &bob.access_token,
            "!nosuchroom:test.local",
            "$nosuchevent"
        )
        .await,
        refused
    );
}
