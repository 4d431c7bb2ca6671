//! User ID localparts: the grammar new accounts must follow (appendices, "User
//! Identifiers") and how a client-supplied username becomes a user ID.

use ruma::{OwnedUserId, ServerName, UserId};

/// Why a requested username cannot become a new account.
#[derive(Debug, PartialEq, Eq)]
pub enum InvalidLocalpart {
    Empty,
    BadCharacter(char),
    TooLong,
    WrongServer,
    Malformed,
}

impl std::fmt::Display for InvalidLocalpart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "User ID cannot be empty"),
            Self::BadCharacter(c) => write!(
                f,
                "User ID can only contain characters a-z, 0-9, or '=_-./+', not {c:?}"
            ),
            Self::TooLong => write!(f, "User ID may not be longer than 255 characters"),
            Self::WrongServer => write!(f, "User ID belongs to another server"),
            Self::Malformed => write!(f, "Malformed user ID"),
        }
    }
}

/// Turns a username as given to `/register` (a localpart, or a full user ID of this
/// server) into the user ID of a new account. Uppercase is folded to lowercase, as
/// Synapse does; anything outside the strict grammar is refused.
pub fn new_user_id(
    username: &str,
    server_name: &ServerName,
) -> Result<OwnedUserId, InvalidLocalpart> {
    let localpart = match username.strip_prefix('@') {
        Some(rest) => {
            let (local, server) = rest.split_once(':').ok_or(InvalidLocalpart::Malformed)?;
            if server != server_name.as_str() {
                return Err(InvalidLocalpart::WrongServer);
            }
            local
        }
        None => username,
    };
    let localpart = localpart.to_lowercase();
    if localpart.is_empty() {
        return Err(InvalidLocalpart::Empty);
    }
    if let Some(c) = localpart.chars().find(|c| !is_localpart_char(*c)) {
        return Err(InvalidLocalpart::BadCharacter(c));
    }
    let full = format!("@{localpart}:{server_name}");
    if full.len() > 255 {
        return Err(InvalidLocalpart::TooLong);
    }
    UserId::parse(full).map_err(|_| InvalidLocalpart::Malformed)
}

fn is_localpart_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+')
}

/// The user a login identifier names: a localpart, or a full user ID (which may use
/// historical characters, so it is parsed leniently).
pub fn login_user_id(user: &str, server_name: &ServerName) -> Option<OwnedUserId> {
    if user.starts_with('@') {
        UserId::parse(user).ok()
    } else {
        UserId::parse(format!("@{}:{server_name}", user.to_lowercase())).ok()
    }
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::*;

    #[test]
    fn accepts_the_grammar_and_folds_case() {
        let s = server_name!("example.org");
        assert_eq!(
            new_user_id("Alice", s).unwrap().as_str(),
            "@alice:example.org"
        );
        assert_eq!(
            new_user_id("a.b_c=d-e/f+g", s).unwrap().as_str(),
            "@a.b_c=d-e/f+g:example.org"
        );
        assert_eq!(
            new_user_id("@bob:example.org", s).unwrap().as_str(),
            "@bob:example.org"
        );
    }

    #[test]
    fn refuses_what_the_grammar_forbids() {
        let s = server_name!("example.org");
        assert_eq!(new_user_id("", s), Err(InvalidLocalpart::Empty));
        assert_eq!(
            new_user_id("al ice", s),
            Err(InvalidLocalpart::BadCharacter(' '))
        );
        assert_eq!(
            new_user_id("al:ice", s),
            Err(InvalidLocalpart::BadCharacter(':'))
        );
        assert_eq!(
            new_user_id("é", s),
            Err(InvalidLocalpart::BadCharacter('é'))
        );
        assert_eq!(
            new_user_id("@bob:other.org", s),
            Err(InvalidLocalpart::WrongServer)
        );
        assert_eq!(
            new_user_id(&"a".repeat(250), s),
            Err(InvalidLocalpart::TooLong)
        );
    }

    #[test]
    fn login_identifiers() {
        let s = server_name!("example.org");
        assert_eq!(
            login_user_id("Alice", s).unwrap().as_str(),
            "@alice:example.org"
        );
        assert_eq!(
            login_user_id("@carol:example.org", s).unwrap().as_str(),
            "@carol:example.org"
        );
        assert!(login_user_id("@nope", s).is_none());
    }
}
