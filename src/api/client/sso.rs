//! Single sign-on through OpenID Connect providers (spec: "SSO client
//! login/authentication"):
//!
//! - `GET /_matrix/client/v3/login/sso/redirect?redirectUrl=…`: straight to
//!   the provider when there is one, else a page to choose one;
//! - `GET /_matrix/client/v3/login/sso/redirect/{idpId}?redirectUrl=…`: a
//!   302 to the provider, with the cookie that binds the sign-in to this
//!   browser;
//! - `GET /_synapse/client/oidc/callback`: the provider's redirect back; a
//!   302 to the client's `redirectUrl` with a `loginToken`, or (for the
//!   `m.login.sso` UIA stage) the page that tells the client the stage is
//!   done. Errors are HTML pages: a browser shows them.
//! - the `m.login.sso` fallback page (`/auth/m.login.sso/fallback/web`), from
//!   [`super::fallback`]: [`uia_page`], then [`uia_start`] with `&idp=`.
//!
//! Without configured providers these endpoints are `404 M_UNRECOGNIZED`.

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use ruma::api::client::session::{sso_login, sso_login_with_provider};

use super::fallback::{escape_html, html, page};
use crate::{
    api::{
        auth::ClientIp,
        rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::sso::{self, Completed, Purpose},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<sso_login::v3::Request, _, _>(redirect)
        .ruma::<sso_login_with_provider::v3::Request, _, _>(redirect_to)
        .route(&format!("/{}", sso::CALLBACK_PATH), get(callback))
}

fn not_configured() -> Error {
    Error::unrecognized(StatusCode::NOT_FOUND)
}

/// `GET /login/sso/redirect`.
async fn redirect(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<sso_login::v3::Request>,
) -> Result<Response> {
    let providers = state.sso.all();
    match providers {
        [] => Err(not_configured()),
        [only] => {
            let only = only.clone();
            start_login(&state, ip, &only, req.redirect_url).await
        }
        several => {
            // Refuse a bad redirectUrl here too, before anyone picks.
            if !sso::redirect_allowed(&state, &req.redirect_url) {
                return Err(Error::forbidden(
                    "This redirectUrl is not an allowed client of this server",
                ));
            }
            let target =
                form_urlencoded::byte_serialize(req.redirect_url.as_bytes()).collect::<String>();
            let links: String = several
                .iter()
                .map(|p| {
                    let href = format!(
                        "/_matrix/client/v3/login/sso/redirect/{}?redirectUrl={target}",
                        form_urlencoded::byte_serialize(p.id.as_bytes()).collect::<String>()
                    );
                    format!(
                        "<li><a href=\"{}\">Continue with {}</a></li>\n",
                        escape_html(&href),
                        escape_html(p.name())
                    )
                })
                .collect();
            Ok(html(page(
                "Sign in",
                "",
                &format!("<p>Choose how to sign in:</p>\n<ul>\n{links}</ul>"),
            )))
        }
    }
}

/// `GET /login/sso/redirect/{idpId}`.
async fn redirect_to(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<sso_login_with_provider::v3::Request>,
) -> Result<Response> {
    if state.sso.is_empty() {
        return Err(not_configured());
    }
    let provider = state
        .sso
        .get(&req.idp_id)
        .cloned()
        .ok_or_else(|| Error::not_found("Unknown identity provider"))?;
    start_login(&state, ip, &provider, req.redirect_url).await
}

async fn start_login(
    state: &AppState,
    ip: Option<String>,
    provider: &sso::Provider,
    redirect_url: String,
) -> Result<Response> {
    // Each start stores a pending sign-in: limited like login attempts.
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    let started = sso::start(state, provider, Purpose::Login { redirect_url }).await?;
    let mut response = sso_login::v3::Response::new(started.location);
    response.cookie = Some(started.cookie);
    Ok(RumaResponse(response).into_response())
}

/// `GET /_synapse/client/oidc/callback`.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params: sso::CallbackParams = callback_params(query.as_deref().unwrap_or_default());
    let browser = cookie(&headers, sso::COOKIE);
    let (result, taken) = sso::callback(&state, params, browser.as_deref()).await;
    let mut response = match result {
        Ok(Completed::Login { redirect }) => {
            let mut r = StatusCode::FOUND.into_response();
            match HeaderValue::from_str(&redirect) {
                Ok(v) => {
                    r.headers_mut().insert(header::LOCATION, v);
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r.headers_mut().insert(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    );
                    r
                }
                Err(_) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "Invalid redirect"),
            }
        }
        Ok(Completed::Uia) => super::fallback::done_page(),
        Err(e) => error_response(e),
    };
    if taken && let Ok(v) = HeaderValue::from_str(&sso::clear_cookie(&state)) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The query as the callback's fields (unknown ones ignored; a repeated one:
