//! Requests to identity servers (spec: Identity Service API v2), which clients
//! name per request (`id_server`, with their `id_access_token`):
//!
//! - binding an address to an account through this server
//!   (`POST /account/3pid/bind` → the identity server's `/3pid/bind`), and
//!   unbinding it (`/account/3pid/unbind`, `/account/3pid/delete`, account
//!   deactivation → its `/3pid/unbind`, signed with this server's key as the
//!   spec asks, so the identity server knows the request is the user's
//!   server's). Each binding made here is remembered per identity server, so
//!   unbinding without `id_server` reaches the right one (as Synapse);
//! - look-ups (`/hash_details` then `/lookup`, with `sha256` hashing when the
//!   server offers it), invitation storage (`/store-invite`) and key validity
//!   (`key_validity_url`) for invites by email
//!   ([`super::third_party_invite`]).
//!
//! Every request goes over HTTPS through the federation address policy (as
//! Synapse's identity client uses its federation IP range blocklist): an
//! `id_server` on a private address is refused unless allow-listed. No
//! redirect is followed; answers are limited to 64 KiB. No lock or pooled
//! connection is held while an identity server answers.

use std::time::Duration;

use reqwest::Url;
use ruma::UserId;
use serde_json::{Value, json};

use crate::{
    config::Config,
    domain::{
        third_party_invite::{self as tpi},
        threepid,
    },
    error::{Error, ErrorKind, Result},
    outbound::{self, OutboundClient, OutboundPolicy},
    service::AppState,
    storage::identity_bindings,
};

/// The largest answer read from an identity server.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub struct IdentityClient {
    http: OutboundClient,
}

impl IdentityClient {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let identity = &config.identity;
        if identity.dangerously_accept_invalid_certs {
            tracing::warn!(
                "identity.dangerously_accept_invalid_certs is set: identity servers are not authenticated"
            );
        }
        Ok(Self {
            http: OutboundClient::new(
                OutboundPolicy::federation(config),
                &outbound::Options {
                    connect_timeout: Duration::from_secs(10),
                    timeout: Duration::from_secs(identity.request_timeout_secs),
                    https_only: true,
                    extra_ca_files: config.extra_ca_files(),
                    accept_invalid_certs: identity.dangerously_accept_invalid_certs,
                    user_agent: concat!("Lattice/", env!("CARGO_PKG_VERSION")).into(),
                },
            )?,
        })
    }
}

/// An identity server's answer: its status and JSON body (`Null` when the body
/// is not JSON).
struct Answer {
    status: u16,
    body: Value,
}

fn unreachable(id_server: &str, why: impl std::fmt::Display) -> Error {
    tracing::info!(id_server, error = %why, "identity server request failed");
    Error::new(
        ErrorKind::BadGateway,
        format!("Failed to contact the identity server {id_server}"),
    )
}

/// The identity server's base URL, `https://<id_server>`, for a name that is a
/// host and optional port (anything else is the client's error).
pub fn base_url(id_server: &str) -> Result<Url> {
    let name = tpi::id_server(id_server)
        .ok_or_else(|| Error::invalid_param("id_server must be a host name and optional port"))?;
    Url::parse(&format!("https://{name}")).map_err(|_| Error::invalid_param("Invalid id_server"))
}

async fn request(
    app: &AppState,
    id_server: &str,
    method: http::Method,
    url: Url,
    bearer: Option<&str>,
    authorization: Option<String>,
    body: Option<&Value>,
) -> Result<Answer> {
    let mut request = reqwest::Request::new(method, url);
    let headers = request.headers_mut();
    let header = |v: &str| {
        http::HeaderValue::from_str(v).map_err(|_| Error::invalid_param("Invalid id_access_token"))
    };
    if let Some(token) = bearer {
        headers.insert(
            http::header::AUTHORIZATION,
            header(&format!("Bearer {token}"))?,
        );
    }
    if let Some(value) = authorization {
        headers.insert(http::header::AUTHORIZATION, header(&value)?);
    }
    if let Some(body) = body {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        *request.body_mut() = Some(serde_json::to_vec(body).unwrap_or_default().into());
    }
    let response = app.identity.http.send(request).await.map_err(|e| match e {
        outbound::OutboundError::Refused(why) => {
            tracing::info!(id_server, %why, "identity server refused by the outbound policy");
            Error::forbidden("This identity server may not be contacted")
        }
        other => unreachable(id_server, other),
    })?;
    let status = response.status().as_u16();
    let bytes = outbound::read_limited(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| unreachable(id_server, e))?;
    Ok(Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

fn ok_object(id_server: &str, answer: Answer, what: &str) -> Result<Value> {
    if answer.status == 401 || answer.status == 403 {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!("The identity server refused the {what} (its access token?)"),
        ));
    }
    if !(200..300).contains(&answer.status) || !answer.body.is_object() {
        return Err(unreachable(
            id_server,
            format!("{what}: status {}", answer.status),
        ));
    }
    Ok(answer.body)
}

