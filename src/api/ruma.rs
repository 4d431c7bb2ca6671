//! Typed endpoints: the `Ruma<T>` extractor turns an HTTP request into ruma's
//! request type `T`, `RumaResponse<R>` renders ruma's response type, and
//! [`RouterExt::ruma`] registers a handler on every path ruma knows for `T`.
//!
//! Body rules shared by every JSON endpoint: larger than `limits.max_request_body_bytes`
//! → `413 M_TOO_LARGE`; not JSON → `400 M_NOT_JSON`; JSON of the wrong shape →
//! `400 M_BAD_JSON`. Endpoints the spec marks rate-limited take a token from the
//! caller's bucket (user if authenticated, else IP).

use axum::{
    Router,
    body::Body,
    extract::{FromRef, FromRequest, FromRequestParts, RawPathParams, Request},
    handler::Handler,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    error::DeserializationError, error::FromHttpRequestError, path_builder::PathBuilder,
};

use super::{auth::client_ip, rate_limited};
use crate::{
    error::{Error, ErrorKind},
    service::AppState,
    service::session::Session,
};

/// A request of ruma type `T`, parsed and validated.
pub struct Ruma<T>(pub T);

impl<S, T> FromRequest<S> for Ruma<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: IncomingRequest,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parsed, _) = parse(req, state).await?;
        Ok(Ruma(parsed?))
    }
}

/// [`Ruma`] plus the body's top-level JSON object, for the keys beyond the
/// spec's that Synapse honours (a join's custom member content): empty when
/// the body is not an object.
pub struct RumaWithObject<T>(pub T, pub serde_json::Map<String, serde_json::Value>);

impl<S, T> FromRequest<S> for RumaWithObject<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: IncomingRequest,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parsed, bytes) = parse(req, state).await?;
        let object = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(RumaWithObject(parsed?, object))
    }
}

/// Like [`RumaWithObject`], but a body that is JSON yet not of ruma's shape
/// is handed to the handler with ruma's error, for endpoints whose errcode
/// for a bad value is not `M_BAD_JSON` (an unknown room version on
/// `/upgrade` is `M_UNSUPPORTED_ROOM_VERSION`). Rate limits, size and
/// not-JSON are still refused here.
pub struct RumaOrObject<T>(
    pub Result<T, Error>,
    pub serde_json::Map<String, serde_json::Value>,
);

impl<S, T> FromRequest<S> for RumaOrObject<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: IncomingRequest,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parsed, bytes) = parse(req, state).await?;
        let object = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(RumaOrObject(parsed, object))
    }
}

/// Parses and validates a ruma request; also returns the body as read. The
/// outer error refuses the request before its body is known to be JSON; the
/// inner one is ruma's verdict on a JSON body.
async fn parse<S, T>(req: Request, state: &S) -> Result<(Result<T, Error>, bytes::Bytes), Error>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: IncomingRequest,
{
    let app = AppState::from_ref(state);
    let (mut parts, body) = req.into_parts();

    // Appservices registered with `rate_limited: false` are exempt.
    let exempt = parts
        .extensions
        .get::<Session>()
        .and_then(|s| s.appservice.as_ref())
        .is_some_and(|a| !a.rate_limited);
    if T::RATE_LIMITED && !exempt {
        let key = match parts.extensions.get::<Session>() {
            Some(session) => session.user_id.to_string(),
            None => client_ip(&parts, &app)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
        };
        rate_limited(app.client_limiter.check(&key))?;
    }

    let params = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .map_err(|e| Error::invalid_param(format!("Invalid path parameter: {e}")))?;
    let mut params: Vec<&str> = params.iter().map(|(_, v)| v).collect();
    // Routes registered by `ruma_empty_last` end before the last parameter
    // (`/state/m.room.name` or `/state/m.room.name/`): it is the empty string.
    if params.len() + 1 == T::PATH_BUILDER._path_parameters().len() {
        params.push("");
    }

    let mut bytes = read_body(body, app.config.limits.max_request_body_bytes).await?;
    if is_json_content(&parts.headers) {
        if bytes.is_empty() && matches!(parts.method, http::Method::POST | http::Method::PUT) {
            // Clients (matrix-nio's join, among others) send no body where the
            // spec's body has only optional fields; Synapse reads that as `{}`.
            bytes = bytes::Bytes::from_static(b"{}");
        } else if !bytes.is_empty() {
            check_json(&bytes)?;
            if let Some(rewritten) = legacy_password_auth(&bytes) {
                bytes = rewritten;
            }
        }
    }
    let request = http::Request::from_parts(parts, bytes.as_ref());
    // A body ruma's parser cannot cope with must not take the request down
    // (ruma 0.17's login parser indexes a map without checking, for one):
    // a panic while parsing is the client's malformed input.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        T::try_from_http_request(request, &params)
    })) {
        Ok(parsed) => Ok((parsed.map_err(request_error), bytes.clone())),
        Err(_) => Ok((
            Err(Error::bad_json("The request body could not be parsed")),
            bytes.clone(),
        )),
    }
}

