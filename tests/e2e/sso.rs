//! Single sign-on through a real OpenID Connect provider: `oidc-provider`
//! (npm, a certified implementation; `tests/sdk/oidc_provider.mjs`) over TLS
//! on loopback. A browser is played by an HTTP client with a cookie store
//! that follows redirects and posts the provider's login and consent forms,
//! as a person's browser would; it stops where the browser would hand over to
//! the client (the allow-listed `redirectUrl`), and the test then logs in
//! with the `loginToken` as a client does.

use std::{path::PathBuf, time::Duration};

use reqwest::{StatusCode, header::LOCATION};
use serde_json::{Value, json};

use crate::{
    harness::{Login, TestServer, dev_tls, enc, free_port, setup_script, user_id},
    sdk::{RustSdkRun, rust_sdk_run},
};

/// The client a sign-in returns to (never connected to: the browser stops
/// there).
const CLIENT: &str = "https://app.test.invalid/cb";

/// The provider, stopped on drop.
struct Idp {
    port: u16,
    _child: tokio::process::Child,
}

impl Idp {
    async fn start(redirect_uri: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let port = free_port();
        let node_dir = PathBuf::from(setup_script("node-env"));
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        // ES modules resolve packages next to the script: run a copy there.
        let copy = node_dir.join(format!("oidc_provider.{}.{port}.mjs", std::process::id()));
        std::fs::copy(root.join("tests/sdk/oidc_provider.mjs"), &copy).unwrap();
        let tls = dev_tls();
        let mut child = tokio::process::Command::new("node")
            .arg(&copy)
            .arg(port.to_string())
            .arg(&tls.cert)
            .arg(&tls.key)
            .arg(redirect_uri)
            // It calls its own token endpoint (the tampering endpoints).
            .env("NODE_EXTRA_CA_CERTS", &tls.ca)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting oidc-provider");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("oidc-provider ready in time")
            .unwrap();
        let _ = std::fs::remove_file(&copy);
        assert_eq!(line.as_deref(), Some("ready"));
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            port,
            _child: child,
        }
    }

    fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// A provider entry of the configuration, as an administrator writes it.
fn provider(idp_id: &str, issuer: &str, extra: Value) -> lattice::config::OidcProvider {
    let mut entry = json!({
        "idp_id": idp_id,
        "idp_name": format!("IdP {idp_id}"),
        "issuer": issuer,
        "client_id": "lattice",
        "client_secret": "lattice-secret",
        "scopes": ["openid", "profile", "email", "groups"],
        "localpart_template": "{{ user.preferred_username }}",
        "display_name_template": "{{ user.name }}",
        "email_template": "{{ user.email }}",
    });
    for (k, v) in extra.as_object().unwrap() {
        entry[k] = v.clone();
    }
    serde_json::from_value(entry).unwrap()
}

/// A provider whose token endpoint hands out ID tokens changed in one way
/// (see `oidc_provider.mjs`), the rest being the real provider's.
fn tampered(mode: &str, issuer: &str) -> lattice::config::OidcProvider {
    provider(
        mode,
        issuer,
        json!({
            "discover": false,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/tamper/{mode}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "pkce_method": "always",
        }),
    )
}

/// Each tampering and what the error page says (HTML-escaped).
const TAMPERED: [(&str, &str); 6] = [
    ("aud", "not meant for this client"),
    ("iss", "issued by &quot;https://evil.example&quot;"),
    ("expired", "has expired"),
    ("nonce", "nonce does not match"),
    ("badsig", "signature is invalid"),
    ("none", "algorithm &quot;none&quot; is not accepted"),
];