/// The Matrix user an address is bound to on `id_server` (v2 look-up: the
/// hashing details, then one hashed address; `none` only when the server
/// offers no `sha256`).
pub async fn lookup(
    app: &AppState,
    id_server: &str,
    id_access_token: &str,
    medium: &str,
    address: &str,
) -> Result<Option<ruma::OwnedUserId>> {
    let base = base_url(id_server)?;
    let details = request(
        app,
        id_server,
        http::Method::GET,
        base.join("/_matrix/identity/v2/hash_details")
            .map_err(|e| unreachable(id_server, e))?,
        Some(id_access_token),
        None,
        None,
    )
    .await?;
    let details = ok_object(id_server, details, "hash details request")?;
    let algorithms: Vec<&str> = details["algorithms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let pepper = details["lookup_pepper"].as_str().unwrap_or_default();
    let (algorithm, key) = if algorithms.contains(&"sha256") {
        ("sha256", tpi::lookup_hash(address, medium, pepper))
    } else if algorithms.contains(&"none") {
        ("none", format!("{address} {medium}"))
    } else {
        return Err(unreachable(id_server, "no supported look-up algorithm"));
    };
    let answer = request(
        app,
        id_server,
        http::Method::POST,
        base.join("/_matrix/identity/v2/lookup")
            .map_err(|e| unreachable(id_server, e))?,
        Some(id_access_token),
        None,
        Some(&json!({ "addresses": [key], "algorithm": algorithm, "pepper": pepper })),
    )
    .await?;
    let answer = ok_object(id_server, answer, "look-up")?;
    Ok(answer["mappings"][&key]
        .as_str()
        .and_then(|m| UserId::parse(m).ok()))
}

/// What `/store-invite` answered.
pub struct StoredInvite {
    pub token: String,
    pub display_name: String,
    /// `{public_key, key_validity_url}` objects.
    pub public_keys: Vec<Value>,
}

/// Asks `id_server` to store an invite for an address no one has bound yet
/// (`POST /_matrix/identity/v2/store-invite`); `details` is the request body.
pub async fn store_invite(
    app: &AppState,
    id_server: &str,
    id_access_token: &str,
    details: &Value,
) -> Result<StoredInvite> {
    let base = base_url(id_server)?;
    let answer = request(
        app,
        id_server,
        http::Method::POST,
        base.join("/_matrix/identity/v2/store-invite")
            .map_err(|e| unreachable(id_server, e))?,
        Some(id_access_token),
        None,
        Some(details),
    )
    .await?;
    let answer = ok_object(id_server, answer, "invitation")?;
    let token = answer["token"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| unreachable(id_server, "store-invite without a token"))?;
    let public_keys: Vec<Value> = answer["public_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["public_key"].is_string())
        .map(|k| {
            let mut key = json!({ "public_key": k["public_key"] });
            if let Some(url) = k["key_validity_url"].as_str() {
                key["key_validity_url"] = url.into();
            }
            key
        })
        .collect();
    if public_keys.is_empty() {
        return Err(unreachable(id_server, "store-invite without public keys"));
    }
    Ok(StoredInvite {
        token: token.to_owned(),
        display_name: answer["display_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        public_keys,
    })
}

/// Whether an identity server says `public_key` is still valid (`GET
/// key_validity_url?public_key=…` answering `{"valid": true}`). An unreachable
/// server, a URL the policy refuses or any other answer: not valid.
pub async fn key_is_valid(app: &AppState, key_validity_url: &str, public_key: &str) -> bool {
    let Ok(mut url) = Url::parse(key_validity_url) else {
        return false;
    };
    if url.scheme() != "https" {
        return false;
    }
    url.query_pairs_mut().append_pair("public_key", public_key);
    let host = url.host_str().unwrap_or_default().to_owned();
    match request(app, &host, http::Method::GET, url, None, None, None).await {
        Ok(answer) => answer.status == 200 && answer.body["valid"] == true,
        Err(_) => false,
    }
}

/// `POST /account/3pid/bind`: the identity server binds the address of its
/// validation session `sid` to the user; the binding is remembered here.
pub async fn bind(
    app: &AppState,
    user: &UserId,
    id_server: &str,
    id_access_token: &str,
    sid: &str,
    client_secret: &str,
) -> Result<()> {
    let base = base_url(id_server)?;
    let answer = request(
        app,
        id_server,
        http::Method::POST,
        base.join("/_matrix/identity/v2/3pid/bind")
            .map_err(|e| unreachable(id_server, e))?,
        Some(id_access_token),
        None,
        Some(&json!({ "sid": sid, "client_secret": client_secret, "mxid": user })),
    )
    .await?;
    if (400..500).contains(&answer.status) && answer.status != 401 && answer.status != 403 {
        return Err(Error::new(
            ErrorKind::ThreepidAuthFailed,
            "The identity server did not bind the address (no validated session?)",
        ));
    }
    let answer = ok_object(id_server, answer, "binding")?;
    let (Some(medium), Some(address)) = (answer["medium"].as_str(), answer["address"].as_str())
    else {
        return Err(unreachable(
            id_server,
            "bind answer without medium or address",
        ));
    };
    if answer["mxid"].as_str().is_some_and(|m| m != user.as_str()) {
        return Err(unreachable(id_server, "bind answer for another user"));
    }
    identity_bindings::insert(&app.db, user.as_str(), medium, address, id_server).await?;
    tracing::info!(%user, medium, id_server, "address bound on an identity server");
    Ok(())
}

/// Whether an unbinding reached an identity server that did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbound {
    Success,
    /// No identity server to ask, or it does not support unbinding.
    NoSupport,
}

impl Unbound {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::NoSupport => "no-support",
        }
    }
}

