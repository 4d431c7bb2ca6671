//! The media repository (spec: "Content repository"): uploads (direct and
//! async via `/create`), downloads, thumbnails.
//!
//! Bytes are streamed to a temporary file while their SHA-256 is computed, then
//! renamed to `<data_dir>/media/<ab>/<cd>/<sha256>`; identical uploads share one
//! file. Rows in `media` map each `mxc://` id to its file; a file is deleted when
//! no row uses it any more. Remote media takes the same way in: its federation
//! answer is parsed as it arrives and the media written out under the upload
//! limit and a deadline (see `find_remote`).
//!
//! Thumbnails use the standard sizes Synapse serves (32×32 and 96×96 cropped,
//! 320×240, 640×480 and 800×600 scaled), picked as the smallest at least as big
//! as asked, generated on first request in a blocking task and cached as files
//! of their own. An image is only decoded if its header declares at most
//! `media.max_image_pixels` and at most [`MAX_DIMENSION`] a side, and decoding
//! runs under the `image` crate's allocation limit (4 bytes per allowed pixel),
//! so a decompression bomb costs a header read. Downscaling samples straight
//! into the thumbnail (no full-size intermediate), and at most one thumbnail
//! per core is made at once (`AppState::thumbnailing`), so the memory thumbnails
//! can take is bounded whatever the requests.

use std::{
    collections::HashMap,
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::session::Session;
use crate::{
    domain::multipart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{media as rows, media::Media, now_ms},
};

/// (width, height, method) of the thumbnails served.
const SIZES: [(u32, u32, &str); 5] = [
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
    (800, 600, "scale"),
];

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

fn media_root(app: &AppState) -> PathBuf {
    app.config.data_dir.join("media")
}

/// Where the file with this hash lives.
pub fn file_path(app: &AppState, sha256: &str) -> PathBuf {
    media_root(app)
        .join(&sha256[0..2])
        .join(&sha256[2..4])
        .join(sha256)
}

fn new_media_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A file being written under `<media>/tmp`, its SHA-256 and size kept as it
/// grows. Dropped before [`TempFile::place`] (an error, a limit passed, a
/// deadline, a request cancelled mid-way) it is deleted, so a partial write
/// never stays behind.
struct TempFile {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    placed: bool,
}

impl TempFile {
    async fn create(app: &AppState) -> Result<Self> {
        let tmp_dir = media_root(app).join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp_dir.display()))?;
        let path = tmp_dir.join(new_media_id());
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        Ok(Self {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
            placed: false,
        })
    }

    /// Bytes written so far.
    fn size(&self) -> u64 {
        self.size
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))?;
        Ok(())
    }

    /// Moves the finished file to its content address (or drops it when the
    /// same bytes are stored already); returns (sha256, size).
    async fn place(mut self, app: &AppState) -> Result<(String, u64)> {
        self.file
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))?;
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        place(app, &self.path, &sha).await?;
        self.placed = true;
        Ok((sha, self.size))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            // Synchronous, so it happens even when the task is being cancelled.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams `body` into the store; returns (sha256, size). Refuses with
/// `413 M_TOO_LARGE` as soon as the body passes `limit`, keeping nothing.
async fn store_stream<S, E>(app: &AppState, mut body: S, limit: u64) -> Result<(String, u64)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    Error: From<E>,
{
    let mut file = TempFile::create(app).await?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if file.size() + chunk.len() as u64 > limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("Uploads are limited to {limit} bytes"),
            ));
        }
        file.write(&chunk).await?;
    }
    file.place(app).await
}

/// An upload body's chunks, a read failure as `400`.
fn upload_body<S, E>(body: S) -> impl Stream<Item = Result<Bytes>> + Unpin
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    body.map(|chunk| chunk.map_err(|e| Error::bad_json(format!("Reading the upload: {e}"))))
}

