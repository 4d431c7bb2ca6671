//! Configuration: a TOML file (see `config/lattice.example.toml`) overridden by
//! environment variables named `LATTICE__SECTION__KEY` (for example
//! `LATTICE__DATABASE__URL`, `LATTICE__SERVER_NAME`).
//!
//! Every field has a default, so Lattice starts with no file at all: it then serves
//! `localhost` on port 8008 with its own embedded PostgreSQL under `./data`, and
//! registration closed.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ruma::{OwnedServerName, RoomVersionId, ServerName};
use serde::{Deserialize, Serialize};

/// The whole configuration. Sections mirror `config/lattice.example.toml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The domain part of user IDs (`@alice:server_name`). Cannot change after the
    /// first start.
    pub server_name: String,
    /// The URL clients reach this server at, advertised in `.well-known/matrix/client`.
    pub public_baseurl: Option<String>,
    /// Where federation traffic for `server_name` should go, advertised in
    /// `.well-known/matrix/server` (for example `matrix.example.org:443`).
    pub federation_delegate: Option<String>,
    /// Directory for the embedded database, media and keys.
    pub data_dir: PathBuf,
    /// Log filter in `tracing` syntax (`info`, `lattice=debug,sqlx=warn`, ...).
    pub log: String,
    /// Reverse proxies (CIDR ranges) whose `X-Forwarded-For` is believed: the
    /// client address is the right-most one not in these ranges. Empty: the
    /// peer address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Application service registration files (YAML), loaded at start.
    pub appservices: Vec<PathBuf>,
    /// Also send the `hs_token` to appservices as the `access_token` query
    /// parameter (the spec's way before v1.4), for frameworks that read only
    /// that (matrix-bot-sdk before 0.7). Off: the `Authorization` header only.
    pub appservice_legacy_authorization: bool,
    pub listeners: Vec<Listener>,
    pub database: Database,
    pub registration: Registration,
    pub auth: Auth,
    pub rate_limits: RateLimits,
    pub limits: Limits,
    pub rooms: Rooms,
    pub server_notices: ServerNotices,
    pub media: Media,
    pub outbound: Outbound,
    pub federation: Federation,
    pub identity: Identity,
    pub support: Support,
    pub turn: Turn,
    pub presence: Presence,
    pub email: Email,
    pub sso: Sso,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address and port to bind, for example `0.0.0.0:8008` or `[::]:8008`.
    pub bind: SocketAddr,
    /// What this listener serves: `client` (Client-Server API and admin API) and/or
    /// `federation` (Server-Server API).
    #[serde(default = "default_resources")]
    pub resources: Vec<Resource>,
    /// PEM certificate chain: serve TLS on this listener. Unset: plain HTTP (a
    /// reverse proxy in front terminates TLS).
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate`.
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Client,
    Federation,
    /// Prometheus `/metrics`: give it a listener of its own, not exposed publicly.
    Metrics,
}

fn default_resources() -> Vec<Resource> {
    vec![Resource::Client, Resource::Federation]
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `postgres://user:password@host:port/dbname`. Unset: Lattice runs its own
    /// PostgreSQL cluster under `<data_dir>/postgres`.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How long to keep retrying while the database is not reachable at start.
    pub startup_timeout_secs: u64,
    /// The unprivileged OS user that runs the embedded cluster when Lattice is
    /// started as root (PostgreSQL refuses to run as root).
    pub embedded_os_user: String,
}

impl fmt::Debug for Database {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field("startup_timeout_secs", &self.startup_timeout_secs)
            .field("embedded_os_user", &self.embedded_os_user)
            .finish()
    }
}

impl Default for Database {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            startup_timeout_secs: 120,
            embedded_os_user: "postgres".into(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// Anyone may register (`m.login.dummy`). Off by default.
    pub open: bool,
    /// Registration with a token (`m.login.registration_token`); tokens are created
    /// with `lattice admin registration-token create`.
    pub tokens: bool,
    /// Shared secret for `/_synapse/admin/v1/register` (HMAC-SHA1, as Synapse).
    /// Empty or unset: that endpoint is disabled.
    pub shared_secret: Option<String>,
    /// Allow `kind=guest` registration.
    pub guests: bool,
    /// Every registration must validate an email address
    /// (`m.login.email.identity`); needs `[email]`. Without it, an email
    /// address is optional where registration is offered.
    pub require_email: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("open", &self.open)
            .field("tokens", &self.tokens)
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("guests", &self.guests)
            .field("require_email", &self.require_email)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Lifetime of access tokens issued together with a refresh token.
    pub refreshable_token_lifetime_secs: u64,
    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
    /// Lifetime of a user-interactive authentication session.
    pub uia_session_lifetime_secs: u64,
    /// `POST /login/get_token` (MSC3882): a logged-in user, after entering
    /// the password again, gets a single-use `m.login.token` for another
    /// device (QR login). Off by default, as on Synapse.
    pub login_via_existing_session: bool,
    /// How long such a token is valid.
    pub login_token_lifetime_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            refreshable_token_lifetime_secs: 300,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            uia_session_lifetime_secs: 900,
            login_via_existing_session: false,
            login_token_lifetime_secs: 120,
        }
    }
}

