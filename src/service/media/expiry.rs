//! The background clean-up of lapsed, expired and unread media.

use super::store::delete_unused_files;
use crate::{error::Result, service::AppState, storage::media as rows};

/// Background clean-up: lapsed `/create` ids, expired URL previews, and cached
/// remote media unread for `media.remote_cache_days` (with their files, when
/// nothing else uses them).
pub async fn collect_garbage(app: &AppState) -> Result<(u64, u64)> {
    let now = app.clock.now_ms();
    let lapsed = rows::delete_lapsed(&app.db, now).await?;
    let previews = rows::delete_expired_previews(&app.db, now).await?;
    let days = app.config.media.remote_cache_days;
    if days > 0 {
        let before = now - (days as i64) * 24 * 60 * 60 * 1000;
        let files = rows::delete_stale_remote(&app.db, app.server_name.as_str(), before).await?;
        if !files.is_empty() {
            let deleted = delete_unused_files(app, &files).await?;
            tracing::info!(deleted, "expired remote media removed");
        }
    }
    Ok((lapsed, previews))
}