/// A server with SSO through `idp` ("main", "staff" (groups must contain
/// staff), "mixup" (issuer named by another name than the provider's own),
/// and the tampered ones), on a fixed port so that its `public_baseurl` (the
/// provider's redirect target) is where it listens.
async fn sso_server(tweak: impl FnOnce(&mut lattice::config::Config)) -> (TestServer, Idp) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(&format!("{base}/_synapse/client/oidc/callback")).await;
    let issuer = idp.issuer();
    let server = TestServer::start_with(|c| {
        c.listeners[0].bind = format!("127.0.0.1:{port}").parse().unwrap();
        c.public_baseurl = Some(format!("{base}/"));
        c.outbound.extra_ca_files = vec![dev_tls().ca.clone()];
        c.sso.client_allowlist = vec!["https://app.test.invalid/".into()];
        let mut providers = vec![
            provider("main", &issuer, json!({})),
            provider(
                "staff",
                &issuer,
                json!({ "attribute_requirements": [{ "attribute": "groups", "value": "staff" }] }),
            ),
            provider(
                "mixup",
                &format!("https://localhost:{}", idp.port),
                json!({}),
            ),
        ];
        providers.extend(TAMPERED.iter().map(|(mode, _)| tampered(mode, &issuer)));
        // ID tokens without profile claims: read from the userinfo endpoint,
        // or not at all.
        let mut userinfo = tampered("bare", &issuer);
        userinfo.idp_id = "userinfo".into();
        userinfo.user_profile_method = lattice::config::UserProfileMethod::UserinfoEndpoint;
        userinfo.userinfo_endpoint = Some(format!("{issuer}/me"));
        providers.push(userinfo);
        providers.push(tampered("bare", &issuer));
        c.sso.oidc_providers = providers;
        tweak(c);
    })
    .await;
    assert_eq!(server.base, base);
    (server, idp)
}

/// What a browser ends with.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Outcome {
    /// The login token of a redirect to the client.
    fn login_token(&self) -> String {
        self.login_token_for(CLIENT)
    }

    /// The login token of a redirect to `client`.
    fn login_token_for(&self, client: &str) -> String {
        let location = self
            .location
            .as_deref()
            .unwrap_or_else(|| panic!("no redirect: {self:?}"));
        assert!(location.starts_with(client), "{location}");
        let url = reqwest::Url::parse(location).unwrap();
        let tokens: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "loginToken")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(tokens.len(), 1, "{location}");
        tokens[0].clone()
    }
}

/// A browser: cookies kept, TLS to the provider trusted through the dev CA,
/// redirects followed except to the client (`https://app.test.invalid/`, or
/// another given) or, with `stop_at_callback`, to the server's SSO callback.
struct Browser {
    http: reqwest::Client,
}

impl Browser {
    fn new() -> Self {
        Self::build("https://app.test.invalid/", false)
    }

    fn stopping_at_callback() -> Self {
        Self::build("https://app.test.invalid/", true)
    }

    /// Stops where it would be sent to `client` (a URL prefix).
    fn stopping_at(client: &str) -> Self {
        Self::build(client, false)
    }

    fn build(client: &str, stop_at_callback: bool) -> Self {
        let ca = std::fs::read(&dev_tls().ca).unwrap();
        let client = client.to_owned();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let stop = attempt.url().as_str().starts_with(&client)
                || (stop_at_callback && attempt.url().path() == "/_synapse/client/oidc/callback");
            if stop {
                attempt.stop()
            } else if attempt.previous().len() > 20 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .redirect(policy)
            .build()
            .unwrap();
        Self { http }
    }