/// Token-bucket rate limits. `per_second` is the refill rate, `burst` the bucket size.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Switch every limit off (benchmarks, trusted test setups).
    pub enabled: bool,
    /// Endpoints the spec marks rate-limited, keyed by user (or by IP when
    /// unauthenticated).
    pub client: Bucket,
    /// Login and registration attempts, keyed by IP.
    pub login: Bucket,
    /// Password checks (login and every user-interactive re-authentication),
    /// keyed by user and, separately, by IP. A correct password gives its token
    /// back, so only failed guesses drain the bucket.
    pub password: Bucket,
    /// Mails asking to validate an address (every `requestToken`), keyed by
    /// the address.
    pub email_address: Bucket,
    /// The same, keyed by the client's IP.
    pub email_ip: Bucket,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            client: Bucket {
                per_second: 10.0,
                burst: 50,
            },
            login: Bucket {
                per_second: 0.5,
                burst: 10,
            },
            // Synapse's `rc_login.failed_attempts`.
            password: Bucket {
                per_second: 0.17,
                burst: 3,
            },
            // Synapse's `rc_3pid_validation`: a few mails, then one per ~5 min.
            email_address: Bucket {
                per_second: 0.003,
                burst: 5,
            },
            email_ip: Bucket {
                per_second: 0.01,
                burst: 10,
            },
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted on JSON endpoints.
    pub max_request_body_bytes: usize,
    /// A connection that has not sent a whole request head this long after it
    /// opened, or after its previous response, is closed (slowloris).
    pub header_read_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rooms {
    /// Room version for new rooms.
    pub default_version: String,
}

impl Default for Rooms {
    fn default() -> Self {
        Self {
            default_version: "12".into(),
        }
    }
}

/// Server notices (admin API `send_server_notice`): messages from a system user
/// in a room of its own with each recipient.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerNotices {
    /// Localpart of the system user that sends notices; empty: notices off.
    pub localpart: String,
    /// The system user's display name.
    pub display_name: String,
    /// Name of the notices room.
    pub room_name: String,
}

impl Default for ServerNotices {
    fn default() -> Self {
        Self {
            localpart: String::new(),
            display_name: "Server Notices".into(),
            room_name: "Server Notices".into(),
        }
    }
}

/// Presence (online, unavailable, offline and status messages).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presence {
    /// Track and share presence. Off (as Synapse's `presence.enabled: false`):
    /// `PUT /presence/{userId}/status` and `set_presence` are accepted and
    /// ignored, `GET` answers `offline`, `/sync` carries none, and no
    /// `m.presence` EDU is sent or taken in.
    pub enabled: bool,
}

impl Default for Presence {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// TURN servers for VoIP calls, handed out by `/voip/turnServer` with
/// short-lived credentials from a secret shared with the TURN server (coturn's
/// `use-auth-secret` / `static-auth-secret`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Turn {
    /// `turn:` / `turns:` URIs clients are given. Empty: no TURN server.
    pub uris: Vec<String>,
    /// coturn's `static-auth-secret`. Unset: no TURN server.
    pub shared_secret: Option<String>,
    /// How long the credentials handed out stay valid, in seconds.
    pub user_lifetime_secs: u64,
    /// Whether guests get credentials too.
    pub allow_guests: bool,
}

impl Default for Turn {
    fn default() -> Self {
        Self {
            uris: Vec::new(),
            shared_secret: None,
            user_lifetime_secs: 3600,
            allow_guests: true,
        }
    }
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("uris", &self.uris)
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("user_lifetime_secs", &self.user_lifetime_secs)
            .field("allow_guests", &self.allow_guests)
            .finish()
    }
}

