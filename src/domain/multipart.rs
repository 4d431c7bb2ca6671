//! `multipart/mixed` bodies, as federation media downloads use them (spec
//! "Content repository", `/_matrix/federation/v1/media/download`): a JSON
//! metadata part, then the media part (bytes, or a `Location` header).

use bytes::Bytes;

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

/// The `boundary` parameter of a `multipart/*` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary"))
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits a multipart body into its parts (the preamble and epilogue dropped).
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut pos = find(body, delimiter, 0).ok_or("no boundary in the body")?;
    let mut parts = Vec::new();
    loop {
        let after = pos + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return Ok(parts);
        }
        // The delimiter line ends with CRLF (transport padding ignored).
        let line_end = find(body, b"\r\n", after).ok_or("unterminated delimiter line")?;
        let start = line_end + 2;
        let next_delimiter = [b"\r\n".as_slice(), delimiter].concat();
        let end = find(body, &next_delimiter, start).ok_or("no closing boundary")?;
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
