//! `POST /_matrix/client/v3/user/{userId}/openid/request_token` (spec:
//! client-server API, "OpenID"): a token a third party can exchange, over
//! federation, for the user's ID.

use axum::{Router, extract::State};
use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::Result,
    service::AppState,
    service::openid,
};

pub fn router() -> Router<AppState> {
    Router::new().ruma::<request_openid_token::v3::Request, _, _>(request_token)
}

async fn request_token(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<request_openid_token::v3::Request>,
) -> Result<RumaResponse<request_openid_token::v3::Response>> {
    let (token, expires_in) = openid::request_token(&app, &user, &req.user_id).await?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        app.server_name.clone(),
        expires_in,
    )))
}
