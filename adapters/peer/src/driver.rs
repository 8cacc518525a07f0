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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
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

/// Bytes a client may have queued before the fetch feeding it pauses (backpressure: memory
/// stays bounded by the cache plus this per client, never by object size).
pub const BACKLOG_LIMIT: usize = 1 << 20;

/// The receiving end of a client's events, counting body bytes not yet taken.
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
    backlog: Arc<AtomicUsize>,
}

impl Events {
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ClientEvent>> {
        let ev = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(ClientEvent::Body(b))) = &ev {
            self.backlog.fetch_sub(b.len(), Ordering::Relaxed);
        }
        ev
    }

    fn try_recv(&mut self) -> Option<ClientEvent> {
        let ev = self.rx.try_recv().ok();
        if let Some(ClientEvent::Body(b)) = &ev {
            self.backlog.fetch_sub(b.len(), Ordering::Relaxed);
        }
        ev
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
    clients: HashMap<ClientId, (mpsc::UnboundedSender<ClientEvent>, Arc<AtomicUsize>)>,
    /// Backlogs over the limit met while draining the current input.
    lagging: Vec<Arc<AtomicUsize>>,
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
                lagging: Vec::new(),
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
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut rx = Events {
            rx,
            backlog: backlog.clone(),
        };
        let mut inner = self.lock();
        inner.clients.insert(id, (tx, backlog));
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
        inner.engine.handle_input(SystemTime::now(), input);
        while let Some(out) = inner.engine.poll_output() {
            self.dispatch(inner, out);
        }
        self.metrics
            .cache_bytes
            .set(inner.engine.stored_bytes() as i64);
        self.metrics
            .cache_entries
            .set(inner.engine.stored_entries() as i64);
    }

    fn send(inner: &mut Inner, client: ClientId, ev: ClientEvent) {
        if let Some((tx, backlog)) = inner.clients.get(&client) {
            if let ClientEvent::Body(b) = &ev
                && backlog.fetch_add(b.len(), Ordering::Relaxed) + b.len() > BACKLOG_LIMIT
            {
                let lagging = backlog.clone();
                inner.lagging.push(lagging);
            }
            let _ = tx.send(ev);
        }
    }

    /// Feeds a body chunk; returns the backlogs of clients now too far behind, which the
    /// fetch waits on before reading more.
    pub fn input_body(self: &Arc<Self>, fetch: FetchId, chunk: Bytes) -> Vec<Arc<AtomicUsize>> {
        let mut inner = self.lock();
        self.input_locked(&mut inner, Input::UpstreamBody { fetch, chunk });
        std::mem::take(&mut inner.lagging)
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
