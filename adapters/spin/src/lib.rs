//! Larder at the edge: a Spin HTTP component. It is a Larder node like the native peers:
//! every request drives one `larder_core::Engine`, which decides routing, lookup,
//! revalidation, coalescing, storing and invalidation; this crate only carries its outputs
//! out with Spin's I/O (outbound HTTP, the key-value store) and keeps time with the WASI clock.
//!
//! Variables: `upstream` (mirror door: the upstream's origin, `scheme://host[:port]`),
//! `upstream_path` (the mirror's base path on it, e.g. `/debian`), `peers` (comma-separated
//! owner candidates), `peer_secret` (signs peer requests), `ring` (`rendezvous`, the default,
//! or `groupcache`). A miss goes to the owner peer, then the next choice, then the origin; no
//! peers means the origin directly.
//!
//! Storage: a Spin instance lives for one request, so the engine's memory tier lives for one
//! request too, and its disk tier is the key-value store: `e:<entry id>` holds one record in
//! the core's entry format (`larder_core::storage::entry`), and `ix:<cache key>` lists the
//! records of that key (`<id> <bytes>` per line), which are announced to the engine with
//! `Input::Restored` before the request.

use bytes::Bytes;
use futures::SinkExt;
use futures::channel::{mpsc, oneshot};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request, response};
use http_body_util::{BodyExt, Full, StreamBody};
use larder_core::cache_status::{CacheStatus, Fwd};
use larder_core::door::{self, Refused};
use larder_core::engine::UpstreamError;
use larder_core::heads::clone_request;
use larder_core::storage::{assemble, entry};
use larder_core::{
    CacheKey, ClientId, Config, Engine, EntryId, FetchId, Input, MemoryTier, Output, PolicyConfig,
    ResponseBody, RingKind, Route, StorageError, StoredBody, Tier, hop, policy,
};
use spin_sdk::http::{BoxBody, box_body};
use spin_sdk::key_value::Store;
use spin_sdk::wasip3::http_compat::IncomingResponseBody;
use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

/// The largest body stored (a key-value value is not the place for more): larger bodies
/// stream through uncached.
pub const MAX_ENTRY: usize = 1 << 20;
/// The memory tier's budget: it lives for one request (bodies loaded or filled now).
const MEMORY: u64 = 4 << 20;
/// The key-value store's budget as the engine's disk tier (the store enforces its own).
const DISK: u64 = 1 << 30;
/// The edge's id towards the ring: never a member, so the engine forwards to every peer in
/// preference order before serving a miss itself.
const EDGE_ID: &str = "larder-edge";
const VIA: &str = "1.1 larder-edge";
/// Key-value keys longer than this are hashed (stores limit keys to 256 bytes).
const MAX_KV_KEY: usize = 250;
/// The one client of an instance.
const CLIENT: ClientId = ClientId(0);

type Resp = http::Response<BoxBody>;
type Chunk = Result<http_body::Frame<Bytes>, std::io::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    box_body(Full::new(b.into()))
}

fn text(code: StatusCode, status: Option<HeaderValue>, msg: &str) -> Resp {
    let mut r = http::Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::VIA, VIA);
    if let Some(s) = status {
        r = r.header("cache-status", s);
    }
    r.body(full(format!("{msg}\n"))).expect("valid response")
}

/// Settings from Spin variables (all optional).
struct Vars {
    upstream: Option<http::Uri>,
    peers: Vec<String>,
    secret: Option<String>,
    ring: Result<RingKind, String>,
}

