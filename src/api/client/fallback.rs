//! The HTML fallback pages, for clients that cannot perform a step themselves
//! and open a browser instead:
//!
//! - `GET`/`POST /_matrix/client/v3/auth/{authType}/fallback/web?session=…`
//!   (spec: "User-interactive authentication API", "Fallback"). As Synapse,
//!   only the stages that need a page have one: of those Lattice offers, the
//!   registration token and single sign-on (`m.login.sso`, whose page is in
//!   [`super::sso`]). Others are `404 M_UNRECOGNIZED`. The form POSTs back
//!   here; when the stage is done the page calls `window.onAuthDone()` or posts
//!   `"authDone"` to its opener, and the client resubmits with the session.
//! - `GET /_matrix/static/client/login/` (spec: "Login Fallback"): a page that
//!   logs in through `POST /_matrix/client/v3/login` and calls
//!   `window.matrixLogin.onLogin(response)`: with a password, or through single
//!   sign-on (a link per identity provider; the provider's sign-in comes back
//!   to the page, which is always an allowed `redirectUrl`, and the page logs
//!   in with the `loginToken`).
//!
//! The pages are self-contained (no external resources). Their scripts and
//! styles are fixed text allowed by hash in a strict `Content-Security-Policy`,
//! so nothing a request carries can run; the one value echoed (the session ID)
//! is HTML-escaped. They may not be framed (`frame-ancestors 'none'`,
//! `X-Frame-Options: DENY`, as Synapse sends). Credentials only travel in POST
//! bodies: the pages read none from the query.

use std::sync::LazyLock;

use axum::{
    Router,
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{
    api::{auth::ClientIp, rate_limited, ruma::read_body},
    error::{Error, Result},
    service::AppState,
    service::uia::{self, Fallback},
};

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for version in ["r0", "v3"] {
        router = router.route(
            &format!("/_matrix/client/{version}/auth/{{auth_type}}/fallback/web"),
            get(fallback_page).post(fallback_submit),
        );
    }
    router
        .route("/_matrix/static/client/login/", get(login_page))
        .route("/_matrix/static/client/login", get(login_page))
}

/// `GET …/fallback/web?session=`: the form for the stage.
async fn fallback_page(
    State(app): State<AppState>,
    Path(auth_type): Path<String>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let stage = fallback_stage(&auth_type)?;
    let query = query.as_deref().unwrap_or("");
    let session = param(query, "session")
        .ok_or_else(|| Error::new(crate::error::ErrorKind::MissingParam, "No session supplied"))?;
    if stage == uia::SSO {
        return match param(query, "idp") {
            Some(idp) => {
                rate_limited(app.login_limiter.check(&ip.unwrap_or_default()))?;
                super::sso::uia_start(&app, &session, &idp).await
            }
            None => super::sso::uia_page(&app, &session).await,
        };
    }
    uia::fallback_session(&app, &session, stage).await?;
    Ok(html(token_form(&session, None)))
}

/// `POST …/fallback/web`: the form's answer (`session` and `token`, form-encoded,
/// the session also accepted from the query as the form posts to its own URL).
async fn fallback_submit(
    State(app): State<AppState>,
    Path(auth_type): Path<String>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<Response> {
    let stage = fallback_stage(&auth_type)?;
    if stage == uia::SSO {
        // Its page has links, not forms.
        return Err(Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED));
    }
    // Guessing registration tokens here costs what guessing them at /register does.
    rate_limited(app.login_limiter.check(&ip.unwrap_or_default()))?;
    let (parts, body) = req.into_parts();
    let body = read_body(body, 64 * 1024).await?;
    let session = param_bytes(&body, "session")
        .or_else(|| param(parts.uri.query().unwrap_or(""), "session"))
        .ok_or_else(|| Error::new(crate::error::ErrorKind::MissingParam, "No session supplied"))?;
    let token = param_bytes(&body, "token").unwrap_or_default();
    match uia::complete_fallback(&app, &session, stage, &token).await? {
        Fallback::Done => Ok(html(DONE_PAGE.to_owned())),
        Fallback::Retry(message) => Ok(html(token_form(&session, Some(&message)))),
    }
}

/// The stages with a page; any other type is an endpoint Lattice does not have.
fn fallback_stage(auth_type: &str) -> Result<&'static str> {
    uia::FALLBACK_STAGES
        .iter()
        .copied()
        .find(|s| *s == auth_type)
        .ok_or_else(|| Error::unrecognized(StatusCode::NOT_FOUND))
}

/// The page for a completed stage (also the SSO callback's, for UIA).
pub(super) fn done_page() -> Response {
    html(DONE_PAGE.to_owned())
}

/// `GET /_matrix/static/client/login/`.
async fn login_page() -> Response {
    html(LOGIN_PAGE.to_owned())
}

fn param(query: &str, name: &str) -> Option<String> {
    param_bytes(query.as_bytes(), name)
}

fn param_bytes(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// A page with the headers every fallback page carries.
pub(super) fn html(page: String) -> Response {
    let mut response = (StatusCode::OK, Body::from(page)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&CSP).expect("the policy is ASCII"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The session ID is in the URL: keep it out of Referer headers and caches.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The policy of every page: nothing loads from anywhere; the fixed inline
/// scripts and style run by hash; the login script may call this server; forms
/// post only here; no framing.
static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {} {}; style-src {}; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        csp_hash(DONE_SCRIPT),
        csp_hash(LOGIN_SCRIPT),
        csp_hash(STYLE),
    )
});

fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub(super) fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n{head_extra}</head>\n\
         <body>\n{body}\n</body>\n</html>\n"
    )
}

/// The registration-token form for `session`, with the last attempt's error.
fn token_form(session: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>\n", escape_html(e)))
        .unwrap_or_default();
    page(
        "Registration token",
        "",
        &format!(
            "<form method=\"post\">\n\
             <p>This server asks for a registration token to create an account.</p>\n\
             {error}\
             <label for=\"token\">Registration token</label>\n\
             <input type=\"text\" id=\"token\" name=\"token\" autocomplete=\"off\" required autofocus>\n\
             <input type=\"hidden\" name=\"session\" value=\"{}\">\n\
             <input type=\"submit\" value=\"Continue\">\n\
             </form>",
            escape_html(session)
        ),
    )
}

const STYLE: &str = "body{font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em}\
label,input{display:block;margin:.5em 0}input[type=text],input[type=password]{width:100%}\
.error{color:#b00}";

/// The spec's script for a completed stage.
const DONE_SCRIPT: &str = "\nif (window.onAuthDone) {\n    window.onAuthDone();\n} else if (window.opener && window.opener.postMessage) {\n    window.opener.postMessage(\"authDone\", \"*\");\n}\n";

static DONE_PAGE: LazyLock<String> = LazyLock::new(|| {
    page(
        "Authentication complete",
        &format!("<script>{DONE_SCRIPT}</script>\n"),
        "<p>Thank you.</p>\n<p>You may now close this window and return to the application.</p>",
    )
});

/// Logs in with a password through the login API, forwarding the spec's
/// non-credential query parameters, then hands the response to
/// `window.matrixLogin.onLogin` (which an embedding client replaces).
const LOGIN_SCRIPT: &str = r#"
window.matrixLogin = window.matrixLogin || {};
if (!window.matrixLogin.onLogin) {
    window.matrixLogin.onLogin = function (response) {
        document.getElementById("form").hidden = true;
        document.getElementById("sso").hidden = true;
        document.getElementById("status").textContent = "You are logged in as " + response.user_id + ".";
    };
}
document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("form");
    var status = document.getElementById("status");
    var query = new URLSearchParams(window.location.search);
    function login(body) {
        if (query.get("device_id")) { body.device_id = query.get("device_id"); }
        if (query.get("initial_device_display_name")) {
            body.initial_device_display_name = query.get("initial_device_display_name");
        }
        if (query.get("refresh_token") === "true") { body.refresh_token = true; }
        status.textContent = "Logging in…";
        fetch("/_matrix/client/v3/login", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(body),
            credentials: "omit"
        }).then(function (resp) {
            return resp.json().then(function (json) { return { ok: resp.ok, json: json }; });
        }).then(function (result) {
            if (result.ok) {
                status.textContent = "";
                window.matrixLogin.onLogin(result.json);
            } else {
                status.textContent = result.json.error || "Login failed";
            }
        }).catch(function () {
            status.textContent = "The server could not be reached";
        });
    }
    form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        login({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: form.elements.user.value },
            password: form.elements.password.value
        });
    });
    // Back from single sign-on with a login token: used once, and taken out
    // of the address bar.
    var token = query.get("loginToken");
    query.delete("loginToken");
    var rest = query.toString();
    var here = window.location.origin + window.location.pathname + (rest ? "?" + rest : "");
    if (token) {
        window.history.replaceState(null, "", here);
        login({ type: "m.login.token", token: token });
    }
    // A link per identity provider, coming back here.
    fetch("/_matrix/client/v3/login", { credentials: "omit" }).then(function (resp) {
        return resp.json();
    }).then(function (json) {
        var sso = (json.flows || []).filter(function (f) { return f.type === "m.login.sso"; })[0];
        if (!sso) { return; }
        var list = document.getElementById("sso");
        (sso.identity_providers || []).forEach(function (idp) {
            var link = document.createElement("a");
            link.href = "/_matrix/client/v3/login/sso/redirect/" + encodeURIComponent(idp.id) +
                "?redirectUrl=" + encodeURIComponent(here);
            link.textContent = "Continue with " + idp.name;
            var p = document.createElement("p");
            p.appendChild(link);
            list.appendChild(p);
        });
    }).catch(function () {});
});
"#;

static LOGIN_PAGE: LazyLock<String> = LazyLock::new(|| {
    page(
        "Log in",
        &format!("<script>{LOGIN_SCRIPT}</script>\n"),
        "<form id=\"form\" method=\"post\" action=\"/_matrix/static/client/login/\">\n\
         <label for=\"user\">Username</label>\n\
         <input type=\"text\" id=\"user\" name=\"user\" autocomplete=\"username\" required autofocus>\n\
         <label for=\"password\">Password</label>\n\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\n\
         <input type=\"submit\" value=\"Log in\">\n\
         </form>\n<div id=\"sso\"></div>\n<p id=\"status\" class=\"error\" role=\"status\"></p>",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_html_leaves_no_markup() {
        assert_eq!(
            escape_html(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn every_inline_script_is_allowed_by_hash() {
        for (page, script) in [(&*DONE_PAGE, DONE_SCRIPT), (&*LOGIN_PAGE, LOGIN_SCRIPT)] {
            assert!(page.contains(&format!("<script>{script}</script>")));
            assert!(CSP.contains(&csp_hash(script)));
        }
        assert!(CSP.contains(&csp_hash(STYLE)));
    }
}
