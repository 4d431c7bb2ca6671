//! Single sign-on through upstream OpenID Connect providers (client-server
//! API, "SSO client login/authentication"), as an OpenID Connect relying party
//! using the authorization code flow (OpenID Connect Core 1.0 §3.1).
//!
//! 1. [`start`] (`/login/sso/redirect/{idpId}`, or the `m.login.sso` fallback
//!    page): fresh `state`, `nonce`, PKCE verifier and a browser secret; the
//!    sign-in is stored (state and secret as sha256) and the browser sent to
//!    the provider with the secret in a cookie.
//! 2. [`callback`] (`/_synapse/client/oidc/callback`): the sign-in is taken
//!    (once) by its state *and* the cookie, so a callback URL replayed in, or
//!    forged for, another browser completes nothing. The code is exchanged
//!    at the token endpoint (no network I/O holds a database connection), the
//!    ID token's signature checked against the provider's JWKS and its `iss`,
//!    `aud`, `exp`, `iat` and `nonce` checked ([`crate::domain::jwt`]).
//! 3. The subject (`sub`, or the configured claim) finds the linked user; a
//!    first sign-in creates one from the localpart template (or links an
//!    existing one, when allowed). A login then gets a single-use login token
//!    for `m.login.token`, sent to the client's allow-listed `redirectUrl`; a
//!    user-interactive authentication gets its `m.login.sso` stage completed.
//!
//! Every request to a provider goes through the outbound policy: federation's
//! ranges, plus the hosts of the provider's configured issuer and endpoints
//! (trusted because the administrator configured them, as appservices are).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::Url;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{
    config::{ClientAuthMethod, Config, OidcProvider, PkceMethod, UserProfileMethod},
    domain::{
        jwt::{self, JwkSet},
        localpart,
        sso::{self as rules, Template},
        token,
    },
    error::{Error, ErrorKind, Result},
    outbound::{self, OutboundClient, OutboundPolicy},
    service::AppState,
    storage::{self, now_ms, profiles, sso as store, users},
};

/// The callback path under `public_baseurl`, as Synapse's.
pub const CALLBACK_PATH: &str = "_synapse/client/oidc/callback";
/// The cookie that binds a sign-in to the browser that started it.
pub const COOKIE: &str = "lattice_oidc_session";
/// Where that cookie is sent: the callback only (under `public_baseurl`'s
/// path, which a reverse proxy may add).
fn cookie_path(state: &AppState) -> String {
    let base = state.config.public_baseurl();
    let prefix = Url::parse(&base)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".into());
    format!("{prefix}_synapse/client/oidc")
}

/// How long discovered metadata is kept before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Keys are fetched again for an unknown key ID at most this often.
const JWKS_REFRESH: Duration = Duration::from_secs(10);
/// Clock skew tolerated on ID token times.
const LEEWAY_SECS: i64 = 60;
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The configured providers, each with its HTTP client and caches.
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

pub struct Provider {
    pub config: OidcProvider,
    /// `oidc-<idp_id>`: the IdP ID clients see and the `auth_provider` of
    /// the users' external IDs.
    pub id: String,
    localpart: Template,
    display_name: Option<Template>,
    email: Option<Template>,
    http: OutboundClient,
    metadata: tokio::sync::Mutex<Option<(Metadata, Instant)>>,
    keys: tokio::sync::Mutex<Option<(Arc<JwkSet>, Instant)>>,
}

#[derive(Clone, Debug)]
struct Metadata {
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
    userinfo_endpoint: Option<Url>,
    pkce_s256: bool,
}

#[derive(Deserialize)]
struct Discovered {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
}

