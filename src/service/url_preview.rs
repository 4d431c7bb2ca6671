//! URL previews (`GET /_matrix/client/v1/media/preview_url`): OpenGraph data of
//! a web page, its image stored as media. Off unless `media.url_preview.enabled`.
//!
//! Every hop is checked before connecting: the host is resolved here, each
//! address is tested against `ip_range_blocklist` (loopback, private, link-local
//! and reserved ranges by default) unless `ip_range_allowlist` covers it, and the
//! request then goes to exactly the address checked (no second DNS lookup to
//! rebind). Redirects are followed by hand, at most five, each checked the same
//! way. Bodies stop at `max_bytes`; the whole preview at `timeout_secs`. Results
//! are cached for `cache_secs`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::{Map, Value};

use super::{media, session::Session};
use crate::{
    app::AppState,
    error::{Error, Result},
    storage::{media as rows, now_ms},
};

const MAX_REDIRECTS: usize = 5;

/// An address range, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a: IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is checked as the IPv4 address it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn ranges(list: &[String]) -> Vec<Cidr> {
    list.iter().filter_map(|s| Cidr::parse(s)).collect()
}

/// Whether previews may connect to `ip`.
pub fn ip_allowed(app: &AppState, ip: IpAddr) -> bool {
    let cfg = &app.config.media.url_preview;
    ranges(&cfg.ip_range_allowlist)
        .iter()
        .any(|c| c.contains(ip))
        || !ranges(&cfg.ip_range_blocklist)
            .iter()
            .any(|c| c.contains(ip))
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
    let now = now_ms();
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
    let (final_url, content_type, body) = fetch(app, url).await?;
    let mut og = Map::new();
    if content_type.starts_with("image/") {
        add_image(app, session, &content_type, body, &mut og).await?;
        return Ok(Value::Object(og));
    }
    if !content_type.starts_with("text/html") {
        return Ok(Value::Object(og));
    }
    let html = String::from_utf8_lossy(&body);
    og = open_graph(&html);
    if let Some(image) = og
        .get("og:image")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        og.remove("og:image");
        if let Ok(image_url) = final_url.join(&image)
            && let Ok((_, image_type, bytes)) = fetch(app, image_url).await
            && image_type.starts_with("image/")
        {
            add_image(app, session, &image_type, bytes, &mut og).await?;
        }
    }
    Ok(Value::Object(og))
}

/// Stores an image as media and describes it in `og`.
async fn add_image(
    app: &AppState,
    session: &Session,
    content_type: &str,
    bytes: Vec<u8>,
    og: &mut Map<String, Value>,
) -> Result<()> {
    let size = bytes.len();
    let dims = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
    let uri = media::upload(app, session, Some(content_type.to_owned()), None, stream).await?;
    og.insert("og:image".into(), uri.into());
    og.insert("og:image:type".into(), content_type.into());
    og.insert("matrix:image:size".into(), size.into());
    if let Some((w, h)) = dims {
        og.insert("og:image:width".into(), w.into());
        og.insert("og:image:height".into(), h.into());
    }
    Ok(())
}

/// GETs `url`, following redirects by hand, every hop checked against the
/// address ranges. Returns the final URL, content type and (bounded) body.
async fn fetch(app: &AppState, mut url: reqwest::Url) -> Result<(reqwest::Url, String, Vec<u8>)> {
    let cfg = &app.config.media.url_preview;
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::forbidden("Only http and https URLs are previewed"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::invalid_param("URL without a host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| Error::not_found("Could not resolve the URL's host"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(Error::not_found("Could not resolve the URL's host"));
        }
        if let Some(bad) = addrs.iter().find(|a| !ip_allowed(app, a.ip())) {
            tracing::info!(%url, ip = %bad.ip(), "URL preview refused: address blocked");
            return Err(Error::forbidden("IP address blocked"));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addrs[0])
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .user_agent("Lattice URL preview")
            .build()
            .map_err(|e| anyhow::anyhow!("preview client: {e}"))?;
        let response = client.get(url.clone()).send().await.map_err(|e| {
            Error::new(
                crate::error::ErrorKind::Unknown,
                format!("Fetching the URL failed: {e}"),
            )
        })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| Error::not_found("Redirect without a location"))?;
            url = url
                .join(location)
                .map_err(|_| Error::not_found("Redirect to an invalid URL"))?;
            continue;
        }
        if !status.is_success() {
            return Err(Error::not_found(format!("The URL answered {status}")));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("reading the URL: {e}"))?
        {
            if (body.len() + chunk.len()) as u64 > cfg.max_bytes {
                return Err(Error::new(
                    crate::error::ErrorKind::TooLarge,
                    "The URL's content is too large to preview",
                ));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok((url, content_type, body));
    }
    Err(Error::not_found("Too many redirects"))
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
    fn cidr_matching() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        // IPv4-mapped IPv6 is checked as IPv4.
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        let ula = Cidr::parse("fc00::/7").unwrap();
        assert!(ula.contains("fd12::1".parse().unwrap()));
        assert!(!ula.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

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
