//! Email addresses (spec: "Adding Account Administrative Contact
//! Information", "Account registration", "Password management"), validated by
//! this server's own mail, with no identity server:
//!
//! - `POST /_matrix/client/v3/register/email/requestToken`
//! - `POST /_matrix/client/v3/account/password/email/requestToken`
//! - `POST /_matrix/client/v3/account/3pid/email/requestToken`
//! - `GET /_matrix/client/v3/account/3pid`, `POST /account/3pid/add` (UIA),
//!   `POST /account/3pid/delete`
//! - the mailed link's page, `GET`/`POST /_synapse/client/email/validate`
//!   (as on Synapse, `GET` validates a registration or an addition; for a
//!   password reset it asks to confirm and the form's `POST` validates, so a
//!   mail scanner that follows links resets nothing), and the requestToken answers'
//!   `submit_url`, `POST /_synapse/client/email/submit_token` (the identity
//!   service's `submitToken` body: `sid`, `client_secret`, `token`).
//! - the unsubscribe link of notification mails (email pushers),
//!   `GET`/`POST /_synapse/client/unsubscribe`: `GET` asks to confirm (a mail
//!   scanner following links unsubscribes no one), `POST` removes the pusher;
//!   the `POST` is also RFC 8058's one-click unsubscribe.
//!
//! - through an identity server the client names (`id_server`,
//!   `id_access_token`; see [`crate::service::identity`]):
//!   `POST /account/3pid/bind`, `POST /account/3pid/unbind` (also under
//!   `r0` and `unstable`, as Synapse serves them), and `id_server` in
//!   `/account/3pid/delete`, which unbinds there too.
//!
//! The deprecated `POST /account/3pid` and the msisdn endpoints need SMS or
//! are gone from the spec's current form and are absent (`M_UNRECOGNIZED`).

use axum::{
    Json, Router,
    extract::{RawQuery, Request, State},
    response::Response,
    routing::{get, post},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedSessionId, UInt,
    api::client::account::{
        ThirdPartyIdRemovalStatus, add_3pid, bind_3pid, delete_3pid, get_3pids,
        request_3pid_management_token_via_email, request_password_change_token_via_email,
        request_registration_token_via_email, unbind_3pid,
    },
    thirdparty::{Medium, ThirdPartyIdentifier, ThirdPartyIdentifierInit},
};
use serde::{Deserialize, Serialize};

