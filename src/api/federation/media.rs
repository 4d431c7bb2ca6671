//! Our media for other servers (spec v1.11): `GET /_matrix/federation/v1/media/
//! download/{mediaId}` and `…/thumbnail/{mediaId}`, answered `multipart/mixed`
//! (empty JSON metadata, then the bytes).

use std::time::Duration;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::api::json::Query;

use super::FedRequest;
use crate::{error::Result, service::AppState, service::media};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/media/download/{id}", get(download))
        .route(
            "/_matrix/federation/v1/media/thumbnail/{id}",
            get(thumbnail),
        )
}

#[derive(Deserialize)]
struct Wait {
    timeout_ms: Option<u64>,
}

fn wait(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(20_000).min(120_000))
}

/// The file as a federation media answer, streamed from disk (never read
/// into memory whole).
async fn multipart(
    content_type: &str,
    name: Option<&str>,
    path: &std::path::Path,
) -> Result<Response> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        .len();
    let disposition = crate::api::media::disposition(content_type, name);
    let (kind, before, after) = media::federation_frame(content_type, &disposition);
    let total = before.len() as u64 + len + after.len() as u64;
    let body = futures_util::stream::iter([Ok(Bytes::from(before))])
        .chain(ReaderStream::new(file))
        .chain(futures_util::stream::iter([Ok(Bytes::from(after))]));
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_LENGTH, total.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn download(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Wait>,
    _fed: FedRequest,
) -> Result<Response> {
    let (row, path) = media::find(&app, app.server_name.as_str(), &id, wait(q.timeout_ms)).await?;
    let content_type = row
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    multipart(&content_type, row.upload_name.as_deref(), &path).await
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    timeout_ms: Option<u64>,
}

async fn thumbnail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ThumbnailQuery>,
    _fed: FedRequest,
) -> Result<Response> {
    let method = q.method.as_deref().unwrap_or("scale");
    let (content_type, path, _) = media::thumbnail(
        &app,
        app.server_name.as_str(),
        &id,
        q.width,
        q.height,
        method,
        wait(q.timeout_ms),
    )
    .await?;
    multipart(&content_type, None, &path).await
}
