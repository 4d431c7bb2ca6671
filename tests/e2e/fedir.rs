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

async fn summary(
    server: &TestServer,
    token: Option<&str>,
    room: &str,
    via: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/client/v1/room_summary/{}?via={}",
                enc(room),
                enc(via)
            ),
            token,
        )
        .await
}

async fn add_child(
    server: &TestServer,
    who: &crate::harness::Login,
    space: &str,
    child: &str,
    via: &str,
) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            Some(&who.access_token),
            json!({"via": [via], "suggested": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn restricted_to(room: &str) -> Value {
    json!({"type": "m.room.join_rules", "state_key": "",
           "content": {"join_rule": "restricted",
                       "allow": [{"type": "m.room_membership", "room_id": room}]}})
}

#[tokio::test]
async fn room_summary_of_a_room_on_another_server() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let carol = b.register("carol", "password-c").await;
    let lobby = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby",
                   "topic": "come in"}),
        )
        .await;
    let private = a
        .create_room(&alice, json!({"preset": "private_chat", "name": "Private"}))
        .await;
    let members = a
        .create_room(
            &alice,
            json!({"name": "Members", "initial_state": [restricted_to(&lobby)]}),
        )
        .await;

    // A public room B is not in: asked of A over federation.
    let (status, body) = summary(&b, Some(&bob.access_token), &lobby, a.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], lobby);
    assert_eq!(body["name"], "Lobby");
    assert_eq!(body["topic"], "come in");
    assert_eq!(body["join_rule"], "public");
    assert_eq!(body["num_joined_members"], 1);
    assert_eq!(body["membership"], "leave");
    assert!(body.get("children_state").is_none(), "{body}");
    // Without a token too, and by alias (resolved through A).
    let (status, body) = summary(&b, None, &lobby, a.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("membership").is_none(), "{body}");
    let (status, body) = b
        .get(
            &format!(
                "/_matrix/client/v1/room_summary/{}",
                enc(&format!("#lobby:{}", a.name()))
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], lobby);

    // A private room: A does not show it to B, so it is not found.
    let (status, body) = summary(&b, Some(&bob.access_token), &private, a.name()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // Without a via, a room ID without a server name cannot be asked for.
    let (status, _) = b
        .get(
            &format!("/_matrix/client/v1/room_summary/{}", enc(&lobby)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A restricted room: hidden until someone of B is in the allowed room,
    // then shown to that user only.
    let (status, body) = summary(&b, Some(&bob.access_token), &members, a.name()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    join_via(&b, &bob, &lobby, a.name()).await;
    crate::harness::eventually("bob in the lobby on A", || async {
        summary(&b, Some(&bob.access_token), &members, a.name())
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let (_, body) = summary(&b, Some(&bob.access_token), &members, a.name()).await;
    assert_eq!(body["name"], "Members");
    assert_eq!(body["join_rule"], "restricted");
    assert_eq!(body["allowed_room_ids"], json!([lobby]));
    let (status, body) = summary(&b, Some(&carol.access_token), &members, a.name()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "carol is not in the lobby: {body}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn lying_room_summaries_are_refused_or_trimmed() {
    let lattice = impatient().await;
    let peer = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let room = format!("!asked:{}", peer.name());
    let path = "/_matrix/federation/v1/hierarchy/";
    let public = |id: &str, name: String| {
        json!({"room": {"room_id": id, "name": name, "join_rule": "public",
                        "num_joined_members": 3, "world_readable": false,
                        "guest_can_join": false, "children_state": []},
               "children": [], "inaccessible_children": []})
    };

    // The summary of another room than the one asked for.
    peer.on(
        Method::GET,
        path,
        Answer::Json(
            StatusCode::OK,
            public("!other:elsewhere.example", "Other".into()),
        ),
    );
    let (status, body) = summary(&lattice, Some(&bob.access_token), &room, peer.name()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let asked = peer.received(path);
    assert!(
        asked[0].path.contains("suggested_only=false"),
        "{:?}",
        asked[0]
    );

    // The right room with an endless name: cut.
    peer.on(
        Method::GET,
        path,
        Answer::Json(StatusCode::OK, public(&room, "n".repeat(200_000))),
    );
    let (status, body) = summary(&lattice, Some(&bob.access_token), &room, peer.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["name"].as_str().unwrap().chars().count(), 1024);

    // A room the peer says is invite-only: not shown, whatever else it says.
    peer.on(
        Method::GET,
        path,
        Answer::Json(
            StatusCode::OK,
            json!({"room": {"room_id": room, "join_rule": "invite", "world_readable": "yes",
                            "allowed_room_ids": ["!not-mine:elsewhere.example"],
                            "children_state": []},
                   "children": [], "inaccessible_children": []}),
        ),
    );
    let (status, body) = summary(&lattice, Some(&bob.access_token), &room, peer.name()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // No answer: not found within the configured time.
    peer.on(Method::GET, path, Answer::Hang);
    let started = Instant::now();
    let (status, _) = summary(&lattice, Some(&bob.access_token), &room, peer.name()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() < Duration::from_secs(10));
    lattice.stop().await;
}

async fn hierarchy(server: &TestServer, who: &crate::harness::Login, space: &str) -> Vec<Value> {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(space)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"].as_array().unwrap().clone()
}

fn names(rooms: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = rooms
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn hierarchy_reaches_into_another_servers_rooms() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let space_a = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Space A",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
    let child = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "Child"}))
        .await;
    let members = a
        .create_room(
            &alice,
            json!({"name": "Members", "initial_state": [restricted_to(&space_a)]}),
        )
        .await;
    let secret = a
        .create_room(&alice, json!({"preset": "private_chat", "name": "Secret"}))
        .await;
    for room in [&child, &members, &secret] {
        add_child(&a, &alice, &space_a, room, a.name()).await;
    }
    let space_b = b
        .create_room(
            &bob,
            json!({"preset": "public_chat", "name": "Space B",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
    add_child(&b, &bob, &space_b, &space_a, a.name()).await;

    // A serves its space to B: the public child, the secret one as
    // inaccessible, the restricted one as inaccessible while nobody of B is in
    // the space.
    let a_name = ruma::ServerName::parse(a.name()).unwrap();
    let answer = b
        .state
        .federation
        .request_json(
            &a_name,
            http::Method::GET,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&space_a)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(answer["room"]["room_id"], space_a);
    assert_eq!(answer["room"]["room_type"], "m.space");
    assert_eq!(
        answer["room"]["children_state"].as_array().unwrap().len(),
        3
    );
    let children: Vec<&str> = answer["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(children, vec![child.as_str()], "{answer}");
    let mut hidden: Vec<&str> = answer["inaccessible_children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    hidden.sort();
    let mut expected = vec![members.as_str(), secret.as_str()];
    expected.sort();
    assert_eq!(hidden, expected, "{answer}");
    // A private room is not served at all.
    let err = b
        .state
        .federation
        .request_json(
            &a_name,
            http::Method::GET,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&secret)),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Bob's space reaches into A's: the space and its public child.
    let rooms = hierarchy(&b, &bob, &space_b).await;
    assert_eq!(
        names(&rooms),
        vec!["Child", "Space A", "Space B"],
        "{rooms:?}"
    );
    let remote = rooms.iter().find(|r| r["room_id"] == space_a).unwrap();
    assert_eq!(remote["children_state"].as_array().unwrap().len(), 3);

    // Once Bob is in space A, the restricted room is his to see (A shows it to
    // B, B to Bob); the secret room stays hidden.
    join_via(&b, &bob, &space_a, a.name()).await;
    crate::harness::eventually("bob sees the restricted room", || async {
        names(&hierarchy(&b, &bob, &space_b).await).contains(&"Members".to_owned())
    })
    .await;
    let rooms = hierarchy(&b, &bob, &space_b).await;
    assert_eq!(
        names(&rooms),
        vec!["Child", "Members", "Space A", "Space B"],
        "{rooms:?}"
    );
    assert!(rooms.iter().all(|r| r.get("allowed_room_ids").is_none()));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn lying_hierarchies_are_refused_or_trimmed() {
    let lattice = impatient().await;
    let peer = HostilePeer::start().await;
    let bob = lattice.register("bob", "password-b").await;
    let space = lattice
        .create_room(
            &bob,
            json!({"preset": "public_chat", "name": "Space",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
    let remote = format!("!remote:{}", peer.name());
    add_child(&lattice, &bob, &space, &remote, peer.name()).await;
    let path = "/_matrix/federation/v1/hierarchy/";

    // Another room than asked for: left out.
    peer.on(
        Method::GET,
        path,
        Answer::Json(
            StatusCode::OK,
            json!({"room": {"room_id": "!other:elsewhere.example", "name": "Other",
                            "join_rule": "public", "children_state": []},
                   "children": [], "inaccessible_children": []}),
        ),
    );
    let rooms = hierarchy(&lattice, &bob, &space).await;
    assert_eq!(names(&rooms), vec!["Space"], "{rooms:?}");

    // The right room with five thousand children, some malformed, and a
    // children list of rooms it claims: children_state is cut to 100 valid
    // events, and only the page's rooms are listed.
    let mut state: Vec<Value> = (0..5_000)
        .map(|i| {
            json!({"type": "m.space.child", "state_key": format!("!c{i}:elsewhere.example"),
                        "content": {"via": ["elsewhere.example"]}, "sender": "@m:elsewhere.example",
                        "origin_server_ts": i})
        })
        .collect();
    state.insert(
        0,
        json!({"type": "m.space.child", "state_key": "junk", "content": {"via": ["x"]}}),
    );
    state.insert(
        1,
        json!({"type": "m.room.name", "state_key": "!n:elsewhere.example"}),
    );
    peer.on(
        Method::GET,
        path,
        Answer::Json(
            StatusCode::OK,
            json!({"room": {"room_id": remote, "name": "Remote", "join_rule": "public",
                            "room_type": "m.space", "children_state": state},
                   "children": [], "inaccessible_children": []}),
        ),
    );
    let (status, body) = lattice
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/hierarchy?max_depth=1",
                enc(&space)
            ),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    assert_eq!(names(rooms), vec!["Remote", "Space"], "{body}");
    let remote_entry = rooms
        .iter()
        .find(|r| r["room_id"] == remote.as_str())
        .unwrap();
    let kids = remote_entry["children_state"].as_array().unwrap();
    assert_eq!(kids.len(), 100);
    assert_eq!(kids[0]["state_key"], "!c0:elsewhere.example");

    // An invite-only room is not shown to Bob, whatever the peer serves.
    peer.on(
        Method::GET,
        path,
        Answer::Json(
            StatusCode::OK,
            json!({"room": {"room_id": remote, "name": "Remote", "join_rule": "invite",
                            "children_state": []},
                   "children": [], "inaccessible_children": []}),
        ),
    );
    let rooms = hierarchy(&lattice, &bob, &space).await;
    assert_eq!(names(&rooms), vec!["Space"], "{rooms:?}");
    lattice.stop().await;
}

async fn join_via(server: &TestServer, who: &crate::harness::Login, room: &str, via: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            Some(&who.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
