//! Account lifecycle beyond registration and login: deactivation (with and
//! without erasure), and what other users see afterwards.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, enc, password_auth};

const V3: &str = "/_matrix/client/v3";

/// Deactivates `who` through UIA with their password (`erase` as given).
async fn deactivate(server: &TestServer, who: &Login, password: &str, erase: bool) -> Value {
    let t = Some(who.access_token.as_str());
    let (status, body) = server
        .post(&format!("{V3}/account/deactivate"), t, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let localpart = who.user_id[1..].split(':').next().unwrap().to_owned();
    let (status, body) = server
        .post(
            &format!("{V3}/account/deactivate"),
            t,
            json!({ "erase": erase, "auth": password_auth(&localpart, password, &session) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `who`'s membership in `room` as a member of it (`reader`) sees it.
async fn membership_of(server: &TestServer, reader: &Login, room: &str, who: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{}", enc(room), enc(who)),
            Some(&reader.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["membership"].clone()
}

/// The content of an event as `reader` gets it from `/event`.
async fn event_content(server: &TestServer, reader: &Login, room: &str, event_id: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(room), enc(event_id)),
            Some(&reader.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["unsigned"].get("redacted_because").is_none(), "{body}");
    body["content"].clone()
}

/// The content of `event_id` in `reader`'s `/messages` page of `room`.
async fn paged_content(server: &TestServer, reader: &Login, room: &str, event_id: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=50", enc(room)),
            Some(&reader.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} not in {body}"))["content"]
        .clone()
}

#[tokio::test]
async fn deactivation_leaves_rooms_rejects_invites_withdraws_knocks() {
    let server =
        TestServer::start_with(|c| c.federation.ip_range_allowlist = vec!["127.0.0.1/32".into()])
            .await;
    let alice = server.register("alice", "alice-pw").await;
    let bob = server.register("bob", "bob-pw").await;
    let carol = server.register("carol", "carol-pw").await;
    let t = Some(alice.access_token.as_str());

    // A published room alice is joined to (and speaks in), a room she is
    // invited to, and a room she knocked on.
    let joined = server
        .create_room(
            &bob,
            json!({ "preset": "public_chat", "visibility": "public" }),
        )
        .await;
    server.join(&alice, &joined).await;
    let said = server
        .send_message(
            &alice,
            &joined,
            json!({ "msgtype": "m.text", "body": "kept" }),
        )
        .await;
    let invited = server.create_room(&bob, json!({})).await;
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/invite", enc(&invited)),
            Some(&bob.access_token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let knocked = server
        .create_room(
            &bob,
            json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "",
                    "content": { "join_rule": "knock" } }] }),
        )
        .await;
    let (status, body) = server
        .post(&format!("{V3}/knock/{}", enc(&knocked)), t, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Data of hers that must go: a pusher and account data.
    let (status, body) = server
        .post(
            &format!("{V3}/pushers/set"),
            t,
            json!({
                "pushkey": "k", "kind": "http", "app_id": "org.example.app",
                "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
                "data": { "url": "http://127.0.0.1:9/_matrix/push/v1/notify" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .put(
            &format!(
                "{V3}/user/{}/account_data/org.example.x",
                enc(&alice.user_id)
            ),
            t,
            json!({ "a": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Bob finds her in the user directory while they share a room.
    let search = || async {
        let (status, body) = server
            .post(
                &format!("{V3}/user_directory/search"),
                Some(&bob.access_token),
                json!({ "search_term": "alice" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["results"].as_array().unwrap().len()
    };
    assert_eq!(search().await, 1);

    let body = deactivate(&server, &alice, "alice-pw", false).await;
    // No 3PIDs are bound, so the spec asks for `success`.
    assert_eq!(body["id_server_unbind_result"], "success");

    // The old token is dead and the password no longer logs in.
    let (status, body) = server.whoami(&alice.access_token).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN"))
    );
    let (status, body) = server.login("alice", "alice-pw").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_USER_DEACTIVATED"))
    );

    // Out of every room: left, invite rejected, knock withdrawn.
    for room in [&joined, &invited, &knocked] {
        assert_eq!(
            membership_of(&server, &bob, room, &alice.user_id).await,
            "leave",
            "{room}"
        );
    }
    // Out of the user directory; the room stays published (as on Synapse).
    assert_eq!(search().await, 0);
    let (_, public) = server.get(&format!("{V3}/publicRooms"), None).await;
    assert!(
        public["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == joined.as_str()),
        "{public}"
    );
    // Pushers and account data are gone.
    let db = &server.state.db;
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from pushers where user_id = $1)
              + (select count(*) from account_data where user_id = $1)",
    )
    .bind(&alice.user_id)
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(left, 0);

    // Without `erase`, what she said stays readable, even to a later joiner.
    server.join(&carol, &joined).await;
    assert_eq!(
        event_content(&server, &carol, &joined, &said).await["body"],
        "kept"
    );
}

#[tokio::test]
async fn erased_users_events_are_redacted_for_later_joiners_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    let bob = server.register("bob", "bob-pw").await;
    let carol = server.register("carol", "carol-pw").await;
    // Shared history: a later joiner may read what came before.
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let secret = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "secret" }),
        )
        .await;
    let (status, _) = server
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&alice.user_id)),
            Some(&alice.access_token),
            json!({ "displayname": "Alice Real-Name" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    deactivate(&server, &alice, "alice-pw", true).await;

    // Bob was joined when she spoke: he still sees it whole.
    assert_eq!(
        event_content(&server, &bob, &room, &secret).await["body"],
        "secret"
    );
    assert_eq!(
        paged_content(&server, &bob, &room, &secret).await["body"],
        "secret"
    );

    // Carol joins afterwards: the event is there, redacted, everywhere she reads.
    server.join(&carol, &room).await;
    assert_eq!(
        event_content(&server, &carol, &room, &secret).await,
        json!({})
    );
    assert_eq!(
        paged_content(&server, &carol, &room, &secret).await,
        json!({})
    );
    let (status, sync) = server
        .get(&format!("{V3}/sync"), Some(&carol.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let seen = timeline
        .iter()
        .find(|e| e["event_id"] == secret.as_str())
        .unwrap_or_else(|| panic!("the newly joined room's history: {sync}"));
    assert_eq!(seen["content"], json!({}), "{seen}");
    // Alice's member events (her display name) are redacted for Carol too.
    let (_, members) = server
        .get(
            &format!("{V3}/rooms/{}/members", enc(&room)),
            Some(&carol.access_token),
        )
        .await;
    assert!(
        !members.to_string().contains("Alice Real-Name"),
        "{members}"
    );

    // The profile is cleared, and the admin API reports the erasure.
    let root = server.register("root", "root-pw").await;
    lattice::storage::users::set_admin(&server.state.db, &root.user_id, true)
        .await
        .unwrap();
    let (status, user) = server
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&alice.user_id)),
            Some(&root.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(
        (&user["deactivated"], &user["erased"], &user["displayname"]),
        (&json!(true), &json!(true), &Value::Null)
    );

    // An administrator can erase too; a non-boolean `erase` is refused.
    let (status, body) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", enc(&bob.user_id)),
            Some(&root.access_token),
            json!({ "erase": "yes" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
    let (status, body) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", enc(&bob.user_id)),
            Some(&root.access_token),
            json!({ "erase": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, user) = server
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&bob.user_id)),
            Some(&root.access_token),
        )
        .await;
    assert_eq!(user["erased"], true, "{user}");
    assert_eq!(
        membership_of(&server, &carol, &room, &bob.user_id).await,
        "leave"
    );
}

#[tokio::test]
async fn rooms_and_users_are_reported_to_the_admins() {
    let server = TestServer::start().await;
    let bob = server.register("bob", "bob-pw").await;
    let mallory = server.register("mallory", "mallory-pw").await;
    let root = server.register("root", "root-pw").await;
    lattice::storage::users::set_admin(&server.state.db, &root.user_id, true)
        .await
        .unwrap();
    let m = Some(mallory.access_token.as_str());
    let a = Some(root.access_token.as_str());
    let room = server
        .create_room(&bob, json!({ "name": "Bad place", "topic": "t" }))
        .await;
    let said = server
        .send_message(&bob, &room, json!({ "msgtype": "m.text", "body": "x" }))
        .await;

    // A room may be reported by someone not in it (unlike its events).
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/report", enc(&room)),
            m,
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/report/{}", enc(&room), enc(&said)),
            m,
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
        "an event of a room the reporter is not in: {body}"
    );
    // An unknown room is 404; a malformed room ID is refused.
    let (status, body) = server
        .post(
            &format!("{V3}/rooms/{}/report", enc("!nowhere:test.local")),
            m,
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/not-a-room/report"),
            m,
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Anonymous callers are refused.
    let (status, _) = server
        .post(
            &format!("{V3}/rooms/{}/report", enc(&room)),
            None,
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Users: a local account is recorded; unknown and remote users get the
    // same 200 and nothing is stored (no account enumeration).
    for target in [
        bob.user_id.as_str(),
        "@nobody:test.local",
        "@someone:elsewhere.example",
    ] {
        let (status, body) = server
            .post(
                &format!("{V3}/users/{}/report", enc(target)),
                m,
                json!({ "reason": "rude" }),
            )
            .await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({})), "{target}");
    }
    for bad in [
        json!({}),
        json!({ "reason": 5 }),
        json!({ "reason": "x".repeat(1001) }),
    ] {
        let (status, body) = server
            .post(&format!("{V3}/users/{}/report", enc(&bob.user_id)), m, bad)
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")),
            "{body}"
        );
    }

    // The admins see both; others may not look.
    for path in [
        "/_synapse/admin/v1/room_reports",
        "/_synapse/admin/v1/user_reports",
    ] {
        let (status, _) = server.get(path, m).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, body) = server.get("/_synapse/admin/v1/room_reports", a).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1, "{body}");
    let report = &body["room_reports"][0];
    assert_eq!(
        (&report["room_id"], &report["user_id"], &report["reason"]),
        (&json!(room), &json!(mallory.user_id), &json!("spam"))
    );
    assert_eq!(
        (&report["name"], &report["topic"]),
        (&json!("Bad place"), &json!("t"))
    );
    let (status, one) = server
        .get(
            &format!("/_synapse/admin/v1/room_reports/{}", report["id"]),
            a,
        )
        .await;
    assert_eq!((status, &one["room_id"]), (StatusCode::OK, &json!(room)));

    let (status, body) = server.get("/_synapse/admin/v1/user_reports", a).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1, "{body}");
    let report = &body["user_reports"][0];
    assert_eq!(
        (
            &report["target_user_id"],
            &report["user_id"],
            &report["reason"]
        ),
        (&json!(bob.user_id), &json!(mallory.user_id), &json!("rude"))
    );
    let one = format!("/_synapse/admin/v1/user_reports/{}", report["id"]);
    let (status, _) = server.call(reqwest::Method::DELETE, &one, a, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&one, a).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
}

#[tokio::test]
async fn reports_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.client = lattice::config::Bucket {
            per_second: 0.01,
            burst: 2,
        };
    })
    .await;
    let mallory = server.register("mallory", "pw").await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, body) = server
            .post(
                &format!("{V3}/users/{}/report", enc("@bob:test.local")),
                Some(&mallory.access_token),
                json!({ "reason": "again" }),
            )
            .await;
        statuses.push((status, body["errcode"].clone()));
    }
    assert_eq!(
        statuses[2],
        (StatusCode::TOO_MANY_REQUESTS, json!("M_LIMIT_EXCEEDED")),
        "{statuses:?}"
    );
}