impl Providers {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let list = config
            .sso
            .oidc_providers
            .iter()
            .map(|p| Provider::new(config, p).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { list })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.id == id)
    }

    pub fn all(&self) -> &[Arc<Provider>] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Provider {
    fn new(config: &Config, p: &OidcProvider) -> anyhow::Result<Self> {
        let mut policy = OutboundPolicy::federation(config);
        for url in std::iter::once(&p.issuer)
            .chain(p.authorization_endpoint.as_ref())
            .chain(p.token_endpoint.as_ref())
            .chain(p.jwks_uri.as_ref())
            .chain(p.userinfo_endpoint.as_ref())
        {
            if let Some(host) = Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
            {
                policy = policy.trusting_host(&host);
            }
        }
        let http = OutboundClient::new(
            policy,
            &outbound::Options {
                connect_timeout: Duration::from_secs(10),
                timeout: Duration::from_secs(15),
                https_only: true,
                extra_ca_files: config.extra_ca_files(),
                accept_invalid_certs: false,
                user_agent: concat!("Lattice/", env!("CARGO_PKG_VERSION")).into(),
            },
        )?;
        let parse = |t: &str| Template::parse(t).map_err(|e| anyhow::anyhow!("{t:?}: {e}"));
        Ok(Self {
            id: p.id(),
            localpart: parse(&p.localpart_template)?,
            display_name: p.display_name_template.as_deref().map(parse).transpose()?,
            email: p.email_template.as_deref().map(parse).transpose()?,
            config: p.clone(),
            http,
            metadata: tokio::sync::Mutex::default(),
            keys: tokio::sync::Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        self.config
            .idp_name
            .as_deref()
            .unwrap_or(&self.config.idp_id)
    }

    /// The endpoints: discovered (and cached), with configured ones winning.
    async fn metadata(&self) -> Result<Metadata> {
        let mut cached = self.metadata.lock().await;
        if let Some((m, at)) = &*cached
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let c = &self.config;
        let configured = |u: &Option<String>| u.as_deref().and_then(|u| Url::parse(u).ok());
        let discovered = if c.discover {
            let url = format!(
                "{}/.well-known/openid-configuration",
                c.issuer.trim_end_matches('/')
            );
            let doc: Discovered = self.get_json(&url).await?;
            // OpenID Connect Discovery §4.3: the issuer in the document must be
            // the one it was fetched for, exactly.
            if doc.issuer != c.issuer {
                tracing::warn!(idp = %self.id, found = %doc.issuer, "discovery: issuer mismatch");
                return Err(provider_error(
                    "The identity provider's metadata names another issuer",
                ));
            }
            Some(doc)
        } else {
            None
        };
        let endpoint = |configured: Option<Url>, found: Option<&String>| -> Result<Url> {
            configured
                .or_else(|| found.and_then(|u| Url::parse(u).ok()))
                .filter(|u| u.scheme() == "https")
                .ok_or_else(|| provider_error("The identity provider's metadata lacks an endpoint"))
        };
        let d = discovered.as_ref();
        let metadata = Metadata {
            authorization_endpoint: endpoint(
                configured(&c.authorization_endpoint),
                d.and_then(|d| d.authorization_endpoint.as_ref()),
            )?,
            token_endpoint: endpoint(
                configured(&c.token_endpoint),
                d.and_then(|d| d.token_endpoint.as_ref()),
            )?,
            jwks_uri: endpoint(configured(&c.jwks_uri), d.and_then(|d| d.jwks_uri.as_ref()))?,
            userinfo_endpoint: match c.user_profile_method {
                UserProfileMethod::Auto => None,
                UserProfileMethod::UserinfoEndpoint => Some(endpoint(
                    configured(&c.userinfo_endpoint),
                    d.and_then(|d| d.userinfo_endpoint.as_ref()),
                )?),
            },
            pkce_s256: match c.pkce_method {
                PkceMethod::Always => true,
                PkceMethod::Never => false,
                PkceMethod::Auto => d.is_some_and(|d| {
                    d.code_challenge_methods_supported
                        .iter()
                        .any(|m| m == "S256")
                }),
            },
        };
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    /// The provider's keys: cached; fetched again when `refresh` and the last
    /// fetch is older than [`JWKS_REFRESH`] (a rotated key).
    async fn keys(&self, jwks_uri: &Url, refresh: bool) -> Result<Arc<JwkSet>> {
        let mut cached = self.keys.lock().await;
        if let Some((keys, at)) = &*cached
            && (!refresh || at.elapsed() < JWKS_REFRESH)
        {
            return Ok(keys.clone());
        }
        let keys: Arc<JwkSet> = Arc::new(self.get_json(jwks_uri.as_str()).await?);
        *cached = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T> {
        let url = Url::parse(url).map_err(|_| provider_error("Invalid provider URL"))?;
        let request = reqwest::Request::new(http::Method::GET, url);
        let response = self.http.send(request).await.map_err(|e| {
            tracing::warn!(idp = %self.id, error = %e, "identity provider unreachable");
            provider_error("The identity provider could not be reached")
        })?;
        self.read_json(response).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T> {
        let status = response.status();
        let body = outbound::read_limited(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                tracing::warn!(idp = %self.id, error = %e, "identity provider answer unreadable");
                provider_error("The identity provider's answer could not be read")
            })?;
        if !status.is_success() {
            tracing::warn!(idp = %self.id, %status, body = %String::from_utf8_lossy(&body[..body.len().min(500)]), "identity provider refused");
            return Err(provider_error("The identity provider refused the request"));
        }
        serde_json::from_slice(&body).map_err(|e| {
            tracing::warn!(idp = %self.id, error = %e, "identity provider answer is not the expected JSON");
            provider_error("The identity provider's answer was not understood")
        })
    }

    /// Exchanges an authorization code at the token endpoint; returns the ID
    /// token and the access token.
    async fn exchange(
        &self,
        metadata: &Metadata,
        redirect_uri: &str,
        code: &str,
        code_verifier: Option<&str>,
    ) -> Result<TokenAnswer> {
        let c = &self.config;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(v) = code_verifier {
            form.push(("code_verifier", v));
        }
        let mut request =
            reqwest::Request::new(http::Method::POST, metadata.token_endpoint.clone());
        let secret = c.client_secret.as_deref().unwrap_or_default();
        match c.client_auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both form-encoded, then Basic.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(&c.client_id),
                    enc(secret)
                ));
                request.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(&format!("Basic {basic}"))
                        .map_err(|e| anyhow::anyhow!("authorization header: {e}"))?,
                );
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", &c.client_id));
                form.push(("client_secret", secret));
            }
            ClientAuthMethod::None => {
                form.push(("client_id", &c.client_id));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        *request.body_mut() = Some(body.into());
        let response = self.http.send(request).await.map_err(|e| {
            tracing::warn!(idp = %self.id, error = %e, "token endpoint unreachable");
            provider_error("The identity provider could not be reached")
        })?;
        let answer: TokenAnswer = self.read_json(response).await?;
        if answer.id_token.is_none() {
            return Err(provider_error("The identity provider sent no ID token"));
        }
        Ok(answer)
    }

    /// The userinfo endpoint's claims (OpenID Connect Core §5.3), which must
    /// be about the ID token's subject (§5.3.2).
    async fn userinfo(
        &self,
        endpoint: &Url,
        access_token: &str,
        subject: &str,
    ) -> Result<Map<String, Value>> {
        let mut request = reqwest::Request::new(http::Method::GET, endpoint.clone());
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
                provider_error("The identity provider sent an unusable access token")
            })?,
        );
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let response = self.http.send(request).await.map_err(|e| {
            tracing::warn!(idp = %self.id, error = %e, "userinfo endpoint unreachable");
            provider_error("The identity provider could not be reached")
        })?;
        let claims: Map<String, Value> = self.read_json(response).await?;
        if claims.get("sub").and_then(Value::as_str) != Some(subject) {
            tracing::warn!(idp = %self.id, "userinfo about another subject");
            return Err(Error::forbidden(
                "The identity provider's user information is about someone else",
            ));
        }
        Ok(claims)
    }

    /// Checks an ID token: signature against the provider's keys (fetched
    /// again once for an unknown key), then the claims.
    async fn verify(
        &self,
        metadata: &Metadata,
        id_token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>> {
        let refused = |e: jwt::JwtError| {
            tracing::warn!(idp = %self.id, error = %e, "ID token refused");
            Error::forbidden(format!("The sign-in could not be verified: {e}"))
        };
        let token = jwt::Token::parse(id_token).map_err(refused)?;
        let mut keys = self.keys(&metadata.jwks_uri, false).await?;
        if !token.has_key(&keys) {
            keys = self.keys(&metadata.jwks_uri, true).await?;
        }
        let expected = jwt::Expected {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            nonce,
            now: now_ms() / 1000,
            leeway: LEEWAY_SECS,
        };
        token.verify(&keys, &expected).map_err(refused)
    }
}

