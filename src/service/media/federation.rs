//! Media over federation: remote media fetched from its server (one fetch per
//! item at a time, streamed to disk under the size limit and a deadline) and
//! cached; and the multipart frame local media is served to other servers in.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use super::store::{TempFile, delete_unused_files, file_path, new_media_id};
use crate::{
    domain::multipart,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{media as rows, media::Media},
};

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
    rows::touch(&app.db, server_name, media_id, app.clock.now_ms()).await?;
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
pub(super) async fn find_remote(
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
        created_ts: app.clock.now_ms(),
        unused_expires_ts: None,
        quarantined: false,
    };
    if let Err(e) = rows::upsert_remote(&app.db, &media).await {
        // No row, no file (unless another row uses the same bytes).
        let _ = delete_unused_files(app, std::slice::from_ref(&sha)).await;
        return Err(e.into());
    }
    rows::touch(&app.db, server_name, media_id, app.clock.now_ms()).await?;
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
