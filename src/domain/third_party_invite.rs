//! Third-party invites and identity servers, the pure parts (spec:
//! client-server "Third-party invites", identity service "Invitation storage"
//! and "Look-up"): the hashed look-up of an address, the public keys an
//! `m.room.third_party_invite` event names, and which of them verifies an
//! identity server's `signed` block.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
};
use ruma::{
    OwnedServerName, ServerName, SigningKeyAlgorithm, signatures::verify_canonical_json_bytes,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `sha256` look-up hash of an address (identity service "Hashing"):
/// `address medium pepper`, SHA-256, unpadded URL-safe base64.
pub fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{address} {medium} {pepper}")))
}

/// An identity server as clients name it (`id_server`): a host name with an
/// optional port, nothing else (no scheme, path or credentials).
pub fn id_server(name: &str) -> Option<OwnedServerName> {
    let parsed = <&ServerName>::try_from(name).ok()?;
    Some(parsed.to_owned())
}

/// One public key of an `m.room.third_party_invite` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteKey {
    /// Unpadded (or padded) standard base64, as the identity server gave it.
    pub public_key: String,
    /// Where to ask whether the key is still valid.
    pub key_validity_url: Option<String>,
}

/// The keys of an `m.room.third_party_invite` event's content: `public_keys`,
/// and the top-level `public_key` (with its `key_validity_url`).
pub fn invite_keys(content: &Value) -> Vec<InviteKey> {
    let mut keys = Vec::new();
    let mut push = |object: &Value| {
        if let Some(public_key) = object["public_key"].as_str() {
            let key = InviteKey {
                public_key: public_key.to_owned(),
                key_validity_url: object["key_validity_url"].as_str().map(str::to_owned),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    };
    for object in content["public_keys"].as_array().into_iter().flatten() {
        push(object);
    }
    push(content);
    keys
}

fn decode_key(key: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD
        .decode(key.trim_end_matches('='))
        .or_else(|_| URL_SAFE_NO_PAD.decode(key.trim_end_matches('=')))
        .ok()
}

/// The key of the invite event `invite_content` whose ed25519 signature on
/// `signed` (the identity server's `{mxid, token, signatures}`, and anything
/// else it signed) verifies; `None` when no signature verifies with any of
/// its keys (forged, made with another key, or not signed at all).
pub fn verifying_key(invite_content: &Value, signed: &Value) -> Option<InviteKey> {
    let object = signed.as_object()?;
    let mut unsigned = object.clone();
    unsigned.remove("signatures");
    unsigned.remove("unsigned");
    let canonical: ruma::CanonicalJsonValue = Value::Object(unsigned).try_into().ok()?;
    let bytes = canonical.to_string();
    let keys = invite_keys(invite_content);
    for entity in object.get("signatures")?.as_object()?.values() {
        for (key_id, signature) in entity.as_object().into_iter().flatten() {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            let Some(signature) = signature.as_str().and_then(decode_key) else {
                continue;
            };
            for key in &keys {
                let Some(public) = decode_key(&key.public_key) else {
                    continue;
                };
                if verify_canonical_json_bytes(
                    &SigningKeyAlgorithm::Ed25519,
                    &public,
                    &signature,
                    bytes.as_bytes(),
                )
                .is_ok()
                {
                    return Some(key.clone());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;
    use serde_json::json;

    use super::*;

    fn pair() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).unwrap()
    }

    fn sign(pair: &Ed25519KeyPair, value: &mut Value) {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
        ruma::signatures::sign_json("id.example.org", pair, &mut object).unwrap();
        *value = serde_json::to_value(object).unwrap();
    }

    fn public(pair: &Ed25519KeyPair) -> String {
        STANDARD_NO_PAD.encode(pair.public_key())
    }

    #[test]
    fn the_lookup_hash_is_the_specs_example() {
        // Identity service API, "Hashing": the example's pepper and address.
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
    }

    #[test]
    fn id_servers_are_host_names_with_ports_only() {
        assert!(id_server("id.example.org").is_some());
        assert!(id_server("127.0.0.1:8090").is_some());
        for bad in [
            "",
            "https://id.example.org",
            "id.example.org/x",
            "a@b",
            "id server",
        ] {
            assert!(id_server(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_signature_verifies_with_any_key_of_the_invite_and_no_other() {
        let (long_term, ephemeral, stranger) = (pair(), pair(), pair());
        let content = json!({
            "display_name": "b...@example.org",
            "public_key": public(&long_term),
            "key_validity_url": "https://id.example.org/_matrix/identity/v2/pubkey/isvalid",
            "public_keys": [
                { "public_key": public(&long_term), "key_validity_url": "https://id.example.org/_matrix/identity/v2/pubkey/isvalid" },
                { "public_key": public(&ephemeral), "key_validity_url": "https://id.example.org/_matrix/identity/v2/pubkey/ephemeral/isvalid" },
            ],
        });
        assert_eq!(invite_keys(&content).len(), 2);
        let block = json!({ "mxid": "@bob:x", "token": "abc", "sender": "@alice:x" });

        let mut signed = block.clone();
        sign(&ephemeral, &mut signed);
        let key = verifying_key(&content, &signed).expect("ephemeral key verifies");
        assert_eq!(key.public_key, public(&ephemeral));
        assert!(key.key_validity_url.unwrap().contains("ephemeral"));

        let mut forged = block.clone();
        sign(&stranger, &mut forged);
        assert_eq!(verifying_key(&content, &forged), None);

        // A signed block changed after signing (another user's ID).
        let mut altered = signed.clone();
        altered["mxid"] = "@mallory:x".into();
        assert_eq!(verifying_key(&content, &altered), None);

        assert_eq!(verifying_key(&content, &block), None);
        assert_eq!(verifying_key(&content, &json!("x")), None);
    }
}
