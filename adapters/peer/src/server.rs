//! The HTTP/1.1 server: accepts connections, applies the doors and the access rules, hands
//! cacheable work to the engine and relays what it says.

use crate::body::{ClientBody, LogLine};
use crate::config::Settings;
use crate::driver::{Begin, ClientEvent, Driver};
use crate::guard::Guard;
use crate::interim::Interim;
use crate::metrics::Metrics;
use crate::peers::{Health, PeerLink};
use crate::upstream::{Body, BoxError, OriginError, Upstream};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use larder_core::door::{self, Door, Refused};
use larder_core::{ClientId, Outcome, ResponseBody, Route};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

/// The methods this proxy handles (its `Allow`).
const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, PURGE";

/// Longest request target accepted (414 beyond).
pub const MAX_URL: usize = 8 * 1024;
/// Largest request head (start line and fields) accepted (431 beyond).
pub const MAX_HEAD: usize = 32 * 1024;
/// Largest request body buffered for unsafe methods (413 beyond).
pub const MAX_REQUEST_BODY: usize = 16 << 20;
/// `Cache-Status` detail of a destination the guard refused.
const DESTINATION_NOT_ALLOWED: &str = "destination-not-allowed";
/// Largest body read (and dropped) on a GET or HEAD (413 beyond).
pub const MAX_GET_BODY: usize = 64 * 1024;
/// How long a declared GET/HEAD body may take to arrive (408 beyond).
pub const GET_BODY_WAIT: Duration = Duration::from_secs(10);

/// Peer nonces remembered at most (about 32 MiB): far above any real peer rate times the
/// signature window; past it the window shrinks instead of admitting replays.
const REPLAY_CAPACITY: usize = 1 << 20;

pub struct State {
    pub settings: Settings,
    pub driver: Arc<Driver>,
    pub metrics: Arc<Metrics>,
    /// Peer traffic (its client, health, hop id and secret): shared with the driver, which
    /// fetches from peers for the engine.
    pub peer_link: Arc<PeerLink>,
    /// Where origin connections (and CONNECT tunnels) may go.
    pub guard: Arc<Guard>,
    pub id: String,
    /// `Via: 1.1 <received_by>`, made once.
    pub via: HeaderValue,
    /// This peer in `Via` (host:port), which also tells a request that looped.
    pub received_by: String,
    /// Peer signatures seen within their window: each is admitted once.
    pub replay: std::sync::Mutex<larder_core::hop::ReplayGuard>,
    /// What a live reload can change.
    live: std::sync::RwLock<Arc<Live>>,
    /// The reload `POST /-/reload` runs.
    reloader: std::sync::OnceLock<Box<dyn Fn() -> Result<String, String> + Send + Sync>>,
    /// This peer's etcd lease (endpoint, id), to give up at shutdown.
    lease: std::sync::Mutex<Option<(http::Uri, String)>>,
}

/// The settings a live reload (SIGHUP) replaces while connections and the cache stay:
/// who may use the proxy, the mirrors, tunnels and interception, the access log, the peers.
/// (Freshness rules, passthrough and the destination guard are replaced in the engine and
/// the guard themselves.)
pub struct Live {
    pub allow: Vec<ipnet::IpNet>,
    pub purge_allow: Vec<ipnet::IpNet>,
    pub mirrors: Vec<larder_core::door::Mirror>,
    pub connect_ports: Vec<u16>,
    pub connect_allow: Vec<String>,
    pub intercept: crate::intercept::Targets,
    /// The CA for intercepted tunnels (when any are to be intercepted).
    pub ca: Option<Arc<crate::intercept::Authority>>,
    pub log_format: crate::access::Format,
    pub peers: Vec<String>,
}

impl Live {
    fn copy(l: &Live) -> Live {
        Live {
            allow: l.allow.clone(),
            purge_allow: l.purge_allow.clone(),
            mirrors: l.mirrors.clone(),
            connect_ports: l.connect_ports.clone(),
            connect_allow: l.connect_allow.clone(),
            intercept: l.intercept.clone(),
            ca: l.ca.clone(),
            log_format: l.log_format,
            peers: l.peers.clone(),
        }
    }

    fn of(s: &Settings, ca: Option<Arc<crate::intercept::Authority>>) -> Live {
        Live {
            allow: s.allow.clone(),
            purge_allow: s.purge_allow.clone(),
            mirrors: s.mirrors.clone(),
            connect_ports: s.connect_ports.clone(),
            connect_allow: s.connect_allow.clone(),
            intercept: s.intercept.clone(),
            ca,
            log_format: s.log_format,
            peers: s.peers.clone(),
        }
    }
}

