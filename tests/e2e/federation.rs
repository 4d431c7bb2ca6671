//! Federation between Lattice servers on loopback: TLS with a development CA,
//! discovery by explicit port, X-Matrix signing and verification, server keys
//! fetched directly and through a notary.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestServer, dev_tls, enc, eventually, messages, wait_for_message};

/// An HTTPS client that trusts the development CA (as a peer server would).
fn https_client() -> reqwest::Client {
    let pem = std::fs::read(&dev_tls().ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// A request with no `X-Matrix` header is unauthorized (401); one whose
/// header does not parse — SyTest's origin `localhost:http`, a port that is
/// not a number — is a bad request (400 `M_UNAUTHORIZED`), as on Synapse.
#[tokio::test]
async fn malformed_x_matrix_headers_are_bad_requests() {
    let a = TestServer::start_federating().await;
    let http = https_client();
    let path = format!(
        "{}/_matrix/federation/v1/query/profile?user_id=%40x%3A{}",
        a.federation_url(),
        enc(a.name())
    );
    let response = http.get(&path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    for origin in ["localhost:http", "bad host"] {
        let header = format!(
            "X-Matrix origin=\"{origin}\",destination=\"{}\",key=\"ed25519:1\",sig=\"AAAA\"",
            a.name()
        );
        let response = http
            .get(&path)
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{origin}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{origin}: {body}");
    }
    a.stop().await;
}

#[tokio::test]
async fn version_and_self_signed_keys_over_tls() {
    let a = TestServer::start_federating().await;
    let http = https_client();

    let version: Value = http
        .get(format!(
            "{}/_matrix/federation/v1/version",
            a.federation_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Lattice");

    let keys: Value = http
        .get(format!("{}/_matrix/key/v2/server", a.federation_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["server_name"], a.name());
    assert!(keys["valid_until_ts"].as_i64().unwrap() > 0);
    let (key_id, key) = keys["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    // The response is signed by the key it lists.
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(
        a.name().to_owned(),
        [(
            key_id.clone(),
            ruma::serde::Base64::parse(key["key"].as_str().unwrap()).unwrap(),
        )]
        .into_iter()
        .collect(),
    );
    let object: ruma::CanonicalJsonObject = serde_json::from_value(keys.clone()).unwrap();
    ruma::signatures::verify_json(&map, &object).expect("self-signed key response");

    // The client API is not on the federation listener, and vice versa.
    let status = http
        .get(format!("{}/_matrix/client/versions", a.federation_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = a.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    a.stop().await;
}

#[tokio::test]
async fn remote_profile_is_fetched_over_signed_federation() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let (status, _) = b
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&bob.user_id)
            ),
            Some(&bob.access_token),
            json!({"displayname": "Bob on B"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Alice's server asks Bob's: discovery, TLS, X-Matrix; B fetches A's keys to
    // verify the request.
    let (status, body) = a
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&bob.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["displayname"], "Bob on B");

    // Unknown remote user: 404.
    let (status, body) = a
        .get(
            &format!(
                "/_matrix/client/v3/profile/{}",
                enc(&format!("@nobody:{}", b.name()))
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // B cached A's key: it is in server_keys now.
    let cached: i64 = sqlx::query_scalar("select count(*) from server_keys where server_name = $1")
        .bind(a.name())
        .fetch_one(&b.state.db)
        .await
        .unwrap();
    assert_eq!(cached, 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unsigned_forged_and_misdirected_requests_are_refused() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let bob = b.register("bob", "password-b").await;
    let http = https_client();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&bob.user_id)
    );
    let url = format!("{}{}", b.federation_url(), path);

    // No authorization at all.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // Signed with a key that is not A's, claiming to be A.
    let forged_key = ruma::signatures::Ed25519KeyPair::from_der(
        &ruma::signatures::Ed25519KeyPair::generate(),
        a.state
            .signing_key
            .key_id
            .trim_start_matches("ed25519:")
            .into(),
    )
    .unwrap();
    let header = signed_header(&forged_key, a.name(), b.name(), "GET", &path);
    let response = http
        .get(&url)
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Signed with A's real key, but for another destination.
    let header = signed_header(
        &a.state.signing_key.pair,
        a.name(),
        "elsewhere.example",
        "GET",
        &path,
    );
    let response = http
        .get(&url)
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Signed with A's real key for a different path than requested.
    let header = signed_header(
        &a.state.signing_key.pair,
        a.name(),
        b.name(),
        "GET",
        "/_matrix/federation/v1/query/profile?user_id=%40other%3Ax",
    );
    let response = http
        .get(&url)
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // And the genuine request works.
    let header = signed_header(&a.state.signing_key.pair, a.name(), b.name(), "GET", &path);
    let response = http
        .get(&url)
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

fn signed_header(
    key: &ruma::signatures::Ed25519KeyPair,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
) -> String {
    signed_header_with(key, origin, destination, method, uri, None)
}

fn signed_header_with(
    key: &ruma::signatures::Ed25519KeyPair,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> String {
    let origin = ruma::ServerName::parse(origin).unwrap();
    let destination = ruma::ServerName::parse(destination).unwrap();
    let content = body.map(|b| b.clone().try_into().unwrap());
    let mut object =
        lattice::domain::xmatrix::request_object(method, uri, &origin, &destination, content);
    ruma::signatures::sign_json(origin.as_str(), key, &mut object).unwrap();
    let object = serde_json::to_value(&object).unwrap();
    let sig = object["signatures"][origin.as_str()]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    lattice::domain::xmatrix::XMatrix {
        origin: origin.clone(),
        destination: Some(destination),
        key: format!("ed25519:{}", key.version()).try_into().unwrap(),
        sig,
    }
    .to_header()
}

#[tokio::test]
async fn notary_relays_keys_signed_by_both_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let http = https_client();
    let answer: Value = http
        .post(format!("{}/_matrix/key/v2/query", a.federation_url()))
        .json(&json!({"server_keys": {b.name(): {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = answer["server_keys"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{answer}");
    let entry = &entries[0];
    assert_eq!(entry["server_name"], b.name());
    let sigs = entry["signatures"].as_object().unwrap();
    assert!(sigs.contains_key(a.name()), "notary signature: {entry}");
    assert!(sigs.contains_key(b.name()), "origin signature: {entry}");

    // A server that cannot reach B directly gets B's keys through notary A.
    let c = TestServer::start_federating_with(|config| {
        config.federation.trusted_key_servers = vec![a.name().to_owned()];
    })
    .await;
    b.stop().await;
    let b_name = ruma::ServerName::parse(entry["server_name"].as_str().unwrap()).unwrap();
    let keys = lattice::service::server_keys::public_keys(
        &c.state,
        &b_name,
        &[entry["verify_keys"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()],
        lattice::storage::now_ms(),
    )
    .await
    .expect("keys through the notary");
    assert_eq!(keys.len(), 1);
    a.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let b = TestServer::start_federating().await;
    let c = TestServer::start_federating_with(|config| {
        config.federation.ip_range_allowlist = Vec::new();
    })
    .await;
    let b_name = ruma::ServerName::parse(b.name()).unwrap();
    let err = c
        .state
        .federation
        .request_json(&b_name, http::Method::GET, "/_matrix/key/v2/server", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no permitted address"), "{err}");
    b.stop().await;
    c.stop().await;
}

/// Polls `check` every 100 ms for up to 20 s.
#[tokio::test]
async fn join_a_remote_room_by_alias_and_chat_both_ways() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "fed", "name": "Federated"}),
        )
        .await;
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "before bob"}),
    )
    .await;

    // Bob's server resolves the alias over federation and joins through A.
    let alias = format!("#fed:{}", a.name());
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);

    // Bob's server has the room's state: its name, and both members.
    let (status, name) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "Federated");

    // Alice's server sees Bob joined.
    eventually("bob's join on A", || async {
        let (_, members) = a
            .get(
                &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
                Some(&alice.access_token),
            )
            .await;
        members["joined"].get(&bob.user_id).is_some()
    })
    .await;

    // Messages flow both ways.
    a.send_message(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "hello bob"}),
    )
    .await;
    wait_for_message(&b, &bob, &room, "hello bob").await;
    b.send_message(
        &bob,
        &room,
        json!({"msgtype": "m.text", "body": "hi alice"}),
    )
    .await;
    wait_for_message(&a, &alice, &room, "hi alice").await;

    // Bob's /sync shows the room with Alice's message in it.
    let (status, sync) = b
        .get("/_matrix/client/v3/sync", Some(&bob.access_token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        timeline.iter().any(|e| e["content"]["body"] == "hello bob"),
        "{sync}"
    );
    // A state change on A converges on B.
    let (status, _) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&alice.access_token),
            json!({"topic": "federated topic"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("the topic on B", || async {
        let (_, topic) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&bob.access_token),
            )
            .await;
        topic["topic"] == "federated topic"
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Builds a PDU from Bob (on B) into the room on A, signed with `key` under B's
/// key ID: its prev event is A's newest event, its auth events the room's power
/// levels and Bob's membership.
#[allow(clippy::too_many_arguments)]
async fn bob_pdu(
    a: &TestServer,
    alice: &crate::harness::Login,
    b: &TestServer,
    bob: &str,
    room: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    key: &ruma::signatures::Ed25519KeyPair,
) -> (String, Value) {
    let (_, state) = a
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(&alice.access_token),
        )
        .await;
    let find = |t: &str, k: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let mut auth = vec![
        ruma::OwnedEventId::try_from(find("m.room.power_levels", "")).unwrap(),
        ruma::OwnedEventId::try_from(find("m.room.member", bob)).unwrap(),
    ];
    auth.sort();
    let prev: Vec<String> =
        sqlx::query_scalar("select event_id from forward_extremities where room_id = $1")
            .bind(room)
            .fetch_all(&a.state.db)
            .await
            .unwrap();
    let prev: Vec<ruma::OwnedEventId> = prev
        .into_iter()
        .map(|p| ruma::OwnedEventId::try_from(p).unwrap())
        .collect();
    let depth: i64 = sqlx::query_scalar("select max(depth) from events where room_id = $1")
        .bind(room)
        .fetch_one(&a.state.db)
        .await
        .unwrap();
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let room_id = ruma::RoomId::parse(room).unwrap();
    let sender = ruma::UserId::parse(bob).unwrap();
    let built = lattice::domain::pdu::build(
        &rules,
        &lattice::domain::pdu::NewEvent {
            origin_server_ts: None,
            kind: kind.into(),
            content,
            state_key: state_key.map(str::to_owned),
            redacts: None,
        },
        &sender,
        &lattice::domain::pdu::Position {
            room_id: Some(&room_id),
            prev_events: &prev,
            auth_events: &auth,
            reference_hashes: &Default::default(),
            depth: depth + 1,
        },
        ruma::MilliSecondsSinceUnixEpoch::now(),
        b.name(),
        key,
    )
    .unwrap();
    (
        built.event_id.to_string(),
        serde_json::to_value(&built.json).unwrap(),
    )
}

/// Sends a transaction to `to` as `from` (signed with from's real key).
async fn send_txn(from: &TestServer, to: &TestServer, txn: &str, pdus: Vec<Value>) -> Value {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let body = json!({"origin": from.name(), "origin_server_ts": 1, "pdus": pdus, "edus": []});
    let header = signed_header_with(
        &from.state.signing_key.pair,
        from.name(),
        to.name(),
        "PUT",
        &path,
        Some(&body),
    );
    let response = https_client()
        .put(format!("{}{}", to.federation_url(), path))
        .header("Authorization", header)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn received_pdus_go_through_the_receipt_checks() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "checks"}),
        )
        .await;
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#checks:{}", a.name()))
            ),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b_key = &b.state.signing_key.pair;
    let msg = |body: &str| json!({"msgtype": "m.text", "body": body});

    // A good PDU is accepted; sent again (new transaction) it is not stored twice.
    let (good_id, good) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.message",
        None,
        msg("good"),
        b_key,
    )
    .await;
    let reply = send_txn(&b, &a, "t1", vec![good.clone()]).await;
    assert_eq!(reply["pdus"][&good_id], json!({}), "{reply}");
    let reply = send_txn(&b, &a, "t2", vec![good.clone()]).await;
    assert_eq!(reply["pdus"][&good_id], json!({}), "{reply}");
    let copies: i64 = sqlx::query_scalar("select count(*) from events where event_id = $1")
        .bind(&good_id)
        .fetch_one(&a.state.db)
        .await
        .unwrap();
    assert_eq!(copies, 1);
    // The same transaction ID again gets the stored answer.
    let reply = send_txn(&b, &a, "t1", vec![]).await;
    assert_eq!(reply["pdus"][&good_id], json!({}), "{reply}");

    // Signed by a key that is not B's: rejected, not stored.
    let forged_key = ruma::signatures::Ed25519KeyPair::from_der(
        &ruma::signatures::Ed25519KeyPair::generate(),
        b.state
            .signing_key
            .key_id
            .trim_start_matches("ed25519:")
            .into(),
    )
    .unwrap();
    let (bad_id, bad) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.message",
        None,
        msg("forged"),
        &forged_key,
    )
    .await;
    let reply = send_txn(&b, &a, "t3", vec![bad]).await;
    assert!(
        reply["pdus"][&bad_id]["error"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{reply}"
    );
    let (status, _) = a
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&bad_id)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Content changed after signing: the hash no longer matches, the signature
    // (over the redacted form) does: kept, redacted.
    let (tampered_id, mut tampered) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.message",
        None,
        msg("original"),
        b_key,
    )
    .await;
    tampered["content"]["body"] = "tampered".into();
    let reply = send_txn(&b, &a, "t4", vec![tampered]).await;
    assert_eq!(reply["pdus"][&tampered_id], json!({}), "{reply}");
    let stored: String = sqlx::query_scalar("select json from events where event_id = $1")
        .bind(&tampered_id)
        .fetch_one(&a.state.db)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["content"], json!({}), "kept redacted: {stored}");

    // Bob may not change the power levels: rejected by the auth rules.
    let (pl_id, pl) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.power_levels",
        Some(""),
        json!({"users": {&bob.user_id: 100}}),
        b_key,
    )
    .await;
    // Handled (held as rejected, as Synapse does: no `error`), never applied.
    let reply = send_txn(&b, &a, "t5", vec![pl]).await;
    assert_eq!(reply["pdus"][&pl_id], json!({}), "{reply}");
    let rejected: bool =
        sqlx::query_scalar("select rejected from outlier_events where event_id = $1")
            .bind(&pl_id)
            .fetch_one(&a.state.db)
            .await
            .unwrap();
    assert!(rejected, "held as rejected");
    let (status, levels) = a
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&room)
            ),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    assert!(levels["users"].get(&bob.user_id).is_none(), "{levels}");

    // Bob's event relayed by a server that is not Bob's: refused.
    let c = TestServer::start_federating().await;
    let (relayed_id, relayed) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.message",
        None,
        msg("relayed"),
        b_key,
    )
    .await;
    let reply = send_txn(&c, &a, "t6", vec![relayed]).await;
    assert!(
        reply["pdus"][&relayed_id]["error"]
            .as_str()
            .unwrap()
            .contains("not from"),
        "{reply}"
    );

    // Larger than 64 KiB: refused.
    let big = "x".repeat(70_000);
    let (_, mut oversized) = bob_pdu(
        &a,
        &alice,
        &b,
        &bob.user_id,
        &room,
        "m.room.message",
        None,
        msg("small"),
        b_key,
    )
    .await;
    oversized["content"]["body"] = big.into();
    let reply = send_txn(&b, &a, "t7", vec![oversized]).await;
    let results = reply["pdus"].as_object().unwrap();
    assert!(
        results.is_empty()
            || results
                .values()
                .any(|r| r["error"].as_str().is_some_and(|e| e.contains("65536"))),
        "{reply}"
    );
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A server that learns of a room upgrade by joining the new room moves its
/// own aliases and directory listing of the old room to it (as Synapse does),
/// and no other room's.
#[tokio::test]
async fn joining_an_upgraded_room_moves_this_servers_aliases_and_listing() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let v3 = "/_matrix/client/v3";
    let old = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    let other = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    for room in [&old, &other] {
        let (status, body) = b
            .post(
                &format!("{v3}/join/{}?server_name={}", enc(room), a.name()),
                Some(&bob.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Bob may publish the room in his server's directory.
    let (_, mut levels) = a
        .get(
            &format!("{v3}/rooms/{}/state/m.room.power_levels/", enc(&old)),
            Some(&alice.access_token),
        )
        .await;
    levels["users"][&bob.user_id] = json!(100);
    let (status, _) = a
        .put(
            &format!("{v3}/rooms/{}/state/m.room.power_levels/", enc(&old)),
            Some(&alice.access_token),
            levels,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("bob's power on B", || async {
        let (_, l) = b
            .get(
                &format!("{v3}/rooms/{}/state/m.room.power_levels/", enc(&old)),
                Some(&bob.access_token),
            )
            .await;
        l["users"][&bob.user_id] == 100
    })
    .await;
    let old_alias = format!("#old:{}", b.name());
    let other_alias = format!("#other:{}", b.name());
    for (alias, room) in [(&old_alias, &old), (&other_alias, &other)] {
        let (status, body) = b
            .put(
                &format!("{v3}/directory/room/{}", enc(alias)),
                Some(&bob.access_token),
                json!({ "room_id": room }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = b
        .put(
            &format!("{v3}/directory/list/room/{}", enc(&old)),
            Some(&bob.access_token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = a
        .post(
            &format!("{v3}/rooms/{}/upgrade", enc(&old)),
            Some(&alice.access_token),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (status, body) = b
        .post(
            &format!("{v3}/join/{}?server_name={}", enc(&new), a.name()),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (_, resolved) = b
        .get(&format!("{v3}/directory/room/{}", enc(&old_alias)), None)
        .await;
    assert_eq!(resolved["room_id"], new.as_str(), "{resolved}");
    let (_, resolved) = b
        .get(&format!("{v3}/directory/room/{}", enc(&other_alias)), None)
        .await;
    assert_eq!(resolved["room_id"], other.as_str(), "{resolved}");
    let (_, public) = b.get(&format!("{v3}/publicRooms"), None).await;
    let listed: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["room_id"].as_str())
        .collect();
    assert!(listed.contains(&new.as_str()), "{public}");
    assert!(!listed.contains(&old.as_str()), "{public}");
}

/// Any server can create a room that names one of ours as its predecessor.
/// Joining it moves nothing: only the old room's own tombstone makes a room
/// its replacement.
#[tokio::test]
async fn a_forged_predecessor_takes_no_aliases_listing_or_tags() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let mallory = b.register("mallory", "password-b").await;
    let v3 = "/_matrix/client/v3";
    let ours = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "visibility": "public", "room_alias_name": "ours"}),
        )
        .await;
    let (status, _) = a
        .put(
            &format!(
                "{v3}/user/{}/rooms/{}/tags/u.work",
                alice.user_id,
                enc(&ours)
            ),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let bait = b
        .create_room(
            &mallory,
            json!({
                "preset": "public_chat",
                "invite": [alice.user_id],
                "creation_content": { "predecessor": { "room_id": ours, "event_id": "$forged" } },
            }),
        )
        .await;
    eventually("the invite reaches A", || async {
        let (_, sync) = a
            .get(&format!("{v3}/sync"), Some(&alice.access_token))
            .await;
        sync["rooms"]["invite"].get(bait.as_str()).is_some()
    })
    .await;
    let (status, body) = a
        .post(
            &format!("{v3}/rooms/{}/join", enc(&bait)),
            Some(&alice.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let alias = format!("#ours:{}", a.name());
    let (_, resolved) = a
        .get(&format!("{v3}/directory/room/{}", enc(&alias)), None)
        .await;
    assert_eq!(resolved["room_id"], ours.as_str(), "{resolved}");
    let (_, public) = a.get(&format!("{v3}/publicRooms"), None).await;
    let listed: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["room_id"].as_str())
        .collect();
    assert_eq!(listed, [ours.as_str()], "{public}");
    let (_, tags) = a
        .get(
            &format!("{v3}/user/{}/rooms/{}/tags", alice.user_id, enc(&bait)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(tags["tags"], json!({}), "{tags}");
}

/// History fetched with `/backfill` carries its own state: a user of another
/// server who joins a room that was `joined`-only, then `shared`, reads the
/// `shared` part of what came before the join, never the `joined` part (as
/// SyTest's "Backfill works correctly with history visibility set to joined").
#[tokio::test]
async fn backfilled_history_keeps_its_own_history_visibility() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice", "password-a").await;
    let bob = b.register("bob", "password-b").await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let v3 = "/_matrix/client/v3";
    let set_visibility = |visibility: &'static str| {
        let (a, room, token) = (&a, room.clone(), alice.access_token.clone());
        async move {
            let (status, body) = a
                .put(
                    &format!("{v3}/rooms/{}/state/m.room.history_visibility/", enc(&room)),
                    Some(&token),
                    json!({ "history_visibility": visibility }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    set_visibility("joined").await;
    for body in ["hidden 1", "hidden 2", "hidden 3"] {
        a.send_message(&alice, &room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    set_visibility("shared").await;
    for body in ["shared 1", "shared 2"] {
        a.send_message(&alice, &room, json!({"msgtype": "m.text", "body": body}))
            .await;
    }
    let (status, body) = b
        .post(
            &format!("{v3}/join/{}?server_name={}", enc(&room), a.name()),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Paging back makes B backfill from A.
    eventually("the shared history on B", || async {
        let seen = messages(&b, &bob.access_token, &room).await;
        seen.contains(&"shared 1".to_owned())
    })
    .await;
    let seen = messages(&b, &bob.access_token, &room).await;
    assert_eq!(seen, vec!["shared 1", "shared 2"], "what Bob reads on B");
    // Alice, on A, reads everything.
    let seen = messages(&a, &alice.access_token, &room).await;
    assert_eq!(
        seen,
        vec!["hidden 1", "hidden 2", "hidden 3", "shared 1", "shared 2"]
    );
    a.stop().await;
    b.stop().await;
}
