//! URL previews (`GET /_matrix/client/v1/media/preview_url`): OpenGraph data of
//! a web page, its image stored as media. Off unless `media.url_preview.enabled`.
//!
//! Every hop goes through an [`OutboundClient`] with the `ip_range_blocklist`
//! (loopback, private, link-local and reserved ranges by default) minus
//! `ip_range_allowlist` of `media.url_preview`: IP-literal hosts are checked
//! before connecting, names as they resolve, where the connection is made (no
//! second DNS lookup to rebind). Redirects are followed by hand, at most five,
//! each checked the same way. Bodies stop at `max_bytes` (pages are read into
//! memory to be parsed; images stream into the media store); the whole
//! preview stops at `timeout_secs`. Results are cached for `cache_secs`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{media, session::Session};
use crate::{
    error::{Error, Result},
    outbound::{self, OutboundClient, OutboundError, OutboundPolicy, ReadError},
    service::AppState,
    storage::media as rows,
};

const MAX_REDIRECTS: usize = 5;

/// The client previews fetch with: `media.url_preview`'s address ranges,
/// redirects followed by hand.
fn client(app: &AppState) -> Result<OutboundClient> {
    let cfg = &app.config.media.url_preview;
    OutboundClient::new(
        OutboundPolicy::url_preview(&app.config),
        &outbound::Options {
            connect_timeout: Duration::from_secs(cfg.timeout_secs),
            timeout: Duration::from_secs(cfg.timeout_secs),
            https_only: false,
            extra_ca_files: app.config.extra_ca_files(),
            accept_invalid_certs: false,
            user_agent: "Lattice URL preview".into(),
        },
    )
    .map_err(Error::Internal)
}

pub async fn preview(app: &AppState, session: &Session, url: &str) -> Result<Value> {
    let cfg = &app.config.media.url_preview;
    if !cfg.enabled {
        return Err(Error::unrecognized(http::StatusCode::NOT_FOUND));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid_param(
            "Only http and https URLs are previewed",
        ));
    }
    let now = app.clock.now_ms();
    if let Some(cached) = rows::preview(&app.db, url, now).await? {
        return serde_json::from_str(&cached)
            .map_err(|e| Error::Internal(anyhow::anyhow!("cached preview: {e}")));
    }
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let og = tokio::time::timeout(timeout, build(app, session, parsed))
        .await
        .map_err(|_| {
            Error::new(
                crate::error::ErrorKind::Unknown,
                "Timed out fetching the URL",
            )
        })??;
    rows::put_preview(
        &app.db,
        url,
        &og.to_string(),
        now + (cfg.cache_secs as i64) * 1000,
    )
    .await?;
    Ok(og)
}

async fn build(app: &AppState, session: &Session, url: reqwest::Url) -> Result<Value> {
    let client = client(app)?;
    let (final_url, content_type, response) = fetch(&client, url).await?;
    let mut og = Map::new();
    if content_type.starts_with("image/") {
        add_image(app, session, &content_type, response, &mut og).await?;
        return Ok(Value::Object(og));
    }
    if !content_type.starts_with("text/html") {
        return Ok(Value::Object(og));
    }
    let body = read_page(app, response).await?;
    let html = String::from_utf8_lossy(&body);
    og = open_graph(&html);
    if let Some(image) = og
        .get("og:image")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        og.remove("og:image");
        if let Ok(image_url) = final_url.join(&image)
            && let Ok((_, image_type, response)) = fetch(&client, image_url).await
            && image_type.starts_with("image/")
        {
            // A page's image is optional: one that cannot be had leaves it out.
            match add_image(app, session, &image_type, response, &mut og).await {
                Err(Error::Internal(e)) => return Err(Error::Internal(e)),
                Err(e) => tracing::info!(error = %e, "URL preview image left out"),
                Ok(()) => {}
            }
        }
    }
    Ok(Value::Object(og))
}

fn too_large() -> Error {
    Error::new(
        crate::error::ErrorKind::TooLarge,
        "The URL's content is too large to preview",
    )
}

fn fetch_failed(why: &str) -> Error {
    tracing::info!(why, "URL preview read failed");
    Error::new(crate::error::ErrorKind::Unknown, "Fetching the URL failed")
}

/// Streams an image answer into the media store (at most `url_preview.max_bytes`
/// and `max_upload_bytes`, never held in memory) and describes it in `og`.
async fn add_image(
    app: &AppState,
    session: &Session,
    content_type: &str,
    response: reqwest::Response,
    og: &mut Map<String, Value>,
) -> Result<()> {
    let limit = app
        .config
        .media
        .url_preview
        .max_bytes
        .min(app.config.media.max_upload_bytes);
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let chunks = Box::pin(futures_util::stream::unfold(
        Some(response),
        |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(e) => Some((Err(fetch_failed(&outbound::error_chain(&e))), None)),
            }
        },
    ));
    let stored = media::store_new(
        app,
        session,
        Some(content_type.to_owned()),
        None,
        chunks,
        limit,
    )
    .await
    .map_err(|e| match e.kind() {
        Some(crate::error::ErrorKind::TooLarge) => too_large(),
        _ => e,
    })?;
    // The header is enough for the dimensions.
    let path = stored.path.clone();
    let dims = tokio::task::spawn_blocking(move || {
        image::ImageReader::open(&path)
            .ok()?
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()
    })
    .await
    .ok()
    .flatten();
    og.insert("og:image".into(), stored.mxc.into());
    og.insert("og:image:type".into(), content_type.into());
    og.insert("matrix:image:size".into(), stored.size.into());
    if let Some((w, h)) = dims {
        og.insert("og:image:width".into(), w.into());
        og.insert("og:image:height".into(), h.into());
    }
    Ok(())
}

