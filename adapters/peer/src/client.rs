//! The Larder client library: a non-participating client that picks the owner of each URL
//! with the same ring as the peers and sends the request straight to it (no extra hop),
//! failing over down the preference order like a peer does. `http://` and `https://` URLs
//! both go to the owner (through its forwardcache door), so HTTPS content is cached too.

use crate::config::canonical_peer;
use crate::peers::{Health, peer_url};
use crate::upstream::{Body, BoxError, SendError, Upstream};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use larder_core::CacheKey;
use larder_core::ring::{PeerSelection, RingKind};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest request body the client buffers for fail-over.
const MAX_BODY: usize = 16 << 20;

/// Why a request through the client failed.
#[derive(Debug)]
pub enum ClientError {
    /// The URL is not an absolute http(s) URL.
    BadUrl(String),
    /// The request body could not be read or was too large.
    Body(String),
    /// No peer answered.
    AllPeersFailed(Vec<(String, String)>),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::BadUrl(u) => write!(f, "not an absolute http(s) URL: {u}"),
            ClientError::Body(e) => write!(f, "request body: {e}"),
            ClientError::AllPeersFailed(v) => {
                write!(f, "no peer answered:")?;
                for (p, why) in v {
                    write!(f, " {p} ({why})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ClientError {}

struct Inner {
    ring: PeerSelection,
    upstream: Upstream,
    health: Health,
    timeout: Duration,
    proxy_path: String,
}

/// A `tower::Service<http::Request<B>>` that sends each request to its owner peer.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client for these peers (the same list and ring the peers use).
    pub fn new<S: AsRef<str>>(peers: &[S], ring: RingKind) -> Result<Self, String> {
        let peers = peers
            .iter()
            .map(|p| canonical_peer(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if peers.is_empty() {
            return Err("a client needs at least one peer".into());
        }
        let tls = crate::tls::client_config(&[])?;
        let timeout = Duration::from_secs(2);
        let upstream = Upstream::new(
            tls,
            timeout,
            Duration::from_secs(60),
            Duration::from_secs(60),
            "larder-client",
        );
        Ok(Client {
            inner: Arc::new(Inner {
                ring: PeerSelection::new(ring, &peers),
                upstream,
                health: Health::default(),
                timeout,
                proxy_path: "/proxy".into(),
            }),
        })
    }

    /// Peers in the order this client tries them for `url` (owner first).
    pub fn preference(&self, url: &str) -> Result<Vec<String>, ClientError> {
        let uri: http::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
        let key = CacheKey::from_uri(&uri).map_err(|_| ClientError::BadUrl(url.into()))?;
        Ok(self
            .inner
            .ring
            .preference(key.as_bytes())
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// The owner of `url`: for `reqwest::Proxy::custom` and other proxy hooks.
    pub fn owner_for(&self, url: &str) -> Option<String> {
        self.preference(url)
            .ok()?
            .into_iter()
            .find(|p| !self.inner.health.is_down(p))
    }

    /// Sends a request to its owner, failing over in preference order.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Incoming>, ClientError> {
        let target = req.uri().to_string();
        let prefs = self.preference(&target)?;
        let (parts, body) = req.into_parts();
        let (up, down): (Vec<String>, Vec<String>) = prefs
            .into_iter()
            .partition(|p| !self.inner.health.is_down(p));
        let mut failures = Vec::new();
        for peer in up.into_iter().chain(down) {
            let mut r = Request::builder()
                .method(parts.method.clone())
                .uri(peer_url(&peer, &self.inner.proxy_path, &target));
            let h = r.headers_mut().expect("fresh builder");
            for (k, v) in &parts.headers {
                h.append(k.clone(), v.clone());
            }
            h.remove(http::header::HOST);
            let b: Body = Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed();
            match self
                .inner
                .upstream
                .send(r.body(b).expect("valid request"), self.inner.timeout)
                .await
            {
                Ok(resp) => {
                    self.inner.health.ok(&peer);
                    return Ok(resp);
                }
                Err(e) => {
                    self.inner.health.failed(&peer);
                    failures.push((
                        peer,
                        match e {
                            SendError::Timeout => "timeout".to_string(),
                            SendError::Connect { why, .. } => why,
                        },
                    ));
                }
            }
        }
        Err(ClientError::AllPeersFailed(failures))
    }
}

impl<B> tower_service::Service<Request<B>> for Client
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, ClientError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // Buffered so a fail-over can send it again.
            let bytes = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            this.send(Request::from_parts(parts, bytes)).await
        })
    }
}
