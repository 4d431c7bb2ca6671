//! Every outbound HTTP request of the server goes through here: federation
//! requests, `.well-known` discovery, key and notary fetches, the media
//! `Location` follow-up, push gateways and URL previews.
//!
//! One [`OutboundPolicy`] (blocked ranges minus allowed ranges) decides which
//! addresses may be connected to, and an [`OutboundClient`] applies it at the
//! three places an address can come from:
//! - a host name: every address it resolves to is checked by the client's DNS
//!   resolver, where the connection is made, so nothing can change the answer
//!   between the check and the connect;
//! - an IP-literal host, which never reaches a resolver: the URL is checked
//!   before the request is sent;
//! - a redirect: clients built here never follow one themselves;
//!   [`OutboundClient::get_following`] follows them hop by hop, each hop a new
//!   checked request.
//!
//! Every client trusts the Mozilla roots plus the configured extra CAs
//! ([`crate::config::Config::extra_ca_files`]: a private CA), which changes
//! nothing about which addresses may be reached.
//!
//! [`OutboundClient::new`] is the only place a `reqwest::Client` is built (a
//! test below checks that no other module builds one), and the client is never
//! handed out, so no code path can send an unchecked request.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use reqwest::{Url, header::LOCATION};

use ipnet::IpNet;

use crate::config::{Config, ip_range};

/// Whether any of `ranges` holds `ip`. An IPv4-mapped IPv6 address is
/// checked as the IPv4 address it maps, so `::ffff:127.0.0.1` is loopback.
pub fn ranges_contain(ranges: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ranges.iter().any(|r| r.contains(&ip))
}

#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    block: Arc<[IpNet]>,
    allow: Arc<[IpNet]>,
    /// Hosts (names or IP literals, as written in URLs) every address of which
    /// is allowed: only an application service's client has one, its
    /// registration's host, which the administrator configured.
    trusted_hosts: Arc<[String]>,
}

impl OutboundPolicy {
    pub fn new(block: &[String], allow: &[String]) -> Self {
        let parse = |l: &[String]| l.iter().filter_map(|s| ip_range(s)).collect();
        Self {
            block: parse(block),
            allow: parse(allow),
            trusted_hosts: Arc::new([]),
        }
    }

    /// This policy, with every address of `host` allowed (the host of an
    /// application service's registered URL: appservices usually listen on
    /// loopback or a private network). Only requests to that very host are
    /// concerned: a name resolving there, or another host, is checked as
    /// before, and no redirect is ever followed to leave it.
    pub fn trusting_host(mut self, host: &str) -> Self {
        let mut hosts = self.trusted_hosts.to_vec();
        hosts.push(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
        );
        self.trusted_hosts = hosts.into();
        self
    }

