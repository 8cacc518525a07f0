//! Drives the core engine on tokio: one mutation, then a full drain of its outputs, all
//! under one lock so outputs for one client reach it in order. Outputs become channel
//! messages to connection tasks and spawned upstream fetches; nothing here decides policy.

use crate::metrics::Metrics;
use crate::upstream::Upstream;
use bytes::Bytes;
use hashbrown::HashMap;
use http::{request, response};
use larder_core::cache_status::CacheStatus;
use larder_core::{ClientId, Engine, FetchId, Input, Output, ResponseBody, Route};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// What a connection task hears about its request.
#[derive(Debug)]
pub enum ClientEvent {
    Respond {
        head: response::Parts,
        body: ResponseBody,
    },
    Body(Bytes),
    End,
    Abort,
    Forward {
        peers: Vec<String>,
        head: request::Parts,
    },
    Pass {
        status: CacheStatus,
        head: request::Parts,
    },
}

/// Bytes a client may have queued before it counts as behind. A fill is paced by its
/// *fastest* client: it reads on while any client is under half of this, and pauses only
/// when every client is behind (backpressure: memory stays bounded by the cache plus this
/// per client, never by object size, and one stalled reader never paces the others).
pub const BACKLOG_LIMIT: usize = 1 << 20;

/// One client's queue as its fill sees it: bytes queued and not yet taken, when it last
/// took some, and whether it was cut off.
pub struct Lane {
    id: ClientId,
    backlog: AtomicUsize,
    /// Milliseconds since `EPOCH` when the client last took a body chunk.
    last_read: AtomicU64,
    cut: AtomicBool,
}

/// The origin of `Lane::last_read`.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Lane {
    fn new(id: ClientId) -> Self {
        Lane {
            id,
            backlog: AtomicUsize::new(0),
            last_read: AtomicU64::new(now_ms()),
            cut: AtomicBool::new(false),
        }
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    fn behind(&self) -> bool {
        self.backlog() > BACKLOG_LIMIT / 2
    }

    /// Not cut off (clients that left are no longer listed at all).
    fn live(&self) -> bool {
        !self.cut.load(Ordering::Relaxed)
    }
}

/// The receiving end of a client's events, counting body bytes not yet taken.
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
    lane: Arc<Lane>,
}

impl Events {
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ClientEvent>> {
        // A cut client ends at once, however much is still queued for it.
        if self.lane.cut.load(Ordering::Relaxed) {
            return std::task::Poll::Ready(Some(ClientEvent::Abort));
        }
        let ev = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(ClientEvent::Body(b))) = &ev {
            self.lane.backlog.fetch_sub(b.len(), Ordering::Relaxed);
            self.lane.last_read.store(now_ms(), Ordering::Relaxed);
        }
        ev
    }

    fn try_recv(&mut self) -> Option<ClientEvent> {
        let ev = self.rx.try_recv().ok();
        if let Some(ClientEvent::Body(b)) = &ev {
            self.lane.backlog.fetch_sub(b.len(), Ordering::Relaxed);
        }
        ev
    }
}

/// What an input concerned, to recover from a panic while handling it.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Client(ClientId),
    Fetch(FetchId),
    Other,
}

impl Subject {
    fn of(input: &Input) -> Self {
        match input {
            Input::Request { client, .. }
            | Input::ClientGone { client }
            | Input::PassResponse { client, .. } => Subject::Client(*client),
            Input::UpstreamHead { fetch, .. }
            | Input::UpstreamBody { fetch, .. }
            | Input::UpstreamEnd { fetch }
            | Input::UpstreamError { fetch, .. } => Subject::Fetch(*fetch),
            _ => Subject::Other,
        }
    }
}

/// How a request started.
pub enum Begin {
    /// Answered at once with a complete response (a hit, a 304, an error): the engine has
    /// already forgotten the client.
    Answered {
        head: response::Parts,
        body: ResponseBody,
    },
    /// More events follow on `rx`; `first` is the one already received, if any.
    Pending {
        id: ClientId,
        rx: Events,
        first: Option<ClientEvent>,
    },
}

struct Inner {
    engine: Engine,
    clients: HashMap<ClientId, (mpsc::UnboundedSender<ClientEvent>, Arc<Lane>)>,
    fetches: HashMap<FetchId, AbortHandle>,
}

pub struct Driver {
    inner: Mutex<Inner>,
    next_client: AtomicU64,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
}

