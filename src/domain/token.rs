//! Opaque secrets handed to clients (access and refresh tokens, device IDs, UIA
//! sessions) and how tokens are stored: as sha256, never in the clear.

use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};

/// A random alphanumeric string of `len` characters from the OS RNG.
pub fn random_string(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new access token: a recognisable prefix plus 256 bits of randomness.
pub fn new_access_token() -> String {
    format!("lat_{}", random_string(43))
}

pub fn new_refresh_token() -> String {
    format!("latr_{}", random_string(43))
}

/// Device IDs as Element shows them: ten uppercase letters.
pub fn new_device_id() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..10)
        .map(|_| rng.gen_range(b'A'..=b'Z') as char)
        .collect()
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let a = new_access_token();
        let b = new_access_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 47);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        let d = new_device_id();
        assert!(d.len() == 10 && d.chars().all(|c| c.is_ascii_uppercase()));
    }
}