    fn trusts(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.trusted_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The `federation` ranges, which (like Synapse's `ip_range_blocklist`)
    /// cover every server-to-server request and push gateways.
    pub fn federation(config: &Config) -> Self {
        let fed = &config.federation;
        Self::new(&fed.ip_range_blocklist, &fed.ip_range_allowlist)
    }

    /// The `media.url_preview` ranges.
    pub fn url_preview(config: &Config) -> Self {
        let cfg = &config.media.url_preview;
        Self::new(&cfg.ip_range_blocklist, &cfg.ip_range_allowlist)
    }

    pub fn allowed(&self, ip: IpAddr) -> bool {
        ranges_contain(&self.allow, ip) || !ranges_contain(&self.block, ip)
    }

    /// Checks what can be checked of a URL before connecting: the scheme, and
    /// the host when it is an IP literal (names are checked as they resolve).
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::Refused(format!(
                "the scheme {:?} is not fetched",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| OutboundError::Invalid("a URL without a host".into()))?;
        if self.trusts(host) {
            return Ok(());
        }
        // The URL parser has already turned every IPv4 spelling (decimal, hex,
        // short forms) into dotted form, and IPv6 hosts are bracketed.
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if self.allowed(ip) {
            Ok(())
        } else {
            Err(OutboundError::Refused(format!(
                "{ip} is in a refused range"
            )))
        }
    }
}

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Refused locally: an address the policy refuses, a scheme not fetched.
    #[error("refused: {0}")]
    Refused(String),
    /// Not reached, or no (complete) answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// A URL or redirect that cannot be followed.
    #[error("{0}")]
    Invalid(String),
}

/// The resolver's refusal, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("no address of {0} is permitted")]
struct RefusedName(String);

/// DNS for outbound clients: a name is resolved by the system resolver (or,
/// when routed, its route's target is: federation SRV targets), and loses
/// every address the policy refuses; a name left with none fails to connect.
struct GuardedResolver {
    policy: OutboundPolicy,
    /// Name in the URL → host whose addresses to connect to.
    routes: Mutex<HashMap<String, String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self
            .routes
            .lock()
            .expect("outbound routes")
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| name.as_str().to_owned());
        let policy = self.policy.clone();
        let trusted = policy.trusts(name.as_str()) && host == name.as_str();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| {
                    let ok = trusted || policy.allowed(a.ip());
                    if !ok {
                        tracing::debug!(%host, ip = %a.ip(), "outbound address refused");
                    }
                    ok
                })
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(RefusedName(host)) as Box<_>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How an [`OutboundClient`] connects.
pub struct Options {
    pub connect_timeout: Duration,
    /// Time limit of one request (one hop), answer body included.
    pub timeout: Duration,
    /// Refuse plain `http` URLs.
    pub https_only: bool,
    /// PEM files of certificate authorities trusted besides the Mozilla roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Accept any certificate (isolated test set-ups only).
    pub accept_invalid_certs: bool,
    pub user_agent: String,
}

/// Routes kept at most; past this they are dropped (and their owner told, so it
/// can resolve again).
pub const MAX_ROUTES: usize = 10_000;

/// An HTTP client that sends only what its policy permits and follows no
/// redirect on its own.
pub struct OutboundClient {
    http: reqwest::Client,
    policy: OutboundPolicy,
    resolver: Arc<GuardedResolver>,
}

