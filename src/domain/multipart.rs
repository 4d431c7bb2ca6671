//! `multipart/mixed` bodies, as federation media downloads use them (spec
//! "Content repository", `/_matrix/federation/v1/media/download`): a JSON
//! metadata part, then the media part (bytes, or a `Location` header).
//!
//! Why not ruma's parser (`ruma::api::federation::authenticated_media`'s
//! response, ruma 0.17): it takes the whole response body in memory and
//! splits it afterwards, while a remote file is streamed to disk under
//! `media.max_upload_bytes` and one deadline as it arrives (see
//! `service::media`); a peer's body must never be held whole.
//!
//! The body comes from another server, so it is parsed as it arrives, in
//! bounded memory and in time linear in its size whatever the boundary:
//! [`Parser`] is fed the body chunk by chunk and hands back each part's
//! headers and body bytes as soon as they are known. It holds at most one
//! chunk plus a part's header block (at most [`Limits::head`]) or the few bytes
//! that could begin a delimiter straddling two chunks; a part's body is never
//! kept. Every search is `memchr::memmem` (two-way, with a vectorised
//! prefilter), never a window-by-window comparison, whose cost grows with the
//! body times the boundary (a 30 KB boundary over 4 MB took 9 s of CPU); a
//! search resumes where the previous one stopped, less the bytes that could
//! start a match, so each byte is looked at a bounded number of times.
//! Boundaries longer than RFC 2046's 70 characters are refused, and each part
//! is refused the moment its body passes its limit, before the rest is read.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// A part's headers as (name, value) pairs (names lower-cased when parsed).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (lower-case) in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// RFC 2046: a boundary is 1 to 70 characters.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Transport padding allowed after a delimiter, before its line ends.
const MAX_PADDING: usize = 1024;

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

/// How much of a body a [`Parser`] accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest body of each part, in order. Parsing is done when the last
    /// of these parts ends: whatever follows is never looked at.
    pub parts: Vec<u64>,
    /// The largest header block of a part.
    pub head: usize,
    /// The largest preamble (bytes before the first delimiter).
    pub preamble: usize,
}

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// Part `index`'s body passed its limit (nothing after that was read).
    #[error("part {index} is larger than {limit} bytes")]
    PartTooLarge { index: usize, limit: u64 },
    /// Not a multipart body of the expected shape.
    #[error("{0}")]
    Malformed(&'static str),
}

