//! Server-Server request authentication (spec "Request Authentication"): the
//! `Authorization: X-Matrix …` header and the JSON object whose signature it
//! carries. Pure: parsing, formatting and the signed object; key lookup and
//! verification happen in `service::federation::auth`.
//!
//! Why not ruma's `ruma::api::federation::authentication::XMatrix` (ruma
//! 0.17): its parser reads the header with `http-auth`'s `ChallengeParser`,
//! the RFC 9110 challenge grammar, where a bare (unquoted) parameter value is
//! a token, and a token holds no colon: `origin=example.org:8448`, unquoted as
//! older servers send it, would be refused. This parser takes it (and is
//! fuzzed: `fuzz/`); formatting and the signed JSON stay beside it.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, OwnedServerSigningKeyId, ServerName,
};

/// The parameters of one `X-Matrix` authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: OwnedServerName,
    /// Absent in requests from servers older than spec v1.3.
    pub destination: Option<OwnedServerName>,
    pub key: OwnedServerSigningKeyId,
    pub sig: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not an X-Matrix authorization")]
    Scheme,
    #[error("malformed X-Matrix parameters")]
    Syntax,
    #[error("X-Matrix parameter `{0}` is missing")]
    Missing(&'static str),
    #[error("X-Matrix parameter `{0}` is invalid")]
    Invalid(&'static str),
}

impl XMatrix {
    /// Parses a header value per RFC 9110 §11.4 as the spec allows: the scheme
    /// case-insensitively, then comma-separated `name=value` pairs with optional
    /// whitespace around commas, values quoted (with backslash escapes) or bare
    /// (colons allowed, for older servers). Unknown parameters are ignored.
    pub fn parse(header: &str) -> Result<Self, ParseError> {
        let (scheme, rest) = header.split_once(' ').ok_or(ParseError::Scheme)?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(ParseError::Scheme);
        }
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        let mut chars = rest.trim_start().chars().peekable();
        loop {
            while matches!(chars.peek(), Some(' ' | '\t' | ',')) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                if !is_token_char(c) {
                    return Err(ParseError::Syntax);
                }
                name.push(c);
                chars.next();
            }
            if chars.next() != Some('=') || name.is_empty() {
                return Err(ParseError::Syntax);
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(ParseError::Syntax),
                        Some('"') => break,
                        Some('\\') => value.push(chars.next().ok_or(ParseError::Syntax)?),
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == ' ' || c == '\t' {
                        break;
                    }
                    if !(is_token_char(c) || c == ':') {
                        return Err(ParseError::Syntax);
                    }
                    value.push(c);
                    chars.next();
                }
            }
            // Anything but separators after a value is malformed.
            while matches!(chars.peek(), Some(' ' | '\t')) {
                chars.next();
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(ParseError::Syntax);
            }
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ParseError::Syntax);
            }
            *slot = Some(value);
        }
        let origin = origin.ok_or(ParseError::Missing("origin"))?;
        let origin = ServerName::parse(&origin).map_err(|_| ParseError::Invalid("origin"))?;
        let destination = destination
            .map(|d| ServerName::parse(&d).map_err(|_| ParseError::Invalid("destination")))
            .transpose()?;
        let key = key.ok_or(ParseError::Missing("key"))?;
        let key = OwnedServerSigningKeyId::try_from(key.as_str())
            .map_err(|_| ParseError::Invalid("key"))?;
        let sig = sig.ok_or(ParseError::Missing("sig"))?;
        if sig.is_empty() {
            return Err(ParseError::Invalid("sig"));
        }
        Ok(Self {
            origin,
            destination,
            key,
            sig,
        })
    }

    /// The header value as senders should write it: one space after the scheme,
    /// lower-case names, quoted values, no whitespace around commas.
    pub fn to_header(&self) -> String {
        // Quoted strings escape `"` and `\` (RFC 9110 §5.6.4); found by fuzzing
        // (`fuzz/fuzz_targets/x_matrix.rs`), whose parse of the output failed.
        fn quoted(value: &str) -> String {
            let mut out = String::with_capacity(value.len() + 2);
            out.push('"');
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
        let mut out = format!("X-Matrix origin={}", quoted(self.origin.as_str()));
        if let Some(destination) = &self.destination {
            out.push_str(&format!(",destination={}", quoted(destination.as_str())));
        }
        out.push_str(&format!(
            ",key={},sig={}",
            quoted(self.key.as_str()),
            quoted(&self.sig)
        ));
        out
    }
}