use super::fallback::{escape_html, html, page};
use crate::{
    api::{
        auth::{AuthUser, ClientIp},
        json, rate_limited,
        ruma::{RouterExt, Ruma, RumaResponse, read_body},
    },
    domain::threepid::Purpose,
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{
        account, identity, notif_mail,
        threepid::{self, TokenRequest},
        uia,
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<request_registration_token_via_email::v3::Request, _, _>(register_token)
        .ruma::<request_password_change_token_via_email::v3::Request, _, _>(password_token)
        .ruma::<request_3pid_management_token_via_email::v3::Request, _, _>(add_token)
        .ruma::<get_3pids::v3::Request, _, _>(list)
        .ruma::<add_3pid::v3::Request, _, _>(add)
        .ruma::<delete_3pid::v3::Request, _, _>(delete)
        .route(
            &format!("/{}", threepid::LINK_PATH),
            get(link_page).post(link_submit),
        )
        .route(&format!("/{}", threepid::SUBMIT_PATH), post(submit_token))
        .merge(identity_routes())
        .route(
            &format!("/{}", notif_mail::UNSUBSCRIBE_PATH),
            get(unsubscribe_page).post(unsubscribe_submit),
        )
}

/// `/account/3pid/bind` and `/unbind` under each prefix Synapse serves them.
fn identity_routes() -> Router<AppState> {
    ["r0", "v3", "unstable"]
        .into_iter()
        .fold(Router::new(), |router, version| {
            router
                .route(
                    &format!("/_matrix/client/{version}/account/3pid/bind"),
                    post(bind),
                )
                .route(
                    &format!("/_matrix/client/{version}/account/3pid/unbind"),
                    post(unbind),
                )
        })
}

#[derive(Deserialize)]
struct Bind {
    client_secret: String,
    id_access_token: String,
    id_server: String,
    sid: String,
}

/// `POST /account/3pid/bind`: the identity server binds the address it
/// validated (session `sid`) to the user.
async fn bind(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    json::Json(body): json::Json<Bind>,
) -> Result<RumaResponse<bind_3pid::v3::Response>> {
    identity::bind(
        &state,
        &user.user_id,
        &body.id_server,
        &body.id_access_token,
        &body.sid,
        &body.client_secret,
    )
    .await?;
    Ok(RumaResponse(bind_3pid::v3::Response::new()))
}

#[derive(Deserialize)]
struct Unbind {
    medium: String,
    address: String,
    id_server: Option<String>,
}

/// `POST /account/3pid/unbind`: at `id_server`, or wherever this server bound
/// the address.
async fn unbind(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    json::Json(body): json::Json<Unbind>,
) -> Result<RumaResponse<unbind_3pid::v3::Response>> {
    let result = identity::unbind(
        &state,
        &user.user_id,
        &body.medium,
        &body.address,
        body.id_server.as_deref(),
    )
    .await?;
    Ok(RumaResponse(unbind_3pid::v3::Response::new(
        removal_status(result),
    )))
}

fn removal_status(unbound: identity::Unbound) -> ThirdPartyIdRemovalStatus {
    match unbound {
        identity::Unbound::Success => ThirdPartyIdRemovalStatus::Success,
        identity::Unbound::NoSupport => ThirdPartyIdRemovalStatus::NoSupport,
    }
}

/// The unsubscribe link's parameters, from its query string.
fn unsubscribe_params(query: &str) -> Result<notif_mail::Unsubscribe> {
    let mut values: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let mut take = |k: &str| values.remove(k).filter(|v| !v.is_empty());
    match (
        take("user_id"),
        take("app_id"),
        take("pushkey"),
        take("token"),
    ) {
        (Some(user_id), Some(app_id), Some(pushkey), Some(token)) => Ok(notif_mail::Unsubscribe {
            user_id,
            app_id,
            pushkey,
            token,
        }),
        _ => Err(Error::new(
            ErrorKind::MissingParam,
            "The link misses one of user_id, app_id, pushkey and token",
        )),
    }
}

async fn unsubscribe_page(RawQuery(query): RawQuery) -> Result<Response> {
    let u = unsubscribe_params(query.as_deref().unwrap_or(""))?;
    // The form posts back to this same URL, query string included.
    Ok(html(page(
        "Unsubscribe",
        "",
        &format!(
            "<form method=\"post\">\n\
             <p>Stop the notification mails to {}?</p>\n\
             <input type=\"submit\" value=\"Unsubscribe\">\n\
             </form>",
            escape_html(&u.pushkey)
        ),
    )))
}

async fn unsubscribe_submit(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    let u = unsubscribe_params(query.as_deref().unwrap_or(""))?;
    match notif_mail::unsubscribe(&state, &u).await {
        Ok(()) => Ok(html(page(
            "Unsubscribed",
            "",
            &format!(
                "<p>You will get no more notification mails at {}.</p>",
                escape_html(&u.pushkey)
            ),
        ))),
        Err(Error::Matrix {
            kind: ErrorKind::Forbidden,
            ..
        }) => {
            let mut response = html(page(
                "Link not valid",
                "",
                "<p class=\"error\">This link is wrong, or you have unsubscribed already.</p>",
            ));
            *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// The session ID of a token sent: one this server made (`token::random_string`,
/// a valid session ID).
fn session_id(sent: &threepid::TokenSent) -> Result<OwnedSessionId> {
    OwnedSessionId::try_from(sent.sid.as_str())
        .map_err(|e| Error::Internal(anyhow::anyhow!("session ID {:?}: {e}", sent.sid)))
}

async fn register_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<request_registration_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_registration_token_via_email::v3::Response>> {
    // Mail goes out only where registration would take the address.
    if state.mailer.is_some()
        && !account::registration_flows(&state)
            .iter()
            .any(|f| f.contains(&uia::EMAIL_IDENTITY))
    {
        return Err(Error::forbidden("Registration has been disabled"));
    }
    let sent = request_token(
        &state,
        Purpose::Register,
        req.client_secret.to_string(),
        req.email,
        req.send_attempt.into(),
        req.next_link,
        ip,
    )
    .await?;
    let mut response = request_registration_token_via_email::v3::Response::new(session_id(&sent)?);
    response.submit_url = Some(sent.submit_url);
    Ok(RumaResponse(response))
}

/// The three `requestToken` endpoints differ only in their purpose.
async fn request_token(
    state: &AppState,
    purpose: Purpose,
    client_secret: String,
    email: String,
    send_attempt: u64,
    next_link: Option<String>,
    ip: Option<String>,
) -> Result<threepid::TokenSent> {
    threepid::request_token(
        state,
        TokenRequest {
            purpose,
            client_secret,
            email,
            send_attempt,
            next_link,
            ip,
        },
    )
    .await
}

async fn password_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<request_password_change_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_password_change_token_via_email::v3::Response>> {
    let sent = request_token(
        &state,
        Purpose::PasswordReset,
        req.client_secret.to_string(),
        req.email,
        req.send_attempt.into(),
        req.next_link,
        ip,
    )
    .await?;
    let mut response =
        request_password_change_token_via_email::v3::Response::new(session_id(&sent)?);
    response.submit_url = Some(sent.submit_url);
    Ok(RumaResponse(response))
}

async fn add_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_3pid_management_token_via_email::v3::Response>> {
    let sent = request_token(
        &state,
        Purpose::AddThreepid,
        req.client_secret.to_string(),
        req.email,
        req.send_attempt.into(),
        req.next_link,
        ip,
    )
    .await?;
    let mut response =
        request_3pid_management_token_via_email::v3::Response::new(session_id(&sent)?);
    response.submit_url = Some(sent.submit_url);
    Ok(RumaResponse(response))
}

/// `GET /account/3pid`, in ruma's `ThirdPartyIdentifier`s but not ruma's
/// response: that one leaves out an empty `threepids` list, which Synapse
/// (and this server) always send.
#[derive(Serialize)]
struct Threepids {
    threepids: Vec<ThirdPartyIdentifier>,
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(_): Ruma<get_3pids::v3::Request>,
) -> Result<Json<Threepids>> {
    let ts = |ms: i64| {
        UInt::try_from(ms)
            .map(MilliSecondsSinceUnixEpoch)
            .map_err(|e| Error::Internal(anyhow::anyhow!("3PID timestamp {ms}: {e}")))
    };
    let threepids = threepid::list(&state, &user.user_id)
        .await?
        .into_iter()
        .map(|t| {
            Ok(ThirdPartyIdentifierInit {
                address: t.address,
                medium: Medium::from(t.medium),
                validated_at: ts(t.validated_ts)?,
                added_at: ts(t.added_ts)?,
            }
            .into())
        })
        .collect::<Result<_>>()?;
    Ok(Json(Threepids { threepids }))
}

async fn add(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<add_3pid::v3::Request>,
) -> Result<RumaResponse<add_3pid::v3::Response>> {
    threepid::add(
        &state,
        &user,
        req.client_secret.as_str(),
        req.sid.as_str(),
        req.auth.as_ref(),
        ip.as_deref(),
    )
    .await?;
    Ok(RumaResponse(add_3pid::v3::Response::new()))
}

async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<delete_3pid::v3::Request>,
) -> Result<RumaResponse<delete_3pid::v3::Response>> {
    // Unbound at the identity servers first (as Synapse does): an identity
    // server that cannot be reached keeps the address, and the client can retry.
    let unbound = identity::unbind(
        &state,
        &user.user_id,
        req.medium.as_str(),
        &req.address,
        req.id_server.as_deref(),
    )
    .await?;
    threepid::delete(&state, &user.user_id, req.medium.as_str(), &req.address).await?;
    Ok(RumaResponse(delete_3pid::v3::Response::new(
        removal_status(unbound),
    )))
}

#[derive(Deserialize)]
struct SubmitToken {
    sid: String,
    client_secret: String,
    token: String,
}

/// The answer of `submitToken`: the identity service API's (ruma's type is in
/// `ruma-identity-service-api`, which this server does not build).
#[derive(Serialize)]
struct TokenSubmitted {
    success: bool,
}

/// The requestToken answers' `submit_url`.
async fn submit_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    json::Json(body): json::Json<SubmitToken>,
) -> Result<Json<TokenSubmitted>> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    threepid::submit_token(&state, &body.sid, &body.client_secret, &body.token).await?;
    Ok(Json(TokenSubmitted { success: true }))
}

/// `GET` of the mailed link. As on Synapse, a registration or an addition is
/// validated by opening the link; a password reset first asks to confirm
/// (the form posts the same parameters back), so that a mail scanner following
/// links cannot validate a reset somebody else asked for.
async fn link_page(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query = query.unwrap_or_default();
    let (sid, token) = link_params(query.as_bytes())?;
    if !threepid::link_needs_confirmation(&state, &sid).await? {
        rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
        return validation_page(&state, &sid, &token).await;
    }
    Ok(html(page(
        "Confirm the password reset",
        "",
        &format!(
            "<form method=\"post\">\n\
             <p>Confirm that you asked to reset your password. You will choose the \
             new password in your application.</p>\n\
             <input type=\"hidden\" name=\"sid\" value=\"{}\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\n\
             <input type=\"submit\" value=\"Confirm\">\n\
             </form>",
            escape_html(&sid),
            escape_html(&token)
        ),
    )))
}

/// The confirmation form's `POST`.
async fn link_submit(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<Response> {
    rate_limited(state.login_limiter.check(&ip.unwrap_or_default()))?;
    let (parts, body) = req.into_parts();
    let body = read_body(body, 64 * 1024).await?;
    let (sid, token) =
        link_params(&body).or_else(|_| link_params(parts.uri.query().unwrap_or("").as_bytes()))?;
    validation_page(&state, &sid, &token).await
}

/// Validates, then shows the result (and sends the user on to the request's
/// `next_link`, if it gave one).
async fn validation_page(state: &AppState, sid: &str, token: &str) -> Result<Response> {
    match threepid::validate_link(state, sid, token).await {
        Ok(next_link) => {
            let (head, more) = match &next_link {
                Some(link) => (
                    format!(
                        "<meta http-equiv=\"refresh\" content=\"0;url={}\">\n",
                        escape_html(link)
                    ),
                    format!("<p><a href=\"{}\">Continue</a></p>", escape_html(link)),
                ),
                None => (
                    String::new(),
                    "<p>You may now close this window and return to the application.</p>"
                        .to_owned(),
                ),
            };
            Ok(html(page(
                "Email address confirmed",
                &head,
                &format!("<p>Your email address has been confirmed.</p>\n{more}"),
            )))
        }
        Err(Error::Matrix {
            kind: ErrorKind::ThreepidAuthFailed,
            ..
        }) => {
            let mut response = html(page(
                "Link not valid",
                "",
                "<p class=\"error\">This link is wrong, has expired or was used already.</p>\n\
                 <p>Ask for a new mail from the application.</p>",
            ));
            *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

fn link_params(form: &[u8]) -> Result<(String, String)> {
    let mut sid = None;
    let mut token = None;
    for (k, v) in form_urlencoded::parse(form) {
        match &*k {
            "sid" => sid = Some(v.into_owned()),
            "token" => token = Some(v.into_owned()),
            _ => {}
        }
    }
    match (sid, token) {
        (Some(sid), Some(token)) if !sid.is_empty() && !token.is_empty() => Ok((sid, token)),
        _ => Err(Error::new(
            ErrorKind::MissingParam,
            "The link misses its sid or token",
        )),
    }
}
