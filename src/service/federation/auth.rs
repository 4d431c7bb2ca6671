//! Inbound request authentication: the `X-Matrix` header checked against the
//! origin's keys, over exactly the method, target and body received.

use ruma::{
    CanonicalJsonValue, OwnedServerName,
    signatures::{PublicKeyMap, verify_json},
};

use crate::{
    domain::xmatrix::{self, XMatrix},
    error::{Error, ErrorKind, Result},
    service::{AppState, server_keys},
};

fn unauthorized(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

/// A request's `X-Matrix` header, checked as far as it can be without the
/// body: it parses, names us as destination and another server as origin, and
/// that origin's key is known (fetched when not, under the key-fetch backoff).
pub struct Claimed {
    header: XMatrix,
    key_id: String,
    key: ruma::serde::Base64,
}

/// The checks that come before reading the body, so an unauthenticated request
/// costs no body read or parse (and a bogus origin one failed key fetch per
/// backoff window).
pub async fn check_header(app: &AppState, headers: &http::HeaderMap) -> Result<Claimed> {
    let mut offered = false;
    let header = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .inspect(|v| offered |= v.trim_start().starts_with("X-Matrix"))
        .find_map(|v| XMatrix::parse(v).ok());
    let Some(header) = header else {
        // An X-Matrix header that does not parse (an origin such as
        // `localhost:http`) is a bad request; none at all, unauthorized.
        return Err(if offered {
            Error::new(
                ErrorKind::MalformedAuthorization,
                "Malformed X-Matrix authorization",
            )
        } else {
            unauthorized("Missing X-Matrix authorization")
        });
    };
    if let Some(destination) = &header.destination
        && destination != &app.server_name
    {
        return Err(unauthorized("The request is for another destination"));
    }
    if header.origin == app.server_name {
        return Err(unauthorized("The request claims to come from this server"));
    }
    let key_id = header.key.to_string();
    let keys = server_keys::public_keys(
        app,
        &header.origin,
        std::slice::from_ref(&key_id),
        app.clock.now_ms(),
    )
    .await?;
    let Some(key) = keys.get(&key_id).cloned() else {
        return Err(unauthorized(format!(
            "Unknown or expired key {key_id} of {}",
            header.origin
        )));
    };
    Ok(Claimed {
        header,
        key_id,
        key,
    })
}

/// Verifies the signature of a [`check_header`]ed request over exactly the
/// method, target and body received; returns the authenticated origin.
pub fn verify_signature(
    app: &AppState,
    claimed: Claimed,
    method: &http::Method,
    uri: &http::Uri,
    body: &[u8],
) -> Result<OwnedServerName> {
    let Claimed {
        header,
        key_id,
        key,
    } = claimed;
    let content = if body.is_empty() {
        None
    } else {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::NotJson, format!("Content not JSON: {e}")))?;
        Some(
            CanonicalJsonValue::try_from(value)
                .map_err(|e| Error::bad_json(format!("Content is not canonical JSON: {e}")))?,
        )
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut object = xmatrix::request_object(
        method.as_str(),
        path_and_query,
        &header.origin,
        &app.server_name,
        content,
    );
    let mut sigs = ruma::CanonicalJsonObject::new();
    let mut by_key = ruma::CanonicalJsonObject::new();
    by_key.insert(
        key_id.clone(),
        CanonicalJsonValue::String(header.sig.clone()),
    );
    sigs.insert(
        header.origin.to_string(),
        CanonicalJsonValue::Object(by_key),
    );
    object.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
    let mut map = PublicKeyMap::new();
    map.insert(
        header.origin.to_string(),
        [(key_id, key)].into_iter().collect(),
    );
    verify_json(&map, &object).map_err(|_| unauthorized("Invalid X-Matrix signature"))?;
    Ok(header.origin)
}