/// GETs `url`, following redirects by hand, every hop checked against the
/// address ranges. Returns the final URL, content type and the answer, whose
/// body is left to the caller.
async fn fetch(
    client: &OutboundClient,
    url: reqwest::Url,
) -> Result<(reqwest::Url, String, reqwest::Response)> {
    let (url, response) = client
        .get_following(url, MAX_REDIRECTS, None)
        .await
        .map_err(|e| match e {
            OutboundError::Refused(why) => {
                tracing::info!(why, "URL preview refused: address blocked");
                Error::forbidden("IP address blocked")
            }
            OutboundError::Invalid(why) => Error::not_found(format!("Cannot preview: {why}")),
            // The same answer for every network failure (refused, timed out,
            // TLS), so previews do not tell hosts and ports apart.
            OutboundError::Unreachable(why) => {
                tracing::info!(why, "URL preview fetch failed");
                Error::new(crate::error::ErrorKind::Unknown, "Fetching the URL failed")
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::not_found(format!("The URL answered {status}")));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    Ok((url, content_type, response))
}

/// A page's body, at most `url_preview.max_bytes` (it is parsed whole).
async fn read_page(app: &AppState, response: reqwest::Response) -> Result<bytes::Bytes> {
    let limit = usize::try_from(app.config.media.url_preview.max_bytes).unwrap_or(usize::MAX);
    outbound::read_limited(response, limit)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => too_large(),
            ReadError::Failed(why) => fetch_failed(&why),
        })
}

/// `og:*` meta tags of a page (and its `<title>` as `og:title` when it has none).
pub fn open_graph(html: &str) -> Map<String, Value> {
    let mut og = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(found) = lower[at..].find("<meta") {
        let start = at + found;
        let Some(len) = lower[start..].find('>') else {
            break;
        };
        let tag = &html[start..start + len];
        let attrs = attributes(tag);
        let key = attrs
            .iter()
            .find(|(k, _)| k == "property" || k == "name")
            .map(|(_, v)| v.clone());
        let content = attrs
            .iter()
            .find(|(k, _)| k == "content")
            .map(|(_, v)| v.clone());
        if let (Some(key), Some(content)) = (key, content)
            && key.starts_with("og:")
            && !og.contains_key(&key)
        {
            og.insert(key, unescape(&content).into());
        }
        at = start + len;
    }
    if !og.contains_key("og:title")
        && let Some(open) = lower.find("<title")
        && let Some(gt) = lower[open..].find('>')
        && let Some(close) = lower[open + gt..].find("</title")
    {
        let title = html[open + gt + 1..open + gt + close].trim();
        if !title.is_empty() {
            og.insert("og:title".into(), unescape(title).into());
        }
    }
    if !og.contains_key("og:description")
        && let Some(Value::String(d)) = description(&lower, html)
    {
        og.insert("og:description".into(), d.into());
    }
    og
}

fn description(lower: &str, html: &str) -> Option<Value> {
    let mut at = 0;
    while let Some(found) = lower[at..].find("<meta") {
        let start = at + found;
        let len = lower[start..].find('>')?;
        let attrs = attributes(&html[start..start + len]);
        if attrs
            .iter()
            .any(|(k, v)| k == "name" && v.eq_ignore_ascii_case("description"))
        {
            return attrs
                .iter()
                .find(|(k, _)| k == "content")
                .map(|(_, v)| Value::String(unescape(v)));
        }
        at = start + len;
    }
    None
}

/// `key="value"` pairs of a tag (keys lower-cased).
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bytes = tag.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // key
        while i < bytes.len() && !bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let k0 = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b':')
        {
            i += 1;
        }
        let key = tag[k0..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let value = if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
            let quote = bytes[i];
            let v0 = i + 1;
            let end = tag[v0..].find(quote as char).map_or(tag.len(), |e| v0 + e);
            i = end + 1;
            tag[v0..end.min(tag.len())].to_owned()
        } else {
            let v0 = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'/' {
                i += 1;
            }
            tag[v0..i].to_owned()
        };
        out.push((key, value));
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_tags_and_title() {
        let html = r#"<html><head><title>Fallback &amp; co</title>
            <meta property="og:title" content="A &quot;quoted&quot; title">
            <meta name="description" content="About things">
            <META PROPERTY='og:image' CONTENT='/img.png'/>
            </head></html>"#;
        let og = open_graph(html);
        assert_eq!(og["og:title"], "A \"quoted\" title");
        assert_eq!(og["og:image"], "/img.png");
        assert_eq!(og["og:description"], "About things");
        let og = open_graph("<title>Only a title</title>");
        assert_eq!(og["og:title"], "Only a title");
    }
}