async fn var(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The mirror base: `upstream` (an origin; spin.toml also puts it in
/// `allowed_outbound_hosts`, where Spin refuses a path) followed by `upstream_path`.
fn upstream_url(origin: Option<String>, path: Option<String>) -> Option<http::Uri> {
    let origin = origin?;
    let path = path.unwrap_or_default();
    let path = path.trim_matches('/');
    let joined = if path.is_empty() {
        origin.trim_end_matches('/').to_owned()
    } else {
        format!("{}/{path}", origin.trim_end_matches('/'))
    };
    joined.parse().ok()
}

async fn vars() -> Vars {
    Vars {
        upstream: upstream_url(var("upstream").await, var("upstream_path").await),
        peers: var("peers")
            .await
            .map(|p| {
                p.split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        secret: var("peer_secret").await,
        ring: match var("ring").await {
            None => Ok(RingKind::Rendezvous),
            Some(r) => r
                .parse()
                .map_err(|_| format!("ring = {r:?}: use rendezvous or groupcache")),
        },
    }
}

/// The family of request fields the Spin host adds to every incoming request
/// (`spin-full-url`, `spin-client-addr`, `spin-path-info`, `spin-base-path`,
/// `spin-matched-route`, `spin-component-route`, `spin-raw-component-route`,
/// `spin-path-match-*`).
pub const HOST_HEADER_PREFIX: &str = "spin-";

/// Removes the host-added `spin-*` fields. They describe this edge and its client (the
/// client's address, the edge's own URL), so none may reach a peer or the origin, be
/// stored with an entry or take part in a peer signature.
pub fn strip_host_headers(headers: &mut HeaderMap) {
    let names: Vec<header::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(HOST_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The component's entry point: checks the request, then hands it to an [`Edge`] that runs
/// beside the response and streams its body.
#[spin_sdk::http_service]
async fn handle(req: spin_sdk::http::Request) -> Resp {
    let (mut parts, body) = req.into_parts();
    strip_host_headers(&mut parts.headers);
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                None,
                &format!("cannot read request body: {e:?}"),
            );
        }
    };
    let vars = vars().await;
    let ring = match &vars.ring {
        Ok(r) => *r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, None, e),
    };
    let (head, route) = match admit(parts, &vars, SystemTime::now()) {
        Ok(x) => x,
        Err(Refused(code, msg)) => return text(code, None, &msg),
    };
    // PURGE drops entries for everyone: the edge has no list of who may (the native peer's
    // --purge-allow), so it is refused rather than open to any client. Peers fanning a
    // purge out are not answered either: the edge's copies expire with their freshness.
    if head.method.as_str() == larder_core::engine::PURGE {
        return text(
            StatusCode::FORBIDDEN,
            None,
            "PURGE is not enabled at the edge",
        );
    }
    let key = match CacheKey::from_uri(&head.uri) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, None, &e.to_string()),
    };
    let kv = Store::open_default().await.ok();
    let engine = Engine::new(Config {
        policy: PolicyConfig {
            max_object_size: MAX_ENTRY as u64,
            ..PolicyConfig::default()
        },
        memory: MEMORY,
        ring,
        self_id: Some(EDGE_ID.into()),
        peers: vars.peers,
        // A range is served from the whole object: segment entries would be other keys,
        // which this request does not load.
        segment_size: None,
        disk: if kv.is_some() { DISK } else { 0 },
        // Ids must never repeat in the store, across instances: a random start.
        first_entry_id: spin_sdk::wasip3::random::random::get_random_u64() >> 1,
        // Each request is a new engine: a refresh not written to key-value is lost at once.
        persist_refresh_min_ttl: std::time::Duration::ZERO,
        ..Config::default()
    });
    let engine = match engine {
        Ok(e) => e,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()),
    };
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel::<Chunk>(8);
    let edge = Edge {
        engine,
        memory: MemoryTier::new(),
        kv,
        indexes: HashMap::new(),
        records: HashMap::new(),
        fetches: VecDeque::new(),
        head_tx: Some(head_tx),
        body_tx: Some(body_tx),
        body,
        secret: vars.secret,
        refused: None,
    };
    spin_sdk::wasip3::spawn(edge.serve(key, head, route));
    yield_now().await;
    match head_rx.await {
        Ok(head) => http::Response::from_parts(head, box_body(StreamBody::new(body_rx))),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "the edge ended without an answer",
        ),
    }
}

