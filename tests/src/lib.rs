//! Test fixtures: a real HTTP origin with knobs, peers started in-process on loopback, and
//! clients that speak to a proxy the way curl does (absolute-form over a plain socket).

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the origin sends for one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait before sending the head.
    pub delay: Duration,
    /// Send the body in pieces of this size, this far apart.
    pub throttle: Option<(usize, Duration)>,
    /// Declare the full length but close after this many body bytes.
    pub cut_after: Option<usize>,
    /// Answer Range requests with 206 (default) or ignore them.
    pub ranges: bool,
    /// Counts the body bytes actually handed to the connection (streamed replies).
    pub sent: Option<Arc<AtomicUsize>>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Self {
        Reply {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            delay: Duration::ZERO,
            throttle: None,
            cut_after: None,
            ranges: true,
            sent: None,
        }
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn throttle(mut self, chunk: usize, every: Duration) -> Self {
        self.throttle = Some((chunk, every));
        self
    }
    pub fn cut_after(mut self, n: usize) -> Self {
        self.cut_after = Some(n);
        self
    }
    pub fn count_sent(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.sent = Some(counter);
        self
    }
    pub fn ignore_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A real HTTP/1.1 origin on loopback that counts and records what it is asked.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(handler), None).await
    }

    /// The same origin over TLS with the given server config.
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(
            listener,
            Arc::new(handler),
            Some(tokio_rustls::TlsAcceptor::from(tls)),
        )
        .await
    }

    async fn serve(
        listener: TcpListener,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Origin {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (h2, l2) = (hits.clone(), log.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, hits, log, tls) =
                    (handler.clone(), h2.clone(), l2.clone(), tls.clone());
                let mut stopped = stopped.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, hits, log) = (handler.clone(), hits.clone(), log.clone());
                        async move { Ok::<_, Infallible>(respond(req, &*handler, &hits, &log).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                // `stop` kills kept-alive connections too, like a crashed server.
                tokio::spawn(async move {
                    let _ = stopped.changed().await;
                    conn.abort();
                });
            }
        });
        Origin {
            addr,
            hits,
            log,
            task,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests the origin has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Stops listening (connections refused from now on).
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn respond(
    req: Request<Incoming>,
    handler: &(dyn Fn(&Seen, usize) -> Reply + Send + Sync),
    hits: &AtomicUsize,
    log: &Mutex<Vec<Seen>>,
) -> Response<BoxBody<Bytes, BoxError>> {
    let seen = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    };
    let n = hits.fetch_add(1, Ordering::SeqCst);
    log.lock().unwrap().push(seen.clone());
    let reply = handler(&seen, n);
    tokio::time::sleep(reply.delay).await;
    let mut status = StatusCode::from_u16(reply.status).unwrap();
    let mut body = reply.body.clone();
    let mut b = Response::builder();
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("date"))
    {
        b = b.header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
    }
    let range = seen
        .headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .map(str::to_owned);
    if let (Some(r), true, StatusCode::OK) = (range, reply.ranges, status) {
        let total = body.len();
        if let Some((a, e)) = r.split_once('-') {
            let (a, e) = match (a.parse::<usize>(), e.parse::<usize>()) {
                (Ok(a), Ok(e)) => (a, e.min(total - 1)),
                (Ok(a), Err(_)) => (a, total - 1),
                (Err(_), Ok(n)) => (total.saturating_sub(n), total - 1),
                _ => (0, total - 1),
            };
            body = body.slice(a..=e);
            status = StatusCode::PARTIAL_CONTENT;
            b = b.header("content-range", format!("bytes {a}-{e}/{total}"));
        }
    }
    for (k, v) in &reply.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if status != StatusCode::NOT_MODIFIED && status != StatusCode::NO_CONTENT {
        b = b.header("content-length", body.len());
    }
    let is_head = seen.method == "HEAD";
    let body: BoxBody<Bytes, BoxError> = if is_head || status == StatusCode::NOT_MODIFIED {
        Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
    } else if reply.cut_after.is_some() || reply.throttle.is_some() || reply.sent.is_some() {
        let sent = reply.sent.clone();
        let (chunk, every) = reply.throttle.unwrap_or((16 * 1024, Duration::ZERO));
        let limit = reply.cut_after.unwrap_or(body.len()).min(body.len());
        let cut = reply.cut_after.is_some();
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
        tokio::spawn(async move {
            let mut off = 0;
            while off < limit {
                let end = (off + chunk).min(limit);
                if tx.send_data(body.slice(off..end)).await.is_err() {
                    return;
                }
                if let Some(c) = &sent {
                    c.fetch_add(end - off, Ordering::SeqCst);
                }
                off = end;
                if !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
            }
            if cut {
                tx.abort("origin cut the body".into());
            }
        });
        BoxBody::new(rx)
    } else {
        Full::new(body).map_err(|n| match n {}).boxed()
    };
    b.status(status).body(body).unwrap()
}

