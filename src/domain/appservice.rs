//! Application service registrations (spec: Application Service API,
//! "Registration"): the YAML files bridges generate, parsed and validated,
//! and the namespace rules every appservice decision is made from. Pure: the
//! caller reads the files.
//!
//! Regexes match from the start of the ID, not necessarily to its end (as
//! Synapse matches them): `@irc_.*` covers `@irc_bob:example.org`.

use std::{fmt, path::Path, sync::Arc};

use regex::Regex;
use ruma::{OwnedUserId, ServerName};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// One registration file as bridges write it. Unknown keys are ignored (bridges
/// add their own, and unstable MSC keys come and go).
#[derive(Deserialize)]
struct RawRegistration {
    id: Option<String>,
    /// `null` (or absent): the appservice receives no transactions.
    #[serde(default)]
    url: Option<String>,
    as_token: Option<String>,
    hs_token: Option<String>,
    sender_localpart: Option<String>,
    #[serde(default)]
    namespaces: RawNamespaces,
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    #[serde(default)]
    receive_ephemeral: Option<bool>,
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral_msc2409: Option<bool>,
    #[serde(default)]
    push_ephemeral: Option<bool>,
    #[serde(default, rename = "org.matrix.msc3202")]
    msc3202: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawNamespaces {
    #[serde(default)]
    users: Option<Vec<RawNamespace>>,
    #[serde(default)]
    aliases: Option<Vec<RawNamespace>>,
    #[serde(default)]
    rooms: Option<Vec<RawNamespace>>,
}

#[derive(Deserialize)]
struct RawNamespace {
    #[serde(default)]
    exclusive: Option<bool>,
    regex: Option<String>,
}

/// One namespace entry: a regex anchored at the start of the ID.
#[derive(Clone)]
pub struct Namespace {
    pub exclusive: bool,
    regex: Regex,
    /// The regex as the registration wrote it.
    source: String,
}

impl Namespace {
    pub fn source(&self) -> &str {
        &self.source
    }

