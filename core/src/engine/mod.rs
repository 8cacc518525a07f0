//! The engine: one state machine that combines routing, lookup, coalescing, fetching,
//! storing and eviction.
//!
//! Driven like str0m's `Rtc`: one mutation with [`Engine::handle_input`], then drain
//! [`Engine::poll_output`] until `None`, then wait for I/O or [`Engine::poll_timeout`].
//! Every decision is an [`Output`]; the adapter only moves bytes and keeps time.

mod assembly;
mod deadlines;
mod flights;
mod hit_for_miss;
mod io;
mod popularity;
mod respond;
mod segment_index;
mod store;

pub use hit_for_miss::HIT_FOR_MISS_MAX;
pub use io::{ClientId, FetchId, Input, Output, ResponseBody, Route, UpstreamError};
pub use respond::error_response;

use crate::cache_status::{CacheStatus, Fwd};
use crate::eviction::EvictionPolicy;
use crate::key::{CacheKey, SegmentKey};
use crate::policy::{self, NotStored, Policy, PolicyConfig, Reuse, Revalidated, Stored};
use crate::range;
use crate::ring::{PeerSelection, RingKind};
use crate::segment::{self, SegmentAnswer, Segments};
use crate::storage::entry::{self, Meta};
use crate::storage::{EntryId, StorageError, Tier};
use bytes::{Bytes, BytesMut};
use deadlines::Deadlines;
use flights::{Flights, Release};
use hashbrown::HashMap;
use hit_for_miss::HitForMiss;
use http::{Method, StatusCode, header, request, response};
use popularity::Popularity;
use segment_index::SegmentIndex;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};
use store::{Change, Hot, Store};

/// Everything the engine is told at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// What is stored and for how long (RFC 9111 plus the proxy's own limits).
    pub policy: PolicyConfig,
    /// Bytes of memory for stored responses.
    pub memory: u64,
    /// How keys are placed on peers; every member of a cluster must use the same.
    pub ring: RingKind,
    /// This node's peer id (its URL), when it is part of a cluster.
    pub self_id: Option<String>,
    /// Every peer, this one included or not.
    pub peers: Vec<String>,
    /// Range segment size; `None` turns segment fetching off.
    pub segment_size: Option<u64>,
    /// Segments of a large object fetched ahead of the one being sent to a client (each
    /// buffers at most one segment for that client).
    pub segment_read_ahead: usize,
    /// Store large objects as segments even when the origin gives them no validator (no
    /// strong ETag, no Last-Modified): only the length then tells two versions apart, so a
    /// change that keeps the length could splice. Off: such objects are fetched whole.
    pub segment_unvalidated: bool,
    /// How long a request waits behind another's fetch before fetching on its own.
    pub collapse_timeout: Duration,
    /// How long a key whose response could not be stored skips coalescing (hit-for-miss).
    pub hit_for_miss: Duration,
    /// Regular expressions over the URL's path (the query is not part of what they see):
    /// matching requests are never cached.
    pub passthrough: Vec<String>,
    /// Bytes of the disk tier (its high watermark); 0: no disk tier.
    pub disk: u64,
    /// When the disk tier passes `disk`, it is cleaned down to this (low watermark).
    pub disk_clean_to: u64,
    /// The first entry id this engine hands out. Ids must never repeat in a tier, across
    /// restarts and (in Spin) across instances: give the start time in nanoseconds, or a
    /// random number.
    pub first_entry_id: u64,
    /// Bytes of `memory` for hot copies of keys other peers own (groupcache's hot cache);
    /// 0: none. A remote key asked for `hot_after` times within `hot_window` is fetched
    /// from its owner through this peer (`Output::FetchFromPeers`) and kept, within its
    /// freshness; until then requests are forwarded.
    pub hot_memory: u64,
    /// Requests for a remote key, within `hot_window`, that earn it a hot copy.
    pub hot_after: u32,
    /// The window `hot_after` is counted in.
    pub hot_window: Duration,
    /// A 304's refresh is written to the disk tier (`Output::UpdateMeta`) only when it
    /// leaves the entry fresh for at least this long: the rewrite copies the body, which is
    /// not worth it for an entry stale again soon (`max-age=0` revalidated on every
    /// request). A runtime whose engine lives for one request (Spin) wants 0.
    pub persist_refresh_min_ttl: Duration,
    /// The eviction policy of the memory, hot-copy and disk budgets.
    pub eviction: EvictionPolicy,
    /// The largest body kept in memory (at most, and by default, 1/8 of `memory`); larger
    /// bodies are served from the disk tier with their metadata in memory.
    pub memory_max_object: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: PolicyConfig::default(),
            memory: 256 << 20,
            ring: RingKind::Rendezvous,
            self_id: None,
            peers: Vec::new(),
            segment_size: Some(segment::DEFAULT_SEGMENT_SIZE),
            segment_read_ahead: 3,
            segment_unvalidated: false,
            collapse_timeout: Duration::from_secs(5),
            hit_for_miss: Duration::from_secs(120),
            passthrough: Vec::new(),
            disk: 0,
            disk_clean_to: 0,
            first_entry_id: 0,
            hot_memory: 0,
            hot_after: 3,
            hot_window: Duration::from_secs(60),
            persist_refresh_min_ttl: Duration::from_secs(60),
            eviction: EvictionPolicy::default(),
            memory_max_object: 0,
        }
    }
}

/// How long the disk tier rests after a write failed for lack of space (or at all) before
/// the engine tries it again. Entries already on disk keep serving meanwhile.
pub const DISK_RETRY: Duration = Duration::from_secs(60);

/// The cache-admin method that drops a URL from the cluster (Squid's and Varnish's).
pub const PURGE: &str = "PURGE";

/// Most Vary variants kept for one URL (the oldest goes first): a response that varies on a
/// field clients choose freely must not grow a list every request for the URL then walks.
pub const MAX_VARIANTS: usize = 32;

/// A bad configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug)]
struct Client {
    req: request::Parts,
    key: CacheKey,
    phase: Phase,
    collapsed: bool,
    fwd: Fwd,
    /// Replayed after its entries were loaded: entries still cold are misses now.
    replayed: bool,
}

/// Where a client's request stands with respect to the fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Attached to no fetch: being looked up, or released to fetch again.
    Unattached,
    /// Waiting for the head of this fetch (as its leader or a follower).
    Waiting(FetchId),
    /// Receiving this fetch's body. `window`: the absolute byte range still to deliver,
    /// when the client asked for one range.
    Streaming {
        fetch: FetchId,
        window: Option<range::ByteRange>,
    },
    /// Receiving a large object assembled from its segments (`Engine::assemblies`).
    Assembling,
}

impl Phase {
    /// The fetch the client is attached to.
    fn fetch(self) -> Option<FetchId> {
        match self {
            Phase::Unattached | Phase::Assembling => None,
            Phase::Waiting(f) | Phase::Streaming { fetch: f, .. } => Some(f),
        }
    }
}