/// What the parser found, in body order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Part `index` begins, with these headers.
    Part { index: usize, headers: Headers },
    /// The next bytes of part `index`'s body.
    Body { index: usize, bytes: Bytes },
    /// Part `index` ended.
    End { index: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` (the close) or padding and CRLF.
    Delimiter,
    /// In a part's header block.
    Head,
    /// In a part's body.
    Body,
    /// The close delimiter came, or the last part wanted ended.
    Done,
}

/// A push parser for one `multipart/*` body: [`Parser::feed`] it the body's
/// chunks as they arrive, then [`Parser::finish`] at its end.
pub struct Parser {
    /// `--boundary`: the first delimiter (which need not follow a line break).
    first: memmem::Finder<'static>,
    /// `CRLF--boundary`: the end of a part's body.
    next: memmem::Finder<'static>,
    /// Bytes received and not yet handed out or dropped.
    buf: BytesMut,
    state: State,
    /// In `Delimiter` and `Head`: how much of `buf` was searched without a match.
    scanned: usize,
    /// The current part (or the next one, between parts).
    index: usize,
    /// Body bytes of the current part handed out so far.
    part_len: u64,
    preamble_len: usize,
    limits: Limits,
}

impl Parser {
    /// A parser for `boundary` (1 to [`MAX_BOUNDARY_LEN`] bytes), within `limits`.
    pub fn new(boundary: &str, limits: Limits) -> Result<Self, MultipartError> {
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
            return Err(MultipartError::Malformed(
                "the boundary is empty or longer than 70 characters",
            ));
        }
        let first = format!("--{boundary}").into_bytes();
        let next = [b"\r\n".as_slice(), &first].concat();
        let state = if limits.parts.is_empty() {
            State::Done
        } else {
            State::Preamble
        };
        Ok(Self {
            first: memmem::Finder::new(&first).into_owned(),
            next: memmem::Finder::new(&next).into_owned(),
            buf: BytesMut::new(),
            state,
            scanned: 0,
            index: 0,
            part_len: 0,
            preamble_len: 0,
            limits,
        })
    }

    /// Nothing more is needed: the rest of the body need not be read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Parses the next chunk of the body; returns what it completed. After an
    /// error the parser must not be fed again.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, MultipartError> {
        let mut events = Vec::new();
        if self.state == State::Done {
            return Ok(events);
        }
        self.buf.extend_from_slice(chunk);
        while self.step(&mut events)? {}
        Ok(events)
    }

    /// The body ended: an error unless it was complete.
    pub fn finish(&self) -> Result<(), MultipartError> {
        match self.state {
            State::Done => Ok(()),
            State::Preamble => Err(MultipartError::Malformed("no boundary in the body")),
            _ => Err(MultipartError::Malformed("the body ends inside a part")),
        }
    }

    /// One step of the state machine; false when it needs more input.
    fn step(&mut self, events: &mut Vec<Event>) -> Result<bool, MultipartError> {
        match self.state {
            State::Done => Ok(false),
            State::Preamble => {
                let len = self.first.needle().len();
                let (skip, found) = match self.first.find(&self.buf) {
                    Some(at) => (at, true),
                    // Keep what could be the start of a delimiter.
                    None => (self.buf.len().saturating_sub(len - 1), false),
                };
                self.preamble_len += skip;
                if self.preamble_len > self.limits.preamble {
                    return Err(MultipartError::Malformed("the preamble is too long"));
                }
                self.buf.advance(skip);
                if found {
                    self.buf.advance(len);
                    self.enter(State::Delimiter);
                }
                Ok(found)
            }
            State::Delimiter => {
                if self.buf.len() < 2 {
                    return Ok(false);
                }
                if self.buf.starts_with(b"--") {
                    self.done();
                    return Ok(false);
                }
                let from = self.scanned.saturating_sub(1);
                let Some(at) = memmem::find(&self.buf[from..], b"\r\n").map(|p| p + from) else {
                    // Padding that long without a line end: refused whatever
                    // comes next (a line within the limit would have ended).
                    if self.buf.len() >= MAX_PADDING + 2 {
                        return Err(MultipartError::Malformed("a delimiter line is too long"));
                    }
                    self.scanned = self.buf.len();
                    return Ok(false);
                };
                if at > MAX_PADDING || !self.buf[..at].iter().all(|b| matches!(b, b' ' | b'\t')) {
                    return Err(MultipartError::Malformed("junk after a delimiter"));
                }
                self.buf.advance(at + 2);
                self.enter(State::Head);
                Ok(true)
            }
            State::Head => {
                if self.buf.len() < 2 {
                    return Ok(false);
                }
                let (head_len, skip) = if self.buf.starts_with(b"\r\n") {
                    // No headers: the part starts with the blank line.
                    (0, 2)
                } else {
                    let from = self.scanned.saturating_sub(3);
                    match memmem::find(&self.buf[from..], b"\r\n\r\n") {
                        Some(p) => (p + from, p + from + 4),
                        None => {
                            // A block within the limit would have ended by now.
                            if self.buf.len() >= self.limits.head + 4 {
                                return Err(MultipartError::Malformed("part headers are too long"));
                            }
                            self.scanned = self.buf.len();
                            return Ok(false);
                        }
                    }
                };
                if head_len > self.limits.head {
                    return Err(MultipartError::Malformed("part headers are too long"));
                }
                let headers = parse_headers(&self.buf[..head_len])?;
                self.buf.advance(skip);
                events.push(Event::Part {
                    index: self.index,
                    headers,
                });
                self.part_len = 0;
                self.enter(State::Body);
                Ok(true)
            }
            State::Body => {
                let len = self.next.needle().len();
                match self.next.find(&self.buf) {
                    Some(at) => {
                        self.hand_out(at, events)?;
                        self.buf.advance(len);
                        events.push(Event::End { index: self.index });
                        self.index += 1;
                        if self.index == self.limits.parts.len() {
                            self.done();
                            return Ok(false);
                        }
                        self.enter(State::Delimiter);
                        Ok(true)
                    }
                    None => {
                        // Hand out all but what could begin the delimiter.
                        let ready = self.buf.len().saturating_sub(len - 1);
                        self.hand_out(ready, events)?;
                        Ok(false)
                    }
                }
            }
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.scanned = 0;
    }

    fn done(&mut self) {
        self.state = State::Done;
        self.buf = BytesMut::new();
    }

    /// Hands out the first `n` bytes of `buf` as the current part's body.
    fn hand_out(&mut self, n: usize, events: &mut Vec<Event>) -> Result<(), MultipartError> {
        if n == 0 {
            return Ok(());
        }
        self.part_len += n as u64;
        let limit = self.limits.parts[self.index];
        if self.part_len > limit {
            return Err(MultipartError::PartTooLarge {
                index: self.index,
                limit,
            });
        }
        events.push(Event::Body {
            index: self.index,
            bytes: self.buf.split_to(n).freeze(),
        });
        Ok(())
    }
}

fn parse_headers(head: &[u8]) -> Result<Headers, MultipartError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| MultipartError::Malformed("part headers are not UTF-8"))?;
    Ok(head
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect())
}

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

    /// Parts as (headers, body) of the `parts` a parser hands out for `chunks`.
    type Parsed = Vec<(Headers, Vec<u8>)>;

    fn limits(parts: &[u64]) -> Limits {
        Limits {
            parts: parts.to_vec(),
            head: 16 * 1024,
            preamble: 64 * 1024,
        }
    }

    fn parse_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        boundary: &str,
        limits: Limits,
    ) -> Result<Parsed, MultipartError> {
        let mut parser = Parser::new(boundary, limits)?;
        let mut parts: Parsed = Vec::new();
        for chunk in chunks {
            for event in parser.feed(chunk)? {
                match event {
                    Event::Part { index, headers } => {
                        assert_eq!(index, parts.len(), "parts in order");
                        parts.push((headers, Vec::new()));
                    }
                    Event::Body { index, bytes } => {
                        assert_eq!(index + 1, parts.len(), "body of the current part");
                        assert!(!bytes.is_empty(), "no empty body events");
                        parts[index].1.extend_from_slice(&bytes);
                    }
                    Event::End { index } => assert_eq!(index + 1, parts.len()),
                }
            }
        }
        parser.finish()?;
        Ok(parts)
    }

    fn parse(body: &[u8], boundary: &str) -> Result<Parsed, MultipartError> {
        parse_chunks([body], boundary, limits(&[u64::MAX; 8]))
    }

    fn media_body(boundary: &str, media: &[u8]) -> Vec<u8> {
        build(
            boundary,
            &[
                (
                    vec![("Content-Type".into(), "application/json".into())],
                    b"{}",
                ),
                (vec![("Content-Type".into(), "image/png".into())], media),
            ],
        )
    }

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
            .chain(b"\r\n--not-it\r\n--b0un\r\n".iter().copied())
            .collect();
        let parts = parse(&media_body("b0und", &media), "b0und").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            header(&parts[0].0, "content-type"),
            Some("application/json")
        );
        assert_eq!(parts[0].1, b"{}");
        assert_eq!(header(&parts[1].0, "content-type"), Some("image/png"));
        assert_eq!(parts[1].1, media);
    }

    /// The same body cut into two chunks at every offset, and into chunks of
    /// every size up to past the delimiter's length, parses to the same parts:
    /// a delimiter (or a near miss, or a header block end) straddling chunks is
    /// found all the same.
    #[test]
    fn every_chunk_split_gives_the_same_parts() {
        let boundary = "sep-0123456789";
        // Near misses of the delimiter inside the media, at its start and end.
        let media: Vec<u8> = b"\r\n--sep-012345678\r\nA--sep-0123456789X\r\n-"
            .iter()
            .chain(&[0u8, 13, 10, 45, 45, 255])
            .chain(b"\r\n--sep-01234")
            .copied()
            .collect();
        let mut body = b"preamble \r\n--sep-0123 near\r\n".to_vec();
        body.extend(media_body(boundary, &media));
        body.extend_from_slice(b"epilogue --sep-0123456789--");
        let whole = parse(&body, boundary).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].1, media);
        let all = limits(&[u64::MAX; 8]);
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(
                parse_chunks([a, b], boundary, all.clone()).unwrap(),
                whole,
                "split at {at}"
            );
        }
        for size in 1..=boundary.len() + 8 {
            assert_eq!(
                parse_chunks(body.chunks(size), boundary, all.clone()).unwrap(),
                whole,
                "chunks of {size}"
            );
        }
        // Limits hold exactly whatever the chunking: the media part's exact
        // size passes, one byte less is refused.
        let exact = limits(&[2, media.len() as u64]);
        let short = limits(&[2, media.len() as u64 - 1]);
        for size in [1, 2, 3, 7, 16, 17, body.len()] {
            assert!(parse_chunks(body.chunks(size), boundary, exact.clone()).is_ok());
            assert_eq!(
                parse_chunks(body.chunks(size), boundary, short.clone()),
                Err(MultipartError::PartTooLarge {
                    index: 1,
                    limit: media.len() as u64 - 1
                }),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn boundaries_longer_than_rfc_2046_allows_are_refused() {
        let b70 = "b".repeat(70);
        assert_eq!(
            boundary(&format!("multipart/mixed; boundary={b70}")),
            Some(b70.clone())
        );
        let long = "-".repeat(30_000);
        assert!(boundary(&format!("multipart/mixed; boundary={long}")).is_none());
        assert_eq!(
            boundary(&format!("multipart/mixed; boundary={}", "b".repeat(71))),
            None
        );
        // The parser refuses them too, whoever calls it.
        for bad in [long.as_str(), &"b".repeat(71), ""] {
            assert!(matches!(
                Parser::new(bad, limits(&[10])),
                Err(MultipartError::Malformed(_))
            ));
        }
        assert!(Parser::new(&b70, limits(&[10])).is_ok());
    }

    /// The attack's shape at the largest boundary allowed: 4 MB of near-misses
    /// (runs one byte short of the delimiter) before and inside the parts, fed
    /// in small chunks. A window-by-window search compares most of the boundary
    /// at every offset; the parser must still find exactly the parts there are.
    #[test]
    fn a_long_boundary_over_near_misses_parses() {
        let boundary = "-".repeat(MAX_BOUNDARY_LEN);
        let near_miss: Vec<u8> = "-"
            .repeat(MAX_BOUNDARY_LEN + 1)
            .into_bytes()
            .into_iter()
            .chain(*b"x")
            .collect();
        let filler: Vec<u8> = near_miss.iter().copied().cycle().take(4 << 20).collect();
        let media: Vec<u8> = near_miss.iter().copied().cycle().take(256 << 10).collect();
        let mut body = filler.clone();
        body.extend_from_slice(b"\r\n");
        body.extend(media_body(&boundary, &media));
        let generous = Limits {
            parts: vec![64 << 10, 1 << 20],
            head: 1024,
            preamble: 8 << 20,
        };
        let parts = parse_chunks(body.chunks(1000), &boundary, generous.clone()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"{}");
        assert!(parts[1].1 == media);
        // Near-misses only, no delimiter: an error, not a hang.
        assert_eq!(
            parse_chunks(filler.chunks(4096), &boundary, generous),
            Err(MultipartError::Malformed("no boundary in the body"))
        );
    }

    #[test]
    fn the_location_form_and_a_preamble() {
        let body = b"preamble\r\n--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x\r\nLocation: https://cdn.example/a\r\n\r\n\r\n--x--\r\nepilogue";
        let parts = parse(body, "x").unwrap();
        assert_eq!(
            header(&parts[1].0, "location"),
            Some("https://cdn.example/a")
        );
        assert!(parts[1].1.is_empty());
    }

    #[test]
    fn truncated_and_malformed_bodies_are_errors() {
        assert!(parse(b"--x\r\n\r\n{}", "x").is_err());
        assert!(parse(b"nothing", "x").is_err());
        assert!(parse(b"--x\r\nno blank line after the headers", "x").is_err());
        assert_eq!(
            parse(b"--xjunk\r\n\r\n{}\r\n--x--", "x"),
            Err(MultipartError::Malformed("junk after a delimiter"))
        );
        // Transport padding (spaces, tabs) after a delimiter is allowed.
        assert!(parse(b"--x \t\r\n\r\n{}\r\n--x--", "x").is_ok());
    }

    /// A body that goes on for ever, fed chunk by chunk: the part over its limit
    /// is refused as soon as it passes it, so the rest is never read, and the
    /// parser held no more than a chunk meanwhile.
    #[test]
    fn parts_over_their_limit_are_refused_without_reading_the_rest() {
        const CHUNK: usize = 8192;
        let head = media_body("b", b"");
        let head = &head[..head.len() - b"\r\n--b--\r\n".len()];
        for (index, limit, start) in [
            // The media part over 1 MB.
            (1, 1u64 << 20, head.to_vec()),
            // The JSON part over 64 KiB.
            (
                0,
                1 << 20,
                b"--b\r\nContent-Type: application/json\r\n\r\n".to_vec(),
            ),
        ] {
            let limits = Limits {
                parts: vec![64 << 10, limit],
                head: 1024,
                preamble: 1024,
            };
            let mut parser = Parser::new("b", limits.clone()).unwrap();
            let endless = std::iter::once(start).chain(std::iter::repeat(vec![b'a'; CHUNK]));
            let mut fed = 0usize;
            let mut error = None;
            for chunk in endless {
                fed += chunk.len();
                match parser.feed(&chunk) {
                    Ok(_) => assert!(parser.buf.len() < CHUNK + 100, "buffered"),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
                assert!(fed < 4 << 20, "still reading after {fed} bytes");
            }
            let cap = limits.parts[index];
            assert_eq!(
                error,
                Some(MultipartError::PartTooLarge { index, limit: cap })
            );
            assert!(
                (fed as u64) <= cap + (CHUNK + 200) as u64,
                "read {fed} bytes for a cap of {cap}"
            );
        }
    }

    /// Header blocks, delimiter lines and preambles are bounded as well, and
    /// nothing after the last part wanted is parsed.
    #[test]
    fn heads_and_preambles_are_bounded_and_the_rest_is_ignored() {
        let limits = Limits {
            parts: vec![100, 100],
            head: 64,
            preamble: 128,
        };
        let endless_head = [b"--b\r\nX-A: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse_chunks(endless_head.chunks(7), "b", limits.clone()),
            Err(MultipartError::Malformed("part headers are too long"))
        );
        let padding = [b"--b".as_slice(), &[b' '; 2000]].concat();
        assert_eq!(
            parse_chunks(padding.chunks(100), "b", limits.clone()),
            Err(MultipartError::Malformed("a delimiter line is too long"))
        );
        let preamble = [&[b'p'; 200][..], &media_body("b", b"m")].concat();
        assert_eq!(
            parse_chunks([preamble.as_slice()], "b", limits.clone()),
            Err(MultipartError::Malformed("the preamble is too long"))
        );
        // After the second part: a third part over every limit, then garbage.
        let mut body = media_body("b", b"media");
        body.truncate(body.len() - b"--b--\r\n".len());
        body.extend_from_slice(b"--b\r\n\r\n");
        body.extend_from_slice(&[b'z'; 1000]);
        let mut parser = Parser::new("b", limits).unwrap();
        let events = parser.feed(&body).unwrap();
        assert!(parser.is_done());
        assert_eq!(events.last(), Some(&Event::End { index: 1 }));
        assert!(parser.feed(b"more").unwrap().is_empty());
        assert!(parser.finish().is_ok());
    }
}