    async fn outcome(response: reqwest::Response) -> Outcome {
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        Outcome {
            status,
            location,
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, url: &str) -> Outcome {
        Self::outcome(self.http.get(url).send().await.unwrap()).await
    }

    /// Opens `url` and, at the provider, signs in as `login` (any password)
    /// and consents, submitting the forms its pages show.
    async fn sign_in(&self, url: &str, login: &str) -> Outcome {
        let mut response = self.http.get(url).send().await.unwrap();
        for _ in 0..4 {
            let on_provider = response.url().scheme() == "https";
            if !on_provider || response.status() != StatusCode::OK {
                return Self::outcome(response).await;
            }
            let page = response.text().await.unwrap();
            let action = attribute_after(&page, "<form", "action")
                .unwrap_or_else(|| panic!("no form on the provider's page: {page}"));
            let prompt = attribute_after(&page, "name=\"prompt\"", "value")
                .unwrap_or_else(|| panic!("no prompt on the provider's page: {page}"));
            let form: Vec<(&str, &str)> = match prompt.as_str() {
                "login" => vec![("prompt", "login"), ("login", login), ("password", "any")],
                _ => vec![("prompt", "consent")],
            };
            response = self.http.post(&action).form(&form).send().await.unwrap();
        }
        panic!("the provider kept showing pages");
    }
}

/// The value of attribute `name` in the first tag after `marker`.
fn attribute_after(page: &str, marker: &str, name: &str) -> Option<String> {
    let start = page.find(marker)?;
    let rest = &page[start..];
    let at = rest.find(&format!("{name}=\""))? + name.len() + 2;
    let end = rest[at..].find('"')?;
    Some(rest[at..at + end].replace("&amp;", "&"))
}

fn redirect_url(server: &TestServer, idp: &str) -> String {
    format!(
        "{}/_matrix/client/v3/login/sso/redirect/{}?redirectUrl={}",
        server.base,
        enc(idp),
        enc(CLIENT)
    )
}

async fn token_login(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.token", "token": token }),
        )
        .await
}

