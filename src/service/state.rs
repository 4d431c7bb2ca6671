//! The shared state: one `Clone` value every handler, service and worker is
//! given (`State<AppState>` in handlers), built once at start by
//! [`AppState::load`]. It holds the service layer's shared parts (rate limiters,
//! in-memory stores, clients), so it lives in the service layer: the api layer
//! above takes it, nothing below it names it. The server assembly (listeners,
//! workers, shutdown) is `crate::server`.

use std::sync::Arc;

use ruma::OwnedServerName;

use crate::{
    clock::Clock,
    config::{Bucket, Config},
    domain::signing_key::SigningKey,
    federation::client::FederationClient,
    notify::Notifier,
    service::{ratelimit::RateLimiter, signing_key, typing::Typing},
    storage::Pool,
};

/// Everything a handler or service may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Pool,
    /// The clock schedules read (the system clock; a test's own in tests).
    pub clock: Clock,
    pub server_name: OwnedServerName,
    /// Endpoints the spec marks rate-limited, per user or IP.
    pub client_limiter: Arc<RateLimiter>,
    /// Login and registration attempts, per IP.
    pub login_limiter: Arc<RateLimiter>,
    /// Password checks, per user and per IP (failed guesses only: a correct
    /// password gives its token back).
    pub password_limiter: Arc<RateLimiter>,
    /// Bounds concurrent argon2 work (hashes and verifications) to the cores, so
    /// a burst of logins costs at most that many argon2 memory blocks at once.
    pub password_hashing: Arc<tokio::sync::Semaphore>,
    /// Bounds concurrent thumbnail work (source in memory, decode, resize) to
    /// the cores, so thumbnail requests cannot multiply the decode budget.
    pub thumbnailing: Arc<tokio::sync::Semaphore>,
    /// Throttles device last-seen writes to one a minute per device.
    pub device_touch_limiter: Arc<RateLimiter>,
    /// Nonces handed out for shared-secret registration.
    pub nonces: Arc<crate::service::nonces::Nonces>,
    /// The key every local event is signed with.
    pub signing_key: Arc<SigningKey>,
    /// Stream positions: what readers may see, and wake-ups for waiters.
    pub notifier: Notifier,
    /// Who is typing where (in memory, with its own serial).
    pub typing: Arc<Typing>,
    /// Sliding-sync connection state (in memory).
    pub sliding: Arc<crate::service::sliding_sync::Connections>,
    /// Member events `/sync` lazy loading sent to each device (in memory).
    pub lazy_members: Arc<crate::service::lazy_members::LazyMembers>,
    /// Bumped whenever an async upload receives its bytes (wakes downloads
    /// waiting for it).
    pub media_uploaded: Arc<tokio::sync::watch::Sender<u64>>,
    /// Remote media fetches in progress (one per item at a time).
    pub remote_fetches: Arc<crate::service::media::RemoteFetches>,
    /// The outbound federation client (discovery, signing, trust store).
    pub federation: Arc<FederationClient>,
    /// Requests to identity servers (binding addresses, invites by email).
    pub identity: Arc<crate::service::identity::IdentityClient>,
    /// Backoff of failed server-key fetches.
    pub key_fetch: Arc<crate::service::server_keys::FetchState>,
    /// Wakes the federation sender (new items queued).
    pub federation_wake: Arc<tokio::sync::Notify>,
    /// Destinations the sender is backing off.
    pub federation_backed_off: Arc<crate::service::federation::sender::BackedOff>,
    /// Request, event and other counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `trusted_proxies`, parsed.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// Room deletions running or finished (admin API v2), by delete ID.
    pub room_deletions: Arc<crate::service::admin::Deletions>,
    /// Application service registrations (`appservices`), loaded at start.
    pub appservices: Arc<crate::service::appservice::Live<crate::domain::appservice::Registry>>,
    /// One HTTP client per appservice (by ID), and their protocol metadata.
    pub appservice_http: Arc<crate::service::appservice::Live<crate::service::appservice::Clients>>,
    /// Bumped when the registrations are reloaded: the delivery workers
    /// restart with the new set.
    pub appservice_reloaded: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped when rows are queued for appservices without a stream position
    /// (typing): wakes the appservice senders.
    pub appservice_wake: Arc<tokio::sync::watch::Sender<u64>>,
    /// Outgoing mail, when `[email]` is set up.
    pub mailer: Option<Arc<crate::service::mail::Mailer>>,
    /// Validation mails, per address and per IP.
    pub email_address_limiter: Arc<RateLimiter>,
    pub email_ip_limiter: Arc<RateLimiter>,
    /// Upstream OpenID Connect providers (`sso.oidc_providers`), with their
    /// HTTP clients and cached metadata and keys.
    pub sso: Arc<crate::service::sso::Providers>,
    /// The partial-state resync worker's wake-up, and news of rooms whose
    /// full state is in (faster joins).
    pub partial_state: Arc<crate::service::federation::partial_state::Resyncs>,
    /// History fetches (`/backfill`) running, one at a time per room.
    pub backfills: Arc<crate::service::federation::backfill::Fills>,
}