/// Asks one identity server to unbind (`POST /_matrix/identity/v2/3pid/unbind`,
/// signed by this server: the identity server checks the user is ours).
/// 400, 404 and 501 mean it had nothing to unbind or cannot (as Synapse reads
/// them); other failures are errors.
async fn unbind_at(
    app: &AppState,
    user: &UserId,
    medium: &str,
    address: &str,
    id_server: &str,
) -> Result<Unbound> {
    let base = base_url(id_server)?;
    let path = "/_matrix/identity/v2/3pid/unbind";
    let body = json!({ "mxid": user, "threepid": { "medium": medium, "address": address } });
    let destination =
        tpi::id_server(id_server).ok_or_else(|| Error::invalid_param("Invalid id_server"))?;
    let authorization = app
        .federation
        .authorization(
            &destination,
            &http::Method::POST,
            path,
            &serde_json::to_vec(&body).unwrap_or_default(),
        )
        .map_err(|e| anyhow::anyhow!("signing an unbind request: {e}"))?;
    let answer = request(
        app,
        id_server,
        http::Method::POST,
        base.join(path).map_err(|e| unreachable(id_server, e))?,
        None,
        Some(authorization),
        Some(&body),
    )
    .await?;
    match answer.status {
        200..=299 => Ok(Unbound::Success),
        400 | 404 | 501 => {
            tracing::info!(%user, id_server, status = answer.status, "identity server did not unbind");
            Ok(Unbound::NoSupport)
        }
        status => Err(unreachable(id_server, format!("unbind: status {status}"))),
    }
}

/// Unbinds one address of the user: at `id_server` when given, else at every
/// identity server it was bound on through this server. Each server asked is
/// forgotten for the address. `Success` only if every server asked unbound it.
pub async fn unbind(
    app: &AppState,
    user: &UserId,
    medium: &str,
    address: &str,
    id_server: Option<&str>,
) -> Result<Unbound> {
    let address = canonical(medium, address);
    let servers = match id_server {
        Some(server) => vec![server.to_owned()],
        None => identity_bindings::servers(&app.db, user.as_str(), medium, &address).await?,
    };
    if servers.is_empty() {
        return Ok(Unbound::NoSupport);
    }
    let mut result = Unbound::Success;
    for server in servers {
        if unbind_at(app, user, medium, &address, &server).await? == Unbound::NoSupport {
            result = Unbound::NoSupport;
        }
        identity_bindings::delete(&app.db, user.as_str(), medium, &address, &server).await?;
    }
    Ok(result)
}

/// On deactivation: every address bound through this server is unbound
/// (at `id_server` when the client names one, as Synapse does). A server that
/// cannot be reached does not keep the account from being deactivated.
pub async fn unbind_all(app: &AppState, user: &UserId, id_server: Option<&str>) -> Unbound {
    let bindings = match identity_bindings::all(&app.db, user.as_str()).await {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(%user, %error, "could not list identity server bindings");
            return Unbound::NoSupport;
        }
    };
    let mut result = Unbound::Success;
    for binding in bindings {
        let server = id_server.unwrap_or(&binding.id_server);
        match unbind_at(app, user, &binding.medium, &binding.address, server).await {
            Ok(Unbound::Success) => {}
            Ok(Unbound::NoSupport) => result = Unbound::NoSupport,
            Err(_) => {
                tracing::warn!(%user, id_server = server, "could not unbind on deactivation");
                result = Unbound::NoSupport;
            }
        }
        if let Err(error) = identity_bindings::delete(
            &app.db,
            user.as_str(),
            &binding.medium,
            &binding.address,
            &binding.id_server,
        )
        .await
        {
            tracing::warn!(%user, %error, "could not forget an identity server binding");
        }
    }
    result
}

/// Email addresses compared in their canonical (lowercase) form.
fn canonical(medium: &str, address: &str) -> String {
    if medium == threepid::EMAIL {
        threepid::canonical_email(address).unwrap_or_else(|| address.to_owned())
    } else {
        address.to_owned()
    }
}
