//! Real client SDKs against a real server. matrix-nio comes from PyPI into a venv
//! that `scripts/python-env` creates (outside the clone) on first use.

use std::path::Path;

use crate::harness::{TestServer, user_id};

fn python_with_sdks() -> String {
    crate::harness::setup_script("python-env")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_logs_in_and_whoami() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_login.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([&server.base, "niouser", "hunter2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("ok {}", user_id("niouser"))),
        "{stdout}"
    );
    // Both nio clients left a device behind: the registration's and the login's.
    let devices = lattice::storage::devices::list(&server.state.db, &user_id("niouser"))
        .await
        .unwrap();
    let names: Vec<_> = devices
        .iter()
        .filter_map(|d| d.display_name.clone())
        .collect();
    assert!(names.contains(&"nio-test".to_owned()), "{names:?}");
}

/// Two matrix-nio users chat in a room; each reads the other's message via
/// `/messages` (the rooms issue's acceptance; `/sync` is its own issue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_two_users_chat_in_a_room() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_chat.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio chat failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok !"), "{stdout}");
}

/// matrix-nio's sync: an invite, a join, and a message arriving on a long poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_syncs_invites_and_messages() {
    let python = python_with_sdks();
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/nio_sync.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nio sync failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
}

/// matrix-js-sdk (Element Web's SDK) runs its own sync loop against Lattice and
/// sees an invite, joins, and receives another user's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_syncs_joins_and_receives_a_message() {
    let server = TestServer::start().await;
    assert_eq!(run_js(&server, "js_sync.mjs", &[]).await, "ok");
}

/// matrix-js-sdk with its Rust crypto and lazy-loaded members, as Element runs it:
/// an encrypted room with messages both ways, a reply, an edit, a reaction, an
/// encrypted image, and a late joiner paging back (tests/sdk/js_crypto.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_rust_crypto_in_an_encrypted_room() {
    let server = TestServer::start().await;
    assert_eq!(run_js(&server, "js_crypto.mjs", &[]).await, "ok");
}

/// matrix-js-sdk uploads an avatar and an image; another user downloads both and
/// a thumbnail through the authenticated media endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_uploads_and_downloads_media() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("picture.png");
    image::RgbImage::from_fn(400, 300, |x, y| image::Rgb([x as u8, y as u8, 99]))
        .save(&png)
        .unwrap();
    let png = png.to_str().unwrap().to_owned();
    assert_eq!(run_js(&server, "js_media.mjs", &[&png]).await, "ok");
}

/// Runs a script from tests/sdk with Node and matrix-js-sdk against `server`;
/// returns its trimmed stdout (asserting success).
pub async fn run_js(server: &TestServer, script: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_dir = std::path::PathBuf::from(crate::harness::setup_script("node-env"));
    // ES modules resolve packages next to the script: run a copy placed there.
    let copy = node_dir.join(format!("{}.{}.mjs", script, std::process::id()));
    std::fs::copy(root.join("tests/sdk").join(script), &copy).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&copy)
        .arg(&server.base)
        .args(args)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_owned()
}

/// Builds (once) and locates the matrix-rust-sdk client in tests/sdk/rust.
pub fn rust_sdk_client() -> String {
    crate::harness::setup_script("rust-sdk-client")
}

/// Runs the matrix-rust-sdk client: two users, a room, a message each way.
/// Returns the room ID.
async fn rust_sdk_chat(server: &TestServer, mode: &str) -> String {
    let client = tokio::task::spawn_blocking(rust_sdk_client).await.unwrap();
    server.register("alice", "alicepw").await;
    server.register("bob", "bobpw").await;
    let out = tokio::process::Command::new(client)
        .args([&server.base, mode, "alice", "alicepw", "bob", "bobpw"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "matrix-rust-sdk client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim()
        .to_owned()
}

/// The room's message-like events as the server stores them: (type, sender).
async fn stored_messages(server: &TestServer, room: &str) -> Vec<(String, String)> {
    let login = server.login("alice", "alicepw").await.1;
    let token = login["access_token"].as_str().unwrap();
    let (status, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(token),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("state_key").is_none())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["sender"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// matrix-rust-sdk (the SDK behind Element X): log in, create a room, invite,
/// join, and a message each way over `/sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_plain_chat() {
    let server = TestServer::start().await;
    let room = rust_sdk_chat(&server, "plain").await;
    let messages = stored_messages(&server, &room).await;
    assert!(
        messages.contains(&("m.room.message".into(), user_id("alice")))
            && messages.contains(&("m.room.message".into(), user_id("bob"))),
        "{messages:?}"
    );
}

/// matrix-rust-sdk with end-to-end encryption: both clients upload device and
/// one-time keys, claim each other's, share Megolm sessions over to-device
/// messages, and each decrypts the other's message. The server only ever stores
/// `m.room.encrypted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_encrypted_chat() {
    let server = TestServer::start().await;
    let room = rust_sdk_chat(&server, "encrypted").await;
    let messages = stored_messages(&server, &room).await;
    assert!(
        messages.contains(&("m.room.encrypted".into(), user_id("alice")))
            && messages.contains(&("m.room.encrypted".into(), user_id("bob"))),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|(t, _)| t == "m.room.message"),
        "{messages:?}"
    );
}

/// matrix-rust-sdk's sliding sync (MSC4186, what Element X uses): the room list
/// shows both of Alice's rooms with their names, and Bob's message arrives
/// through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_sliding_sync_room_list() {
    let server = TestServer::start().await;
    let room = rust_sdk_chat(&server, "sliding").await;
    let messages = stored_messages(&server, &room).await;
    assert!(
        messages.contains(&("m.room.message".into(), user_id("bob"))),
        "{messages:?}"
    );
}