impl Client {
    fn streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming { .. } | Phase::Assembling)
    }

    /// A request not yet attached to anything: a URI miss until the lookup says otherwise.
    fn new(req: request::Parts, key: CacheKey) -> Self {
        Client {
            req,
            key,
            phase: Phase::Unattached,
            collapsed: false,
            fwd: Fwd::UriMiss,
            replayed: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchKind {
    Fill,
    Revalidate {
        variant: EntryId,
    },
    /// One segment from the origin, stored here.
    Segment {
        index: u64,
    },
    /// A whole response from the key's owner, for this peer's hot copy.
    Remote,
    /// Segment 0 of an object not known here, for a GET of it: a small object arrives
    /// whole (stored as the key), a large one as its segment 0 (stored as such, its clients
    /// served from segments), an origin ignoring Range answers 200 (a plain fill).
    Probe,
    /// One segment of a large object from the peer that owns it (not stored here).
    Part {
        index: u64,
    },
}

impl FetchKind {
    fn is_part(self) -> bool {
        matches!(self, FetchKind::Part { .. })
    }
}

#[derive(Debug)]
struct Fetch {
    /// The key this fetch fills (a segment key for segment fetches).
    key: CacheKey,
    object_key: CacheKey,
    sent: request::Parts,
    kind: FetchKind,
    clients: Vec<ClientId>,
    /// The head as clients see it (a segment's 200 view carries the whole length).
    head: Option<response::Parts>,
    storing: Option<Stored>,
    not_stored: Option<NotStored>,
    chunks: Vec<Bytes>,
    received: u64,
    /// Offset of the first body byte within the object (segment start).
    base: u64,
    total: Option<u64>,
    declared: Option<u64>,
    upstream_status: Option<u16>,
    retried: bool,
    /// The peers a `Remote` fetch asks (its clients released later ask them too).
    peers: Option<Vec<String>>,
    /// The head as the origin sent it, for the client that caused the fetch, when preparing
    /// it for the cache changed it (`no-cache="Set-Cookie"` strips the cookie from what is
    /// stored and shared, never from the answer to the request that asked for it).
    leader_head: Option<(ClientId, response::Parts)>,
    /// Assembling clients this fetch feeds one segment of (`Engine::assemblies`).
    feeds: Vec<ClientId>,
    /// A `Revalidate` of a large object's segment 0 (decided when it starts: the entry may
    /// be gone when the answer comes).
    segment0: bool,
}

/// Requests for one key waiting on loads from the disk tier.
#[derive(Debug, Default)]
struct Parked {
    loads: usize,
    clients: Vec<(ClientId, request::Parts)>,
}

/// The sans-IO caching proxy.
pub struct Engine {
    config: Config,
    policy: Policy,
    ring: PeerSelection,
    passthrough: Vec<regex_lite::Regex>,
    store: Store,
    segments: SegmentIndex,
    clients: HashMap<ClientId, Client>,
    /// Responses of large objects being assembled from segments, by client.
    assemblies: HashMap<ClientId, assembly::Assembly>,
    /// Assemblies waiting for a segment's records to load from disk, by segment key.
    part_loads: HashMap<CacheKey, Vec<ClientId>>,
    /// Requests answered anew once because their object changed mid-assembly.
    restarted: hashbrown::HashSet<ClientId>,
    fetches: HashMap<FetchId, Fetch>,
    flights: Flights,
    /// When waiting followers give up on their flight.
    deadlines: Deadlines,
    hit_for_miss: HitForMiss,
    /// Objects lately found large but not segmentable (no validator, or the origin ignores
    /// Range): fetched whole for a while, without asking for their first segment first.
    whole_only: HitForMiss,
    /// Requests for remote keys, to pick the ones worth a hot copy.
    popularity: Popularity,
    /// Unsafe requests passed upstream, waiting for their status to invalidate.
    unsafe_passes: HashMap<ClientId, CacheKey>,
    /// Disk loads under way, and the key each one is for.
    loads: HashMap<EntryId, CacheKey>,
    /// Requests waiting for their key's entries to load, by key.
    parked: HashMap<CacheKey, Parked>,
    /// The disk tier is not written to before this (a write failed).
    disk_rest_until: Option<SystemTime>,
    outputs: VecDeque<Output>,
    next_fetch: u64,
    /// Assemblies begun so far (`assembly::Assembly::generation`).
    next_assembly: u64,
    now: SystemTime,
}

impl Engine {
    /// An empty engine; fails on a configuration it cannot run (a bad passthrough regex,
    /// a zero segment size) rather than misbehaving later.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let passthrough = compile_passthrough(&config.passthrough)?;
        if config.segment_size == Some(0) {
            return Err(ConfigError("segment size must be positive".into()));
        }
        Ok(Engine {
            policy: Policy::new(config.policy.clone()),
            ring: PeerSelection::new(config.ring, &config.peers),
            store: Store::new(
                config.eviction,
                config.memory,
                config.hot_memory,
                config.policy.max_object_size,
                config.disk,
                if config.disk_clean_to == 0 {
                    config.disk / 10 * 9
                } else {
                    config.disk_clean_to
                },
                config.first_entry_id,
            )
            .with_memory_max_object(config.memory_max_object),
            passthrough,
            config,
            segments: SegmentIndex::default(),
            clients: HashMap::new(),
            assemblies: HashMap::new(),
            restarted: hashbrown::HashSet::new(),
            part_loads: HashMap::new(),
            fetches: HashMap::new(),
            flights: Flights::default(),
            deadlines: Deadlines::default(),
            hit_for_miss: HitForMiss::default(),
            whole_only: HitForMiss::default(),
            popularity: Popularity::default(),
            unsafe_passes: HashMap::new(),
            loads: HashMap::new(),
            parked: HashMap::new(),
            disk_rest_until: None,
            outputs: VecDeque::new(),
            next_fetch: 0,
            next_assembly: 0,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    /// Applies a new storage policy (freshness rules, minimum TTL, private mode, stale
    /// limits ...) and passthrough patterns to what comes next, keeping everything stored:
    /// the operator's live reload. Entries already stored keep the lifetime they were given.
    /// Memory, disk and segment sizes are fixed for an engine's life.
    pub fn reconfigure(
        &mut self,
        policy: crate::policy::PolicyConfig,
        passthrough: Vec<String>,
    ) -> Result<(), ConfigError> {
        self.passthrough = compile_passthrough(&passthrough)?;
        self.config.passthrough = passthrough;
        self.policy = Policy::new(policy.clone());
        self.config.policy = policy;
        Ok(())
    }

    /// The configuration in force (`peers` follows `Input::PeersChanged`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current peer set, as changed by `Input::PeersChanged`.
    pub fn ring(&self) -> &PeerSelection {
        &self.ring
    }

    /// Bytes the memory tier holds (bodies and the metadata of hot entries).
    pub fn stored_bytes(&self) -> u64 {
        self.store.memory_bytes()
    }

    /// Bytes of hot copies of keys other peers own (part of [`Engine::stored_bytes`]).
    pub fn hot_bytes(&self) -> u64 {
        self.store.remote_bytes()
    }

    /// Entries whose metadata is in memory (with or without their body).
    pub fn memory_entries(&self) -> usize {
        self.store.memory_entries()
    }

    /// Entries the disk tier holds.
    pub fn disk_entries(&self) -> usize {
        self.store.disk_entries()
    }

    /// Bytes the disk tier holds.
    pub fn disk_bytes(&self) -> u64 {
        self.store.disk_bytes()
    }

    /// Whether the disk tier is resting after a failed write (nothing new goes to disk).
    pub fn disk_resting(&self) -> bool {
        self.disk_rest_until.is_some_and(|t| t > self.now)
    }

    /// Entries indexed, in either tier (a gauge for metrics).
    pub fn stored_entries(&self) -> usize {
        self.store.len()
    }

    /// Requests and fetches the engine is tracking (zero when idle: nothing leaks).
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.clients.len() + self.parked.values().map(|p| p.clients.len()).sum::<usize>(),
            self.fetches.len() + self.loads.len(),
        )
    }

    /// The clients a fetch is feeding now (empty for an unknown fetch): adapters pace a
    /// fill by them (read on while any keeps up).
    pub fn fetch_clients(&self, fetch: FetchId) -> impl Iterator<Item = ClientId> + '_ {
        self.fetches
            .get(&fetch)
            .into_iter()
            .flat_map(|f| f.clients.iter().chain(f.feeds.iter()).copied())
    }

    /// The next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to deliver `Input::Timeout` next.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.deadlines.next()
    }

    /// Applies one input at `now`.
    pub fn handle_input(&mut self, now: SystemTime, input: Input) {
        let now = crate::time::clamp(now);
        if now < self.now {
            // The clock stepped back: a wait may not grow by the step.
            self.deadlines
                .cap(crate::time::after(now, self.config.collapse_timeout));
        }
        self.now = now;
        match input {
            Input::Request {
                client,
                head,
                route,
            } => self.on_request(client, head, route),
            Input::UpstreamHead { fetch, head } => self.on_head(fetch, head),
            Input::UpstreamInterim { fetch, head } => self.on_interim(fetch, &head),
            Input::UpstreamBody { fetch, chunk } => self.on_body(fetch, chunk),
            Input::UpstreamEnd { fetch } => self.on_end(fetch),
            Input::UpstreamError { fetch, error } => self.on_error(fetch, error),
            Input::ClientGone { client } => {
                self.unsafe_passes.remove(&client);
                for p in self.parked.values_mut() {
                    p.clients.retain(|(c, _)| *c != client);
                }
                self.on_client_gone(client)
            }
            Input::Restored { entry, key, bytes } => self.on_restored(entry, key, bytes),
            Input::Loaded { entry, meta, body } => self.on_loaded(entry, Some((meta, body))),
            Input::LoadFailed { entry } => self.on_loaded(entry, None),
            Input::WriteFailed { entry, tier, error } => self.on_write_failed(entry, tier, error),
            Input::PassResponse { client, head } => self.on_pass_response(client, &head),
            Input::PeersChanged { peers } => {
                self.ring = PeerSelection::new(self.config.ring, &peers);
                self.config.peers = peers;
            }
            Input::Timeout => self.on_timeout(),
        }
        debug_assert!(
            self.deadlines.len() <= self.clients.len(),
            "a deadline outlived its client"
        );
        debug_assert!(
            self.assemblies.len() <= self.clients.len(),
            "an assembly outlived its client"
        );
    }

    // ---- requests -------------------------------------------------------------------

    fn on_request(&mut self, cid: ClientId, head: request::Parts, route: Route) {
        self.lookup(cid, head, route, false)
    }

    /// Routes and looks a request up; `replayed` once its key's entries were loaded.
    fn lookup(&mut self, cid: ClientId, mut head: request::Parts, route: Route, replayed: bool) {
        let key = match CacheKey::from_uri(&head.uri) {
            Ok(k) => k,
            Err(e) => {
                let status = CacheStatus::fwd(Fwd::Bypass).with_detail("bad-target");
                self.respond_error(cid, StatusCode::BAD_REQUEST, status, e.to_string());
                return;
            }
        };
        // The policy compares URIs as written: give it the normalized one (no re-parse when
        // the client already wrote it that way).
        if head.uri != key.as_str() {
            if let Ok(uri) = key.as_str().parse() {
                head.uri = uri;
            }
        }
        if route == Route::ByRing {
            if let Some(me) = self.config.self_id.as_deref() {
                let prefs = self.ring.preference(key.as_bytes());
                if prefs.first().is_some_and(|owner| *owner != me) {
                    // Only peers ranked above this node: if they all fail, this node is the
                    // next choice itself. A node outside the ring tries every member.
                    let peers: Vec<String> = prefs
                        .into_iter()
                        .take_while(|p| *p != me)
                        .map(str::to_owned)
                        .collect();
                    let (head, key, peers) = if self.store.keeps_remote() {
                        match self.remote_lookup(cid, head, key, peers) {
                            Some(declined) => declined,
                            None => return,
                        }
                    } else {
                        (head, key, peers)
                    };
                    self.outputs.push_back(Output::Forward {
                        client: cid,
                        key,
                        peers,
                        head,
                    });
                    return;
                }
            }
        }
        if head.method.as_str() == PURGE {
            self.purge(cid, &head, &key);
            return;
        }
        if !policy::is_cacheable_method(&head.method) {
            if policy::invalidates(&head.method) {
                // Invalidated when the answer is known to be a success (RFC 9111 §4.4).
                self.unsafe_passes.insert(cid, key);
            }
            self.outputs.push_back(Output::Pass {
                client: cid,
                status: CacheStatus::fwd(Fwd::Method),
                head,
            });
            return;
        }
        // The path only: `\.pom$` must match `/a.pom?x=1` too.
        if self.passthrough.iter().any(|r| r.is_match(head.uri.path())) {
            let status = CacheStatus::fwd(Fwd::Bypass).with_detail("passthrough");
            self.outputs.push_back(Output::Pass {
                client: cid,
                status,
                head,
            });
            return;
        }
        if let Some(field) = head.headers.get(crate::hop::SEGMENT) {
            // A peer assembling a large object asks for one of its segments.
            let version = match field.to_str() {
                Ok("?") => Some(None),
                Ok(v) => segment::Version::from_field(v).map(Some),
                Err(_) => None,
            };
            if let (Some(version), &Method::GET) = (version, &head.method) {
                let mut client = Client::new(head, key.clone());
                client.replayed = replayed;
                match self.serve_part(cid, client, version) {
                    None => return,
                    Some(c) => head = c.req,
                }
            }
            head.headers.remove(crate::hop::SEGMENT);
        }
        if !replayed && self.park_for_loads(cid, &key, &head) {
            return;
        }
        let mut client = Client::new(head, key.clone());
        client.replayed = replayed;
        // Stored variants, newest first.
        let mut stale: Option<(EntryId, request::Parts)> = None;
        let ids: Vec<EntryId> = self.store.variants(&key).iter().rev().copied().collect();
        for id in ids {
            let Some(entry) = self.store.hot(id) else {
                continue;
            };
            let reuse = self.policy.reuse(&entry.stored, &client.req, self.now);
            let ttl = entry.stored.ttl(self.now).as_secs() as i64;
            match reuse {
                Reuse::Fresh => {
                    self.store.touch(id);
                    self.clients.insert(cid, client);
                    self.answer_from_entry(cid, id, CacheStatus::hit(ttl));
                    return;
                }
                Reuse::Stale {
                    revalidate,
                    while_revalidate,
                } => {
                    if while_revalidate {
                        self.store.touch(id);
                        let mut status = CacheStatus::hit(-self.now_staleness(id));
                        status.detail = Some("stale-while-revalidate");
                        self.clients.insert(cid, client);
                        self.answer_from_entry(cid, id, status);
                        if self.flights.leader(&key).is_none() {
                            let fid = self.start_fetch(
                                key.clone(),
                                key.clone(),
                                *revalidate,
                                FetchKind::Revalidate { variant: id },
                            );
                            self.flights.lead(key, fid);
                        }
                        return;
                    }
                    stale = Some((id, *revalidate));
                    break;
                }
                Reuse::NoMatch(_) => client.fwd = Fwd::VaryMiss,
            }
        }
        let mut stale_segments = None;
        if stale.is_none() {
            match self.answer_from_segments(cid, &mut client) {
                assembly::Segment0::Answered => return,
                assembly::Segment0::Stale(id, revalidate) => {
                    client.fwd = Fwd::Stale;
                    stale_segments = Some((id, revalidate));
                }
                assembly::Segment0::Unknown => {}
            }
        }
        let cc = policy::directives::Directives::parse(&client.req.headers);
        if stale.is_some() {
            client.fwd = if cc.no_cache() || cc.has_max_age() || cc.has_min_fresh() {
                Fwd::Request
            } else {
                Fwd::Stale
            };
        }
        if cc.only_if_cached() {
            let status = CacheStatus::fwd(client.fwd).with_detail("only-if-cached");
            self.respond_error(
                cid,
                StatusCode::GATEWAY_TIMEOUT,
                status,
                "not in cache (only-if-cached)".into(),
            );
            return;
        }
        if self.hit_for_miss.is_marked(&key, self.now) {
            let status = CacheStatus::fwd(Fwd::Bypass).with_detail("hit-for-miss");
            self.outputs.push_back(Output::Pass {
                client: cid,
                status,
                head: client.req,
            });
            return;
        }
        // Wait behind a fetch already under way for this key.
        let mut client = match self.join_flight(cid, client, &key) {
            None => return,
            Some(c) => c,
        };
        if stale.is_none() && self.try_segment(cid, &mut client) {
            return;
        }
        let mut stale_segments_started = false;
        let (kind, sent) = match (stale, self.config.segment_size) {
            (Some((variant, revalidate)), _) => (FetchKind::Revalidate { variant }, revalidate),
            // A large object gone stale is revalidated once, as a whole, through its first
            // segment: a 304 makes segment 0 fresh, and the other segments of its version
            // serve however old they are.
            (None, Some(size)) if stale_segments.is_some() => {
                let (variant, mut sent) = stale_segments.take().expect("checked");
                stale_segments_started = true;
                sent.headers.insert(
                    header::RANGE,
                    Segments::new(size).range_header(0).parse().expect("ascii"),
                );
                (FetchKind::Revalidate { variant }, *sent)
            }
            // A GET of an object not known here asks for its first segment: the answer
            // tells a small object (whole) from a large one (served from segments).
            (None, Some(size))
                if client.req.method == Method::GET
                    && !self.whole_only.is_marked(&key, self.now) =>
            {
                let mut sent = policy::fill_request(&client.req);
                sent.headers.insert(
                    header::RANGE,
                    Segments::new(size).range_header(0).parse().expect("ascii"),
                );
                (FetchKind::Probe, sent)
            }
            (None, _) => (FetchKind::Fill, policy::fill_request(&client.req)),
        };
        let segment0 = stale_segments_started;
        let fid = self.lead_new_flight(cid, client, key, sent, kind, None);
        if let Some(f) = self.fetches.get_mut(&fid) {
            f.segment0 = segment0;
        }
    }

    /// A peer's request for segment `index` of an object (its `Range` is exactly the
    /// segment's bytes): served from a stored copy of the asked `version` however old (the
    /// asker validated the object as a whole), or of any version while fresh when the asker
    /// does not know it yet; otherwise fetched from the origin, coalesced, and stored here.
    /// Hands the client back when the request is not such a request.
    fn serve_part(
        &mut self,
        cid: ClientId,
        client: Client,
        version: Option<segment::Version>,
    ) -> Option<Client> {
        let Some(size) = self.config.segment_size else {
            return Some(client);
        };
        let segs = Segments::new(size);
        let specs = client
            .req
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse);
        let index = match specs.as_deref() {
            Some([range::RangeSpec::FromTo(a, b)])
                if a % size == 0 && segs.bounds(a / size, None).end == *b =>
            {
                a / size
            }
            _ => return Some(client),
        };
        self.serve_segment(cid, client, index, version.map(Some), false)
    }

    /// Answers a request for (a range inside) segment `index` of its object: from a stored
    /// copy (of `version` however old when it is `Some(Some(_))`, any fresh one otherwise),
    /// by joining a fetch of it under way here, or by fetching it: from the segment's owner
    /// when `via_owner` and another peer owns it, else from the origin (stored here).
    /// Always answers (`None`); the `Option` lets callers chain it.
    fn serve_segment(
        &mut self,
        cid: ClientId,
        client: Client,
        index: u64,
        version: Option<Option<segment::Version>>,
        via_owner: bool,
    ) -> Option<Client> {
        let segs = Segments::new(
            self.config
                .segment_size
                .unwrap_or(segment::DEFAULT_SEGMENT_SIZE),
        );
        let seg_key = client.key.segment(index);
        if !client.replayed && self.park_for_loads(cid, &seg_key, &client.req) {
            return None;
        }
        let ids: Vec<EntryId> = self
            .store
            .variants(&seg_key)
            .iter()
            .rev()
            .copied()
            .collect();
        for id in ids {
            let Some(e) = self.store.hot(id) else {
                continue;
            };
            let reuse = self.policy.reuse(&e.stored, &client.req, self.now);
            let usable = match &version {
                Some(Some(v)) => {
                    segment::Version::of(&e.head.headers, e.total.unwrap_or(e.body_len)) == *v
                        && !matches!(reuse, Reuse::NoMatch(_))
                }
                _ => matches!(reuse, Reuse::Fresh),
            };
            if usable {
                let mut status = CacheStatus::hit(e.stored.ttl(self.now).as_secs() as i64);
                status.detail = Some("segment");
                self.store.touch(id);
                self.clients.insert(cid, client);
                self.answer_from_entry(cid, id, status);
                return None;
            }
        }
        let mut client = self.join_flight(cid, client, &seg_key)?;
        let mut sent = assembly::part_request(&client.req);
        sent.headers.remove(crate::hop::SEGMENT);
        sent.headers.insert(
            header::RANGE,
            segs.range_header(index).parse().expect("ascii"),
        );
        // The segment's owner fetches and keeps it; this peer only relays it.
        let peers = via_owner
            .then(|| self.part_peers(&client.key, index))
            .flatten();
        let kind = match peers {
            Some(_) => {
                sent.headers
                    .insert(crate::hop::SEGMENT, http::HeaderValue::from_static("?"));
                FetchKind::Part { index }
            }
            None => FetchKind::Segment { index },
        };
        let fid = self.start_fetch_via(seg_key.clone(), client.key.clone(), sent, kind, peers);
        client.phase = Phase::Waiting(fid);
        self.clients.insert(cid, client);
        let f = self.fetches.get_mut(&fid).expect("just made");
        f.clients.push(cid);
        f.base = segs.start_of(index);
        self.flights.lead(seg_key, fid);
        None
    }

    /// Starts a fetch for `key` led by this client, which later requests may follow.
    fn lead_new_flight(
        &mut self,
        cid: ClientId,
        mut client: Client,
        key: CacheKey,
        sent: request::Parts,
        kind: FetchKind,
        peers: Option<Vec<String>>,
    ) -> FetchId {
        let fid = self.start_fetch_via(key.clone(), key.clone(), sent, kind, peers);
        client.phase = Phase::Waiting(fid);
        self.clients.insert(cid, client);
        self.fetches
            .get_mut(&fid)
            .expect("just made")
            .clients
            .push(cid);
        // A flight still under way for the key (another Vary selection's, which this
        // request could not join) keeps its followers.
        self.flights.lead_if_free(key, fid);
        fid
    }

    /// A GET for one range inside one segment of an object not stored whole: serve it from
    /// that segment, fetching only the segment. True when handled.
    fn try_segment(&mut self, cid: ClientId, client: &mut Client) -> bool {
        let Some(size) = self.config.segment_size else {
            return false;
        };
        if client.req.method != Method::GET || client.req.headers.contains_key(header::IF_RANGE) {
            return false;
        }
        let Some(specs) = client
            .req
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse)
        else {
            return false;
        };
        if specs.len() != 1 {
            return false;
        }
        let segs = Segments::new(size);
        let known_total = self.segments.of(&client.key).first().and_then(|i| {
            self.store
                .variants(&client.key.segment(*i))
                .iter()
                .find_map(|id| self.store.hot(*id)?.total)
        });
        let Some(index) = segs.plan(&specs, known_total).single() else {
            return false;
        };
        let c = std::mem::replace(client, placeholder_client(&client.key));
        let _served = self.serve_segment(cid, c, index, None, true);
        debug_assert!(_served.is_none(), "a segment request is always answered");
        true
    }

    /// Makes the client a follower of the joinable fetch under way for `key`, if any
    /// (it replays what arrived so far); hands the client back when there is none.
    fn join_flight(&mut self, cid: ClientId, mut client: Client, key: &CacheKey) -> Option<Client> {
        let Some(fid) = self.flights.leader(key) else {
            return Some(client);
        };
        // A late joiner whose Vary selection differs from the head's would be served the
        // leader's variant: it fetches its own instead.
        if let Some(f) = self.fetches.get(&fid) {
            if let Some(head) = &f.head {
                let vary = policy::vary::VaryKey::of(&f.sent.headers, &head.headers);
                if !vary.matches(&client.req.headers) {
                    return Some(client);
                }
            }
        }
        client.collapsed = true;
        client.phase = Phase::Waiting(fid);
        self.deadlines.set(
            cid,
            crate::time::after(self.now, self.config.collapse_timeout),
        );
        self.clients.insert(cid, client);
        let f = self.fetches.get_mut(&fid).expect("checked");
        f.clients.push(cid);
        if f.head.is_some() {
            self.start_stream(cid, fid);
        }
        None
    }

    fn start_fetch(
        &mut self,
        key: CacheKey,
        object_key: CacheKey,
        sent: request::Parts,
        kind: FetchKind,
    ) -> FetchId {
        self.start_fetch_via(key, object_key, sent, kind, None)
    }

    /// A fetch from the origin, or from these peers in order when `peers` is given.
    fn start_fetch_via(
        &mut self,
        key: CacheKey,
        object_key: CacheKey,
        sent: request::Parts,
        kind: FetchKind,
        peers: Option<Vec<String>>,
    ) -> FetchId {
        let fid = FetchId(self.next_fetch);
        self.next_fetch += 1;
        let request = crate::heads::clone_request(&sent);
        self.fetches.insert(
            fid,
            Fetch {
                key,
                object_key,
                sent,
                kind,
                clients: Vec::new(),
                head: None,
                storing: None,
                not_stored: None,
                chunks: Vec::new(),
                received: 0,
                base: 0,
                total: None,
                declared: None,
                upstream_status: None,
                retried: false,
                peers: peers.clone(),
                leader_head: None,
                feeds: Vec::new(),
                segment0: false,
            },
        );
        self.outputs.push_back(match peers {
            None => Output::Fetch {
                fetch: fid,
                request,
            },
            Some(peers) => Output::FetchFromPeers {
                fetch: fid,
                peers,
                request,
            },
        });
        fid
    }

    /// A request for a key other peers own, on a peer that keeps hot copies: answered from
    /// a fresh hot copy; or, for a key asked for often, fetched from the owner through this
    /// peer and kept; otherwise handed back, to be forwarded.
    fn remote_lookup(
        &mut self,
        cid: ClientId,
        head: request::Parts,
        key: CacheKey,
        peers: Vec<String>,
    ) -> Option<(request::Parts, CacheKey, Vec<String>)> {
        if !policy::is_cacheable_method(&head.method) {
            if policy::invalidates(&head.method) {
                // The owner answers it straight to the client: the hot copy goes now.
                self.invalidate(&key);
            }
            return Some((head, key, peers));
        }
        let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // Ranges go to the owner as asked: a hot copy is made of whole objects only, and a
        // range of a large object must not turn into a whole fetch.
        if self.passthrough.iter().any(|r| r.is_match(pq))
            || head.headers.contains_key(header::RANGE)
        {
            return Some((head, key, peers));
        }
        let ids: Vec<EntryId> = self.store.variants(&key).iter().rev().copied().collect();
        for id in ids {
            let Some(entry) = self.store.hot(id) else {
                continue;
            };
            if let Reuse::Fresh = self.policy.reuse(&entry.stored, &head, self.now) {
                let mut status = CacheStatus::hit(entry.stored.ttl(self.now).as_secs() as i64);
                status.detail = Some("hot");
                self.store.touch(id);
                self.clients.insert(cid, Client::new(head, key));
                self.answer_from_entry(cid, id, status);
                return None;
            }
        }
        let (window, after) = (self.config.hot_window, self.config.hot_after);
        // Not for keys whose answers could not be kept (hit-for-miss): forwarded as ever.
        if self.popularity.seen(&key, self.now, window) < after
            || self.hit_for_miss.is_marked(&key, self.now)
        {
            return Some((head, key, peers));
        }
        let client = Client::new(head, key.clone());
        let client = self.join_flight(cid, client, &key)?;
        let sent = policy::fill_request(&client.req);
        self.lead_new_flight(cid, client, key, sent, FetchKind::Remote, Some(peers));
        None
    }

    /// An unsafe request got a non-error answer: invalidate its target, and the
    /// `Location` and `Content-Location` URLs of the same origin (RFC 9111 §4.4).
    fn on_pass_response(&mut self, cid: ClientId, head: &response::Parts) {
        let Some(key) = self.unsafe_passes.remove(&cid) else {
            return;
        };
        if !(head.status.is_success() || head.status.is_redirection()) {
            return;
        }
        let mut keys = vec![key.clone()];
        keys.extend(also_invalidated(&key, head));
        for k in keys {
            self.invalidate(&k);
            // Other peers may hold hot copies of it: the whole cluster is one cache.
            self.invalidate_peers(k);
        }
    }

    /// `PURGE`: drops every variant and segment of the URL here, and (unless this is a
    /// purge another peer fanned out) has every other peer drop its copies. Answers how
    /// many entries went: 200, or 404 when none (as Squid does). The adapter decides who
    /// may purge.
    fn purge(&mut self, cid: ClientId, head: &request::Parts, key: &CacheKey) {
        let selector = crate::purge::Selector::of(&head.headers);
        let n = match &selector {
            None => self.invalidate(key),
            Some(s) => {
                let url = key.as_str();
                let keys = self.store.keys_where(|k, h| s.selects(url, k.as_str(), h));
                keys.iter().map(|k| self.invalidate(k)).sum()
            }
        };
        let fanned_out = head
            .headers
            .get(crate::hop::PURGE_SCOPE)
            .is_some_and(|v| v == "local");
        if !fanned_out {
            self.invalidate_peers_selecting(key.clone(), selector.clone());
        }
        let status = CacheStatus::fwd(Fwd::Bypass).with_detail("purge");
        let (code, text) = match (n, &selector) {
            // Selected across the cluster: what went here, and that the others were told.
            (n, Some(_)) => (
                StatusCode::OK,
                format!("purged {n} entries here; the other peers were told"),
            ),
            (0, None) => (
                StatusCode::NOT_FOUND,
                "nothing cached for this URL here".to_owned(),
            ),
            (1, None) => (StatusCode::OK, "purged 1 entry".to_owned()),
            (n, None) => (StatusCode::OK, format!("purged {n} entries")),
        };
        self.clients.insert(
            cid,
            Client::new(crate::heads::clone_request(head), key.clone()),
        );
        self.respond_error(cid, code, status, text);
    }

    /// Tells every other peer to drop its copies of `key` (hot copies, segments).
    fn invalidate_peers(&mut self, key: CacheKey) {
        self.invalidate_peers_selecting(key, None);
    }

    /// [`invalidate_peers`](Self::invalidate_peers), with a purge's selector.
    fn invalidate_peers_selecting(
        &mut self,
        key: CacheKey,
        selector: Option<crate::purge::Selector>,
    ) {
        let Some(me) = self.config.self_id.as_deref() else {
            return;
        };
        let peers: Vec<String> = self
            .config
            .peers
            .iter()
            .filter(|p| *p != me)
            .cloned()
            .collect();
        if !peers.is_empty() {
            self.outputs.push_back(Output::InvalidatePeers {
                key,
                peers,
                selector,
            });
        }
    }

    /// Drops every stored response for `key` and its segments (RFC 9111 §4.4); returns how
    /// many entries went.
    fn invalidate(&mut self, key: &CacheKey) -> usize {
        let mut changes = Vec::new();
        self.store.remove_key(key, &mut changes);
        for i in self.segments.take(key) {
            self.store.remove_key(&key.segment(i), &mut changes);
        }
        let gone = changes
            .iter()
            .filter(|c| matches!(c, Change::Gone { .. }))
            .count();
        self.apply(changes);
        gone
    }

    // ---- storage ----------------------------------------------------------------------

    /// Turns index changes into outputs for the tiers.
    fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Delete { id, key, tier } => self.outputs.push_back(Output::Delete {
                    entry: id,
                    tier,
                    key,
                }),
                Change::Gone { key } => self.forget_segment(&key),
            }
        }
    }

    /// Parks a request whose key has cold variants, asking the disk tier for them. False
    /// when everything the key has is already known.
    fn park_for_loads(&mut self, cid: ClientId, key: &CacheKey, head: &request::Parts) -> bool {
        let waiting = !self.parked.is_empty() && self.parked.get(key).is_some_and(|p| p.loads > 0);
        if !waiting && !self.store.has_cold(key) {
            return false;
        }
        let cold: Vec<(EntryId, u64)> = self
            .store
            .variants(key)
            .iter()
            .filter_map(|id| {
                let s = self.store.slot(*id)?;
                (s.hot.is_none()).then_some((*id, s.on_disk.unwrap_or(0)))
            })
            .collect();
        let parked = self.parked.entry(key.clone()).or_default();
        parked
            .clients
            .push((cid, crate::heads::clone_request(head)));
        for (id, bytes) in cold {
            if self.loads.contains_key(&id) {
                continue;
            }
            self.loads.insert(id, key.clone());
            self.parked.get_mut(key).expect("made").loads += 1;
            let body = self.store.fits_memory(bytes);
            self.outputs.push_back(Output::Load { entry: id, body });
        }
        true
    }

    /// An entry's metadata (and maybe body) arrived from the disk tier, or could not be read
    /// (`None`): warm it up or forget it, then replay the requests that waited for it.
    fn on_loaded(&mut self, id: EntryId, loaded: Option<(Bytes, Option<Bytes>)>) {
        let Some(key) = self.loads.remove(&id) else {
            if loaded.is_none() {
                // An entry the adapter found unreadable while serving it: forget it.
                let mut changes = Vec::new();
                self.store.remove(id, &mut changes);
                self.apply(changes);
            }
            return;
        };
        let mut changes = Vec::new();
        match loaded.and_then(|(meta, body)| Some((self.rebuild(id, &key, &meta)?, body))) {
            Some((hot, body)) if body.as_ref().is_none_or(|b| b.len() as u64 == hot.body_len) => {
                let with_body = body.is_some();
                if self.store.warm(id, hot, with_body, &mut changes) {
                    let slot_key = key.clone();
                    self.outputs.push_back(Output::Write {
                        entry: id,
                        tier: Tier::Memory,
                        key: slot_key,
                        meta: Bytes::new(),
                        body: body.expect("with body"),
                    });
                }
            }
            // Unreadable, corrupt, or no longer storable: a miss, and the record goes.
            _ => self.store.remove(id, &mut changes),
        }
        self.apply(changes);
        if !self.part_loads.is_empty() {
            self.segment_loaded(&key);
        }
        let done = self.parked.get_mut(&key).is_some_and(|p| {
            p.loads = p.loads.saturating_sub(1);
            p.loads == 0
        });
        if done {
            let parked = self.parked.remove(&key).expect("checked");
            for (cid, head) in parked.clients {
                self.lookup(cid, head, Route::Local, true);
            }
        }
    }

    /// The engine's view of a record: checked against the slot it was loaded for, and
    /// judged again by today's policy (configuration may have changed since it was stored).
    fn rebuild(&self, id: EntryId, key: &CacheKey, meta: &[u8]) -> Option<Hot> {
        let meta = Meta::decode(meta).ok()?;
        let slot = self.store.slot(id)?;
        if meta.id != id || meta.key != *key || slot.key != *key {
            return None;
        }
        let stored = self
            .policy
            .storable(&meta.request, &meta.response, meta.response_time)
            .ok()?;
        let body_len = policy::content_length(&meta.response.headers)?;
        Some(Hot {
            stored,
            head: meta.response,
            total: meta.total,
            body_len,
        })
    }

    /// An entry the disk tier holds, announced at start-up.
    fn on_restored(&mut self, id: EntryId, key: CacheKey, bytes: u64) {
        let mut changes = Vec::new();
        if self.store.restore(id, key.clone(), bytes, &mut changes) {
            self.remember_segment(&key);
        } else if self.store.slot(id).is_none() {
            // No room (or no disk tier): the record is not ours to keep.
            changes.push(Change::Delete {
                id,
                key,
                tier: Tier::Disk,
            });
        }
        self.apply(changes);
    }

    /// A tier could not take a write: the entry is not there, and the disk tier rests.
    fn on_write_failed(&mut self, id: EntryId, tier: Tier, _error: StorageError) {
        let mut changes = Vec::new();
        self.store.drop_tier(id, tier, &mut changes);
        if tier == Tier::Disk {
            self.disk_rest_until = Some(crate::time::after(self.now, DISK_RETRY));
        }
        self.apply(changes);
    }

    /// A revalidated entry's new metadata goes to the disk tier, which keeps metadata beside
    /// the body (the memory tier keeps only bodies): otherwise a restart would bring back the
    /// entry as it was before the 304.
    fn persist_meta(&mut self, id: EntryId, sent: &request::Parts) {
        if self.disk_resting() {
            return;
        }
        let Some(slot) = self.store.slot(id) else {
            return;
        };
        let (Some(_), Some(hot)) = (slot.on_disk, slot.hot.as_ref()) else {
            return;
        };
        // Rewriting a record copies its body: not worth it for an entry that would be stale
        // again soon after a restart anyway (`max-age=0` revalidated on every request).
        if hot.stored.ttl(self.now) < self.config.persist_refresh_min_ttl {
            return;
        }
        let meta = Meta {
            id,
            key: slot.key.clone(),
            response_time: hot.stored.response_time(),
            request: {
                // The entry was stored for its fill's request; the directives of whichever
                // client's request revalidated it (`no-store` ...) are not the entry's.
                let mut kept = hot.stored.kept_request(sent);
                kept.headers.remove(header::CACHE_CONTROL);
                kept.headers.remove(header::PRAGMA);
                kept
            },
            response: crate::heads::clone_response(&hot.head),
            total: hot.total,
        }
        .encode();
        self.outputs.push_back(Output::UpdateMeta {
            entry: id,
            tier: Tier::Disk,
            key: slot.key.clone(),
            meta,
        });
    }

    /// Keeps a hot copy of a remote key's response (memory only, in its own budget).
    fn store_remote(
        &mut self,
        key: CacheKey,
        stored: Stored,
        head: response::Parts,
        body: Bytes,
    ) -> bool {
        let id = self.store.next_id();
        let hot = Hot {
            stored,
            head,
            total: None,
            body_len: body.len() as u64,
        };
        let mut changes = Vec::new();
        let kept = self.store.insert_remote(id, key.clone(), hot, &mut changes);
        self.apply(changes);
        if kept {
            self.outputs.push_back(Output::Write {
                entry: id,
                tier: Tier::Memory,
                key,
                meta: Bytes::new(),
                body,
            });
        }
        kept
    }

    /// Stores a complete response in the tiers that take it.
    fn store_response(
        &mut self,
        key: CacheKey,
        stored: Stored,
        sent: &request::Parts,
        head: response::Parts,
        body: Bytes,
        total: Option<u64>,
    ) -> bool {
        let id = self.store.next_id();
        let meta = (self.store.has_disk() && !self.disk_resting()).then(|| {
            Meta {
                id,
                key: key.clone(),
                response_time: stored.response_time(),
                request: stored.kept_request(sent),
                response: crate::heads::clone_response(&head),
                total,
            }
            .encode()
        });
        let record = meta
            .as_ref()
            .map(|m| (entry::HEADER_LEN + m.len() + body.len()) as u64);
        let hot = Hot {
            stored,
            head,
            total,
            body_len: body.len() as u64,
        };
        let mut changes = Vec::new();
        let (in_memory, on_disk) = self
            .store
            .insert(id, key.clone(), hot, record, &mut changes);
        self.apply(changes);
        if in_memory {
            self.outputs.push_back(Output::Write {
                entry: id,
                tier: Tier::Memory,
                key: key.clone(),
                meta: Bytes::new(),
                body: body.clone(),
            });
        }
        if let (true, Some(meta)) = (on_disk, meta) {
            self.outputs.push_back(Output::Write {
                entry: id,
                tier: Tier::Disk,
                key,
                meta,
                body,
            });
        }
        in_memory || on_disk
    }

    // ---- upstream ---------------------------------------------------------------------

    fn on_head(&mut self, fid: FetchId, mut head: response::Parts) {
        let now = self.now;
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        if f.head.is_some() {
            return;
        }
        policy::strip_hop_by_hop(&mut head.headers);
        // Owned fields: a parser's values may be slices of a large read buffer, which a
        // stored head (and the policy's copy of it) would otherwise keep alive.
        head.headers = crate::heads::owned_fields(&head.headers);
        let original = matches!(
            f.kind,
            FetchKind::Fill | FetchKind::Revalidate { .. } | FetchKind::Probe
        )
        .then(|| f.clients.first().copied())
        .flatten()
        .map(|leader| (leader, crate::heads::clone_response(&head)));
        // Every head is judged in its prepared form (Age and delta-seconds clamped), whatever
        // kind of fetch it answers: hostile numbers must reach no arithmetic unclamped.
        self.policy.prepare_response(&mut head);
        f.leader_head = original.filter(|(_, o)| o.headers != head.headers);
        f.upstream_status = Some(head.status.as_u16());
        if let FetchKind::Revalidate { variant } = f.kind {
            // A large object's revalidation that did not end in 304 (a new version, an error)
            // is answered as a first-segment probe is.
            if f.segment0 && head.status != StatusCode::NOT_MODIFIED {
                let server_error = head.status.is_server_error();
                if server_error && self.serve_stale_on_error(fid, variant, "stale-if-error", true) {
                    return;
                }
                let f = self.fetches.get_mut(&fid).expect("exists");
                f.kind = FetchKind::Probe;
            }
        }
        let f = self.fetches.get_mut(&fid).expect("exists");
        match f.kind {
            FetchKind::Revalidate { variant } => {
                if head.status == StatusCode::NOT_MODIFIED {
                    let outcome = self.store.hot(variant).map(|e| {
                        self.policy
                            .revalidated(&e.stored, &e.head, &f.sent, &head, now)
                    });
                    // RFC 9111 §5.2.1.5: nothing of an exchange whose request said `no-store`
                    // is stored, a 304's fields included. The 304 still says the entry is the
                    // current representation: it answers this request as it is.
                    let no_store =
                        policy::directives::Directives::parse(&f.sent.headers).no_store();
                    if no_store && matches!(outcome, Some(Revalidated::NotModified { .. })) {
                        self.finish_from_entry(fid, variant, false);
                        return;
                    }
                    if let Some(Revalidated::NotModified {
                        stored,
                        head: merged,
                    }) = outcome
                    {
                        let entry = self.store.hot_mut(variant).expect("checked");
                        entry.stored = *stored;
                        entry.head = merged;
                        // The merged head comes from the policy's copy of the response as it
                        // arrived (a chunked one had no length); the stored body has one.
                        let len = entry.body_len;
                        entry
                            .head
                            .headers
                            .insert(header::CONTENT_LENGTH, len.into());
                        let mut changes = Vec::new();
                        self.store.reweigh(variant, &mut changes);
                        self.apply(changes);
                        let Some(f) = self.fetches.get(&fid) else {
                            return;
                        };
                        let sent = crate::heads::clone_request(&f.sent);
                        self.persist_meta(variant, &sent);
                        self.finish_from_entry(fid, variant, true);
                        return;
                    }
                }
                if head.status.is_server_error()
                    && self.serve_stale_on_error(fid, variant, "stale-if-error", true)
                {
                    return;
                }
                // A full answer replaces the stored one; a 304 we cannot match is retried.
                let f = self.fetches.get_mut(&fid).expect("exists");
                if head.status == StatusCode::NOT_MODIFIED {
                    // RFC 9111 §4.3.4: a 304 that selects no stored response updates nothing;
                    // ask again without conditions (never loop on revalidation).
                    let clients = std::mem::take(&mut f.clients);
                    let key = f.key.clone();
                    self.drop_fetch(fid, true);
                    self.fill_for(key, clients);
                    return;
                }
                f.kind = FetchKind::Fill;
            }
            FetchKind::Segment { index } => {
                let segs = Segments::new(
                    self.config
                        .segment_size
                        .unwrap_or(segment::DEFAULT_SEGMENT_SIZE),
                );
                match segs.check(index, head.status, &head.headers) {
                    Ok(SegmentAnswer::Segment { range, total }) => {
                        f.total = Some(total);
                        f.declared = Some(range.len());
                        // Judge and store the segment as the 200 it is a piece of.
                        let mut view = head;
                        view.status = StatusCode::OK;
                        view.headers.remove(header::CONTENT_RANGE);
                        view.headers
                            .insert(header::CONTENT_LENGTH, range.len().into());
                        let decision =
                            self.policy
                                .storable(&policy::fill_request(&f.sent), &view, now);
                        let (storing, not_stored) = split(decision);
                        f.storing = storing;
                        f.not_stored = not_stored;
                        view.headers.insert(header::CONTENT_LENGTH, total.into());
                        let object = f.object_key.clone();
                        let version = segment::Version::of(&view.headers, total);
                        self.drop_other_versions(&object, &version);
                        let f = self.fetches.get_mut(&fid).expect("exists");
                        f.head = Some(view);
                        self.after_head(fid);
                        return;
                    }
                    Ok(SegmentAnswer::WholeObject) => {
                        // The origin ignores Range: this is the whole object, a normal fill.
                        // Assemblies cannot use it (they fetch the segment again, once).
                        let feeds = std::mem::take(&mut f.feeds);
                        if !feeds.is_empty() {
                            self.feeds_failed(fid, feeds);
                        }
                        let f = self.fetches.get_mut(&fid).expect("exists");
                        let object_key = f.object_key.clone();
                        self.flights.land(&f.key, fid);
                        f.key = object_key.clone();
                        f.base = 0;
                        f.kind = FetchKind::Fill;
                        f.sent.headers.remove(header::RANGE);
                        self.flights.lead_if_free(object_key, fid);
                    }
                    Err(segment::SegmentError::Status(416)) => {
                        // The segment holding the client's first byte lies past the end: the
                        // client's range is unsatisfiable (its length is now known).
                        let total = head
                            .headers
                            .get(header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(range::parse_unsatisfied_range);
                        let clients = std::mem::take(&mut f.clients);
                        // The object is shorter than the segments kept here say: they go
                        // (the next request learns its length anew).
                        let object = f.object_key.clone();
                        self.drop_fetch(fid, true);
                        self.invalidate(&object);
                        for cid in clients {
                            self.respond_unsatisfiable(cid, total);
                        }
                        return;
                    }
                    Err(e) => {
                        if let segment::SegmentError::Status(404 | 410) = e {
                            // Gone at the origin: so are its segments here.
                            let object = f.object_key.clone();
                            self.invalidate(&object);
                        }
                        self.fail_waiting(fid, StatusCode::BAD_GATEWAY, segment_detail(e));
                        self.drop_fetch(fid, true);
                        return;
                    }
                }
            }
            FetchKind::Probe => {
                let segs = Segments::new(
                    self.config
                        .segment_size
                        .unwrap_or(segment::DEFAULT_SEGMENT_SIZE),
                );
                match segs.check(0, head.status, &head.headers) {
                    Ok(SegmentAnswer::Segment { range, total }) if range.len() == total => {
                        // A small object, whole: the 200 a plain GET gets, stored as the key.
                        for h in
                            std::iter::once(&mut head).chain(f.leader_head.as_mut().map(|(_, h)| h))
                        {
                            h.status = StatusCode::OK;
                            h.headers.remove(header::CONTENT_RANGE);
                            h.headers.insert(header::CONTENT_LENGTH, total.into());
                        }
                        f.kind = FetchKind::Fill;
                        f.sent.headers.remove(header::RANGE);
                    }
                    Ok(SegmentAnswer::Segment { range, total }) => {
                        let version = segment::Version::of(&head.headers, total);
                        if !version.is_validated() && !self.config.segment_unvalidated {
                            // Nothing would tell two versions of its segments apart: fetch it
                            // whole instead (and for a while without asking for a segment).
                            self.fill_whole_instead(fid, true);
                            return;
                        }
                        // Segment 0 of a large object: stored as such; the clients are
                        // served from segments, this fetch feeding them segment 0.
                        f.total = Some(total);
                        f.declared = Some(range.len());
                        // The client that asked sees the object as a 200 too.
                        if let Some((_, h)) = f.leader_head.as_mut() {
                            h.status = StatusCode::OK;
                            h.headers.remove(header::CONTENT_RANGE);
                            h.headers.insert(header::CONTENT_LENGTH, total.into());
                        }
                        let mut view = head;
                        view.status = StatusCode::OK;
                        view.headers.remove(header::CONTENT_RANGE);
                        view.headers
                            .insert(header::CONTENT_LENGTH, range.len().into());
                        let mut judged = policy::fill_request(&f.sent);
                        judged.headers.remove(header::RANGE);
                        let (storing, not_stored) =
                            split(self.policy.storable(&judged, &view, now));
                        f.storing = storing;
                        f.not_stored = not_stored;
                        view.headers.insert(header::CONTENT_LENGTH, total.into());
                        let object = f.object_key.clone();
                        self.drop_other_versions(&object, &version);
                        let f = self.fetches.get_mut(&fid).expect("exists");
                        f.head = Some(view);
                        self.after_head(fid);
                        return;
                    }
                    Err(segment::SegmentError::Status(416)) => {
                        // Not even byte 0: an empty object. Ask for it plainly.
                        self.fill_whole_instead(fid, false);
                        return;
                    }
                    Ok(SegmentAnswer::WholeObject) => {
                        // The origin ignores Range: the whole object, as a plain GET gets it
                        // (and asked for so for a while).
                        f.kind = FetchKind::Fill;
                        f.sent.headers.remove(header::RANGE);
                        let until = crate::time::after(now, self.config.hit_for_miss);
                        self.whole_only.mark(f.key.clone(), until, now);
                    }
                    Err(segment::SegmentError::Status(_)) => {
                        // The answer a plain GET gets (a 404, a 5xx ...).
                        f.kind = FetchKind::Fill;
                        f.sent.headers.remove(header::RANGE);
                    }
                    Err(_) => {
                        // A 206 for other bytes, or of unknown length (`bytes 0-99/*`): the
                        // object cannot be cut into segments. Ask for it plainly (for a while).
                        self.fill_whole_instead(fid, true);
                        return;
                    }
                }
            }
            FetchKind::Part { index } => {
                let segs = Segments::new(
                    self.config
                        .segment_size
                        .unwrap_or(segment::DEFAULT_SEGMENT_SIZE),
                );
                let Ok(SegmentAnswer::Segment { range, total }) =
                    segs.check(index, head.status, &head.headers)
                else {
                    // The owner could not give it: fetch it from the origin here.
                    self.part_to_origin(fid, true);
                    return;
                };
                f.total = Some(total);
                f.declared = Some(range.len());
                let mut view = head;
                view.status = StatusCode::OK;
                view.headers.remove(header::CONTENT_RANGE);
                view.headers.insert(header::CONTENT_LENGTH, total.into());
                f.head = Some(view);
                self.after_head(fid);
                return;
            }
            FetchKind::Fill | FetchKind::Remote => {}
        }
        // RFC 9112 §6.3: a Content-Length that is not one valid number cannot frame the
        // body; relaying it would end a response at a length its head contradicts.
        let Ok(declared) = policy::declared_length(&head.headers) else {
            self.fail_waiting(fid, StatusCode::BAD_GATEWAY, "origin-protocol-error");
            self.drop_fetch(fid, true);
            return;
        };
        // A fill asks for the whole representation without conditions: a 304 or a 206 to
        // it answers a question nobody asked, and must reach no client (nor the store).
        let unsolicited = match head.status {
            StatusCode::NOT_MODIFIED => Some("origin-unsolicited-304"),
            StatusCode::PARTIAL_CONTENT => Some("origin-unsolicited-206"),
            _ => None,
        };
        if let Some(detail) = unsolicited {
            self.fail_waiting(fid, StatusCode::BAD_GATEWAY, detail);
            self.drop_fetch(fid, true);
            return;
        }
        let f = self.fetches.get_mut(&fid).expect("exists");
        f.declared = declared;
        f.total = f.declared;
        let mut decision = self.policy.storable(&f.sent, &head, now);
        if f.kind == FetchKind::Remote
            && decision.is_ok()
            && declared.is_some_and(|d| !self.store.fits_remote(d))
        {
            // Too large for a hot copy: relayed, never buffered whole for nothing.
            decision = Err(NotStored::TooLarge);
        }
        let (storing, not_stored) = split(decision);
        f.storing = storing;
        f.not_stored = not_stored;
        f.head = Some(head);
        self.after_head(fid);
    }

    /// A 1xx ahead of a fetch's head goes to every client waiting on it: the clients of a
    /// shared fill each asked the same question. Segment fetches have no client of their own
    /// (an assembly's response began with segment 0's head).
    fn on_interim(&mut self, fid: FetchId, head: &response::Parts) {
        let Some(f) = self.fetches.get(&fid) else {
            return;
        };
        if f.head.is_some() || matches!(f.kind, FetchKind::Segment { .. } | FetchKind::Part { .. })
        {
            return;
        }
        for &client in &f.clients {
            let Some(c) = self.clients.get(&client) else {
                continue;
            };
            if let Some(head) = crate::interim::to_forward(head, c.req.version) {
                self.outputs.push_back(Output::Interim { client, head });
            }
        }
    }

    /// Head known: decide who may share it, then start every client's response.
    fn after_head(&mut self, fid: FetchId) {
        let until = crate::time::after(self.now, self.config.hit_for_miss);
        let mut uncacheable = None;
        let f = self.fetches.get_mut(&fid).expect("exists");
        let mut released = Vec::new();
        if f.storing.is_none() && !f.kind.is_part() {
            // Not storable (except for our own size limit): the response may be meant for
            // the leader alone. Release the followers; remember the key (hit-for-miss).
            let shareable = matches!(f.not_stored, Some(NotStored::TooLarge));
            if !shareable {
                if f.clients.len() > 1 {
                    released = f.clients.split_off(1);
                }
                if !matches!(f.not_stored, Some(NotStored::RequestNoStore)) {
                    uncacheable = Some(f.key.clone());
                }
            } else if f.kind == FetchKind::Remote {
                // Too large to keep a hot copy of: forwarded from now on, not refetched.
                uncacheable = Some(f.key.clone());
            }
            f.chunks.clear();
            self.flights.land(&f.key, fid);
        } else if let Some(head) = &f.head {
            // Followers whose Vary selection differs from the leader's must fetch their own.
            let vary = policy::vary::VaryKey::of(&f.sent.headers, &head.headers);
            let (keep, other): (Vec<ClientId>, Vec<ClientId>) = f.clients.iter().partition(|c| {
                self.clients
                    .get(*c)
                    .is_some_and(|c| vary.matches(&c.req.headers))
            });
            f.clients = keep;
            released = other;
        }
        if let Some(key) = uncacheable {
            self.hit_for_miss.mark(key, until, self.now);
        }
        for c in &released {
            if let Some(c) = self.clients.get_mut(c) {
                c.phase = Phase::Unattached;
            }
        }
        let clients = self.fetches[&fid].clients.clone();
        for cid in clients {
            self.start_stream(cid, fid);
        }
        let via = self.fetches.get(&fid).and_then(|f| f.peers.clone());
        self.release(released, Release::GiveUp, via);
        self.feeds_head(fid);
        self.maybe_finish(fid);
    }

    fn on_body(&mut self, fid: FetchId, chunk: Bytes) {
        let max = self.config.policy.max_object_size;
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        if f.head.is_none() || chunk.is_empty() {
            return;
        }
        let offset = f.base + f.received;
        f.received += chunk.len() as u64;
        if f.storing.is_some() || self.flights.leads(&f.key, fid) {
            let hot_too_large = f.kind == FetchKind::Remote && !self.store.fits_remote(f.received);
            if f.received > max || hot_too_large {
                // Too large after all (no Content-Length said so): stream on, keep nothing.
                f.storing = None;
                f.not_stored = Some(NotStored::TooLarge);
                f.chunks = Vec::new();
                self.flights.land(&f.key, fid);
            } else {
                f.chunks.push(chunk.clone());
            }
        }
        let clients = self.fetches[&fid].clients.clone();
        for cid in clients {
            self.deliver(cid, offset, &chunk);
        }
        self.feeds_body(fid, offset, &chunk);
        self.maybe_finish(fid);
    }

    fn on_end(&mut self, fid: FetchId) {
        let Some(f) = self.fetches.get(&fid) else {
            return;
        };
        if f.head.is_none() {
            self.on_error(fid, UpstreamError::Protocol);
            return;
        }
        if f.declared.is_some_and(|d| d != f.received) {
            self.on_error(fid, UpstreamError::Truncated);
            return;
        }
        let mut f = self.fetches.remove(&fid).expect("exists");
        self.flights.land(&f.key, fid);
        if let (Some(stored), Some(mut head)) = (f.storing.take(), f.head.take()) {
            let body = concat(std::mem::take(&mut f.chunks));
            // Stored with its own length (chunked answers had none); a segment also keeps
            // the whole object's.
            head.headers
                .insert(header::CONTENT_LENGTH, body.len().into());
            let total = match f.kind {
                FetchKind::Segment { .. } | FetchKind::Probe => f.total,
                _ => None,
            };
            // A large object's first segment is stored as its segment 0.
            let store_key = match f.kind {
                FetchKind::Probe => f.object_key.segment(0),
                _ => f.key.clone(),
            };
            let kept = if f.kind == FetchKind::Remote {
                let kept = self.store_remote(f.key.clone(), stored, head, body);
                if !kept {
                    // Too large for the hot budget: forwarded from now on, not refetched.
                    let until = crate::time::after(self.now, self.config.hit_for_miss);
                    self.hit_for_miss.mark(f.key.clone(), until, self.now);
                }
                kept
            } else {
                self.store_response(store_key, stored, &f.sent, head, body, total)
            };
            let index = match f.kind {
                FetchKind::Segment { index } => Some(index),
                FetchKind::Probe => Some(0),
                _ => None,
            };
            if let (true, Some(index)) = (kept, index) {
                self.segments.add(SegmentKey {
                    object: f.object_key.clone(),
                    index,
                });
            }
        }
        for cid in f.clients {
            if let Some(c) = self.take_client(cid) {
                if c.streaming() {
                    self.outputs.push_back(Output::End { client: cid });
                }
            }
        }
        self.feeds_end(fid, f.feeds);
    }

    fn on_error(&mut self, fid: FetchId, error: UpstreamError) {
        let Some(f) = self.fetches.get(&fid) else {
            return;
        };
        if f.head.is_none() && f.kind.is_part() {
            // No owner could give the segment: fetch it from the origin here.
            self.part_to_origin(fid, false);
            return;
        }
        if f.head.is_none() && f.kind == FetchKind::Remote {
            // No peer answered: serve the clients here, as a forward that failed would be.
            let clients = f.clients.clone();
            self.drop_fetch(fid, false);
            for cid in clients {
                if let Some(c) = self.take_client(cid) {
                    self.lookup(cid, c.req, Route::Local, false);
                }
            }
            return;
        }
        if f.head.is_none() {
            if let FetchKind::Revalidate { variant } = f.kind {
                // The origin could not be reached at all (RFC 9111 §4.2.4), or answered
                // nothing usable: a stale copy may do.
                let unreachable = !matches!(error, UpstreamError::DestinationNotAllowed);
                let served = self.serve_stale_on_error(fid, variant, "stale-if-error", false)
                    || (unreachable && self.serve_stale_unreachable(fid, variant, error.as_str()));
                if served {
                    return;
                }
            }
            let f = self.fetches.get_mut(&fid).expect("exists");
            // The first client gets the error; the others get a new leader and one more try.
            let rest = if f.clients.len() > 1 && !f.retried {
                f.clients.split_off(1)
            } else {
                Vec::new()
            };
            self.fail_waiting(fid, error.status(), error.as_str());
            self.drop_fetch(fid, false);
            self.release(rest, Release::TransientError, None);
            return;
        }
        // Mid-body: everyone streaming sees an aborted response; nothing is stored.
        // Assemblies fetch the segment again instead.
        let mut f = self.fetches.remove(&fid).expect("exists");
        self.flights.land(&f.key, fid);
        let feeds = std::mem::take(&mut f.feeds);
        if !feeds.is_empty() {
            self.feeds_failed(fid, feeds);
        }
        for cid in f.clients {
            if let Some(c) = self.take_client(cid) {
                if c.streaming() {
                    self.outputs.push_back(Output::Abort { client: cid });
                } else {
                    let status = CacheStatus::fwd(c.fwd).with_detail(error.as_str());
                    self.clients.insert(cid, c);
                    self.respond_error(
                        cid,
                        StatusCode::BAD_GATEWAY,
                        status,
                        "upstream failed".into(),
                    );
                }
            }
        }
    }

    fn on_client_gone(&mut self, cid: ClientId) {
        self.end_assembly(cid);
        let Some(c) = self.take_client(cid) else {
            return;
        };
        let Some(fid) = c.phase.fetch() else { return };
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        f.clients.retain(|x| *x != cid);
        // A fill worth storing goes on for later requests; anything else stops.
        self.maybe_finish(fid);
    }

    fn on_timeout(&mut self) {
        let now = self.now;
        let mut expired = self.deadlines.expired(now);
        expired.retain(|c| self.clients.get(c).is_some_and(|c| !c.streaming()));
        for cid in expired {
            let Some(c) = self.clients.get_mut(&cid) else {
                continue;
            };
            let mut via = None;
            if let Some(fid) = std::mem::replace(&mut c.phase, Phase::Unattached).fetch() {
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.clients.retain(|x| *x != cid);
                    via = f.peers.clone();
                }
            }
            self.release(vec![cid], Release::WaitTimeout, via);
        }
        self.hit_for_miss.prune(now);
        self.whole_only.prune(now);
    }

    // ---- helpers ----------------------------------------------------------------------

    /// Forgets a client (answered, gone or moved), with its deadline.
    fn take_client(&mut self, cid: ClientId) -> Option<Client> {
        self.deadlines.clear(cid);
        if !self.restarted.is_empty() {
            self.restarted.remove(&cid);
        }
        self.clients.remove(&cid)
    }

    /// Followers that stop following their flight: what they do next depends on why.
    /// `via`: the peers the flight asked, for the followers of a `Remote` flight (a peer
    /// that does not own the key never fills it from the origin for them).
    fn release(&mut self, clients: Vec<ClientId>, why: Release, via: Option<Vec<String>>) {
        match why {
            Release::TransientError => self.retry_together(clients),
            Release::GiveUp | Release::WaitTimeout => self.refetch_unshared(clients, via),
        }
    }

    /// The first still-waiting client leads a new, shared fill for the others; marked
    /// `retried`, so a second failure ends the attempt (never a retry loop).
    fn retry_together(&mut self, mut clients: Vec<ClientId>) {
        clients.retain(|c| self.clients.contains_key(c));
        let Some(first) = clients.first().and_then(|c| self.clients.get(c)) else {
            return;
        };
        let (key, sent) = (first.key.clone(), policy::fill_request(&first.req));
        // The new leader waits on nobody: its follower deadline would detach it from the
        // fetch it leads.
        self.deadlines.clear(clients[0]);
        let nf = self.start_fetch(key.clone(), key.clone(), sent, FetchKind::Fill);
        self.flights.lead(key, nf);
        for cid in &clients {
            if let Some(c) = self.clients.get_mut(cid) {
                c.phase = Phase::Waiting(nf);
            }
        }
        let f = self.fetches.get_mut(&nf).expect("just made");
        f.retried = true;
        f.clients = clients;
    }

    /// Gives each released client a fetch of its own, not shared with anyone.
    fn refetch_unshared(&mut self, clients: Vec<ClientId>, via: Option<Vec<String>>) {
        for cid in clients {
            let Some(c) = self.clients.get(&cid) else {
                continue;
            };
            let (key, sent) = (c.key.clone(), policy::fill_request(&c.req));
            let kind = match via {
                Some(_) => FetchKind::Remote,
                None => FetchKind::Fill,
            };
            let fid = self.start_fetch_via(key.clone(), key, sent, kind, via.clone());
            let f = self.fetches.get_mut(&fid).expect("just made");
            f.clients.push(cid);
            let c = self.clients.get_mut(&cid).expect("checked");
            c.phase = Phase::Waiting(fid);
            self.deadlines.clear(cid);
        }
    }

    /// A probe's object cannot be served from segments: its clients get one plain, shared
    /// fill instead; with `remember`, the key is fetched whole for a while without a probe.
    fn fill_whole_instead(&mut self, fid: FetchId, remember: bool) {
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        let clients = std::mem::take(&mut f.clients);
        let key = f.key.clone();
        if remember {
            let until = crate::time::after(self.now, self.config.hit_for_miss);
            self.whole_only.mark(key.clone(), until, self.now);
        }
        self.drop_fetch(fid, true);
        self.fill_for(key, clients);
    }

    /// One unconditional, shared fill for these clients (the first one's request is sent).
    fn fill_for(&mut self, key: CacheKey, clients: Vec<ClientId>) {
        let Some(first) = clients.iter().find_map(|c| self.clients.get(c)) else {
            return;
        };
        let sent = policy::fill_request(&first.req);
        let fid = self.start_fetch(key.clone(), key.clone(), sent, FetchKind::Fill);
        for cid in &clients {
            if let Some(c) = self.clients.get_mut(cid) {
                c.phase = Phase::Waiting(fid);
            }
        }
        self.fetches.get_mut(&fid).expect("just made").clients = clients;
        self.flights.lead(key, fid);
    }

    /// Answers a failed fetch's clients from a stale entry when every one of them allows it.
    /// `cancel`: the fetch is still running (an error status) and must be stopped; after an
    /// `UpstreamError` it has already ended and the adapter must hear nothing more of it.
    fn serve_stale_on_error(
        &mut self,
        fid: FetchId,
        variant: EntryId,
        detail: &'static str,
        cancel: bool,
    ) -> bool {
        self.serve_stale(fid, variant, detail, cancel, false)
    }

    /// The origin could not be reached (the fetch has ended): its clients get a stale copy
    /// when every one of them may (RFC 9111 §4.2.4).
    fn serve_stale_unreachable(
        &mut self,
        fid: FetchId,
        variant: EntryId,
        detail: &'static str,
    ) -> bool {
        self.serve_stale(fid, variant, detail, false, true)
    }

    fn serve_stale(
        &mut self,
        fid: FetchId,
        variant: EntryId,
        detail: &'static str,
        cancel: bool,
        unreachable: bool,
    ) -> bool {
        let Some(entry) = self.store.hot(variant) else {
            return false;
        };
        let f = &self.fetches[&fid];
        let clients: Vec<ClientId> = f.clients.clone();
        let all_allow = clients.iter().all(|c| {
            self.clients.get(c).is_some_and(|c| match unreachable {
                true => self
                    .policy
                    .stale_if_unreachable(&entry.stored, &c.req, self.now),
                false => self.policy.stale_if_error(&entry.stored, &c.req, self.now),
            })
        });
        if !all_allow {
            return false;
        }
        let status = f.upstream_status;
        let staleness = self.now_staleness(variant);
        self.drop_fetch(fid, cancel);
        for cid in clients {
            let mut s = CacheStatus::hit(-staleness);
            s.fwd = Some(Fwd::Stale);
            s.fwd_status = status;
            s.detail = Some(detail);
            self.answer_or_assemble(cid, variant, s);
        }
        true
    }

    /// A segment answer describes the object as it is now: stored segments of another
    /// version (length or validator) are dropped, so no later plan (or response) mixes two.
    fn drop_other_versions(&mut self, object: &CacheKey, now: &segment::Version) {
        let ix = self.segments.of(object);
        if ix.is_empty() {
            return;
        }
        let other: Vec<u64> = ix
            .iter()
            .copied()
            .filter(|i| {
                self.store.variants(&object.segment(*i)).iter().any(|id| {
                    self.store.hot(*id).is_some_and(|e| {
                        segment::Version::of(&e.head.headers, e.total.unwrap_or(e.body_len)) != *now
                    })
                })
            })
            .collect();
        let mut changes = Vec::new();
        for i in other {
            self.store.remove_key(&object.segment(i), &mut changes);
        }
        self.apply(changes);
    }

    /// A segment entry left the store: drop it from its object's index (unless another
    /// variant of it is still stored).
    fn forget_segment(&mut self, key: &CacheKey) {
        if !self.store.variants(key).is_empty() {
            return;
        }
        if let Some(seg) = key.as_segment() {
            self.segments.remove(&seg);
        }
    }

    /// A segment entry came back from disk: list it under its object.
    fn remember_segment(&mut self, key: &CacheKey) {
        if let Some(seg) = key.as_segment() {
            self.segments.add(seg);
        }
    }

    /// Keys the engine remembers outside the store (hit-for-miss marks, segment indexes):
    /// bounded, whatever the traffic.
    pub fn remembered_keys(&self) -> usize {
        self.hit_for_miss.len()
            + self.whole_only.len()
            + self.segments.len()
            + self.popularity.len()
    }

    /// Seconds an entry is past its freshness (0 while fresh), for `Cache-Status: ttl=-N`.
    fn now_staleness(&self, id: EntryId) -> i64 {
        self.store.hot(id).map_or(0, |e| {
            self.policy.staleness(&e.stored, self.now).as_secs() as i64
        })
    }

    /// A revalidation ended in 304: every waiting client is answered from the entry.
    fn finish_from_entry(&mut self, fid: FetchId, variant: EntryId, stored: bool) {
        let f = self.fetches.get(&fid).expect("exists");
        let clients = f.clients.clone();
        self.drop_fetch(fid, false);
        for cid in clients {
            let Some(c) = self.clients.get(&cid) else {
                continue;
            };
            let mut s = CacheStatus::fwd(c.fwd);
            s.fwd_status = Some(304);
            s.stored = stored;
            s.collapsed = c.collapsed;
            self.answer_or_assemble(cid, variant, s);
        }
    }

    /// Forgets a fetch; tells the adapter to stop it when `cancel`.
    fn drop_fetch(&mut self, fid: FetchId, cancel: bool) {
        if let Some(f) = self.fetches.remove(&fid) {
            self.flights.land(&f.key, fid);
            if cancel {
                self.outputs.push_back(Output::CancelFetch { fetch: fid });
            }
            if !f.feeds.is_empty() {
                self.feeds_failed(fid, f.feeds);
            }
        }
    }

    /// Answers every client of a fetch that has not seen a head yet with an error.
    fn fail_waiting(&mut self, fid: FetchId, status: StatusCode, detail: &'static str) {
        let clients = self
            .fetches
            .get(&fid)
            .map(|f| f.clients.clone())
            .unwrap_or_default();
        for cid in clients {
            let Some(c) = self.clients.get(&cid) else {
                continue;
            };
            let mut s = CacheStatus::fwd(c.fwd).with_detail(detail);
            s.collapsed = c.collapsed;
            self.respond_error(cid, status, s, format!("{} ({detail})", explain(detail)));
        }
    }

    /// A fetch with no clients left and nothing to store ends early.
    fn maybe_finish(&mut self, fid: FetchId) {
        if let Some(f) = self.fetches.get(&fid) {
            if f.clients.is_empty()
                && f.feeds.is_empty()
                && f.storing.is_none()
                && (f.head.is_some() || f.kind.is_part())
            {
                self.drop_fetch(fid, true);
            }
        }
    }

    /// A segment its owner could not give (no peer answered, or not with the segment):
    /// fetched from the origin here instead, for the same clients and assemblies.
    /// `cancel`: the peer fetch is still running.
    fn part_to_origin(&mut self, fid: FetchId, cancel: bool) {
        let Some(mut f) = self.fetches.remove(&fid) else {
            return;
        };
        self.flights.land(&f.key, fid);
        if cancel {
            self.outputs.push_back(Output::CancelFetch { fetch: fid });
        }
        let FetchKind::Part { index } = f.kind else {
            return;
        };
        f.sent.headers.remove(crate::hop::SEGMENT);
        let nf = self.start_fetch(
            f.key.clone(),
            f.object_key.clone(),
            f.sent,
            FetchKind::Segment { index },
        );
        self.flights.lead_if_free(f.key, nf);
        for cid in &f.clients {
            if let Some(c) = self.clients.get_mut(cid) {
                c.phase = Phase::Waiting(nf);
            }
        }
        let n = self.fetches.get_mut(&nf).expect("just made");
        n.base = f.base;
        n.retried = true;
        n.clients = f.clients;
        self.move_feeds(fid, nf, f.feeds);
    }
}

