//! What Element, matrix-js-sdk and matrix-rust-sdk ask of a server besides the
//! core API (issue #17): aliases leaving `m.room.canonical_alias` when deleted.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const V3: &str = "/_matrix/client/v3";

async fn canonical_alias(server: &TestServer, who: &Login, room: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&who.access_token),
        )
        .await
}

async fn put_alias(server: &TestServer, who: &Login, alias: &str, room: &str) {
    let (status, body) = server
        .put(
            &format!("{V3}/directory/room/{}", enc(alias)),
            Some(&who.access_token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn delete_alias(server: &TestServer, who: &Login, alias: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::DELETE,
            &format!("{V3}/directory/room/{}", enc(alias)),
            Some(&who.access_token),
            None,
        )
        .await
}

#[tokio::test]
async fn deleting_an_alias_removes_it_from_the_canonical_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "main" }),
        )
        .await;
    server.join(&bob, &room).await;
    for alias in ["#alt:test.local", "#other:test.local"] {
        put_alias(&server, &alice, alias, &room).await;
    }
    // Bob (no power over the canonical alias) creates an alias of his own.
    put_alias(&server, &bob, "#bobs:test.local", &room).await;
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&alice.access_token),
            json!({ "alias": "#main:test.local",
                    "alt_aliases": ["#alt:test.local", "#other:test.local", "#bobs:test.local"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Deleting the canonical alias: it no longer resolves and the event drops it.
    let (status, body) = delete_alias(&server, &alice, "#main:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .get(
            &format!("{V3}/directory/room/{}", enc("#main:test.local")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(
        content,
        json!({ "alt_aliases": ["#alt:test.local", "#other:test.local", "#bobs:test.local"] })
    );

    // An alternative alias: removed from alt_aliases, the others kept.
    let (status, body) = delete_alias(&server, &alice, "#alt:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(
        content,
        json!({ "alt_aliases": ["#other:test.local", "#bobs:test.local"] })
    );
    // The update is alice's own state event.
    let (_, event) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/?format=event"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(event["sender"], alice.user_id.as_str(), "{event}");

    // Bob may delete the alias he created, but deleting is no way to change
    // state he has no power over: the event stays as it is (as in Synapse).
    let (status, body) = delete_alias(&server, &bob, "#bobs:test.local").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, after) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.canonical_alias/?format=event"),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(after["event_id"], event["event_id"], "{after}");
    // Nor may he delete alice's alias.
    let (status, body) = delete_alias(&server, &bob, "#other:test.local").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, content) = canonical_alias(&server, &alice, &room).await;
    assert_eq!(content["alt_aliases"][0], "#other:test.local");
}
