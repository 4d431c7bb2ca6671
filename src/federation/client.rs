//! The outbound federation client: server discovery, `X-Matrix` request signing,
//! a configurable trust store, timeouts, and a resolver that refuses private
//! address ranges unless the configuration allows them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
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
    config::{Config, Federation as FedConfig},
    domain::xmatrix::{self, XMatrix},
    service::event::SigningKey,
    service::url_preview::Cidr,
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

impl FedError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Remote { status: 404, .. })
    }
}

/// Which addresses outbound federation may connect to.
#[derive(Clone)]
pub struct IpPolicy {
    block: Vec<Cidr>,
    allow: Vec<Cidr>,
}

impl IpPolicy {
    pub fn new(block: &[String], allow: &[String]) -> Self {
        let parse = |l: &[String]| l.iter().filter_map(|s| Cidr::parse(s)).collect();
        Self {
            block: parse(block),
            allow: parse(allow),
        }
    }

    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || !self.block.iter().any(|c| c.contains(ip))
    }
}

/// DNS for the HTTP client: names map to the SRV target discovery chose (when it
/// did), are resolved by the system resolver, and lose every address the policy
/// refuses. Resolving here, where the connection is made, leaves no gap for a
/// name to change its answer between check and connect.
struct GuardedResolver {
    policy: IpPolicy,
    /// `tls_name` → SRV target host.
    srv_targets: Mutex<HashMap<String, String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self
            .srv_targets
            .lock()
            .expect("srv targets")
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| name.as_str().to_owned());
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.allowed(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("no permitted address for {host}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `.well-known` fetches and SRV queries for discovery.
struct NetLookup {
    http: reqwest::Client,
    dns: Option<hickory_resolver::TokioResolver>,
}

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Option<String> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let response = self.http.get(&url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        if bytes.len() > 64 * 1024 {
            return None;
        }
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
    http: reqwest::Client,
    lookup: NetLookup,
    resolver: Arc<GuardedResolver>,
    cache: discovery::Cache,
    origin: OwnedServerName,
    key: Arc<SigningKey>,
    policy: IpPolicy,
    max_response_bytes: usize,
}

/// Discovery results are cached this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest response body accepted from another server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl FederationClient {
    pub fn new(config: &Config, key: Arc<SigningKey>) -> anyhow::Result<Self> {
        let fed = &config.federation;
        let policy = IpPolicy::new(&fed.ip_range_blocklist, &fed.ip_range_allowlist);
        let resolver = Arc::new(GuardedResolver {
            policy: policy.clone(),
            srv_targets: Mutex::default(),
        });
        let http = builder(fed, resolver.clone())?
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the federation HTTP client")?;
        let well_known_http = builder(fed, resolver.clone())?
            .redirect(reqwest::redirect::Policy::limited(5))
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the .well-known HTTP client")?;
        let dns = hickory_resolver::TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| tracing::warn!(error = %e, "no DNS configuration: SRV lookups disabled"))
            .ok();
        Ok(Self {
            http,
            lookup: NetLookup {
                http: well_known_http,
                dns,
            },
            resolver,
            cache: discovery::Cache::default(),
            origin: config.server_name(),
            key,
            policy,
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
            && !self.policy.allowed(ip)
        {
            return Err(FedError::Refused(format!(
                "{server} resolves to a refused address range"
            )));
        }
        if target.connect_host != target.tls_name {
            self.resolver
                .srv_targets
                .lock()
                .expect("srv targets")
                .insert(target.tls_name.clone(), target.connect_host.clone());
        }
        self.cache
            .put(server.as_str(), target.clone(), DISCOVERY_TTL);
        Ok(target)
    }

    /// Sends a ruma federation request to `destination`, signed, and parses the
    /// answer.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
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
            .execute(destination, &target, parts.method, &parts.uri, body)
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

    /// A signed `GET` whose answer is not JSON (media): its content type and
    /// bytes, at most `limit` of them.
    pub async fn get_bytes(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        limit: usize,
    ) -> Result<(String, bytes::Bytes), FedError> {
        let target = self.target(destination).await?;
        let uri: http::Uri = format!("{}{}", target.base_url(), path_and_query)
            .parse()
            .map_err(|e| FedError::Invalid(format!("uri: {e}")))?;
        let (status, content_type, bytes) = self
            .execute_limited(
                destination,
                &target,
                http::Method::GET,
                &uri,
                Vec::new(),
                limit,
            )
            .await?;
        if status >= 400 {
            return Err(FedError::Remote {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        Ok((content_type.unwrap_or_default(), bytes))
    }

    /// An unsigned `GET` of an HTTPS URL another server pointed us to (the
    /// `Location` form of a media download), through the same address policy.
    pub async fn get_url(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<(String, bytes::Bytes), FedError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| FedError::Unreachable(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        let bytes = read_limited(response, limit, url).await?;
        if status >= 400 {
            return Err(FedError::Remote {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        Ok((content_type, bytes))
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
        if destination == self.origin {
            return Err(FedError::Refused("a request to ourselves".into()));
        }
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let content: Option<CanonicalJsonValue> = if body.is_empty() {
            None
        } else {
            let value: serde_json::Value = serde_json::from_slice(&body)
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
        let header = XMatrix {
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
        .to_header();

        let url = format!("{}{}", target.base_url(), path_and_query);
        let mut request = self
            .http
            .request(method, &url)
            .header(http::header::AUTHORIZATION, header)
            .header(http::header::HOST, &target.host_header);
        if !body.is_empty() {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| FedError::Unreachable(format!("{destination}: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_limited(response, limit, destination.as_str()).await?;
        Ok((status, content_type, bytes))
    }
}

/// A response body, refused past `limit` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    from: &str,
) -> Result<bytes::Bytes, FedError> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(FedError::Invalid("response too large".into()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FedError::Unreachable(format!("{from}: {}", error_chain(&e))))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(FedError::Invalid("response too large".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

fn builder(
    fed: &FedConfig,
    resolver: Arc<GuardedResolver>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .dns_resolver(resolver)
        .connect_timeout(Duration::from_secs(fed.connect_timeout_secs))
        .timeout(Duration::from_secs(fed.request_timeout_secs))
        // Below the idle timeouts servers commonly use (60 s here and in nginx),
        // so a pooled connection is not reused just as the peer closes it.
        .pool_idle_timeout(Duration::from_secs(45))
        .user_agent(concat!("Lattice/", env!("CARGO_PKG_VERSION")));
    for file in &fed.extra_ca_files {
        let pem =
            std::fs::read(file).with_context(|| format!("reading CA file {}", file.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing CA file {}", file.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if fed.dangerously_accept_invalid_certs {
        tracing::warn!(
            "federation.dangerously_accept_invalid_certs is set: peers are not authenticated"
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// An error with its sources, for logs ("connection refused" hides in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