/// Moves a finished temporary file to its content address (or drops it when the
/// same bytes are stored already).
async fn place(app: &AppState, tmp: &Path, sha: &str) -> Result<()> {
    let target = file_path(app, sha);
    if tokio::fs::try_exists(&target).await.unwrap_or(false) {
        let _ = tokio::fs::remove_file(tmp).await;
        return Ok(());
    }
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    tokio::fs::rename(tmp, &target)
        .await
        .map_err(|e| anyhow::anyhow!("storing {}: {e}", target.display()))?;
    Ok(())
}

/// Stores bytes already in memory (thumbnails).
async fn store_bytes(app: &AppState, bytes: &[u8]) -> Result<String> {
    let mut file = TempFile::create(app).await?;
    file.write(bytes).await?;
    Ok(file.place(app).await?.0)
}

/// Deletes files no row uses any more.
/// Long runs (a user's whole upload history, a large expired cache) log a
/// progress line every `PROGRESS_EVERY` files.
pub async fn delete_unused_files(app: &AppState, hashes: &[String]) -> Result<usize> {
    const PROGRESS_EVERY: usize = 1000;
    let mut deleted = 0;
    for (i, sha) in hashes.iter().enumerate() {
        if !rows::file_in_use(&app.db, sha).await? {
            let _ = tokio::fs::remove_file(file_path(app, sha)).await;
            deleted += 1;
        }
        if (i + 1) % PROGRESS_EVERY == 0 {
            tracing::info!(
                "media files: {}/{} checked, {deleted} deleted",
                i + 1,
                hashes.len()
            );
        }
    }
    Ok(deleted)
}

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
            created_ts: now_ms(),
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
    let now = now_ms();
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
    let now = now_ms();
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
            rows::touch(&app.db, server_name, media_id, now_ms()).await?;
            return Ok((media, path));
        }
        if media.unused_expires_ts <= Some(now_ms()) {
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

/// The largest JSON metadata part of a federation media answer (spec: "currently
/// always an empty object").
const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// The largest header block of a part of a federation media answer.
const MAX_PART_HEAD: usize = 16 * 1024;
/// The largest preamble of a federation media answer.
const MAX_PREAMBLE: usize = 64 * 1024;

/// Remote media fetches in progress, one per item at a time (as Synapse's
/// linearizer): a request for an item being fetched waits for that fetch and
/// then finds the copy it cached, instead of downloading it again.
#[derive(Default)]
pub struct RemoteFetches {
    /// (server name, media id) → the item's turn.
    items: std::sync::Mutex<HashMap<(String, String), Turn>>,
}

/// Held by the request fetching an item; the others wait for it.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// A request's place in the queue for one item; its entry goes when the last
/// request for the item is done with it.
struct FetchSlot<'a> {
    fetches: &'a RemoteFetches,
    key: (String, String),
    turn: Turn,
}

impl RemoteFetches {
    fn slot(&self, server_name: &str, media_id: &str) -> FetchSlot<'_> {
        let key = (server_name.to_owned(), media_id.to_owned());
        let turn = self
            .items
            .lock()
            .expect("remote fetches")
            .entry(key.clone())
            .or_default()
            .clone();
        FetchSlot {
            fetches: self,
            key,
            turn,
        }
    }

    /// Items with a fetch running or waited for.
    pub fn len(&self) -> usize {
        self.items.lock().expect("remote fetches").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for FetchSlot<'_> {
    fn drop(&mut self) {
        let mut items = self.fetches.items.lock().expect("remote fetches");
        // Clones are only taken under this lock: two references (the map's and
        // ours) mean nobody else waits for the item.
        if Arc::strong_count(&self.turn) == 2 {
            items.remove(&self.key);
        }
    }
}

/// The cached copy of a remote item, if there is one (an error if quarantined).
async fn cached_remote(
    app: &AppState,
    server_name: &str,
    media_id: &str,
) -> Result<Option<(Media, PathBuf)>> {
    let Some(media) = rows::get(&app.db, server_name, media_id).await? else {
        return Ok(None);
    };
    if media.quarantined {
        return Err(Error::not_found("Media not found"));
    }
    let Some(sha) = &media.sha256 else {
        return Ok(None);
    };
    let path = file_path(app, sha);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(None);
    }
    rows::touch(&app.db, server_name, media_id, now_ms()).await?;
    Ok(Some((media, path)))
}

