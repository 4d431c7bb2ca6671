//! Finding an item to serve (local, waiting for an asynchronous upload, or
//! remote) and whether it is served inline.

use std::{path::PathBuf, time::Duration};

use super::{federation::find_remote, store::file_path};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{media as rows, media::Media},
};

/// Content types served inline; everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

pub fn is_inline(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&base.as_str())
}

/// The media row and its file, waiting up to `wait` for an async upload.
pub async fn find(
    app: &AppState,
    server_name: &str,
    media_id: &str,
    wait: Duration,
) -> Result<(Media, PathBuf)> {
    let not_found = || Error::not_found("Media not found");
    if server_name != app.server_name.as_str() {
        return find_remote(app, server_name, media_id).await;
    }
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(120));
    let mut uploaded = app.media_uploaded.subscribe();
    loop {
        uploaded.borrow_and_update();
        let media = rows::get(&app.db, server_name, media_id)
            .await?
            .ok_or_else(not_found)?;
        if media.quarantined {
            return Err(not_found());
        }
        if let Some(sha) = &media.sha256 {
            let path = file_path(app, sha);
            rows::touch(&app.db, server_name, media_id, app.clock.now_ms()).await?;
            return Ok((media, path));
        }
        if media.unused_expires_ts <= Some(app.clock.now_ms()) {
            return Err(not_found());
        }
        if tokio::time::timeout_at(deadline, uploaded.changed())
            .await
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::NotYetUploaded,
                "The media has not been uploaded yet",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_types() {
        assert!(is_inline("image/png"));
        assert!(is_inline("text/plain; charset=utf-8"));
        assert!(!is_inline("text/html"));
        assert!(!is_inline("image/svg+xml"));
    }
}
