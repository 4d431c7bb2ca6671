//! `multipart/mixed` bodies, as federation media downloads use them (spec
//! "Content repository", `/_matrix/federation/v1/media/download`): a JSON
//! metadata part, then the media part (bytes, or a `Location` header).
//!
//! The body comes from another server, so parsing is linear in its size
//! whatever the boundary: every search is `memchr::memmem` (two-way, with a
//! vectorised prefilter), never a window-by-window comparison, whose cost grows
//! with the body times the boundary (a 30 KB boundary over 4 MB took 9 s of
//! CPU). Boundaries longer than RFC 2046's 70 characters are refused anyway.

use bytes::Bytes;
use memchr::memmem;

/// One part: its headers (names lower-cased) and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 2046: a boundary is 1 to 70 characters.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// The `boundary` parameter of a `multipart/*` content type (at most
/// [`MAX_BOUNDARY_LEN`] bytes).
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary"))
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY_LEN)
    })
}

/// The first `needle` at or after `from`, in time linear in the haystack.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memmem::find(haystack.get(from..)?, needle).map(|p| p + from)
}

/// Splits a multipart body into its parts (the preamble and epilogue dropped).
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut pos = find(body, delimiter, 0).ok_or("no boundary in the body")?;
    // Each part ends where CRLF and the next delimiter begin; the searcher is
    // built once and every search starts past the previous part, so the whole
    // body is scanned about once.
    let next_delimiter = [b"\r\n".as_slice(), delimiter].concat();
    let next = memmem::Finder::new(&next_delimiter);
    let mut parts = Vec::new();
    loop {
        let after = pos + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return Ok(parts);
        }
        // The delimiter line ends with CRLF (transport padding ignored).
        let line_end = find(body, b"\r\n", after).ok_or("unterminated delimiter line")?;
        let start = line_end + 2;
        let end = body
            .get(start..)
            .and_then(|rest| next.find(rest))
            .map(|p| p + start)
            .ok_or("no closing boundary")?;
        let part = body.slice(start..end);
        let (head, content) = match find(&part, b"\r\n\r\n", 0) {
            Some(i) => (&part[..i], part.slice(i + 4..)),
            // No headers at all: the part starts with the blank line.
            None if part.starts_with(b"\r\n") => (&part[..0], part.slice(2..)),
            None => return Err("a part without a header block".into()),
        };
        let head = std::str::from_utf8(head).map_err(|_| "part headers are not UTF-8")?;
        let headers = head
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        parts.push(Part {
            headers,
            body: content,
        });
        pos = end + 2;
    }
}

/// A part's headers as (name, value) pairs.
pub type Headers = Vec<(String, String)>;

/// Builds a `multipart/mixed` body from parts (headers as given).
pub fn build(boundary: &str, parts: &[(Headers, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (headers, body) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        for (name, value) in headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/mixed; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            boundary("Multipart/Mixed; charset=x; boundary=\"q u\"").as_deref(),
            Some("q u")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/mixed"), None);
    }

    #[test]
    fn round_trip_with_binary_content() {
        let media: Vec<u8> = (0..=255u8)
            .chain(b"\r\n--not-it\r\n".iter().copied())
            .collect();
        let body = build(
            "b0und",
            &[
                (
                    vec![("Content-Type".into(), "application/json".into())],
                    b"{}",
                ),
                (vec![("Content-Type".into(), "image/png".into())], &media),
            ],
        );
        let parts = parse(&Bytes::from(body), "b0und").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].header("content-type"), Some("application/json"));
        assert_eq!(&parts[0].body[..], b"{}");
        assert_eq!(parts[1].header("content-type"), Some("image/png"));
        assert_eq!(&parts[1].body[..], &media[..]);
    }

    #[test]
    fn boundaries_longer_than_rfc_2046_allows_are_refused() {
        let b70 = "b".repeat(70);
        assert_eq!(
            boundary(&format!("multipart/mixed; boundary={b70}")),
            Some(b70)
        );
        let long = "-".repeat(30_000);
        assert!(boundary(&format!("multipart/mixed; boundary={long}")).is_none());
        assert_eq!(
            boundary(&format!("multipart/mixed; boundary={}", "b".repeat(71))),
            None
        );
    }

    /// The attack's shape: a 30 KB boundary of one repeated byte, and 4 MB of
    /// near-misses (runs one byte short of the delimiter), before and inside
    /// the parts. A window-by-window search compares most of the boundary at
    /// every offset (about 10^11 byte comparisons here); the parser must still
    /// find exactly the parts that are there.
    #[test]
    fn a_huge_boundary_over_near_misses_parses() {
        let boundary = "-".repeat(30_000);
        let near_miss: Vec<u8> = "-"
            .repeat(30_001)
            .into_bytes()
            .into_iter()
            .chain(*b"x")
            .collect();
        let filler: Vec<u8> = near_miss.iter().copied().cycle().take(4 << 20).collect();
        let media: Vec<u8> = near_miss.iter().copied().cycle().take(256 << 10).collect();
        let mut body = filler.clone();
        body.extend_from_slice(b"\r\n");
        body.extend(build(
            &boundary,
            &[
                (
                    vec![("Content-Type".into(), "application/json".into())],
                    b"{}",
                ),
                (
                    vec![("Content-Type".into(), "application/octet-stream".into())],
                    &media,
                ),
            ],
        ));
        let parts = parse(&Bytes::from(body), &boundary).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].body[..], b"{}");
        assert_eq!(
            parts[1].header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(parts[1].body.len(), media.len());
        assert!(parts[1].body[..] == media[..]);
        // Near-misses only, no delimiter: an error, not a hang.
        assert!(parse(&Bytes::from(filler), &boundary).is_err());
    }

    #[test]
    fn the_location_form_and_a_preamble() {
        let body = Bytes::from_static(
            b"preamble\r\n--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x\r\nLocation: https://cdn.example/a\r\n\r\n\r\n--x--\r\nepilogue",
        );
        let parts = parse(&body, "x").unwrap();
        assert_eq!(parts[1].header("location"), Some("https://cdn.example/a"));
        assert!(parts[1].body.is_empty());
    }

    #[test]
    fn truncated_bodies_are_errors() {
        assert!(parse(&Bytes::from_static(b"--x\r\n\r\n{}"), "x").is_err());
        assert!(parse(&Bytes::from_static(b"nothing"), "x").is_err());
    }
}