/// The `content` of account data `kind` in a sync body (global, or of `room`).
fn synced(sync: &Value, room: Option<&str>, kind: &str) -> Option<Value> {
    let events = match room {
        None => &sync["account_data"]["events"],
        Some(room) => &sync["rooms"]["join"][room]["account_data"]["events"],
    };
    events
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| e["content"].clone())
}

#[tokio::test]
async fn account_data_can_be_deleted_msc3391() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    let mallory = server.register("mallory", "mallory-pw").await;
    let t = Some(alice.access_token.as_str());
    let room = server.create_room(&alice, json!({})).await;
    let me = enc(&alice.user_id);
    let global = |kind: &str| format!("{V3}/user/{me}/account_data/{kind}");
    let in_room = |kind: &str| format!("{V3}/user/{me}/rooms/{}/account_data/{kind}", enc(&room));
    let unstable = "/_matrix/client/unstable/org.matrix.msc3391";
    let delete_global = |kind: &str| format!("{unstable}/user/{me}/account_data/{kind}");
    let delete_in_room = |kind: &str| {
        format!(
            "{unstable}/user/{me}/rooms/{}/account_data/{kind}",
            enc(&room)
        )
    };
    let delete = |path: String, token: &str| {
        let token = token.to_owned();
        let server = &server;
        async move {
            server
                .call(reqwest::Method::DELETE, &path, Some(&token), None)
                .await
        }
    };
    for path in [
        global("org.example.a"),
        global("org.example.b"),
        in_room("org.example.r"),
    ] {
        let (status, body) = server.put(&path, t, json!({ "v": 1 })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, first) = server.get(&format!("{V3}/sync"), t).await;
    assert_eq!(
        synced(&first, None, "org.example.a"),
        Some(json!({ "v": 1 }))
    );
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Someone else may neither delete nor read them.
    for path in [
        delete_global("org.example.a"),
        delete_in_room("org.example.r"),
    ] {
        let (status, body) = delete(path, &mallory.access_token).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{body}"
        );
    }
    let (status, _) = server
        .get(&global("org.example.a"), Some(&mallory.access_token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Server-managed types are refused, as are malformed room IDs.
    let (status, body) = delete(delete_global("m.push_rules"), &alice.access_token).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("M_BAD_JSON"))
    );
    let (status, body) = delete(
        format!("{unstable}/user/{me}/rooms/not-a-room/account_data/x"),
        &alice.access_token,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );

    // DELETE, and PUT with `{}`, delete; deleting what is not set is a no-op.
    let (status, body) = delete(delete_global("org.example.a"), &alice.access_token).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (status, _) = server.put(&global("org.example.b"), t, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete(delete_in_room("org.example.r"), &alice.access_token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete(delete_global("org.example.never"), &alice.access_token).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        global("org.example.a"),
        global("org.example.b"),
        in_room("org.example.r"),
    ] {
        let (status, body) = server.get(&path, t).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
            "{path}"
        );
    }
    // An incremental sync carries the deletions as empty content...
    let (_, next) = server.get(&format!("{V3}/sync?since={since}"), t).await;
    assert_eq!(
        synced(&next, None, "org.example.a"),
        Some(json!({})),
        "{next}"
    );
    assert_eq!(
        synced(&next, None, "org.example.b"),
        Some(json!({})),
        "{next}"
    );
    assert_eq!(
        synced(&next, Some(&room), "org.example.r"),
        Some(json!({})),
        "{next}"
    );
    assert_eq!(synced(&next, None, "org.example.never"), None, "{next}");
    // ...and an initial sync leaves them out.
    let (_, fresh) = server.get(&format!("{V3}/sync"), t).await;
    for kind in ["org.example.a", "org.example.b"] {
        assert_eq!(synced(&fresh, None, kind), None, "{fresh}");
    }
    assert_eq!(
        synced(&fresh, Some(&room), "org.example.r"),
        None,
        "{fresh}"
    );
    // Setting it again brings it back.
    let (status, _) = server
        .put(&global("org.example.a"), t, json!({ "v": 2 }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&global("org.example.a"), t).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "v": 2 })));
}

