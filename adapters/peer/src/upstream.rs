//! The pooled keep-alive HTTP(S) client used for origins and peers, and the fetch tasks
//! (from the origin, or from peers) that turn one upstream response into engine inputs.

use crate::driver::Driver;
use crate::guard::{Guard, GuardedConnector};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, request};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use larder_core::engine::UpstreamError;
use larder_core::{FetchId, Input};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
type Connector = hyper_rustls::HttpsConnector<GuardedConnector>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Body>,
    pub first_byte: Duration,
    pub idle: Duration,
    via: HeaderValue,
}

/// Why an upstream request failed, and how long it took to find out.
#[derive(Debug)]
pub enum SendError {
    Timeout,
    /// No answer: `kind` says why (for the client), `why` in full (for the log).
    Connect {
        kind: UpstreamError,
        why: String,
    },
}

impl SendError {
    /// What the engine and the client are told.
    pub fn kind(&self) -> UpstreamError {
        match self {
            SendError::Timeout => UpstreamError::Timeout,
            SendError::Connect { kind, .. } => *kind,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout => f.write_str("no answer in time"),
            SendError::Connect { why, .. } => f.write_str(why),
        }
    }
}

/// Why an origin request failed: the destination guard refused it, or it failed.
#[derive(Debug)]
pub enum OriginError {
    NotAllowed(crate::guard::NotAllowed),
    Failed(SendError),
}

impl Upstream {
    /// A client that connects wherever it is asked (peers, the client library).
    pub fn new(
        tls: rustls::ClientConfig,
        connect: Duration,
        first_byte: Duration,
        idle: Duration,
        via: &str,
    ) -> Self {
        Self::with_guard(tls, connect, first_byte, idle, via, None)
    }

