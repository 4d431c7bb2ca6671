//! The one error type of the service and API layers, rendered as Matrix error JSON
//! (`{"errcode": "M_…", "error": "…"}`) with the status the spec gives each code.
//!
//! Internal failures (database, I/O) become a logged `500 M_UNKNOWN` whose body
//! leaks no detail.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Matrix error codes Lattice returns, each with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Forbidden,
    UnknownToken {
        soft_logout: bool,
    },
    MissingToken,
    BadJson,
    /// `M_BAD_JSON` with 405: account data the server controls.
    ServerControlled,
    NotJson,
    NotFound,
    LimitExceeded {
        retry_after_ms: u64,
    },
    Unrecognized {
        status: StatusCode,
    },
    Unauthorized,
    /// `400 M_UNAUTHORIZED`: an `X-Matrix` header that does not parse (a
    /// bad origin server name, say), as Synapse answers.
    MalformedAuthorization,
    UserDeactivated,
    UserInUse,
    InvalidUsername,
    InvalidParam,
    MissingParam,
    /// `400 M_PROFILE_TOO_LARGE`: a profile change past the 64 KiB limit.
    ProfileTooLarge,
    /// `400 M_KEY_TOO_LARGE`: a profile key over 255 bytes.
    KeyTooLarge,
    TooLarge,
    Exclusive,
    GuestAccessForbidden,
    WeakPassword,
    UnsupportedRoomVersion,
    RoomInUse,
    BadAlias,
    /// `403 M_WRONG_ROOM_KEYS_VERSION`: key backup writes to a backup that is not current.
    WrongRoomKeysVersion {
        current_version: Option<String>,
    },
    /// `400 M_UNABLE_TO_AUTHORISE_JOIN`: a restricted room's allowed rooms
    /// include one this server is not in; another resident server may know.
    UnableToAuthoriseJoin,
    /// `400 M_UNABLE_TO_GRANT_JOIN`: the join is allowed, but no local member
    /// may invite, so this server cannot authorise it.
    UnableToGrantJoin,
    /// `400 M_INCOMPATIBLE_ROOM_VERSION`: the joining server does not support the
    /// room's version.
    IncompatibleRoomVersion {
        room_version: String,
    },
    /// `400 M_UNKNOWN_POS`: a sliding-sync `pos` the server no longer knows.
    UnknownPos,
    /// `409 M_CANNOT_OVERWRITE_MEDIA`: an async upload id already has its bytes.
    CannotOverwriteMedia,
    /// `504 M_NOT_YET_UPLOADED`: an async upload id still waits for its bytes.
    NotYetUploaded,
    /// `409 M_UNKNOWN`: the resource exists already (aliases).
    Conflict,
    /// `400 M_UNKNOWN`: a request Lattice understands but does not support.
    BadRequest,
    /// `502 M_UNKNOWN`: another server (remote media) failed or answered badly.
    BadGateway,
    /// `502 M_TOO_LARGE`: remote media larger than this server accepts (the
    /// spec's download answer "content is too large for the server to serve").
    RemoteTooLarge,
    /// Another server's refusal passed through to the client (a `make_join`
    /// error, as the spec asks): its 4xx status and errcode.
    Remote {
        status: StatusCode,
        errcode: String,
    },
    Unknown,
    /// `400 M_THREEPID_IN_USE`: the address belongs to an account already.
    ThreepidInUse,
    /// `400 M_THREEPID_NOT_FOUND`: no account has the address.
    ThreepidNotFound,
    /// `400 M_THREEPID_AUTH_FAILED`: no validated session for the address.
    ThreepidAuthFailed,
    /// `403 M_THREEPID_DENIED`: the server does not take such addresses.
    ThreepidDenied,
}