impl Driver {
    pub fn new(engine: Engine, upstream: Upstream, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Driver {
            inner: Mutex::new(Inner {
                engine,
                clients: HashMap::new(),
                fetches: HashMap::new(),
            }),
            next_client: AtomicU64::new(1),
            upstream,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would poison it; the state is still consistent
        // (every mutation completes before outputs are drained), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a request under a single lock; hits come back without further locking.
    pub fn begin(self: &Arc<Self>, head: request::Parts, route: Route) -> Begin {
        let id = ClientId(self.next_client.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Arc::new(Lane::new(id));
        let mut rx = Events {
            rx,
            lane: lane.clone(),
        };
        let mut inner = self.lock();
        inner.clients.insert(id, (tx, lane));
        self.input_locked(
            &mut inner,
            Input::Request {
                client: id,
                head,
                route,
            },
        );
        match rx.try_recv() {
            Some(ClientEvent::Respond {
                head,
                body: body @ (ResponseBody::Full(_) | ResponseBody::Empty),
            }) => {
                inner.clients.remove(&id);
                Begin::Answered { head, body }
            }
            first => Begin::Pending { id, rx, first },
        }
    }

    /// Hands a request back to the engine (after every better peer failed).
    pub fn retry_local(self: &Arc<Self>, id: ClientId, head: request::Parts) {
        self.input(Input::Request {
            client: id,
            head,
            route: Route::Local,
        });
    }

    /// The client's connection is done with this request.
    pub fn release(self: &Arc<Self>, id: ClientId) {
        let mut inner = self.lock();
        if inner.clients.remove(&id).is_some() {
            self.input_locked(&mut inner, Input::ClientGone { client: id });
        }
    }

    /// One mutation, then a complete drain.
    pub fn input(self: &Arc<Self>, input: Input) {
        let finished = match &input {
            Input::UpstreamEnd { fetch } | Input::UpstreamError { fetch, .. } => Some(*fetch),
            _ => None,
        };
        let mut inner = self.lock();
        if let Some(f) = finished {
            inner.fetches.remove(&f);
        }
        self.input_locked(&mut inner, input);
    }

    fn input_locked(self: &Arc<Self>, inner: &mut Inner, input: Input) {
        let subject = Subject::of(&input);
        self.contained(inner, subject, |engine| {
            engine.handle_input(SystemTime::now(), input)
        });
        self.metrics
            .cache_bytes
            .set(inner.engine.stored_bytes() as i64);
        self.metrics
            .cache_entries
            .set(inner.engine.stored_entries() as i64);
    }

    /// Runs one engine mutation and its drain with panics contained. A panic must never
    /// leave a client waiting or state behind: the client the input was about gets a 500
    /// and is forgotten; a fetch it was about fails (its clients get a 502) and stops.
    fn contained(
        self: &Arc<Self>,
        inner: &mut Inner,
        subject: Subject,
        mutate: impl FnOnce(&mut Engine),
    ) {
        if self.caught(inner, mutate) {
            return;
        }
        self.metrics.engine_panics.inc();
        tracing::error!(
            ?subject,
            "panic while handling an input; answering with an error"
        );
        let recovery = match subject {
            Subject::Client(client) => {
                if let Some((tx, _)) = inner.clients.remove(&client) {
                    let (head, body) = larder_core::engine::error_response(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        &CacheStatus::default().with_detail("internal-error"),
                        "internal error while handling this request",
                    );
                    let _ = tx.send(ClientEvent::Respond {
                        head,
                        body: ResponseBody::Full(body),
                    });
                }
                Input::ClientGone { client }
            }
            Subject::Fetch(fetch) => {
                if let Some(h) = inner.fetches.remove(&fetch) {
                    h.abort();
                }
                Input::UpstreamError {
                    fetch,
                    error: larder_core::engine::UpstreamError::Protocol,
                }
            }
            Subject::Other => return,
        };
        // Best effort: the engine forgets what the failed input concerned.
        if !self.caught(inner, |e| e.handle_input(SystemTime::now(), recovery)) {
            tracing::error!(?subject, "panic again while recovering");
        }
    }

    /// One mutation and its drain; false when it panicked.
    fn caught(self: &Arc<Self>, inner: &mut Inner, mutate: impl FnOnce(&mut Engine)) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            mutate(&mut inner.engine);
            while let Some(out) = inner.engine.poll_output() {
                self.dispatch(inner, out);
            }
        }))
        .is_ok()
    }

    fn send(inner: &mut Inner, client: ClientId, ev: ClientEvent) {
        if let Some((tx, lane)) = inner.clients.get(&client) {
            if let ClientEvent::Body(b) = &ev {
                lane.backlog.fetch_add(b.len(), Ordering::Relaxed);
            }
            let _ = tx.send(ev);
        }
    }

    /// Feeds a body chunk; true when the fill may read on at once (no client of it is
    /// behind), so [`pace`](Self::pace) — another lock and a list — is needed only then.
    pub fn input_body(self: &Arc<Self>, fetch: FetchId, chunk: Bytes) -> bool {
        let mut inner = self.lock();
        self.input_locked(&mut inner, Input::UpstreamBody { fetch, chunk });
        let inner = &*inner;
        !inner.engine.fetch_clients(fetch).iter().any(|c| {
            inner
                .clients
                .get(c)
                .is_some_and(|(_, lane)| lane.live() && lane.behind())
        })
    }

    /// The lanes of the clients a fetch feeds now (followers that joined included).
    fn lanes_of(&self, fetch: FetchId) -> Vec<Arc<Lane>> {
        let inner = self.lock();
        inner
            .engine
            .fetch_clients(fetch)
            .iter()
            .filter_map(|c| inner.clients.get(c).map(|(_, l)| l.clone()))
            .collect()
    }

    /// Waits until a fill may read on: at once while any of its clients keeps up; otherwise
    /// until one catches up. A client behind that has taken nothing for `stall`, or whose
    /// queue outgrew `detach` bytes, is cut off (its response aborts, the engine forgets
    /// it), so one stalled reader never holds the others or the fill.
    pub async fn pace(self: &Arc<Self>, fetch: FetchId, stall: Duration, detach: usize) {
        loop {
            let lanes = self.lanes_of(fetch);
            let now = now_ms();
            for lane in &lanes {
                let stalled = now.saturating_sub(lane.last_read.load(Ordering::Relaxed))
                    > stall.as_millis() as u64;
                if lane.live() && ((lane.behind() && stalled) || lane.backlog() > detach) {
                    self.cut(lane);
                }
            }
            if !self.all_behind(&lanes) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every live client is behind (false when none is left).
    fn all_behind(&self, fed: &[Arc<Lane>]) -> bool {
        let mut any = false;
        for lane in fed {
            if lane.live() {
                if !lane.behind() {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    /// Cuts a client off: its body ends with an error at once, and the engine forgets it.
    fn cut(self: &Arc<Self>, lane: &Arc<Lane>) {
        lane.cut.store(true, Ordering::Relaxed);
        self.metrics.clients_cut.inc();
        tracing::warn!(
            client = lane.id.0,
            backlog = lane.backlog(),
            "client too far behind its download: cut off"
        );
        let mut inner = self.lock();
        if let Some((tx, _)) = inner.clients.remove(&lane.id) {
            // Wakes the connection task if it waits on an empty queue.
            let _ = tx.send(ClientEvent::Abort);
            self.input_locked(&mut inner, Input::ClientGone { client: lane.id });
        }
    }

    fn dispatch(self: &Arc<Self>, inner: &mut Inner, out: Output) {
        match out {
            Output::Respond { client, head, body } => {
                Self::send(inner, client, ClientEvent::Respond { head, body })
            }
            Output::Body { client, chunk } => Self::send(inner, client, ClientEvent::Body(chunk)),
            Output::End { client } => Self::send(inner, client, ClientEvent::End),
            Output::Abort { client } => Self::send(inner, client, ClientEvent::Abort),
            Output::Forward {
                client,
                peers,
                head,
                ..
            } => Self::send(inner, client, ClientEvent::Forward { peers, head }),
            Output::Pass {
                client,
                status,
                head,
            } => Self::send(inner, client, ClientEvent::Pass { status, head }),
            Output::Fetch { fetch, request } => {
                self.metrics.origin_fetches.inc();
                let handle = tokio::spawn(crate::upstream::fetch(self.clone(), fetch, request))
                    .abort_handle();
                inner.fetches.insert(fetch, handle);
            }
            Output::CancelFetch { fetch } => {
                if let Some(h) = inner.fetches.remove(&fetch) {
                    h.abort();
                }
            }
            Output::Stored { .. } => {
                self.metrics.stored.inc();
            }
            Output::Evicted { .. } => {
                self.metrics.evictions.inc();
            }
        }
    }

    /// Delivers `Input::Timeout` whenever the engine asked for it (collapse deadlines).
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let due = self.lock().engine.poll_timeout();
            let wait = match due {
                Some(t) => t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_millis(500)),
                None => Duration::from_millis(500),
            };
            tokio::time::sleep(wait).await;
            if due.is_some_and(|t| t <= SystemTime::now()) {
                self.input(Input::Timeout);
            }
        }
    }

    /// Read access to the engine (ring, counters) for the client library and tests.
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.lock().engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_core::Config;

    fn driver() -> Arc<Driver> {
        let tls = crate::tls::client_config(&[]).unwrap();
        let t = Duration::from_secs(1);
        let up = Upstream::new(tls, t, t, t, "test");
        Driver::new(
            Engine::new(Config::default()).unwrap(),
            up,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn a_panic_answers_the_client_and_leaves_nothing_behind() {
        let d = driver();
        let id = ClientId(7);
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Arc::new(Lane::new(id));
        let mut events = Events {
            rx,
            lane: lane.clone(),
        };
        {
            let mut inner = d.lock();
            inner.clients.insert(id, (tx, lane));
            d.contained(&mut inner, Subject::Client(id), |_| {
                panic!("a bug in the engine")
            });
            assert!(inner.clients.is_empty(), "the client is forgotten");
            assert_eq!(inner.engine.in_flight(), (0, 0));
        }
        match events.recv().await {
            Some(ClientEvent::Respond { head, .. }) => {
                assert_eq!(head.status, http::StatusCode::INTERNAL_SERVER_ERROR)
            }
            other => panic!("expected a 500, got {other:?}"),
        }
        assert_eq!(d.metrics.engine_panics.get(), 1);
        // The lock is not poisoned and the engine keeps serving.
        let head = http::Request::get("http://127.0.0.1:9/x")
            .header("cache-control", "only-if-cached")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        match d.begin(head, Route::Local) {
            Begin::Answered { head, .. } => assert_eq!(head.status.as_u16(), 504),
            Begin::Pending { .. } => panic!("only-if-cached is answered at once"),
        }
    }
}