impl OutboundClient {
    pub fn new(policy: OutboundPolicy, options: &Options) -> anyhow::Result<Self> {
        let resolver = Arc::new(GuardedResolver {
            policy: policy.clone(),
            routes: Mutex::default(),
        });
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(options.https_only)
            .dns_resolver(resolver.clone())
            // A proxy would resolve the name instead of our resolver.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            // Below the idle timeouts servers commonly use (60 s here and in
            // nginx), so a pooled connection is not reused just as the peer
            // closes it.
            .pool_idle_timeout(Duration::from_secs(45))
            .user_agent(options.user_agent.as_str());
        for file in &options.extra_ca_files {
            let pem = std::fs::read(file)
                .with_context(|| format!("reading CA file {}", file.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing CA file {}", file.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if options.accept_invalid_certs {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().context("building an HTTP client")?;
        Ok(Self {
            http,
            policy,
            resolver,
        })
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// Connects requests for `name` to the addresses of `connect_host` (still
    /// checked). Returns false when the route table was full and was emptied
    /// first, so the caller can forget what relied on older routes.
    pub fn route(&self, name: &str, connect_host: &str) -> bool {
        let mut routes = self.resolver.routes.lock().expect("outbound routes");
        let kept = routes.len() < MAX_ROUTES || routes.contains_key(name);
        if !kept {
            routes.clear();
        }
        routes.insert(name.to_owned(), connect_host.to_owned());
        kept
    }

    /// Sends one request; a redirect is returned as it is, not followed.
    pub async fn send(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, OutboundError> {
        self.policy.check_url(request.url())?;
        let url = request.url().clone();
        self.http.execute(request).await.map_err(|e| {
            // The URL may carry a secret (an appservice's legacy
            // `access_token`): errors name the host only.
            let e = e.without_url();
            if find_in_chain::<RefusedName>(&e) {
                OutboundError::Refused(format!("{}: no permitted address", host_of(&url)))
            } else {
                OutboundError::Unreachable(format!("{}: {}", host_of(&url), error_chain(&e)))
            }
        })
    }

    /// `GET url`, following at most `max_redirects` redirects, each hop checked
    /// like the first. Returns the final URL and its answer.
    pub async fn get_following(
        &self,
        mut url: Url,
        max_redirects: usize,
        timeout: Option<Duration>,
    ) -> Result<(Url, reqwest::Response), OutboundError> {
        for _ in 0..=max_redirects {
            let mut request = reqwest::Request::new(http::Method::GET, url.clone());
            *request.timeout_mut() = timeout;
            let response = self.send(request).await?;
            if !response.status().is_redirection() {
                return Ok((url, response));
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| OutboundError::Invalid("a redirect without a location".into()))?;
            url = url
                .join(location)
                .map_err(|_| OutboundError::Invalid("a redirect to an invalid URL".into()))?;
        }
        Err(OutboundError::Invalid("too many redirects".into()))
    }
}

/// A response body, refused past `limit` bytes.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, ReadError> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Failed(error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

/// Why reading an answer's body failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("response too large")]
    TooLarge,
    #[error("reading the response: {0}")]
    Failed(String),
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => url.to_string(),
    }
}

fn find_in_chain<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<E>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// An error with its sources, for logs ("connection refused" hides in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            https_only: false,
            extra_ca_files: Vec::new(),
            accept_invalid_certs: false,
            user_agent: "test".into(),
        }
    }

    #[test]
    fn range_matching() {
        let lo = [ip_range("127.0.0.0/8").unwrap()];
        assert!(ranges_contain(&lo, "127.1.2.3".parse().unwrap()));
        assert!(!ranges_contain(&lo, "128.0.0.1".parse().unwrap()));
        // IPv4-mapped IPv6 is checked as IPv4.
        assert!(ranges_contain(&lo, "::ffff:127.0.0.1".parse().unwrap()));
        let ula = [ip_range("fc00::/7").unwrap()];
        assert!(ranges_contain(&ula, "fd12::1".parse().unwrap()));
        assert!(!ranges_contain(&ula, "2001:db8::1".parse().unwrap()));
        assert_eq!(ip_range("10.0.0.0/33"), None);
        assert_eq!(ip_range("10.0.0.0/"), None);
        assert!(ranges_contain(
            &[ip_range("0.0.0.0/0").unwrap()],
            "8.8.8.8".parse().unwrap()
        ));
        // A bare address is a range of one.
        let one = [ip_range("192.0.2.7").unwrap()];
        assert!(ranges_contain(&one, "192.0.2.7".parse().unwrap()));
        assert!(!ranges_contain(&one, "192.0.2.8".parse().unwrap()));
        // Host bits set: the range of the network they are in.
        assert!(ranges_contain(
            &[ip_range("10.1.2.3/8").unwrap()],
            "10.200.0.1".parse().unwrap()
        ));
    }

    /// An appservice's registered host is reachable, and only that host.
    #[test]
    fn a_trusted_host_is_allowed_and_no_other() {
        let policy = OutboundPolicy::new(&crate::config::default_ip_blocklist(), &[])
            .trusting_host("127.0.0.1");
        assert!(
            policy
                .check_url(&Url::parse("http://127.0.0.1:9000/x").unwrap())
                .is_ok()
        );
        for refused in [
            "http://127.0.0.2:9000/x",
            "http://[::1]/x",
            "http://10.0.0.1/x",
        ] {
            assert!(
                policy.check_url(&Url::parse(refused).unwrap()).is_err(),
                "{refused}"
            );
        }
        let v6 =
            OutboundPolicy::new(&crate::config::default_ip_blocklist(), &[]).trusting_host("[::1]");
        assert!(
            v6.check_url(&Url::parse("http://[::1]:80/x").unwrap())
                .is_ok()
        );
    }