/// Outgoing email (SMTP): validation mails for registration, password reset
/// and adding an address to an account. Off while `smtp_host` is empty.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Email {
    /// The SMTP server (a relay or submission server). Empty: no email.
    pub smtp_host: String,
    /// 587 for STARTTLS submission, 465 for implicit TLS.
    pub smtp_port: u16,
    /// `starttls` (upgrade required, never sent in clear), `tls` (implicit
    /// TLS from the first byte) or `off` (plain: meant for a relay on loopback; the host is not checked).
    pub tls: SmtpTls,
    /// Credentials for SMTP AUTH; unset: no authentication.
    pub smtp_user: Option<String>,
    pub smtp_pass: Option<String>,
    /// The From header, `Name <address>` or a bare address.
    pub from: String,
    /// Named in the mails (Synapse's `app_name`).
    pub app_name: String,
    /// How long a mailed token (and its link) stays valid.
    pub token_lifetime_secs: u64,
    /// How long a validated address may still be used (to register, reset the
    /// password or add it to an account) after its session started.
    pub session_lifetime_secs: u64,
    /// Time limit for one conversation with the SMTP server.
    pub timeout_secs: u64,
    /// A directory with `register.txt`, `password_reset.txt` and
    /// `add_threepid.txt` replacing the built-in mails (first line `Subject:
    /// …`, a blank line, then the body). Unset: the built-in ones.
    pub template_dir: Option<PathBuf>,
    /// Answer requestToken for an address that is taken (registration,
    /// adding) or unknown (password reset) as if it were not, sending no mail.
    /// Off: `M_THREEPID_IN_USE` / `M_THREEPID_NOT_FOUND`, as Synapse answers
    /// by default.
    pub inhibit_3pid_errors: bool,
    /// Hosts a requestToken's `next_link` may point to (where the user lands
    /// after validating). Empty: any http(s) URL.
    pub next_link_domain_allowlist: Vec<String>,
    /// Email pushers (notifications by mail, as Synapse's `notif_delay`): a
    /// notification still unread this long after it arrived is mailed.
    pub notif_delay_secs: u64,
    /// The least time between two notification mails to one address; the
    /// notifications meanwhile wait for the next mail.
    pub notif_throttle_secs: u64,
    /// The client the notification mails link to: `https://matrix.to` links
    /// as `https://matrix.to/#/!room:server`, any other as Element Web's
    /// `{client_base_url}/#/room/!room:server` (Synapse's `client_base_url`).
    pub client_base_url: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    Off,
}

impl Default for Email {
    fn default() -> Self {
        Self {
            smtp_host: String::new(),
            smtp_port: 587,
            tls: SmtpTls::Starttls,
            smtp_user: None,
            smtp_pass: None,
            from: String::new(),
            app_name: "Matrix".into(),
            token_lifetime_secs: 3600,
            session_lifetime_secs: 86400,
            timeout_secs: 30,
            template_dir: None,
            inhibit_3pid_errors: false,
            next_link_domain_allowlist: Vec::new(),
            notif_delay_secs: 600,
            notif_throttle_secs: 3600,
            client_base_url: "https://matrix.to".into(),
        }
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("smtp_user", &self.smtp_user)
            .field("smtp_pass", &self.smtp_pass.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("app_name", &self.app_name)
            .field("token_lifetime_secs", &self.token_lifetime_secs)
            .field("session_lifetime_secs", &self.session_lifetime_secs)
            .field("timeout_secs", &self.timeout_secs)
            .field("template_dir", &self.template_dir)
            .field("inhibit_3pid_errors", &self.inhibit_3pid_errors)
            .field(
                "next_link_domain_allowlist",
                &self.next_link_domain_allowlist,
            )
            .field("notif_delay_secs", &self.notif_delay_secs)
            .field("notif_throttle_secs", &self.notif_throttle_secs)
            .field("client_base_url", &self.client_base_url)
            .finish()
    }
}

impl Email {
    /// Whether mail can be sent (and so the email features are offered).
    pub fn enabled(&self) -> bool {
        !self.smtp_host.is_empty()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if self.from.is_empty() {
            bail!("`email.from` is needed when `email.smtp_host` is set");
        }
        if self.smtp_user.is_some() != self.smtp_pass.is_some() {
            bail!("`email.smtp_user` and `email.smtp_pass` go together");
        }
        if self.token_lifetime_secs == 0
            || self.session_lifetime_secs == 0
            || self.timeout_secs == 0
        {
            bail!(
                "`email.token_lifetime_secs`, `session_lifetime_secs` and `timeout_secs` must be >= 1"
            );
        }
        if self.notif_delay_secs == 0 {
            bail!("`email.notif_delay_secs` must be >= 1");
        }
        match url::Url::parse(&self.client_base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => bail!(
                "`email.client_base_url` {:?} is not an http(s) URL",
                self.client_base_url
            ),
        }
        Ok(())
    }
}

/// Single sign-on through upstream OpenID Connect providers (`m.login.sso`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sso {
    /// Where a client may have the browser sent back with its login token
    /// (the `redirectUrl` of `/login/sso/redirect`): URLs whose scheme, host
    /// and port are those of an entry and whose path starts with the entry's.
    /// Any other `redirectUrl` is refused.
    pub client_allowlist: Vec<String>,
    /// How long the login token the browser carries back is valid.
    pub login_token_lifetime_secs: u64,
    /// How long a sign-in may take at the provider, from the redirect to the
    /// callback.
    pub session_lifetime_secs: u64,
    /// The providers, offered as `identity_providers` of `m.login.sso`.
    pub oidc_providers: Vec<OidcProvider>,
}

