//! Peer-to-peer plumbing: the hop marker, HMAC authentication, health with back-off, and
//! forwarding a request to its owner with fail-over down the preference order.

use crate::upstream::{Body, Upstream};
use bytes::Bytes;
use hashbrown::HashMap;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use larder_core::hop::{AUTH, HOP, sign};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Which peers are marked down, until when. A down peer keeps its place in the hash input
/// (its keys do not move); it is only skipped.
#[derive(Default)]
pub struct Health {
    down: Mutex<HashMap<String, (Instant, u32)>>,
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Health {
    pub fn is_down(&self, peer: &str) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    pub fn failed(&self, peer: &str) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let n = d.get(peer).map(|x| x.1 + 1).unwrap_or(0);
        let wait = (BACKOFF_START * 2u32.saturating_pow(n.min(10))).min(BACKOFF_MAX);
        d.insert(peer.to_owned(), (Instant::now() + wait, n));
    }

    pub fn ok(&self, peer: &str) {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    /// Peers marked down now.
    pub fn down_now(&self) -> Vec<String> {
        let now = Instant::now();
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (u, _))| *u > now)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Everything needed to send peer traffic.
pub struct PeerLink<'a> {
    pub upstream: &'a Upstream,
    pub health: &'a Health,
    pub self_id: &'a str,
    pub secret: Option<&'a str>,
    pub timeout: Duration,
    pub proxy_path: &'a str,
}

/// A nonce no signature of this sender used before: a counter that starts at the boot time
/// in microseconds, so a restarted peer never repeats one of its previous life.
fn next_nonce() -> u64 {
    static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| {
            let micros = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            std::sync::atomic::AtomicU64::new(micros)
        });
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The URL a peer serves `target` at (the forwardcache-compatible door).
pub fn peer_url(peer: &str, proxy_path: &str, target: &str) -> String {
    format!(
        "{peer}{proxy_path}?{}",
        larder_core::door::proxy_query(target)
    )
}

impl PeerLink<'_> {
    /// Sends the request to the first peer that answers, best first; `None` when every one
    /// failed or is marked down (the caller then serves it locally).
    pub async fn forward(
        &self,
        peers: &[String],
        method: &Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &Option<Bytes>,
        on_error: impl Fn(&str, &str),
    ) -> Option<Response<Incoming>> {
        // A peer marked down is skipped (the prober or its back-off brings it back); when
        // every better peer is down the caller serves the request itself.
        for peer in peers.iter().filter(|p| !self.health.is_down(p)) {
            let mut req = Request::builder().method(method.clone()).uri(peer_url(
                peer,
                self.proxy_path,
                target,
            ));
            let h = req.headers_mut().expect("fresh builder");
            for (k, v) in headers {
                h.append(k.clone(), v.clone());
            }
            larder_core::policy::strip_hop_by_hop(h);
            h.remove(http::header::HOST);
            h.insert(
                HOP,
                HeaderValue::from_str(self.self_id).unwrap_or(HeaderValue::from_static("peer")),
            );
            if let Some(secret) = self.secret {
                let v = sign(secret, next_nonce(), method, target, h, SystemTime::now());
                h.insert(AUTH, HeaderValue::from_str(&v).expect("ascii"));
            }
            let b: Body = match body {
                Some(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
                None => crate::upstream::empty(),
            };
            let req = req.body(b).expect("valid request");
            match self.upstream.send(req, self.timeout).await {
                Ok(resp)
                    if !matches!(
                        resp.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::LOOP_DETECTED
                    ) =>
                {
                    self.health.ok(peer);
                    return Some(resp);
                }
                Ok(resp) => on_error(peer, &format!("answered {}", resp.status())),
                Err(e) => {
                    self.health.failed(peer);
                    on_error(peer, &format!("{e:?}"));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_marks_and_clears() {
        let h = Health::default();
        assert!(!h.is_down("p"));
        h.failed("p");
        assert!(h.is_down("p"));
        assert_eq!(h.down_now(), vec!["p".to_string()]);
        h.ok("p");
        assert!(!h.is_down("p"));
    }

    #[test]
    fn peer_urls_escape_the_target() {
        assert_eq!(
            peer_url("http://p:1", "/proxy", "http://o/a?b=1&c"),
            "http://p:1/proxy?q=http%3A%2F%2Fo%2Fa%3Fb%3D1%26c"
        );
    }
}