/// Remote media: the cached copy, or fetched from its server over federation
/// (`/_matrix/federation/v1/media/download`, following a `Location` part) and
/// cached, at most `media.max_upload_bytes`.
///
/// The answer is streamed: the multipart body is parsed as it arrives and the
/// media written to a temporary file in the store, hashed as it goes, then
/// renamed into place and recorded; only a complete copy within the limit is
/// kept (anything else leaves no file and no row). A copy over the limit is
/// refused (`502 M_TOO_LARGE`, as Synapse) the moment it passes it, and the
/// whole fetch (waiting for another request's fetch of the item included)
/// stops at `media.remote_fetch_timeout_secs`. No database connection is held
/// while the network is read.
async fn find_remote(
    app: &AppState,
    server_name: &str,
    media_id: &str,
) -> Result<(Media, PathBuf)> {
    let not_found = || Error::not_found("Media not found");
    if let Some(found) = cached_remote(app, server_name, media_id).await? {
        return Ok(found);
    }
    if !app.config.federation.enabled
        || media_id.is_empty()
        || !media_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(not_found());
    }
    let server = ruma::ServerName::parse(server_name).map_err(|_| not_found())?;
    let timeout = Duration::from_secs(app.config.media.remote_fetch_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || {
        tracing::info!(%server_name, media_id, "remote media fetch timed out");
        Error::new(
            ErrorKind::BadGateway,
            format!("The media's server did not provide it within {timeout:?}"),
        )
    };
    let slot = app.remote_fetches.slot(server_name, media_id);
    let _turn = tokio::time::timeout_at(deadline, slot.turn.lock())
        .await
        .map_err(|_| timed_out())?;
    // Fetched by a request this one waited for?
    if let Some(found) = cached_remote(app, server_name, media_id).await? {
        return Ok(found);
    }
    let fetched = tokio::time::timeout_at(deadline, fetch_remote(app, &server, media_id, deadline))
        .await
        .map_err(|_| timed_out())??;
    let (sha, size) = fetched.file.place(app).await?;
    let media = Media {
        server_name: server_name.to_owned(),
        media_id: media_id.to_owned(),
        user_id: None,
        content_type: Some(fetched.content_type),
        upload_name: fetched.disposition.as_deref().and_then(filename_of),
        size: Some(size as i64),
        sha256: Some(sha.clone()),
        created_ts: now_ms(),
        unused_expires_ts: None,
        quarantined: false,
    };
    if let Err(e) = rows::upsert_remote(&app.db, &media).await {
        // No row, no file (unless another row uses the same bytes).
        let _ = delete_unused_files(app, std::slice::from_ref(&sha)).await;
        return Err(e.into());
    }
    rows::touch(&app.db, server_name, media_id, now_ms()).await?;
    Ok((media, file_path(app, &sha)))
}

/// A remote item downloaded into a temporary file, not yet placed.
struct Fetched {
    file: TempFile,
    content_type: String,
    disposition: Option<String>,
}

/// The time left until `deadline`.
fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

fn bad_answer(why: &str) -> Error {
    Error::new(
        ErrorKind::BadGateway,
        format!("The media's server answered badly: {why}"),
    )
}

fn remote_too_large(limit: u64) -> Error {
    Error::new(
        ErrorKind::RemoteTooLarge,
        format!("The remote media is larger than this server's limit of {limit} bytes"),
    )
}

fn read_failed(e: &reqwest::Error) -> Error {
    Error::new(
        ErrorKind::BadGateway,
        format!(
            "The media's server could not provide it: {}",
            crate::outbound::error_chain(e)
        ),
    )
}