    /// IP-literal hosts in every spelling a URL parser accepts are checked.
    #[test]
    fn ip_literal_urls_are_checked() {
        let policy = OutboundPolicy::new(
            &crate::config::default_ip_blocklist(),
            &["127.0.0.1/32".into()],
        );
        for refused in [
            "https://127.0.0.2/x",
            "http://127.0.0.2:8080/x",
            "https://2130706434/x",
            "https://0x7f.0.0.2/x",
            "https://[::ffff:127.0.0.2]/x",
            "https://[::1]/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
        ] {
            let url = Url::parse(refused).unwrap();
            assert!(
                matches!(policy.check_url(&url), Err(OutboundError::Refused(_))),
                "{refused}"
            );
        }
        for allowed in ["https://127.0.0.1:8448/x", "https://example.org/x"] {
            assert!(
                policy.check_url(&Url::parse(allowed).unwrap()).is_ok(),
                "{allowed}"
            );
        }
        assert!(matches!(
            policy.check_url(&Url::parse("file:///etc/passwd").unwrap()),
            Err(OutboundError::Refused(_))
        ));
    }

    /// A name whose addresses are all refused fails as refused, before any
    /// connection (nothing listens on the port, so a connection attempt would
    /// show as unreachable instead).
    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        let policy = OutboundPolicy::new(&crate::config::default_ip_blocklist(), &[]);
        let client = OutboundClient::new(policy, &options()).unwrap();
        let request = reqwest::Request::new(
            http::Method::GET,
            Url::parse("http://localhost:9/").unwrap(),
        );
        let err = client.send(request).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{err}");
        // A route to a refused host is refused the same way.
        client.route("routed.invalid", "localhost");
        let request = reqwest::Request::new(
            http::Method::GET,
            Url::parse("http://routed.invalid:9/").unwrap(),
        );
        let err = client.send(request).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{err}");
    }

    /// Every redirect hop is checked: a redirect to a refused IP literal is
    /// refused, and its target never hit.
    #[tokio::test]
    async fn redirect_hops_are_checked() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let inner = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let inner_addr = inner.local_addr().unwrap();
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = inner.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let outer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outer_addr = outer.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move {
                axum::response::Redirect::temporary(&format!("http://{inner_addr}/secret"))
            }),
        );
        tokio::spawn(async move { axum::serve(outer, app).await.unwrap() });

        let policy = OutboundPolicy::new(
            &crate::config::default_ip_blocklist(),
            &["127.0.0.1/32".into()],
        );
        let client = OutboundClient::new(policy, &options()).unwrap();
        let url = Url::parse(&format!("http://{outer_addr}/")).unwrap();
        let err = client
            .get_following(url.clone(), 5, None)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{err}");
        // Not followed at all by a plain send: the 307 comes back as it is.
        let response = client
            .send(reqwest::Request::new(http::Method::GET, url))
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    /// No module but this one builds an HTTP client, so none can skip the
    /// policy. (The benchmark binaries under `src/bin` talk to our own server.)
    #[test]
    fn no_other_module_builds_an_http_client() {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("bin") {
                        walk(&path, out);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 20, "walked {}", src.display());
        let patterns = [
            "Client::builder(",
            "ClientBuilder",
            "reqwest::Client::new",
            "reqwest::Client;",
            "reqwest::get(",
            "hyper_util::client",
            "TcpStream::connect",
        ];
        for file in files {
            if file.ends_with("outbound.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for pattern in patterns {
                assert!(
                    !text.contains(pattern),
                    "{} contains {pattern:?}: build outbound clients with outbound::OutboundClient",
                    file.display()
                );
            }
        }
    }
}
