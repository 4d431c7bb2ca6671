//! The outbound federation client: server discovery, `X-Matrix` request signing,
//! a configurable trust store and timeouts, over an [`OutboundClient`] that
//! refuses the `federation.ip_range_blocklist` ranges (unless allowed) for
//! resolved names, IP-literal hosts and every redirect hop.

use std::{net::IpAddr, sync::Arc, time::Duration};

use reqwest::Url;
use ruma::{
    CanonicalJsonValue, OwnedServerName, ServerName,
    api::{
        IncomingResponseExt, OutgoingRequest, error::FromHttpResponseError,
        path_builder::SinglePath,
    },
    signatures::sign_json,
};

use super::discovery::{self, Lookup, Target};
use crate::{
    config::Config,
    domain::signing_key::SigningKey,
    domain::xmatrix::{self, XMatrix},
    outbound::{self, OutboundClient, OutboundError, OutboundPolicy, ReadError},
};

/// How a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    /// The server could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with an error status (body kept for the caller).
    #[error("remote error {status}: {body}")]
    Remote { status: u16, body: String },
    /// The answer was not what the endpoint returns.
    #[error("invalid response: {0}")]
    Invalid(String),
    /// Refused locally: a private address, an unresolvable name, ourselves.
    #[error("refused: {0}")]
    Refused(String),
}

impl From<OutboundError> for FedError {
    fn from(e: OutboundError) -> Self {
        match e {
            OutboundError::Refused(m) => Self::Refused(m),
            OutboundError::Unreachable(m) => Self::Unreachable(m),
            OutboundError::Invalid(m) => Self::Invalid(m),
        }
    }
}

impl FedError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Remote { status: 404, .. })
    }

    /// The `errcode` of a remote error answer whose body is a Matrix error.
    pub fn errcode(&self) -> Option<String> {
        let Self::Remote { body, .. } = self else {
            return None;
        };
        let body: serde_json::Value = serde_json::from_str(body).ok()?;
        body["errcode"].as_str().map(str::to_owned)
    }

    /// The server does not have the endpoint (so an older version of it may
    /// be tried): MSC3743's 404/405 `M_UNRECOGNIZED`, the 400 `M_UNRECOGNIZED`
    /// of older Dendrites, or the 404/405 without a Matrix error of older
    /// Synapses (and SyTest) — as Synapse decides before falling back to
    /// `/v1/send_join`, `/v1/send_leave` and `/v1/invite`.
    pub fn is_unknown_endpoint(&self) -> bool {
        let Self::Remote { status, .. } = self else {
            return false;
        };
        matches!(
            (status, self.errcode().as_deref()),
            (404 | 405, None | Some("M_UNRECOGNIZED" | "M_UNKNOWN"))
                | (400, Some("M_UNRECOGNIZED"))
        )
    }
}

/// `.well-known` fetches and SRV queries for discovery.
struct NetLookup {
    http: Arc<OutboundClient>,
    dns: Option<hickory_resolver::TokioResolver>,
}

/// Redirects a `.well-known` fetch follows (each hop checked like the first).
const WELL_KNOWN_REDIRECTS: usize = 5;
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Option<String> {
        let url = Url::parse(&format!("https://{host}/.well-known/matrix/server")).ok()?;
        let (_, response) = self
            .http
            .get_following(url, WELL_KNOWN_REDIRECTS, Some(WELL_KNOWN_TIMEOUT))
            .await
            .map_err(|e| tracing::debug!(%host, error = %e, ".well-known fetch failed"))
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = outbound::read_limited(response, 64 * 1024).await.ok()?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let server = body["m.server"].as_str()?;
        ServerName::parse(server).ok()?;
        Some(server.to_owned())
    }

    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let lookup = self.dns.as_ref()?.srv_lookup(name).await.ok()?;
        let best = lookup
            .iter()
            .min_by_key(|r| (r.priority(), u16::MAX - r.weight()))?;
        let target = best.target().to_utf8();
        let target = target.trim_end_matches('.');
        (!target.is_empty()).then(|| (target.to_owned(), best.port()))
    }
}

