//! Drives the core engine on tokio: one mutation, then a full drain of its outputs, all
//! under one lock so outputs for one client reach it in order. Outputs become channel
//! messages to connection tasks and spawned upstream fetches; nothing here decides policy.

use crate::disk::{BodyFile, Disk, LoadError};
use crate::metrics::Metrics;
use crate::peers::PeerLink;
use crate::upstream::Upstream;
use bytes::Bytes;
use hashbrown::HashMap;
use http::{request, response};
use larder_core::cache_status::CacheStatus;
use larder_core::storage::Piece;
use larder_core::{
    ClientId, Engine, EntryId, FetchId, Input, MemoryTier, Outcome, Output, ResponseBody, Route,
    StorageError, StoredBody, Tier,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// What a connection task hears about its request.
#[derive(Debug)]
pub enum ClientEvent {
    /// The response head; `outcome` and `collapsed` are what metrics count (the engine's,
    /// or `Error` for a response the driver made itself).
    Respond {
        head: response::Parts,
        body: ResponseBody,
        outcome: Outcome,
        collapsed: bool,
    },
    /// An interim (1xx) head to send ahead of the response.
    Interim(response::Parts),
    Body(Bytes),
    /// Body bytes the memory tier holds anyway (a stored segment of an assembled
    /// response): not counted as queued, so a long run of them never reads as a client
    /// falling behind a fetch.
    Cached(Bytes),
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
    /// Body bytes held behind a disk read of the same response (`Inner::chains`): they
    /// count for pacing fetches, not for pacing that disk read.
    held: AtomicUsize,
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
            held: AtomicUsize::new(0),
            last_read: AtomicU64::new(now_ms()),
            cut: AtomicBool::new(false),
        }
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Behind, for pacing its fetches: what waits in its queue and behind a disk read.
    fn behind(&self) -> bool {
        self.backlog() + self.held.load(Ordering::Relaxed) > BACKLOG_LIMIT / 2
    }

    /// Behind, for pacing a disk read of its body: its queue only (what is held waits for
    /// that very read).
    fn queue_behind(&self) -> bool {
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
        match &ev {
            std::task::Poll::Ready(Some(ClientEvent::Body(b))) => {
                self.lane.backlog.fetch_sub(b.len(), Ordering::Relaxed);
                self.lane.last_read.store(now_ms(), Ordering::Relaxed);
            }
            std::task::Poll::Ready(Some(ClientEvent::Cached(_))) => {
                self.lane.last_read.store(now_ms(), Ordering::Relaxed);
            }
            _ => {}
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
        outcome: Outcome,
        collapsed: bool,
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
    /// The hot tier: bodies the engine's index says are in memory.
    memory: MemoryTier,
    /// Clients whose body is being read from disk mid-stream (`Output::BodyStored`): what
    /// the engine says next waits here, in order, until the read is done.
    chains: HashMap<ClientId, VecDeque<Chained>>,
}

/// An event held behind a disk read of the same client's body (most are body chunks, the
/// rare head-sized event is as large as it needs to be).
#[allow(clippy::large_enum_variant)]
enum Chained {
    Event(ClientEvent),
    /// Opened when the engine asked (a later delete cannot pull it away), read in turn.
    Disk(Arc<BodyFile>, StoredBody),
}

/// A write or delete for the disk tier, carried out in order by one writer thread (a
/// delete never overtakes the write it undoes).
enum DiskOp {
    Write {
        entry: EntryId,
        meta: Bytes,
        body: Bytes,
    },
    UpdateMeta {
        entry: EntryId,
        meta: Bytes,
    },
    Delete {
        entry: EntryId,
    },
}

/// Body bytes queued for the disk writer beyond which new writes are refused (reported as
/// failed): a slow disk must not hold bodies the memory tier already let go of.
const DISK_QUEUE_LIMIT: usize = 64 << 20;

/// The disk tier as the driver reaches it.
struct DiskLink {
    disk: Arc<Disk>,
    ops: std::sync::mpsc::Sender<DiskOp>,
    queued: Arc<AtomicUsize>,
    runtime: tokio::runtime::Handle,
}

pub struct Driver {
    inner: Mutex<Inner>,
    /// The engine's next deadline, re-armed after every drain; `run_timers` sleeps on it.
    due: tokio::sync::watch::Sender<Option<SystemTime>>,
    next_client: AtomicU64,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    disk: OnceLock<DiskLink>,
    /// How to reach the other peers (`Output::FetchFromPeers`); set once at start-up.
    peers: OnceLock<Arc<PeerLink>>,
}

impl Driver {
    pub fn new(engine: Engine, upstream: Upstream, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Driver {
            inner: Mutex::new(Inner {
                engine,
                clients: HashMap::new(),
                fetches: HashMap::new(),
                memory: MemoryTier::new(),
                chains: HashMap::new(),
            }),
            due: tokio::sync::watch::Sender::new(None),
            next_client: AtomicU64::new(1),
            upstream,
            metrics,
            disk: OnceLock::new(),
            peers: OnceLock::new(),
        })
    }

    /// Gives the driver its peer link (the server's, so both send peer traffic alike and
    /// share its health). Call once, at start-up; without it peer fetches fail at once.
    pub fn attach_peers(&self, link: Arc<PeerLink>) {
        let _ = self.peers.set(link);
    }

    /// The peer link, once attached.
    pub fn peers(&self) -> Option<&Arc<PeerLink>> {
        self.peers.get()
    }

    /// Gives the engine its disk tier: starts the writer thread and, in the background,
    /// the scan that announces every complete entry on disk (serving starts at once; keys
    /// not yet announced are misses until then). Call once, inside the runtime.
    pub fn attach_disk(self: &Arc<Self>, disk: Arc<Disk>) {
        let (ops, rx) = std::sync::mpsc::channel::<DiskOp>();
        let queued = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let link = DiskLink {
            disk: disk.clone(),
            ops,
            queued: queued.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        if self.disk.set(link).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        let writer_disk = disk.clone();
        std::thread::Builder::new()
            .name("larder-disk-writer".into())
            .spawn(move || disk_writer(weak, writer_disk, rx, queued, failing))
            .expect("spawn the disk writer");
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("larder-disk-scan".into())
            .spawn(move || {
                let started = Instant::now();
                let mut batch = Vec::with_capacity(1024);
                let flush = |batch: &mut Vec<Input>| {
                    if let Some(d) = weak.upgrade() {
                        d.input_batch(std::mem::take(batch));
                    }
                };
                let (entries, bytes) = disk.scan(|entry, key, bytes| {
                    batch.push(Input::Restored { entry, key, bytes });
                    if batch.len() == 1024 {
                        flush(&mut batch);
                    }
                });
                flush(&mut batch);
                tracing::info!(
                    dir = %disk.dir().display(),
                    entries,
                    bytes,
                    millis = started.elapsed().as_millis() as u64,
                    "disk tier scanned"
                );
            })
            .expect("spawn the disk scan");
    }

    /// Several inputs under one lock (the start-up scan's announcements).
    fn input_batch(self: &Arc<Self>, inputs: Vec<Input>) {
        let mut inner = self.lock();
        for input in inputs {
            self.input_locked(&mut inner, input);
        }
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
                outcome,
                collapsed,
            }) => {
                inner.clients.remove(&id);
                Begin::Answered {
                    head,
                    body,
                    outcome,
                    collapsed,
                }
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
        inner.chains.remove(&id);
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
        let next = inner.engine.poll_timeout();
        self.due.send_if_modified(|due| {
            let changed = *due != next;
            *due = next;
            changed
        });
        let m = &self.metrics;
        let e = &inner.engine;
        m.cache_bytes.memory.set(e.stored_bytes() as i64);
        m.cache_bytes.disk.set(e.disk_bytes() as i64);
        m.cache_entries.memory.set(e.memory_entries() as i64);
        m.cache_entries.disk.set(e.disk_entries() as i64);
        m.disk_bytes.set(e.disk_bytes() as i64);
        m.hot_bytes.set(e.hot_bytes() as i64);
        self.metrics
            .disk_resting
            .set(inner.engine.disk_resting() as i64);
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
                        outcome: Outcome::Error,
                        collapsed: false,
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
            let body = match &ev {
                ClientEvent::Body(b) => b.len(),
                _ => 0,
            };
            // No disk read under way for anyone (the usual case): no lookup per chunk.
            let chained = match inner.chains.is_empty() {
                true => None,
                false => inner.chains.get_mut(&client),
            };
            match chained {
                Some(held) => {
                    lane.held.fetch_add(body, Ordering::Relaxed);
                    held.push_back(Chained::Event(ev));
                }
                None => {
                    lane.backlog.fetch_add(body, Ordering::Relaxed);
                    let _ = tx.send(ev);
                }
            }
        }
    }

    /// Sends pieces of a stored entry as the next part of a streamed body: a memory read
    /// at once, a disk read streamed, with what follows held until it is done.
    fn send_stored(self: &Arc<Self>, inner: &mut Inner, client: ClientId, body: StoredBody) {
        if body.tier == Tier::Memory {
            let ev = match inner.memory.read(&body) {
                Some(b) => {
                    self.metrics.bytes_from_cache.inc_by(b.len() as u64);
                    ClientEvent::Cached(b)
                }
                None => ClientEvent::Abort,
            };
            return Self::send(inner, client, ev);
        }
        // Opened now, in order with the outputs: a later delete cannot pull the file away.
        let opened = self.disk.get().map(|l| l.disk.open_body(body.entry));
        let Some(Ok(file)) = opened else {
            tracing::warn!(entry = %body.entry.name(), "disk entry vanished mid-response");
            self.metrics.disk_corrupt.inc();
            let me = self.clone();
            let entry = body.entry;
            tokio::spawn(async move { me.input(Input::LoadFailed { entry }) });
            return Self::send(inner, client, ClientEvent::Abort);
        };
        let file = Arc::new(file);
        if let Some(held) = inner.chains.get_mut(&client) {
            held.push_back(Chained::Disk(file, body));
            return;
        }
        self.stream_chained(inner, client, file, body);
    }

    /// Starts a disk read for a client's body; what the engine sends meanwhile is held.
    fn stream_chained(
        self: &Arc<Self>,
        inner: &mut Inner,
        client: ClientId,
        file: Arc<BodyFile>,
        body: StoredBody,
    ) {
        let Some((tx, lane)) = inner.clients.get(&client).cloned() else {
            return;
        };
        inner.chains.entry(client).or_default();
        let (me, metrics) = (self.clone(), self.metrics.clone());
        tokio::spawn(async move {
            if stream_from_disk(file, body.pieces, tx.clone(), lane, metrics).await {
                me.chain_next(client);
            } else {
                // Unreadable: the engine forgets the entry; the client's response ended.
                me.lock().chains.remove(&client);
                me.input(Input::LoadFailed { entry: body.entry });
            }
        });
    }

    /// A client's disk read is done: send what was held, up to the next disk read.
    fn chain_next(self: &Arc<Self>, client: ClientId) {
        let mut inner = self.lock();
        let Some(tx) = inner.clients.get(&client).map(|(tx, _)| tx.clone()) else {
            inner.chains.remove(&client);
            return;
        };
        let lane = inner.clients.get(&client).map(|(_, l)| l.clone());
        while let Some(next) = inner.chains.get_mut(&client).and_then(VecDeque::pop_front) {
            match next {
                Chained::Event(ev) => {
                    if let (ClientEvent::Body(b), Some(lane)) = (&ev, &lane) {
                        lane.held.fetch_sub(b.len(), Ordering::Relaxed);
                        lane.backlog.fetch_add(b.len(), Ordering::Relaxed);
                    }
                    let _ = tx.send(ev);
                }
                Chained::Disk(file, body) => {
                    let rest = inner.chains.remove(&client).unwrap_or_default();
                    self.stream_chained(&mut inner, client, file, body);
                    inner.chains.insert(client, rest);
                    return;
                }
            }
        }
        inner.chains.remove(&client);
    }

    /// Feeds a body chunk; true when the fill may read on at once (no client of it is
    /// behind), so [`pace`](Self::pace) — another lock and a list — is needed only then.
    pub fn input_body(self: &Arc<Self>, fetch: FetchId, chunk: Bytes) -> bool {
        let mut inner = self.lock();
        self.input_locked(&mut inner, Input::UpstreamBody { fetch, chunk });
        let inner = &*inner;
        !inner.engine.fetch_clients(fetch).any(|c| {
            inner
                .clients
                .get(&c)
                .is_some_and(|(_, lane)| lane.live() && lane.behind())
        })
    }

    /// The lanes of the clients a fetch feeds now (followers that joined included).
    fn lanes_of(&self, fetch: FetchId) -> Vec<Arc<Lane>> {
        let inner = self.lock();
        inner
            .engine
            .fetch_clients(fetch)
            .filter_map(|c| inner.clients.get(&c).map(|(_, l)| l.clone()))
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
            Output::Respond {
                client,
                head,
                body: ResponseBody::Stored(stored),
                outcome,
                collapsed,
            } => self.respond_stored(inner, client, head, stored, (outcome, collapsed)),
            Output::Respond {
                client,
                head,
                body,
                outcome,
                collapsed,
            } => Self::send(
                inner,
                client,
                ClientEvent::Respond {
                    head,
                    body,
                    outcome,
                    collapsed,
                },
            ),
            Output::Interim { client, head } => {
                Self::send(inner, client, ClientEvent::Interim(head))
            }
            Output::Body { client, chunk } => Self::send(inner, client, ClientEvent::Body(chunk)),
            Output::BodyStored { client, body } => self.send_stored(inner, client, body),
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
            Output::FetchFromPeers {
                fetch,
                peers,
                request,
            } => {
                self.metrics.peer_fetches.inc();
                let task = crate::upstream::fetch_from_peers(self.clone(), fetch, peers, request);
                let handle = tokio::spawn(task).abort_handle();
                inner.fetches.insert(fetch, handle);
            }
            Output::CancelFetch { fetch } => {
                if let Some(h) = inner.fetches.remove(&fetch) {
                    h.abort();
                }
            }
            Output::InvalidatePeers {
                key,
                peers,
                selector,
            } => {
                if let Some(link) = self.peers().cloned() {
                    tokio::spawn(invalidate_peers(link, key, peers, selector));
                }
            }
            Output::Write {
                entry,
                tier: Tier::Memory,
                body,
                ..
            } => {
                inner.memory.insert(entry, body);
                self.metrics.stored.inc();
            }
            Output::Write {
                entry,
                tier: Tier::Disk,
                meta,
                body,
                ..
            } => self.disk_write(inner, entry, meta, body),
            Output::Delete {
                entry,
                tier: Tier::Memory,
                ..
            } => {
                inner.memory.remove(entry);
                self.metrics.evictions.inc();
            }
            Output::Delete {
                entry,
                tier: Tier::Disk,
                ..
            } => {
                if let Some(link) = self.disk.get() {
                    let _ = link.ops.send(DiskOp::Delete { entry });
                }
            }
            Output::UpdateMeta {
                entry,
                tier: Tier::Disk,
                meta,
                ..
            } => {
                if let Some(link) = self.disk.get() {
                    let _ = link.ops.send(DiskOp::UpdateMeta { entry, meta });
                }
            }
            // The memory tier keeps bodies only: its entries' metadata is the engine's.
            Output::UpdateMeta {
                tier: Tier::Memory, ..
            } => {}
            Output::Load { entry, body } => self.disk_load(entry, body),
            // `Output` is non-exhaustive: an output newer than this adapter is logged and
            // ignored, not a build failure.
            other => tracing::warn!(?other, "unknown engine output ignored"),
        }
    }

    /// Queues a disk write; refused at once (and reported) when the writer is too far
    /// behind or there is no disk tier.
    fn disk_write(self: &Arc<Self>, inner: &mut Inner, entry: EntryId, meta: Bytes, body: Bytes) {
        let Some(link) = self.disk.get() else {
            return;
        };
        let len = body.len() + meta.len();
        if link.queued.load(Ordering::Relaxed) + len > DISK_QUEUE_LIMIT {
            // Reported after this drain: the engine is busy now.
            let me = self.clone();
            link.runtime.spawn(async move {
                me.input(Input::WriteFailed {
                    entry,
                    tier: Tier::Disk,
                    error: StorageError::Full,
                })
            });
            return;
        }
        link.queued.fetch_add(len, Ordering::Relaxed);
        let _ = link.ops.send(DiskOp::Write { entry, meta, body });
        let _ = inner;
    }

    /// Reads an entry back (checked) off the runtime's threads, then reports it.
    fn disk_load(self: &Arc<Self>, entry: EntryId, body: bool) {
        let Some(link) = self.disk.get() else {
            // No disk tier: nothing to load.
            let me = self.clone();
            tokio::spawn(async move { me.input(Input::LoadFailed { entry }) });
            return;
        };
        let disk = link.disk.clone();
        let me = self.clone();
        link.runtime.spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || disk.load(entry, body)).await;
            me.metrics.disk_loads.inc();
            let input = match loaded {
                Ok(Ok(l)) => Input::Loaded {
                    entry,
                    meta: l.meta,
                    body: l.body,
                },
                Ok(Err(e)) => {
                    if !matches!(e, LoadError::Missing) {
                        me.metrics.disk_corrupt.inc();
                        tracing::warn!(entry = %entry.name(), error = %e, "disk entry unusable: refetching");
                    }
                    Input::LoadFailed { entry }
                }
                Err(_) => Input::LoadFailed { entry },
            };
            me.input(input);
        });
    }

    /// Answers from a tier: a memory body at once, a disk body streamed in bounded chunks
    /// (paced by the client like a fill).
    fn respond_stored(
        self: &Arc<Self>,
        inner: &mut Inner,
        client: ClientId,
        head: response::Parts,
        stored: StoredBody,
        (outcome, collapsed): (Outcome, bool),
    ) {
        if outcome.from_store() {
            let tier = match stored.tier {
                Tier::Memory => &self.metrics.hits_memory,
                _ => &self.metrics.hits_disk,
            };
            tier.inc();
        }
        if stored.tier == Tier::Memory {
            let event = match inner.memory.read(&stored) {
                Some(b) => ClientEvent::Respond {
                    head,
                    body: ResponseBody::Full(b),
                    outcome,
                    collapsed,
                },
                None => stored_body_missing(),
            };
            return Self::send(inner, client, event);
        }
        // Opened now, in order with the outputs: a later delete cannot pull the file away.
        let opened = self.disk.get().map(|l| l.disk.open_body(stored.entry));
        let Some(Ok(file)) = opened else {
            tracing::warn!(entry = %stored.entry.name(), "disk entry vanished: refetching");
            self.metrics.disk_corrupt.inc();
            let me = self.clone();
            let entry = stored.entry;
            tokio::spawn(async move { me.input(Input::LoadFailed { entry }) });
            return Self::send(inner, client, stored_body_missing());
        };
        let Some((tx, lane)) = inner.clients.get(&client).cloned() else {
            return;
        };
        Self::send(
            inner,
            client,
            ClientEvent::Respond {
                head,
                body: ResponseBody::Stream,
                outcome,
                collapsed,
            },
        );
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if stream_from_disk(Arc::new(file), stored.pieces, tx.clone(), lane, metrics).await {
                let _ = tx.send(ClientEvent::End);
            }
        });
    }

    /// Delivers `Input::Timeout` when the engine's next deadline comes (collapse deadlines).
    /// The timer is re-armed after every drain, so a follower gives up on time, not at the
    /// next poll, and an idle peer does not wake at all.
    pub async fn run_timers(self: Arc<Self>) {
        let mut due = self.due.subscribe();
        loop {
            let next = *due.borrow_and_update();
            let Some(at) = next else {
                if due.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait) => self.input(Input::Timeout),
                changed = due.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Read access to the engine (ring, counters) for the client library and tests.
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.lock().engine)
    }

    /// The engine's policy and passthrough replaced (a live reload); nothing stored is lost.
    pub fn reconfigure(
        &self,
        policy: larder_core::policy::PolicyConfig,
        passthrough: Vec<String>,
    ) -> Result<(), String> {
        self.lock()
            .engine
            .reconfigure(policy, passthrough)
            .map_err(|e| e.to_string())
    }
}

