//! Directories over federation (issue #17): remote aliases, other servers'
//! public room lists, room summaries and space hierarchies of rooms this server
//! is not in. Two Lattice servers for the honest paths, the hostile peer for
//! answers that lie or flood.

use std::time::{Duration, Instant};

use axum::{body::Bytes, http::Method};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, enc},
    hostile::{Answer, HostilePeer},
};

/// A server whose queries to others give up after two seconds.
async fn impatient() -> TestServer {
    TestServer::start_federating_with(|c| c.federation.request_timeout_secs = 2).await
}

#[tokio::test]
async fn remote_alias_resolves_through_its_server_and_lists_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "dir"}),
        )
        .await;
    let alias = format!("#dir:{}", a.name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));

    // B asks A: the room and A, the only server in it.
    let (status, body) = b.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    assert_eq!(body["servers"], json!([a.name()]));

    // An alias A does not have is not found, through B too.
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc(&format!("#nope:{}", a.name()))
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // Bob joins by the alias (through the servers it named).
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);

    // Now both servers are in the room: A lists itself first, then B, on the
    // client API and to other servers.
    crate::harness::eventually("bob's join on A", || async {
        let (_, body) = a.get(&path, Some(&alice.access_token)).await;
        body["servers"] == json!([a.name(), b.name()])
    })
    .await;
    let a_name = ruma::ServerName::parse(a.name()).unwrap();
    let answer = b
        .state
        .federation
        .request_json(
            &a_name,
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                enc(&alias)
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(answer["room_id"], room);
    assert_eq!(answer["servers"], json!([a.name(), b.name()]));
    // B, now in the room, lists itself first for A's alias.
    let (status, body) = b.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["servers"], json!([b.name(), a.name()]));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn lying_alias_answers_are_refused_or_trimmed() {
    let lattice = impatient().await;
    let peer = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let alias = format!("#x:{}", peer.name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    let query = "/_matrix/federation/v1/query/directory";

    // Not a room ID.
    peer.on(
        Method::GET,
        query,
        Answer::Json(
            StatusCode::OK,
            json!({"room_id": "not a room", "servers": [peer.name()]}),
        ),
    );
    let (status, body) = lattice.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // Two thousand servers, some not server names: cut to 50 valid ones.
    let mut servers: Vec<Value> = (0..2_000).map(|i| json!(format!("s{i}.example"))).collect();
    servers.insert(0, json!("not a server!"));
    servers.insert(1, json!(42));
    peer.on(
        Method::GET,
        query,
        Answer::Json(
            StatusCode::OK,
            json!({"room_id": "!room:elsewhere.example", "servers": servers}),
        ),
    );
    let (status, body) = lattice.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], "!room:elsewhere.example");
    let listed = body["servers"].as_array().unwrap();
    assert_eq!(listed.len(), 50, "{body}");
    assert_eq!(listed[0], "s0.example");
    assert!(
        listed
            .iter()
            .all(|s| s.as_str().is_some_and(|s| !s.contains(' ')))
    );

    // A body larger than an alias answer may be.
    peer.on(
        Method::GET,
        query,
        Answer::Raw(
            StatusCode::OK,
            vec![("content-type".into(), "application/json".into())],
            Bytes::from(format!(
                "{{\"room_id\":\"!room:elsewhere.example\",\"servers\":[\"{}\"]}}",
                "a".repeat(1024 * 1024)
            )),
        ),
    );
    let (status, body) = lattice.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A server that never answers costs the client the configured timeout.
    peer.on(Method::GET, query, Answer::Hang);
    let started = Instant::now();
    let (status, body) = lattice.get(&path, Some(&bob.access_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    lattice.stop().await;
}

#[tokio::test]
async fn public_rooms_of_another_server() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    for (alias, name) in [("cats", "Cats"), ("dogs", "Dogs")] {
        a.create_room(
            &alice,
            json!({"preset": "public_chat", "visibility": "public",
                   "room_alias_name": alias, "name": name, "topic": format!("all about {alias}")}),
        )
        .await;
    }
    // A private room A does not publish.
    a.create_room(&alice, json!({"name": "Secret"})).await;
    let server = enc(a.name());

    // GET: A's published rooms, paged as A pages them.
    let (status, page) = b
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}&limit=1"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["total_room_count_estimate"], 2);
    let first = page["chunk"][0]["name"].clone();
    let since = page["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, page) = b
        .get(
            &format!(
                "/_matrix/client/v3/publicRooms?server={server}&limit=1&since={}",
                enc(&since)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let second = page["chunk"][0]["name"].clone();
    let mut names = vec![first, second];
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, vec![json!("Cats"), json!("Dogs")]);
    assert_eq!(page["chunk"][0]["num_joined_members"], 1);
    assert!(
        page["chunk"][0]["canonical_alias"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", a.name()))
    );

    // POST with a filter: A searches.
    let (status, page) = b
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&bob.access_token),
            json!({"filter": {"generic_search_term": "cats"}, "limit": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{page}");
    assert_eq!(chunk[0]["name"], "Cats");
    assert_eq!(chunk[0]["topic"], "all about cats");

    // Asking another server needs a token.
    let (status, body) = b
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn lying_public_room_lists_are_checked_and_trimmed() {
    let lattice = impatient().await;
    let peer = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let server = enc(peer.name());
    let fed_path = "/_matrix/federation/v1/publicRooms";

    // Two thousand rooms, some without valid room IDs, one with a huge name
    // and fields of the wrong type.
    let mut chunk: Vec<Value> = (0..2_000)
        .map(|i| {
            json!({"room_id": format!("!r{i}:elsewhere.example"), "num_joined_members": i,
                        "world_readable": false, "guest_can_join": false})
        })
        .collect();
    chunk.insert(0, json!({"room_id": "nonsense", "num_joined_members": 5}));
    chunk.insert(
        1,
        json!({"room_id": "!big:elsewhere.example", "name": "n".repeat(100_000),
               "num_joined_members": "many", "world_readable": "yes",
               "canonical_alias": "not an alias", "avatar_url": "javascript:alert(1)"}),
    );
    let answer = json!({"chunk": chunk, "next_batch": "x".repeat(5_000),
                        "total_room_count_estimate": 2_001});
    peer.on(
        Method::GET,
        fed_path,
        Answer::Json(StatusCode::OK, answer.clone()),
    );
    peer.on(Method::POST, fed_path, Answer::Json(StatusCode::OK, answer));

    let (status, page) = lattice
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}&limit=5"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rooms = page["chunk"].as_array().unwrap();
    assert_eq!(rooms.len(), 5, "asked for 5");
    assert_eq!(rooms[0]["room_id"], "!big:elsewhere.example");
    assert_eq!(rooms[0]["name"].as_str().unwrap().chars().count(), 1024);
    assert_eq!(rooms[0]["num_joined_members"], 0);
    assert_eq!(rooms[0]["world_readable"], false);
    assert!(rooms[0].get("canonical_alias").is_none(), "{}", rooms[0]);
    assert!(rooms[0].get("avatar_url").is_none(), "{}", rooms[0]);
    assert_eq!(rooms[1]["room_id"], "!r0:elsewhere.example");
    assert!(
        page.get("next_batch").is_none(),
        "an oversized token is dropped"
    );
    assert_eq!(page["total_room_count_estimate"], 2_001);
    // The peer was asked with the client's limit.
    let asked = peer.received(fed_path);
    assert!(asked[0].path.contains("limit=5"), "{:?}", asked[0]);

    // No limit: at most 500 rooms relayed.
    let (status, page) = lattice
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&bob.access_token),
            json!({"filter": {"generic_search_term": "r1"}, "include_all_networks": true,
                   "since": "abc"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"].as_array().unwrap().len(), 500);
    let posted = peer
        .received(fed_path)
        .into_iter()
        .find(|r| r.method == Method::POST)
        .expect("a POST");
    assert_eq!(posted.body["filter"]["generic_search_term"], "r1");
    assert_eq!(posted.body["include_all_networks"], true);
    assert_eq!(posted.body["since"], "abc");
    assert_eq!(posted.body["limit"], 500);

    // Not a room list, an error, too large, or no answer: 502, not 500.
    peer.on(
        Method::GET,
        fed_path,
        Answer::Json(StatusCode::OK, json!({"chunk": "no"})),
    );
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    peer.on(
        Method::GET,
        fed_path,
        Answer::Raw(
            StatusCode::OK,
            vec![("content-type".into(), "application/json".into())],
            Bytes::from(format!(
                "{{\"chunk\":[],\"pad\":\"{}\"}}",
                "a".repeat(5 * 1024 * 1024)
            )),
        ),
    );
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    peer.on(Method::GET, fed_path, Answer::Hang);
    let started = Instant::now();
    let (status, body) = lattice
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    lattice.stop().await;
}
