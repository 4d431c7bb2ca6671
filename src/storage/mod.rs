//! Storage: the only module that imports sqlx. Functions take `impl PgExecutor<'_>`
//! so a service can compose several writes in one transaction.

pub mod appservice;
pub mod devices;
pub mod e2e_keys;
pub mod embedded_pg;
pub mod events;
pub mod federation;
pub mod identity_bindings;
pub mod login_tokens;
pub mod media;
pub mod openid;
pub mod partial_state;
pub mod presence;
pub mod profiles;
pub mod pushers;
pub mod redactions;
pub mod registration_tokens;
pub mod relations;
pub mod remote_devices;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod signing_keys;
pub mod sso;
pub mod state;
pub mod sync;
pub mod threepids;
pub mod tokens;
pub mod uia;
pub mod user_directory;
pub mod user_streams;
pub mod users;

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use sqlx::{
    Error as DbError, PgConnection, PgExecutor as Executor, PgPool as Pool, Postgres, Transaction,
};

pub use crate::clock::now_ms;

use crate::{config::Config, error::Error};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

/// Whether `e` is a unique-constraint violation (so the caller can map it to a
/// domain error such as `M_USER_IN_USE`).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The database Lattice runs on: a pool, plus the embedded cluster when it manages
/// its own.
pub struct Database {
    pub pool: PgPool,
    embedded: Option<embedded_pg::EmbeddedPostgres>,
}

impl Database {
    /// Connects to `database.url`, or starts the embedded cluster when it is unset.
    /// A server that is not up yet is retried until `database.startup_timeout_secs`.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let (options, embedded) = match &config.database.url {
            Some(url) => {
                let options: PgConnectOptions = url.parse().context("parsing `database.url`")?;
                (options, None)
            }
            None => {
                let pg = embedded_pg::EmbeddedPostgres::start(
                    &config.data_dir,
                    &config.database.embedded_os_user,
                )
                .await?;
                (pg.connect_options(), Some(pg))
            }
        };
        let pool = connect_with_retry(
            options,
            config.database.max_connections,
            Duration::from_secs(config.database.startup_timeout_secs),
        )
        .await?;
        Ok(Self { pool, embedded })
    }

    /// Applies pending migrations, logging which ones and how long they took.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        // The table sqlx records applied migrations in (absent on a new database).
        let applied: Vec<i64> = sqlx::query_scalar(
            "select version from _sqlx_migrations where success order by version",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let pending: Vec<_> = MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .collect();
        for (i, m) in pending.iter().enumerate() {
            tracing::info!(
                "migration {}/{}: {} {}",
                i + 1,
                pending.len(),
                m.version,
                m.description
            );
        }
        let started = std::time::Instant::now();
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations")?;
        if !pending.is_empty() {
            tracing::info!(
                "applied {} migrations in {:.1} s",
                pending.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Closes the pool, then stops the embedded cluster (if any).
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(pg) = self.embedded {
            pg.stop().await;
        }
    }

    /// For one-shot commands (`migrate`, `admin`): stops the embedded cluster only if
    /// this process started it, so a running server's cluster is left alone.
    pub async fn close_if_started_here(self) {
        self.pool.close().await;
        if let Some(pg) = self.embedded
            && pg.started_here()
        {
            pg.stop().await;
        }
    }
}

async fn connect_with_retry(
    options: PgConnectOptions,
    max_connections: u32,
    timeout: Duration,
) -> anyhow::Result<PgPool> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() + delay < deadline && is_transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to the database"),
        }
    }
}

/// Errors worth waiting out at start: the server is not up, or is starting.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        // 57P03 cannot_connect_now: the database system is starting up.
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// Whether the database answers a trivial query (the health check).
pub async fn ping(db: &Pool) -> sqlx::Result<()> {
    sqlx::query("select 1").execute(db).await.map(|_| ())
}
