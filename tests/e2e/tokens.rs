//! The tokens clients really hold, passed where the spec lets them (issue #17,
//! items 1 and 9): `/sync`'s `next_batch` and `prev_batch`, and `/messages`'
//! and `/context`'s `start`/`end`, as `from`, `to` and `at` of `/messages`,
//! `/members` and `/relations`; `/messages?dir=f` ending with a token to go on
//! from; the per-endpoint tokens of `/threads`, `/notifications` and
//! `/hierarchy`; and every token Lattice did not issue answered with
//! `400 M_INVALID_PARAM`, never a 500.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc};

const V1: &str = "/_matrix/client/v1";
const V3: &str = "/_matrix/client/v3";

async fn say(server: &TestServer, who: &Login, room: &str, body: &str) -> String {
    server
        .send_message(who, room, json!({ "msgtype": "m.text", "body": body }))
        .await
}

async fn next_batch(server: &TestServer, who: &Login) -> String {
    let (status, body) = server
        .get(&format!("{V3}/sync?timeout=0"), Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// `/messages` with `query`; asserts 200.
async fn messages(server: &TestServer, who: &Login, room: &str, query: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/messages?{query}", enc(room)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// The bodies of the messages in a chunk, in the chunk's order.
fn bodies(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Users whose membership in a `/members` answer is `join`.
async fn joined_at(server: &TestServer, who: &Login, room: &str, at: Option<&str>) -> Vec<String> {
    let query = at.map_or(String::new(), |at| format!("?at={}", enc(at)));
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/members{query}", enc(room)),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["membership"] == "join")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Element lazy-loads members with `at=<sync next_batch>` before every
/// encrypted send; the answer is the membership as of that sync.
#[tokio::test]
async fn members_at_a_sync_token_or_prev_batch_is_the_membership_then() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    say(&server, &alice, &room, "before bob").await;
    let before_bob = next_batch(&server, &alice).await;
    server.join(&bob, &room).await;
    say(&server, &bob, &room, "hi").await;
    let after_bob = next_batch(&server, &alice).await;

    let both = {
        let mut v = vec![alice.user_id.clone(), bob.user_id.clone()];
        v.sort();
        v
    };
    assert_eq!(
        joined_at(&server, &alice, &room, Some(&before_bob)).await,
        vec![alice.user_id.clone()]
    );
    assert_eq!(
        joined_at(&server, &alice, &room, Some(&after_bob)).await,
        both
    );
    assert_eq!(joined_at(&server, &alice, &room, None).await, both);

    // `prev_batch` of an incremental sync whose timeline starts with bob's
    // join: the state before the timeline, without him.
    let (_, gap) = server
        .get(
            &format!("{V3}/sync?since={}&timeout=0", enc(&before_bob)),
            Some(&alice.access_token),
        )
        .await;
    let timeline = &gap["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        timeline["events"][0]["state_key"],
        bob.user_id.as_str(),
        "{gap}"
    );
    let prev = timeline["prev_batch"].as_str().expect("prev_batch");
    assert_eq!(
        joined_at(&server, &alice, &room, Some(prev)).await,
        vec![alice.user_id.clone()]
    );
}

/// matrix-nio's `room_messages(start=next_batch)`: the newest events, then on
/// through `end`; forwards from the same token, only what came after.
#[tokio::test]
async fn messages_from_a_sync_token_pages_both_ways() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..5 {
        say(&server, &alice, &room, &format!("m{i}")).await;
    }
    let next = next_batch(&server, &alice).await;
    say(&server, &alice, &room, "m5").await;

    let page = messages(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=3&from={}", enc(&next)),
    )
    .await;
    assert_eq!(bodies(&page), vec!["m4", "m3", "m2"], "{page}");
    assert_eq!(page["start"], next.as_str(), "start echoes from: {page}");
    let end = page["end"].as_str().expect("end");
    let older = messages(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=2&from={}", enc(end)),
    )
    .await;
    assert_eq!(bodies(&older), vec!["m1", "m0"], "{older}");

    let newer = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=10&from={}", enc(&next)),
    )
    .await;
    assert_eq!(bodies(&newer), vec!["m5"], "{newer}");
}

/// Element fills a gap with `from=<prev_batch>&to=<older next_batch>`: exactly
/// the missing events, and a forward page with `to=<next_batch>` stops at it.
#[tokio::test]
async fn messages_to_a_sync_token_stops_at_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..3 {
        say(&server, &alice, &room, &format!("m{i}")).await;
    }
    let older = next_batch(&server, &alice).await;
    for i in 3..7 {
        say(&server, &alice, &room, &format!("m{i}")).await;
    }
    let filter = enc(&json!({ "room": { "timeline": { "limit": 2 } } }).to_string());
    let (_, gap) = server
        .get(
            &format!("{V3}/sync?since={}&filter={filter}", enc(&older)),
            Some(&alice.access_token),
        )
        .await;
    let timeline = &gap["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true, "{gap}");
    let prev = timeline["prev_batch"].as_str().unwrap();

    let filled = messages(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=10&from={}&to={}", enc(prev), enc(&older)),
    )
    .await;
    assert_eq!(bodies(&filled), vec!["m4", "m3"], "{filled}");

    // Forwards from `prev_batch`: the timeline itself, first event included.
    let timeline_again = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=10&from={}", enc(prev)),
    )
    .await;
    assert_eq!(
        bodies(&timeline_again),
        vec!["m5", "m6"],
        "{timeline_again}"
    );

    // From the room's start up to the older sync: nothing after m2.
    let upto = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=50&to={}", enc(&older)),
    )
    .await;
    assert_eq!(bodies(&upto), vec!["m0", "m1", "m2"], "{upto}");
    assert_eq!(upto["chunk"][0]["type"], "m.room.create", "{upto}");
}

