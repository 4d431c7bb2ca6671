//! Uploads: `POST /upload`, `POST /create` (an ID to upload to later) and
//! `PUT /upload/{serverName}/{mediaId}`.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::Stream;

use super::store::{delete_unused_files, file_path, new_media_id, store_stream, upload_body};
use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::session::Session,
    storage::{media as rows, media::Media},
};

pub fn mxc(app: &AppState, media_id: &str) -> String {
    format!("mxc://{}/{media_id}", app.server_name)
}

/// `POST /upload`: stores the body as new media; returns the `mxc://` URI.
pub async fn upload<S, E>(
    app: &AppState,
    session: &Session,
    content_type: Option<String>,
    filename: Option<String>,
    body: S,
) -> Result<String>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let limit = app.config.media.max_upload_bytes;
    let stored = store_new(
        app,
        session,
        content_type,
        filename,
        upload_body(body),
        limit,
    )
    .await?;
    Ok(stored.mxc)
}

/// New media stored by [`store_new`].
pub struct Stored {
    pub mxc: String,
    /// Its file.
    pub path: PathBuf,
    pub size: u64,
}

/// Stores `body` (at most `limit` bytes, else `413 M_TOO_LARGE` and nothing
/// kept) as new media of `session`'s user.
pub async fn store_new<S>(
    app: &AppState,
    session: &Session,
    content_type: Option<String>,
    filename: Option<String>,
    body: S,
    limit: u64,
) -> Result<Stored>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    let (sha, size) = store_stream(app, body, limit).await?;
    let media_id = new_media_id();
    rows::insert(
        &app.db,
        &Media {
            server_name: app.server_name.to_string(),
            media_id: media_id.clone(),
            user_id: Some(session.user_id.to_string()),
            content_type,
            upload_name: filename,
            size: Some(size as i64),
            sha256: Some(sha.clone()),
            created_ts: app.clock.now_ms(),
            unused_expires_ts: None,
            quarantined: false,
        },
    )
    .await?;
    Ok(Stored {
        mxc: mxc(app, &media_id),
        path: file_path(app, &sha),
        size,
    })
}

/// `POST /_matrix/media/v1/create`: reserves an id to upload to later.
pub async fn create(app: &AppState, session: &Session) -> Result<(String, i64)> {
    let now = app.clock.now_ms();
    if rows::pending_count(&app.db, session.user_id.as_str(), now).await?
        >= app.config.media.max_pending_uploads
    {
        return Err(Error::new(
            ErrorKind::LimitExceeded {
                retry_after_ms: 60_000,
            },
            "Too many pending uploads",
        ));
    }
    let media_id = new_media_id();
    let expires = now + (app.config.media.unused_expiry_secs as i64) * 1000;
    rows::insert(
        &app.db,
        &Media {
            server_name: app.server_name.to_string(),
            media_id: media_id.clone(),
            user_id: Some(session.user_id.to_string()),
            content_type: None,
            upload_name: None,
            size: None,
            sha256: None,
            created_ts: now,
            unused_expires_ts: Some(expires),
            quarantined: false,
        },
    )
    .await?;
    Ok((mxc(app, &media_id), expires))
}

/// `PUT /upload/{serverName}/{mediaId}`: fills an id from `/create`.
pub async fn upload_to<S, E>(
    app: &AppState,
    session: &Session,
    server_name: &str,
    media_id: &str,
    content_type: Option<String>,
    filename: Option<String>,
    body: S,
) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let now = app.clock.now_ms();
    let existing = match server_name == app.server_name.as_str() {
        true => rows::get(&app.db, server_name, media_id).await?,
        false => None,
    };
    let Some(existing) = existing.filter(|m| m.sha256.is_some() || m.unused_expires_ts > Some(now))
    else {
        return Err(Error::not_found("Unknown media id"));
    };
    if existing.user_id.as_deref() != Some(session.user_id.as_str()) {
        return Err(Error::forbidden("This media id belongs to another user"));
    }
    if existing.sha256.is_some() {
        return Err(Error::new(
            ErrorKind::CannotOverwriteMedia,
            "Media already uploaded",
        ));
    }
    let (sha, size) =
        store_stream(app, upload_body(body), app.config.media.max_upload_bytes).await?;
    let filled = rows::fill(
        &app.db,
        &Media {
            content_type,
            upload_name: filename,
            size: Some(size as i64),
            sha256: Some(sha.clone()),
            ..existing
        },
        session.user_id.as_str(),
        now,
    )
    .await?;
    if !filled {
        delete_unused_files(app, &[sha]).await?;
        return Err(Error::new(
            ErrorKind::CannotOverwriteMedia,
            "Media already uploaded",
        ));
    }
    app.media_uploaded.send_modify(|n| *n += 1);
    Ok(())
}
