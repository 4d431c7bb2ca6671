//! The server's ed25519 signing key as the rest of the server holds it: its
//! key ID (`ed25519:…`) and the key pair, read from the PKCS#8 document it is
//! stored as. Loading and generating it is `service::signing_key`.

use ruma::signatures::Ed25519KeyPair;

/// The key every local event, federation request and key response is signed
/// with.
pub struct SigningKey {
    pub key_id: String,
    pub pair: Ed25519KeyPair,
}

/// Why a stored key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key ID {0:?} is not an ed25519 key ID")]
    KeyId(String),
    #[error("stored signing key is unreadable: {0}")]
    Unreadable(String),
}

impl SigningKey {
    /// A key from its ID and its PKCS#8 (DER) document.
    pub fn from_pkcs8(key_id: String, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let version = key_id
            .strip_prefix("ed25519:")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KeyError::KeyId(key_id.clone()))?
            .to_owned();
        let pair = Ed25519KeyPair::from_der(pkcs8, version)
            .map_err(|e| KeyError::Unreadable(e.to_string()))?;
        Ok(Self { key_id, pair })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_generated_key_under_its_id() {
        let pkcs8 = Ed25519KeyPair::generate();
        let key = SigningKey::from_pkcs8("ed25519:abc".into(), &pkcs8).unwrap();
        assert_eq!(key.key_id, "ed25519:abc");
        assert_eq!(key.pair.version(), "abc");
    }

    #[test]
    fn refuses_other_algorithms_and_garbage() {
        let pkcs8 = Ed25519KeyPair::generate();
        assert!(matches!(
            SigningKey::from_pkcs8("curve25519:abc".into(), &pkcs8),
            Err(KeyError::KeyId(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8("ed25519:".into(), &pkcs8),
            Err(KeyError::KeyId(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8("ed25519:abc".into(), b"not a key"),
            Err(KeyError::Unreadable(_))
        ));
    }
}