/// `/messages?dir=f` that reaches the newest event still gives `end`, and that
/// token later returns exactly what was sent since (matrix-rust-sdk relies on it).
#[tokio::test]
async fn forward_messages_at_the_end_give_an_end_to_continue_from() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    say(&server, &alice, &room, "m0").await;
    say(&server, &alice, &room, "m1").await;
    let all = messages(&server, &alice, &room, "dir=f&limit=100").await;
    assert_eq!(bodies(&all), vec!["m0", "m1"], "{all}");
    let end = all["end"]
        .as_str()
        .expect("end at the newest event")
        .to_owned();

    say(&server, &alice, &room, "m2").await;
    say(&server, &alice, &room, "m3").await;
    let more = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=100&from={}", enc(&end)),
    )
    .await;
    assert_eq!(bodies(&more), vec!["m2", "m3"], "{more}");
    assert_eq!(more["chunk"].as_array().unwrap().len(), 2, "{more}");
    let end2 = more["end"].as_str().expect("end").to_owned();
    let none = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=100&from={}", enc(&end2)),
    )
    .await;
    assert!(none["chunk"].as_array().unwrap().is_empty(), "{none}");

    // Backwards, the start of the room still ends the pagination.
    let first = messages(&server, &alice, &room, "dir=b&limit=100").await;
    assert!(first.get("end").is_none(), "{first}");
    // A backward page's `end` is a gap before its oldest event: forwards from
    // it, that event comes again, then the newer ones.
    let back = messages(&server, &alice, &room, "dir=b&limit=2").await;
    assert_eq!(bodies(&back), vec!["m3", "m2"], "{back}");
    let end = back["end"].as_str().unwrap();
    let fwd = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=10&from={}", enc(end)),
    )
    .await;
    assert_eq!(bodies(&fwd), vec!["m2", "m3"], "{fwd}");
}

/// `/context`'s `start` and `end` continue with `/messages` on either side.
#[tokio::test]
async fn context_tokens_continue_with_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(say(&server, &alice, &room, &format!("m{i}")).await);
    }
    let (status, ctx) = server
        .get(
            &format!("{V3}/rooms/{}/context/{}?limit=2", enc(&room), enc(&ids[3])),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ctx}");
    assert_eq!(ctx["events_before"][0]["content"]["body"], "m2", "{ctx}");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "m4", "{ctx}");
    let start = ctx["start"].as_str().unwrap();
    let end = ctx["end"].as_str().unwrap();
    let before = messages(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=2&from={}", enc(start)),
    )
    .await;
    assert_eq!(bodies(&before), vec!["m1", "m0"], "{before}");
    let after = messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=2&from={}", enc(end)),
    )
    .await;
    assert_eq!(bodies(&after), vec!["m5", "m6"], "{after}");
}