/// Signs in at the provider as `login` through `idp` and logs in with the
/// token; returns the login.
async fn sso_login(server: &TestServer, idp: &str, login: &str) -> Login {
    let outcome = Browser::new()
        .sign_in(&redirect_url(server, idp), login)
        .await;
    assert_eq!(outcome.status, StatusCode::FOUND, "{outcome:?}");
    let (status, body) = token_login(server, &outcome.login_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Login::from_json(&body)
}

async fn user_exists(server: &TestServer, localpart: &str) -> bool {
    lattice::storage::users::exists(&server.state.db, &user_id(localpart))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flows_list_the_identity_providers() {
    let (server, _idp) = sso_server(|_| {}).await;
    let (status, body) = server.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, StatusCode::OK);
    let flows = body["flows"].as_array().unwrap();
    let sso = flows
        .iter()
        .find(|f| f["type"] == "m.login.sso")
        .unwrap_or_else(|| panic!("{body}"));
    let ids: Vec<&str> = sso["identity_providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..3], ["oidc-main", "oidc-staff", "oidc-mixup"]);
    assert_eq!(sso["identity_providers"][0]["name"], "IdP main");
    // Tokens are accepted (SSO hands them out), not handed out by get_token.
    let token = flows.iter().find(|f| f["type"] == "m.login.token").unwrap();
    assert_ne!(token["get_login_token"], true);

    // Without providers: no SSO, no token login, the endpoints absent.
    let plain = TestServer::start().await;
    let (_, body) = plain.get("/_matrix/client/v3/login", None).await;
    assert!(!body.to_string().contains("m.login.sso"), "{body}");
    let (status, body) = plain
        .get(
            &format!(
                "/_matrix/client/v3/login/sso/redirect?redirectUrl={}",
                enc(CLIENT)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_login_creates_the_user_and_later_logins_find_it() {
    let (server, _idp) = sso_server(|_| {}).await;
    assert!(!user_exists(&server, "alice").await);
    let alice = sso_login(&server, "oidc-main", "alice").await;
    assert_eq!(alice.user_id, user_id("alice"));
    let (status, me) = server.whoami(&alice.access_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], user_id("alice"));
    // The display name and address came from the claims.
    let (_, profile) = server
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(profile["displayname"], "Alice Liddell");
    let (_, threepids) = server
        .get("/_matrix/client/v3/account/3pid", Some(&alice.access_token))
        .await;
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.org");

    // A second sign-in (another browser, a new device) reaches the same user.
    let again = sso_login(&server, "oidc-main", "alice").await;
    assert_eq!(again.user_id, alice.user_id);
    assert_ne!(again.device_id, alice.device_id);

    // The generic redirect goes to a page to choose a provider.
    let choose = Browser::new()
        .get(&format!(
            "{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}",
            server.base,
            enc(CLIENT)
        ))
        .await;
    assert_eq!(choose.status, StatusCode::OK);
    assert!(
        choose
            .body
            .contains("/_matrix/client/v3/login/sso/redirect/oidc-main?redirectUrl="),
        "{}",
        choose.body
    );
}

/// An account that exists already is not taken over by a provider account
/// of the same name: the newcomer gets another localpart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_localpart_is_not_taken_over() {
    let (server, _idp) = sso_server(|_| {}).await;
    let carol = server.register("carol", "carols-password").await;
    let newcomer = sso_login(&server, "oidc-main", "carol").await;
    assert_eq!(newcomer.user_id, user_id("carol1"));
    assert_ne!(newcomer.user_id, carol.user_id);
    // ... unless the administrator allows linking existing users.
    let (server, _idp) = sso_server(|c| {
        c.sso.oidc_providers[0].allow_existing_users = true;
    })
    .await;
    let carol = server.register("carol", "carols-password").await;
    let linked = sso_login(&server, "oidc-main", "carol").await;
    assert_eq!(linked.user_id, carol.user_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_are_single_use_and_expire() {
    let (server, _idp) = sso_server(|c| c.sso.login_token_lifetime_secs = 1).await;
    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-main"), "dave")
        .await;
    let token = outcome.login_token();
    let (status, body) = token_login(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Replayed.
    let (status, body) = token_login(&server, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Expired: a token left longer than its lifetime.
    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-main"), "dave")
        .await;
    let token = outcome.login_token();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = token_login(&server, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

/// The callback needs the state of a sign-in this browser started: a changed
/// state, the right state in another browser (a callback URL sent to a
/// victim) and a replayed callback all complete nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_needs_its_state_and_its_browser() {
    let (server, _idp) = sso_server(|_| {}).await;
    let browser = Browser::stopping_at_callback();
    let at_callback = browser
        .sign_in(&redirect_url(&server, "oidc-main"), "erin")
        .await;
    let callback = at_callback
        .location
        .clone()
        .unwrap_or_else(|| panic!("{at_callback:?}"));
    assert!(
        callback.contains("code=") && callback.contains("state="),
        "{callback}"
    );

    let mut url = reqwest::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(&pairs);
    let wrong_state = browser.get(url.as_str()).await;
    assert_eq!(
        wrong_state.status,
        StatusCode::BAD_REQUEST,
        "{wrong_state:?}"
    );
    assert!(wrong_state.body.contains("unknown or has expired"));

    let other_browser = Browser::new().get(&callback).await;
    assert_eq!(other_browser.status, StatusCode::BAD_REQUEST);
    assert!(!user_exists(&server, "erin").await);

    // The browser that started it completes it, once.
    let done = browser.get(&callback).await;
    assert_eq!(done.status, StatusCode::FOUND, "{done:?}");
    let (status, body) = token_login(&server, &done.login_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replayed = browser.get(&callback).await;
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST, "{replayed:?}");
}

/// ID tokens that are not for this client, not from the issuer, expired,
/// from another sign-in, not signed by the provider's key, or unsigned, are
/// refused, and nobody is signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_id_tokens_are_refused() {
    let (server, _idp) = sso_server(|_| {}).await;
    for (mode, message) in TAMPERED {
        let outcome = Browser::new()
            .sign_in(&redirect_url(&server, &format!("oidc-{mode}")), "frank")
            .await;
        assert_eq!(outcome.status, StatusCode::FORBIDDEN, "{mode}: {outcome:?}");
        assert!(outcome.body.contains(message), "{mode}: {}", outcome.body);
        assert!(outcome.location.is_none(), "{mode}");
    }
    assert!(!user_exists(&server, "frank").await);
    // The same sign-in through the honest endpoint works.
    let frank = sso_login(&server, "oidc-main", "frank").await;
    assert_eq!(frank.user_id, user_id("frank"));
}

/// A provider whose discovery document names another issuer than the one
/// configured is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_mismatch_in_discovery_is_refused() {
    let (server, _idp) = sso_server(|_| {}).await;
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/login/sso/redirect/oidc-mixup?redirectUrl={}",
                enc(CLIENT)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("another issuer"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_go_only_to_allowed_clients() {
    let (server, _idp) = sso_server(|_| {}).await;
    for target in [
        "https://evil.example/",
        "https://app.test.invalid.evil.example/cb",
        "https://app.test.invalid@evil.example/cb",
        "https://evil.example/?next=https://app.test.invalid/",
        "http://app.test.invalid/cb",
        "javascript:alert(1)",
    ] {
        for path in [
            "/_matrix/client/v3/login/sso/redirect/oidc-main",
            "/_matrix/client/v3/login/sso/redirect",
        ] {
            let response = Browser::new()
                .http
                .get(format!("{}{path}?redirectUrl={}", server.base, enc(target)))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{target} {path}");
            assert!(response.headers().get(LOCATION).is_none());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["errcode"], "M_FORBIDDEN", "{target}");
        }
    }
    // This server's own login fallback page is always allowed.
    let response = Browser::new()
        .http
        .get(format!(
            "{}/_matrix/client/v3/login/sso/redirect/oidc-main?redirectUrl={}",
            server.base,
            enc(&format!(
                "{}/_matrix/static/client/login/?device_id=X",
                server.base
            ))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "followed to the provider"
    );
    assert!(response.url().as_str().starts_with("https://127.0.0.1:"));
    // An unknown provider.
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/login/sso/redirect/oidc-nope?redirectUrl={}",
                enc(CLIENT)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_requirements_allow_and_deny_by_claim() {
    let (server, _idp) = sso_server(|_| {}).await;
    // alice is in the staff group, bob is not.
    let alice = sso_login(&server, "oidc-staff", "alice").await;
    assert_eq!(alice.user_id, user_id("alice"));
    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-staff"), "bob")
        .await;
    assert_eq!(outcome.status, StatusCode::FORBIDDEN, "{outcome:?}");
    assert!(
        outcome.body.contains("not allowed to sign in"),
        "{}",
        outcome.body
    );
    assert!(!user_exists(&server, "bob").await);
}

/// An SSO user (no password) re-authenticates for UIA through the
/// `m.login.sso` fallback page; another user's sign-in does not complete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_users_delete_devices_through_the_sso_stage() {
    let (server, _idp) = sso_server(|_| {}).await;
    let alice_browser = Browser::new();
    let outcome = alice_browser
        .sign_in(&redirect_url(&server, "oidc-main"), "alice")
        .await;
    let (_, body) = token_login(&server, &outcome.login_token()).await;
    let alice = Login::from_json(&body);
    let second = sso_login(&server, "oidc-main", "alice").await;
    sso_login(&server, "oidc-main", "bob").await;

    let delete = json!({ "devices": [second.device_id] });
    let (status, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice.access_token),
            delete.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.sso"] }]));
    let session = body["session"].as_str().unwrap().to_owned();
    let page_url = format!(
        "{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={}",
        server.base,
        enc(&session)
    );

    // The page says what is being confirmed and links to the provider.
    let page = Browser::new().get(&page_url).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("remove devices"), "{}", page.body);
    let link = attribute_after(&page.body, "<a ", "href").unwrap();
    assert!(link.starts_with("?session="), "{link}");
    let start = format!("{page_url}&{}", &link[link.find("idp=").unwrap()..]);

    // Bob signing in on that page completes nothing.
    let bobs = Browser::new().sign_in(&start, "bob").await;
    assert_eq!(bobs.status, StatusCode::FORBIDDEN, "{bobs:?}");
    let (status, _) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice.access_token),
            json!({ "devices": [second.device_id], "auth": { "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Alice (still signed in at the provider in her browser) does.
    let done = alice_browser.sign_in(&start, "alice").await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert!(done.body.contains("authDone"), "{}", done.body);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice.access_token),
            json!({ "devices": [second.device_id], "auth": { "type": "m.login.sso", "session": session } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.whoami(&second.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A password user is offered the password, not SSO.
    let pat = server.register("pat", "pats-password").await;
    let (_, body) = server
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&pat.access_token),
            json!({ "devices": ["X"] }),
        )
        .await;
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap();
    let page = Browser::new()
        .get(&format!(
            "{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={}",
            server.base,
            enc(session)
        ))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_and_sets_external_ids() {
    let (server, idp) = sso_server(|_| {}).await;
    let admin = server.register("admin", "admin-password").await;
    lattice::storage::users::set_admin(&server.state.db, &admin.user_id, true)
        .await
        .unwrap();
    let alice = sso_login(&server, "oidc-main", "alice").await;
    let token = Some(admin.access_token.as_str());
    let (status, body) = server
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&alice.user_id)),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["external_ids"],
        json!([{ "auth_provider": "oidc-main", "external_id": "alice" }])
    );
    let (status, body) = server
        .get(
            "/_synapse/admin/v1/auth_providers/oidc-main/users/alice",
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], alice.user_id);
    let (status, _) = server
        .get(
            "/_synapse/admin/v1/auth_providers/oidc-main/users/nobody",
            token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Not for others.
    let (status, _) = server
        .get(
            "/_synapse/admin/v1/auth_providers/oidc-main/users/alice",
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // An administrator links an existing password user to a provider
    // account: that account's sign-in then reaches them.
    let grace = server.register("grace", "graces-password").await;
    let (status, body) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", enc(&grace.user_id)),
            token,
            json!({ "external_ids": [{ "auth_provider": "oidc-main", "external_id": "g.hopper" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let linked = sso_login(&server, "oidc-main", "g.hopper").await;
    assert_eq!(linked.user_id, grace.user_id);
    // One provider account is one user.
    let (status, _) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", enc(&admin.user_id)),
            token,
            json!({ "external_ids": [{ "auth_provider": "oidc-main", "external_id": "alice" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    drop(idp);
}

/// matrix-js-sdk's SSO helpers: `getSsoLoginUrl` for the browser, and the
/// token login the client makes with the `loginToken` it is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_signs_in_with_sso() {
    let (server, _idp) = sso_server(|_| {}).await;
    let url = crate::sdk::run_js(&server, "js_sso.mjs", &["url", CLIENT, "oidc-main"]).await;
    assert!(url.starts_with(&server.base), "{url}");
    let outcome = Browser::new().sign_in(&url, "heidi").await;
    let token = outcome.login_token();
    let out = crate::sdk::run_js(&server, "js_sso.mjs", &["login", &token]).await;
    assert_eq!(out, format!("ok {}", user_id("heidi")));
}

/// A provider that puts profile claims only at its userinfo endpoint: with
/// `user_profile_method = "userinfo_endpoint"` they are read there; without,
/// there is no username to make an account from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_the_userinfo_endpoint() {
    let (server, _idp) = sso_server(|_| {}).await;
    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-bare"), "ivan")
        .await;
    assert_eq!(outcome.status, StatusCode::FORBIDDEN, "{outcome:?}");
    assert!(
        outcome.body.contains("sent no username"),
        "{}",
        outcome.body
    );
    let alice = sso_login(&server, "oidc-userinfo", "alice").await;
    assert_eq!(alice.user_id, user_id("alice"));
    let (_, profile) = server
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(profile["displayname"], "Alice Liddell");
}

/// A deactivated account cannot sign in through SSO; with registration off
/// only linked accounts can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivated_accounts_and_closed_registration() {
    let (server, _idp) = sso_server(|c| {
        // "staff" (alice may pass its requirement) stops making accounts.
        c.sso.oidc_providers[1].enable_registration = false;
    })
    .await;
    let judy = sso_login(&server, "oidc-main", "judy").await;
    lattice::service::account::deactivate_user(
        &server.state,
        &ruma::UserId::parse(judy.user_id.as_str()).unwrap(),
        false,
        None,
        None,
    )
    .await
    .unwrap();
    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-main"), "judy")
        .await;
    assert_eq!(outcome.status, StatusCode::FORBIDDEN, "{outcome:?}");
    assert!(outcome.body.contains("deactivated"), "{}", outcome.body);

    let outcome = Browser::new()
        .sign_in(&redirect_url(&server, "oidc-staff"), "alice")
        .await;
    assert_eq!(outcome.status, StatusCode::FORBIDDEN, "{outcome:?}");
    assert!(
        outcome.body.contains("No account here is linked"),
        "{}",
        outcome.body
    );
    assert!(!user_exists(&server, "alice").await);
}

/// Runs `tests/sdk/browser_sso.mjs` (headless Chromium); returns its output.
async fn chromium(start_url: &str, login: &str, client_prefix: &str) -> String {
    chromium_with(start_url, login, client_prefix, "played").await
}

/// As [`chromium`]; with `client` "real", the client's page is not played by
/// the browser but loaded from the client (a callback server).
async fn chromium_with(start_url: &str, login: &str, client_prefix: &str, client: &str) -> String {
    let chromium = setup_script("browser-env");
    let node_dir = PathBuf::from(setup_script("node-env"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let copy = node_dir.join(format!("browser_sso.{}.{login}.mjs", std::process::id()));
    std::fs::copy(root.join("tests/sdk/browser_sso.mjs"), &copy).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&copy)
        .arg(&chromium)
        .arg(start_url)
        .arg(login)
        .arg(client_prefix)
        .arg(client)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "browser_sso.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The whole sign-in in a real browser: headless Chromium (Debian's,
/// `scripts/browser-env`) driven by playwright-core, typing into the
/// provider's pages; then the client's token login. And the same through
/// this server's login fallback page, which logs in by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_headless_chromium() {
    let (server, _idp) = sso_server(|_| {}).await;
    let stdout = chromium(
        &redirect_url(&server, "oidc-main"),
        "kim",
        "https://app.test.invalid/",
    )
    .await;
    let landed = Outcome {
        status: StatusCode::FOUND,
        location: Some(stdout),
        body: String::new(),
    };
    let (status, body) = token_login(&server, &landed.login_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("kim"));

    let said = chromium(
        &format!("{}/_matrix/static/client/login/", server.base),
        "lou",
        "fallback",
    )
    .await;
    assert_eq!(said, format!("You are logged in as {}.", user_id("lou")));
}

/// With one provider the generic redirect goes straight to it; without a
/// `redirectUrl` it is a client error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_needs_no_choice() {
    let (server, _idp) = sso_server(|c| c.sso.oidc_providers.truncate(1)).await;
    let outcome = Browser::new()
        .sign_in(
            &format!(
                "{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}",
                server.base,
                enc(CLIENT)
            ),
            "leo",
        )
        .await;
    assert_eq!(outcome.status, StatusCode::FOUND, "{outcome:?}");
    let (status, body) = token_login(&server, &outcome.login_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("leo"));

    let (status, body) = server
        .get("/_matrix/client/v3/login/sso/redirect/oidc-main", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errcode"].is_string(), "{body}");
}

/// The URL a matrix-rust-sdk client printed as `sso-url <url>`, checked to
/// be this server's SSO redirect (for `idp`, or the choice) back to
/// `callback`.
fn sdk_sso_url(line: &str, server: &TestServer, idp: Option<&str>, callback: &str) -> String {
    let url = line
        .strip_prefix("sso-url ")
        .unwrap_or_else(|| panic!("not an SSO URL: {line}"));
    let parsed = reqwest::Url::parse(url).unwrap();
    let path = match idp {
        Some(idp) => format!("/_matrix/client/v3/login/sso/redirect/{idp}"),
        None => "/_matrix/client/v3/login/sso/redirect".to_owned(),
    };
    assert!(url.starts_with(&format!("{}{path}?", server.base)), "{url}");
    let targets: Vec<String> = parsed
        .query_pairs()
        .filter(|(k, _)| k == "redirectUrl")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(targets, [callback], "{url}");
    url.to_owned()
}

/// A matrix-rust-sdk client's callback server, given a port: the URL it
/// listens at, which the server must allow.
fn sdk_callback(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// matrix-rust-sdk's SSO login as an application runs it
/// (`MatrixAuth::login_sso`, feature `sso-login`): the SDK reads the login
/// flows, starts its callback server on loopback, builds the redirect URL
/// for the provider, and a person signs in in headless Chromium, which the
/// server sends on to the SDK's callback server with the `loginToken`; the
/// SDK logs in with it, syncs, and sends a message. A second sign-in,
/// through the URL without a provider (the server's choice page), reaches
/// the same user on another device. The tokens both carried, replayed
/// through the SDK's `login_token`, and a forged one are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_signs_in_with_sso() {
    let port = free_port();
    let callback = sdk_callback(port);
    let allowed = callback.clone();
    let (server, _idp) = sso_server(|c| c.sso.client_allowlist.push(allowed)).await;
    let port = port.to_string();

    let mut first = RustSdkRun::start(&server, &["sso", "oidc-main", &port, "SSOFIRST"]).await;
    let url = sdk_sso_url(&first.line().await, &server, Some("oidc-main"), &callback);
    let landed = chromium_with(&url, "mona", &callback, "real").await;
    assert_eq!(
        first.outcome().await,
        format!("ok {} SSOFIRST", user_id("mona"))
    );
    let first_token = Outcome {
        status: StatusCode::FOUND,
        location: Some(landed),
        body: String::new(),
    }
    .login_token_for(&callback);

    // Without a provider: the server's page to choose one, then the sign-in
    // (in a browser that shows the test where it is sent, then goes there).
    let mut second = RustSdkRun::start(&server, &["sso", "-", &port, "SSOSECOND"]).await;
    let url = sdk_sso_url(&second.line().await, &server, None, &callback);
    let browser = Browser::stopping_at(&callback);
    let choose = browser.get(&url).await;
    assert_eq!(choose.status, StatusCode::OK, "{choose:?}");
    let marker = "/_matrix/client/v3/login/sso/redirect/oidc-main?redirectUrl=";
    let at = choose
        .body
        .find(marker)
        .unwrap_or_else(|| panic!("{}", choose.body));
    let end = at + choose.body[at..].find('"').unwrap();
    let link = choose.body[at..end].replace("&amp;", "&");
    let sent = browser
        .sign_in(&format!("{}{link}", server.base), "mona")
        .await;
    let second_token = sent.login_token_for(&callback);
    let delivered = browser.get(sent.location.as_deref().unwrap()).await;
    assert_eq!(delivered.status, StatusCode::OK, "{delivered:?}");
    assert_eq!(
        second.outcome().await,
        format!("ok {} SSOSECOND", user_id("mona"))
    );
    let devices = lattice::storage::devices::list(&server.state.db, &user_id("mona"))
        .await
        .unwrap();
    let mut ids: Vec<_> = devices.iter().map(|d| d.device_id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["SSOFIRST", "SSOSECOND"]);
    assert!(
        devices
            .iter()
            .all(|d| d.display_name.as_deref() == Some("rust-sdk sso")),
        "{devices:?}"
    );

    for token in [first_token.as_str(), second_token.as_str(), "forged-token"] {
        assert_eq!(
            rust_sdk_run(&server, &["token", token, "REPLAY"]).await,
            "refused M_FORBIDDEN",
            "{token}"
        );
    }
}

/// A `loginToken` that reaches matrix-rust-sdk's callback server after its
/// lifetime is refused through the SDK's login, and makes no device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rust_sdk_sso_with_an_expired_token_is_refused() {
    let port = free_port();
    let callback = sdk_callback(port);
    let allowed = callback.clone();
    let (server, _idp) = sso_server(|c| {
        c.sso.client_allowlist.push(allowed);
        c.sso.login_token_lifetime_secs = 1;
    })
    .await;
    let mut run =
        RustSdkRun::start(&server, &["sso", "oidc-main", &port.to_string(), "LATE"]).await;
    let url = sdk_sso_url(&run.line().await, &server, Some("oidc-main"), &callback);
    let browser = Browser::stopping_at(&callback);
    let sent = browser.sign_in(&url, "nick").await;
    sent.login_token_for(&callback);
    // The token's lifetime has to pass: there is no condition to wait on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser.get(sent.location.as_deref().unwrap()).await;
    assert_eq!(run.outcome().await, "refused M_FORBIDDEN");
    let devices = lattice::storage::devices::list(&server.state.db, &user_id("nick"))
        .await
        .unwrap();
    assert!(devices.is_empty(), "{devices:?}");
}