/// Resolves the door (mirror path, `/proxy?q=`) to an absolute target and checks peer
/// traffic: a request with a hop marker is served here (`Route::Local`) only with a valid
/// signature. The edge cannot tell a loopback peer from anyone else, so without
/// `peer_secret` hop traffic is refused.
fn admit(
    mut parts: request::Parts,
    vars: &Vars,
    now: SystemTime,
) -> Result<(request::Parts, Route), Refused> {
    // Spin hands the component its own absolute URL: the doors see the origin-form part
    // (mirror path, or the forwardcache `/proxy?q=` door); the edge is never a forward proxy.
    let origin_form = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    parts.uri = origin_form
        .parse()
        .map_err(|_| Refused(StatusCode::BAD_REQUEST, "bad request target".into()))?;
    let (target, _door) = door::resolve(&parts, vars.upstream.as_ref(), "/proxy")?;
    let from_peer = parts.headers.contains_key(hop::HOP);
    if from_peer {
        let Some(secret) = &vars.secret else {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                "peer traffic (larder-hop) needs peer_secret at the edge".into(),
            ));
        };
        hop::verify(
            secret,
            &parts.method,
            &target.to_string(),
            &parts.headers,
            now,
        )
        .map_err(|why| Refused(StatusCode::UNAUTHORIZED, why.into()))?;
    }
    for h in [hop::HOP, hop::AUTH] {
        parts.headers.remove(h);
    }
    parts.uri = target;
    let route = if from_peer {
        Route::Local
    } else {
        Route::ByRing
    };
    Ok((parts, route))
}

/// One request's engine and the I/O that carries its outputs out.
struct Edge {
    engine: Engine,
    /// The hot tier, for this request only.
    memory: MemoryTier,
    /// The warm tier; `None` when the store cannot be opened (nothing is stored).
    kv: Option<Store>,
    /// `ix:` lists read or written by this request, by their key-value key.
    indexes: HashMap<String, Vec<(EntryId, u64)>>,
    /// Bodies of records read from the store, for `ResponseBody::Stored` on the disk tier.
    records: HashMap<EntryId, Bytes>,
    /// Upstream bodies being read, oldest first.
    fetches: VecDeque<(FetchId, IncomingResponseBody)>,
    /// Until the client's head is sent.
    head_tx: Option<oneshot::Sender<response::Parts>>,
    /// The client's body, until the client goes away or its response ends badly.
    body_tx: Option<mpsc::Sender<Chunk>>,
    /// The request body (peers and passes get it again).
    body: Bytes,
    secret: Option<String>,
    /// Why the Spin host refused an origin request, for the 502 that says so.
    refused: Option<String>,
}

impl Edge {
    fn input(&mut self, input: Input) {
        self.engine.handle_input(SystemTime::now(), input);
    }