impl AppState {
    /// Builds the state, loading (or generating) the signing key and the stream
    /// position from the database.
    pub async fn load(config: Config, db: Pool) -> anyhow::Result<Self> {
        let signing_key = Arc::new(signing_key::load_or_generate(&db).await?);
        let federation = Arc::new(FederationClient::new(&config, signing_key.clone())?);
        let persisted = crate::storage::events::max_stream_ordering(&db).await?;
        let registry = crate::service::appservice::load(&config)?;
        let appservice_http = Arc::new(crate::service::appservice::Live::new(
            crate::service::appservice::Clients::new(&config, &registry)?,
        ));
        let appservices = Arc::new(crate::service::appservice::Live::new(registry));
        let mailer = crate::service::mail::Mailer::from_config(&config)?.map(Arc::new);
        let limits = &config.rate_limits;
        Ok(Self {
            sso: Arc::new(crate::service::sso::Providers::from_config(&config)?),
            mailer,
            email_address_limiter: Arc::new(RateLimiter::new(limits.enabled, limits.email_address)),
            email_ip_limiter: Arc::new(RateLimiter::new(limits.enabled, limits.email_ip)),
            server_name: config.server_name(),
            client_limiter: Arc::new(RateLimiter::new(limits.enabled, limits.client)),
            login_limiter: Arc::new(RateLimiter::new(limits.enabled, limits.login)),
            password_limiter: Arc::new(RateLimiter::new(limits.enabled, limits.password)),
            password_hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            thumbnailing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            device_touch_limiter: Arc::new(RateLimiter::new(
                true,
                Bucket {
                    per_second: 1.0 / 60.0,
                    burst: 1,
                },
            )),
            nonces: Arc::new(crate::service::nonces::Nonces::new(
                crate::service::nonces::MAX_OUTSTANDING,
                crate::service::nonces::LIFETIME,
            )),
            signing_key,
            federation,
            identity: Arc::new(crate::service::identity::IdentityClient::new(&config)?),
            key_fetch: Arc::default(),
            federation_wake: Arc::default(),
            federation_backed_off: Arc::default(),
            metrics: Arc::default(),
            room_deletions: Arc::default(),
            appservices,
            appservice_http,
            appservice_wake: Arc::new(tokio::sync::watch::channel(0).0),
            appservice_reloaded: Arc::new(tokio::sync::watch::channel(0).0),
            trusted_proxies: Arc::new(
                config
                    .trusted_proxies
                    .iter()
                    .filter_map(|r| crate::config::ip_range(r))
                    .collect(),
            ),
            notifier: Notifier::new(persisted),
            typing: Arc::default(),
            sliding: Arc::default(),
            lazy_members: Arc::default(),
            media_uploaded: Arc::new(tokio::sync::watch::Sender::new(0)),
            remote_fetches: Arc::default(),
            partial_state: Arc::default(),
            backfills: Arc::default(),
            config: Arc::new(config),
            db,
            clock: Clock::system(),
        })
    }
}