fn header_of(response: &reqwest::Response, name: http::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Downloads `media_id` from `server` into a temporary file: the multipart
/// answer parsed as it arrives (the metadata part skipped, the media part
/// written out), or the URL of its `Location` part fetched.
async fn fetch_remote(
    app: &AppState,
    server: &ruma::ServerName,
    media_id: &str,
    deadline: tokio::time::Instant,
) -> Result<Fetched> {
    use multipart::Event;

    let limit = app.config.media.max_upload_bytes;
    let path = format!("/_matrix/federation/v1/media/download/{media_id}?timeout_ms=20000");
    let mut response = match app
        .federation
        .get_streaming(server, &path, remaining(deadline))
        .await
    {
        Ok(response) => response,
        Err(e) if e.is_not_found() => return Err(Error::not_found("Media not found")),
        Err(e) => {
            tracing::info!(%server, media_id, error = %e, "remote media fetch failed");
            return Err(Error::new(
                ErrorKind::BadGateway,
                format!("The media's server could not provide it: {e}"),
            ));
        }
    };
    // What the parts other than the media may take, at most.
    let overhead = MAX_METADATA_BYTES + (MAX_PREAMBLE + 2 * MAX_PART_HEAD) as u64 + 1024;
    if response
        .content_length()
        .is_some_and(|l| l > limit.saturating_add(overhead))
    {
        return Err(remote_too_large(limit));
    }
    let content_type = header_of(&response, http::header::CONTENT_TYPE).unwrap_or_default();
    let boundary = multipart::boundary(&content_type).ok_or_else(|| bad_answer("not multipart"))?;
    let mut parser = multipart::Parser::new(
        &boundary,
        multipart::Limits {
            parts: vec![MAX_METADATA_BYTES, limit],
            head: MAX_PART_HEAD,
            preamble: MAX_PREAMBLE,
        },
    )
    .map_err(|e| bad_answer(&e.to_string()))?;
    let refused = |e: multipart::MultipartError| match e {
        multipart::MultipartError::PartTooLarge { index: 1, .. } => remote_too_large(limit),
        other => bad_answer(&other.to_string()),
    };
    let mut file = TempFile::create(app).await?;
    let mut media_headers = None;
    let mut location = None;
    'read: while !parser.is_done() {
        let Some(chunk) = response.chunk().await.map_err(|e| read_failed(&e))? else {
            parser.finish().map_err(refused)?;
            break;
        };
        for event in parser.feed(&chunk).map_err(refused)? {
            match event {
                Event::Part { index: 1, headers } => {
                    if let Some(url) = multipart::header(&headers, "location") {
                        // The rest of the answer is of no use.
                        location = Some(url.to_owned());
                        break 'read;
                    }
                    media_headers = Some(headers);
                }
                Event::Body { index: 1, bytes } => file.write(&bytes).await?,
                _ => {}
            }
        }
    }
    drop(response);
    if let Some(url) = location {
        return fetch_location(app, file, &url, limit, deadline).await;
    }
    let headers = media_headers.ok_or_else(|| bad_answer("no media part"))?;
    Ok(Fetched {
        file,
        content_type: multipart::header(&headers, "content-type")
            .unwrap_or("application/octet-stream")
            .to_owned(),
        disposition: multipart::header(&headers, "content-disposition").map(str::to_owned),
    })
}

/// The `Location` form: the media at a URL the remote server gave, fetched
/// through the outbound policy (every redirect hop checked) into `file`.
async fn fetch_location(
    app: &AppState,
    mut file: TempFile,
    url: &str,
    limit: u64,
    deadline: tokio::time::Instant,
) -> Result<Fetched> {
    let mut response = app
        .federation
        .get_url_streaming(url, remaining(deadline))
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "remote media Location fetch failed");
            bad_answer(&e.to_string())
        })?;
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(remote_too_large(limit));
    }
    let content_type = header_of(&response, http::header::CONTENT_TYPE)
        .unwrap_or_else(|| "application/octet-stream".into());
    let disposition = header_of(&response, http::header::CONTENT_DISPOSITION);
    while let Some(chunk) = response.chunk().await.map_err(|e| read_failed(&e))? {
        if file.size() + chunk.len() as u64 > limit {
            return Err(remote_too_large(limit));
        }
        file.write(&chunk).await?;
    }
    Ok(Fetched {
        file,
        content_type,
        disposition,
    })
}