    /// Announces the stored records of `key`, runs the request, and drains the engine until
    /// it is idle: the response streams meanwhile, and writes after it (a fill's store, a
    /// stale-while-revalidate refresh) finish before the body closes, so no host drops them.
    async fn serve(mut self, key: CacheKey, head: request::Parts, route: Route) {
        self.restore(&key).await;
        self.input(Input::Request {
            client: CLIENT,
            head,
            route,
        });
        loop {
            while let Some(out) = self.engine.poll_output() {
                self.carry_out(out).await;
            }
            if let Some((fetch, body)) = self.fetches.front_mut() {
                let fetch = *fetch;
                let input = match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(chunk) => Input::UpstreamBody { fetch, chunk },
                        Err(_) => continue, // trailers
                    },
                    Some(Err(_)) => {
                        self.fetches.pop_front();
                        Input::UpstreamError {
                            fetch,
                            error: UpstreamError::Truncated,
                        }
                    }
                    None => {
                        self.fetches.pop_front();
                        Input::UpstreamEnd { fetch }
                    }
                };
                self.input(input);
                continue;
            }
            break;
        }
        if self.head_tx.is_some() {
            // Nothing left to wait for, and no answer: say so rather than hang.
            let r = text(
                StatusCode::BAD_GATEWAY,
                None,
                "the edge's engine gave no answer",
            );
            self.relay_made(r).await;
        }
    }

    async fn carry_out(&mut self, out: Output) {
        match out {
            Output::Respond { head, body, .. } => self.respond(head, body).await,
            Output::Body { chunk, .. } => self.send(Ok(http_body::Frame::data(chunk))).await,
            // Segments are off here, so the engine never assembles a body from them; were it
            // to, the stored piece is read and sent in order like any chunk.
            Output::BodyStored { body, .. } => match self.read_stored(&body).await {
                Some(chunk) => self.send(Ok(http_body::Frame::data(chunk))).await,
                None => {
                    self.send(Err(std::io::Error::other("stored body unreadable")))
                        .await;
                    self.body_tx = None;
                }
            },
            Output::End { .. } => {}
            Output::Abort { .. } => {
                // The client sees a broken body, never a short one that looks whole.
                self.send(Err(std::io::Error::other("upstream failed mid-body")))
                    .await;
                self.body_tx = None;
            }
            Output::Forward {
                key, peers, head, ..
            } => self.forward(key, peers, head).await,
            Output::Pass { status, head, .. } => self.pass(status, head).await,
            Output::Fetch { fetch, request } => self.fetch(fetch, request).await,
            // Only an engine with a hot cache of remote keys asks its peers, and this one has
            // none; were it to, the fetch fails at once (the engine then serves its clients
            // itself) rather than leave them waiting.
            Output::FetchFromPeers { fetch, .. } => self.input(Input::UpstreamError {
                fetch,
                error: UpstreamError::Connect,
            }),
            Output::CancelFetch { fetch } => self.fetches.retain(|(f, _)| *f != fetch),
            Output::Write {
                entry: id,
                tier,
                key,
                meta,
                body,
            } => match tier {
                Tier::Memory => self.memory.insert(id, body),
                Tier::Disk => self.write(id, &key, &meta, body).await,
            },
            Output::UpdateMeta {
                entry: id,
                tier: Tier::Disk,
                key,
                meta,
            } => self.update_meta(id, &key, &meta).await,
            Output::UpdateMeta { .. } => {}
            Output::Delete {
                entry: id,
                tier,
                key,
            } => match tier {
                Tier::Memory => {
                    self.memory.remove(id);
                }
                Tier::Disk => self.delete(id, &key).await,
            },
            Output::Load { entry: id, body } => {
                let input = match self.read_record(id).await {
                    Some((meta, b)) => Input::Loaded {
                        entry: id,
                        meta,
                        body: body.then_some(b),
                    },
                    None => Input::LoadFailed { entry: id },
                };
                self.input(input);
            }
            // `Output` is non-exhaustive: an output newer than this component is logged
            // (stderr, the Spin log) and ignored.
            // Unsafe requests reach the owner, which fans the invalidation out itself.
            Output::InvalidatePeers { .. } => {}
            other => eprintln!("larder: unknown engine output ignored: {other:?}"),
        }
    }

    // ---- the client --------------------------------------------------------------------

    /// The engine's answer: its body read from a tier, made here, or streamed after.
    async fn respond(&mut self, mut head: response::Parts, body: ResponseBody) {
        let bytes = match body {
            ResponseBody::Empty => Some(Bytes::new()),
            ResponseBody::Full(b) => Some(b),
            ResponseBody::Stored(stored) => match self.read_stored(&stored).await {
                Some(b) => Some(b),
                None => {
                    let status = CacheStatus::fwd(Fwd::UriMiss).with_detail("kv-read-failed");
                    let r = text(
                        StatusCode::BAD_GATEWAY,
                        Some(status.to_header_value()),
                        "a stored entry could not be read back from key-value",
                    );
                    return self.relay_made(r).await;
                }
            },
            ResponseBody::Stream => None,
        };
        let refused_origin = head
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.contains("detail=destination-not-allowed"))
            .map(|v| v.replace("destination-not-allowed", "not-in-allowed-outbound-hosts"));
        if let (Some(status), Some(why)) = (refused_origin, self.refused.clone()) {
            let r = text(
                StatusCode::BAD_GATEWAY,
                HeaderValue::from_str(&status).ok(),
                &why,
            );
            return self.relay_made(r).await;
        }
        head.headers
            .append(header::VIA, HeaderValue::from_static(VIA));
        match bytes {
            Some(b) => {
                // WASI HTTP frames the body by Content-Length whatever the method: a HEAD or
                // 304 answer without a body must not announce the GET's length.
                if b.is_empty() {
                    head.headers.remove(header::CONTENT_LENGTH);
                } else {
                    head.headers.insert(header::CONTENT_LENGTH, b.len().into());
                }
                self.start(head);
                if !b.is_empty() {
                    self.send(Ok(http_body::Frame::data(b))).await;
                }
            }
            None => self.start(head),
        }
    }

    /// Sends the client's head (once).
    fn start(&mut self, head: response::Parts) {
        if let Some(tx) = self.head_tx.take() {
            let _ = tx.send(head);
        }
    }

    /// Sends a piece of the client's body; a client gone is told to the engine once.
    async fn send(&mut self, chunk: Chunk) {
        let Some(tx) = &mut self.body_tx else { return };
        if tx.send(chunk).await.is_err() {
            self.body_tx = None;
            self.input(Input::ClientGone { client: CLIENT });
        }
    }

    /// A response made here (or relayed whole): head, then its body.
    async fn relay_made(&mut self, r: Resp) {
        let (head, mut body) = r.into_parts();
        self.start(head);
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(b) = frame.into_data() {
                self.send(Ok(http_body::Frame::data(b))).await;
            }
        }
    }

    /// Relays an upstream answer (a peer's, or a pass's) as it streams.
    async fn relay(
        &mut self,
        req: &Method,
        resp: spin_sdk::http::Response,
        cache_status: Option<HeaderValue>,
    ) {
        let mut head = to_head(&resp);
        if let Some(s) = cache_status {
            head.headers.insert("cache-status", s);
        }
        head.headers
            .append(header::VIA, HeaderValue::from_static(VIA));
        if req == Method::HEAD
            || head.status == StatusCode::NOT_MODIFIED
            || head.status == StatusCode::NO_CONTENT
        {
            head.headers.remove(header::CONTENT_LENGTH);
        }
        self.start(head);
        let mut body = resp.into_body();
        // Read while the client listens: nothing here is stored.
        while self.body_tx.is_some() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(b) = frame.into_data() {
                        self.send(Ok(http_body::Frame::data(b))).await;
                    }
                }
                Some(Err(e)) => {
                    self.send(Err(std::io::Error::other(format!("{e:?}"))))
                        .await;
                    self.body_tx = None;
                    return;
                }
                None => return,
            }
        }
    }

    // ---- upstream ----------------------------------------------------------------------

    /// The owner peer first, then the next choices; a peer that refuses (401), sees a loop
    /// (508) or fails (5xx) is no answer. When none answers, the request is served here.
    async fn forward(&mut self, key: CacheKey, peers: Vec<String>, head: request::Parts) {
        for peer in &peers {
            let now = SystemTime::now();
            let mut fwd = request::Request::builder()
                .method(head.method.clone())
                .uri(peer_url(peer, key.as_str()));
            let h = fwd.headers_mut().expect("fresh builder");
            for (k, v) in &head.headers {
                h.append(k.clone(), v.clone());
            }
            policy::strip_hop_by_hop(h);
            h.remove(header::HOST);
            h.insert(hop::HOP, HeaderValue::from_static(EDGE_ID));
            if let Some(secret) = &self.secret
                && let Ok(v) = HeaderValue::from_str(&hop::sign(
                    secret,
                    edge_nonce(now, key.as_str()),
                    &head.method,
                    key.as_str(),
                    h,
                    now,
                ))
            {
                h.insert(hop::AUTH, v);
            }
            let Ok(fwd) = fwd.body(Full::new(self.body.clone())) else {
                continue;
            };
            match send(fwd).await {
                Ok(resp) if peer_answered(resp.status()) => {
                    return self.relay(&head.method, resp, None).await;
                }
                _ => continue,
            }
        }
        self.input(Input::Request {
            client: CLIENT,
            head,
            route: Route::Local,
        });
    }

    /// Not for the cache: the request goes upstream as it came (body included) and its
    /// answer is relayed. The engine hears the answer's head first, to invalidate.
    async fn pass(&mut self, status: CacheStatus, head: request::Parts) {
        let key = CacheKey::from_uri(&head.uri).ok();
        let mut out = clone_request(&head);
        policy::strip_hop_by_hop(&mut out.headers);
        out.headers.remove(header::HOST);
        if !self.body.is_empty() {
            out.headers
                .insert(header::CONTENT_LENGTH, self.body.len().into());
        }
        let out = http::Request::from_parts(out, Full::new(self.body.clone()));
        match send(out).await {
            Ok(resp) => {
                let got = to_head(&resp);
                // Invalidation reaches the Location and Content-Location URLs too: announce
                // what the store holds for them, the engine decides what goes.
                if let Some(key) = &key {
                    for other in larder_core::engine::also_invalidated(key, &got) {
                        self.restore(&other).await;
                    }
                }
                self.input(Input::PassResponse {
                    client: CLIENT,
                    head: got,
                });
                let mut status = status;
                status.fwd_status = Some(resp.status().as_u16());
                self.relay(&head.method, resp, Some(status.to_header_value()))
                    .await;
            }
            Err(e) => {
                self.input(Input::ClientGone { client: CLIENT });
                let r = upstream_failed(status, &head.uri, &e);
                self.relay_made(r).await;
            }
        }
    }

    async fn fetch(&mut self, fetch: FetchId, mut request: request::Parts) {
        let target = request.uri.clone();
        request.headers.remove(header::HOST);
        let req = http::Request::from_parts(request, Full::new(Bytes::new()));
        match send(req).await {
            Ok(resp) => {
                let head = to_head(&resp);
                self.fetches.push_back((fetch, resp.into_body()));
                self.input(Input::UpstreamHead { fetch, head });
            }
            Err(e) => {
                let error = if e.contains("Denied") {
                    self.refused = Some(refusal(&target, &e));
                    UpstreamError::DestinationNotAllowed
                } else {
                    UpstreamError::Connect
                };
                self.input(Input::UpstreamError { fetch, error });
            }
        }
    }

    // ---- the key-value tier ------------------------------------------------------------

    /// Announces every record `ix:<key>` lists.
    async fn restore(&mut self, key: &CacheKey) {
        let ix = index_key(key);
        for (id, bytes) in self.index(&ix).await.clone() {
            self.input(Input::Restored {
                entry: id,
                key: key.clone(),
                bytes,
            });
        }
    }

    async fn index(&mut self, ix: &str) -> &mut Vec<(EntryId, u64)> {
        if !self.indexes.contains_key(ix) {
            let listed = match &self.kv {
                Some(kv) => kv.get(ix).await.ok().flatten().map(|v| parse_index(&v)),
                None => None,
            };
            self.indexes
                .insert(ix.to_owned(), listed.unwrap_or_default());
        }
        self.indexes.get_mut(ix).expect("just made")
    }

    async fn save_index(&mut self, ix: &str) {
        let value = self
            .indexes
            .get(ix)
            .map(|l| encode_index(l))
            .unwrap_or_default();
        let Some(kv) = &self.kv else { return };
        let _ = if value.is_empty() {
            kv.delete(ix).await
        } else {
            kv.set(ix, value).await
        };
    }

    async fn write(&mut self, id: EntryId, key: &CacheKey, meta: &[u8], body: Bytes) {
        let record = entry::encode(meta, &body);
        let stored = match &self.kv {
            Some(kv) => kv.set(record_key(id), &record).await.is_ok(),
            None => false,
        };
        if !stored {
            self.input(Input::WriteFailed {
                entry: id,
                tier: Tier::Disk,
                error: StorageError::Unavailable,
            });
            return;
        }
        self.records.insert(id, body);
        let ix = index_key(key);
        let list = self.index(&ix).await;
        list.retain(|(e, _)| *e != id);
        list.push((id, record.len() as u64));
        self.save_index(&ix).await;
    }

    /// A 304 refreshed an entry: its record gets the new metadata and keeps its body. When
    /// that fails the old record stays, which is sound (older, not wrong).
    async fn update_meta(&mut self, id: EntryId, key: &CacheKey, meta: &[u8]) {
        let record = match self.records.get(&id) {
            Some(body) => entry::encode(meta, body),
            None => {
                let Some(kv) = &self.kv else { return };
                let Ok(Some(old)) = kv.get(record_key(id)).await else {
                    return;
                };
                match entry::replace_meta(&Bytes::from(old), meta) {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let Some(kv) = &self.kv else { return };
        if kv.set(record_key(id), &record).await.is_err() {
            return;
        }
        let ix = index_key(key);
        let list = self.index(&ix).await;
        if let Some(e) = list.iter_mut().find(|(e, _)| *e == id) {
            e.1 = record.len() as u64;
        }
        self.save_index(&ix).await;
    }

    async fn delete(&mut self, id: EntryId, key: &CacheKey) {
        self.records.remove(&id);
        if let Some(kv) = &self.kv {
            let _ = kv.delete(record_key(id)).await;
        }
        let ix = index_key(key);
        self.index(&ix).await.retain(|(e, _)| *e != id);
        self.save_index(&ix).await;
    }

    /// A record's checked metadata and body; `None` when missing, unreadable or corrupt.
    async fn read_record(&mut self, id: EntryId) -> Option<(Bytes, Bytes)> {
        let record = Bytes::from(self.kv.as_ref()?.get(record_key(id)).await.ok()??);
        let (meta, body) = entry::decode(&record).ok()?;
        self.records.insert(id, body.clone());
        Some((meta, body))
    }

    async fn read_stored(&mut self, stored: &StoredBody) -> Option<Bytes> {
        match stored.tier {
            Tier::Memory => self.memory.read(stored),
            Tier::Disk => {
                let body = match self.records.get(&stored.entry) {
                    Some(b) => b.clone(),
                    None => self.read_record(stored.entry).await?.1,
                };
                assemble(&body, &stored.pieces)
            }
        }
    }
}

/// Lets tasks spawned during this poll run: wit-bindgen's executor adds them to its set
/// after the poll that spawned them and sleeps unless something woke it, so without a
/// wake-up they wait for the next unrelated event (an outbound request's body writer would
/// only start once the response has come, which a server that reads the body first never
/// sends).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Sends a request with its body; the error as text (a refusal by the host contains
/// `Denied`).
async fn send(req: http::Request<Full<Bytes>>) -> Result<spin_sdk::http::Response, String> {
    use spin_sdk::http::{FromResponse, IntoRequest};
    // Spawns the task that writes the body: let it start before waiting for the answer.
    let req = req.into_request().map_err(|e| format!("{e:?}"))?;
    yield_now().await;
    let resp = spin_sdk::wasip3::http::client::send(req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    spin_sdk::http::Response::from_response(resp).map_err(|e| format!("{e:?}"))
}

/// A peer's answer is one unless it refused us (401), saw a loop (508) or failed (5xx).
fn peer_answered(status: StatusCode) -> bool {
    !(status == StatusCode::UNAUTHORIZED
        || status == StatusCode::LOOP_DETECTED
        || status.is_server_error())
}

fn to_head(r: &spin_sdk::http::Response) -> response::Parts {
    let mut head = http::Response::builder()
        .status(r.status())
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    head.headers = r.headers().clone();
    policy::strip_hop_by_hop(&mut head.headers);
    head
}

/// Why the Spin host refused a request to `target` (`HttpRequestDenied`): a manifest
/// matter, not the origin's, and the 502 says so.
fn refusal(target: &http::Uri, e: &str) -> String {
    let origin = format!(
        "{}://{}",
        target.scheme_str().unwrap_or("http"),
        target.authority().map(|a| a.as_str()).unwrap_or("")
    );
    format!(
        "the Spin host refused the request to {target}: {origin} is not in the \
         component's allowed_outbound_hosts (spin.toml). Entries there are \
         scheme://host[:port] without a path, and one entry with a path makes Spin \
         refuse the whole list: set `upstream` to the origin only and put a mirror's \
         base path in `upstream_path` ({e})"
    )
}

/// The 502 for a passed request that got no answer. The host refusing it
/// (`HttpRequestDenied`) is a manifest matter, not the origin's, and says so.
fn upstream_failed(status: CacheStatus, target: &http::Uri, e: &str) -> Resp {
    if e.contains("Denied") {
        let status = status.with_detail("not-in-allowed-outbound-hosts");
        return text(
            StatusCode::BAD_GATEWAY,
            Some(status.to_header_value()),
            &refusal(target, e),
        );
    }
    text(
        StatusCode::BAD_GATEWAY,
        Some(status.with_detail("origin-unreachable").to_header_value()),
        &format!("origin failed (origin-unreachable): {e}"),
    )
}

fn peer_url(peer: &str, target: &str) -> String {
    let q: String = larder_core::door::proxy_query(target);
    format!("{peer}/proxy?{q}")
}

/// The key-value key listing `key`'s records: `ix:<key>`, or a hash of it when that would
/// be too long for a store (a collision is a miss: the engine checks each record's key).
fn index_key(key: &CacheKey) -> String {
    let plain = format!("ix:{key}");
    if plain.len() <= MAX_KV_KEY {
        plain
    } else {
        format!(
            "ix#{:032x}",
            xxhash_rust::xxh3::xxh3_128(key.as_str().as_bytes())
        )
    }
}

/// The key-value key of one record.
fn record_key(id: EntryId) -> String {
    format!("e:{}", id.name())
}

/// `<id> <bytes>` per line; anything else is skipped.
fn parse_index(v: &[u8]) -> Vec<(EntryId, u64)> {
    std::str::from_utf8(v)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (id, bytes) = l.split_once(' ')?;
            Some((EntryId::from_name(id)?, bytes.parse().ok()?))
        })
        .collect()
}

fn encode_index(list: &[(EntryId, u64)]) -> String {
    list.iter()
        .map(|(id, bytes)| format!("{} {bytes}\n", id.name()))
        .collect()
}

/// A nonce for a signature from this edge instance (a Spin instance lives for one request
/// and keeps no counter): the clock in nanoseconds mixed with the key, so two requests share
/// one only if they sign the same URL in the same nanosecond (the peer then refuses the
/// second, which falls back to the next choice).
fn edge_nonce(now: std::time::SystemTime, key: &str) -> u64 {
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ xxhash_rust::xxh3::xxh3_64(key.as_bytes()).rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("spin-full-url", "http://edge.test/a?b"),
            ("spin-client-addr", "127.0.0.1:54321"),
            ("spin-path-info", "/a"),
            ("spin-path-match-name", "a"),
            ("accept", "*/*"),
            ("x-spin-note", "kept"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_host_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-spin-note"]);
    }

    #[test]
    fn upstream_is_an_origin_plus_a_base_path() {
        let u = |o: &str, p: &str| {
            upstream_url(
                Some(o.into()),
                Some(p.into()).filter(|p: &String| !p.is_empty()),
            )
            .map(|u| u.to_string())
        };
        assert_eq!(
            u("http://m.test:8000", "").as_deref(),
            Some("http://m.test:8000/")
        );
        assert_eq!(
            u("http://m.test:8000/", "/debian/").as_deref(),
            Some("http://m.test:8000/debian")
        );
        assert_eq!(
            u("http://m.test:8000", "debian").as_deref(),
            Some("http://m.test:8000/debian")
        );
        assert_eq!(upstream_url(None, Some("/debian".into())), None);
    }

    #[test]
    fn an_index_round_trips_and_skips_junk() {
        let list = vec![(EntryId(1), 100), (EntryId(u64::MAX >> 1), 7)];
        let text = encode_index(&list);
        assert_eq!(parse_index(text.as_bytes()), list);
        let junk = format!("{text}xyz 1\n0000000000000001\n\u{0}\n");
        assert_eq!(parse_index(junk.as_bytes()), list);
        assert!(parse_index(&[0xff, 0xfe]).is_empty());
    }

    #[test]
    fn long_keys_are_hashed_into_a_short_index_key() {
        let short = CacheKey::from_normalized("http://o.test/a");
        assert_eq!(index_key(&short), "ix:http://o.test/a");
        let long = CacheKey::from_normalized(&format!("http://o.test/{}", "a".repeat(400)));
        let ix = index_key(&long);
        assert!(ix.starts_with("ix#") && ix.len() <= MAX_KV_KEY, "{ix}");
    }

    #[test]
    fn referenced_urls_resolve_against_the_target() {
        let target = CacheKey::from_normalized("http://o.test/dir/a");
        let mut head = http::Response::new(()).into_parts().0;
        head.headers
            .insert("location", HeaderValue::from_static("b"));
        head.headers
            .insert("content-location", HeaderValue::from_static("/c"));
        let keys: Vec<String> = larder_core::engine::also_invalidated(&target, &head)
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys, ["http://o.test/dir/b", "http://o.test/c"]);
    }

    #[test]
    fn refusals_loops_and_failures_are_not_peer_answers() {
        for s in [200, 304, 404, 403] {
            assert!(peer_answered(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [401, 508, 500, 502, 503, 504] {
            assert!(!peer_answered(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