/// A response as a client received it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Sends one request to `server` as written (absolute-form when `target` is absolute), on a
/// fresh connection, and reads the whole response. Errors if the body is cut short.
pub async fn send(
    server: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Got, BoxError> {
    send_body(server, method, target, headers, Bytes::new()).await
}

pub async fn send_body(
    server: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Got, BoxError> {
    let stream = TcpStream::connect(server).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = target
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| server.to_string());
    let mut b = Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(b.body(Full::new(body))?),
    )
    .await??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await??
        .to_bytes();
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// `curl -x proxy url`.
pub async fn get(proxy: SocketAddr, url: &str) -> Got {
    send(proxy, "GET", url, &[])
        .await
        .expect("request through the proxy")
}

/// `--allow-destination` for the loopback origins tests run (the destination guard refuses
/// loopback by default).
pub fn loopback_destinations() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

/// A peer with settings adjusted by `f`, on an ephemeral loopback port. Loopback origins
/// are allowed (`--allow-destination 127.0.0.0/8,::1/128`) unless `f` clears the list.
pub async fn peer(f: impl FnOnce(&mut larder_peer::Args)) -> larder_peer::Running {
    let mut args = larder_peer::Args {
        allow_destination: loopback_destinations(),
        // The access log writes to the process's standard output, which the test harness
        // does not capture.
        log_format: Some("off".into()),
        ..Default::default()
    };
    f(&mut args);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut s = args.resolve().expect("valid settings");
    s.listen = listener.local_addr().unwrap();
    larder_peer::start_on(listener, s)
        .await
        .expect("peer starts")
}

/// `n` peers that know each other, listening before any is configured (loopback origins
/// allowed, as with [`peer`]).
pub async fn cluster(
    n: usize,
    f: impl Fn(&mut larder_peer::Args) + Clone,
) -> Vec<larder_peer::Running> {
    let listeners: Vec<TcpListener> = futures_join(n).await;
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let mut out = Vec::new();
    for (l, url) in listeners.into_iter().zip(&urls) {
        let mut args = larder_peer::Args {
            self_url: Some(url.clone()),
            peers: urls.clone(),
            allow_destination: loopback_destinations(),
            log_format: Some("off".into()),
            ..Default::default()
        };
        f(&mut args);
        let mut s = args.resolve().expect("valid settings");
        s.listen = l.local_addr().unwrap();
        out.push(larder_peer::start_on(l, s).await.expect("peer starts"));
    }
    out
}

async fn futures_join(n: usize) -> Vec<TcpListener> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    v
}

/// One request head as [`RawOrigin`] read it off the wire.
#[derive(Clone, Debug)]
pub struct RawSeen {
    /// The head exactly as received, request line to the empty line.
    pub raw: String,
    pub method: String,
    pub target: String,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<usize>,
}

impl RawSeen {
    /// The value of the first field called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A keep-alive HTTP/1.1 origin on a raw socket, for misbehaviour hyper will not produce.
/// Each head read gets `answer(head)` written back verbatim; then, as nginx, Go and Node do,
/// the body the request *declared* with `Content-Length` is read and discarded, whatever
/// bytes arrive (so a declared body that is never sent swallows the next request).
pub struct RawOrigin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawSeen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(answer: impl Fn(&RawSeen) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let log = seen.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (answer, log) = (answer.clone(), log.clone());
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let raw = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let mut line = raw.split("\r\n").next().unwrap_or("").split(' ');
                        let mut seen = RawSeen {
                            method: line.next().unwrap_or("").to_owned(),
                            target: line.next().unwrap_or("").to_owned(),
                            raw,
                            content_length: None,
                        };
                        seen.content_length =
                            seen.header("content-length").and_then(|v| v.parse().ok());
                        log.lock().unwrap().push(seen.clone());
                        let reply = answer(&seen);
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                        let mut skip = seen.content_length.unwrap_or(0);
                        while skip > 0 {
                            if buf.is_empty() {
                                let mut chunk = [0u8; 4096];
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let n = skip.min(buf.len());
                            buf.drain(..n);
                            skip -= n;
                        }
                    }
                });
            }
        });
        RawOrigin {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far, in order.
    pub fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with `body`, a Content-Length and the given extra header lines.
pub fn raw_response(status: &str, extra: &[&str], body: &str) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    r.into_bytes()
}

/// Writes `request` on a fresh connection to `server` and reads until the server closes the
/// connection or `wait` passes; returns what came back (possibly several responses).
pub async fn raw_exchange(server: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A test CA and a server certificate it issued for `localhost`.
pub struct Pki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Pki {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Larder test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}
