//! Inbound request authentication: the `X-Matrix` header checked against the
//! origin's keys, over exactly the method, target and body received.

use ruma::{
    CanonicalJsonValue, OwnedServerName,
    signatures::{PublicKeyMap, verify_json},
};

use super::keys;
use crate::{
    app::AppState,
    domain::xmatrix::{self, XMatrix},
    error::{Error, ErrorKind, Result},
    storage::now_ms,
};

fn unauthorized(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

/// Verifies a request; returns the authenticated origin server.
pub async fn verify_request(
    app: &AppState,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<OwnedServerName> {
    let header = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| XMatrix::parse(v).ok())
        .ok_or_else(|| unauthorized("Missing or malformed X-Matrix authorization"))?;
    if let Some(destination) = &header.destination
        && destination != &app.server_name
    {
        return Err(unauthorized("The request is for another destination"));
    }
    if header.origin == app.server_name {
        return Err(unauthorized("The request claims to come from this server"));
    }
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
    let key_id = header.key.to_string();
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

    let keys =
        keys::public_keys(app, &header.origin, std::slice::from_ref(&key_id), now_ms()).await?;
    let Some(key) = keys.get(&key_id) else {
        return Err(unauthorized(format!(
            "Unknown or expired key {key_id} of {}",
            header.origin
        )));
    };
    let mut map = PublicKeyMap::new();
    map.insert(
        header.origin.to_string(),
        [(key_id, key.clone())].into_iter().collect(),
    );
    verify_json(&map, &object).map_err(|_| unauthorized("Invalid X-Matrix signature"))?;
    Ok(header.origin)
}