/// The federation client of this server.
pub struct FederationClient {
    http: Arc<OutboundClient>,
    lookup: NetLookup,
    cache: discovery::Cache,
    origin: OwnedServerName,
    key: Arc<SigningKey>,
    max_response_bytes: usize,
}

/// Discovery results are cached this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Redirects followed from a media `Location` (each hop checked).
const MEDIA_REDIRECTS: usize = 5;
/// The largest response body accepted from another server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl FederationClient {
    pub fn new(config: &Config, key: Arc<SigningKey>) -> anyhow::Result<Self> {
        let fed = &config.federation;
        if fed.dangerously_accept_invalid_certs {
            tracing::warn!(
                "federation.dangerously_accept_invalid_certs is set: peers are not authenticated"
            );
        }
        let http = Arc::new(OutboundClient::new(
            OutboundPolicy::federation(config),
            &outbound::Options {
                connect_timeout: Duration::from_secs(fed.connect_timeout_secs),
                timeout: Duration::from_secs(fed.request_timeout_secs),
                https_only: true,
                extra_ca_files: config.extra_ca_files(),
                accept_invalid_certs: fed.dangerously_accept_invalid_certs,
                user_agent: concat!("Lattice/", env!("CARGO_PKG_VERSION")).into(),
            },
        )?);
        let dns = hickory_resolver::TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| tracing::warn!(error = %e, "no DNS configuration: SRV lookups disabled"))
            .ok();
        Ok(Self {
            lookup: NetLookup {
                http: http.clone(),
                dns,
            },
            http,
            cache: discovery::Cache::default(),
            origin: config.server_name(),
            key,
            max_response_bytes: MAX_RESPONSE_BYTES,
        })
    }

    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// Where requests for `server` go (cached).
    pub async fn target(&self, server: &ServerName) -> Result<Target, FedError> {
        if let Some(target) = self.cache.get(server.as_str()) {
            return Ok(target);
        }
        let target = discovery::resolve(&self.lookup, server.as_str())
            .await
            .ok_or_else(|| FedError::Refused(format!("cannot resolve {server}")))?;
        if let Ok(ip) = target.connect_host.parse::<IpAddr>()
            && !self.http.policy().allowed(ip)
        {
            return Err(FedError::Refused(format!(
                "{server} resolves to a refused address range"
            )));
        }
        if target.connect_host != target.tls_name
            && !self.http.route(&target.tls_name, &target.connect_host)
        {
            // The route table was full and emptied: cached targets that relied
            // on a route must be resolved again.
            self.cache.clear();
        }
        self.cache
            .put(server.as_str(), target.clone(), DISCOVERY_TTL);
        Ok(target)
    }

    /// Sends a ruma federation request to `destination`, signed, and parses the
    /// answer (at most [`MAX_RESPONSE_BYTES`], as [`Self::request_json`]).
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let limit = self.max_response_bytes;
        self.send_limited(destination, request, limit).await
    }

    /// [`Self::send`] for queries made on a client's behalf, as
    /// [`Self::request_json_bounded`]: the answer must fit in `limit` bytes and
    /// the whole exchange, discovery included, must end within `timeout`.
    pub async fn send_bounded<R>(
        &self,
        destination: &ServerName,
        request: R,
        limit: usize,
        timeout: Duration,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        tokio::time::timeout(timeout, self.send_limited(destination, request, limit))
            .await
            .map_err(|_| FedError::Unreachable(format!("{destination}: no answer in time")))?
    }

    async fn send_limited<R>(
        &self,
        destination: &ServerName,
        request: R,
        limit: usize,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let target = self.target(destination).await?;
        let http_request = request
            .try_into_http_request_inner(&target.base_url(), ())
            .map_err(|e| FedError::Invalid(format!("building request: {e}")))?;
        let (parts, body) = http_request.into_parts();
        let body: Vec<u8> = ruma::api::OutgoingBody::try_into_buf(body)
            .map_err(|e| FedError::Invalid(format!("serialising request: {}", e.into())))?;
        let (status, _, bytes) = self
            .execute_limited(destination, &target, parts.method, &parts.uri, body, limit)
            .await?;
        let response = http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes.as_ref())
            .map_err(|e| FedError::Invalid(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(response).map_err(|e| match e {
            FromHttpResponseError::Server(_) => FedError::Remote {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            },
            other => FedError::Invalid(other.to_string()),
        })
    }

    /// A signed request with a raw JSON body and answer, for endpoints ruma does
    /// not model or where the raw answer is needed (key responses are verified
    /// against their exact JSON).
    pub async fn request_json(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, FedError> {
        let target = self.target(destination).await?;
        let uri: http::Uri = format!("{}{}", target.base_url(), path_and_query)
            .parse()
            .map_err(|e| FedError::Invalid(format!("uri: {e}")))?;
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| FedError::Invalid(e.to_string()))?,
            None => Vec::new(),
        };
        let (status, _, bytes) = self
            .execute(destination, &target, method, &uri, body)
            .await?;
        if status >= 400 {
            return Err(FedError::Remote {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| FedError::Invalid(e.to_string()))
    }

    /// [`Self::request_json`] for queries made on a client's behalf (directory,
    /// public rooms, hierarchy): the answer must fit in `limit` bytes and the
    /// whole exchange, discovery included, must end within `timeout`.
    pub async fn request_json_bounded(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        limit: usize,
        timeout: Duration,
    ) -> Result<serde_json::Value, FedError> {
        let exchange = async {
            let target = self.target(destination).await?;
            let uri: http::Uri = format!("{}{}", target.base_url(), path_and_query)
                .parse()
                .map_err(|e| FedError::Invalid(format!("uri: {e}")))?;
            let body = match body {
                Some(b) => serde_json::to_vec(b).map_err(|e| FedError::Invalid(e.to_string()))?,
                None => Vec::new(),
            };
            let (status, _, bytes) = self
                .execute_limited(destination, &target, method, &uri, body, limit)
                .await?;
            if status >= 400 {
                return Err(FedError::Remote {
                    status,
                    body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| FedError::Invalid(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FedError::Unreachable(format!("{destination}: no answer in time")))?
    }

    /// A signed `GET` whose answer the caller reads as it arrives (media), within
    /// `timeout` for the whole exchange, body included. An error status is
    /// returned as [`FedError::Remote`].
    pub async fn get_streaming(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FedError> {
        let target = self.target(destination).await?;
        let uri: http::Uri = format!("{}{}", target.base_url(), path_and_query)
            .parse()
            .map_err(|e| FedError::Invalid(format!("uri: {e}")))?;
        let response = self
            .send_signed(
                destination,
                &target,
                http::Method::GET,
                &uri,
                Vec::new(),
                Some(timeout),
            )
            .await?;
        error_status(response, destination.as_str()).await
    }

    /// An unsigned `GET` of a URL another server pointed us to (the `Location`
    /// form of a media download), through the same address policy for the URL
    /// and every redirect it leads to, within `timeout` for each hop. The caller
    /// reads the answer as it arrives; an error status is [`FedError::Remote`].
    pub async fn get_url_streaming(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FedError> {
        let url = Url::parse(url).map_err(|e| FedError::Invalid(format!("location: {e}")))?;
        let (url, response) = self
            .http
            .get_following(url, MEDIA_REDIRECTS, Some(timeout))
            .await?;
        error_status(response, url.as_str()).await
    }

    async fn execute(
        &self,
        destination: &ServerName,
        target: &Target,
        method: http::Method,
        uri: &http::Uri,
        body: Vec<u8>,
    ) -> Result<(u16, Option<String>, bytes::Bytes), FedError> {
        let limit = self.max_response_bytes;
        self.execute_limited(destination, target, method, uri, body, limit)
            .await
    }

    async fn execute_limited(
        &self,
        destination: &ServerName,
        target: &Target,
        method: http::Method,
        uri: &http::Uri,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<(u16, Option<String>, bytes::Bytes), FedError> {
        let response = self
            .send_signed(destination, target, method, uri, body, None)
            .await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_limited(response, limit, destination.as_str()).await?;
        Ok((status, content_type, bytes))
    }

    /// The `Authorization: X-Matrix …` value of a request from this server to
    /// `destination` (spec "Request Authentication"); also what identity
    /// servers accept to learn which server asks (`/3pid/unbind`).
    pub fn authorization(
        &self,
        destination: &ServerName,
        method: &http::Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<String, FedError> {
        let content: Option<CanonicalJsonValue> = if body.is_empty() {
            None
        } else {
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| FedError::Invalid(format!("request body: {e}")))?;
            Some(
                value
                    .try_into()
                    .map_err(|e| FedError::Invalid(format!("request body: {e}")))?,
            )
        };
        let mut object = xmatrix::request_object(
            method.as_str(),
            path_and_query,
            &self.origin,
            destination,
            content,
        );
        sign_json(self.origin.as_str(), &self.key.pair, &mut object)
            .map_err(|e| FedError::Invalid(format!("signing: {e}")))?;
        let sig = object
            .get("signatures")
            .and_then(|s| match s {
                CanonicalJsonValue::Object(o) => o.get(self.origin.as_str()),
                _ => None,
            })
            .and_then(|s| match s {
                CanonicalJsonValue::Object(o) => o.get(&self.key.key_id),
                _ => None,
            })
            .and_then(|s| match s {
                CanonicalJsonValue::String(s) => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| FedError::Invalid("signing produced no signature".into()))?;
        Ok(XMatrix {
            origin: self.origin.clone(),
            destination: Some(destination.to_owned()),
            key: self
                .key
                .key_id
                .as_str()
                .try_into()
                .map_err(|_| FedError::Invalid("own key id".into()))?,
            sig,
        }
        .to_header())
    }

    /// Sends a signed request; the answer's body is left to the caller.
    /// `timeout` replaces the client's time limit for this request.
    async fn send_signed(
        &self,
        destination: &ServerName,
        target: &Target,
        method: http::Method,
        uri: &http::Uri,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FedError> {
        if destination == self.origin {
            return Err(FedError::Refused("a request to ourselves".into()));
        }
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let header = self.authorization(destination, &method, path_and_query, &body)?;

        let url = Url::parse(&format!("{}{}", target.base_url(), path_and_query))
            .map_err(|e| FedError::Invalid(format!("uri: {e}")))?;
        let header_value = |v: &str| {
            http::HeaderValue::from_str(v).map_err(|e| FedError::Invalid(format!("header: {e}")))
        };
        let mut request = reqwest::Request::new(method, url);
        let headers = request.headers_mut();
        headers.insert(http::header::AUTHORIZATION, header_value(&header)?);
        headers.insert(http::header::HOST, header_value(&target.host_header)?);
        if !body.is_empty() {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            *request.body_mut() = Some(body.into());
        }
        if timeout.is_some() {
            *request.timeout_mut() = timeout;
        }
        Ok(self.http.send(request).await?)
    }
}

/// The answer itself when its status is not an error; otherwise the error,
/// with the start of its body.
async fn error_status(
    response: reqwest::Response,
    from: &str,
) -> Result<reqwest::Response, FedError> {
    let status = response.status().as_u16();
    if status < 400 {
        return Ok(response);
    }
    let body = read_limited(response, 64 * 1024, from)
        .await
        .unwrap_or_default();
    Err(FedError::Remote {
        status,
        body: String::from_utf8_lossy(&body).chars().take(500).collect(),
    })
}

/// A response body, refused past `limit` bytes.
async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    from: &str,
) -> Result<bytes::Bytes, FedError> {
    outbound::read_limited(response, limit)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => FedError::Invalid("response too large".into()),
            ReadError::Failed(e) => FedError::Unreachable(format!("{from}: {e}")),
        })
}
