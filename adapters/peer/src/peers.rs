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

/// Everything needed to send peer traffic, made once at start-up and shared by the two
/// paths that send it: the server relaying a client's request to its owner
/// (`Output::Forward`) and the driver fetching from the owner for the engine
/// (`Output::FetchFromPeers`). Both mark failing peers in the one `health`.
pub struct PeerLink {
    /// Client for peer-to-peer traffic (members are configured by the operator: unguarded).
    pub upstream: Upstream,
    pub health: Health,
    /// This node's id: the hop marker's value.
    pub self_id: String,
    pub secret: Option<String>,
    /// How long a peer may take to its first byte before the next is tried.
    pub timeout: Duration,
    pub proxy_path: String,
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

impl PeerLink {
    /// The request for `peer`: the client's end-to-end fields, marked with our hop id (the
    /// peer serves it itself, never forwarding it again) and signed when a secret is set.
    fn request(
        &self,
        peer: &str,
        method: &Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &Option<Bytes>,
    ) -> Request<Body> {
        let mut req =
            Request::builder()
                .method(method.clone())
                .uri(peer_url(peer, &self.proxy_path, target));
        let h = req.headers_mut().expect("fresh builder");
        for (k, v) in headers {
            h.append(k.clone(), v.clone());
        }
        larder_core::policy::strip_hop_by_hop(h);
        h.remove(http::header::HOST);
        h.insert(
            HOP,
            HeaderValue::from_str(&self.self_id).unwrap_or(HeaderValue::from_static("peer")),
        );
        if let Some(secret) = &self.secret {
            let v = sign(secret, next_nonce(), method, target, h, SystemTime::now());
            h.insert(AUTH, HeaderValue::from_str(&v).expect("ascii"));
        }
        let b: Body = match body {
            Some(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            None => crate::upstream::empty(),
        };
        req.body(b).expect("valid request")
    }

    /// Sends the request to the first peer that answers, best first; `None` when every one
    /// failed or is marked down (the caller then serves it locally, or reports the fetch
    /// failed). A peer fails when it cannot be reached or is too slow to its head (it is
    /// marked down), or when it refuses the hop itself: 401 (credentials) or 508 (a loop).
    pub async fn forward(
        &self,
        peers: &[String],
        method: &Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &Option<Bytes>,
        on_error: impl Fn(&str, &str),
    ) -> Option<Response<Incoming>> {
        self.forward_relaying(peers, method, target, headers, body, on_error, None)
            .await
    }

    /// [`forward`](Self::forward), with the owner's interim (1xx) heads passed to `interim`.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward_relaying(
        &self,
        peers: &[String],
        method: &Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &Option<Bytes>,
        on_error: impl Fn(&str, &str),
        interim: Option<crate::interim::OnInterim>,
    ) -> Option<Response<Incoming>> {
        // A peer marked down is skipped (the prober or its back-off brings it back); when
        // every better peer is down the caller serves the request itself.
        for peer in peers.iter().filter(|p| !self.health.is_down(p)) {
            let mut req = self.request(peer, method, target, headers, body);
            if let Some(on) = &interim {
                crate::interim::watch(&mut req, on.clone());
            }
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

/// Stand-ins for peers, for the tests of both peer-sending paths.
#[cfg(test)]
pub(crate) mod stand_in {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;

    /// Requests a stand-in received, in order.
    pub type Seen = Arc<Mutex<Vec<http::request::Parts>>>;

    /// A loopback HTTP/1.1 server answering every request with `status` and `body`
    /// (cacheable for a minute), recording each request's head. Returns its base URL.
    pub async fn serve(status: u16, body: &'static str) -> (String, Seen) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let s = s.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    s.lock().unwrap().push(req.into_parts().0);
                    let resp = Response::builder()
                        .status(status)
                        .header(http::header::CACHE_CONTROL, "max-age=60")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        (url, seen)
    }

    /// The URL of a loopback port nothing listens on (connections are refused).
    pub fn refused() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    /// The id a [`link`] marks its requests with.
    pub const SELF_ID: &str = "http://entry.test:3128";

    /// A peer link with short timeouts, signing with `secret`.
    pub fn link(secret: Option<&str>) -> PeerLink {
        let tls = crate::tls::client_config(&[]).unwrap();
        let t = Duration::from_secs(2);
        PeerLink {
            upstream: Upstream::new(tls, t, t, t, SELF_ID),
            health: Health::default(),
            self_id: SELF_ID.into(),
            secret: secret.map(str::to_owned),
            timeout: t,
            proxy_path: "/proxy".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stand_in::{SELF_ID, link, refused, serve};
    use super::*;
    use larder_core::hop::verify;

    type Errors = Mutex<Vec<(String, String)>>;

    fn record(errors: &Errors) -> impl Fn(&str, &str) + '_ {
        |peer, why| errors.lock().unwrap().push((peer.into(), why.into()))
    }

    #[tokio::test]
    async fn fails_over_to_the_next_peer_marked_and_signed() {
        let (good, seen) = serve(200, "hello").await;
        let (looping, looped) = serve(508, "loop").await;
        let dead = refused();
        let link = link(Some("sesame"));
        let target = "http://origin.test/a?b=1";
        let mut headers = http::HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("text/plain"));
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert("host", HeaderValue::from_static("origin.test"));
        let errors = Errors::default();
        let peers = [dead.clone(), looping.clone(), good.clone()];
        let resp = link
            .forward(
                &peers,
                &Method::GET,
                target,
                &headers,
                &None,
                record(&errors),
            )
            .await
            .expect("the third peer answers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");

        // The refused peer and the one refusing the hop both failed, in order; only the
        // unreachable one is marked down.
        let errors = errors.into_inner().unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, dead);
        assert_eq!(
            errors[1],
            (looping.clone(), "answered 508 Loop Detected".into())
        );
        assert!(link.health.is_down(&dead));
        assert!(!link.health.is_down(&looping) && !link.health.is_down(&good));
        assert_eq!(looped.lock().unwrap().len(), 1);

        let seen = seen.lock().unwrap();
        let [req] = &seen[..] else {
            panic!("one request reached the good peer: {seen:?}")
        };
        assert_eq!(
            req.uri.to_string(),
            peer_url("", "/proxy", target),
            "sent to the proxy door"
        );
        assert_eq!(req.headers[HOP], SELF_ID, "marked as peer traffic");
        let signed = verify(
            "sesame",
            &Method::GET,
            target,
            &req.headers,
            SystemTime::now(),
        );
        assert!(signed.is_ok(), "{signed:?}");
        assert_eq!(req.headers["accept"], "text/plain");
        assert!(!req.headers.contains_key("connection"));
        assert_ne!(req.headers["host"], "origin.test", "Host names the peer");
    }

    #[tokio::test]
    async fn every_peer_failing_is_none_and_down_peers_are_skipped() {
        let link = link(None);
        let (a, b) = (refused(), refused());
        let errors = Errors::default();
        let h = http::HeaderMap::new();
        let peers = [a.clone(), b.clone()];
        let got = link
            .forward(
                &peers,
                &Method::GET,
                "http://o/",
                &h,
                &None,
                record(&errors),
            )
            .await;
        assert!(got.is_none());
        assert_eq!(errors.lock().unwrap().len(), 2);
        assert!(link.health.is_down(&a) && link.health.is_down(&b));

        // Marked down, `a` is not tried again (until the prober or its back-off clears it).
        let (good, seen) = serve(200, "ok").await;
        let peers = [a.clone(), good];
        let resp = link
            .forward(
                &peers,
                &Method::GET,
                "http://o/",
                &h,
                &None,
                record(&errors),
            )
            .await
            .expect("the good peer answers");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(errors.lock().unwrap().len(), 2, "the down peer was skipped");
        // Without a secret: marked, not signed.
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].headers[HOP], SELF_ID);
        assert!(!seen[0].headers.contains_key(AUTH));
    }

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