/// the first).
fn callback_params(query: &str) -> sso::CallbackParams {
    let mut params = sso::CallbackParams::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "state" => &mut params.state,
            "code" => &mut params.code,
            "iss" => &mut params.iss,
            "error" => &mut params.error,
            "error_description" => &mut params.error_description,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    params
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// An error as a page (the user's browser is looking at it).
fn error_response(e: Error) -> Response {
    match e {
        Error::Matrix { kind, message } => {
            let status = match kind {
                ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
                other => other.status(),
            };
            error_page(status, &message)
        }
        other => {
            tracing::error!(error = %other, "SSO callback failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on this server",
            )
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let mut response = html(page(
        "Sign-in failed",
        "",
        &format!(
            "<h1>Sign-in failed</h1>\n<p class=\"error\">{}</p>",
            escape_html(message)
        ),
    ));
    *response.status_mut() = status;
    response
}

/// What the operation a UIA session authorises is, for the confirmation page.
fn describe(kind: &str) -> &'static str {
    match kind {
        "delete_devices" => "remove devices from your account",
        "change_password" => "change your password",
        "deactivate" => "deactivate your account",
        "device_signing_upload" => "replace your cross-signing keys",
        "get_login_token" => "sign in another device",
        "add_threepid" => "add an email address to your account",
        _ => "act on your account",
    }
}

/// `GET /auth/m.login.sso/fallback/web?session=`: says what is being
/// confirmed (the spec's "confirming the operation") and offers the user's
/// identity providers; each link comes back here with `idp` to start the
/// sign-in ([`uia_start`]).
pub async fn uia_page(state: &AppState, session_id: &str) -> Result<Response> {
    let session =
        crate::service::uia::fallback_session(state, session_id, crate::service::uia::SSO).await?;
    let user = session
        .user_id
        .as_deref()
        .and_then(|u| ruma::UserId::parse(u).ok())
        .ok_or_else(|| Error::forbidden("This session is not for a user"))?;
    let providers = sso::providers_of(state, &user).await?;
    // Links, not forms: the pages' `form-action 'self'` would stop a form's
    // redirect to the provider.
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let buttons: String = providers
        .iter()
        .map(|p| {
            format!(
                "<p><a href=\"{}\">Continue with {}</a></p>\n",
                escape_html(&format!("?session={}&idp={}", enc(session_id), enc(&p.id))),
                escape_html(p.name())
            )
        })
        .collect();
    Ok(html(page(
        "Confirm your identity",
        "",
        &format!(
            "<p>A client is asking to {} ({}). To allow it, confirm your identity \
             with single sign-on.</p>\n\
             <p>If you did not expect this, your account may be compromised: do not continue.</p>\n{buttons}",
            describe(&session.kind),
            escape_html(user.as_str()),
        ),
    )))
}

/// `GET /auth/m.login.sso/fallback/web?session=…&idp=…`: to the provider.
pub async fn uia_start(state: &AppState, session_id: &str, idp: &str) -> Result<Response> {
    let session =
        crate::service::uia::fallback_session(state, session_id, crate::service::uia::SSO).await?;
    let user = session
        .user_id
        .as_deref()
        .and_then(|u| ruma::UserId::parse(u).ok())
        .ok_or_else(|| Error::forbidden("This session is not for a user"))?;
    let provider = sso::providers_of(state, &user)
        .await?
        .into_iter()
        .find(|p| p.id == idp)
        .ok_or_else(|| Error::forbidden("You have no account at this identity provider"))?;
    let started = sso::start(
        state,
        &provider,
        Purpose::Uia {
            session: session_id.to_owned(),
        },
    )
    .await?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&started.location).map_err(anyhow::Error::from)?,
    );
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&started.cookie).map_err(anyhow::Error::from)?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
