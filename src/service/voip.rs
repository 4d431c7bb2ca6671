//! TURN credentials for VoIP (`/voip/turnServer`): short-lived, derived from a
//! secret shared with the TURN server, as coturn's `use-auth-secret` expects
//! (the TURN REST API): the username is `<expiry unix seconds>:<user ID>`, the
//! password `base64(HMAC-SHA1(secret, username))`. coturn recomputes the
//! password from the username and refuses it after the expiry.

use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::{UserId, api::client::voip::get_turn_server_info::v3::Response};
use sha1::Sha1;

use crate::{
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::session::Session,
};

/// The username and password for `user`, valid until `expiry` (unix seconds).
pub fn credentials(secret: &str, user: &UserId, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// The `/voip/turnServer` answer: `None` when no TURN server is configured
/// (Synapse then answers `{}`; clients call without one).
pub fn turn_server(app: &AppState, session: &Session) -> Result<Option<Response>> {
    let turn = &app.config.turn;
    let Some(secret) = turn.shared_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if turn.uris.is_empty() {
        return Ok(None);
    }
    if session.is_guest && !turn.allow_guests {
        return Err(Error::new(
            ErrorKind::GuestAccessForbidden,
            "Guests may not use the TURN server",
        ));
    }
    let now = u64::try_from(app.clock.now_ms() / 1000).unwrap_or(0);
    let (username, password) = credentials(secret, &session.user_id, now + turn.user_lifetime_secs);
    Ok(Some(Response::new(
        username,
        password,
        turn.uris.clone(),
        std::time::Duration::from_secs(turn.user_lifetime_secs),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against Python's hmac module:
    /// `base64.b64encode(hmac.new(b"north", b"1700003600:@alice:example.org", hashlib.sha1).digest())`.
    #[test]
    fn credentials_are_coturns_rest_api_form() {
        let user = ruma::user_id!("@alice:example.org");
        let (username, password) = credentials("north", user, 1_700_003_600);
        assert_eq!(username, "1700003600:@alice:example.org");
        assert_eq!(password, "6cEh1+OSEPFM5XsksE7KvMgzX1c=");
    }
}