    fn matches(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

/// A validated registration.
pub struct Registration {
    pub id: String,
    /// Where transactions and queries go; `None`: nothing is pushed.
    pub url: Option<url::Url>,
    /// SHA-256 of the `as_token`: the token itself is not kept.
    as_token_hash: [u8; 32],
    /// Sent to the appservice to authenticate us (it must be kept).
    pub hs_token: String,
    /// `@sender_localpart:server`, the appservice's own user.
    pub sender: OwnedUserId,
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
    pub rate_limited: bool,
    pub protocols: Vec<String>,
    /// `receive_ephemeral`: typing, receipts and presence go out in the
    /// transactions' `ephemeral` (MSC2409 as merged in the spec).
    pub receive_ephemeral: bool,
    /// `de.sorunome.msc2409.push_ephemeral` (or `push_ephemeral`): the same,
    /// under the unstable name `de.sorunome.msc2409.ephemeral`.
    pub ephemeral_legacy: bool,
    /// `org.matrix.msc3202`: device lists, one-time key counts and unused
    /// fallback key types of the namespace's devices (encrypted bridges).
    pub msc3202: bool,
}

impl fmt::Debug for Registration {
    // Tokens are secrets: only the ID is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn any(list: &[Namespace], id: &str) -> bool {
    list.iter().any(|n| n.matches(id))
}

fn any_exclusive(list: &[Namespace], id: &str) -> bool {
    list.iter().any(|n| n.exclusive && n.matches(id))
}

impl Registration {
    /// The user is the appservice's sender or in its user namespace.
    pub fn is_interested_in_user(&self, user_id: &str) -> bool {
        self.sender.as_str() == user_id || any(&self.users, user_id)
    }

    /// The user is one the appservice may act as (masquerade, register).
    pub fn may_act_as(&self, user_id: &str) -> bool {
        self.is_interested_in_user(user_id)
    }

    pub fn is_interested_in_alias(&self, alias: &str) -> bool {
        any(&self.aliases, alias)
    }

    pub fn is_interested_in_room(&self, room_id: &str) -> bool {
        any(&self.rooms, room_id)
    }

    /// Typing, receipts and presence are sent to it.
    pub fn wants_ephemeral(&self) -> bool {
        self.receive_ephemeral || self.ephemeral_legacy
    }

    /// The transaction field ephemeral events go in (Synapse's choice: the
    /// stable name when `receive_ephemeral` is set, else the unstable one).
    pub fn ephemeral_field(&self) -> &'static str {
        if self.receive_ephemeral {
            "ephemeral"
        } else {
            "de.sorunome.msc2409.ephemeral"
        }
    }

    /// To-device messages for its users' devices are sent to it (MSC4203,
    /// `de.sorunome.msc2409.to_device`) only when it opts in to encrypted
    /// bridging (MSC3202): a registration that asked for typing and receipts
    /// under a broad namespace must not start receiving every user's key
    /// requests and verification messages.
    pub fn wants_to_device(&self) -> bool {
        self.msc3202
    }

    pub fn claims_user(&self, user_id: &str) -> bool {
        self.sender.as_str() == user_id || any_exclusive(&self.users, user_id)
    }

    pub fn claims_alias(&self, alias: &str) -> bool {
        any_exclusive(&self.aliases, alias)
    }

    /// Whether `token` is this appservice's `as_token` (constant time over the
    /// hashes).
    pub fn token_is(&self, token_hash: &[u8; 32]) -> bool {
        self.as_token_hash.ct_eq(token_hash).into()
    }
}

/// Every registration, loaded at start.
#[derive(Debug, Default)]
pub struct Registry {
    pub list: Vec<Arc<Registration>>,
}

impl Registry {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The appservice whose `as_token` hashes to `token_hash`. Every
    /// registration is compared (in constant time each), so the time taken
    /// does not tell which one matched.
    pub fn by_token(&self, token_hash: &[u8; 32]) -> Option<Arc<Registration>> {
        let mut found = None;
        for reg in &self.list {
            if reg.token_is(token_hash) {
                found = Some(reg.clone());
            }
        }
        found
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Registration>> {
        self.list.iter().find(|r| r.id == id).cloned()
    }

    /// The appservice claiming `user_id` exclusively (its sender or an
    /// exclusive user namespace).
    pub fn exclusive_user_owner(&self, user_id: &str) -> Option<Arc<Registration>> {
        self.list.iter().find(|r| r.claims_user(user_id)).cloned()
    }

    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<Arc<Registration>> {
        self.list.iter().find(|r| r.claims_alias(alias)).cloned()
    }

    /// Appservices that may be asked about a user (`/users/{userId}`).
    pub fn user_queriers(&self, user_id: &str) -> Vec<Arc<Registration>> {
        self.list
            .iter()
            .filter(|r| r.url.is_some() && any(&r.users, user_id))
            .cloned()
            .collect()
    }

    /// Appservices that may be asked about an alias (`/rooms/{alias}`).
    pub fn alias_queriers(&self, alias: &str) -> Vec<Arc<Registration>> {
        self.list
            .iter()
            .filter(|r| r.url.is_some() && any(&r.aliases, alias))
            .cloned()
            .collect()
    }

    /// Checks a set of registrations against each other: IDs, `as_token`s and
    /// `hs_token`s are unique, and no appservice's sender is another's.
    pub fn from_list(list: Vec<(String, Registration)>) -> Result<Self, String> {
        for (i, (file, a)) in list.iter().enumerate() {
            for (other_file, b) in &list[..i] {
                let clash = if a.id == b.id {
                    Some("id")
                } else if a.as_token_hash == b.as_token_hash {
                    Some("as_token")
                } else if a.hs_token == b.hs_token {
                    Some("hs_token")
                } else if a.sender == b.sender {
                    Some("sender_localpart")
                } else {
                    None
                };
                if let Some(field) = clash {
                    return Err(format!(
                        "appservice registration {file}: field `{field}` is the same as in {other_file}"
                    ));
                }
            }
        }
        Ok(Self {
            list: list.into_iter().map(|(_, r)| Arc::new(r)).collect(),
        })
    }
}

/// Parses and validates one registration file's text. Errors name the file and
/// the field.
pub fn parse(
    file: &Path,
    text: &str,
    server_name: &ServerName,
    hash_token: impl Fn(&str) -> [u8; 32],
) -> Result<Registration, String> {
    let name = file.display();
    let err =
        |field: &str, why: &str| format!("appservice registration {name}: field `{field}`: {why}");
    let raw: RawRegistration = serde_yaml::from_str(text)
        .map_err(|e| format!("appservice registration {name}: not a valid registration: {e}"))?;
    let required = |v: Option<String>, field: &str| -> Result<String, String> {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| err(field, "missing or empty"))
    };
    let id = required(raw.id, "id")?;
    let as_token = required(raw.as_token, "as_token")?;
    let hs_token = required(raw.hs_token, "hs_token")?;
    if as_token == hs_token {
        return Err(err("hs_token", "must differ from as_token"));
    }
    let localpart = required(raw.sender_localpart, "sender_localpart")?;
    let sender = crate::domain::localpart::new_user_id(&localpart, server_name)
        .ok()
        .filter(|u| u.localpart() == localpart)
        .ok_or_else(|| err("sender_localpart", "not a valid user localpart"))?;
    let url = match raw.url.filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => {
            let parsed = url::Url::parse(&url).map_err(|e| err("url", &format!("{url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(err("url", "must be an http:// or https:// URL with a host"));
            }
            Some(parsed)
        }
    };
    let namespaces = |list: Option<Vec<RawNamespace>>, kind: &str| {
        let mut out = Vec::new();
        for (i, ns) in list.unwrap_or_default().into_iter().enumerate() {
            let field = format!("namespaces.{kind}[{i}].regex");
            let regex = ns
                .regex
                .filter(|r| !r.is_empty())
                .ok_or_else(|| err(&field, "missing or empty"))?;
            let compiled = Regex::new(&format!("^(?:{regex})"))
                .map_err(|e| err(&field, &format!("not a valid regex: {e}")))?;
            out.push(Namespace {
                exclusive: ns.exclusive.unwrap_or(false),
                regex: compiled,
                source: regex,
            });
        }
        Ok::<_, String>(out)
    };
    let users = namespaces(raw.namespaces.users, "users")?;
    let aliases = namespaces(raw.namespaces.aliases, "aliases")?;
    let rooms = namespaces(raw.namespaces.rooms, "rooms")?;
    let protocols = raw.protocols.unwrap_or_default();
    if protocols.iter().any(|p| p.is_empty()) {
        return Err(err("protocols", "a protocol name is empty"));
    }
    Ok(Registration {
        id,
        url,
        as_token_hash: hash_token(&as_token),
        hs_token,
        sender,
        users,
        aliases,
        rooms,
        rate_limited: raw.rate_limited.unwrap_or(true),
        protocols,
        receive_ephemeral: raw.receive_ephemeral.unwrap_or(false),
        ephemeral_legacy: raw
            .push_ephemeral_msc2409
            .or(raw.push_ephemeral)
            .unwrap_or(false),
        msc3202: raw.msc3202.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in s.bytes().enumerate() {
            out[i % 32] ^= b.wrapping_add(i as u8);
        }
        out
    }

    const GOOD: &str = r##"
id: irc
url: "http://127.0.0.1:9999"
as_token: "secret-as"
hs_token: "secret-hs"
sender_localpart: ircbot
rate_limited: false
protocols: ["irc"]
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@irc_.*"
    - exclusive: false
      regex: "@_shared.*"
  aliases:
    - exclusive: true
      regex: "#irc_.*"
  rooms: []
"##;

    fn load(text: &str) -> Result<Registration, String> {
        let server: &ServerName = "example.org".try_into().unwrap();
        parse(Path::new("/etc/reg.yaml"), text, server, hash)
    }

    #[test]
    fn a_bridge_registration_parses() {
        let reg = load(GOOD).unwrap();
        assert_eq!(reg.id, "irc");
        assert_eq!(reg.sender.as_str(), "@ircbot:example.org");
        assert!(!reg.rate_limited);
        assert!(!reg.receive_ephemeral && reg.ephemeral_legacy && !reg.msc3202);
        // Ephemeral events alone do not bring to-device messages.
        assert!(reg.wants_ephemeral() && !reg.wants_to_device());
        assert_eq!(reg.ephemeral_field(), "de.sorunome.msc2409.ephemeral");
        let stable = load(&GOOD.replace(
            "de.sorunome.msc2409.push_ephemeral: true",
            "receive_ephemeral: true",
        ))
        .unwrap();
        assert_eq!(stable.ephemeral_field(), "ephemeral");
        let plain = load(&GOOD.replace("de.sorunome.msc2409.push_ephemeral: true", "")).unwrap();
        assert!(!plain.wants_ephemeral() && !plain.wants_to_device());
        let e2ee = load(&GOOD.replace(
            "de.sorunome.msc2409.push_ephemeral: true",
            "org.matrix.msc3202: true",
        ))
        .unwrap();
        assert!(!e2ee.wants_ephemeral() && e2ee.wants_to_device() && e2ee.msc3202);
        assert!(reg.claims_user("@irc_bob:example.org"));
        assert!(reg.claims_user("@ircbot:example.org"));
        assert!(!reg.claims_user("@_shared1:example.org"));
        assert!(reg.is_interested_in_user("@_shared1:example.org"));
        // Anchored at the start.
        assert!(!reg.is_interested_in_user("@bob_irc_x:example.org"));
        assert!(reg.claims_alias("#irc_chan:example.org"));
        assert!(!reg.claims_alias("#other:example.org"));
        assert!(reg.token_is(&hash("secret-as")));
        assert!(!reg.token_is(&hash("secret-hs")));
        assert!(!format!("{reg:?}").contains("secret"));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        for (text, field) in [
            (GOOD.replace("id: irc", ""), "`id`"),
            (GOOD.replace("as_token: \"secret-as\"", ""), "`as_token`"),
            (
                GOOD.replace("\"@irc_.*\"", "\"@irc_(\""),
                "`namespaces.users[0].regex`",
            ),
            (GOOD.replace("http://127.0.0.1:9999", "ftp://x"), "`url`"),
            (
                GOOD.replace("sender_localpart: ircbot", "sender_localpart: \"Bad Name\""),
                "`sender_localpart`",
            ),
            (GOOD.replace("secret-hs", "secret-as"), "`hs_token`"),
        ] {
            let e = load(&text).unwrap_err();
            assert!(e.contains("/etc/reg.yaml") && e.contains(field), "{e}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let a = load(GOOD).unwrap();
        let b = load(
            &GOOD
                .replace("secret-hs", "other-hs")
                .replace("ircbot", "bot2"),
        )
        .unwrap();
        let e = Registry::from_list(vec![("a.yaml".into(), a), ("b.yaml".into(), b)]).unwrap_err();
        assert!(e.contains("b.yaml") && e.contains("`id`"), "{e}");
        let a = load(GOOD).unwrap();
        let c = load(
            &GOOD
                .replace("id: irc", "id: other")
                .replace("secret-hs", "other-hs")
                .replace("ircbot", "bot2"),
        )
        .unwrap();
        let e = Registry::from_list(vec![("a.yaml".into(), a), ("c.yaml".into(), c)]).unwrap_err();
        assert!(e.contains("`as_token`"), "{e}");
    }
}
