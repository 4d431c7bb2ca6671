//! A second appservice framework: matrix-bot-sdk (npm, installed by
//! scripts/node-env), running as an appservice on loopback against Lattice
//! (tests/sdk/botsdk_*.mjs): puppets, dated messages and invites answered by
//! joining, then an encrypted bridge whose ghost exchanges Megolm messages
//! with a matrix-js-sdk client.

use std::path::{Path, PathBuf};

use crate::{
    harness::{SERVER_NAME, TestServer, eventually, free_port},
    sdk::run_js,
};

/// Writes the registration a matrix-bot-sdk appservice `id` on `port` is
/// started with (users `@{prefix}_.*`), and returns it as JSON too, for the
/// script (which takes it as an object, as bot-sdk does).
fn registration(dir: &Path, id: &str, prefix: &str, port: u16, flags: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(
        &path,
        format!(
            r##"id: {id}
url: "http://127.0.0.1:{port}"
as_token: "as-{id}-token-0123456789"
hs_token: "hs-{id}-token-0123456789"
sender_localpart: {id}bot
rate_limited: false
{flags}
namespaces:
  users:
    - exclusive: true
      regex: "@{prefix}_.*:{SERVER_NAME}"
  aliases: []
  rooms: []
"##
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    (path, value.to_string())
}

/// Waits until every queued row of every appservice is delivered.
async fn queue_drained(server: &TestServer) {
    let db = server.state.db.clone();
    eventually("the appservice queue drained", || {
        let db = db.clone();
        async move {
            lattice::storage::appservice::depth(&db)
                .await
                .unwrap()
                .iter()
                .all(|(_, n)| *n == 0)
        }
    })
    .await;
}

/// matrix-bot-sdk's appservice with its auto-join mixin: an unknown user of
/// its namespace asked about and created on an invite, the bot and that user
/// joining on their invites, 20 puppets registered, joined and named at once,
/// each sending a message dated in the past with `?ts=` (and a dated topic),
/// the bot answering a command read from its transactions, and a puppet
/// joining a direct chat on its invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_bot_sdk_puppets_dates_messages_and_joins_on_invites() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (path, reg) = registration(dir.path(), "bots", "bots", port, "");
    let server = TestServer::start_with(|c| {
        c.appservices = vec![path];
        // matrix-bot-sdk 0.5 reads the hs_token from `?access_token=` only.
        c.appservice_legacy_authorization = true;
    })
    .await;
    let out = run_js(
        &server,
        "botsdk_bridge.mjs",
        &[&reg, &port.to_string(), SERVER_NAME, "20"],
    )
    .await;
    assert_eq!(out, "ok");
    // Every transaction was acknowledged by the framework.
    queue_drained(&server).await;
    let sent = server.state.metrics.appservice_counts("bots").0;
    assert!(sent > 40, "events delivered to the appservice: {sent}");
}

/// An encrypted bridge (matrix-bot-sdk's appservice encryption, with the Rust
/// crypto) and a matrix-js-sdk user with the Rust crypto: the ghost's device
/// gets its room keys as to-device messages in transactions (it never
/// syncs), decrypts the user's message and answers encrypted, which the user
/// decrypts; a second device of the user's, announced to the bridge by a
/// device-list change in a transaction, decrypts the ghost's next answer
/// (tests/sdk/botsdk_e2ee.mjs says how each step can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_bridge_on_matrix_bot_sdk_talks_to_a_matrix_js_sdk_user() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let flags = "de.sorunome.msc2409.push_ephemeral: true\norg.matrix.msc3202: true";
    let (path, reg) = registration(dir.path(), "crypt", "crypt", port, flags);
    let server = TestServer::start_with(|c| {
        c.appservices = vec![path];
        // As above: matrix-bot-sdk 0.6 reads `?access_token=` only.
        c.appservice_legacy_authorization = true;
    })
    .await;
    let data = dir.path().join("bridge");
    std::fs::create_dir_all(&data).unwrap();
    let out = run_js(
        &server,
        "botsdk_e2ee.mjs",
        &[&reg, &port.to_string(), SERVER_NAME, data.to_str().unwrap()],
    )
    .await;
    assert_eq!(out, "ok");
}
