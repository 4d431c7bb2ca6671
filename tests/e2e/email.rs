//! Email: registration with a validated address, password reset, adding and
//! removing addresses, login by address, against a real SMTP server
//! (`aiosmtpd` from PyPI, in the venv `scripts/python-env` makes) that writes
//! each mail it accepts to a directory. The tests read the link or token from
//! the mail as a user would.

use std::{path::PathBuf, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Login, TestServer, dev_tls, enc, free_port, setup_script};

/// A running SMTP server capturing mails, stopped on drop.
struct Smtp {
    port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

#[derive(Default)]
struct SmtpOptions {
    /// STARTTLS (required) with the dev certificate.
    starttls: bool,
    /// AUTH credentials the server requires.
    auth: Option<(&'static str, &'static str)>,
}

impl Smtp {
    async fn start() -> Self {
        Self::start_on(free_port(), SmtpOptions::default()).await
    }

    async fn start_on(port: u16, options: SmtpOptions) -> Self {
        use tokio::io::AsyncBufReadExt;
        let python = setup_script("python-env");
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/smtp_capture.py");
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path());
        if options.starttls {
            let tls = dev_tls();
            cmd.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
        }
        if let Some((user, password)) = options.auth {
            cmd.args(["--user", user, "--password", password]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the SMTP server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("SMTP server ready in time")
            .unwrap();
        assert_eq!(line.as_deref(), Some("ready"));
        Self {
            port,
            dir,
            _child: child,
        }
    }

    /// The mails received so far, oldest first.
    fn mails(&self) -> Vec<Value> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    /// Waits for mail number `n` (1-based) and returns it.
    async fn mail(&self, n: usize) -> Value {
        for _ in 0..300 {
            if let Some(mail) = self.mails().into_iter().nth(n - 1) {
                return mail;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mail {n} never arrived");
    }
}

/// A server sending mail through `smtp` (plain SMTP on loopback).
async fn server_with(
    smtp_port: u16,
    tweak: impl FnOnce(&mut lattice::config::Config),
) -> TestServer {
    TestServer::start_with(|config| {
        config.email.smtp_host = "127.0.0.1".into();
        config.email.smtp_port = smtp_port;
        config.email.tls = lattice::config::SmtpTls::Off;
        config.email.from = "Lattice <noreply@test.local>".into();
        config.email.timeout_secs = 5;
        tweak(config);
    })
    .await
}

/// The validation link in a mail's body, as mailed.
fn raw_link(mail: &Value) -> String {
    let body = mail["body"].as_str().unwrap();
    body.split_whitespace()
        .find(|w| w.contains("/_synapse/client/email/validate?"))
        .unwrap_or_else(|| panic!("no link in {body}"))
        .to_owned()
}

/// The validation link, reached at `server`: it starts with the server's
/// `public_baseurl` (`http://test.local:0/` here, a name no resolver knows),
/// which the test swaps for the address the server listens on.
fn link_in(server: &TestServer, mail: &Value) -> String {
    let link = raw_link(mail);
    let path = link
        .strip_prefix("http://test.local:0")
        .unwrap_or_else(|| panic!("the link starts with public_baseurl: {link}"));
    format!("{}{path}", server.base)
}

/// The token a mail carries (the link's `token` parameter).
fn token_in(mail: &Value) -> String {
    query_param(&raw_link(mail), "token")
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

async fn request_token(
    server: &TestServer,
    kind: &str,
    secret: &str,
    email: &str,
    attempt: u64,
) -> (StatusCode, Value) {
    let path = match kind {
        "register" => "/_matrix/client/v3/register/email/requestToken",
        "password" => "/_matrix/client/v3/account/password/email/requestToken",
        "3pid" => "/_matrix/client/v3/account/3pid/email/requestToken",
        _ => unreachable!(),
    };
    server
        .post(
            path,
            None,
            json!({ "client_secret": secret, "email": email, "send_attempt": attempt }),
        )
        .await
}

/// Opens the mailed link as a browser does, and submits its confirmation form
/// when it shows one (password resets). Returns the final status and page.
async fn open_link(link: &str) -> (StatusCode, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(link).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let status = page.status();
    let html = page.text().await.unwrap();
    if !html.contains("<form method=\"post\">") {
        return (status, html);
    }
    assert_eq!(status, StatusCode::OK);
    let sid = query_param(link, "sid");
    let token = query_param(link, "token");
    let resp = client
        .post(link.split('?').next().unwrap())
        .form(&[("sid", sid.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// Registers `username` with `email` through the whole mail round trip.
async fn register_with_email(
    server: &TestServer,
    smtp: &Smtp,
    n: usize,
    username: &str,
    email: &str,
) -> Login {
    let secret = format!("secret-{username}");
    let (status, body) = request_token(server, "register", &secret, email, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = smtp.mail(n).await;
    let (status, page) = open_link(&link_in(server, &mail)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": username, "password": "pw-1" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": { "sid": sid, "client_secret": secret },
                "session": session,
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Login::from_json(&body)
}

async fn threepids(server: &TestServer, who: &Login) -> Value {
    let (status, body) = server
        .get("/_matrix/client/v3/account/3pid", Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["threepids"].clone()
}

#[tokio::test]
async fn registration_with_a_mailed_link_binds_the_address() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |c| c.registration.require_email = true).await;

    // Only the email flow, as configured.
    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.email.identity"] }])
    );

    let (status, body) =
        request_token(&server, "register", "s3cret", "  Alice@Example.ORG ", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    assert_eq!(
        body["submit_url"],
        format!(
            "{}/_synapse/client/email/submit_token",
            "http://test.local:0"
        )
        .as_str()
        .replace(
            ":0",
            &format!(":{}", server.state.config.listeners[0].bind.port())
        ),
    );
    let mail = smtp.mail(1).await;
    assert_eq!(mail["to"], json!(["alice@example.org"]));
    assert_eq!(mail["from"], "noreply@test.local");
    assert!(
        mail["subject"]
            .as_str()
            .unwrap()
            .contains("Confirm your email"),
        "{mail}"
    );
    let link = link_in(&server, &mail);
    assert_eq!(query_param(&link, "sid"), sid);
    assert!(mail["body"].as_str().unwrap().contains(&token_in(&mail)));

    // Before the link is opened, the stage is not done (clients poll it).
    let (_, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "alice", "password": "pw-1" }),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let auth = json!({
        "type": "m.login.email.identity",
        "threepid_creds": { "sid": sid, "client_secret": "s3cret" },
        "session": session,
    });
    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!({ "auth": auth }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    assert_eq!(body["completed"], json!([]));

    let (status, page) = open_link(&link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("has been confirmed"), "{page}");

    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!({ "auth": auth }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = Login::from_json(&body);
    assert_eq!(alice.user_id, "@alice:test.local");
    let listed = threepids(&server, &alice).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["medium"], "email");
    assert_eq!(listed[0]["address"], "alice@example.org");
    assert!(listed[0]["validated_at"].as_i64().unwrap() > 0);
    assert!(listed[0]["added_at"].as_i64().unwrap() > 0);

    // Log in by the address (any case), as Synapse allows.
    let login = |address: &'static str, password: &'static str| {
        let server = &server;
        async move {
            server
                .post(
                    "/_matrix/client/v3/login",
                    None,
                    json!({
                        "type": "m.login.password",
                        "identifier": { "type": "m.id.thirdparty", "medium": "email", "address": address },
                        "password": password,
                    }),
                )
                .await
        }
    };
    let (status, body) = login("ALICE@example.org", "pw-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    // The spec's deprecated top-level `medium` and `address` work too.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "medium": "email",
                    "address": "alice@example.org", "password": "pw-1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    let (status, wrong) = login("alice@example.org", "nope").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, unknown) = login("nobody@example.org", "pw-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An unknown address reads exactly like a wrong password.
    assert_eq!(wrong, unknown);

    // The address is taken now: a second registration with it is refused
    // (M_THREEPID_IN_USE, as Synapse answers by default).
    let (status, body) = request_token(&server, "register", "other", "alice@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_THREEPID_IN_USE");
    assert_eq!(smtp.mails().len(), 1);

    // The capability says addresses can be changed.
    let (_, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.access_token))
        .await;
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], true);
}

#[tokio::test]
async fn a_repeated_send_attempt_sends_no_second_mail_and_a_new_one_replaces_the_token() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let (_, first) = request_token(&server, "register", "sec", "bob@example.org", 1).await;
    smtp.mail(1).await;
    // The same attempt again: the same session, no mail.
    let (status, again) = request_token(&server, "register", "sec", "bob@example.org", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["sid"], first["sid"]);
    // A mail that would arrive would be written before a second, later request's.
    let (_, _) = request_token(&server, "password", "probe", "nobody@example.org", 1).await;
    assert_eq!(smtp.mails().len(), 1);
    // A higher attempt: the same session, a new mail, the old token dead.
    let (_, third) = request_token(&server, "register", "sec", "bob@example.org", 2).await;
    assert_eq!(third["sid"], first["sid"]);
    let second_mail = smtp.mail(2).await;
    let first_mail = &smtp.mails()[0];
    assert_ne!(token_in(first_mail), token_in(&second_mail));
    let (status, page) = open_link(&link_in(&server, first_mail)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    let (status, _) = open_link(&link_in(&server, &second_mail)).await;
    assert_eq!(status, StatusCode::OK);
    // Another client secret for the same address is another session.
    let (_, other) = request_token(&server, "register", "sec2", "bob@example.org", 1).await;
    assert_ne!(other["sid"], first["sid"]);
    smtp.mail(3).await;
}

#[tokio::test]
async fn wrong_expired_and_reused_tokens_are_refused() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |c| c.email.token_lifetime_secs = 2).await;
    let (_, body) = request_token(&server, "register", "sec", "carol@example.org", 1).await;
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = smtp.mail(1).await;
    let token = token_in(&mail);
    let submit = |sid: String, secret: &'static str, token: String| {
        let server = &server;
        async move {
            server
                .post(
                    "/_synapse/client/email/submit_token",
                    None,
                    json!({ "sid": sid, "client_secret": secret, "token": token }),
                )
                .await
        }
    };
    // A wrong token, a right token with the wrong secret, an unknown session.
    let (status, body) = submit(sid.clone(), "sec", "wrong".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_THREEPID_AUTH_FAILED");
    let (status, _) = submit(sid.clone(), "other", token.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = submit("nosuchsid".into(), "sec", token.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let wrong_link = format!(
        "{}/_synapse/client/email/validate?sid={}&token=forged",
        server.base,
        enc(&sid)
    );
    let (status, page) = open_link(&wrong_link).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("wrong, has expired or was used"), "{page}");

    // The right one works once.
    let (status, body) = submit(sid.clone(), "sec", token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let (status, _) = submit(sid.clone(), "sec", token.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = open_link(&link_in(&server, &mail)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An expired token (lifetime 2 s) validates nothing.
    let (_, body) = request_token(&server, "register", "sec", "dave@example.org", 1).await;
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = smtp.mail(2).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = submit(sid.clone(), "sec", token_in(&mail)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nor does the session count as validated.
    let (_, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "dave", "password": "pw" }),
        )
        .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": { "sid": sid, "client_secret": "sec" },
                "session": body["session"],
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
}

#[tokio::test]
async fn password_reset_by_mail_end_to_end() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let erin = register_with_email(&server, &smtp, 1, "erin", "erin@example.org").await;

    // An unknown address: M_THREEPID_NOT_FOUND (Synapse's default), no mail.
    let (status, body) = request_token(&server, "password", "rs", "who@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_THREEPID_NOT_FOUND");

    let (status, body) = request_token(&server, "password", "rs", "Erin@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = smtp.mail(2).await;
    assert!(
        mail["subject"].as_str().unwrap().contains("Password reset"),
        "{mail}"
    );

    // Without a token, POST /account/password asks for the email stage.
    let (status, body) = server
        .post("/_matrix/client/v3/account/password", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.email.identity"] }])
    );
    let session = body["session"].as_str().unwrap().to_owned();
    let auth = |secret: &str| {
        json!({
            "type": "m.login.email.identity",
            "threepid_creds": { "sid": sid, "client_secret": secret },
            "session": session,
        })
    };
    // Opening the link only shows a confirmation form: a mail scanner that
    // fetches it validates nothing.
    let page = reqwest::get(link_in(&server, &mail)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<form method=\"post\">"), "{page}");
    // Not validated yet.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({ "new_password": "pw-2", "auth": auth("rs") }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // The user types the mailed token into the client, which posts it to submit_url.
    let (status, body) = server
        .post(
            "/_synapse/client/email/submit_token",
            None,
            json!({ "sid": sid, "client_secret": "rs", "token": token_in(&mail) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Someone with the sid but not the secret gets nowhere.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({ "new_password": "stolen", "auth": auth("guess") }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({ "new_password": "pw-2", "auth": auth("rs") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every device was logged out; the new password logs in, the old one not.
    let (status, _) = server.whoami(&erin.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.login("erin", "pw-1").await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.login("erin", "pw-2").await.0, StatusCode::OK);

    // The validated session was spent: it resets nothing a second time, even
    // through a new UIA session.
    let (_, body) = server
        .post("/_matrix/client/v3/account/password", None, json!({}))
        .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({ "new_password": "pw-3", "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": { "sid": sid, "client_secret": "rs" },
                "session": body["session"],
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(server.login("erin", "pw-3").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_session_serves_only_its_own_purpose() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let frank = register_with_email(&server, &smtp, 1, "frank", "frank@example.org").await;
    // A registration session for a new address, validated...
    let (_, body) = request_token(&server, "register", "x", "new@example.org", 1).await;
    let reg_sid = body["sid"].as_str().unwrap().to_owned();
    open_link(&link_in(&server, &smtp.mail(2).await)).await;
    // ...cannot add that address to an account (3pid/add wants an add session).
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&frank.access_token),
            json!({ "client_secret": "x", "sid": reg_sid }),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&frank.access_token),
            json!({
                "client_secret": "x", "sid": reg_sid,
                "auth": crate::harness::password_auth(&frank.user_id, "pw-1", &session),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_AUTH_FAILED");
    assert_eq!(
        threepids(&server, &frank).await.as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn adding_and_removing_addresses() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let gina = register_with_email(&server, &smtp, 1, "gina", "gina@example.org").await;
    let hank = server.register("hank", "pw-h").await;

    // Hank cannot even ask to add Gina's address.
    let (status, body) = request_token(&server, "3pid", "h", "GINA@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_THREEPID_IN_USE");

    // Hank adds a free address: requestToken, the link, then 3pid/add behind UIA.
    let (status, body) = request_token(&server, "3pid", "h", "hank@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = smtp.mail(2).await;
    assert!(
        mail["subject"].as_str().unwrap().contains("adding"),
        "{mail}"
    );
    open_link(&link_in(&server, &mail)).await;
    let add = |secret: &'static str, auth: Option<Value>, who: &Login| {
        let mut body = json!({ "client_secret": secret, "sid": sid });
        if let Some(auth) = auth {
            body["auth"] = auth;
        }
        let token = who.access_token.clone();
        let server = &server;
        async move {
            server
                .post("/_matrix/client/v3/account/3pid/add", Some(&token), body)
                .await
        }
    };
    let (status, body) = add("h", None, &hank).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap().to_owned();

    // Gina, knowing the sid but not Hank's secret, cannot take the address.
    let (_, body) = add("guess", None, &gina).await;
    let gina_session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = add(
        "guess",
        Some(crate::harness::password_auth(
            &gina.user_id,
            "pw-1",
            &gina_session,
        )),
        &gina,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_AUTH_FAILED");

    let (status, body) = add(
        "h",
        Some(crate::harness::password_auth(
            &hank.user_id,
            "pw-h",
            &session,
        )),
        &hank,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = threepids(&server, &hank).await;
    assert_eq!(listed[0]["address"], "hank@example.org", "{listed}");

    // Admins see a user's addresses.
    let admin = server.register("root", "root-pw").await;
    lattice::storage::users::set_admin(&server.state.db, &admin.user_id, true)
        .await
        .unwrap();
    let (status, body) = server
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&hank.user_id)),
            Some(&admin.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["threepids"][0]["address"], "hank@example.org");
    assert_eq!(body["threepids"][0]["medium"], "email");

    // Gina deleting Hank's address removes nothing.
    let delete = |who: &Login, address: &'static str| {
        let token = who.access_token.clone();
        let server = &server;
        async move {
            server
                .post(
                    "/_matrix/client/v3/account/3pid/delete",
                    Some(&token),
                    json!({ "medium": "email", "address": address }),
                )
                .await
        }
    };
    let (status, body) = delete(&gina, "hank@example.org").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(threepids(&server, &hank).await.as_array().unwrap().len(), 1);
    // Hank deletes it: no identity server was involved, so `no-support`.
    let (status, body) = delete(&hank, "Hank@Example.org").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert_eq!(threepids(&server, &hank).await, json!([]));

    // Deactivation frees an address, as on Synapse.
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&gina.access_token),
            json!({}),
        )
        .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&gina.access_token),
            json!({ "auth": crate::harness::password_auth(&gina.user_id, "pw-1", body["session"].as_str().unwrap()) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = request_token(&server, "3pid", "h", "gina@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_address_taken_after_validation_is_not_added_twice() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let ivan = server.register("ivan", "pw-i").await;
    // Ivan validates a free address for adding...
    let (_, body) = request_token(&server, "3pid", "i", "shared@example.org", 1).await;
    let sid = body["sid"].as_str().unwrap().to_owned();
    open_link(&link_in(&server, &smtp.mail(1).await)).await;
    // ...but Judy registers with it first.
    register_with_email(&server, &smtp, 2, "judy", "shared@example.org").await;
    let (_, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&ivan.access_token),
            json!({ "client_secret": "i", "sid": sid }),
        )
        .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&ivan.access_token),
            json!({
                "client_secret": "i", "sid": sid,
                "auth": crate::harness::password_auth(&ivan.user_id, "pw-i", body["session"].as_str().unwrap()),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_IN_USE");
    assert_eq!(threepids(&server, &ivan).await, json!([]));
}

#[tokio::test]
async fn request_token_is_rate_limited_per_address_and_per_ip() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login.burst = 1000;
        c.rate_limits.email_address = lattice::config::Bucket {
            per_second: 0.001,
            burst: 2,
        };
        c.rate_limits.email_ip = lattice::config::Bucket {
            per_second: 0.001,
            burst: 3,
        };
    })
    .await;
    for attempt in 1..=2 {
        let (status, body) =
            request_token(&server, "register", "s", "kim@example.org", attempt).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The address's bucket is empty (the case of the address does not matter).
    let (status, body) = request_token(&server, "register", "s", "KIM@example.org", 3).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    // Another address from the same IP: the IP's bucket (3, one taken by
    // the refused request) is empty too.
    let (status, _) = request_token(&server, "register", "s", "lee@example.org", 1).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(smtp.mails().len(), 2);
}

#[tokio::test]
async fn smtp_down_is_a_clear_error_and_leaves_no_account() {
    let port = free_port();
    let server = server_with(port, |c| c.registration.require_email = true).await;
    let (status, body) = request_token(&server, "register", "s", "mia@example.org", 1).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Unable to send the validation email"),
        "{body}"
    );
    // The session exists but was never validated: registration cannot finish.
    let (_, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "mia", "password": "pw" }),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, _) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "auth": { "type": "m.login.dummy", "session": session } }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the dummy stage is not offered"
    );
    let (status, body) = server
        .get("/_matrix/client/v3/register/available?username=mia", None)
        .await;
    assert_eq!(status, StatusCode::OK, "no half-registered user: {body}");

    // Once the mail server is up, the client's retry of the same attempt sends
    // the mail (the failed send was not counted) and registration completes.
    let smtp = Smtp::start_on(port, SmtpOptions::default()).await;
    let (status, body) = request_token(&server, "register", "s", "mia@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    open_link(&link_in(&server, &smtp.mail(1).await)).await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": { "sid": sid, "client_secret": "s" },
                "session": session,
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@mia:test.local");
}

#[tokio::test]
async fn starttls_with_authentication() {
    let port = free_port();
    let smtp = Smtp::start_on(
        port,
        SmtpOptions {
            starttls: true,
            auth: Some(("lattice", "mail-pw")),
        },
    )
    .await;
    let tls = dev_tls();
    let start = |password: &'static str| {
        TestServer::start_with(move |config| {
            config.email.smtp_host = "localhost".into();
            config.email.smtp_port = port;
            config.email.tls = lattice::config::SmtpTls::Starttls;
            config.email.smtp_user = Some("lattice".into());
            config.email.smtp_pass = Some(password.into());
            config.email.from = "noreply@test.local".into();
            config.email.timeout_secs = 5;
            config.outbound.extra_ca_files = vec![tls.ca.clone()];
        })
    };
    let server = start("mail-pw").await;
    let (status, body) = request_token(&server, "register", "s", "nat@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(smtp.mail(1).await["to"], json!(["nat@example.org"]));

    // Wrong SMTP credentials: the mail is refused, and the client told.
    let bad = start("wrong").await;
    let (status, body) = request_token(&bad, "register", "s", "nat@example.org", 1).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn without_email_nothing_is_offered() {
    let server = TestServer::start().await;
    let (_, body) = server
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    let (status, body) = request_token(&server, "register", "s", "o@example.org", 1).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_THREEPID_DENIED");
    let (status, body) = request_token(&server, "password", "s", "o@example.org", 1).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Without a token, a password change is what it was: 401 M_MISSING_TOKEN.
    let (status, body) = server
        .post("/_matrix/client/v3/account/password", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    let alice = server.register("alice", "pw").await;
    let (_, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.access_token))
        .await;
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], false);
    // Optional email with open registration: the dummy flow and the email flow.
    let smtp = Smtp::start().await;
    let with_email = server_with(smtp.port, |_| {}).await;
    let (_, body) = with_email
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.dummy"] }, { "stages": ["m.login.email.identity"] }])
    );
}

#[tokio::test]
async fn hidden_answers_reveal_no_account() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |c| c.email.inhibit_3pid_errors = true).await;
    register_with_email(&server, &smtp, 1, "olga", "olga@example.org").await;
    // A taken address for registration, an unknown one for a reset: both
    // answered like any other, with no mail.
    let (status, taken) = request_token(&server, "register", "a", "olga@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    assert!(taken["sid"].as_str().is_some());
    let (status, unknown) = request_token(&server, "password", "a", "who@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{unknown}");
    let (status, known) = request_token(&server, "password", "a", "olga@example.org", 1).await;
    assert_eq!(status, StatusCode::OK);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&unknown), keys(&known));
    smtp.mail(2).await;
    assert_eq!(smtp.mails().len(), 2, "only the real reset was mailed");
    // The reset's link, confirmed through its form, validates.
    let (status, page) = open_link(&link_in(&server, &smtp.mails()[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("has been confirmed"), "{page}");
}

#[tokio::test]
async fn next_link_is_followed_after_validation_and_checked() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |c| {
        c.email.next_link_domain_allowlist = vec!["app.example.org".into()];
    })
    .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register/email/requestToken",
            None,
            json!({ "client_secret": "n", "email": "pat@example.org", "send_attempt": 1,
                    "next_link": "https://evil.example/phish" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = server
        .post(
            "/_matrix/client/v3/register/email/requestToken",
            None,
            json!({ "client_secret": "n", "email": "pat@example.org", "send_attempt": 1,
                    "next_link": "https://app.example.org/welcome" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, page) = open_link(&link_in(&server, &smtp.mail(1).await)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("content=\"0;url=https://app.example.org/welcome\""),
        "{page}"
    );
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn matrix_js_sdk_registers_resets_and_manages_addresses() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let dir = smtp.dir.path().to_str().unwrap().to_owned();
    assert_eq!(
        crate::sdk::run_js(&server, "js_email.mjs", &[&dir]).await,
        "ok"
    );
    assert_eq!(smtp.mails().len(), 3);
}

/// matrix-rust-sdk and email (tests/sdk/rust/src/signin.rs): registration
/// with the `m.login.email.identity` stage after the mailed link; `Account`'s
/// 3PID methods (`request_3pid_email_token` refused for Bob's address,
/// `add_3pid` refused while the session was "validated" only with Bob's
/// token or a forged one, then added behind the password with the right
/// link, refused a second time, `get_3pids`, `delete_3pid`); and a forgotten
/// password reset through `change_password` with the email stage on a client
/// that is not logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_registers_resets_and_manages_addresses() {
    let smtp = Smtp::start().await;
    let server = server_with(smtp.port, |_| {}).await;
    let bob = register_with_email(&server, &smtp, 1, "bob", "bob@example.org").await;
    let mut run = crate::sdk::RustSdkRun::start(
        &server,
        &[
            "email",
            "rosa",
            "pw-r",
            "rosa@example.org",
            "rosa.work@example.org",
            "BOB@example.org",
        ],
    )
    .await;

    assert_eq!(run.line().await, "mail register");
    let mail = smtp.mail(2).await;
    assert_eq!(mail["to"], json!(["rosa@example.org"]));
    let (status, page) = open_link(&link_in(&server, &mail)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    run.answer("opened").await;

    // Rosa's session for her second address, opened with Bob's token (from
    // his own request for another address) and with a forged one.
    assert_eq!(run.line().await, "mail add-wrong");
    let rosas = smtp.mail(3).await;
    assert_eq!(rosas["to"], json!(["rosa.work@example.org"]));
    let (status, body) = request_token(&server, "3pid", "bob-s", "bob.home@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bobs = smtp.mail(4).await;
    let rosas_link = link_in(&server, &rosas);
    let rosas_token = token_in(&rosas);
    for token in [token_in(&bobs), "forged".to_owned()] {
        let link = rosas_link.replace(
            &format!("token={}", enc(&rosas_token)),
            &format!("token={}", enc(&token)),
        );
        assert_ne!(link, rosas_link);
        let (status, page) = open_link(&link).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    }
    run.answer("opened wrong").await;

    assert_eq!(run.line().await, "mail add");
    let (status, page) = open_link(&rosas_link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    run.answer("opened").await;

    assert_eq!(run.line().await, "mail reset");
    let mail = smtp.mail(5).await;
    assert_eq!(mail["to"], json!(["rosa@example.org"]));
    let (status, page) = open_link(&link_in(&server, &mail)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    run.answer("opened").await;

    assert_eq!(
        run.outcome().await,
        format!(
            "ok {} taken=M_THREEPID_IN_USE wrong=M_THREEPID_AUTH_FAILED \
             again=M_THREEPID_AUTH_FAILED old=M_FORBIDDEN",
            crate::harness::user_id("rosa")
        )
    );
    assert_eq!(smtp.mails().len(), 5);
    // Bob keeps his address.
    let listed = threepids(&server, &bob).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["address"], "bob@example.org");
}

// ---- Email pushers: notification mails for missed messages ----

/// A server whose notification mails go out 2 s after a message arrives.
async fn notif_server(smtp: &Smtp) -> TestServer {
    server_with(smtp.port, |c| {
        c.email.notif_delay_secs = 2;
        c.email.notif_throttle_secs = 3600;
        c.email.client_base_url = "https://app.element.io".into();
    })
    .await
}

fn email_pusher(address: &str) -> Value {
    json!({
        "kind": "email",
        "app_id": "m.email",
        "pushkey": address,
        "app_display_name": "Email Notifications",
        "device_display_name": address,
        "lang": "en",
        "data": { "brand": "Element" },
        // As Element sets it: beside the user's other pushers.
        "append": true,
    })
}

async fn set_pusher(server: &TestServer, who: &Login, body: Value) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&who.access_token),
            body,
        )
        .await
}

async fn pushers(server: &TestServer, who: &Login) -> Value {
    let (status, body) = server
        .get("/_matrix/client/v3/pushers", Some(&who.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pushers"].clone()
}

/// Alice's room "Tea <&> biscuits" with Bob in it; returns its ID.
async fn room_with(server: &TestServer, alice: &Login, bob: &Login) -> String {
    let room = server
        .create_room(
            alice,
            json!({ "name": "Tea <&> biscuits", "invite": [bob.user_id] }),
        )
        .await;
    server.join(bob, &room).await;
    room
}

/// Waits for the worker to have had every chance to mail (the delay and two
/// of its rounds), then returns how many mails arrived.
async fn mails_after_the_delay(smtp: &Smtp) -> usize {
    tokio::time::sleep(Duration::from_secs(6)).await;
    smtp.mails().len()
}

#[tokio::test]
async fn an_unread_message_is_mailed_once_and_the_link_unsubscribes() {
    let smtp = Smtp::start().await;
    let server = notif_server(&smtp).await;
    let bob = register_with_email(&server, &smtp, 1, "bob", "bob@example.org").await;
    let alice = server.register("alice", "pw-a").await;
    let room = room_with(&server, &alice, &bob).await;

    let (status, body) = set_pusher(&server, &bob, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = pushers(&server, &bob).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["kind"], "email");
    assert_eq!(listed[0]["app_id"], "m.email");
    assert_eq!(listed[0]["pushkey"], "bob@example.org");
    assert_eq!(listed[0]["data"], json!({ "brand": "Element" }));

    // A message with markup, and an encrypted one, both left unread.
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "<img src=x onerror=alert(1)> tea & <b>cake</b>?" }),
        )
        .await;
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1",
                enc(&room)
            ),
            Some(&alice.access_token),
            json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "SECRET-CIPHERTEXT",
                "sender_key": "k", "session_id": "s", "device_id": "D",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mail = smtp.mail(2).await;
    assert_eq!(mail["to"], json!(["bob@example.org"]), "{mail}");
    let subject = mail["subject"].as_str().unwrap();
    assert!(subject.contains("Tea <&> biscuits"), "{subject}");
    let text = mail["body"].as_str().unwrap();
    assert!(text.contains("Tea <&> biscuits"), "{text}");
    assert!(
        text.contains("alice: <img src=x onerror=alert(1)> tea & <b>cake</b>?"),
        "{text}"
    );
    assert!(text.contains("an encrypted message"), "{text}");
    assert!(!text.contains("SECRET-CIPHERTEXT"), "{text}");
    assert!(
        text.contains(&format!("https://app.element.io/#/room/{room}")),
        "{text}"
    );
    let html = mail["html"].as_str().expect("an HTML part");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt; tea &amp; &lt;b&gt;cake&lt;/b&gt;?"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("<b>cake"), "{html}");
    assert!(html.contains("Tea &lt;&amp;&gt; biscuits"), "{html}");
    assert!(html.contains("an encrypted message"), "{html}");
    assert!(!html.contains("SECRET-CIPHERTEXT"), "{html}");

    // The unsubscribe link, in the body and in List-Unsubscribe (one-click).
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/_synapse/client/unsubscribe?"))
        .unwrap_or_else(|| panic!("no unsubscribe link in {text}"))
        .to_owned();
    assert_eq!(mail["list_unsubscribe"], format!("<{link}>"));
    assert_eq!(mail["list_unsubscribe_post"], "List-Unsubscribe=One-Click");
    assert!(html.contains(&link.replace('&', "&amp;")), "{html}");

    // The throttle: another unread message brings no second mail.
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "hello?" }),
        )
        .await;
    assert_eq!(mails_after_the_delay(&smtp).await, 2);

    // The link: GET only asks (a link scanner unsubscribes no one)...
    let link = link
        .strip_prefix("http://test.local:0")
        .map(|path| format!("{}{path}", server.base))
        .unwrap_or_else(|| panic!("the link starts with public_baseurl: {link}"));
    let client = reqwest::Client::new();
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<form method=\"post\">")
    );
    assert_eq!(pushers(&server, &bob).await.as_array().unwrap().len(), 1);
    // ...a forged token removes nothing...
    let token = query_param(&link, "token");
    let forged = link.replace(&token, &"A".repeat(token.len()));
    let resp = client.post(&forged).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(pushers(&server, &bob).await.as_array().unwrap().len(), 1);
    // ...nor does the right token naming another user's pusher...
    let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let other = link.replace(&form(&bob.user_id), &form(&alice.user_id));
    assert_ne!(other, link);
    let resp = client.post(&other).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // ...and the POST (as a mail client's one-click) removes the pusher.
    let resp = client
        .post(&link)
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("no more notification mails")
    );
    assert_eq!(pushers(&server, &bob).await, json!([]));
    let resp = client.post(&link).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "a used link stays used"
    );
}