/// A 500 for a body the index promised and the tier does not hold (never a short body).
fn stored_body_missing() -> ClientEvent {
    let (head, body) = larder_core::engine::error_response(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        &CacheStatus::default().with_detail("stored-body-missing"),
        "the stored body could not be read; try again",
    );
    ClientEvent::Respond {
        head,
        body: ResponseBody::Full(body),
        outcome: Outcome::Error,
        collapsed: false,
    }
}

/// Streams pieces of a disk entry to one client, 256 KiB at a time, waiting while the
/// client is behind; a read error aborts the response (the client sees it truncated).
/// True when every piece was sent.
async fn stream_from_disk(
    file: Arc<BodyFile>,
    pieces: Vec<Piece>,
    tx: mpsc::UnboundedSender<ClientEvent>,
    lane: Arc<Lane>,
    metrics: Arc<Metrics>,
) -> bool {
    let send = |b: Bytes| {
        lane.backlog.fetch_add(b.len(), Ordering::Relaxed);
        tx.send(ClientEvent::Body(b)).is_ok()
    };
    for piece in pieces {
        match piece {
            Piece::Literal(b) => {
                if !send(b) {
                    return false;
                }
            }
            Piece::Slice { mut start, mut len } => {
                while len > 0 {
                    while lane.queue_behind() && lane.live() && !tx.is_closed() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if !lane.live() || tx.is_closed() {
                        return false;
                    }
                    // From the page cache inline when it has the bytes; else on a
                    // blocking thread, which may wait on the device.
                    let chunk = match file.read_cached(start, len, crate::disk::CHUNK) {
                        Some(c) => c,
                        None => {
                            let f = file.clone();
                            let read = tokio::task::spawn_blocking(move || {
                                f.read_at(start, len, crate::disk::CHUNK)
                            })
                            .await;
                            match read {
                                Ok(Ok(c)) if !c.is_empty() => c,
                                _ => {
                                    let _ = tx.send(ClientEvent::Abort);
                                    return false;
                                }
                            }
                        }
                    };
                    start += chunk.len() as u64;
                    len -= chunk.len() as u64;
                    metrics.bytes_from_cache.inc_by(chunk.len() as u64);
                    if !send(chunk) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// The disk writer: carries out writes and deletes in order; a failed write is reported
/// to the engine (which rests the tier) and said once in the log.
fn disk_writer(
    driver: Weak<Driver>,
    disk: Arc<Disk>,
    ops: std::sync::mpsc::Receiver<DiskOp>,
    queued: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
) {
    while let Ok(op) = ops.recv() {
        match op {
            DiskOp::Delete { entry } => disk.delete(entry),
            // A failed update leaves the older record, which is sound (it revalidates again):
            // counted and logged, not reported.
            DiskOp::UpdateMeta { entry, meta } => match disk.update_meta(entry, &meta) {
                Ok(_) => {}
                Err(error) => {
                    if let Some(d) = driver.upgrade() {
                        d.metrics.disk_write_failures.inc();
                    }
                    tracing::debug!(?entry, ?error, "disk tier metadata update failed");
                }
            },
            DiskOp::Write { entry, meta, body } => {
                let result = disk.write(entry, &meta, &body);
                queued.fetch_sub(meta.len() + body.len(), Ordering::Relaxed);
                let Some(d) = driver.upgrade() else {
                    return;
                };
                match result {
                    Ok(_) => {
                        d.metrics.disk_writes.inc();
                        if failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("disk tier writable again");
                        }
                    }
                    Err(error) => {
                        d.metrics.disk_write_failures.inc();
                        if !failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                dir = %disk.dir().display(),
                                ?error,
                                "disk tier write failed: serving from memory and origins, \
                                 not storing to disk for a while"
                            );
                        }
                        d.input(Input::WriteFailed {
                            entry,
                            tier: Tier::Disk,
                            error,
                        });
                    }
                }
            }
        }
    }
}

/// Tells each peer to drop its copies of `key` (a signed `PURGE`, limited to that peer).
/// Fire and forget: a peer that misses it keeps its copy until the copy is stale.
async fn invalidate_peers(
    link: Arc<PeerLink>,
    key: larder_core::CacheKey,
    peers: Vec<String>,
    selector: Option<larder_core::purge::Selector>,
) {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        larder_core::hop::PURGE_SCOPE,
        http::HeaderValue::from_static("local"),
    );
    for (name, value) in selector.iter().flat_map(|s| s.fields()) {
        headers.insert(name, value);
    }
    let method = http::Method::from_bytes(larder_core::engine::PURGE.as_bytes()).expect("token");
    for peer in peers {
        let sent = link
            .forward(
                std::slice::from_ref(&peer),
                &method,
                key.as_str(),
                &headers,
                &None,
                |peer, why| tracing::debug!(%peer, "invalidation not delivered: {why}"),
            )
            .await;
        if sent.is_none() {
            tracing::info!(%peer, key = key.as_str(), "a peer missed an invalidation");
        }
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

    // ---- fetches from peers ------------------------------------------------------------
    //
    // The engine emits `FetchFromPeers` only with a hot cache of remote keys; these tests
    // take an ordinary miss's fetch away from the origin before it runs and answer it with
    // `fetch_from_peers`, so the engine waits on it exactly as it would on a peer fetch.

    use crate::peers::stand_in;

    fn get(url: &str) -> request::Parts {
        http::Request::get(url).body(()).unwrap().into_parts().0
    }

    /// Starts a miss for `url` and stops its origin fetch before it ran.
    fn miss(d: &Arc<Driver>, url: &str) -> (ClientId, Events, FetchId) {
        let Begin::Pending {
            id,
            rx,
            first: None,
        } = d.begin(get(url), Route::Local)
        else {
            panic!("a miss waits for its fetch");
        };
        let inner = d.lock();
        let [(&fetch, handle)] = inner.fetches.iter().collect::<Vec<_>>()[..] else {
            panic!("one fetch for one miss");
        };
        handle.abort();
        (id, rx, fetch)
    }

    /// The client's response: its status, body, and whether it ended whole.
    async fn response(rx: &mut Events) -> (http::StatusCode, Vec<u8>, bool) {
        let (status, mut body) = match rx.recv().await {
            Some(ClientEvent::Respond { head, body, .. }) => match body {
                ResponseBody::Stream => (head.status, Vec::new()),
                ResponseBody::Full(b) => return (head.status, b.to_vec(), true),
                ResponseBody::Empty => return (head.status, Vec::new(), true),
                ResponseBody::Stored(_) => panic!("stored bodies reach clients read"),
            },
            other => panic!("expected a response, got {other:?}"),
        };
        loop {
            match rx.recv().await {
                Some(ClientEvent::Body(b) | ClientEvent::Cached(b)) => body.extend_from_slice(&b),
                Some(ClientEvent::End) => return (status, body, true),
                Some(ClientEvent::Abort) => return (status, body, false),
                other => panic!("expected the body, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_fetch_from_peers_feeds_the_engine_like_an_origin_fetch() {
        let (owner, seen) = stand_in::serve(200, "from the owner").await;
        let d = driver();
        d.attach_peers(Arc::new(stand_in::link(Some("sesame"))));
        let url = "http://127.0.0.1:9/peer-fetched";
        let (id, mut rx, fetch) = miss(&d, url);
        let peers = vec![stand_in::refused(), owner];
        crate::upstream::fetch_from_peers(d.clone(), fetch, peers, get(url)).await;
        let (status, body, whole) = response(&mut rx).await;
        assert_eq!(
            (status.as_u16(), &body[..], whole),
            (200, &b"from the owner"[..], true)
        );
        d.release(id);
        assert!(
            d.lock().fetches.is_empty(),
            "the finished fetch is forgotten"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(
            seen.lock().unwrap()[0].headers[larder_core::hop::HOP],
            stand_in::SELF_ID
        );
        assert_eq!(d.metrics.peer_errors.get(), 1, "the refused peer");
        assert_eq!(d.metrics.bytes_from_peers.get(), 14);
        assert_eq!(d.metrics.bytes_from_origin.get(), 0);
        // Stored like any fill: the next request is a hit.
        match d.begin(get(url), Route::Local) {
            Begin::Answered { head, body, .. } => {
                assert_eq!(head.status, http::StatusCode::OK);
                assert!(matches!(body, ResponseBody::Full(b) if b == "from the owner"));
            }
            Begin::Pending { .. } => panic!("a hit is answered at once"),
        }
    }

    #[tokio::test]
    async fn every_peer_failing_fails_the_fetch() {
        let d = driver();
        // No peer link at all: failed at once.
        let (_, mut rx, fetch) = miss(&d, "http://127.0.0.1:9/a");
        crate::upstream::fetch_from_peers(d.clone(), fetch, vec![], get("http://127.0.0.1:9/a"))
            .await;
        let (status, _, _) = response(&mut rx).await;
        assert!(status.is_server_error(), "{status}");
        // Every peer refusing its connection.
        d.attach_peers(Arc::new(stand_in::link(None)));
        let (_, mut rx, fetch) = miss(&d, "http://127.0.0.1:9/b");
        let peers = vec![stand_in::refused(), stand_in::refused()];
        crate::upstream::fetch_from_peers(d.clone(), fetch, peers, get("http://127.0.0.1:9/b"))
            .await;
        let (status, _, _) = response(&mut rx).await;
        assert_eq!(status, http::StatusCode::BAD_GATEWAY);
        assert_eq!(d.metrics.peer_errors.get(), 2);
        assert!(d.lock().fetches.is_empty());
    }

    #[tokio::test]
    async fn a_peer_body_cut_short_is_truncated() {
        // Declares 100 bytes, sends 5, closes.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (conn, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
            let mut w = conn;
            let _ = w.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=60\r\n\r\nshort",
            );
        });
        let d = driver();
        d.attach_peers(Arc::new(stand_in::link(None)));
        let url = "http://127.0.0.1:9/cut";
        let (id, mut rx, fetch) = miss(&d, url);
        crate::upstream::fetch_from_peers(d.clone(), fetch, vec![peer], get(url)).await;
        let (status, body, whole) = response(&mut rx).await;
        assert_eq!(
            (status.as_u16(), &body[..], whole),
            (200, &b"short"[..], false)
        );
        d.release(id);
        assert!(d.lock().fetches.is_empty());
        // Not stored: the next request misses again.
        assert!(matches!(
            d.begin(get(url), Route::Local),
            Begin::Pending { .. }
        ));
    }

    #[tokio::test]
    async fn a_real_owner_serves_a_signed_fetch_itself() {
        let (origin, hits) = stand_in::serve(200, "origin body").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = crate::Args {
            allow_destination: vec!["127.0.0.0/8".into()],
            peer_secret: Some("sesame".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        settings.listen = listener.local_addr().unwrap();
        let owner = crate::server::start_on(listener, settings).await.unwrap();
        let peers = vec![format!("http://{}", owner.addr)];
        let url = format!("{origin}/shared?x=1&y=%20");
        // Two entry peers asking for one key: the owner fetches from the origin once and
        // serves its copy the second time (each signature admitted once, never mistaken
        // for a replay).
        for _ in 0..2 {
            let d = driver();
            d.attach_peers(Arc::new(stand_in::link(Some("sesame"))));
            let (id, mut rx, fetch) = miss(&d, &url);
            crate::upstream::fetch_from_peers(d.clone(), fetch, peers.clone(), get(&url)).await;
            let (status, body, whole) = response(&mut rx).await;
            assert_eq!(
                (status.as_u16(), &body[..], whole),
                (200, &b"origin body"[..], true)
            );
            d.release(id);
            assert_eq!(d.metrics.peer_errors.get(), 0, "the owner accepted it");
            assert_eq!(d.metrics.bytes_from_origin.get(), 0);
        }
        assert_eq!(hits.lock().unwrap().len(), 1, "the owner's origin, once");
        assert_eq!(owner.state.metrics.origin_fetches.get(), 1);
        owner.shutdown(Duration::from_millis(100)).await;
    }
}