impl ErrorKind {
    pub fn errcode(&self) -> &str {
        match self {
            Self::Remote { errcode, .. } => errcode,
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken { .. } => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::BadJson | Self::ServerControlled => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded { .. } => "M_LIMIT_EXCEEDED",
            Self::Unrecognized { .. } => "M_UNRECOGNIZED",
            Self::Unauthorized | Self::MalformedAuthorization => "M_UNAUTHORIZED",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            Self::KeyTooLarge => "M_KEY_TOO_LARGE",
            Self::TooLarge | Self::RemoteTooLarge => "M_TOO_LARGE",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            Self::WeakPassword => "M_WEAK_PASSWORD",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::BadAlias => "M_BAD_ALIAS",
            Self::WrongRoomKeysVersion { .. } => "M_WRONG_ROOM_KEYS_VERSION",
            Self::UnknownPos => "M_UNKNOWN_POS",
            Self::UnableToAuthoriseJoin => "M_UNABLE_TO_AUTHORISE_JOIN",
            Self::UnableToGrantJoin => "M_UNABLE_TO_GRANT_JOIN",
            Self::IncompatibleRoomVersion { .. } => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::Conflict => "M_UNKNOWN",
            Self::ThreepidInUse => "M_THREEPID_IN_USE",
            Self::ThreepidNotFound => "M_THREEPID_NOT_FOUND",
            Self::ThreepidAuthFailed => "M_THREEPID_AUTH_FAILED",
            Self::ThreepidDenied => "M_THREEPID_DENIED",
            Self::BadRequest | Self::Unknown | Self::BadGateway => "M_UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden
            | Self::UserDeactivated
            | Self::GuestAccessForbidden
            | Self::ThreepidDenied => StatusCode::FORBIDDEN,
            Self::UnknownToken { .. } | Self::MissingToken | Self::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::WrongRoomKeysVersion { .. } => StatusCode::FORBIDDEN,
            Self::ServerControlled => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::CannotOverwriteMedia => StatusCode::CONFLICT,
            Self::NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
            Self::LimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unrecognized { status } | Self::Remote { status, .. } => *status,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway | Self::RemoteTooLarge => StatusCode::BAD_GATEWAY,
            Self::BadJson
            | Self::NotJson
            | Self::UserInUse
            | Self::InvalidUsername
            | Self::InvalidParam
            | Self::MissingParam
            | Self::ProfileTooLarge
            | Self::KeyTooLarge
            | Self::Exclusive
            | Self::WeakPassword
            | Self::UnsupportedRoomVersion
            | Self::RoomInUse
            | Self::BadAlias
            | Self::UnknownPos
            | Self::UnableToAuthoriseJoin
            | Self::UnableToGrantJoin
            | Self::IncompatibleRoomVersion { .. }
            | Self::BadRequest
            | Self::MalformedAuthorization
            | Self::ThreepidInUse
            | Self::ThreepidNotFound
            | Self::ThreepidAuthFailed => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error the client caused or may act on.
    #[error("{kind:?}: {message}")]
    Matrix { kind: ErrorKind, message: String },
    /// User-interactive authentication is needed (or a stage failed): 401 with the
    /// flows, the session and what is completed.
    #[error("user-interactive authentication required")]
    Uia(Box<Value>),
    /// Anything else: logged, rendered as an opaque 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix {
            kind,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }
    pub fn unrecognized(status: StatusCode) -> Self {
        let message = if status == StatusCode::METHOD_NOT_ALLOWED {
            "Method not allowed for this endpoint"
        } else {
            "Unrecognized request"
        };
        Self::new(ErrorKind::Unrecognized { status }, message)
    }

    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Matrix { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix { kind, message } => {
                let mut body = json!({ "errcode": kind.errcode(), "error": message });
                match &kind {
                    ErrorKind::UnknownToken { soft_logout } => {
                        body["soft_logout"] = json!(soft_logout);
                    }
                    ErrorKind::LimitExceeded { retry_after_ms } => {
                        body["retry_after_ms"] = json!(retry_after_ms);
                    }
                    ErrorKind::WrongRoomKeysVersion { current_version } => {
                        body["current_version"] = json!(current_version);
                    }
                    ErrorKind::IncompatibleRoomVersion { room_version } => {
                        body["room_version"] = json!(room_version);
                    }
                    _ => {}
                }
                let mut response = (kind.status(), Json(body)).into_response();
                if let ErrorKind::LimitExceeded { retry_after_ms } = kind {
                    // Retry-After (seconds) alongside retry_after_ms, as spec v1.10+.
                    let secs = retry_after_ms.div_ceil(1000).max(1);
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
                }
                response
            }
            Error::Uia(body) => (StatusCode::UNAUTHORIZED, Json(*body)).into_response(),
            Error::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                let body = json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" });
                (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
            }
        }
    }
}