    /// A client whose every connection is to an address `guard` permits (origins).
    pub fn with_guard(
        tls: rustls::ClientConfig,
        connect: Duration,
        first_byte: Duration,
        idle: Duration,
        via: &str,
        guard: Option<Arc<Guard>>,
    ) -> Self {
        let http = GuardedConnector {
            guard,
            timeout: connect,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // Below the 5 s keep-alive many origins (Apache's default) use: a connection they
            // are about to close is dropped here first.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(64)
            .build(https);
        let via = HeaderValue::from_str(&format!("1.1 {via}"))
            .unwrap_or(HeaderValue::from_static("1.1 larder"));
        Upstream {
            client,
            first_byte,
            idle,
            via,
        }
    }

    /// Sends a request, waiting at most `first_byte` for the head.
    pub async fn send(
        &self,
        req: Request<Body>,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_to_origin(req, first_byte)
            .await
            .map_err(|e| match e {
                OriginError::NotAllowed(n) => SendError::Connect {
                    kind: UpstreamError::DestinationNotAllowed,
                    why: n.to_string(),
                },
                OriginError::Failed(e) => e,
            })
    }

    /// [`send`](Self::send), telling a destination the guard refused from other failures.
    pub async fn send_to_origin(
        &self,
        mut req: Request<Body>,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, OriginError> {
        *req.version_mut() = http::Version::HTTP_11;
        frame_request(&mut req);
        req.headers_mut()
            .append(http::header::VIA, self.via.clone());
        // A GET or HEAD (no body to lose) whose connection broke before any answer (the
        // origin closed a pooled keep-alive connection as it was reused) is sent once more,
        // on a new connection, rather than answered 502.
        let again = matches!(*req.method(), http::Method::GET | http::Method::HEAD).then(|| {
            let mut r = Request::new(empty());
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.version_mut() = req.version();
            *r.headers_mut() = req.headers().clone();
            r
        });
        let started = tokio::time::Instant::now();
        let connection = capture_connection(&mut req);
        let mut sent = tokio::time::timeout(first_byte, self.client.request(req)).await;
        let broken = matches!(&sent, Ok(Err(e)) if !e.is_connect()
            && crate::guard::not_allowed(e).is_none());
        let connection = match (broken, again) {
            (true, Some(mut retry)) => {
                tracing::debug!(url = %retry.uri(), "upstream connection broke before an answer: sending again");
                let left = first_byte.saturating_sub(started.elapsed());
                let c = capture_connection(&mut retry);
                sent = tokio::time::timeout(left, self.client.request(retry)).await;
                c
            }
            _ => connection,
        };
        match sent {
            Err(_) => Err(OriginError::Failed(SendError::Timeout)),
            Ok(Err(e)) => match crate::guard::not_allowed(&e) {
                Some(refused) => Err(OriginError::NotAllowed(refused.clone())),
                None => Err(OriginError::Failed(SendError::Connect {
                    kind: crate::failure::classify(&e),
                    why: describe(&e),
                })),
            },
            Ok(Ok(mut r)) => {
                // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a length
                // sent with it must not be passed on (hyper decodes by the encoding). Such a
                // message may be a smuggling attempt: the connection is not reused.
                let h = r.headers_mut();
                if h.contains_key(http::header::TRANSFER_ENCODING)
                    && h.remove(http::header::CONTENT_LENGTH).is_some()
                {
                    if let Some(conn) = connection.connection_metadata().as_ref() {
                        conn.poison();
                    }
                }
                Ok(r)
            }
        }
    }
}

/// Makes the framing fields say what is sent: the length of the body (which is always
/// complete here), none at all for an empty GET or HEAD, never a client's Transfer-Encoding.
/// A field that declared a body that is not sent would desynchronise a pooled connection.
fn frame_request(req: &mut Request<Body>) {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    use http_body::Body as _;
    let exact = req.body().size_hint().exact();
    let bodiless = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let h = req.headers_mut();
    h.remove(TRANSFER_ENCODING);
    match exact {
        Some(0) if bodiless => {
            h.remove(CONTENT_LENGTH);
        }
        Some(n) => {
            h.insert(CONTENT_LENGTH, n.into());
        }
        // Streamed: hyper frames it (chunked).
        None => {
            h.remove(CONTENT_LENGTH);
        }
    }
}

/// The innermost cause, for a one-line reason.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// A fetch's interim (1xx) heads, as engine inputs (the engine decides who gets them).
fn to_engine(driver: &Arc<Driver>, fetch: FetchId) -> crate::interim::OnInterim {
    let driver = Arc::downgrade(driver);
    Arc::new(move |head| {
        if let Some(d) = driver.upgrade() {
            d.input(Input::UpstreamInterim { fetch, head });
        }
    })
}

/// Runs one engine fetch: head, body chunks, end, or the error.
pub async fn fetch(driver: Arc<Driver>, fid: FetchId, parts: request::Parts) {
    let up = driver.upstream.clone();
    let mut req = Request::from_parts(parts, empty());
    crate::interim::watch(&mut req, to_engine(&driver, fid));
    let url = req.uri().to_string();
    let asked = std::time::Instant::now();
    let resp = match up.send_to_origin(req, up.first_byte).await {
        Ok(r) => {
            driver
                .metrics
                .origin_first_byte
                .observe(asked.elapsed().as_secs_f64());
            r
        }
        Err(e) => {
            let error = match e {
                OriginError::Failed(e) => {
                    let kind = e.kind();
                    tracing::warn!(%url, detail = kind.as_str(), "origin failed: {e}");
                    kind
                }
                OriginError::NotAllowed(why) => {
                    tracing::info!(%url, "refused: {why}");
                    UpstreamError::DestinationNotAllowed
                }
            };
            driver.input(Input::UpstreamError { fetch: fid, error });
            return;
        }
    };
    let bytes = driver.metrics.bytes_from_origin.clone();
    feed(&driver, fid, resp, up.idle, &bytes, "origin").await;
}

/// Runs one engine fetch from peers (`Output::FetchFromPeers`): the request goes to the
/// first of `peers` that answers, marked and signed like a forwarded one (the owner serves
/// it itself), and its response is fed to the engine exactly like an origin's. When every
/// peer failed (or is marked down) before its head: `UpstreamError::Connect`.
pub async fn fetch_from_peers(
    driver: Arc<Driver>,
    fid: FetchId,
    peers: Vec<String>,
    parts: request::Parts,
) {
    let Some(link) = driver.peers().cloned() else {
        tracing::warn!(
            fetch = fid.0,
            "a fetch from peers, but no peer link: failed"
        );
        driver.input(Input::UpstreamError {
            fetch: fid,
            error: UpstreamError::Connect,
        });
        return;
    };
    let metrics = driver.metrics.clone();
    let target = parts.uri.to_string();
    let got = link
        .forward_relaying(
            &peers,
            &parts.method,
            &target,
            &parts.headers,
            &None,
            |peer, why| {
                metrics.peer_errors.inc();
                tracing::warn!(fetch = fid.0, %peer, "peer failed: {why}; trying the next choice");
            },
            Some(to_engine(&driver, fid)),
        )
        .await;
    match got {
        Some(resp) => {
            let idle = link.upstream.idle;
            feed(&driver, fid, resp, idle, &metrics.bytes_from_peers, "peer").await;
        }
        None => driver.input(Input::UpstreamError {
            fetch: fid,
            error: UpstreamError::Connect,
        }),
    }
}

/// Feeds one upstream response (an origin's or a peer's) to the engine: its head, its body
/// as it arrives, paced by the fill's fastest client, then its end; a body that stalls for
/// `idle` is `Timeout`, one that breaks off is `Truncated`.
async fn feed(
    driver: &Arc<Driver>,
    fid: FetchId,
    resp: Response<Incoming>,
    idle: Duration,
    bytes: &Counter,
    from: &str,
) {
    let (mut head, mut body) = resp.into_parts();
    crate::reason::into_core(&mut head);
    driver.input(Input::UpstreamHead { fetch: fid, head });
    // A client this far behind is cut off: replaying a stored fill to a late follower may
    // queue up to the largest storable object, never more.
    let detach = driver.with_engine(|e| e.config().policy.max_object_size) as usize
        + crate::driver::BACKLOG_LIMIT;
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                driver.input(Input::UpstreamError {
                    fetch: fid,
                    error: UpstreamError::Timeout,
                });
                return;
            }
            Ok(None) => {
                driver.input(Input::UpstreamEnd { fetch: fid });
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(fetch = fid.0, "{from} body: {}", describe(&e));
                driver.input(Input::UpstreamError {
                    fetch: fid,
                    error: UpstreamError::Truncated,
                });
                return;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    if !chunk.is_empty() {
                        bytes.inc_by(chunk.len() as u64);
                        if !driver.input_body(fid, chunk) {
                            driver.pace(fid, idle, detach).await;
                        }
                    }
                }
            }
        }
    }
}