#[tokio::test]
async fn a_message_read_in_time_is_not_mailed() {
    let smtp = Smtp::start().await;
    let server = notif_server(&smtp).await;
    let bob = register_with_email(&server, &smtp, 1, "bob", "bob@example.org").await;
    let alice = server.register("alice", "pw-a").await;
    let room = room_with(&server, &alice, &bob).await;
    let (status, body) = set_pusher(&server, &bob, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let read = server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "seen in time" }),
        )
        .await;
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&read)
            ),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mails_after_the_delay(&smtp).await,
        1,
        "only the registration mail"
    );

    // An unread one afterwards is mailed, alone.
    server
        .send_message(
            &alice,
            &room,
            json!({ "msgtype": "m.text", "body": "left unread" }),
        )
        .await;
    let mail = smtp.mail(2).await;
    let text = mail["body"].as_str().unwrap();
    assert!(text.contains("left unread"), "{text}");
    assert!(!text.contains("seen in time"), "{text}");
}

#[tokio::test]
async fn email_pushers_only_for_the_users_own_addresses() {
    let smtp = Smtp::start().await;
    let server = notif_server(&smtp).await;
    let bob = register_with_email(&server, &smtp, 1, "bob", "bob@example.org").await;
    let mallory = server.register("mallory", "pw-m").await;

    // Another user's address, in any case.
    for address in ["bob@example.org", "BOB@Example.org"] {
        let (status, body) = set_pusher(&server, &mallory, email_pusher(address)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_THREEPID_NOT_FOUND", "{body}");
    }
    // An address bound to no one, and something that is no address.
    for address in ["mallory@example.org", "not an address"] {
        let (status, body) = set_pusher(&server, &mallory, email_pusher(address)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_THREEPID_NOT_FOUND", "{body}");
    }
    assert_eq!(pushers(&server, &mallory).await, json!([]));
    // Bob's pusher is not touched by Mallory's attempts.
    let (status, body) = set_pusher(&server, &bob, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = set_pusher(&server, &mallory, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(pushers(&server, &bob).await.as_array().unwrap().len(), 1);

    // Deleting works as for any pusher (`kind: null`).
    let mut delete = email_pusher("bob@example.org");
    delete["kind"] = Value::Null;
    let (status, body) = set_pusher(&server, &bob, delete).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pushers(&server, &bob).await, json!([]));

    // Set from a second device, it outlives that device's logout (it belongs
    // to the address, not to the device)...
    let (status, body) = server.login("bob", "pw-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let phone = Login::from_json(&body);
    let (status, _) = set_pusher(&server, &phone, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            "/_matrix/client/v3/logout",
            Some(&phone.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pushers(&server, &bob).await.as_array().unwrap().len(), 1);
    // ...but not the address: removing it removes its pusher.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&bob.access_token),
            json!({ "medium": "email", "address": "bob@example.org" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pushers(&server, &bob).await, json!([]));
    let (status, body) = set_pusher(&server, &bob, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_NOT_FOUND");
}

#[tokio::test]
async fn without_email_email_pushers_are_refused() {
    let server = TestServer::start().await;
    let bob = server.register("bob", "pw-b").await;
    let (status, body) = set_pusher(&server, &bob, email_pusher("bob@example.org")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_DENIED", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not send email"),
        "{body}"
    );
    assert_eq!(pushers(&server, &bob).await, json!([]));
}