/// `/relations`: topological pages through `next_batch`, `from` and `to` from
/// `/sync`, `prev_batch` echoing `from`, and `recurse` with `recursion_depth`.
#[tokio::test]
async fn relations_page_with_room_tokens_and_recurse() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let room = server.create_room(&alice, json!({})).await;
    let root = say(&server, &alice, &room, "root").await;
    let reply = |n: usize| {
        json!({ "msgtype": "m.text", "body": format!("r{n}"),
                "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
    };
    let r1 = server.send_message(&alice, &room, reply(1)).await;
    let r2 = server.send_message(&alice, &room, reply(2)).await;
    let mid = next_batch(&server, &alice).await;
    let r3 = server.send_message(&alice, &room, reply(3)).await;
    let r4 = server.send_message(&alice, &room, reply(4)).await;
    // A reaction to a reply: related to the root only indirectly.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{}/send/m.reaction/react1", enc(&room)),
            t,
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": r2, "key": "👍" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reaction = body["event_id"].as_str().unwrap().to_owned();

    let get = |query: String| {
        let path = format!("{V1}/rooms/{}/relations/{}?{query}", enc(&room), enc(&root));
        let server = &server;
        async move {
            let (status, body) = server.get(&path, t).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = get("dir=b&limit=2".into()).await;
    assert_eq!(ids(&first), vec![r4.clone(), r3.clone()], "{first}");
    assert!(first.get("prev_batch").is_none(), "{first}");
    assert!(first.get("recursion_depth").is_none(), "{first}");
    let next = first["next_batch"].as_str().expect("next_batch").to_owned();
    let second = get(format!("dir=b&limit=2&from={}", enc(&next))).await;
    assert_eq!(ids(&second), vec![r2.clone(), r1.clone()], "{second}");
    assert_eq!(second["prev_batch"], next.as_str(), "{second}");

    // From and to a sync token.
    let from_sync = get(format!("dir=b&from={}", enc(&mid))).await;
    assert_eq!(ids(&from_sync), vec![r2.clone(), r1.clone()], "{from_sync}");
    let to_sync = get(format!("dir=b&to={}", enc(&mid))).await;
    assert_eq!(ids(&to_sync), vec![r4.clone(), r3.clone()], "{to_sync}");
    let forwards = get(format!("dir=f&from={}", enc(&mid))).await;
    assert_eq!(ids(&forwards), vec![r3.clone(), r4.clone()], "{forwards}");

    // Recursion reaches the reaction to a reply, and says how deep it went.
    let deep = get("dir=f&recurse=true".into()).await;
    assert_eq!(
        ids(&deep),
        vec![
            r1.clone(),
            r2.clone(),
            r3.clone(),
            r4.clone(),
            reaction.clone()
        ],
        "{deep}"
    );
    assert_eq!(deep["recursion_depth"], 3, "{deep}");
    let (status, threads_only) = server
        .get(
            &format!(
                "{V1}/rooms/{}/relations/{}/m.thread?recurse=true",
                enc(&room),
                enc(&root)
            ),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{threads_only}");
    assert_eq!(
        ids(&threads_only),
        vec![r4.clone(), r3.clone(), r2.clone(), r1.clone()]
    );
    let shallow = get("dir=f".into()).await;
    assert!(!ids(&shallow).contains(&reaction), "{shallow}");
}

/// `/threads` pages with its own `next_batch`.
#[tokio::test]
async fn threads_page_with_next_batch() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut roots = Vec::new();
    for i in 0..3 {
        let root = say(&server, &alice, &room, &format!("root{i}")).await;
        server
            .send_message(
                &alice,
                &room,
                json!({ "msgtype": "m.text", "body": "reply",
                        "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
            )
            .await;
        roots.push(root);
    }
    let path = format!("{V1}/rooms/{}/threads?limit=2", enc(&room));
    let (status, first) = server.get(&path, Some(&alice.access_token)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["chunk"][0]["event_id"], roots[2].as_str(), "{first}");
    let next = first["next_batch"].as_str().expect("next_batch");
    let (status, rest) = server
        .get(
            &format!("{path}&from={}", enc(next)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest["chunk"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["chunk"][0]["event_id"], roots[0].as_str(), "{rest}");
}

/// Tokens Lattice never issued: `400 M_INVALID_PARAM` everywhere, never a 500
/// (a stream past `i64::MAX` once overflowed `/members?at=`).
#[tokio::test]
async fn forged_tokens_are_invalid_params() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let root = say(&server, &alice, &room, "root").await;
    let r = enc(&room);
    let e = enc(&root);

    let room_forged = [
        "garbage",
        "x1_1",
        "t",
        "t1",
        "t1_",
        "t_1",
        "t-1_1",
        "t1_-1",
        "t+1_1",
        "t1_1_1",
        "t99999999999999999999_1",
        "t1_99999999999999999999",
        // Within i64, but past every position Lattice has handed out.
        "t1_9223372036854775807",
        "t9223372036854775807_1",
        "t1_1000000000",
        "s",
        "s-1",
        "s+1",
        "s1_-1_0",
        "s99999999999999999999",
        "s9223372036854775807",
        "s1000000000_0_0",
        "s1_2_3_4",
        "s1_x_0",
        "h1",
        "1",
        "-1",
        "\u{1F642}",
    ];
    let paths = [
        format!("{V3}/rooms/{r}/messages?dir=b&from="),
        format!("{V3}/rooms/{r}/messages?dir=f&from="),
        format!("{V3}/rooms/{r}/messages?dir=b&to="),
        format!("{V3}/rooms/{r}/members?at="),
        format!("{V1}/rooms/{r}/relations/{e}?from="),
        format!("{V1}/rooms/{r}/relations/{e}?dir=f&to="),
        format!("{V1}/rooms/{r}/relations/{e}/m.thread?from="),
    ];
    for path in &paths {
        for token in room_forged {
            let (status, body) = server.get(&format!("{path}{}", enc(token)), t).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}{token}: {body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{path}{token}: {body}");
        }
    }
    // The per-endpoint counters.
    let counters_forged = [
        "garbage",
        "-1",
        "+1",
        "1.5",
        "99999999999999999999",
        "9223372036854775807",
        "1000000000",
        "t1_1",
        "s1",
    ];
    for path in [
        format!("{V1}/rooms/{r}/threads?from="),
        format!("{V3}/notifications?from="),
    ] {
        for token in counters_forged {
            let (status, body) = server.get(&format!("{path}{}", enc(token)), t).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}{token}: {body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{path}{token}: {body}");
        }
    }
    for token in [
        "garbage",
        "h1",
        "h-1_x",
        "h99999999999999999999999_0",
        "h1_",
    ] {
        let (status, body) = server
            .get(&format!("{V1}/rooms/{r}/hierarchy?from={}", enc(token)), t)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{token}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{token}: {body}");
    }

    // A real token of another room is a position, not an error.
    let other = server.create_room(&alice, json!({})).await;
    say(&server, &alice, &other, "elsewhere").await;
    let (_, page) = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=1", enc(&other)),
            t,
        )
        .await;
    let foreign = page["end"]
        .as_str()
        .unwrap_or(page["start"].as_str().unwrap());
    for path in [
        format!("{V3}/rooms/{r}/messages?dir=b&from={}", enc(foreign)),
        format!("{V3}/rooms/{r}/members?at={}", enc(foreign)),
        format!("{V1}/rooms/{r}/relations/{e}?from={}", enc(foreign)),
    ] {
        let (status, body) = server.get(&path, t).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

/// `/hierarchy` tokens belong to one walk: another space's, or one used with a
/// changed `max_depth` or `suggested_only` (which the spec forbids), is refused.
#[tokio::test]
async fn hierarchy_tokens_belong_to_their_walk() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let t = Some(alice.access_token.as_str());
    let space_body = json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } });
    let space = server.create_room(&alice, space_body.clone()).await;
    let other_space = server.create_room(&alice, space_body).await;
    let mut children = Vec::new();
    for (parent, n) in [(&space, 2), (&other_space, 2)] {
        for i in 0..n {
            let child = server
                .create_room(
                    &alice,
                    json!({ "preset": "public_chat", "name": format!("c{i}") }),
                )
                .await;
            let (status, body) = server
                .put(
                    &format!(
                        "{V3}/rooms/{}/state/m.space.child/{}",
                        enc(parent),
                        enc(&child)
                    ),
                    t,
                    json!({ "via": ["test.local"], "order": format!("{i}") }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            children.push(child);
        }
    }
    let path =
        |room: &str, extra: &str| format!("{V1}/rooms/{}/hierarchy?limit=1{extra}", enc(room));
    let (status, first) = server.get(&path(&space, ""), t).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let next = first["next_batch"].as_str().expect("next_batch").to_owned();
    let from = format!("&from={}", enc(&next));
    let (status, second) = server.get(&path(&space, &from), t).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["rooms"][0]["room_id"],
        children[0].as_str(),
        "{second}"
    );

    for (room, extra) in [
        (&other_space, from.clone()),
        (&space, format!("{from}&max_depth=1")),
        (&space, format!("{from}&suggested_only=true")),
    ] {
        let (status, body) = server.get(&path(room, &extra), t).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{extra}: {body}");
    }
}

/// matrix-nio: `room_messages(room_id, start=<sync next_batch>)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_pages_messages_from_its_sync_token() {
    let python = crate::harness::setup_script("python-env");
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_tokens.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok !"), "{stdout}");
}