/// The other keys a successful unsafe request to `target` invalidates (RFC 9111 §4.4):
/// its answer's `Location` and `Content-Location`, when they name the same origin. Public
/// so an adapter that loads its index per request (Spin) can load these keys first.
pub fn also_invalidated(target: &CacheKey, head: &response::Parts) -> Vec<CacheKey> {
    [header::LOCATION, header::CONTENT_LOCATION]
        .iter()
        .filter_map(|name| head.headers.get(name)?.to_str().ok())
        .filter_map(|v| resolve_same_origin(target, v))
        .filter(|k| k != target)
        .collect()
}

/// A `Location`-style reference resolved against `base`, when it names the same origin
/// (scheme and authority): other origins' entries must not be invalidated by this one.
fn resolve_same_origin(base: &CacheKey, reference: &str) -> Option<CacheKey> {
    let origin_end = base.as_str().find("://").map(|i| i + 3)?;
    let path_start = base.as_str()[origin_end..]
        .find('/')
        .map(|i| i + origin_end)?;
    let origin = &base.as_str()[..path_start];
    let absolute = if reference.starts_with("http://") || reference.starts_with("https://") {
        reference.to_owned()
    } else if reference.starts_with('/') && !reference.starts_with("//") {
        format!("{origin}{reference}")
    } else {
        // Relative path: resolve against the base's directory.
        let path = base.as_str()[path_start..].split('?').next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(1, |i| i + 1)];
        format!("{origin}{dir}{reference}")
    };
    let key = CacheKey::from_uri(&absolute.parse().ok()?).ok()?;
    key.as_str()
        .starts_with(origin)
        .then_some(key)
        .filter(|k| k.as_str()[origin.len()..].starts_with('/'))
}