/// A body whose UIA `auth` is an `m.login.password` stage in the deprecated
/// form, `"user": "<id>"` instead of an `identifier` (SyTest and older
/// clients send it; Synapse accepts it; ruma's type has only `identifier`),
/// rewritten with the equivalent `m.id.user` identifier. `None` for any other
/// body (most: only bodies naming both `auth` and `user` are parsed).
fn legacy_password_auth(bytes: &[u8]) -> Option<bytes::Bytes> {
    use memchr::memmem::find;
    find(bytes, b"\"auth\"")?;
    find(bytes, b"\"user\"")?;
    let mut body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auth = body.get_mut("auth")?.as_object_mut()?;
    if auth.get("type")?.as_str()? != "m.login.password" || auth.contains_key("identifier") {
        return None;
    }
    let user = auth.remove("user")?;
    user.as_str()?;
    auth.insert(
        "identifier".into(),
        serde_json::json!({ "type": "m.id.user", "user": user }),
    );
    serde_json::to_vec(&body).ok().map(bytes::Bytes::from)
}

/// Reads a whole body, refusing more than `limit` bytes with `M_TOO_LARGE`.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            Error::new(ErrorKind::TooLarge, "Request body too large")
        } else {
            Error::bad_json(format!("Could not read request body: {inner}"))
        }
    })
}

fn is_json_content(headers: &http::HeaderMap) -> bool {
    match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => ct.contains("json") || ct.starts_with("text/plain"),
    }
}

/// How deeply a request body's arrays and objects may nest. serde_json refuses to
/// build values deeper than this anyway; checking up front refuses them before
/// any parser (or anything walking raw event content) sees them.
pub const MAX_JSON_DEPTH: usize = 128;

