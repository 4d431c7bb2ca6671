//! `GET /_matrix/federation/v1/openid/userinfo?access_token=…` (spec:
//! server-server API, "OpenID"): whose an OpenID token is. The caller is any
//! third party holding a token, not a server, so there is no X-Matrix
//! authentication; callers are rate-limited by IP instead.

use axum::{
    Router,
    extract::{RawQuery, State},
    routing::get,
};
use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    api::{auth::ClientIp, rate_limited, ruma::RumaResponse},
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::openid,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
}

async fn userinfo(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    // Not ruma's request type: its `access_token` is required, so a missing
    // token would be `M_INVALID_PARAM` instead of Synapse's `M_MISSING_TOKEN`.
    RawQuery(query): RawQuery,
) -> Result<RumaResponse<get_openid_userinfo::v1::Response>> {
    rate_limited(app.client_limiter.check(&ip.unwrap_or_default()))?;
    let token = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    // As Synapse answers: a missing token is 401 M_MISSING_TOKEN.
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(Error::new(ErrorKind::MissingToken, "Access token required"));
    };
    let user_id = openid::userinfo(&app, &token).await?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(
        user_id,
    )))
}
