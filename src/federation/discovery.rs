//! Server discovery (spec "Resolving server names"): from a server name to where
//! to connect, which name the certificate must carry, and the `Host` header.
//!
//! [`resolve`] is the algorithm over a [`Lookup`] (the `.well-known` fetch and SRV
//! queries), so every step is testable without a network. Addresses of the
//! resulting host are resolved when connecting (see `client`), where the
//! private-range guard applies.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Where requests for a server go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name the TLS certificate must be valid for (and the URL's host).
    pub tls_name: String,
    /// The host whose addresses to connect to: `tls_name`, or an SRV target.
    pub connect_host: String,
    pub port: u16,
    /// The `Host` header value.
    pub host_header: String,
}

/// The two network questions discovery asks.
pub trait Lookup: Send + Sync {
    /// `m.server` from `https://<host>/.well-known/matrix/server`, or `None` when
    /// the request fails or the answer is invalid.
    fn well_known(&self, host: &str) -> impl Future<Output = Option<String>> + Send;
    /// The first SRV record for `name` (`_matrix-fed._tcp.<host>`), as target
    /// host and port.
    fn srv(&self, name: &str) -> impl Future<Output = Option<(String, u16)>> + Send;
}

pub const DEFAULT_PORT: u16 = 8448;

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
pub fn split_host_port(name: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((ip, port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((name, None)),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The resolution algorithm, steps 1-6 of the spec (the deprecated `_matrix._tcp`
/// SRV name is still tried, after `_matrix-fed._tcp`).
pub async fn resolve(lookup: &impl Lookup, server_name: &str) -> Option<Target> {
    let (host, port) = split_host_port(server_name)?;
    // 1. IP literal: that address, the given port or 8448.
    // 2. Hostname with an explicit port: its addresses, that port.
    if is_ip_literal(host) || port.is_some() {
        return Some(Target {
            tls_name: host.to_owned(),
            connect_host: host.to_owned(),
            port: port.unwrap_or(DEFAULT_PORT),
            host_header: server_name.to_owned(),
        });
    }
    // 3. .well-known delegation.
    if let Some(delegated) = lookup.well_known(host).await
        && let Some((d_host, d_port)) = split_host_port(&delegated)
        && !d_host.is_empty()
    {
        // 3.1 / 3.2: an IP literal or an explicit port.
        if is_ip_literal(d_host) || d_port.is_some() {
            return Some(Target {
                tls_name: d_host.to_owned(),
                connect_host: d_host.to_owned(),
                port: d_port.unwrap_or(DEFAULT_PORT),
                host_header: delegated.clone(),
            });
        }
        // 3.3 / 3.4: SRV records of the delegated host.
        if let Some((target, port)) = srv(lookup, d_host).await {
            return Some(Target {
                tls_name: d_host.to_owned(),
                connect_host: target,
                port,
                host_header: d_host.to_owned(),
            });
        }
        // 3.5: the delegated host on 8448.
        return Some(Target {
            tls_name: d_host.to_owned(),
            connect_host: d_host.to_owned(),
            port: DEFAULT_PORT,
            host_header: d_host.to_owned(),
        });
    }
    // 4. / 5. SRV records of the server name.
    if let Some((target, port)) = srv(lookup, host).await {
        return Some(Target {
            tls_name: host.to_owned(),
            connect_host: target,
            port,
            host_header: host.to_owned(),
        });
    }
    // 6. The host itself on 8448.
    Some(Target {
        tls_name: host.to_owned(),
        connect_host: host.to_owned(),
        port: DEFAULT_PORT,
        host_header: host.to_owned(),
    })
}

async fn srv(lookup: &impl Lookup, host: &str) -> Option<(String, u16)> {
    if let Some(found) = lookup.srv(&format!("_matrix-fed._tcp.{host}")).await {
        return Some(found);
    }
    lookup.srv(&format!("_matrix._tcp.{host}")).await
}

impl Target {
    /// The base URL of requests: `https://<tls_name>:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://{}:{}", url_host(&self.tls_name), self.port)
    }
}

/// Resolved targets kept at most: anyone can make us resolve a name (a user ID
/// or alias of any server), so the cache must not grow without bound.
pub const MAX_CACHED: usize = 10_000;

/// Resolved targets, cached: successful resolutions for `ttl`, so `.well-known`
/// is not fetched for every request. At most [`MAX_CACHED`] of them.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (Target, Instant)>>,
}

impl Cache {
    pub fn get(&self, server_name: &str) -> Option<Target> {
        let entries = self.entries.lock().expect("discovery cache");
        entries
            .get(server_name)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(target, _)| target.clone())
    }

    pub fn clear(&self) {
        self.entries.lock().expect("discovery cache").clear();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("discovery cache").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn put(&self, server_name: &str, target: Target, ttl: Duration) {
        let mut entries = self.entries.lock().expect("discovery cache");
        if entries.len() >= MAX_CACHED && !entries.contains_key(server_name) {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_CACHED {
                // All still fresh: start over rather than grow (a miss costs
                // one resolution).
                entries.clear();
            }
        }
        entries.insert(server_name.to_owned(), (target, Instant::now() + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake network: `.well-known` answers and SRV records by name, with a log of
    /// what was asked.
    #[derive(Default)]
    struct Fake {
        well_known: HashMap<String, String>,
        srv: HashMap<String, (String, u16)>,
        asked: Mutex<Vec<String>>,
    }

    impl Lookup for Fake {
        async fn well_known(&self, host: &str) -> Option<String> {
            self.asked.lock().unwrap().push(format!("wk {host}"));
            self.well_known.get(host).cloned()
        }
        async fn srv(&self, name: &str) -> Option<(String, u16)> {
            self.asked.lock().unwrap().push(format!("srv {name}"));
            self.srv.get(name).cloned()
        }
    }

    fn target(tls: &str, connect: &str, port: u16, host: &str) -> Target {
        Target {
            tls_name: tls.into(),
            connect_host: connect.into(),
            port,
            host_header: host.into(),
        }
    }

    #[tokio::test]
    async fn step1_ip_literals_skip_every_lookup() {
        let fake = Fake::default();
        assert_eq!(
            resolve(&fake, "1.2.3.4").await,
            Some(target("1.2.3.4", "1.2.3.4", 8448, "1.2.3.4"))
        );
        assert_eq!(
            resolve(&fake, "[::1]:8449").await,
            Some(target("::1", "::1", 8449, "[::1]:8449"))
        );
        assert_eq!(
            target("::1", "::1", 8449, "").base_url(),
            "https://[::1]:8449"
        );
        assert!(fake.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn step2_explicit_port_skips_every_lookup() {
        let fake = Fake::default();
        assert_eq!(
            resolve(&fake, "example.org:8000").await,
            Some(target(
                "example.org",
                "example.org",
                8000,
                "example.org:8000"
            ))
        );
        assert!(fake.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn step3_well_known_delegation() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("a.org".into(), "matrix.a.org:443".into());
        fake.well_known.insert("b.org".into(), "10.0.0.1".into());
        fake.well_known.insert("c.org".into(), "fed.c.org".into());
        fake.srv.insert(
            "_matrix-fed._tcp.fed.c.org".into(),
            ("node1.c.org".into(), 8450),
        );
        fake.well_known.insert("d.org".into(), "fed.d.org".into());
        fake.srv
            .insert("_matrix._tcp.fed.d.org".into(), ("old.d.org".into(), 8451));
        fake.well_known.insert("e.org".into(), "fed.e.org".into());

        // 3.2 explicit port
        assert_eq!(
            resolve(&fake, "a.org").await,
            Some(target(
                "matrix.a.org",
                "matrix.a.org",
                443,
                "matrix.a.org:443"
            ))
        );
        // 3.1 IP literal, default port
        assert_eq!(
            resolve(&fake, "b.org").await,
            Some(target("10.0.0.1", "10.0.0.1", 8448, "10.0.0.1"))
        );
        // 3.3 SRV _matrix-fed: connect to the target, certificate for the delegate
        assert_eq!(
            resolve(&fake, "c.org").await,
            Some(target("fed.c.org", "node1.c.org", 8450, "fed.c.org"))
        );
        // 3.4 deprecated _matrix SRV
        assert_eq!(
            resolve(&fake, "d.org").await,
            Some(target("fed.d.org", "old.d.org", 8451, "fed.d.org"))
        );
        // 3.5 no SRV: the delegate on 8448
        assert_eq!(
            resolve(&fake, "e.org").await,
            Some(target("fed.e.org", "fed.e.org", 8448, "fed.e.org"))
        );
    }

    #[tokio::test]
    async fn steps4_to_6_without_well_known() {
        let mut fake = Fake::default();
        fake.srv
            .insert("_matrix-fed._tcp.f.org".into(), ("f1.f.org".into(), 9000));
        fake.srv
            .insert("_matrix._tcp.g.org".into(), ("g1.g.org".into(), 9001));
        assert_eq!(
            resolve(&fake, "f.org").await,
            Some(target("f.org", "f1.f.org", 9000, "f.org"))
        );
        assert_eq!(
            resolve(&fake, "g.org").await,
            Some(target("g.org", "g1.g.org", 9001, "g.org"))
        );
        assert_eq!(
            resolve(&fake, "h.org").await,
            Some(target("h.org", "h.org", 8448, "h.org"))
        );
        let asked = fake.asked.lock().unwrap().clone();
        assert_eq!(
            asked[asked.len() - 3..],
            [
                "wk h.org",
                "srv _matrix-fed._tcp.h.org",
                "srv _matrix._tcp.h.org"
            ]
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = Cache::default();
        let t = target("a", "a", 8448, "a");
        for i in 0..MAX_CACHED + 10 {
            cache.put(&format!("s{i}.org"), t.clone(), Duration::from_secs(3600));
            assert!(cache.len() <= MAX_CACHED);
        }
        assert!(cache.get(&format!("s{}.org", MAX_CACHED + 9)).is_some());
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.org"), Some(("a.org", None)));
        assert_eq!(split_host_port("a.org:1"), Some(("a.org", Some(1))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port("a.org:x"), None);
        assert_eq!(split_host_port("[::1"), None);
    }
}