/// Distinguishes "not JSON at all" from "JSON of the wrong shape", and refuses
/// JSON nested deeper than [`MAX_JSON_DEPTH`] (`400 M_BAD_JSON`).
pub fn check_json(bytes: &[u8]) -> Result<(), Error> {
    // JSON is UTF-8 (RFC 8259); skipping over a string does not check it.
    std::str::from_utf8(bytes)
        .map_err(|e| Error::new(ErrorKind::NotJson, format!("Content not UTF-8: {e}")))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|e| Error::new(ErrorKind::NotJson, format!("Content not JSON: {e}")))?;
    if nesting_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(Error::bad_json(format!(
            "JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Whether arrays and objects in `json` (valid JSON) nest deeper than `max`.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub(super) fn request_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED)
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            Error::invalid_param(format!("Invalid query parameters: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            Error::invalid_param(format!("Invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(e) => {
            Error::bad_json(format!("Invalid request: {e}"))
        }
        _ => Error::bad_json("Invalid request"),
    }
}

/// A ruma response type, rendered as HTTP.
pub struct RumaResponse<R>(pub R);

impl<R: OutgoingResponse> IntoResponse for RumaResponse<R> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<bytes::BytesMut>() {
            Ok(response) => response.map(|body| Body::from(body.freeze())),
            Err(e) => Error::Internal(anyhow::anyhow!("serialising response: {e}")).into_response(),
        }
    }
}

pub trait RouterExt {
    /// Like [`RouterExt::ruma`], and also routes the paths without their last
    /// parameter, with and without a trailing slash, passing it as empty: state
    /// keys are often empty and clients send `/state/{type}/` or `/state/{type}`.
    fn ruma_empty_last<T, H, X>(self, handler: H) -> Self
    where
        T: IncomingRequest,
        H: Handler<X, AppState>,
        X: 'static;

    /// Routes every path ruma knows for `T` (stable and unstable) with `T`'s method
    /// to `handler`.
    fn ruma<T, H, X>(self, handler: H) -> Self
    where
        T: IncomingRequest,
        H: Handler<X, AppState>,
        X: 'static;
}

impl RouterExt for Router<AppState> {
    fn ruma<T, H, X>(self, handler: H) -> Self
    where
        T: IncomingRequest,
        H: Handler<X, AppState>,
        X: 'static,
    {
        let method =
            MethodFilter::try_from(T::METHOD).expect("ruma endpoints use standard methods");
        T::PATH_BUILDER.all_paths().fold(self, |router, path| {
            router.route(path, on(method, handler.clone()))
        })
    }

    fn ruma_empty_last<T, H, X>(self, handler: H) -> Self
    where
        T: IncomingRequest,
        H: Handler<X, AppState>,
        X: 'static,
    {
        let method =
            MethodFilter::try_from(T::METHOD).expect("ruma endpoints use standard methods");
        T::PATH_BUILDER
            .all_paths()
            .fold(self.ruma::<T, H, X>(handler.clone()), |router, path| {
                let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
                router
                    .route(base, on(method, handler.clone()))
                    .route(&format!("{base}/"), on(method, handler.clone()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<(), Error>) -> ErrorKind {
        match result {
            Err(Error::Matrix { kind, .. }) => kind,
            other => panic!("expected a Matrix error, got {other:?}"),
        }
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// The deprecated `user` of a password stage becomes an `m.id.user`
    /// identifier; everything else is left as it came.
    #[test]
    fn legacy_password_auth_gets_an_identifier() {
        let legacy = br#"{"auth":{"type":"m.login.password","user":"@a:x","password":"p","session":"s"},"k":1}"#;
        let rewritten: serde_json::Value =
            serde_json::from_slice(&legacy_password_auth(legacy).unwrap()).unwrap();
        assert_eq!(
            rewritten,
            serde_json::json!({ "auth": { "type": "m.login.password", "password": "p",
                "session": "s", "identifier": { "type": "m.id.user", "user": "@a:x" } }, "k": 1 })
        );
        for untouched in [
            &br#"{"auth":{"type":"m.login.password","identifier":{"type":"m.id.user","user":"a"},"user":"b"}}"#[..],
            br#"{"auth":{"type":"m.login.dummy","user":"a"}}"#,
            br#"{"user":"a","password":"p"}"#,
            br#"{"auth":{"type":"m.login.password","user":5}}"#,
        ] {
            assert!(legacy_password_auth(untouched).is_none());
        }
    }

    #[test]
    fn json_nested_up_to_the_limit_is_accepted_and_deeper_is_refused() {
        assert!(check_json(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            kind(check_json(nested(MAX_JSON_DEPTH + 1).as_bytes())),
            ErrorKind::BadJson
        );
        // Objects count as arrays do.
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_JSON_DEPTH + 1),
            "}".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(kind(check_json(objects.as_bytes())), ErrorKind::BadJson);
        // Brackets inside strings, escaped quotes included, are not nesting.
        let quoted = format!(r#"{{"a": "\"{}", "b": [1]}}"#, "[".repeat(500));
        assert!(check_json(quoted.as_bytes()).is_ok());
        // Not JSON at all stays M_NOT_JSON.
        assert_eq!(kind(check_json(b"[[")), ErrorKind::NotJson);
        // Invalid UTF-8 inside a string is not JSON either.
        assert_eq!(
            kind(check_json(b"{ \"username\": \"a\x81\" }")),
            ErrorKind::NotJson
        );
    }
}
