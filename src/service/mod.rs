//! Use cases. Services own transactions, call `domain` for rules and `storage` for
//! rows, and never see HTTP.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod appservice;
pub mod backup;
pub mod client_event;
pub mod devices;
pub mod directory;
pub mod e2e_keys;
pub mod event;
pub mod event_stream;
pub mod federation;
pub mod identity;
pub mod initial_sync;
pub mod lazy_members;
pub mod mail;
pub mod media;
pub mod membership;
pub mod metrics;
pub mod mutual_rooms;
pub mod nonces;
pub mod notif_mail;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push;
pub mod pusher;
pub mod ratelimit;
pub mod read;
pub mod receipts;
pub mod reports;
pub mod room;
pub mod search;
pub mod server_keys;
pub mod server_notices;
pub mod session;
pub mod signing_key;
pub mod sliding_sync;
pub mod space;
pub mod sso;
pub mod state;
pub mod stream;
pub mod sync;
pub mod third_party_invite;
pub mod threepid;
pub mod timeline;
pub mod to_device;
pub mod tokens;
pub mod typing;
pub mod uia;
pub mod upgrade;
pub mod url_preview;
pub mod user_directory;
pub mod voip;

pub use state::AppState;

/// Runs CPU-heavy work (argon2, signing big events, state resolution) off the async
/// workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("blocking task failed: {e}"))
}

/// Whether the database answers (`GET /health`).
pub async fn database_reachable(app: &AppState) -> Result<(), crate::storage::DbError> {
    crate::storage::ping(&app.db).await
}
