//! Single sign-on rules, no I/O: the templates that turn an identity
//! provider's claims into a localpart or display name, the mapping of any
//! string to a valid localpart (spec appendices, "Mapping from other character
//! sets", as Synapse maps), attribute requirements, and which client URLs may
//! receive a login token.

use serde_json::{Map, Value};

use crate::config::AttributeRequirement;

/// A template such as `{{ user.preferred_username | lower }}@corp`: literal
/// text and placeholders reading a claim of the ID token (`user.<claim>`, dots
/// for nested objects), each optionally through filters.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Claim {
        path: Vec<String>,
        filters: Vec<Filter>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Filter {
    Lower,
    /// `alice@example.org` → `alice` (Synapse's filter of this name).
    LocalpartFromEmail,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("a `{{` without `}}`")?;
            let mut pipeline = after[..end].split('|').map(str::trim);
            let source = pipeline.next().unwrap_or_default();
            let path = source
                .strip_prefix("user.")
                .ok_or_else(|| format!("{source:?}: placeholders read `user.<claim>`"))?;
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("{source:?} names no claim"));
            }
            let filters = pipeline
                .map(|f| match f {
                    "lower" => Ok(Filter::Lower),
                    "localpart_from_email" => Ok(Filter::LocalpartFromEmail),
                    other => Err(format!(
                        "unknown filter {other:?} (known: lower, localpart_from_email)"
                    )),
                })
                .collect::<Result<_, _>>()?;
            parts.push(Part::Claim {
                path: path.split('.').map(str::to_owned).collect(),
                filters,
            });
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err("a `}}` without `{{`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The text with each placeholder replaced by its claim (strings, numbers
    /// and booleans; a missing claim or any other value is empty).
    pub fn render(&self, claims: &Map<String, Value>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Claim { path, filters } => {
                    let mut value = claim_text(claims, path.as_slice()).unwrap_or_default();
                    for filter in filters {
                        value = match filter {
                            Filter::Lower => value.to_lowercase(),
                            Filter::LocalpartFromEmail => value
                                .rsplit_once('@')
                                .map_or(value.clone(), |(l, _)| l.to_owned()),
                        };
                    }
                    out.push_str(&value);
                }
            }
        }
        out
    }
}

fn claim<'a>(claims: &'a Map<String, Value>, path: &[impl AsRef<str>]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first.as_ref())?;
    for key in rest {
        value = value.as_object()?.get(key.as_ref())?;
    }
    Some(value)
}

/// A claim as text: a string, or a number or boolean written out (GitHub's
/// numeric `id`, for example).
pub fn claim_text(claims: &Map<String, Value>, path: &[impl AsRef<str>]) -> Option<String> {
    match claim(claims, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Maps any string to a localpart as Synapse does: lowercased, every character
/// outside `a-z 0-9 . _ - / = +` written as `=` and the hex of its UTF-8
/// bytes, and a leading `_` (reserved for appservices by convention) escaped.
pub fn map_to_localpart(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.to_lowercase().chars() {
        if matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-' | '/' | '=' | '+') {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={b:02x}"));
            }
        }
    }
    if let Some(rest) = out.strip_prefix('_') {
        out = format!("=5f{rest}");
    }
    out
}

/// Whether the claims meet every requirement: the claim (a string, or a list
/// containing one) equals `value`, or one of `one_of`.
pub fn meets_requirements(claims: &Map<String, Value>, reqs: &[AttributeRequirement]) -> bool {
    reqs.iter().all(|r| {
        let accepted = |s: &str| {
            r.value.as_deref() == Some(s)
                || r.one_of.as_ref().is_some_and(|l| l.iter().any(|v| v == s))
        };
        match claim(claims, &[r.attribute.as_str()]) {
            Some(Value::String(s)) => accepted(s),
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str().is_some_and(accepted)),
            _ => false,
        }
    })
}