/// RFC 9110 `tchar`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The object whose signature authenticates a request: method, target (path and
/// query, no scheme or host), origin, destination and, when there is a body, the
/// parsed body.
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    content: Option<CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert("method".into(), CanonicalJsonValue::String(method.into()));
    object.insert("uri".into(), CanonicalJsonValue::String(uri.into()));
    object.insert(
        "origin".into(),
        CanonicalJsonValue::String(origin.as_str().into()),
    );
    object.insert(
        "destination".into(),
        CanonicalJsonValue::String(destination.as_str().into()),
    );
    if let Some(content) = content {
        object.insert("content".into(), content);
    }
    object
}

#[cfg(test)]
mod tests {
    use ruma::signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet, sign_json, verify_json};

    use super::*;

    /// Found by fuzzing: a signature holding a quote did not survive
    /// rendering and parsing again.
    #[test]
    fn values_with_quotes_and_backslashes_round_trip() {
        let h =
            XMatrix::parse(r#"X-Matrix origin=a.example,key="ed25519:a",sig="s\"i\\g""#).unwrap();
        assert_eq!(h.sig, r#"s"i\g"#);
        assert_eq!(XMatrix::parse(&h.to_header()).unwrap(), h);
    }

    #[test]
    fn parses_the_spec_example() {
        let h = XMatrix::parse(
            r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#,
        )
        .unwrap();
        assert_eq!(h.origin, "origin.hs.example.com");
        assert_eq!(
            h.destination.as_deref().map(|d| d.as_str()),
            Some("destination.hs.example.com")
        );
        assert_eq!(h.key.as_str(), "ed25519:key1");
        assert_eq!(h.sig, "ABCDEF...");
    }

    #[test]
    fn accepts_the_lenient_forms_the_spec_allows() {
        // Case-insensitive scheme and names, spaces around commas, any order, bare
        // values with colons, escapes, unknown parameters, no destination.
        let h = XMatrix::parse(
            "x-matrix   KEY=\"ed25519:a\" , Origin=old.example.org:8448 ,\tfoo=bar,sig=\"s\\\"ig\"",
        )
        .unwrap();
        assert_eq!(h.origin, "old.example.org:8448");
        assert_eq!(h.destination, None);
        assert_eq!(h.key.as_str(), "ed25519:a");
        assert_eq!(h.sig, "s\"ig");
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "Bearer abc",
            "X-Matrix",
            "X-Matrix origin=\"a.org\",key=\"ed25519:a\"",
            "X-Matrix origin=\"a.org\",key=\"ed25519:a\",sig=\"unterminated",
            "X-Matrix origin=\"a.org\",origin=\"b.org\",key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin=\"not a name\",key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin=\"a.org\",key=\"nocolon\",sig=\"x\"",
            "X-Matrix origin=\"a.org\" junk,key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix =\"a.org\"",
        ] {
            assert!(XMatrix::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        let h = XMatrix {
            origin: "a.example.org".try_into().unwrap(),
            destination: Some("b.example.org:8448".try_into().unwrap()),
            key: "ed25519:k1".try_into().unwrap(),
            sig: "c2ln".into(),
        };
        assert_eq!(
            h.to_header(),
            r#"X-Matrix origin="a.example.org",destination="b.example.org:8448",key="ed25519:k1",sig="c2ln""#
        );
        assert_eq!(XMatrix::parse(&h.to_header()).unwrap(), h);
    }

    #[test]
    fn signature_covers_method_uri_destination_and_body() {
        let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap();
        let origin = ServerName::parse("origin.example.org").unwrap();
        let dest = ServerName::parse("dest.example.org").unwrap();
        let body: CanonicalJsonValue = serde_json::json!({"a": 1}).try_into().unwrap();
        let mut signed = request_object("PUT", "/_matrix/x?y=1", &origin, &dest, Some(body));
        sign_json(origin.as_str(), &pair, &mut signed).unwrap();

        let mut set = PublicKeySet::new();
        set.insert(
            "ed25519:k1".into(),
            ruma::serde::Base64::new(pair.public_key().to_vec()),
        );
        let mut keys = PublicKeyMap::new();
        keys.insert(origin.to_string(), set);
        let sigs = signed["signatures"].clone();
        let verify = |method, uri, body: serde_json::Value| {
            let mut object =
                request_object(method, uri, &origin, &dest, Some(body.try_into().unwrap()));
            object.insert("signatures".into(), sigs.clone());
            verify_json(&keys, &object).is_ok()
        };
        assert!(verify("PUT", "/_matrix/x?y=1", serde_json::json!({"a": 1})));
        assert!(!verify(
            "POST",
            "/_matrix/x?y=1",
            serde_json::json!({"a": 1})
        ));
        assert!(!verify(
            "PUT",
            "/_matrix/x?y=2",
            serde_json::json!({"a": 1})
        ));
        assert!(!verify(
            "PUT",
            "/_matrix/x?y=1",
            serde_json::json!({"a": 2})
        ));
    }
}