/// The file name of a `Content-Disposition` header (`filename=` or `filename*=`).
fn filename_of(disposition: &str) -> Option<String> {
    disposition.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "filename" => Some(v.trim().trim_matches('"').to_owned()),
            "filename*" => {
                let encoded = v.trim().split_once("''").map_or(v.trim(), |(_, e)| e);
                percent_decode(encoded)
            }
            _ => None,
        }
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A local item as a federation media answer: `multipart/mixed` with empty
/// JSON metadata, then the bytes, which go between the two pieces returned, so
/// the file can be streamed. Returns (content type, before, after).
pub fn federation_frame(content_type: &str, disposition: &str) -> (String, Vec<u8>, Vec<u8>) {
    let boundary = new_media_id();
    let mut whole = multipart::build(
        &boundary,
        &[
            (
                vec![("Content-Type".into(), "application/json".into())],
                b"{}",
            ),
            (
                vec![
                    ("Content-Type".into(), content_type.to_owned()),
                    ("Content-Disposition".into(), disposition.to_owned()),
                ],
                b"",
            ),
        ],
    );
    // The empty media part sits right before the line break that ends it.
    let after = whole.split_off(whole.len() - format!("\r\n--{boundary}--\r\n").len());
    (
        format!("multipart/mixed; boundary={boundary}"),
        whole,
        after,
    )
}

/// The standard size to serve for a request.
fn pick_size(width: u32, height: u32, method: &str) -> (u32, u32, &'static str) {
    let want_crop = method == "crop";
    let candidates: Vec<(u32, u32, &str)> = SIZES
        .iter()
        .copied()
        .filter(|(_, _, m)| (*m == "crop") == want_crop)
        .collect();
    candidates
        .iter()
        .copied()
        .find(|(w, h, _)| *w >= width && *h >= height)
        .unwrap_or_else(|| *candidates.last().expect("sizes"))
}

/// A thumbnail: (content type, file path, size).
pub async fn thumbnail(
    app: &AppState,
    server_name: &str,
    media_id: &str,
    width: u32,
    height: u32,
    method: &str,
    wait: Duration,
) -> Result<(String, PathBuf, u64)> {
    if width == 0 || height == 0 {
        return Err(Error::invalid_param("width and height must be positive"));
    }
    if method != "crop" && method != "scale" {
        return Err(Error::invalid_param("method must be crop or scale"));
    }
    let (media, source) = find(app, server_name, media_id, wait).await?;
    let (w, h, method) = pick_size(width, height, method);
    if let Some(t) = rows::thumbnail(
        &app.db,
        server_name,
        media_id,
        w as i32,
        h as i32,
        method,
        false,
    )
    .await?
    {
        return Ok((t.content_type, file_path(app, &t.sha256), t.size as u64));
    }
    let content_type = media.content_type.clone().unwrap_or_default();
    if !content_type.starts_with("image/") || content_type.starts_with("image/svg") {
        return Err(Error::not_found("No thumbnail for this media"));
    }
    let max_pixels = app.config.media.max_image_pixels;
    // Held while the source is in memory and being decoded.
    let _permit = app
        .thumbnailing
        .acquire()
        .await
        .map_err(|e| anyhow::anyhow!("thumbnail semaphore closed: {e}"))?;
    let bytes = tokio::fs::read(&source)
        .await
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", source.display()))?;
    let method_owned = method.to_owned();
    let made = tokio::task::spawn_blocking(move || {
        make_thumbnail(&bytes, w, h, &method_owned, max_pixels)
    })
    .await
    .map_err(|e| anyhow::anyhow!("thumbnail task: {e}"))?;
    let (out, out_type) = match made {
        Ok(made) => made,
        Err(reason) => {
            tracing::info!(media_id, "no thumbnail: {reason}");
            return Err(Error::not_found("No thumbnail for this media"));
        }
    };
    let sha = store_bytes(app, &out).await?;
    rows::insert_thumbnail(
        &app.db,
        server_name,
        media_id,
        &rows::Thumbnail {
            width: w as i32,
            height: h as i32,
            method: method.to_owned(),
            animated: false,
            content_type: out_type.to_owned(),
            size: out.len() as i64,
            sha256: sha.clone(),
        },
    )
    .await?;
    Ok((out_type.to_owned(), file_path(app, &sha), out.len() as u64))
}