/// Whether `target` (a client's `redirectUrl`) is covered by an allow-list
/// entry: the same scheme, host and port, and a path under the entry's (at a
/// `/` boundary unless the entry's path ends with one). A URL with user
/// information is never accepted (`https://good@evil/` tricks readers).
pub fn redirect_allowed(allowlist: &[String], target: &str) -> bool {
    let Ok(url) = url::Url::parse(target) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    allowlist.iter().any(|entry| {
        let Ok(allowed) = url::Url::parse(entry) else {
            return false;
        };
        if allowed.scheme() != url.scheme()
            || allowed.host_str() != url.host_str()
            || allowed.port_or_known_default() != url.port_or_known_default()
        {
            return false;
        }
        let prefix = allowed.path();
        let path = url.path();
        path == prefix
            || (path.starts_with(prefix)
                && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
    })
}

/// `redirect_url` with `loginToken=<token>` as its only `loginToken`
/// parameter (the spec: existing ones are removed first).
pub fn with_login_token(redirect_url: &str, token: &str) -> Option<String> {
    let mut url = url::Url::parse(redirect_url).ok()?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "loginToken")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear();
        for (k, v) in &kept {
            query.append_pair(k, v);
        }
        query.append_pair("loginToken", token);
    }
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn templates_render_claims_with_filters() {
        let c = claims(json!({
            "preferred_username": "Alice", "email": "alice.smith@example.org",
            "id": 42, "address": { "locality": "Paris" }
        }));
        let t = Template::parse("{{ user.preferred_username | lower }}").unwrap();
        assert_eq!(t.render(&c), "alice");
        let t = Template::parse("{{user.email|localpart_from_email}}-{{ user.id }}").unwrap();
        assert_eq!(t.render(&c), "alice.smith-42");
        let t = Template::parse("{{ user.address.locality }} office").unwrap();
        assert_eq!(t.render(&c), "Paris office");
        let t = Template::parse("{{ user.missing }}").unwrap();
        assert_eq!(t.render(&c), "");
        for bad in [
            "{{ user.x",
            "{{ x }}",
            "{{ user. }}",
            "{{ user.x | upper }}",
            "x }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn localparts_are_mapped_as_synapse_does() {
        assert_eq!(map_to_localpart("Alice"), "alice");
        assert_eq!(map_to_localpart("jo hn"), "jo=20hn");
        assert_eq!(map_to_localpart("é"), "=c3=a9");
        assert_eq!(map_to_localpart("_bot"), "=5fbot");
        assert_eq!(map_to_localpart("a:b@c"), "a=3ab=40c");
    }

    #[test]
    fn attribute_requirements() {
        let req =
            |attribute: &str, value: Option<&str>, one_of: Option<&[&str]>| AttributeRequirement {
                attribute: attribute.into(),
                value: value.map(Into::into),
                one_of: one_of.map(|l| l.iter().map(|s| s.to_string()).collect()),
            };
        let c = claims(json!({ "groups": ["staff", "dev"], "dept": "sales" }));
        assert!(meets_requirements(
            &c,
            &[req("groups", Some("staff"), None)]
        ));
        assert!(!meets_requirements(
            &c,
            &[req("groups", Some("admin"), None)]
        ));
        assert!(meets_requirements(
            &c,
            &[req("dept", None, Some(&["ops", "sales"]))]
        ));
        assert!(!meets_requirements(&c, &[req("dept", Some("ops"), None)]));
        assert!(!meets_requirements(&c, &[req("missing", Some("x"), None)]));
        assert!(!meets_requirements(
            &c,
            &[
                req("groups", Some("staff"), None),
                req("dept", Some("ops"), None)
            ]
        ));
        assert!(meets_requirements(&c, &[]));
    }

    #[test]
    fn redirects_only_to_allowed_clients() {
        let list = vec![
            "https://app.example.org/".to_owned(),
            "https://web.example.org/element".to_owned(),
            "io.element.app:/callback".to_owned(),
        ];
        for ok in [
            "https://app.example.org/",
            "https://app.example.org/#/login?x=1",
            "https://app.example.org:443/deep/path?hs=1",
            "https://web.example.org/element",
            "https://web.example.org/element/",
            "io.element.app:/callback",
        ] {
            assert!(redirect_allowed(&list, ok), "{ok}");
        }
        for refused in [
            "https://evil.example/",
            "https://app.example.org.evil.example/",
            "https://app.example.org@evil.example/",
            "https://evil.example@app.example.org/",
            "http://app.example.org/",
            "https://app.example.org:8443/",
            "https://web.example.org/elementary",
            "https://web.example.org/",
            "javascript:alert(1)",
            "//evil.example/",
            "not a url",
        ] {
            assert!(!redirect_allowed(&list, refused), "{refused}");
        }
    }

    #[test]
    fn login_token_replaces_any_other() {
        assert_eq!(
            with_login_token("https://app.example/?a=1&loginToken=evil&b=2", "T").unwrap(),
            "https://app.example/?a=1&b=2&loginToken=T"
        );
        assert_eq!(
            with_login_token("https://app.example/cb", "T").unwrap(),
            "https://app.example/cb?loginToken=T"
        );
    }
}