impl State {
    /// The settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new member list (from etcd): the engine's ring and this peer's view change together.
    pub fn set_peers(&self, peers: Vec<String>) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.peers == peers {
            return;
        }
        tracing::info!(
            peers = peers.len(),
            "membership changed: {}",
            peers.join(", ")
        );
        self.metrics.membership_changes.inc();
        self.metrics.members.set(peers.len() as i64);
        self.metrics.peers_up.set(peers.len() as i64);
        self.driver.input(larder_core::Input::PeersChanged {
            peers: peers.clone(),
        });
        let mut next = Live::copy(&live);
        next.peers = peers;
        *live = Arc::new(next);
    }

    pub(crate) fn set_lease(&self, lease: Option<(http::Uri, String)>) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }

    pub(crate) fn lease(&self) -> Option<(http::Uri, String)> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The origins the guard lets through besides public addresses: `--allow-destination`,
/// and the mirrors (the operator's own upstreams, reachable wherever they are).
fn destinations(settings: &Settings) -> crate::guard::Destinations {
    let trusted = settings
        .mirrors
        .iter()
        .filter_map(|m| {
            let port = larder_core::key::port_or_default(m.base()).ok()?;
            Some((m.base().host()?.to_owned(), port))
        })
        .collect();
    crate::guard::Destinations {
        allow: settings.allow_destination.clone(),
        trusted,
    }
}

/// The interception CA when `settings` intercept anything (`current` when already loaded).
fn interception_ca(
    settings: &Settings,
    current: Option<Arc<crate::intercept::Authority>>,
) -> Result<Option<Arc<crate::intercept::Authority>>, String> {
    if !settings.intercept.any() {
        return Ok(current);
    }
    if current.is_some() {
        return Ok(current);
    }
    let ca = crate::intercept::Authority::load_or_create(&settings.data_dir)
        .map_err(|e| format!("interception CA in {}: {e}", settings.data_dir.display()))?;
    Ok(Some(Arc::new(ca)))
}

/// A running peer.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A live reload: applies `new` (resolved from the same flags and the re-read config
    /// file) without dropping the cache or open connections. Returns the settings that only
    /// a restart changes, if any differ; refuses (changing nothing) a configuration it
    /// cannot run.
    pub fn reload(&self, new: &Settings) -> Result<Vec<&'static str>, String> {
        self.state.reload(new)
    }

    /// Installs what `POST /-/reload` runs (the binary's reload: flags resolved again,
    /// the config file re-read); without one, the endpoint is 404.
    pub fn on_reload(&self, f: impl Fn() -> Result<String, String> + Send + Sync + 'static) {
        let _ = self.state.reloader.set(Box::new(f));
    }
}

impl State {
    /// See [`Running::reload`].
    pub fn reload(&self, new: &Settings) -> Result<Vec<&'static str>, String> {
        let old = self.live();
        let ca = interception_ca(new, old.ca.clone())?;
        self.driver
            .reconfigure(new.engine.policy.clone(), new.engine.passthrough.clone())?;
        self.guard.set(destinations(new));
        if new.peers != old.peers {
            self.driver.input(larder_core::Input::PeersChanged {
                peers: new.peers.clone(),
            });
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live::of(new, ca));
        let s = &self.settings;
        let fixed = [
            ("listen", s.listen != new.listen),
            ("self", s.self_url != new.self_url),
            ("peer-secret", s.peer_secret != new.peer_secret),
            ("memory", s.engine.memory != new.engine.memory),
            ("hot-memory", s.engine.hot_memory != new.engine.hot_memory),
            ("disk-dir", s.disk_dir != new.disk_dir),
            ("disk-size", s.engine.disk != new.engine.disk),
            (
                "segment-size",
                s.engine.segment_size != new.engine.segment_size,
            ),
            ("ring", s.engine.ring != new.engine.ring),
            ("ca-file", s.ca_files != new.ca_files),
            ("data-dir", s.data_dir != new.data_dir),
            ("connect-timeout", s.connect_timeout != new.connect_timeout),
            (
                "first-byte-timeout",
                s.first_byte_timeout != new.first_byte_timeout,
            ),
            ("idle-timeout", s.idle_timeout != new.idle_timeout),
            ("proxy-path", s.proxy_path != new.proxy_path),
        ];
        Ok(fixed
            .into_iter()
            .filter_map(|(name, changed)| changed.then_some(name))
            .collect())
    }
}

impl Running {
    /// Stops accepting, lets in-flight responses finish (up to `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), self.task).await;
    }
}