impl Default for Sso {
    fn default() -> Self {
        Self {
            client_allowlist: Vec::new(),
            login_token_lifetime_secs: 30,
            session_lifetime_secs: 600,
            oidc_providers: Vec::new(),
        }
    }
}

/// One upstream OpenID Connect provider, as Synapse's `oidc_providers`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// A short stable name (`keycloak`); the IdP's ID clients see is
    /// `oidc-<idp_id>`, as on Synapse. Changing it loses every user's link.
    pub idp_id: String,
    /// The name clients show ("Sign in with …"). Default: the `idp_id`.
    #[serde(default)]
    pub idp_name: Option<String>,
    /// An `mxc://` icon for the provider.
    #[serde(default)]
    pub idp_icon: Option<String>,
    /// A brand hint (`github`, `gitlab`, `google`, …).
    #[serde(default)]
    pub idp_brand: Option<String>,
    /// The provider's issuer identifier (`https://…`), exactly as its ID tokens
    /// carry it in `iss`.
    pub issuer: String,
    /// Read the endpoints from `<issuer>/.well-known/openid-configuration`.
    #[serde(default = "yes")]
    pub discover: bool,
    /// Endpoints, needed when `discover` is off (they override discovery).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Needed for `user_profile_method = "userinfo_endpoint"` without
    /// discovery.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,
    /// Scopes asked for; `openid` must be one of them.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// PKCE (S256): `auto` (when the provider advertises it), `always`, `never`.
    #[serde(default)]
    pub pkce_method: PkceMethod,
    /// Where the claims come from: `auto` (the ID token) or
    /// `userinfo_endpoint` (also the userinfo endpoint, for providers that
    /// put few claims in ID tokens).
    #[serde(default)]
    pub user_profile_method: UserProfileMethod,
    /// The claim that identifies the user at the provider for good.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The localpart of a new user, from the ID token's claims
    /// (`{{ user.preferred_username }}`; filters `lower` and
    /// `localpart_from_email`). Characters a user ID cannot have are mapped.
    #[serde(default = "default_localpart_template")]
    pub localpart_template: String,
    /// A new user's display name, from the claims. Unset: the localpart.
    #[serde(default)]
    pub display_name_template: Option<String>,
    /// An email address bound to a new user, from the claims.
    #[serde(default)]
    pub email_template: Option<String>,
    /// A first sign-in whose localpart is an existing user's is linked to that
    /// user (the provider vouches for it). Off: another localpart is chosen.
    #[serde(default)]
    pub allow_existing_users: bool,
    /// Create users on first sign-in. Off: only users already linked (by an
    /// administrator, or `allow_existing_users`) may sign in.
    #[serde(default = "yes")]
    pub enable_registration: bool,
    /// Claims every sign-in must have: `{ attribute = "groups", value = "staff" }`
    /// (a list claim must contain the value) or `one_of = [...]`.
    #[serde(default)]
    pub attribute_requirements: Vec<AttributeRequirement>,
}