/// matrix-rust-sdk registers Alice through its UIA flow (`POST /register {}`
/// first), sends through its send queue (a local echo under a transaction ID),
/// and her remote echo comes back over `/sync` carrying that transaction ID —
/// what the SDK's timeline matches to replace the local echo. Her other device
/// and Bob get the event without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_registers_and_matches_its_remote_echo() {
    let server = TestServer::start().await;
    let client = tokio::task::spawn_blocking(rust_sdk_client).await.unwrap();
    server.register("bob", "bobpw").await;
    let out = tokio::process::Command::new(client)
        .args([&server.base, "echo", "alice", "alicepw", "bob", "bobpw"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "matrix-rust-sdk client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok !"), "{stdout}");
    let devices = lattice::storage::devices::list(&server.state.db, &user_id("alice"))
        .await
        .unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d.display_name.as_deref() == Some("rust-sdk registration")),
        "{devices:?}"
    );
}

/// matrix-rust-sdk names the inviter of an invite (`Room::invite_details`): the
/// invite's stripped state carries the inviter's member event, display name
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_invite_details_with_the_inviter() {
    let server = TestServer::start().await;
    rust_sdk_chat(&server, "invite").await;
}

/// matrix-rust-sdk previews rooms as Element X does for room links: a public
/// room by ID and by alias through the room summary (MSC3266), nothing for a
/// private room the user is not in, and an invite once invited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_previews_rooms_through_the_room_summary() {
    let server = TestServer::start().await;
    rust_sdk_chat(&server, "preview").await;
}

/// matrix-rust-sdk: a joiner's first sync carries the history they may see
/// (`shared`), paginating back from its `prev_batch` reaches the first message,
/// and `joined` history stays hidden however far the client pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_joiner_sees_history_per_history_visibility() {
    let server = TestServer::start().await;
    rust_sdk_chat(&server, "history").await;
}

/// The matrix-rust-sdk client running one of its sign-in modes
/// (tests/sdk/rust/src/signin.rs): it prints a line when the test has to act
/// (as a person's browser: `sso-url <url>`, `mail <purpose>`), waits for an
/// answer on stdin where it says so, and ends with its outcome.
pub struct RustSdkRun {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stdin: tokio::process::ChildStdin,
}

impl RustSdkRun {
    pub async fn start(server: &TestServer, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let client = tokio::task::spawn_blocking(rust_sdk_client).await.unwrap();
        let mut child = tokio::process::Command::new(client)
            .arg(&server.base)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the matrix-rust-sdk client");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take().unwrap();
        Self {
            child,
            lines,
            stdin,
        }
    }

    /// The next line the client prints (it fails the test if the client
    /// ends instead, or says nothing for two minutes).
    pub async fn line(&mut self) -> String {
        let next =
            tokio::time::timeout(std::time::Duration::from_secs(120), self.lines.next_line())
                .await
                .expect("the matrix-rust-sdk client said nothing for 120 s")
                .unwrap();
        match next {
            Some(line) => line,
            None => {
                let out = exit_report(&mut self.child).await;
                panic!("the matrix-rust-sdk client ended early:\n{out}");
            }
        }
    }

    /// Answers the client's last question.
    pub async fn answer(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The client's last line, once it has exited successfully.
    pub async fn outcome(mut self) -> String {
        let line = self.line().await;
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), self.child.wait())
            .await
            .expect("the matrix-rust-sdk client did not exit")
            .unwrap();
        assert!(
            status.success(),
            "the matrix-rust-sdk client failed after {line:?}:\n{}",
            exit_report(&mut self.child).await
        );
        line
    }
}

/// A child's exit status and stderr, once it has exited.
async fn exit_report(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.unwrap();
    }
    format!("{status}\n{stderr}")
}

/// Runs the matrix-rust-sdk client in a mode that asks nothing; returns its
/// outcome line.
pub async fn rust_sdk_run(server: &TestServer, args: &[&str]) -> String {
    RustSdkRun::start(server, args).await.outcome().await
}