/// Binds and starts serving; returns once the socket listens.
pub async fn start(settings: Settings) -> Result<Running, String> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    start_on(listener, settings).await
}

pub async fn start_on(listener: TcpListener, settings: Settings) -> Result<Running, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = crate::tls::client_config(&settings.ca_files)?;
    let id = settings
        .self_url
        .clone()
        .unwrap_or_else(|| format!("larder@{addr}"));
    // RFC 9110 §7.6.3: `Via`'s received-by is host:port (a URL or `larder@...` is not one):
    // this peer's authority as the others know it, else the address it listens on.
    let received_by = settings
        .self_url
        .as_deref()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| addr.to_string());
    let guard = Arc::new(Guard::new(destinations(&settings)));
    let upstream = Upstream::with_guard(
        tls.clone(),
        settings.connect_timeout,
        settings.first_byte_timeout,
        settings.idle_timeout,
        &received_by,
        Some(guard.clone()),
    );
    let peer_upstream = Upstream::new(
        tls,
        settings.connect_timeout,
        settings.first_byte_timeout,
        settings.idle_timeout,
        &received_by,
    );
    let intercept = interception_ca(&settings, None)?;
    let metrics = Arc::new(Metrics::new());
    let engine = larder_core::Engine::new(settings.engine.clone()).map_err(|e| e.to_string())?;
    let disk = match &settings.disk_dir {
        Some(dir) => Some(Arc::new(
            crate::disk::Disk::open(dir)
                .map_err(|e| format!("--disk-dir {}: {e}", dir.display()))?,
        )),
        None => None,
    };
    let driver = Driver::new(engine, upstream, metrics.clone());
    if let Some(disk) = disk {
        driver.attach_disk(disk);
    }
    let peer_link = Arc::new(PeerLink {
        upstream: peer_upstream,
        health: Health::default(),
        self_id: id.clone(),
        secret: settings.peer_secret.clone(),
        timeout: settings.peer_timeout,
        proxy_path: settings.proxy_path.clone(),
    });
    driver.attach_peers(peer_link.clone());
    metrics.peers_up.set(settings.peers.len() as i64);
    metrics.members.set(settings.peers.len() as i64);
    let settings_copy = settings.clone();
    let state = Arc::new(State {
        settings,
        driver: driver.clone(),
        metrics,
        peer_link,
        guard,
        via: HeaderValue::from_str(&format!("1.1 {received_by}"))
            .unwrap_or(HeaderValue::from_static("1.1 larder")),
        received_by,
        id,
        replay: std::sync::Mutex::new(larder_core::hop::ReplayGuard::new(REPLAY_CAPACITY)),
        live: std::sync::RwLock::new(Arc::new(Live::of(&settings_copy, intercept))),
        lease: std::sync::Mutex::new(None),
        reloader: std::sync::OnceLock::new(),
    });
    let membership = settings_copy.etcd.clone().map(|etcd| {
        let me = settings_copy.self_url.clone().expect("--etcd needs --self");
        tokio::spawn(crate::membership::run(state.clone(), etcd, me))
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let timers = tokio::spawn(driver.run_timers());
    let prober = tokio::spawn(probe_down_peers(state.clone()));
    let st = state.clone();
    let task = tokio::spawn(async move {
        accept_loop(listener, st.clone(), rx).await;
        timers.abort();
        prober.abort();
        if let Some(m) = membership {
            m.abort();
            crate::membership::leave(&st).await;
        }
    });
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Each connection holds a clone; shutdown waits for them to drop.
    let live = Arc::new(());
    let clock = crate::read_clock::ActiveClock::new();
    let ticking = tokio::spawn(clock.clone().run());
    let timer = crate::read_clock::ActiveTimer(clock);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let (stream, interim) = crate::interim::InterimIo::new(stream);
                let svc = service_fn(move |req| {
                    handle(st.clone(), remote, req, interim.clone(), None)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(timer.clone())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(64 * 1024)
                    .max_header_size(MAX_HEAD)
                    // At most 100 header fields (431 beyond): hyper's default, left implicit
                    // because setting it moves header parsing from the stack to the heap.
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                let mut stop = stop.clone();
                let token = live.clone();
                tokio::spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let res = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.changed() => {
                            // Finish the response in flight, then close (keep-alive ends).
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = res {
                        tracing::debug!(%remote, "connection: {e}");
                    }
                    drop(token);
                });
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&live) > 1 {
        if Instant::now() > deadline {
            tracing::warn!("some connections were still busy after 30 s; closing them");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ticking.abort();
}

/// Probes peers marked down so they come back before their back-off runs out.
async fn probe_down_peers(state: Arc<State>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let link = &state.peer_link;
        let down = link.health.down_now();
        state.metrics.peers_down.set(down.len() as i64);
        state
            .metrics
            .peers_up
            .set((state.live().peers.len().saturating_sub(down.len())) as i64);
        for peer in down {
            let req = Request::get(format!("{peer}/healthz"))
                .body(crate::upstream::empty())
                .expect("valid");
            if let Ok(r) = link.upstream.send(req, Duration::from_secs(1)).await {
                if r.status().is_success() {
                    link.health.ok(&peer);
                }
            }
        }
    }
}

fn text(code: StatusCode, msg: &str) -> Response<ClientBody> {
    let body = Bytes::from(format!("{msg}\n"));
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(ClientBody::full(body))
        .expect("valid response")
}

/// Releases the engine's client if the request is dropped before a body took it over.
struct Pending(Option<(Arc<Driver>, ClientId)>);

impl Pending {
    fn take(&mut self) -> (Arc<Driver>, ClientId) {
        self.0.take().expect("taken once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((d, id)) = self.0.take() {
            d.release(id);
        }
    }
}

pub(crate) fn allowed(live: &Live, remote: &SocketAddr) -> bool {
    let ip = crate::guard::canonical(remote.ip());
    if live.allow.is_empty() {
        ip.is_loopback()
    } else {
        live.allow.iter().any(|n| n.contains(&ip))
    }
}

fn purge_allowed(live: &Live, remote: &SocketAddr) -> bool {
    let ip = crate::guard::canonical(remote.ip());
    if live.purge_allow.is_empty() {
        ip.is_loopback()
    } else {
        live.purge_allow.iter().any(|n| n.contains(&ip))
    }
}

/// Serves the HTTP/1.1 requests inside a CONNECT tunnel (decrypted, or plain) as requests
/// for `base` (`https://host[:port]` or `http://host[:port]`), through the same handler.
///
/// Boxed: a tunnel's requests may open tunnels (refused, but the handler is the same), and
/// only a named `Send` future breaks that cycle for the compiler.
pub(crate) fn serve_tunnel<I>(
    state: Arc<State>,
    remote: SocketAddr,
    io: I,
    base: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let base: Arc<str> = base.into();
        let (io, interim) = crate::interim::InterimIo::new(io);
        let svc = service_fn(move |req| {
            handle(
                state.clone(),
                remote,
                req,
                interim.clone(),
                Some(base.clone()),
            )
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(64 * 1024)
            .max_header_size(MAX_HEAD)
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = conn.await {
            tracing::debug!(%remote, "tunnel connection: {e}");
        }
    })
}

/// A request read inside a tunnel to `base`, made absolute-form for it. Its target and
/// `Host` must name the tunnel's host (421 otherwise: it would fill another host's entries).
fn in_tunnel(parts: &mut http::request::Parts, base: &str) -> Result<(), Refused> {
    let misdirected = |what: &str| {
        Refused(
            StatusCode::MISDIRECTED_REQUEST,
            format!("{what} does not match the tunnel's target {base}"),
        )
    };
    let expected: http::Uri = base.parse().map_err(|_| misdirected("the target"))?;
    let authority = expected.authority().expect("built with one");
    let same = |a: &str| {
        let default = if base.starts_with("https:") {
            ":443"
        } else {
            ":80"
        };
        let a = a.strip_suffix(default).unwrap_or(a);
        a.eq_ignore_ascii_case(authority.as_str())
    };
    if let Some(a) = parts.uri.authority() {
        if !same(a.as_str()) || parts.uri.scheme() != expected.scheme() {
            return Err(misdirected("the request target"));
        }
    }
    if let Some(host) = parts.headers.get(header::HOST) {
        if !host.to_str().is_ok_and(same) {
            return Err(misdirected("Host"));
        }
    }
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{base}{pq}")
        .parse()
        .map_err(|_| Refused(StatusCode::BAD_REQUEST, "bad request target".into()))?;
    Ok(())
}

async fn handle(
    state: Arc<State>,
    remote: SocketAddr,
    req: Request<Incoming>,
    interim: Interim,
    tunnel: Option<Arc<str>>,
) -> Result<Response<ClientBody>, Infallible> {
    let start = Instant::now();
    // One look at the settings per request: a reload applies from the next.
    let live = state.live();
    let format = live.log_format;
    // What the log line needs, kept as shared bytes (clones of the request's own).
    let asked = (format != crate::access::Format::Off).then(|| {
        let field = |n: header::HeaderName| req.headers().get(n).cloned();
        (
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            field(header::REFERER),
            field(header::USER_AGENT),
            std::time::SystemTime::now(),
        )
    });
    let mut resp = match route(&state, &live, remote, req, &interim, tunnel.as_deref()).await {
        Ok(r) => r,
        Err((Refused(code, msg), method, url)) => {
            tracing::info!(%method, %url, status = code.as_u16(), reason = %msg, "refused");
            state.metrics.count(Outcome::Error, false);
            let mut r = text(code, &msg);
            r.extensions_mut().insert(Outcome::Error);
            if code == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110 §15.5.6: a 405 says what is allowed.
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
            }
            r
        }
    };
    resp.headers_mut().append(header::VIA, state.via.clone());
    if let Some(outcome) = resp.extensions().get::<Outcome>().copied() {
        state
            .metrics
            .responded(resp.status().as_u16(), outcome, start.elapsed());
        let metrics = state.metrics.clone();
        resp = resp.map(|b| b.timed(metrics, outcome, start));
    }
    if let Some((method, url, version, referer, user_agent, time)) = asked {
        let status = resp.status();
        // A tunnel is logged when it closes, with its bytes (crate::connect).
        if method == Method::CONNECT && status == StatusCode::OK {
            return Ok(resp);
        }
        let line = LogLine {
            format,
            client: remote,
            bodiless: method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED,
            method,
            url,
            base: tunnel,
            version,
            status: status.as_u16(),
            cache: resp.headers().get("cache-status").cloned(),
            length: larder_core::policy::content_length(resp.headers()),
            start,
            time,
            referer,
            user_agent,
        };
        resp = resp.map(|b| b.logged(line));
    }
    Ok(resp)
}

type RouteError = (Refused, Method, String);

/// Fields only a peer may send (removed from clients' requests). Names, not strings: a
/// removal by string parses the name again on every request.
const PEER_ONLY: [header::HeaderName; 2] = [
    header::HeaderName::from_static(larder_core::hop::PURGE_SCOPE),
    header::HeaderName::from_static(larder_core::hop::SEGMENT),
];
/// Fields for this hop only: the peer marker and signature, proxy credentials.
const NOT_PASSED_ON: [header::HeaderName; 4] = [
    header::HeaderName::from_static(larder_core::hop::HOP),
    header::HeaderName::from_static(larder_core::hop::AUTH),
    header::PROXY_AUTHORIZATION,
    header::HeaderName::from_static("proxy-connection"),
];

async fn route(
    state: &Arc<State>,
    live: &Live,
    remote: SocketAddr,
    req: Request<Incoming>,
    interim: &Interim,
    tunnel: Option<&str>,
) -> Result<Response<ClientBody>, RouteError> {
    let refuse =
        |r: Refused, req: &http::request::Parts| (r, req.method.clone(), req.uri.to_string());
    let (mut parts, body) = req.into_parts();
    let target_len = parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URL {
        return Err(refuse(
            Refused(
                StatusCode::URI_TOO_LONG,
                format!("request target longer than {MAX_URL} bytes"),
            ),
            &parts,
        ));
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (none needed in 1.0), never two.
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && parts.version >= http::Version::HTTP_11) {
        let why = format!("{hosts} Host fields: HTTP/1.1 requests need exactly one");
        return Err(refuse(Refused(StatusCode::BAD_REQUEST, why), &parts));
    }
    if let Some(base) = tunnel {
        if parts.method != Method::CONNECT {
            in_tunnel(&mut parts, base).map_err(|r| refuse(r, &parts))?;
        }
    }
    if parts.method == Method::CONNECT {
        let req = Request::from_parts(parts, body);
        let (m, u) = (req.method().clone(), req.uri().to_string());
        if tunnel.is_some() {
            let why = "CONNECT inside a tunnel".to_owned();
            return Err((Refused(StatusCode::METHOD_NOT_ALLOWED, why), m, u));
        }
        return crate::connect::connect(state, remote, req)
            .await
            .map_err(|r| (r, m, u));
    }
    if parts.uri.scheme().is_none() {
        match parts.uri.path() {
            // Asterisk-form asks about this server, never about an upstream.
            "*" if parts.method == Method::OPTIONS => {
                let mut r = text(StatusCode::OK, "ok");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
                return Ok(r);
            }
            "*" => {
                let why = "asterisk-form (*) is for OPTIONS only".to_owned();
                return Err(refuse(Refused(StatusCode::BAD_REQUEST, why), &parts));
            }
            "/healthz" => return Ok(text(StatusCode::OK, "ok")),
            // A live reload, as SIGHUP does, for the addresses that may purge.
            "/-/reload" if parts.method == Method::POST => {
                if !purge_allowed(live, &remote) {
                    let why = format!(
                        "reload from {} is not allowed (see --purge-allow)",
                        remote.ip()
                    );
                    return Err(refuse(Refused(StatusCode::FORBIDDEN, why), &parts));
                }
                return Ok(match state.reloader.get() {
                    None => text(StatusCode::NOT_FOUND, "no reload in this process"),
                    Some(reload) => match reload() {
                        Ok(said) => text(StatusCode::OK, &said),
                        Err(why) => text(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &format!("reload refused, the running configuration stays: {why}"),
                        ),
                    },
                });
            }
            "/metrics" => {
                let body = Bytes::from(state.metrics.render());
                return Ok(Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(ClientBody::full(body))
                    .expect("valid"));
            }
            _ => {}
        }
    }
    if state.settings.self_url.is_some() {
        let me = &state.received_by;
        // `1.1 host:port (comment)`: the second word of any element names a hop.
        let looped = parts
            .headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|h| h.split_whitespace().nth(1) == Some(me.as_str()));
        if looped {
            return Err(refuse(
                Refused(
                    StatusCode::LOOP_DETECTED,
                    format!("request already passed through {me}"),
                ),
                &parts,
            ));
        }
    }
    let (target, door) = door::resolve_in(&parts, &live.mirrors, &state.settings.proxy_path)
        .map_err(|r| refuse(r, &parts))?;
    let from_peer = parts.headers.contains_key(larder_core::hop::HOP);
    if from_peer {
        match &state.settings.peer_secret {
            Some(secret) => {
                let now = SystemTime::now();
                let sender = parts
                    .headers
                    .get(larder_core::hop::HOP)
                    .map_or(&b""[..], |v| v.as_bytes());
                let ok = larder_core::hop::verify(
                    secret,
                    &parts.method,
                    &target.to_string(),
                    &parts.headers,
                    now,
                )
                .and_then(|signed| {
                    state
                        .replay
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .admit(sender, signed, now)
                });
                ok.map_err(|why| {
                    refuse(Refused(StatusCode::UNAUTHORIZED, why.to_string()), &parts)
                })?
            }
            None if !remote.ip().is_loopback() => {
                let why = "peer traffic without --peer-secret is accepted from loopback only";
                return Err(refuse(
                    Refused(StatusCode::UNAUTHORIZED, why.into()),
                    &parts,
                ));
            }
            None => {}
        }
    }
    // A hop marker never widens access: only a verified signature stands in for --allow.
    let verified_peer = from_peer && state.settings.peer_secret.is_some();
    if !verified_peer && door != Door::Mirror && !allowed(live, &remote) {
        let why = format!(
            "{} may not use this proxy (not an open proxy: see --allow)",
            remote.ip()
        );
        return Err(refuse(Refused(StatusCode::FORBIDDEN, why), &parts));
    }
    if parts.method.as_str() == larder_core::engine::PURGE {
        // Cache administration: from --purge-allow, or a peer fanning a purge out.
        if !from_peer && !purge_allowed(live, &remote) {
            let why = format!(
                "PURGE from {} is not allowed (see --purge-allow)",
                remote.ip()
            );
            return Err(refuse(Refused(StatusCode::FORBIDDEN, why), &parts));
        }
    }
    if !from_peer {
        // Only a peer may limit a purge to one node, or ask for a segment by version.
        for h in &PEER_ONLY {
            parts.headers.remove(h);
        }
    }
    for h in &NOT_PASSED_ON {
        parts.headers.remove(h);
    }
    parts.uri = target;
    // Bodies of unsafe requests are read once so fail-over and pass-through can resend them.
    let body = if parts.method == Method::GET || parts.method == Method::HEAD {
        // A body on GET/HEAD means nothing (RFC 9110 §9.3.1): read a small one and drop it,
        // refuse a large one, and never send its framing upstream, where a declared body
        // that is not sent would swallow the next request on a pooled connection.
        if drop_get_body(&parts, body)
            .await
            .map_err(|r| refuse(r, &parts))?
        {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
        }
        None
    } else {
        let why = format!("request body over {MAX_REQUEST_BODY} bytes");
        Some(
            read_body(body, MAX_REQUEST_BODY, why)
                .await
                .map_err(|r| refuse(r, &parts))?,
        )
    };
    // Kept for errors and logs only: a Uri clone shares its bytes, a String would copy them.
    let (method, url) = (parts.method.clone(), parts.uri.clone());
    let version = parts.version;
    let route = if from_peer {
        Route::Local
    } else {
        Route::ByRing
    };
    let (id, mut rx, mut next) = match state.driver.begin(parts, route) {
        Begin::Answered {
            head,
            body,
            outcome,
            collapsed,
        } => return Ok(respond(state, head, body, (outcome, collapsed), None)),
        Begin::Pending { id, rx, first } => (id, rx, first),
    };
    let mut pending = Pending(Some((state.driver.clone(), id)));
    loop {
        let ev = match next.take() {
            Some(ev) => ev,
            None => match rx.recv().await {
                Some(ev) => ev,
                None => {
                    return Err((
                        Refused(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "engine dropped the request".into(),
                        ),
                        method,
                        url.to_string(),
                    ));
                }
            },
        };
        match ev {
            ClientEvent::Respond {
                head,
                body: ResponseBody::Stream,
                outcome,
                collapsed,
            } => {
                let guard = pending.take();
                return Ok(respond(
                    state,
                    head,
                    ResponseBody::Stream,
                    (outcome, collapsed),
                    Some((rx, guard)),
                ));
            }
            ClientEvent::Respond {
                head,
                body,
                outcome,
                collapsed,
            } => {
                // Complete responses leave the engine's books at once: nothing to release.
                pending.0 = None;
                return Ok(respond(state, head, body, (outcome, collapsed), None));
            }
            ClientEvent::Interim(head) => {
                interim.send(&head);
            }
            ClientEvent::Forward { peers, head } => {
                state.metrics.peer_forwards.inc();
                let metrics = &state.metrics;
                let target = head.uri.to_string();
                let got = state
                    .peer_link
                    .forward_relaying(
                        &peers,
                        &head.method,
                        &target,
                        &head.headers,
                        &body,
                        |peer, why| {
                            metrics.peer_errors.inc();
                            tracing::warn!(%peer, "peer failed: {why}; trying the next choice");
                        },
                        Some(interim.relay(version)),
                    )
                    .await;
                match got {
                    Some(resp) => {
                        // The owner counted how it served this; its Cache-Status says how.
                        let owner = Outcome::from_headers(resp.status(), resp.headers());
                        state.metrics.count_forwarded(owner);
                        // A GET of a representation that can be continued survives the owner
                        // dying mid-body (the rest comes from the next choice).
                        let (parts, body) = resp.into_parts();
                        let body: Body = body.map_err(|e| Box::new(e) as BoxError).boxed();
                        let resumable = (head.method == Method::GET)
                            .then(|| larder_core::resume::Resumable::of(&parts))
                            .flatten();
                        let body = match resumable {
                            Some(r) => {
                                crate::resume::relay_resuming(state.clone(), body, head, peers, r)
                            }
                            None => body,
                        };
                        let mut r = relay(
                            Response::from_parts(parts, body),
                            None,
                            state.settings.idle_timeout,
                        );
                        r.extensions_mut().insert(owner);
                        return Ok(r);
                    }
                    // Every better peer failed: serve it here (the engine still coalesces).
                    None => state.driver.retry_local(id, head),
                }
            }
            ClientEvent::Pass {
                mut status,
                mut head,
            } => {
                larder_core::policy::strip_hop_by_hop(&mut head.headers);
                head.headers.remove(header::HOST);
                let b: Body = match &body {
                    Some(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
                    None => crate::upstream::empty(),
                };
                let up = &state.driver.upstream;
                let mut req = Request::from_parts(head, b);
                crate::interim::watch(&mut req, interim.relay(version));
                let asked = Instant::now();
                let sent = up.send_to_origin(req, up.first_byte).await;
                if sent.is_ok() {
                    state
                        .metrics
                        .origin_first_byte
                        .observe(asked.elapsed().as_secs_f64());
                }
                return match sent {
                    Ok(resp) => {
                        // Unsafe methods invalidate once the answer is known to be a success.
                        let mut head = http::Response::new(()).into_parts().0;
                        head.status = resp.status();
                        head.headers = resp.headers().clone();
                        state
                            .driver
                            .input(larder_core::Input::PassResponse { client: id, head });
                        // RFC 9211 fwd-status: what upstream answered (and how this counts).
                        status.fwd_status = Some(resp.status().as_u16());
                        let outcome = status.outcome(resp.status());
                        state.metrics.count(outcome, false);
                        let mut r = relay(
                            resp,
                            Some(status.to_header_value()),
                            state.settings.idle_timeout,
                        );
                        r.extensions_mut().insert(outcome);
                        Ok(r)
                    }
                    Err(OriginError::NotAllowed(why)) => {
                        tracing::info!(%method, %url, "refused: {why}");
                        let status = status.with_detail(DESTINATION_NOT_ALLOWED);
                        let outcome = status.outcome(StatusCode::FORBIDDEN);
                        state.metrics.count(outcome, false);
                        let mut r = text(StatusCode::FORBIDDEN, &why.to_string());
                        r.headers_mut()
                            .insert("cache-status", status.to_header_value());
                        r.extensions_mut().insert(outcome);
                        Ok(r)
                    }
                    Err(OriginError::Failed(e)) => {
                        let kind = e.kind();
                        let code = kind.status();
                        tracing::warn!(%method, %url, detail = kind.as_str(), "origin failed: {e}");
                        let outcome = status.outcome(code);
                        state.metrics.count(outcome, false);
                        let status = status.with_detail(kind.as_str());
                        let mut r = text(code, &format!("{} ({e})", kind.explain()));
                        r.headers_mut()
                            .insert("cache-status", status.to_header_value());
                        r.extensions_mut().insert(outcome);
                        Ok(r)
                    }
                };
            }
            ClientEvent::Body(_)
            | ClientEvent::Cached(_)
            | ClientEvent::End
            | ClientEvent::Abort => {}
        }
    }
}

/// Reads a request body of at most `limit` bytes (413 with `too_large` beyond it).
async fn read_body(body: Incoming, limit: usize, too_large: String) -> Result<Bytes, Refused> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refused(StatusCode::PAYLOAD_TOO_LARGE, too_large))
        }
        Err(e) => Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("cannot read request body: {e}"),
        )),
    }
}