/// The token endpoint's answer (the parts used).
#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
}

fn provider_error(message: &str) -> Error {
    Error::new(ErrorKind::BadGateway, message)
}

/// What a sign-in is for.
pub enum Purpose {
    /// `m.login.sso`: the browser goes back to this (allow-listed) URL with a
    /// login token.
    Login { redirect_url: String },
    /// The `m.login.sso` stage of this UIA session.
    Uia { session: String },
}

/// Where to send the browser, and the cookie to set on the way.
pub struct Started {
    pub location: String,
    pub cookie: String,
}

/// The redirect URI registered at the provider.
pub fn callback_url(state: &AppState) -> String {
    format!("{}{CALLBACK_PATH}", state.config.public_baseurl())
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// This server's login fallback page, always an allowed `redirectUrl` (the
/// spec: "the homeserver's own login fallback implementation could be
/// excluded").
pub fn login_fallback_url(state: &AppState) -> String {
    format!(
        "{}_matrix/static/client/login",
        state.config.public_baseurl()
    )
}

/// Whether the browser may be sent to `redirect_url` with a login token: an
/// entry of `sso.client_allowlist`, or this server's login fallback page.
pub fn redirect_allowed(state: &AppState, redirect_url: &str) -> bool {
    rules::redirect_allowed(&state.config.sso.client_allowlist, redirect_url)
        || rules::redirect_allowed(&[login_fallback_url(state)], redirect_url)
}

/// Starts a sign-in at `provider` (step 1).
pub async fn start(state: &AppState, provider: &Provider, purpose: Purpose) -> Result<Started> {
    if let Purpose::Login { redirect_url } = &purpose
        && !redirect_allowed(state, redirect_url)
    {
        // No login token is ever sent where the administrator did not allow.
        return Err(Error::forbidden(
            "This redirectUrl is not an allowed client of this server",
        ));
    }
    let metadata = provider.metadata().await?;
    let sign_in_state = token::random_string(32);
    let browser = token::random_string(32);
    let nonce = token::random_string(32);
    let code_verifier = metadata.pkce_s256.then(|| token::random_string(64));
    let (redirect_url, uia_session) = match purpose {
        Purpose::Login { redirect_url } => (Some(redirect_url), None),
        Purpose::Uia { session } => (None, Some(session)),
    };
    store::insert_session(
        &state.db,
        &hash(&sign_in_state),
        &hash(&browser),
        &store::PendingSignIn {
            idp_id: provider.id.clone(),
            nonce: nonce.clone(),
            code_verifier: code_verifier.clone(),
            redirect_url,
            uia_session,
            created_ts: state.clock.now_ms(),
        },
    )
    .await?;
    let mut location = metadata.authorization_endpoint.clone();
    {
        let mut q = location.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &provider.config.client_id)
            .append_pair("redirect_uri", &callback_url(state))
            .append_pair("scope", &provider.config.scopes.join(" "))
            .append_pair("state", &sign_in_state)
            .append_pair("nonce", &nonce);
        if let Some(verifier) = &code_verifier {
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            q.append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
        }
    }
    let secure = if state.config.public_baseurl().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={browser}; Path={}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        cookie_path(state),
        state.config.sso.session_lifetime_secs
    );
    tracing::info!(idp = %provider.id, "SSO sign-in started");
    Ok(Started {
        location: location.to_string(),
        cookie,
    })
}

