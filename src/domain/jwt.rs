//! OpenID Connect ID tokens: JSON Web Tokens signed with JWS (RFC 7515/7519)
//! whose signature is checked against the provider's published keys (a JWK
//! set, RFC 7517), then the claims OpenID Connect Core 1.0 §3.1.3.7 requires
//! checked: `iss`, `aud` (and `azp`), `exp`, `iat`, `nonce`, `sub`. No I/O:
//! the caller fetches the keys.
//!
//! Only asymmetric algorithms are accepted (RS*, PS*, ES256/ES384, EdDSA):
//! never `none`, and never HMAC, whose "key" a confused verifier could be made
//! to take from the public key set.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why an ID token is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the ID token is not a well-formed JWT")]
    Malformed,
    #[error("the ID token's algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no key of the provider matches the ID token")]
    UnknownKey,
    #[error("the ID token's signature is invalid")]
    BadSignature,
    #[error("the ID token was issued by {0:?}, not the configured issuer")]
    Issuer(String),
    #[error("the ID token is not meant for this client")]
    Audience,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token was issued in the future")]
    NotYetValid,
    #[error("the ID token's nonce does not match this sign-in")]
    Nonce,
    #[error("the ID token has no subject")]
    Subject,
}

/// A key set as published at a provider's `jwks_uri`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JwkSet {
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What the claims must match.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// Seconds since the epoch.
    pub now: i64,
    /// Clock skew tolerated on `exp` and `iat`, in seconds.
    pub leeway: i64,
}

/// A parsed token: its header's key ID (to refresh the key set when unknown).
pub struct Token<'a> {
    alg: String,
    pub kid: Option<String>,
    signing_input: &'a str,
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

impl<'a> Token<'a> {
    pub fn parse(jwt: &'a str) -> Result<Self, JwtError> {
        let mut pieces = jwt.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (pieces.next(), pieces.next(), pieces.next(), pieces.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)?;
        Ok(Self {
            alg: header.alg,
            kid: header.kid,
            signing_input: &jwt[..jwt.len() - signature.len() - 1],
            signature: decode(signature)?,
            claims,
        })
    }

    /// Whether the key set has a key this token could be signed with.
    pub fn has_key(&self, keys: &JwkSet) -> bool {
        candidates(keys, &self.alg, self.kid.as_deref())
            .next()
            .is_some()
    }

    /// Checks the signature against `keys` and then the claims; returns the
    /// claims.
    pub fn verify(
        self,
        keys: &JwkSet,
        expected: &Expected<'_>,
    ) -> Result<Map<String, Value>, JwtError> {
        let algorithm = Algorithm::from_name(&self.alg)?;
        let mut found = false;
        let mut valid = false;
        for key in candidates(keys, &self.alg, self.kid.as_deref()) {
            found = true;
            if algorithm.verify(key, self.signing_input.as_bytes(), &self.signature) {
                valid = true;
                break;
            }
        }
        if !found {
            return Err(JwtError::UnknownKey);
        }
        if !valid {
            return Err(JwtError::BadSignature);
        }
        check_claims(&self.claims, expected)?;
        Ok(self.claims)
    }
}

/// The keys that may have signed a token of `alg` with key ID `kid`.
fn candidates<'k>(
    keys: &'k JwkSet,
    alg: &'k str,
    kid: Option<&'k str>,
) -> impl Iterator<Item = &'k Jwk> {
    let kty = Algorithm::from_name(alg).ok().map(|a| a.kty());
    keys.keys.iter().filter(move |k| {
        Some(k.kty.as_str()) == kty
            && k.use_.as_deref().is_none_or(|u| u == "sig")
            && k.alg.as_deref().is_none_or(|a| a == alg)
            && (kid.is_none() || k.kid.as_deref() == kid)
    })
}

