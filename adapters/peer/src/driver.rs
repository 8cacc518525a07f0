//! Drives the core engine on tokio: one mutation, then a full drain of its outputs, all
//! under one lock so outputs for one client reach it in order. Outputs become channel
//! messages to connection tasks and spawned upstream fetches; nothing here decides policy.

use crate::metrics::Metrics;
use crate::upstream::Upstream;
use bytes::Bytes;
use hashbrown::HashMap;
use http::{request, response};
use larder_core::cache_status::CacheStatus;
use larder_core::{ClientId, Engine, FetchId, Input, Output, ResponseBody};
use std::sync::atomic::{AtomicU64, Ordering};
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
    },
    Pass {
        status: CacheStatus,
    },
}

struct Inner {
    engine: Engine,
    clients: HashMap<ClientId, mpsc::UnboundedSender<ClientEvent>>,
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

    /// A new client id and the channel its events arrive on.
    pub fn register(&self) -> (ClientId, mpsc::UnboundedReceiver<ClientEvent>) {
        let id = ClientId(self.next_client.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().clients.insert(id, tx);
        (id, rx)
    }

    /// The client's connection is done with this request.
    pub fn release(self: &Arc<Self>, id: ClientId) {
        let known = self.lock().clients.remove(&id).is_some();
        if known {
            self.input(Input::ClientGone { client: id });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would poison it; the state is still consistent
        // (every mutation completes before outputs are drained), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request(
        self: &Arc<Self>,
        client: ClientId,
        head: request::Parts,
        route: larder_core::Route,
    ) {
        self.input(Input::Request {
            client,
            head,
            route,
        });
    }

    /// One mutation, then a complete drain.
    pub fn input(self: &Arc<Self>, input: Input) {
        let finished = match &input {
            Input::UpstreamEnd { fetch } | Input::UpstreamError { fetch, .. } => Some(*fetch),
            _ => None,
        };
        let mut inner = self.lock();
        inner.engine.handle_input(SystemTime::now(), input);
        if let Some(f) = finished {
            inner.fetches.remove(&f);
        }
        while let Some(out) = inner.engine.poll_output() {
            self.dispatch(&mut inner, out);
        }
        self.metrics
            .cache_bytes
            .set(inner.engine.stored_bytes() as i64);
        self.metrics
            .cache_entries
            .set(inner.engine.stored_entries() as i64);
    }

    fn send(inner: &mut Inner, client: ClientId, ev: ClientEvent) {
        if let Some(tx) = inner.clients.get(&client) {
            let _ = tx.send(ev);
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
            Output::Forward { client, peers, .. } => {
                Self::send(inner, client, ClientEvent::Forward { peers })
            }
            Output::Pass { client, status } => {
                Self::send(inner, client, ClientEvent::Pass { status })
            }
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

    /// The ring's preference order for a key (for the client library and tests).
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.lock().engine)
    }
}