/// The cookie that forgets the sign-in (set on every callback answer).
pub fn clear_cookie(state: &AppState) -> String {
    format!(
        "{COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax",
        cookie_path(state)
    )
}

/// The provider's answer, as the callback's query carries it.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    /// RFC 9207: the issuer that answered (a mix-up defence).
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What a completed sign-in leads to.
pub enum Completed {
    /// Send the browser here (the client's URL with its `loginToken`).
    Login { redirect: String },
    /// The UIA stage is done: show the page that tells the client.
    Uia,
}

/// Handles the provider's redirect back (steps 2 and 3). The flag tells
/// whether a sign-in of this browser was taken (its cookie can then go): a
/// callback that matched none leaves the browser's sign-in in progress, so a
/// forged callback URL opened in a victim's browser cannot cancel it.
pub async fn callback(
    state: &AppState,
    params: CallbackParams,
    browser: Option<&str>,
) -> (Result<Completed>, bool) {
    let Some(pending) = (match take(state, &params, browser).await {
        Ok(p) => p,
        Err(e) => return (Err(e), false),
    }) else {
        return (Err(unknown_sign_in()), false);
    };
    (complete(state, params, pending).await, true)
}

fn unknown_sign_in() -> Error {
    Error::new(
        ErrorKind::BadRequest,
        "This sign-in is unknown or has expired, or was started in another browser. Start again from your Matrix client.",
    )
}

/// The sign-in of this state and browser, taken (once).
async fn take(
    state: &AppState,
    params: &CallbackParams,
    browser: Option<&str>,
) -> Result<Option<store::PendingSignIn>> {
    let (Some(sign_in_state), Some(browser)) = (params.state.as_deref(), browser) else {
        return Ok(None);
    };
    Ok(store::take_session(&state.db, &hash(sign_in_state), &hash(browser)).await?)
}