/// The largest width or height decoded for a thumbnail, whatever the pixel count.
pub const MAX_DIMENSION: u32 = 16_384;

/// Decodes (within limits) and resizes; returns the encoded thumbnail and its type.
pub fn make_thumbnail(
    bytes: &[u8],
    width: u32,
    height: u32,
    method: &str,
    max_pixels: u64,
) -> std::result::Result<(Vec<u8>, &'static str), String> {
    use image::{ImageFormat, ImageReader};

    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("unknown image format")?;
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| e.to_string())?;
    if w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(format!("{w}x{h} is wider or taller than {MAX_DIMENSION}"));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("{w}x{h} is more than {max_pixels} pixels"));
    }
    // The limits bind the decoder itself: what the header declares is checked
    // again there, and every buffer it allocates counts against `max_alloc`. The
    // decoded frame may take 4 bytes per allowed pixel (8-bit RGBA); deeper
    // images of the largest sizes are refused rather than decoded.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let thumb = if method == "crop" {
        crop_to(&image, width, height)
    } else if w <= width && h <= height {
        image
    } else {
        // Integer area sampling straight into the thumbnail: no intermediate of
        // the source's size (a filtered resize keeps one in f32, 16 bytes a pixel).
        image.thumbnail(width, height)
    };
    let (out_format, out_type) = if format == ImageFormat::Jpeg {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let thumb = if out_format == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(thumb.to_rgb8())
    } else {
        thumb
    };
    let mut out = Cursor::new(Vec::new());
    thumb
        .write_to(&mut out, out_format)
        .map_err(|e| e.to_string())?;
    Ok((out.into_inner(), out_type))
}

/// Scales to cover `width`×`height` and cuts out the middle. Shrinking samples
/// straight into the scaled size; enlarging (a small source) filters.
fn crop_to(image: &image::DynamicImage, width: u32, height: u32) -> image::DynamicImage {
    let (w, h) = (image.width().max(1), image.height().max(1));
    let ratio = f64::max(
        f64::from(width) / f64::from(w),
        f64::from(height) / f64::from(h),
    );
    let sw = ((f64::from(w) * ratio).round() as u32).max(width);
    let sh = ((f64::from(h) * ratio).round() as u32).max(height);
    let scaled = if ratio < 1.0 {
        image.thumbnail_exact(sw, sh)
    } else {
        image.resize_exact(sw, sh, image::imageops::FilterType::Triangle)
    };
    scaled.crop_imm((sw - width) / 2, (sh - height) / 2, width, height)
}

/// Deletes every upload of a user (and files no one else uses); returns the
/// media ids deleted.
pub async fn purge_user(app: &AppState, user_id: &str) -> Result<Vec<String>> {
    let (ids, hashes) = rows::delete_by_user(&app.db, user_id).await?;
    delete_unused_files(app, &hashes).await?;
    Ok(ids)
}

