//! Application assembly: the shared state, the listeners, background workers and
//! graceful shutdown on one cancellation token.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use ruma::OwnedServerName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    config::{Bucket, Config, Resource},
    federation::{client::FederationClient, tls},
    notify::Notifier,
    service::{event::SigningKey, keys, ratelimit::RateLimiter, typing::Typing, uia},
    storage::{Database, Pool},
};

/// Everything a handler or service may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Pool,
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
    pub key_fetch: Arc<crate::federation::keys::FetchState>,
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
}

impl AppState {
    /// Builds the state, loading (or generating) the signing key and the stream
    /// position from the database.
    pub async fn load(config: Config, db: Pool) -> anyhow::Result<Self> {
        let signing_key = Arc::new(keys::load_or_generate(&db).await?);
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
            config: Arc::new(config),
            db,
        })
    }
}

/// A running server: its bound addresses and the handle that stops it.
pub struct Server {
    pub addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Server {
    /// Binds every listener and starts serving and the workers.
    pub async fn start(state: AppState) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        crate::service::appservice::create_senders(&state)
            .await
            .context("creating the appservice sender users")?;
        let mut addrs = Vec::new();
        for listener in &state.config.listeners {
            let tcp = TcpListener::bind(listener.bind)
                .await
                .with_context(|| format!("binding listener {}", listener.bind))?;
            let addr = tcp.local_addr()?;
            addrs.push(addr);
            let client = listener.resources.contains(&Resource::Client);
            let federation = state.config.federation.enabled
                && listener.resources.contains(&Resource::Federation);
            let metrics = listener.resources.contains(&Resource::Metrics);
            let router = api::router(state.clone(), client, federation, metrics);
            let token = shutdown.clone();
            let header_timeout = Duration::from_secs(state.config.limits.header_read_timeout_secs);
            let shutdown_signal = async move { token.cancelled().await };
            match (&listener.tls_certificate, &listener.tls_private_key) {
                (Some(cert), Some(key)) => {
                    let config = tls::server_config(cert, key)?;
                    let tls = tls::TlsListener::new(tcp, config)?;
                    tracing::info!(%addr, resources = ?listener.resources, "listening (TLS)");
                    tasks.spawn(serve_listener(tls, router, shutdown_signal, header_timeout));
                }
                _ => {
                    tracing::info!(%addr, resources = ?listener.resources, "listening");
                    tasks.spawn(serve_listener(tcp, router, shutdown_signal, header_timeout));
                }
            }
        }
        tasks.spawn(purge_worker(state.clone(), shutdown.clone()));
        let typing = state.typing.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { typing.run(token).await });
        tasks.spawn(crate::service::pusher::run(state.clone(), shutdown.clone()));
        tasks.spawn(crate::service::notif_mail::run(
            state.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::service::federation::sender::run(
            state.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::service::federation::partial_state::run(
            state.clone(),
            shutdown.clone(),
        ));
        crate::service::appservice::sender::spawn_all(&state, &shutdown, &mut tasks);
        Ok(Self {
            addrs,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, lets in-flight requests finish, stops the workers.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Serves one listener until `shutdown` completes: HTTP/1.1 connections (with
/// upgrades), each request carrying the peer address (`ConnectInfo`). A
/// connection that does not send a whole request head within
/// `limits.header_read_timeout_secs` is closed. On shutdown the listener closes
/// at once and open connections finish their current request.
async fn serve_listener<L>(
    mut listener: L,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let service =
            router
                .clone()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.map(axum::body::Body::new)
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.changed() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    drop(stop_tx);
    while connections.join_next().await.is_some() {}
}

/// Periodic clean-up of expired rows (UIA sessions and the token uses they held,
/// OpenID tokens).
async fn purge_worker(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = uia::purge_expired(&state).await {
                    tracing::warn!(error = %e, "purging expired UIA sessions failed");
                }
                if let Err(e) = crate::service::session::purge_expired_login_tokens(&state).await {
                    tracing::warn!(error = %e, "purging expired login tokens failed");
                }
                if let Err(e) = crate::service::sso::purge_expired(&state).await {
                    tracing::warn!(error = %e, "purging unfinished SSO sign-ins failed");
                }
                if let Err(e) = crate::service::threepid::purge_expired(&state).await {
                    tracing::warn!(error = %e, "purging email validation sessions failed");
                }
                if let Err(e) = crate::service::openid::purge_expired(&state).await {
                    tracing::warn!(error = %e, "purging expired OpenID tokens failed");
                }
                match crate::service::media::collect_garbage(&state).await {
                    Ok((0, 0)) => {}
                    Ok((lapsed, previews)) => tracing::info!(lapsed, previews, "media clean-up"),
                    Err(e) => tracing::warn!(error = %e, "media clean-up failed"),
                }
            }
        }
    }
}

/// `lattice serve`: open the database (embedded or configured), migrate, serve until
/// SIGTERM or ctrl-c, then shut down in order: listeners, workers, pool, cluster.
pub async fn serve(config: Config, file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    // Installed first: a SIGTERM that arrives while starting is not fatal, it
    // stops the server in order once it is up.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let db = Database::open(&config).await?;
    db.migrate().await?;
    let state = AppState::load(config, db.pool.clone()).await?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let server = Server::start(state.clone()).await?;
    let reloader = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload_appservices(&state, file.as_deref()).await;
        }
    });
    wait_for_signal(&mut term).await;
    reloader.abort();
    tracing::info!("shutting down");
    server.stop().await;
    db.close().await;
    Ok(())
}

/// SIGHUP: the configuration file is read again for its `appservices` list
/// (other settings need a restart) and the registrations are reloaded. Any
/// error is logged and the registrations in use stay.
async fn reload_appservices(state: &AppState, file: Option<&std::path::Path>) {
    tracing::info!("SIGHUP: reloading application service registrations");
    let paths = match Config::load(file) {
        Ok(config) => config.appservices,
        Err(e) => {
            tracing::error!("appservice registrations not reloaded: {e:#}");
            return;
        }
    };
    if let Err(e) = crate::service::appservice::reload(state, &paths).await {
        tracing::error!("appservice registrations not reloaded, the previous ones stay: {e:#}");
    }
}

async fn wait_for_signal(term: &mut tokio::signal::unix::Signal) {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
