//! Third-party identifiers (email addresses): their canonical form, the
//! purposes a validation session may serve, and the mails' templates.

use std::collections::HashMap;

/// The one medium Lattice validates itself.
pub const EMAIL: &str = "email";

/// Longest address accepted (RFC 5321's path limit less the brackets).
const MAX_ADDRESS_BYTES: usize = 254;

/// The canonical form of an email address, as Synapse stores it: trimmed, the
/// local part case-folded, the domain lowercased. `None` for anything that is
/// not one `local@domain` address.
pub fn canonical_email(address: &str) -> Option<String> {
    let address = address.trim();
    if address.len() > MAX_ADDRESS_BYTES {
        return None;
    }
    let (local, domain) = address.split_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return None;
    }
    Some(format!(
        "{}@{}",
        local.to_lowercase(),
        domain.to_lowercase()
    ))
}

/// What a validation session was started for; a session serves only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `/register/email/requestToken`: the address must be free.
    Register,
    /// `/account/password/email/requestToken`: the address must be known.
    PasswordReset,
    /// `/account/3pid/email/requestToken`: the address must be free.
    AddThreepid,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::PasswordReset => "password_reset",
            Self::AddThreepid => "add_threepid",
        }
    }

    pub fn all() -> [Self; 3] {
        [Self::Register, Self::PasswordReset, Self::AddThreepid]
    }
}

/// The placeholders a mail template may use.
pub const PLACEHOLDERS: &[&str] = &["app_name", "server_name", "address", "link", "token"];

/// A mail: a subject line and a plain-text body with `{placeholder}`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

impl Template {
    /// Parses a template file: `Subject: …`, a blank line, the body. Every
    /// `{…}` must be a known placeholder (`{{` and `}}` are literal braces).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.replace("\r\n", "\n");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let subject = first
            .strip_prefix("Subject:")
            .ok_or("the first line must be `Subject: …`")?
            .trim()
            .to_owned();
        if subject.is_empty() {
            return Err("the subject is empty".into());
        }
        let body = rest
            .strip_prefix('\n')
            .ok_or("a blank line must follow the subject")?
            .to_owned();
        let template = Self { subject, body };
        template.check()?;
        Ok(template)
    }

    fn check(&self) -> Result<(), String> {
        for text in [&self.subject, &self.body] {
            render(text, &HashMap::new(), true, PLACEHOLDERS)?;
        }
        Ok(())
    }

    /// The subject and body with the placeholders filled in.
    pub fn render(&self, values: &HashMap<&str, String>) -> (String, String) {
        (
            render(&self.subject, values, false, PLACEHOLDERS).unwrap_or_default(),
            render(&self.body, values, false, PLACEHOLDERS).unwrap_or_default(),
        )
    }

    /// The built-in mail for `purpose`.
    pub fn default_for(purpose: Purpose) -> Self {
        let (subject, body) = match purpose {
            Purpose::Register => (
                "[{app_name}] Confirm your email address",
                "Hello,\n\n\
                 Someone asked to register an account on {server_name} with this email\n\
                 address ({address}). To confirm that it is yours, open this link:\n\n\
                 {link}\n\n\
                 or enter this code where your Matrix client asks for it: {token}\n\n\
                 If this was not you, ignore this mail: the address is not used without\n\
                 your confirmation.\n",
            ),
            Purpose::PasswordReset => (
                "[{app_name}] Password reset",
                "Hello,\n\n\
                 Someone asked to reset the password of the account on {server_name}\n\
                 that has this email address ({address}). To confirm, open this link:\n\n\
                 {link}\n\n\
                 or enter this code where your Matrix client asks for it: {token}\n\n\
                 then choose a new password in your client. If this was not you,\n\
                 ignore this mail: your password stays as it is.\n",
            ),
            Purpose::AddThreepid => (
                "[{app_name}] Confirm adding your email address",
                "Hello,\n\n\
                 Someone asked to add this email address ({address}) to an account on\n\
                 {server_name}. To confirm that it is yours, open this link:\n\n\
                 {link}\n\n\
                 or enter this code where your Matrix client asks for it: {token}\n\n\
                 If this was not you, ignore this mail: the address is not added without\n\
                 your confirmation.\n",
            ),
        };
        Self {
            subject: subject.to_owned(),
            body: body.to_owned(),
        }
    }
}

/// Fills `{name}` placeholders; `{{`/`}}` are literal braces. With `strict`,
/// an unknown (not in `known`) or unclosed placeholder is an error (for
/// checking templates).
pub(crate) fn render(
    text: &str,
    values: &HashMap<&str, String>,
    strict: bool,
    known: &[&str],
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(after) = tail.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| "an unclosed `{` (write `{{` for a brace)".to_owned())?;
            let name = &after[..end];
            if !known.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    known.join(", ")
                ));
            }
            if !strict {
                out.push_str(values.get(name).map(String::as_str).unwrap_or(""));
            }
            rest = &after[end + 1..];
        } else {
            if strict {
                return Err("a lone `}` (write `}}` for a brace)".into());
            }
            out.push('}');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `next_link` may be used: an http(s) URL, on an allowed host when an
/// allowlist is configured.
pub fn next_link_allowed(next_link: &str, allowlist: &[String]) -> bool {
    let Some(rest) = next_link
        .strip_prefix("https://")
        .or_else(|| next_link.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A userinfo part (`user@host`) would hide the real host from a reader.
    if authority.is_empty() || authority.contains('@') || next_link.chars().any(char::is_control) {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    allowlist.is_empty() || allowlist.iter().any(|h| h.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_canonicalised_as_synapse_does() {
        assert_eq!(
            canonical_email("  Alice.Smith@Example.ORG ").as_deref(),
            Some("alice.smith@example.org")
        );
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "a@b@c",
            "a b@example.org",
            "<a@example.org>",
            "a@example..org",
            "a@example.org,b@example.org",
        ] {
            assert_eq!(canonical_email(bad), None, "{bad:?}");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert_eq!(canonical_email(&long), None);
    }

    #[test]
    fn templates_fill_placeholders_and_reject_unknown_ones() {
        let t = Template::parse("Subject: Hi {app_name}\n\nGo to {link} {{literal}}\n").unwrap();
        let values = HashMap::from([
            ("app_name", "Lattice".to_owned()),
            ("link", "https://x/y".to_owned()),
        ]);
        assert_eq!(
            t.render(&values),
            (
                "Hi Lattice".to_owned(),
                "Go to https://x/y {literal}\n".to_owned()
            )
        );
        assert!(Template::parse("Hi\n\nbody").is_err());
        assert!(Template::parse("Subject: x\nbody").is_err());
        assert!(
            Template::parse("Subject: x\n\n{password}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(Template::parse("Subject: x\n\n{link").is_err());
        for purpose in Purpose::all() {
            Template::default_for(purpose).check().unwrap();
        }
    }

    #[test]
    fn next_links_must_be_http_on_allowed_hosts() {
        assert!(next_link_allowed("https://app.example.org/done", &[]));
        assert!(!next_link_allowed("javascript:alert(1)", &[]));
        assert!(!next_link_allowed("https://evil@app.example.org/", &[]));
        let allow = vec!["app.example.org".to_owned()];
        assert!(next_link_allowed(
            "https://APP.example.org:8443/x?y",
            &allow
        ));
        assert!(!next_link_allowed("https://evil.example/x", &allow));
        assert!(!next_link_allowed(
            "https://app.example.org.evil.example/",
            &allow
        ));
    }
}