#[derive(Clone, Copy)]
enum Algorithm {
    Rsa(&'static signature::RsaParameters),
    Ec(&'static signature::EcdsaVerificationAlgorithm, &'static str),
    EdDsa,
}

impl Algorithm {
    fn from_name(alg: &str) -> Result<Self, JwtError> {
        Ok(match alg {
            "RS256" => Self::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Self::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Self::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => Self::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
            "PS384" => Self::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
            "PS512" => Self::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
            "ES256" => Self::Ec(&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
            "ES384" => Self::Ec(&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
            "EdDSA" => Self::EdDsa,
            other => return Err(JwtError::Algorithm(other.to_owned())),
        })
    }

    fn kty(self) -> &'static str {
        match self {
            Self::Rsa(_) => "RSA",
            Self::Ec(..) => "EC",
            Self::EdDsa => "OKP",
        }
    }

    fn verify(self, key: &Jwk, message: &[u8], sig: &[u8]) -> bool {
        let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
        match self {
            Self::Rsa(params) => {
                let (Some(n), Some(e)) = (b64(&key.n), b64(&key.e)) else {
                    return false;
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            Self::Ec(alg, curve) => {
                let (Some(x), Some(y)) = (b64(&key.x), b64(&key.y)) else {
                    return false;
                };
                if key.crv.as_deref() != Some(curve) {
                    return false;
                }
                let mut point = vec![0x04];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                UnparsedPublicKey::new(alg, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Self::EdDsa => {
                let Some(x) = b64(&key.x) else {
                    return false;
                };
                key.crv.as_deref() == Some("Ed25519")
                    && UnparsedPublicKey::new(&signature::ED25519, x)
                        .verify(message, sig)
                        .is_ok()
            }
        }
    }
}

fn check_claims(claims: &Map<String, Value>, expected: &Expected<'_>) -> Result<(), JwtError> {
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == expected.issuer => {}
        other => return Err(JwtError::Issuer(other.unwrap_or_default().to_owned())),
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expected.client_id) {
        return Err(JwtError::Audience);
    }
    // Several audiences: the authorised party must be this client.
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(expected.client_id) {
        return Err(JwtError::Audience);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::Expired)?;
    if exp + expected.leeway <= expected.now {
        return Err(JwtError::Expired);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(JwtError::Malformed)?;
    if iat > expected.now + expected.leeway {
        return Err(JwtError::NotYetValid);
    }
    // The nonce ties the token to the sign-in this browser started: compared
    // in constant time, as it is a secret of that sign-in.
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        nonce.as_bytes(),
        expected.nonce.as_bytes(),
    )) {
        return Err(JwtError::Nonce);
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(JwtError::Subject);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ring::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
    };
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn expected() -> Expected<'static> {
        Expected {
            issuer: "https://idp.example",
            client_id: "lattice",
            nonce: "n-0S6",
            now: NOW,
            leeway: 60,
        }
    }

    fn good_claims() -> Value {
        json!({
            "iss": "https://idp.example", "aud": "lattice", "sub": "248289761001",
            "exp": NOW + 300, "iat": NOW - 5, "nonce": "n-0S6", "name": "Jane"
        })
    }

    struct Signer {
        ed: Ed25519KeyPair,
        ec: EcdsaKeyPair,
    }

    impl Signer {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let ed =
                Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
                    .unwrap();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let ec =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Self { ed, ec }
        }

        fn keys(&self) -> JwkSet {
            let ec = self.ec.public_key().as_ref();
            serde_json::from_value(json!({ "keys": [
                { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(self.ed.public_key().as_ref()) },
                { "kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
                  "x": URL_SAFE_NO_PAD.encode(&ec[1..33]), "y": URL_SAFE_NO_PAD.encode(&ec[33..65]) },
            ]}))
            .unwrap()
        }

        fn sign(&self, alg: &str, kid: &str, claims: &Value) -> String {
            let header = json!({ "alg": alg, "kid": kid, "typ": "JWT" });
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = match alg {
                "EdDSA" => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
                _ => self
                    .ec
                    .sign(&SystemRandom::new(), input.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
    }

    fn check(jwt: &str, keys: &JwkSet) -> Result<Map<String, Value>, JwtError> {
        Token::parse(jwt)?.verify(keys, &expected())
    }

    #[test]
    fn valid_tokens_pass_with_either_key_type() {
        let s = Signer::new();
        let claims = check(&s.sign("EdDSA", "ed", &good_claims()), &s.keys()).unwrap();
        assert_eq!(claims["name"], "Jane");
        check(&s.sign("ES256", "ec", &good_claims()), &s.keys()).unwrap();
        // Several audiences are fine when this client is the authorised party.
        let mut c = good_claims();
        c["aud"] = json!(["other", "lattice"]);
        c["azp"] = json!("lattice");
        check(&s.sign("ES256", "ec", &c), &s.keys()).unwrap();
    }

    #[test]
    fn signatures_are_checked() {
        let s = Signer::new();
        let other = Signer::new();
        // Signed by another key under the same key ID.
        let forged = other.sign("EdDSA", "ed", &good_claims());
        assert_eq!(check(&forged, &s.keys()), Err(JwtError::BadSignature));
        // A claim changed after signing.
        let jwt = s.sign("EdDSA", "ed", &good_claims());
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut c = good_claims();
        c["sub"] = json!("admin");
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        assert_eq!(
            check(&parts.join("."), &s.keys()),
            Err(JwtError::BadSignature)
        );
        // An unknown key ID, and an algorithm the key is not for.
        assert_eq!(
            check(&s.sign("EdDSA", "nope", &good_claims()), &s.keys()),
            Err(JwtError::UnknownKey)
        );
        assert_eq!(
            check(&s.sign("ES256", "ed", &good_claims()), &s.keys()),
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let s = Signer::new();
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg }).to_string());
            let body = URL_SAFE_NO_PAD.encode(good_claims().to_string());
            let jwt = format!("{header}.{body}.");
            assert_eq!(
                check(&jwt, &s.keys()),
                Err(JwtError::Algorithm(alg.to_owned()))
            );
        }
        assert_eq!(check("a.b", &s.keys()).err(), Some(JwtError::Malformed));
        assert_eq!(check("a.b.c.d", &s.keys()).err(), Some(JwtError::Malformed));
    }

    #[test]
    fn claims_are_checked() {
        let s = Signer::new();
        let cases: Vec<(&str, Value, JwtError)> = vec![
            (
                "iss",
                json!("https://evil.example"),
                JwtError::Issuer("https://evil.example".into()),
            ),
            ("aud", json!("other-client"), JwtError::Audience),
            ("aud", json!(["other", "lattice"]), JwtError::Audience),
            ("azp", json!("other"), JwtError::Audience),
            ("exp", json!(NOW - 61), JwtError::Expired),
            ("exp", Value::Null, JwtError::Expired),
            ("iat", json!(NOW + 3600), JwtError::NotYetValid),
            ("nonce", json!("replayed"), JwtError::Nonce),
            ("nonce", Value::Null, JwtError::Nonce),
            ("sub", json!(""), JwtError::Subject),
        ];
        for (claim, value, error) in cases {
            let mut c = good_claims();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(claim);
            } else {
                c[claim] = value;
            }
            assert_eq!(
                check(&s.sign("EdDSA", "ed", &c), &s.keys()),
                Err(error),
                "{claim}"
            );
        }
    }
}
