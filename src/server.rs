//! The server assembly: the listeners, background workers and graceful
//! shutdown on one cancellation token, around the [`AppState`] the service
//! layer defines. The top of the layering: it alone names both `api` and the
//! workers of `service`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    config::{Config, Resource},
    federation::tls,
    service::{AppState, uia},
    storage::Database,
};

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