fn yes() -> bool {
    true
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_localpart_template() -> String {
    "{{ user.preferred_username }}".into()
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("idp_id", &self.idp_id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// The IdP ID clients see: `oidc-<idp_id>`, as on Synapse.
    pub fn id(&self) -> String {
        format!("oidc-{}", self.idp_id)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client ID and secret (the OAuth default).
    #[default]
    ClientSecretBasic,
    /// The ID and secret in the form body.
    ClientSecretPost,
    /// A public client: no secret (PKCE protects the code).
    None,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserProfileMethod {
    /// The ID token's claims.
    #[default]
    Auto,
    /// The ID token's claims, with the userinfo endpoint's over them.
    UserinfoEndpoint,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PkceMethod {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeRequirement {
    pub attribute: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
}

impl Sso {
    fn validate(&self, has_public_baseurl: bool) -> anyhow::Result<()> {
        if self.login_token_lifetime_secs == 0 || self.session_lifetime_secs == 0 {
            bail!("`sso.login_token_lifetime_secs` and `sso.session_lifetime_secs` must be >= 1");
        }
        for entry in &self.client_allowlist {
            if reqwest::Url::parse(entry).is_err() {
                bail!("`sso.client_allowlist`: {entry:?} is not an absolute URL");
            }
        }
        if self.oidc_providers.is_empty() {
            return Ok(());
        }
        if !has_public_baseurl {
            bail!("`sso.oidc_providers` needs `public_baseurl` (the providers redirect there)");
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.oidc_providers {
            let name = &p.idp_id;
            if name.is_empty()
                || name.len() > 200
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
            {
                bail!("`sso.oidc_providers`: idp_id {name:?} must be 1-200 of A-Z a-z 0-9 . _ ~ -");
            }
            if !seen.insert(name.clone()) {
                bail!("`sso.oidc_providers`: idp_id {name:?} appears twice");
            }
            let https = |key: &str, url: &str| -> anyhow::Result<()> {
                match reqwest::Url::parse(url) {
                    Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(()),
                    _ => bail!(
                        "`sso.oidc_providers` {name}: `{key}` must be an https:// URL, got {url:?}"
                    ),
                }
            };
            https("issuer", &p.issuer)?;
            if let Some(url) = &p.userinfo_endpoint {
                https("userinfo_endpoint", url)?;
            } else if !p.discover && p.user_profile_method == UserProfileMethod::UserinfoEndpoint {
                bail!(
                    "`sso.oidc_providers` {name}: `userinfo_endpoint` is needed for user_profile_method \"userinfo_endpoint\" when `discover` is off"
                );
            }
            for (key, url) in [
                ("authorization_endpoint", &p.authorization_endpoint),
                ("token_endpoint", &p.token_endpoint),
                ("jwks_uri", &p.jwks_uri),
            ] {
                match url {
                    Some(url) => https(key, url)?,
                    None if !p.discover => {
                        bail!(
                            "`sso.oidc_providers` {name}: `{key}` is needed when `discover` is off"
                        )
                    }
                    None => {}
                }
            }
            if p.client_id.is_empty() {
                bail!("`sso.oidc_providers` {name}: `client_id` is needed");
            }
            if p.client_auth_method != ClientAuthMethod::None && p.client_secret.is_none() {
                bail!(
                    "`sso.oidc_providers` {name}: `client_secret` is needed unless `client_auth_method` is \"none\""
                );
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                bail!("`sso.oidc_providers` {name}: `scopes` must include \"openid\"");
            }
            if let Some(icon) = &p.idp_icon
                && ruma::OwnedMxcUri::from(icon.as_str()).validate().is_err()
            {
                bail!("`sso.oidc_providers` {name}: `idp_icon` must be an mxc:// URI");
            }
            for template in std::iter::once(&p.localpart_template)
                .chain(p.display_name_template.as_ref())
                .chain(p.email_template.as_ref())
            {
                crate::domain::sso::Template::parse(template).map_err(|e| {
                    anyhow::anyhow!("`sso.oidc_providers` {name}: template {template:?}: {e}")
                })?;
            }
            for r in &p.attribute_requirements {
                if r.value.is_some() == r.one_of.is_some() {
                    bail!(
                        "`sso.oidc_providers` {name}: each of `attribute_requirements` needs `value` or `one_of`"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether SSO is offered (a provider is configured).
    pub fn enabled(&self) -> bool {
        !self.oidc_providers.is_empty()
    }
}

/// Who runs this server, served at `/.well-known/matrix/support` (spec:
/// "Server support discovery"). Nothing set: that endpoint answers 404.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Support {
    /// Ways to reach the administrators.
    pub contacts: Vec<SupportContact>,
    /// A page helping this server's users.
    pub support_page: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    /// A Matrix user ID (it may be on another server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// `m.role.admin`, `m.role.security` or a namespaced role.
    pub role: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Largest upload, in bytes (`m.upload.size`).
    pub max_upload_bytes: u64,
    /// Serve the unauthenticated `/_matrix/media/v3/download` and `/thumbnail`
    /// endpoints. Off, as Synapse since spec v1.11: clients use the
    /// authenticated `/_matrix/client/v1/media/...` endpoints.
    pub legacy_unauthenticated: bool,
    /// Images with more pixels than this are not decoded for thumbnails.
    pub max_image_pixels: u64,
    /// How long an id from `/media/v1/create` waits for its upload.
    pub unused_expiry_secs: u64,
    /// Ids from `/create` a user may hold unfilled at once.
    pub max_pending_uploads: i64,
    /// Cached remote media not read for this many days is deleted (0: kept).
    pub remote_cache_days: u64,
    /// Time limit for fetching one remote media item, redirects and the whole
    /// body included (waiting for the same item's fetch by another request too).
    pub remote_fetch_timeout_secs: u64,
    pub url_preview: UrlPreview,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            legacy_unauthenticated: false,
            max_image_pixels: 32_000_000,
            unused_expiry_secs: 24 * 60 * 60,
            max_pending_uploads: 50,
            remote_cache_days: 30,
            remote_fetch_timeout_secs: 120,
            url_preview: UrlPreview::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreview {
    /// `/preview_url` is off unless enabled.
    pub enabled: bool,
    /// Address ranges never fetched (CIDR). The default covers loopback,
    /// private, link-local, CGNAT, multicast and reserved ranges, v4 and v6.
    pub ip_range_blocklist: Vec<String>,
    /// Ranges fetched even though the blocklist covers them.
    pub ip_range_allowlist: Vec<String>,
    /// Largest page or image fetched, in bytes.
    pub max_bytes: u64,
    /// Time limit for one preview, all redirects included.
    pub timeout_secs: u64,
    /// How long a preview is cached.
    pub cache_secs: u64,
}

/// Loopback, private, link-local, CGNAT, multicast and reserved ranges, v4 and v6:
/// never contacted on a user's or a remote server's behalf unless allowed.
pub fn default_ip_blocklist() -> Vec<String> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for UrlPreview {
    fn default() -> Self {
        Self {
            enabled: false,
            ip_range_blocklist: default_ip_blocklist(),
            ip_range_allowlist: Vec::new(),
            max_bytes: 10 * 1024 * 1024,
            timeout_secs: 10,
            cache_secs: 60 * 60,
        }
    }
}

/// What every outbound HTTP client shares: federation, push gateways, URL
/// previews.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// PEM files of extra certificate authorities, trusted besides the built-in
    /// Mozilla root store by every outbound client (a private CA).
    pub extra_ca_files: Vec<PathBuf>,
}

/// Requests to identity servers (spec: Identity Service API), which clients
/// name per request (`id_server`): binding an address through this server,
/// unbinding it, and invites by email. They go through the `federation`
/// address ranges (as Synapse's do), over HTTPS only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// Accept any TLS certificate from identity servers. Only for isolated
    /// test set-ups (SyTest's identity server has a self-signed certificate):
    /// anyone on the path can then impersonate an identity server.
    pub dangerously_accept_invalid_certs: bool,
    /// Time limit of one request to an identity server.
    pub request_timeout_secs: u64,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            dangerously_accept_invalid_certs: false,
            request_timeout_secs: 15,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    /// Talk to other servers. Off: federation endpoints answer 404 and nothing is
    /// sent.
    pub enabled: bool,
    /// Notary servers asked for a server's keys when it cannot be reached
    /// directly.
    pub trusted_key_servers: Vec<String>,
    /// Address ranges outbound federation never connects to (CIDR). The default
    /// covers loopback, private, link-local and reserved ranges.
    pub ip_range_blocklist: Vec<String>,
    /// Ranges allowed even though the blocklist covers them (test set-ups on
    /// loopback, private networks of trusted servers).
    pub ip_range_allowlist: Vec<String>,
    /// The older place of `outbound.extra_ca_files`, kept so existing
    /// configurations keep working: these files are trusted by every outbound
    /// client too.
    pub extra_ca_files: Vec<PathBuf>,
    /// Accept any TLS certificate from peers. Only for isolated test set-ups:
    /// anyone on the path can impersonate any server.
    pub dangerously_accept_invalid_certs: bool,
    pub connect_timeout_secs: u64,
    /// Time limit of one outbound request.
    pub request_timeout_secs: u64,
    /// A destination failing for this long is marked down: only the newest 50
    /// PDUs of each room stay queued for it, and it is retried at most hourly.
    /// Any request from it clears the backoff.
    pub destination_down_after_secs: u64,
    /// Faster joins as the joining server (MSC3902): ask `send_join` for
    /// partial state (`omit_members=true`), let `/join` return once it is
    /// stored, and fetch the full state in the background.
    pub faster_joins: bool,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_key_servers: vec!["matrix.org".into()],
            ip_range_blocklist: default_ip_blocklist(),
            ip_range_allowlist: Vec::new(),
            extra_ca_files: Vec::new(),
            dangerously_accept_invalid_certs: false,
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
            destination_down_after_secs: 3600,
            faster_joins: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            public_baseurl: None,
            federation_delegate: None,
            data_dir: PathBuf::from("data"),
            log: "info".into(),
            trusted_proxies: Vec::new(),
            appservices: Vec::new(),
            appservice_legacy_authorization: false,
            listeners: vec![Listener {
                bind: "0.0.0.0:8008".parse().expect("static address"),
                resources: default_resources(),
                tls_certificate: None,
                tls_private_key: None,
            }],
            database: Database::default(),
            registration: Registration::default(),
            auth: Auth::default(),
            rate_limits: RateLimits::default(),
            limits: Limits::default(),
            rooms: Rooms::default(),
            server_notices: ServerNotices::default(),
            media: Media::default(),
            outbound: Outbound::default(),
            federation: Federation::default(),
            identity: Identity::default(),
            support: Support::default(),
            turn: Turn::default(),
            presence: Presence::default(),
            email: Email::default(),
            sso: Sso::default(),
        }
    }
}

impl Config {
    /// The extra certificate authorities every outbound client trusts:
    /// `outbound.extra_ca_files` and then `federation.extra_ca_files`.
    pub fn extra_ca_files(&self) -> Vec<PathBuf> {
        let mut files = self.outbound.extra_ca_files.clone();
        for f in &self.federation.extra_ca_files {
            if !files.contains(f) {
                files.push(f.clone());
            }
        }
        files
    }

    /// Defaults, then the file (if given), then `LATTICE__*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("LATTICE__").split("__"));
        let config: Config = figment.extract().map_err(|e| {
            // figment names the key ("for key `database.url`") and the source.
            anyhow::anyhow!("invalid configuration: {e}")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that cannot be expressed in the types. Each message names its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        ServerName::parse(&self.server_name)
            .with_context(|| format!("invalid `server_name` {:?}", self.server_name))?;
        if self.listeners.is_empty() {
            bail!("`listeners` must contain at least one listener");
        }
        for range in &self.trusted_proxies {
            if ip_range(range).is_none() {
                bail!("`trusted_proxies`: {range:?} is not an address or CIDR range");
            }
        }
        if let Some(url) = &self.public_baseurl
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("`public_baseurl` must start with http:// or https://, got {url:?}");
        }
        if self.database.max_connections == 0 {
            bail!("`database.max_connections` must be at least 1");
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("`database.url` must be a postgres:// URL");
        }
        RoomVersionId::try_from(self.rooms.default_version.as_str())
            .ok()
            .filter(crate::domain::room_version::is_supported)
            .with_context(|| {
                format!(
                    "`rooms.default_version` {:?} is not a supported room version",
                    self.rooms.default_version
                )
            })?;
        for (key, bucket) in [
            ("rate_limits.client", &self.rate_limits.client),
            ("rate_limits.login", &self.rate_limits.login),
            ("rate_limits.password", &self.rate_limits.password),
            ("rate_limits.email_address", &self.rate_limits.email_address),
            ("rate_limits.email_ip", &self.rate_limits.email_ip),
        ] {
            if bucket.per_second.is_nan() || bucket.per_second <= 0.0 || bucket.burst == 0 {
                bail!("`{key}` needs per_second > 0 and burst >= 1");
            }
        }
        for listener in &self.listeners {
            if listener.tls_certificate.is_some() != listener.tls_private_key.is_some() {
                bail!(
                    "listener {}: `tls_certificate` and `tls_private_key` go together",
                    listener.bind
                );
            }
        }
        if self.federation.request_timeout_secs == 0 || self.federation.connect_timeout_secs == 0 {
            bail!("`federation.request_timeout_secs` and `connect_timeout_secs` must be >= 1");
        }
        if self.media.remote_fetch_timeout_secs == 0 {
            bail!("`media.remote_fetch_timeout_secs` must be at least 1");
        }
        if self.turn.user_lifetime_secs == 0 {
            bail!("`turn.user_lifetime_secs` must be at least 1");
        }
        for uri in &self.turn.uris {
            if !(uri.starts_with("turn:") || uri.starts_with("turns:")) {
                bail!("`turn.uris`: {uri:?} is not a turn: or turns: URI");
            }
        }
        for contact in &self.support.contacts {
            if contact.matrix_id.is_none() && contact.email_address.is_none() {
                bail!("`support.contacts`: each contact needs `matrix_id` or `email_address`");
            }
            if let Some(id) = &contact.matrix_id {
                ruma::UserId::parse(id)
                    .with_context(|| format!("`support.contacts`: invalid `matrix_id` {id:?}"))?;
            }
            if contact.role.is_empty() {
                bail!("`support.contacts`: each contact needs a `role`");
            }
        }
        self.email.validate()?;
        self.sso.validate(self.public_baseurl.is_some())?;
        if self.registration.require_email && !self.email.enabled() {
            bail!("`registration.require_email` needs `email.smtp_host` and `email.from`");
        }
        if self.limits.header_read_timeout_secs == 0 {
            bail!("`limits.header_read_timeout_secs` must be at least 1");
        }
        if self.limits.max_request_body_bytes < 1024 {
            bail!("`limits.max_request_body_bytes` must be at least 1024");
        }
        if self.auth.login_token_lifetime_secs == 0 {
            bail!("`auth.login_token_lifetime_secs` must be at least 1");
        }
        if self.auth.argon2_memory_kib < 8 || self.auth.argon2_iterations == 0 {
            bail!("`auth.argon2_memory_kib` must be >= 8 and `auth.argon2_iterations` >= 1");
        }
        Ok(())
    }

    pub fn server_name(&self) -> OwnedServerName {
        ServerName::parse(&self.server_name).expect("validated at load")
    }

    /// The base URL clients should use, derived from the first listener when unset.
    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned() + "/",
            None => format!(
                "http://{}:{}/",
                self.server_name,
                self.listeners[0].bind.port()
            ),
        }
    }

    pub fn shared_secret(&self) -> Option<&str> {
        self.registration
            .shared_secret
            .as_deref()
            .filter(|s| !s.is_empty())
    }
}

/// An address range as the configuration writes it: `address/prefix`, or a
/// bare address for a range of that one address. `None` when it is neither.
pub fn ip_range(s: &str) -> Option<ipnet::IpNet> {
    match s.split_once('/') {
        Some(_) => s.parse().ok(),
        None => s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults_where_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lattice.example.toml");
        let config = Config::load(Some(&path)).expect("example config loads");
        assert_eq!(config.server_name, "example.org");
        assert!(!config.registration.open);
        assert!(config.rate_limits.enabled);
    }

    /// Every setting (as the defaults serialise) appears in the example file,
    /// commented or not, under its section: the example is the reference.
    #[test]
    fn every_setting_is_in_the_example_config() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lattice.example.toml"),
        )
        .unwrap();
        // The example's lines, uncommented, grouped by the section they are in.
        let mut sections: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut current = String::new();
        for line in example.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(name) = line
                .strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
            {
                current = name.to_owned();
                continue;
            }
            sections
                .entry(current.clone())
                .or_default()
                .push(line.to_owned());
        }
        fn walk(
            value: &toml::Value,
            section: &str,
            sections: &std::collections::HashMap<String, Vec<String>>,
            missing: &mut Vec<String>,
        ) {
            let toml::Value::Table(table) = value else {
                return;
            };
            for (key, v) in table {
                let nested = match v {
                    toml::Value::Table(_) => Some(v.clone()),
                    toml::Value::Array(items)
                        if items.iter().all(|i| i.is_table()) && !items.is_empty() =>
                    {
                        Some(items[0].clone())
                    }
                    _ => None,
                };
                // An inline table (`client = { per_second = …, burst = … }`).
                let inline = sections
                    .get(section)
                    .and_then(|lines| lines.iter().find(|l| l.starts_with(&format!("{key} = {{"))));
                if let (Some(line), toml::Value::Table(inner)) = (inline, v) {
                    for inner_key in inner.keys() {
                        if !line.contains(&format!("{inner_key} =")) {
                            missing.push(format!("{section}.{key}.{inner_key}"));
                        }
                    }
                    continue;
                }
                match nested {
                    Some(inner) => {
                        let name = if section.is_empty() {
                            key.clone()
                        } else {
                            format!("{section}.{key}")
                        };
                        walk(&inner, &name, sections, missing);
                    }
                    None => {
                        let documented = sections.get(section).is_some_and(|lines| {
                            lines.iter().any(|l| l.starts_with(&format!("{key} =")))
                        });
                        if !documented {
                            missing.push(format!("{section}.{key}"));
                        }
                    }
                }
            }
        }
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut missing = Vec::new();
        walk(&defaults, "", &sections, &mut missing);
        assert!(
            missing.is_empty(),
            "not in config/lattice.example.toml: {missing:?}"
        );
    }

    /// docs/configuration.md (written by scripts/config-docs from the example
    /// config) has an entry for every setting.
    #[test]
    fn every_setting_is_documented() {
        let docs = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
        )
        .unwrap();
        fn walk(value: &toml::Value, prefix: &str, docs: &str, missing: &mut Vec<String>) {
            let toml::Value::Table(table) = value else {
                return;
            };
            for (key, v) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if docs.contains(&format!("### `{name}`")) {
                    continue;
                }
                match v {
                    toml::Value::Table(_) => walk(v, &name, docs, missing),
                    toml::Value::Array(items) if items.first().is_some_and(|i| i.is_table()) => {
                        walk(&items[0], &name, docs, missing)
                    }
                    _ => missing.push(name),
                }
            }
        }
        let mut missing = Vec::new();
        walk(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &docs,
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "not in docs/configuration.md (run scripts/config-docs): {missing:?}"
        );
    }

    #[test]
    fn invalid_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[database]\nmax_connections = \"many\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[registration]\nopne = true\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("opne"), "{err}");
    }

    #[test]
    fn support_contacts_need_a_way_to_reach_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        for (contacts, expected) in [
            (
                r#"[{ role = "m.role.admin" }]"#,
                "needs `matrix_id` or `email_address`",
            ),
            (
                r#"[{ matrix_id = "admin", role = "m.role.admin" }]"#,
                "invalid `matrix_id`",
            ),
            (
                r#"[{ email_address = "a@example.org", role = "" }]"#,
                "needs a `role`",
            ),
        ] {
            std::fs::write(&path, format!("[support]\ncontacts = {contacts}\n")).unwrap();
            let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
            assert!(err.contains(expected), "{contacts}: {err}");
        }
        std::fs::write(
            &path,
            "[support]\ncontacts = [{ email_address = \"a@example.org\", role = \"m.role.admin\" }]\n",
        )
        .unwrap();
        Config::load(Some(&path)).expect("a contact with an email address loads");
    }

    #[test]
    fn bad_server_name_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "server_name = \"not a name\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("server_name"), "{err}");
    }
}