async fn complete(
    state: &AppState,
    params: CallbackParams,
    pending: store::PendingSignIn,
) -> Result<Completed> {
    let unknown = unknown_sign_in;
    let lifetime_ms = state.config.sso.session_lifetime_secs as i64 * 1000;
    if pending.created_ts + lifetime_ms < state.clock.now_ms() {
        return Err(unknown());
    }
    let provider = state
        .sso
        .get(&pending.idp_id)
        .cloned()
        .ok_or_else(|| Error::forbidden("This identity provider is no longer configured"))?;
    if let Some(error) = &params.error {
        tracing::info!(idp = %provider.id, %error, description = ?params.error_description, "the identity provider refused the sign-in");
        let detail = params.error_description.as_deref().unwrap_or(error);
        return Err(Error::forbidden(format!(
            "The identity provider did not sign you in: {detail}"
        )));
    }
    if let Some(iss) = &params.iss
        && *iss != provider.config.issuer
    {
        tracing::warn!(idp = %provider.id, %iss, "callback from another issuer");
        return Err(Error::forbidden(
            "The answer came from another identity provider",
        ));
    }
    let code = params
        .code
        .as_deref()
        .ok_or_else(|| Error::new(ErrorKind::BadRequest, "The identity provider sent no code"))?;
    let metadata = provider.metadata().await?;
    let tokens = provider
        .exchange(
            &metadata,
            &callback_url(state),
            code,
            pending.code_verifier.as_deref(),
        )
        .await?;
    let id_token = tokens.id_token.as_deref().unwrap_or_default();
    let mut claims = provider.verify(&metadata, id_token, &pending.nonce).await?;
    if let Some(endpoint) = &metadata.userinfo_endpoint {
        let access_token = tokens
            .access_token
            .as_deref()
            .ok_or_else(|| provider_error("The identity provider sent no access token"))?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // The ID token's claims, with the userinfo endpoint's over them.
        claims.extend(provider.userinfo(endpoint, access_token, &sub).await?);
    }
    let subject = rules::claim_text(&claims, &[provider.config.subject_claim.as_str()])
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::forbidden("The identity provider sent no subject"))?;
    if !rules::meets_requirements(&claims, &provider.config.attribute_requirements) {
        tracing::info!(idp = %provider.id, %subject, "SSO sign-in refused by attribute_requirements");
        return Err(Error::forbidden(
            "Your account at the identity provider is not allowed to sign in here",
        ));
    }
    match (pending.redirect_url, pending.uia_session) {
        (Some(redirect_url), _) => {
            let (user_id, login_token) = sign_in(state, &provider, &subject, &claims).await?;
            let redirect = rules::with_login_token(&redirect_url, &login_token)
                .ok_or_else(|| anyhow::anyhow!("stored redirect URL no longer parses"))?;
            tracing::info!(idp = %provider.id, user_id = %user_id, "SSO login");
            Ok(Completed::Login { redirect })
        }
        (None, Some(session)) => {
            let user = store::user_for(&state.db, &provider.id, &subject)
                .await?
                .ok_or_else(|| {
                    Error::forbidden("This account at the identity provider is not linked to yours")
                })?;
            let user_id =
                UserId::parse(user).map_err(|e| anyhow::anyhow!("stored user id: {e}"))?;
            super::uia::complete_sso(state, &session, &user_id).await?;
            tracing::info!(idp = %provider.id, user_id = %user_id, "SSO re-authentication");
            Ok(Completed::Uia)
        }
        (None, None) => Err(anyhow::anyhow!("a sign-in with no purpose").into()),
    }
}

/// Finds (or creates, or links) the user for `subject` and issues a login
/// token for it, in one transaction.
async fn sign_in(
    state: &AppState,
    provider: &Provider,
    subject: &str,
    claims: &Map<String, Value>,
) -> Result<(OwnedUserId, String)> {
    // Two first sign-ins of one subject at once: the second's link fails on
    // the first's row, and it runs again to find that user.
    for _ in 0..2 {
        let mut tx = state.db.begin().await?;
        let user_id = match store::user_for(&mut *tx, &provider.id, subject).await? {
            Some(user) => user,
            None => match first_sign_in(state, &mut tx, provider, subject, claims).await? {
                Some(user) => user,
                None => continue,
            },
        };
        let user = users::get(&mut *tx, &user_id).await?;
        if user.is_none_or(|u| u.deactivated) {
            return Err(Error::new(
                ErrorKind::UserDeactivated,
                "This account has been deactivated",
            ));
        }
        let login_token = token::random_string(43);
        let now = state.clock.now_ms();
        let lifetime = state.config.sso.login_token_lifetime_secs as i64 * 1000;
        storage::login_tokens::insert(
            &mut *tx,
            &token::hash(&login_token),
            &user_id,
            now + lifetime,
            now,
        )
        .await?;
        tx.commit().await?;
        let user_id = UserId::parse(user_id).map_err(|e| anyhow::anyhow!("stored user id: {e}"))?;
        return Ok((user_id, login_token));
    }
    Err(anyhow::anyhow!("could not link an SSO subject").into())
}