/// The sentence an error body gives for a `Cache-Status` detail token.
fn compile_passthrough(patterns: &[String]) -> Result<Vec<regex_lite::Regex>, ConfigError> {
    patterns
        .iter()
        .map(|p| {
            regex_lite::Regex::new(p).map_err(|e| ConfigError(format!("passthrough {p:?}: {e}")))
        })
        .collect()
}

fn explain(detail: &str) -> &'static str {
    if let Some(e) = UpstreamError::ALL.iter().find(|e| e.as_str() == detail) {
        return e.explain();
    }
    match detail {
        "origin-unsolicited-304" => "the origin answered an unconditional request with 304",
        "origin-unsolicited-206" => "the origin answered a request without Range with 206",
        "segment-status" | "segment-bad-content-range" | "segment-mismatch" => {
            "the origin answered a range request inconsistently"
        }
        _ => "upstream failed",
    }
}

/// The `Cache-Status` detail of a segment answer that cannot be used.
fn segment_detail(e: segment::SegmentError) -> &'static str {
    match e {
        segment::SegmentError::Status(_) => "segment-status",
        segment::SegmentError::BadContentRange => "segment-bad-content-range",
        _ => "segment-mismatch",
    }
}

fn split(d: Result<Stored, NotStored>) -> (Option<Stored>, Option<NotStored>) {
    match d {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    }
}

/// One exactly-sized body. A single chunk is copied too: it may be a slice of a much larger
/// read buffer that the cache must not keep alive.
fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        _ => {
            let mut b = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                b.extend_from_slice(&c);
            }
            b.freeze()
        }
    }
}

/// An empty stand-in left behind when a `&mut Client` is moved into the engine's books.
fn placeholder_client(key: &CacheKey) -> Client {
    Client::new(http::Request::new(()).into_parts().0, key.clone())
}