#[tokio::test]
async fn profile_fields_beyond_name_and_avatar() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    let mallory = server.register("mallory", "mallory-pw").await;
    let t = Some(alice.access_token.as_str());
    let m = Some(mallory.access_token.as_str());
    let field = |key: &str| format!("{V3}/profile/{}/{key}", enc(&alice.user_id));
    let err = |r: &(StatusCode, Value)| (r.0, r.1["errcode"].as_str().map(str::to_owned));
    let code = |s: StatusCode, c: &str| (s, Some(c.to_owned()));

    let (_, caps) = server.get(&format!("{V3}/capabilities"), t).await;
    assert_eq!(
        caps["capabilities"]["m.profile_fields"]["enabled"], true,
        "{caps}"
    );

    // m.tz (a string) and a custom key (any JSON).
    let (status, body) = server
        .put(&field("m.tz"), t, json!({ "m.tz": "Europe/Paris" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let custom = json!({ "pronouns": ["she", "her"], "n": 1 });
    let (status, body) = server
        .put(
            &field("org.example.about"),
            t,
            json!({ "org.example.about": custom }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get(&field("org.example.about"), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "org.example.about": custom }))
    );
    let (status, all) = server
        .get(&format!("{V3}/profile/{}", enc(&alice.user_id)), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        all,
        json!({ "displayname": "alice", "m.tz": "Europe/Paris", "org.example.about": custom })
    );
    assert_eq!(
        err(&server.get(&field("org.example.unset"), None).await),
        code(StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Another user may neither set nor delete them.
    assert_eq!(
        err(&server
            .put(
                &field("org.example.about"),
                m,
                json!({ "org.example.about": 1 })
            )
            .await),
        code(StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let delete = |path: String, token: Option<&str>| {
        let token = token.map(str::to_owned);
        let server = &server;
        async move {
            server
                .call(reqwest::Method::DELETE, &path, token.as_deref(), None)
                .await
        }
    };
    assert_eq!(
        err(&delete(field("org.example.about"), m).await),
        code(StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    assert_eq!(
        err(&delete(field("org.example.about"), None).await),
        code(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );

    // Key and value rules.
    for (key, body, want) in [
        (
            "Org.Example",
            json!({ "Org.Example": 1 }),
            code(StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        ),
        (
            "m.unknown",
            json!({ "m.unknown": 1 }),
            code(StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        ),
        (
            "m.tz",
            json!({ "m.tz": 5 }),
            code(StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        ),
        (
            "org.example.x",
            json!({ "org.example.x": null }),
            code(StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        ),
        (
            "org.example.x",
            json!({ "other": 1 }),
            code(StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        ),
        (
            "displayname",
            json!({ "displayname": 7 }),
            code(StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        ),
    ] {
        assert_eq!(err(&server.put(&field(key), t, body).await), want, "{key}");
    }
    let long = format!("org.{}", "x".repeat(260));
    assert_eq!(
        err(&server
            .put(&field(&long), t, json!({ long.clone(): 1 }))
            .await),
        code(StatusCode::BAD_REQUEST, "M_KEY_TOO_LARGE")
    );
    // The whole profile stays under 64 KiB.
    let big = "x".repeat(40_000);
    let (status, _) = server
        .put(
            &field("org.example.one"),
            t,
            json!({ "org.example.one": big }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        err(&server
            .put(
                &field("org.example.two"),
                t,
                json!({ "org.example.two": big })
            )
            .await),
        code(StatusCode::BAD_REQUEST, "M_PROFILE_TOO_LARGE")
    );

    // DELETE removes custom fields and the display name; deleting an unset
    // field succeeds.
    for key in [
        "org.example.one",
        "org.example.about",
        "displayname",
        "org.example.unset",
    ] {
        let (status, body) = delete(field(key), t).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
    }
    let (_, all) = server
        .get(&format!("{V3}/profile/{}", enc(&alice.user_id)), None)
        .await;
    assert_eq!(all, json!({ "m.tz": "Europe/Paris" }));
}

#[tokio::test]
async fn profile_fields_over_federation() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let (status, _) = b
        .put(
            &format!("{V3}/profile/{}/org.example.status", enc(&bob.user_id)),
            Some(&bob.access_token),
            json!({ "org.example.status": { "text": "away" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A asks B for one field (`/query/profile?field=`) and for the whole profile.
    let (status, body) = a
        .get(
            &format!("{V3}/profile/{}/org.example.status", enc(&bob.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "org.example.status": { "text": "away" } }));
    let (status, body) = a
        .get(
            &format!("{V3}/profile/{}", enc(&bob.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["org.example.status"]["text"], "away", "{body}");
    let (status, body) = a
        .get(
            &format!("{V3}/profile/{}/org.example.none", enc(&bob.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn whois_on_the_client_path_for_oneself_and_admins_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    let mallory = server.register("mallory", "mallory-pw").await;
    let root = server.register("root", "root-pw").await;
    lattice::storage::users::set_admin(&server.state.db, &root.user_id, true)
        .await
        .unwrap();
    // The client path as Element's devtools and clients call it.
    let whois = |who: &str| format!("{V3}/admin/whois/{}", enc(who));
    // Alice's first request names its user agent: whois reports where and
    // with what each device was last seen (SyTest's "/whois" wants all three).
    let body: Value = reqwest::Client::builder()
        .user_agent("whois-test/1.0")
        .build()
        .unwrap()
        .get(format!("{}{}", server.base, whois(&alice.user_id)))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["user_id"], alice.user_id.as_str());
    let connection = &body["devices"][&alice.device_id]["sessions"][0]["connections"][0];
    assert_eq!(connection["user_agent"], "whois-test/1.0", "{body}");
    assert!(connection["ip"].is_string(), "{body}");
    assert!(connection["last_seen"].is_i64(), "{body}");
    // Someone else's is for admins only.
    let (status, body) = server
        .get(&whois(&alice.user_id), Some(&mallory.access_token))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (status, body) = server.get(&whois(&alice.user_id), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = server
        .get(&whois(&alice.user_id), Some(&root.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["devices"][&alice.device_id].is_object(), "{body}");
    // Remote users are not ours to describe.
    let (status, body) = server
        .get(
            &whois("@someone:elsewhere.example"),
            Some(&root.access_token),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
        "{body}"
    );
}

/// Over federation, an erased user's events go out redacted to every server,
/// `/event` as `/backfill` (as Synapse sends them; SyTest's "Inbound federation
/// redacts events from erased users"), whole before the erasure.
#[tokio::test]
async fn erased_users_events_go_out_redacted_over_federation() {
    use crate::hostile::HostilePeer;
    let server = TestServer::start_federating().await;
    let peer = HostilePeer::start().await;
    let alice = server.register("alice", "alice-pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    peer.join(&server, &room, "remote").await;
    let said = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "erase me" }),
        )
        .await;
    let path = format!("/_matrix/federation/v1/event/{}", enc(&said));
    let fetch = || async {
        let (status, body) = peer
            .request(server.name(), reqwest::Method::GET, &path, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["pdus"][0].clone()
    };
    assert_eq!(fetch().await["content"]["body"], "erase me");

    deactivate(&server, &alice, "alice-pw", true).await;
    let pdu = fetch().await;
    assert_eq!(pdu["content"], json!({}), "{pdu}");
    // Still the same event: its room, sender and hashes stay.
    assert_eq!(pdu["room_id"], room);
    assert_eq!(pdu["sender"], alice.user_id);
    assert!(pdu["hashes"]["sha256"].is_string(), "{pdu}");
    peer.stop();
}
