//! The content repository over HTTP (spec: "Content repository"): uploads
//! (`/_matrix/media/v3/upload`, async `/_matrix/media/v1/create` +
//! `PUT /upload/{serverName}/{mediaId}`), the authenticated download and
//! thumbnail endpoints (`/_matrix/client/v1/media/...`), the legacy
//! unauthenticated ones behind `media.legacy_unauthenticated`, `/config` and
//! `/preview_url`. Bodies are binary, so these are plain axum routes; downloads
//! stream the file and honour single byte ranges.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{
    auth::{AuthUser, GuestOk},
    rate_limited,
};
use crate::{
    api::json::Query,
    error::{Error, Result},
    service::AppState,
    service::{media, url_preview},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/media/r0/upload", post(upload))
        .route("/_matrix/media/v1/create", post(create))
        .route("/_matrix/media/v3/upload/{server}/{id}", put(upload_to))
        .route("/_matrix/client/v1/media/config", get(config))
        .route("/_matrix/media/v3/config", get(config))
        .route(
            "/_matrix/client/v1/media/download/{server}/{id}",
            get(download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server}/{id}/{filename}",
            get(download_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server}/{id}",
            get(thumbnail),
        )
        .route("/_matrix/client/v1/media/preview_url", get(preview_url))
        .route("/_matrix/media/v3/preview_url", get(preview_url))
        .route(
            "/_matrix/media/v3/download/{server}/{id}",
            get(legacy_download),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{id}/{filename}",
            get(legacy_download_named),
        )
        .route(
            "/_matrix/media/v3/thumbnail/{server}/{id}",
            get(legacy_thumbnail),
        )
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn upload(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    let uri = media::upload(
        &app,
        &session,
        content_type(&headers),
        q.filename,
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(json!({ "content_uri": uri })))
}

async fn create(State(app): State<AppState>, AuthUser(session): AuthUser) -> Result<Json<Value>> {
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    let (uri, expires) = media::create(&app, &session).await?;
    Ok(Json(
        json!({ "content_uri": uri, "unused_expires_at": expires }),
    ))
}

async fn upload_to(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    media::upload_to(
        &app,
        &session,
        &server,
        &id,
        content_type(&headers),
        q.filename,
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(json!({})))
}

async fn config(State(app): State<AppState>, AuthUser(_): AuthUser) -> Json<Value> {
    Json(json!({ "m.upload.size": app.config.media.max_upload_bytes }))
}

#[derive(Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
}

fn wait_of(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(20_000))
}

async fn download(
    State(app): State<AppState>,
    GuestOk(_): GuestOk,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_media(&app, &server, &id, None, q.timeout_ms, &headers).await
}

async fn download_named(
    State(app): State<AppState>,
    GuestOk(_): GuestOk,
    Path((server, id, filename)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_media(&app, &server, &id, Some(filename), q.timeout_ms, &headers).await
}

fn legacy_allowed(app: &AppState) -> Result<()> {
    if app.config.media.legacy_unauthenticated {
        Ok(())
    } else {
        // As Synapse with authenticated media: the unauthenticated endpoints
        // find nothing; clients use /_matrix/client/v1/media.
        Err(Error::not_found("Not found"))
    }
}

async fn legacy_download(
    State(app): State<AppState>,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    legacy_allowed(&app)?;
    serve_media(&app, &server, &id, None, q.timeout_ms, &headers).await
}

async fn legacy_download_named(
    State(app): State<AppState>,
    Path((server, id, filename)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    legacy_allowed(&app)?;
    serve_media(&app, &server, &id, Some(filename), q.timeout_ms, &headers).await
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: Option<u32>,
    height: Option<u32>,
    method: Option<String>,
    timeout_ms: Option<u64>,
}

async fn thumbnail(
    State(app): State<AppState>,
    GuestOk(_): GuestOk,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_thumbnail(&app, &server, &id, q, &headers).await
}

async fn legacy_thumbnail(
    State(app): State<AppState>,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    legacy_allowed(&app)?;
    serve_thumbnail(&app, &server, &id, q, &headers).await
}

async fn serve_thumbnail(
    app: &AppState,
    server: &str,
    id: &str,
    q: ThumbnailQuery,
    headers: &HeaderMap,
) -> Result<Response> {
    let (Some(width), Some(height)) = (q.width, q.height) else {
        return Err(Error::new(
            crate::error::ErrorKind::MissingParam,
            "width and height are required",
        ));
    };
    let method = q.method.as_deref().unwrap_or("scale");
    let (content_type, path, size) = media::thumbnail(
        app,
        server,
        id,
        width,
        height,
        method,
        wait_of(q.timeout_ms),
    )
    .await?;
    stream_file(&path, size, &content_type, None, headers).await
}

async fn serve_media(
    app: &AppState,
    server: &str,
    id: &str,
    filename: Option<String>,
    timeout_ms: Option<u64>,
    headers: &HeaderMap,
) -> Result<Response> {
    let (row, path) = media::find(app, server, id, wait_of(timeout_ms)).await?;
    let content_type = row
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let name = filename.or(row.upload_name.clone());
    let disposition = disposition(&content_type, name.as_deref());
    stream_file(
        &path,
        row.size.unwrap_or(0) as u64,
        &content_type,
        Some(disposition),
        headers,
    )
    .await
}

/// `Content-Disposition`: inline only for types browsers render safely.
pub(crate) fn disposition(content_type: &str, name: Option<&str>) -> String {
    let kind = if media::is_inline(content_type) {
        "inline"
    } else {
        "attachment"
    };
    match name {
        None => kind.to_owned(),
        Some(name) => {
            let safe = name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != ';')
                || name.chars().all(|c| c == ' ' || c.is_ascii_alphanumeric());
            if safe {
                format!("{kind}; filename=\"{name}\"")
            } else {
                let encoded: String =
                    form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>();
                format!("{kind}; filename*=utf-8''{}", encoded.replace('+', "%20"))
            }
        }
    }
}

/// A single `bytes=` range of a body of `size` bytes: `Ok(None)` for the whole
/// body, `Err` when unsatisfiable.
fn parse_range(
    header: Option<&HeaderValue>,
    size: u64,
) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: serve the whole body, as many servers do.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start > end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn stream_file(
    path: &std::path::Path,
    size: u64,
    content_type: &str,
    disposition: Option<String>,
    request: &HeaderMap,
) -> Result<Response> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let range = match parse_range(request.get(header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| anyhow::anyhow!("seeking {}: {e}", path.display()))?;
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), 256 * 1024));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| anyhow::anyhow!("header: {e}"));
    h.insert(header::CONTENT_TYPE, value(content_type)?);
    h.insert(header::CONTENT_LENGTH, value(&len.to_string())?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((start, end)) = range {
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{end}/{size}"))?,
        );
    }
    if let Some(d) = disposition {
        h.insert(header::CONTENT_DISPOSITION, value(&d)?);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct PreviewQuery {
    url: String,
    ts: Option<i64>,
}

async fn preview_url(
    State(app): State<AppState>,
    AuthUser(session): AuthUser,
    Query(q): Query<PreviewQuery>,
) -> Result<Json<Value>> {
    rate_limited(app.client_limiter.check(session.user_id.as_str()))?;
    let _ = q.ts;
    Ok(Json(url_preview::preview(&app, &session, &q.url).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), size)
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=5-1", 100), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            disposition("image/png", Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(disposition("text/html", None), "attachment");
        assert_eq!(
            disposition("text/plain", Some("naïve file.txt")),
            "inline; filename*=utf-8''na%C3%AFve%20file.txt"
        );
    }
}
