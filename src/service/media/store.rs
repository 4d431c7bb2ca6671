//! The files: each stored once at `<data_dir>/media/<ab>/<cd>/<sha256>`,
//! written through a temporary file that is deleted unless it is placed.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::media as rows,
};

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

pub(super) fn new_media_id() -> String {
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
pub(super) struct TempFile {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    placed: bool,
}

impl TempFile {
    pub(super) async fn create(app: &AppState) -> Result<Self> {
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
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<()> {
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
    pub(super) async fn place(mut self, app: &AppState) -> Result<(String, u64)> {
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
pub(super) async fn store_stream<S, E>(
    app: &AppState,
    mut body: S,
    limit: u64,
) -> Result<(String, u64)>
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
pub(super) fn upload_body<S, E>(body: S) -> impl Stream<Item = Result<Bytes>> + Unpin
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
pub(super) async fn store_bytes(app: &AppState, bytes: &[u8]) -> Result<String> {
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