/// Quarantines every local media item a room's events refer to; returns how
/// many there were.
pub async fn quarantine_room(app: &AppState, room_id: &str) -> Result<u64> {
    let prefix = format!("mxc://{}/", app.server_name);
    let mut ids = std::collections::BTreeSet::new();
    for json in rows::room_events_mentioning(&app.db, room_id, &prefix).await? {
        let mut rest = json.as_str();
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let id: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if !id.is_empty() {
                ids.insert(id);
            }
            rest = after;
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();
    Ok(rows::quarantine_many(&app.db, app.server_name.as_str(), &ids).await?)
}

/// Quarantines (or releases) one item: it is no longer served.
pub async fn quarantine(app: &AppState, mxc_uri: &str, quarantined: bool) -> Result<()> {
    let (server, id) = mxc_uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| Error::invalid_param("Not an mxc:// URI"))?;
    if !rows::set_quarantined(&app.db, server, id, quarantined).await? {
        return Err(Error::not_found("Media not found"));
    }
    Ok(())
}

/// Background clean-up: lapsed `/create` ids, expired URL previews, and cached
/// remote media unread for `media.remote_cache_days` (with their files, when
/// nothing else uses them).
pub async fn collect_garbage(app: &AppState) -> Result<(u64, u64)> {
    let now = now_ms();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn standard_sizes_are_picked_upwards() {
        assert_eq!(pick_size(30, 30, "crop"), (32, 32, "crop"));
        assert_eq!(pick_size(50, 50, "crop"), (96, 96, "crop"));
        assert_eq!(pick_size(500, 500, "crop"), (96, 96, "crop"));
        assert_eq!(pick_size(300, 200, "scale"), (320, 240, "scale"));
        assert_eq!(pick_size(5000, 5000, "scale"), (800, 600, "scale"));
    }

    #[test]
    fn crop_and_scale_dimensions() {
        let source = png(1000, 500);
        let (out, kind) = make_thumbnail(&source, 96, 96, "crop", 1 << 30).unwrap();
        assert_eq!(kind, "image/png");
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (96, 96));
        let (out, _) = make_thumbnail(&source, 320, 240, "scale", 1 << 30).unwrap();
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (320, 160));
    }

    #[test]
    fn oversized_images_are_not_decoded() {
        let source = png(3000, 3000);
        let err = make_thumbnail(&source, 96, 96, "crop", 1_000_000).unwrap_err();
        assert!(err.contains("pixels"), "{err}");
    }

    #[test]
    fn the_decoder_is_held_to_the_memory_budget() {
        // 1000x1000 is within a 1 M pixel limit, but 16-bit RGBA needs 8 MB to
        // decode, twice the 4 bytes a pixel allowed: refused, not decoded.
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
            1000,
            1000,
            image::Rgba([1, 2, 3, 4]),
        );
        let mut deep = Cursor::new(Vec::new());
        img.write_to(&mut deep, image::ImageFormat::Png).unwrap();
        let err = make_thumbnail(deep.get_ref(), 96, 96, "crop", 1_000_000).unwrap_err();
        assert!(err.to_lowercase().contains("limit"), "{err}");
        // The same picture in 8-bit RGB fits.
        assert!(make_thumbnail(&png(1000, 1000), 96, 96, "crop", 1_000_000).is_ok());
    }

    #[test]
    fn overlong_sides_are_not_decoded() {
        // Few pixels, but a side past MAX_DIMENSION.
        let source = png(MAX_DIMENSION + 1, 1);
        let err = make_thumbnail(&source, 96, 96, "scale", 1 << 30).unwrap_err();
        assert!(err.contains("wider or taller"), "{err}");
    }

    #[test]
    fn crop_covers_then_cuts() {
        for (w, h) in [(1000, 500), (500, 1000), (40, 10), (96, 96), (97, 3000)] {
            let (out, _) = make_thumbnail(&png(w, h), 96, 96, "crop", 1 << 30).unwrap();
            let img = image::load_from_memory(&out).unwrap();
            assert_eq!((img.width(), img.height()), (96, 96), "{w}x{h}");
        }
    }

    #[test]
    fn inline_types() {
        assert!(is_inline("image/png"));
        assert!(is_inline("text/plain; charset=utf-8"));
        assert!(!is_inline("text/html"));
        assert!(!is_inline("image/svg+xml"));
    }
}