/// Attempts at a free localpart (`alice`, `alice1`, …) before giving up.
const LOCALPART_ATTEMPTS: usize = 100;

/// A subject seen for the first time: a new user from the templates, or (with
/// `allow_existing_users`) the existing user of that localpart. `None` when
/// another request linked the subject meanwhile.
async fn first_sign_in(
    state: &AppState,
    tx: &mut storage::Transaction<'_, storage::Postgres>,
    provider: &Provider,
    subject: &str,
    claims: &Map<String, Value>,
) -> Result<Option<String>> {
    let config = &provider.config;
    let base = rules::map_to_localpart(&provider.localpart.render(claims));
    if base.is_empty() {
        return Err(Error::forbidden(
            "The identity provider sent no username for this server to use",
        ));
    }
    if !config.enable_registration && !config.allow_existing_users {
        return Err(Error::forbidden(
            "No account here is linked to your account at the identity provider",
        ));
    }
    let now = state.clock.now_ms();
    for attempt in 0..LOCALPART_ATTEMPTS {
        let candidate = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}{attempt}")
        };
        let user_id = localpart::new_user_id(&candidate, &state.server_name)
            .map_err(|e| Error::forbidden(format!("No user ID can be made for you: {e}")))?;
        if super::appservice::check_user_not_claimed(state, &user_id, None).is_err() {
            continue;
        }
        if users::exists(&mut **tx, user_id.as_str()).await? {
            if attempt == 0 && config.allow_existing_users {
                if !store::link(&mut **tx, &provider.id, subject, user_id.as_str(), now).await? {
                    return Ok(None);
                }
                tracing::info!(idp = %provider.id, user_id = %user_id, "SSO subject linked to an existing user");
                return Ok(Some(user_id.to_string()));
            }
            continue;
        }
        if !config.enable_registration {
            break;
        }
        if !users::insert(&mut **tx, user_id.as_str(), None, false, false, now).await? {
            continue;
        }
        if !store::link(&mut **tx, &provider.id, subject, user_id.as_str(), now).await? {
            return Ok(None);
        }
        let display_name = provider
            .display_name
            .as_ref()
            .map(|t| t.render(claims))
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| user_id.localpart().to_owned());
        profiles::set_displayname(&mut **tx, user_id.as_str(), Some(&display_name)).await?;
        if let Some(address) = provider
            .email
            .as_ref()
            .map(|t| t.render(claims))
            .and_then(|a| crate::domain::threepid::canonical_email(&a))
            && crate::storage::threepids::owner(&mut **tx, crate::domain::threepid::EMAIL, &address)
                .await?
                .is_none()
        {
            super::threepid::bind(tx, &user_id, &address, now).await?;
        }
        tracing::info!(idp = %provider.id, user_id = %user_id, "user created by SSO");
        return Ok(Some(user_id.to_string()));
    }
    Err(Error::forbidden(
        "No account here is linked to your account at the identity provider, and none can be made",
    ))
}

/// The providers still configured at which `user_id` has an external ID.
pub async fn providers_of(state: &AppState, user_id: &UserId) -> Result<Vec<Arc<Provider>>> {
    if state.sso.is_empty() {
        return Ok(Vec::new());
    }
    let ids = store::list_for_user(&state.db, user_id.as_str()).await?;
    Ok(state
        .sso
        .all()
        .iter()
        .filter(|p| ids.iter().any(|e| e.auth_provider == p.id))
        .cloned()
        .collect())
}

/// Deletes sign-ins that were never completed. Run periodically.
pub async fn purge_expired(state: &AppState) -> Result<()> {
    let cutoff = state.clock.now_ms() - state.config.sso.session_lifetime_secs as i64 * 1000;
    store::delete_sessions_before(&state.db, cutoff).await?;
    Ok(())
}
