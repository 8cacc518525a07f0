//! The destination guard: which addresses origin connections may be made to.
//!
//! The decision is taken on the address actually dialled, after name resolution, so no
//! spelling of a host (`localhost`, `127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`,
//! `[::ffff:127.0.0.1]`) and no DNS answer (rebinding) reaches what the guard refuses. By
//! default it refuses loopback, link-local (cloud metadata at 169.254.169.254 included),
//! unspecified, multicast, broadcast and unique-local addresses; `--allow-destination`
//! opens ranges again. The operator's own upstreams (the mirror) are trusted as configured.

use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Destinations origin traffic may reach; replaced whole on a live reload.
#[derive(Debug, Default)]
pub struct Guard {
    rules: std::sync::RwLock<Arc<Destinations>>,
}

/// What the guard lets through besides public addresses.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    /// Ranges opened again (`--allow-destination`).
    pub allow: Vec<IpNet>,
    /// `host:port` authorities configured by the operator (the mirrors), always allowed.
    pub trusted: Vec<(String, u16)>,
}

/// A destination the guard refused, with the address it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    pub host: String,
    pub addr: IpAddr,
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "destination {} resolves to {}, a {} address this proxy does not connect to (see --allow-destination)",
            self.host,
            self.addr,
            kind(self.addr).unwrap_or("refused")
        )
    }
}

impl std::error::Error for NotAllowed {}

/// The first `NotAllowed` in an error's chain of causes.
pub fn not_allowed<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotAllowed> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c.downcast_ref::<NotAllowed>() {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

/// The IPv4 address behind an IPv4-mapped IPv6 address, else the address itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why an address is refused by default (`None`: allowed).
fn kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.octets()[0] == 0 {
                Some("unspecified")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else {
                None
            }
        }
    }
}

impl Guard {
    pub fn new(rules: Destinations) -> Guard {
        Guard {
            rules: std::sync::RwLock::new(Arc::new(rules)),
        }
    }

    /// Replaces what is let through (connections under way are not affected).
    pub fn set(&self, rules: Destinations) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }

    fn rules(&self) -> Arc<Destinations> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a connection to `ip` may be made.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        kind(ip).is_none() || self.rules().allow.iter().any(|n| n.contains(&ip))
    }

    fn trusts(&self, host: &str, port: u16) -> bool {
        self.rules()
            .trusted
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }

    /// Resolves `host` and keeps the addresses that may be dialled; `NotAllowed` when
    /// there are none (names whose lookup fails are an ordinary I/O error).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
        let addrs = lookup(host, port).await?;
        if self.trusts(host, port) {
            return Ok(addrs);
        }
        let (ok, refused): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| self.permits(a.ip()));
        match (ok.is_empty(), refused.first()) {
            (true, Some(bad)) => Err(Box::new(NotAllowed {
                host: host.to_owned(),
                addr: canonical(bad.ip()),
            })),
            _ => Ok(ok),
        }
    }

    /// Connects to the first allowed address of `host:port` that answers.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, BoxError> {
        dial(host, self.resolve(host, port).await?, timeout).await
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(error) => Err(Box::new(crate::failure::DnsFailed {
            host: name.to_owned(),
            error,
        })),
    }
}

/// Connects to the first of `addrs` that answers.
async fn dial(
    host: &str,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, BoxError> {
    let mut last: BoxError = format!("{host} has no address").into();
    for a in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Box::new(e),
            Err(_) => {
                let why = format!("connect to {a} timed out");
                last = Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
            }
        }
    }
    Err(last)
}

/// The TCP connector of the upstream client: resolves, asks the guard (when there is one)
/// about every address, and dials only those it permits.
#[derive(Clone)]
pub struct GuardedConnector {
    pub guard: Option<Arc<Guard>>,
    pub timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<http::Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let (guard, timeout) = (self.guard.clone(), self.timeout);
        Box::pin(async move {
            let host = dst.host().ok_or("destination has no host")?.to_owned();
            // Never a default port for a port that does not parse (`h:99999`).
            let port = larder_core::key::port_or_default(&dst)?;
            let addrs = match &guard {
                Some(g) => g.resolve(&host, port).await?,
                None => lookup(&host, port).await?,
            };
            Ok(TokioIo::new(dial(&host, addrs, timeout).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_the_internal_ranges_by_default() {
        let g = Guard::default();
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fc00::1",
            "fd12:3456::1",
        ] {
            assert!(!g.permits(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "10.1.2.3",
            "192.168.1.1",
            "2606:4700::1111",
        ] {
            assert!(g.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn allow_destination_opens_ranges_again() {
        let g = Guard::new(Destinations {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            trusted: Vec::new(),
        });
        assert!(g.permits(ip("127.0.0.1")));
        assert!(g.permits(ip("::ffff:127.0.0.2")), "mapped addresses too");
        assert!(!g.permits(ip("::1")));
        assert!(!g.permits(ip("169.254.169.254")));
    }

    #[tokio::test]
    async fn every_spelling_of_loopback_resolves_to_a_refusal() {
        let g = Guard::default();
        for host in [
            "localhost",
            "127.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "[::ffff:127.0.0.1]",
            "[::1]",
            "169.254.169.254",
        ] {
            let e = g.resolve(host, 80).await.unwrap_err();
            assert!(not_allowed(&*e).is_some(), "{host}: {e}");
        }
    }

    #[tokio::test]
    async fn trusted_authorities_pass() {
        let g = Guard::new(Destinations {
            allow: Vec::new(),
            trusted: vec![("127.0.0.1".into(), 8080)],
        });
        assert!(g.resolve("127.0.0.1", 8080).await.is_ok());
        assert!(g.resolve("127.0.0.1", 8081).await.is_err());
    }
}