/// Reads and discards the body of a GET or HEAD (refused when over [`MAX_GET_BODY`], or
/// when it does not arrive within [`GET_BODY_WAIT`]); true when one was declared, so its
/// framing fields must go.
async fn drop_get_body(parts: &http::request::Parts, body: Incoming) -> Result<bool, Refused> {
    use http_body::Body as _;
    if body.is_end_stream() {
        // No body declared, or `Content-Length: 0` (framing of nothing, harmless upstream).
        return Ok(false);
    }
    let too_large = format!(
        "a {} body is ignored, and this one is over {MAX_GET_BODY} bytes",
        parts.method
    );
    if body.size_hint().lower() > MAX_GET_BODY as u64 {
        return Err(Refused(StatusCode::PAYLOAD_TOO_LARGE, too_large));
    }
    match tokio::time::timeout(GET_BODY_WAIT, read_body(body, MAX_GET_BODY, too_large)).await {
        Ok(read) => read.map(|_| true),
        Err(_) => Err(Refused(
            StatusCode::REQUEST_TIMEOUT,
            "the declared request body did not arrive".into(),
        )),
    }
}

/// A streaming response's event channel and the client to release when it ends.
type Streaming = (crate::driver::Events, (Arc<Driver>, ClientId));

/// A response the engine made (from cache, or streaming a fill), counted by its outcome
/// (and whether it was collapsed onto another request's fetch).
fn respond(
    state: &State,
    mut head: http::response::Parts,
    body: ResponseBody,
    (outcome, collapsed): (Outcome, bool),
    stream: Option<Streaming>,
) -> Response<ClientBody> {
    // The upstream's protocol version is hop-by-hop; hyper speaks for us.
    head.version = http::Version::HTTP_11;
    state.metrics.count(outcome, collapsed);
    let b = match (body, stream) {
        (ResponseBody::Empty, _) => ClientBody::empty(),
        (ResponseBody::Full(b), _) => {
            if outcome.from_store() {
                state.metrics.bytes_from_cache.inc_by(b.len() as u64);
            }
            ClientBody::full(b)
        }
        (ResponseBody::Stream, Some((rx, (driver, id)))) => {
            ClientBody::stream(rx).guarded(driver, id)
        }
        (ResponseBody::Stream, None) => ClientBody::empty(),
        // The driver turns stored bodies into `Full` (memory) or `Stream` (disk).
        (ResponseBody::Stored(_), _) => ClientBody::empty(),
    };
    let mut head = head;
    crate::reason::from_core(&mut head);
    head.extensions.insert(outcome);
    Response::from_parts(head, b)
}

/// Relays an upstream (origin or peer) response as it streams.
fn relay<B>(
    resp: Response<B>,
    cache_status: Option<HeaderValue>,
    idle: Duration,
) -> Response<ClientBody>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut head, body) = resp.into_parts();
    head.version = http::Version::HTTP_11;
    larder_core::policy::strip_hop_by_hop(&mut head.headers);
    if let Some(cs) = cache_status {
        head.headers.insert("cache-status", cs);
    }
    let body = ClientBody::relay(body.map_err(Into::into).boxed(), idle);
    Response::from_parts(head, body)
}
