//! The engine driven by random input sequences, as a hostile network and a hostile origin
//! would drive it, with invariants checked after every drain.
//!
//! The harness plays the adapter: it answers only fetches the engine asked for (tracking
//! `Fetch` / `CancelFetch`), sometimes late (inputs for a fetch already cancelled or ended,
//! as real I/O races produce), with heads that are honest or hostile (statuses, lengths,
//! Cache-Control, Vary, validators, Content-Range), bodies cut short or too long, errors,
//! clients that leave, timers, clock jumps, unsafe methods and membership changes.
//!
//! Body bytes are a function of (object, version, offset) — `K + offset mod 251` with
//! `K = 20·object + version` — so any body a client receives can be checked for being one
//! contiguous piece of one version of its own object at the offset its head claims: a
//! segment stored at the wrong offset, two versions spliced, another URL's bytes or a
//! stored body whose length differs from its Content-Length all show.

use super::hostile::{self, Head, append, request_fields, response_head};
use super::known;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header, request, response};
use larder_core::engine::UpstreamError;
use larder_core::policy::{CacheMode, PolicyConfig};
use larder_core::range;
use larder_core::storage::entry;
use larder_core::{
    CacheKey, ClientId, Config, Engine, EntryId, FetchId, Input, MemoryTier, Output, ResponseBody,
    Route, Tier,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// Targets: one object under several spellings, others, and ones that make no key.
const URLS: [&str; 8] = [
    "http://origin.test/a",
    "http://ORIGIN.test:80/a",
    "http://origin.test/b",
    "http://origin.test/c?x=1",
    "https://origin.test/a",
    "http://origin.test/a",
    "ftp://origin.test/a",
    "http://origin.test:99999/a",
];

const PEERS: [&str; 3] = [
    "http://peer0:3128",
    "http://peer1:3128",
    "http://peer2:3128",
];

#[derive(Debug, Clone)]
pub struct Cfg {
    memory: u64,
    disk: u64,
    max_object: u64,
    segment_size: Option<u64>,
    min_ttl: u64,
    shared: bool,
    collapse: u64,
    hit_for_miss: u64,
    cluster: bool,
    passthrough: bool,
    /// A hot cache of remote keys (in a cluster): popular keys are fetched from peers.
    hot: bool,
    start: SystemTime,
}

#[derive(Debug, Clone)]
pub enum Op {
    Request {
        method: &'static str,
        url: usize,
        fields: Vec<(&'static str, String)>,
        /// When forwarded to a peer, hand it back with `Route::Local` (all peers failed).
        fallback: bool,
    },
    /// The head for an open fetch: honest (status and length fit the request) or not.
    Head {
        pick: usize,
        honest: bool,
        len: u16,
        version: u8,
        head: Head,
    },
    /// Head, whole body and end for an open fetch, honestly.
    Complete {
        pick: usize,
        len: u16,
        version: u8,
        extra: Vec<(&'static str, String)>,
    },
    Body {
        pick: usize,
        len: u8,
        overshoot: bool,
    },
    End {
        pick: usize,
    },
    Error {
        pick: usize,
        kind: u8,
    },
    Gone {
        pick: usize,
    },
    PassResponse {
        pick: usize,
        status: u16,
        location: Option<&'static str>,
    },
    Advance(Duration),
    Timeout {
        at_deadline: bool,
    },
    Peers(Vec<usize>),
    /// An input for a fetch id the engine may have forgotten (cancelled, ended) or never made.
    Late {
        fetch: u64,
        what: u8,
    },
}

#[derive(Debug, Clone)]
pub struct Case {
    cfg: Cfg,
    ops: Vec<Op>,
    /// Wind down by answering every fetch honestly (true) or failing them (false).
    finish_honestly: bool,
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        (
            select(&[0u64, 600, 2_000, 8_000, 1 << 20][..]),
            select(&[0u64, 0, 900, 1 << 20][..]),
        ),
        select(&[0u64, 40, 300, 64 << 20][..]),
        select(&[None, Some(1u64), Some(5), Some(16), Some(64), Some(2 << 20)][..]),
        select(&[0u64, 0, 60, u64::MAX / 4][..]),
        any::<bool>(),
        select(&[0u64, 1, 5, 100_000][..]),
        select(&[0u64, 1, 120][..]),
        (any::<bool>(), proptest::bool::weighted(0.1), any::<bool>()),
        hostile::instant(),
    )
        .prop_map(
            |(
                (memory, disk),
                max_object,
                segment_size,
                min_ttl,
                shared,
                collapse,
                hit_for_miss,
                (cluster, passthrough, hot),
                start,
            )| Cfg {
                memory,
                disk,
                max_object,
                segment_size,
                min_ttl,
                shared,
                collapse,
                hit_for_miss,
                cluster,
                passthrough,
                hot,
                start,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let method = select(
        &[
            "GET", "GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PURGE",
        ][..],
    );
    prop_oneof![
        10 => (method, prop_oneof![3 => 0..3usize, 1 => 0..URLS.len()], prop_oneof![
                3 => Just(Vec::new()),
                2 => select(&["bytes=0-3", "bytes=5-", "bytes=-4", "bytes=2-40", "bytes=0-0,9-9",
                    "bytes=100-200", "bytes=0-18446744073709551614"][..])
                    .prop_map(|r| vec![("range", r.to_owned())]),
                3 => request_fields(),
            ], any::<bool>()).prop_map(
            |(method, url, fields, fallback)| Op::Request { method, url, fields, fallback }
        ),
        4 => (any::<usize>(), proptest::bool::weighted(0.6), 0u16..300, 0u8..20, response_head())
            .prop_map(|(pick, honest, len, version, head)| Op::Head { pick, honest, len, version, head }),
        8 => (any::<usize>(), 0u16..300, 0u8..20, proptest::collection::vec(
                prop_oneof![
                    3 => select(&["max-age=60", "max-age=0", "s-maxage=5, stale-while-revalidate=30",
                        "max-age=1, stale-if-error=100", "no-cache", "private", "no-store",
                        "max-age=18446744073709551615", "max-age=9223372036854775807",
                        "stale-while-revalidate=18446744073709551615, max-age=1",
                        "stale-if-error=18446744073709551615, max-age=1", "must-revalidate, max-age=1"][..])
                        .prop_map(|v| ("cache-control", v.to_owned())),
                    2 => select(&["\"v1\"", "\"v2\"", "W/\"v1\""][..]).prop_map(|v| ("etag", v.to_owned())),
                    1 => select(&["accept-encoding", "*", "accept-language"][..]).prop_map(|v| ("vary", v.to_owned())),
                    1 => hostile::http_date().prop_map(|v| ("last-modified", v)),
                    1 => hostile::http_date().prop_map(|v| ("expires", v)),
                    1 => hostile::number_text().prop_map(|v| ("age", v)),
                ],
                0..4,
            ))
            .prop_map(|(pick, len, version, extra)| Op::Complete { pick, len, version, extra }),
        6 => (any::<usize>(), 1u8..64, proptest::bool::weighted(0.1))
            .prop_map(|(pick, len, overshoot)| Op::Body { pick, len, overshoot }),
        3 => any::<usize>().prop_map(|pick| Op::End { pick }),
        1 => (any::<usize>(), 0u8..4).prop_map(|(pick, kind)| Op::Error { pick, kind }),
        2 => any::<usize>().prop_map(|pick| Op::Gone { pick }),
        1 => (any::<usize>(), select(&[200u16, 204, 302, 404, 500][..]),
              proptest::option::of(select(&["/b", "http://origin.test/c?x=1", "http://other.test/a", "b", "//x", "%"][..])))
            .prop_map(|(pick, status, location)| Op::PassResponse { pick, status, location }),
        3 => hostile::advance().prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|at_deadline| Op::Timeout { at_deadline }),
        1 => proptest::collection::vec(0..PEERS.len(), 0..4).prop_map(Op::Peers),
        1 => (0u64..40, 0u8..4).prop_map(|(fetch, what)| Op::Late { fetch, what }),
    ]
}

pub fn case() -> impl Strategy<Value = Case> {
    (cfg(), proptest::collection::vec(op(), 1..60), any::<bool>()).prop_map(
        |(cfg, ops, finish_honestly)| Case {
            cfg,
            ops,
            finish_honestly,
        },
    )
}

// ---- the adapter's books ----------------------------------------------------------------

#[derive(Debug)]
struct OpenFetch {
    req: request::Parts,
    object: u64,
    head: bool,
    /// Offset of the first body byte within the object, and the version sent.
    base: u64,
    k: u64,
    sent: u64,
    /// The length the head declared (Content-Length of a 200, range length of a 206).
    declared: Option<u64>,
    /// 1xx, 204 and 304 have no body: an HTTP client library never delivers one.
    bodiless: bool,
    /// A valid Content-Length: the adapter's HTTP client never delivers more than that.
    framing: Option<u64>,
}

#[derive(Debug, Default)]
struct ClientBook {
    method: String,
    object: Option<u64>,
    head: Option<response::Parts>,
    from_entry: bool,
    /// The body came whole (`ResponseBody::Full`).
    full: bool,
    streaming: bool,
    body: Vec<u8>,
    ended: bool,
    aborted: bool,
    /// Handed to a peer or passed upstream: the engine answers no more.
    handed_off: bool,
    passed_unsafe: bool,
    gone: bool,
    request: Option<request::Parts>,
}

impl ClientBook {
    fn done(&self) -> bool {
        self.gone
            || self.handed_off
            || (self.head.is_some() && (!self.streaming || self.ended || self.aborted))
    }
}

struct Driver {
    engine: Engine,
    memory: u64,
    /// The tiers, carried out at once.
    hot: MemoryTier,
    records: std::collections::HashMap<EntryId, bytes::Bytes>,
    now: SystemTime,
    objects: Vec<Option<CacheKey>>,
    fetches: BTreeMap<FetchId, OpenFetch>,
    finished: BTreeSet<FetchId>,
    clients: BTreeMap<ClientId, ClientBook>,
    next_client: u64,
    fetched_keys: BTreeSet<String>,
    log: Vec<String>,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// The body byte at `offset` of the object/version `k`.
fn byte(k: u64, offset: u64) -> u8 {
    ((k % 251 + offset % 251) % 251) as u8
}

/// Object number of a URI (its normalized key's position among the URLs), if it has a key.
fn object_of(objects: &[Option<CacheKey>], uri: &http::Uri) -> Option<u64> {
    let k = CacheKey::from_uri(uri).ok()?;
    objects
        .iter()
        .position(|o| o.as_ref() == Some(&k))
        .map(|i| i as u64)
}

fn header_u64(h: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Driver {
    fn new(cfg: &Cfg) -> Self {
        let config = Config {
            policy: PolicyConfig {
                mode: if cfg.shared {
                    CacheMode::Shared
                } else {
                    CacheMode::Private
                },
                min_ttl: Duration::from_secs(cfg.min_ttl),
                max_object_size: cfg.max_object,
                heuristic_fraction: 0.1,
                // Stale copies served on unreachable origins too (cfg.collapse varies it).
                stale_if_unreachable: Duration::from_secs(cfg.collapse * 60),
                targeted: vec!["cdn-cache-control".into()],
                rules: Vec::new(),
            },
            memory: cfg.memory,
            self_id: cfg.cluster.then(|| PEERS[0].to_owned()),
            peers: if cfg.cluster {
                PEERS.iter().map(|p| p.to_string()).collect()
            } else {
                Vec::new()
            },
            segment_size: cfg.segment_size,
            collapse_timeout: Duration::from_secs(cfg.collapse),
            hit_for_miss: Duration::from_secs(cfg.hit_for_miss),
            passthrough: if cfg.passthrough {
                vec!["^/b".to_owned()]
            } else {
                Vec::new()
            },
            disk: cfg.disk,
            hot_memory: if cfg.cluster && cfg.hot {
                cfg.memory / 4
            } else {
                0
            },
            hot_after: 2,
            ..Config::default()
        };
        let mut objects: Vec<Option<CacheKey>> = Vec::new();
        for u in URLS {
            let k = u
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| CacheKey::from_uri(&u).ok());
            objects.push(k.filter(|k| !objects.contains(&Some(k.clone()))));
        }
        Driver {
            engine: Engine::new(config).expect("valid config"),
            memory: cfg.memory,
            hot: MemoryTier::new(),
            records: Default::default(),
            now: cfg.start,
            objects,
            fetches: BTreeMap::new(),
            finished: BTreeSet::new(),
            clients: BTreeMap::new(),
            next_client: 0,
            fetched_keys: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    fn input(&mut self, input: Input) -> Result<(), TestCaseError> {
        let ended = match &input {
            Input::UpstreamEnd { fetch } => Some(*fetch),
            _ => None,
        };
        let failed = match &input {
            Input::UpstreamError { fetch, .. } => Some(*fetch),
            _ => None,
        };
        self.log
            .push(format!("{input:?}").chars().take(300).collect());
        let now = self.now;
        self.engine.handle_input(now, input);
        self.drain(ended, failed)
    }

    fn pick_fetch(&self, pick: usize, want_head: Option<bool>) -> Option<FetchId> {
        let open: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| want_head.is_none_or(|w| f.head == w))
            .map(|(id, _)| *id)
            .collect();
        (!open.is_empty()).then(|| open[pick % open.len()])
    }

    fn drain(
        &mut self,
        ended: Option<FetchId>,
        failed: Option<FetchId>,
    ) -> Result<(), TestCaseError> {
        let mut refetch = Vec::new();
        let mut loads: Vec<(EntryId, bool)> = Vec::new();
        while let Some(out) = self.engine.poll_output() {
            self.log
                .push(format!("  -> {out:?}").chars().take(300).collect());
            match out {
                Output::Respond {
                    client,
                    head,
                    body,
                    outcome,
                    collapsed,
                } => {
                    // The typed outcome is the header's, read back by the one parser.
                    let cs = head
                        .headers
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if larder_core::Outcome::from_cache_status(cs, head.status) != outcome
                        || cs.contains("; collapsed") != collapsed
                    {
                        return Err(fail(format!(
                            "{outcome:?} (collapsed: {collapsed}) for {} {cs:?}",
                            head.status
                        )));
                    }
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("Respond for unknown {client:?}")))?;
                    if c.gone || c.handed_off {
                        return Err(fail(format!("Respond for a finished {client:?}")));
                    }
                    if c.head.is_some() {
                        return Err(fail(format!("two heads for {client:?}")));
                    }
                    let no_store = head
                        .headers
                        .get(header::CACHE_CONTROL)
                        .is_some_and(|v| v == "no-store");
                    match body {
                        ResponseBody::Empty => {}
                        ResponseBody::Full(b) => {
                            c.from_entry = !no_store;
                            c.full = true;
                            c.body.extend_from_slice(&b);
                        }
                        ResponseBody::Stream => c.streaming = true,
                        ResponseBody::Stored(stored) => {
                            let b = match stored.tier {
                                Tier::Memory => self.hot.read(&stored),
                                Tier::Disk => self.records.get(&stored.entry).and_then(|r| {
                                    let (_, body) = entry::decode(r).ok()?;
                                    larder_core::storage::assemble(&body, &stored.pieces)
                                }),
                            }
                            .ok_or_else(|| {
                                fail(format!("{client:?} answered from {stored:?}, not held"))
                            })?;
                            c.from_entry = !no_store;
                            c.full = true;
                            c.body.extend_from_slice(&b);
                        }
                    }
                    if !no_store && c.full {
                        count(1, 1);
                        if head.status == StatusCode::PARTIAL_CONTENT {
                            count(2, 1);
                        }
                    }
                    c.head = Some(head);
                    if !c.streaming {
                        check_complete(client, c, &self.objects)?;
                    }
                }
                Output::Body { client, chunk } => {
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("Body for unknown {client:?}")))?;
                    if c.gone || !c.streaming || c.ended || c.aborted {
                        return Err(fail(format!("Body outside a stream for {client:?}")));
                    }
                    c.body.extend_from_slice(&chunk);
                    let cap = c
                        .head
                        .as_ref()
                        .and_then(|h| header_u64(&h.headers, header::CONTENT_LENGTH));
                    if let Some(cap) = cap {
                        if c.body.len() as u64 > cap {
                            return Err(fail(format!(
                                "{client:?} got {} bytes on a Content-Length of {cap}",
                                c.body.len()
                            )));
                        }
                    }
                }
                Output::BodyStored {
                    client,
                    body: stored,
                } => {
                    let b = match stored.tier {
                        Tier::Memory => self.hot.read(&stored),
                        Tier::Disk => self.records.get(&stored.entry).and_then(|r| {
                            let (_, body) = entry::decode(r).ok()?;
                            larder_core::storage::assemble(&body, &stored.pieces)
                        }),
                    }
                    .ok_or_else(|| fail(format!("{client:?} sent {stored:?}, not held")))?;
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("BodyStored for unknown {client:?}")))?;
                    if c.gone || !c.streaming || c.ended || c.aborted {
                        return Err(fail(format!("BodyStored outside a stream for {client:?}")));
                    }
                    c.body.extend_from_slice(&b);
                }
                Output::End { client } => {
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("End for unknown {client:?}")))?;
                    if c.gone || !c.streaming || c.ended || c.aborted {
                        return Err(fail(format!("End outside a stream for {client:?}")));
                    }
                    c.ended = true;
                    count(3, 1);
                    check_complete(client, c, &self.objects)?;
                }
                Output::Abort { client } => {
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("Abort for unknown {client:?}")))?;
                    if c.gone || !c.streaming || c.ended || c.aborted {
                        return Err(fail(format!("Abort outside a stream for {client:?}")));
                    }
                    c.aborted = true;
                }
                Output::Forward {
                    client,
                    peers,
                    head,
                    ..
                } => {
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("Forward for unknown {client:?}")))?;
                    if c.head.is_some() || peers.is_empty() {
                        return Err(fail(format!("bad Forward for {client:?}: {peers:?}")));
                    }
                    if peers.iter().any(|p| p == PEERS[0]) {
                        return Err(fail(format!("forwarded to itself: {peers:?}")));
                    }
                    c.handed_off = true;
                    if c.request.is_some() {
                        refetch.push((client, head));
                    }
                }
                Output::Pass { client, head, .. } => {
                    let c = self
                        .clients
                        .get_mut(&client)
                        .ok_or_else(|| fail(format!("Pass for unknown {client:?}")))?;
                    if c.head.is_some() {
                        return Err(fail(format!("Pass after a head for {client:?}")));
                    }
                    c.handed_off = true;
                    c.passed_unsafe = !matches!(head.method.as_str(), "GET" | "HEAD");
                }
                Output::InvalidatePeers { peers, .. } => {
                    if peers.is_empty() || peers.iter().any(|p| p == PEERS[0]) {
                        return Err(fail(format!("bad InvalidatePeers: {peers:?}")));
                    }
                }
                Output::FetchFromPeers { peers, .. }
                    if peers.is_empty() || peers.iter().any(|p| p == PEERS[0]) =>
                {
                    return Err(fail(format!("bad FetchFromPeers: {peers:?}")));
                }
                // From a peer or from the origin, the answer is scripted alike.
                Output::Fetch { fetch, request }
                | Output::FetchFromPeers { fetch, request, .. } => {
                    if self.fetches.contains_key(&fetch) || self.finished.contains(&fetch) {
                        return Err(fail(format!("fetch id {fetch:?} reused")));
                    }
                    if !matches!(request.uri.scheme_str(), Some("http" | "https")) {
                        return Err(fail(format!("fetch of a non-http URI {}", request.uri)));
                    }
                    let object = object_of(&self.objects, &request.uri).unwrap_or(31);
                    let range = request
                        .headers
                        .get(header::RANGE)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    if !range.is_empty() {
                        count(5, 1);
                    }
                    self.fetched_keys
                        .insert(format!("{} {}", request.uri, range));
                    self.fetches.insert(
                        fetch,
                        OpenFetch {
                            req: request,
                            object,
                            head: false,
                            base: 0,
                            k: 0,
                            sent: 0,
                            declared: None,
                            bodiless: false,
                            framing: None,
                        },
                    );
                }
                Output::CancelFetch { fetch } => {
                    let just_failed = failed == Some(fetch)
                        && known::tolerated(&known::ENGINE_CANCEL_AFTER_ERROR);
                    if self.fetches.remove(&fetch).is_none() && !just_failed {
                        return Err(fail(format!("CancelFetch for {fetch:?}, not open")));
                    }
                    self.finished.insert(fetch);
                }
                Output::Write {
                    entry: id,
                    tier,
                    key,
                    meta,
                    body,
                } => {
                    let bytes = body.len() as u64;
                    let promotion = tier == Tier::Memory && self.records.contains_key(&id);
                    match tier {
                        Tier::Memory => self.hot.insert(id, body.clone()),
                        Tier::Disk => {
                            self.records.insert(id, entry::encode(&meta, &body));
                        }
                    }
                    if promotion {
                        continue;
                    }
                    count(4, 1);
                    let Some(fid) = ended else {
                        return Err(fail(format!("Stored {key:?} outside an UpstreamEnd")));
                    };
                    let f = self.fetches.get(&fid).ok_or_else(|| {
                        fail(format!("Stored {key:?} after the end of {fid:?}, not open"))
                    })?;
                    if bytes != f.sent {
                        return Err(fail(format!(
                            "stored {bytes} bytes for {key:?}, the origin sent {}",
                            f.sent
                        )));
                    }
                    if f.declared.is_some_and(|d| d != bytes) {
                        return Err(fail(format!(
                            "stored {bytes} bytes for {key:?} whose head declared {:?}",
                            f.declared
                        )));
                    }
                }
                Output::UpdateMeta {
                    entry: id,
                    tier,
                    meta,
                    ..
                } => {
                    let Some(rec) = self.records.get(&id).filter(|_| tier == Tier::Disk) else {
                        return Err(fail(format!("UpdateMeta of {id:?} in {tier:?}, not held")));
                    };
                    let new = entry::replace_meta(rec, &meta)
                        .map_err(|e| fail(format!("UpdateMeta of {id:?}: {e}")))?;
                    entry::Meta::decode(&meta)
                        .map_err(|e| fail(format!("UpdateMeta of {id:?} undecodable: {e}")))?;
                    self.records.insert(id, new);
                }
                Output::Delete {
                    entry: id, tier, ..
                } => {
                    let held = match tier {
                        Tier::Memory => self.hot.remove(id).is_some(),
                        Tier::Disk => self.records.remove(&id).is_some(),
                    };
                    if !held {
                        return Err(fail(format!("Delete of {id:?} from {tier:?}, not held")));
                    }
                }
                Output::Load { entry: id, body } => loads.push((id, body)),
                // `Output` is non-exhaustive: an output this driver does not know is a failure.
                other => return Err(fail(format!("unknown output {other:?}"))),
            }
            if self.engine.stored_bytes() > self.memory {
                return Err(fail(format!(
                    "stored {} bytes with memory {}",
                    self.engine.stored_bytes(),
                    self.memory
                )));
            }
        }
        if let Some(f) = ended {
            if self.fetches.remove(&f).is_some() {
                self.finished.insert(f);
            }
        }
        for (id, body) in loads {
            let input = match self.records.get(&id).and_then(|r| entry::decode(r).ok()) {
                Some((meta, b)) => Input::Loaded {
                    entry: id,
                    meta,
                    body: body.then_some(b),
                },
                None => Input::LoadFailed { entry: id },
            };
            self.input(input)?;
        }
        // Every peer failed: the adapter hands the request back to be served here.
        for (client, head) in refetch {
            let fallback = self
                .clients
                .get_mut(&client)
                .and_then(|c| c.request.take())
                .is_some();
            if fallback {
                self.clients.get_mut(&client).expect("known").handed_off = false;
                self.input(Input::Request {
                    client,
                    head,
                    route: Route::Local,
                })?;
            }
        }
        Ok(())
    }

    fn request(
        &mut self,
        method: &str,
        url: usize,
        fields: &[(&'static str, String)],
        fallback: bool,
    ) -> Result<(), TestCaseError> {
        let Ok(mut head) = http::Request::builder()
            .method(method)
            .uri(URLS[url])
            .body(())
            .map(|r| r.into_parts().0)
        else {
            return Ok(());
        };
        for (k, v) in fields {
            append(&mut head.headers, k, v);
        }
        let client = ClientId(self.next_client);
        self.next_client += 1;
        self.clients.insert(
            client,
            ClientBook {
                method: method.to_owned(),
                object: object_of(&self.objects, &head.uri),
                request: fallback.then(|| larder_core::heads::clone_request(&head)),
                ..ClientBook::default()
            },
        );
        self.input(Input::Request {
            client,
            head,
            route: Route::ByRing,
        })
    }

    /// Sends a head for `fid`: honest ones fit the request (206 with the asked range when
    /// it carries one and the object reaches it), hostile ones are whatever was generated.
    fn head(
        &mut self,
        fid: FetchId,
        honest: bool,
        len: u64,
        version: u8,
        generated: &Head,
    ) -> Result<(), TestCaseError> {
        let f = self.fetches.get_mut(&fid).expect("open");
        let k = f.object * 20 + version as u64;
        let asked = f
            .req
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse)
            .and_then(|s| range::resolve(&s, len).ok())
            .and_then(|r| r.first().copied());
        let mut h = hostile::response(generated);
        let conditional = f.req.headers.contains_key(header::IF_NONE_MATCH)
            || f.req.headers.contains_key(header::IF_MODIFIED_SINCE);
        let (base, declared);
        if honest {
            h.headers.remove(header::CONTENT_LENGTH);
            h.headers.remove(header::CONTENT_RANGE);
            if conditional && version % 2 == 0 {
                h.status = StatusCode::NOT_MODIFIED;
                base = 0;
                declared = Some(0);
            } else if let Some(r) = asked {
                h.status = StatusCode::PARTIAL_CONTENT;
                append(&mut h.headers, "content-range", &r.content_range(len));
                h.headers.insert(header::CONTENT_LENGTH, r.len().into());
                base = r.start;
                declared = Some(r.len());
            } else {
                h.status = StatusCode::OK;
                h.headers.insert(header::CONTENT_LENGTH, len.into());
                base = 0;
                declared = Some(len);
            }
        } else {
            // The body starts where the (hostile) head says, so the bytes stay truthful.
            let cr = h
                .headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range::parse_content_range);
            base = match (h.status, cr) {
                (StatusCode::PARTIAL_CONTENT, Some((r, _))) => r.start,
                _ => 0,
            };
            declared = match (h.status, cr) {
                (StatusCode::PARTIAL_CONTENT, Some((r, _))) => Some(r.len()),
                (StatusCode::PARTIAL_CONTENT, None) => None,
                _ => header_u64(&h.headers, header::CONTENT_LENGTH),
            };
        }
        let status = h.status;
        f.head = true;
        f.base = base;
        f.k = k;
        f.bodiless = status == StatusCode::NOT_MODIFIED
            || status == StatusCode::NO_CONTENT
            || status.as_u16() < 200;
        f.declared = if f.bodiless { Some(0) } else { declared };
        let lengths: Vec<Option<u64>> = h
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().ok().and_then(|s| s.trim().parse().ok()))
            .collect();
        f.framing = if f.bodiless {
            Some(0)
        } else if !lengths.is_empty() && lengths.iter().all(|l| *l == lengths[0]) {
            lengths[0]
        } else {
            None
        };
        self.input(Input::UpstreamHead {
            fetch: fid,
            head: h,
        })
    }

    fn body(&mut self, fid: FetchId, len: u64, overshoot: bool) -> Result<(), TestCaseError> {
        let f = self.fetches.get_mut(&fid).expect("open");
        let len = match (f.declared, overshoot) {
            (Some(d), false) => len.min(d.saturating_sub(f.sent)),
            _ => len,
        };
        let len = f.framing.map_or(len, |n| len.min(n.saturating_sub(f.sent)));
        let start = f.base.saturating_add(f.sent);
        let chunk: Vec<u8> = (0..len).map(|i| byte(f.k, start.wrapping_add(i))).collect();
        f.sent += len;
        self.input(Input::UpstreamBody {
            fetch: fid,
            chunk: Bytes::from(chunk),
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Request {
                method,
                url,
                fields,
                fallback,
            } => self.request(method, *url, fields, *fallback)?,
            Op::Head {
                pick,
                honest,
                len,
                version,
                head,
            } => {
                if let Some(fid) = self.pick_fetch(*pick, Some(false)) {
                    self.head(fid, *honest, *len as u64, *version, head)?;
                }
            }
            Op::Complete {
                pick,
                len,
                version,
                extra,
            } => {
                if let Some(fid) = self.pick_fetch(*pick, Some(false)) {
                    self.complete(fid, *len as u64, *version, extra)?;
                }
            }
            Op::Body {
                pick,
                len,
                overshoot,
            } => {
                if let Some(fid) = self.pick_fetch(*pick, Some(true)) {
                    self.body(fid, *len as u64, *overshoot)?;
                }
            }
            Op::End { pick } => {
                if let Some(fid) = self.pick_fetch(*pick, Some(true)) {
                    self.input(Input::UpstreamEnd { fetch: fid })?;
                }
            }
            Op::Error { pick, kind } => {
                if let Some(fid) = self.pick_fetch(*pick, None) {
                    self.error(fid, *kind)?;
                }
            }
            Op::Gone { pick } => {
                let live: Vec<ClientId> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| !c.gone)
                    .map(|(id, _)| *id)
                    .collect();
                if !live.is_empty() {
                    let client = live[pick % live.len()];
                    self.gone(client)?;
                }
            }
            Op::PassResponse {
                pick,
                status,
                location,
            } => {
                let passed: Vec<ClientId> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| c.passed_unsafe && !c.gone)
                    .map(|(id, _)| *id)
                    .collect();
                if !passed.is_empty() {
                    let client = passed[pick % passed.len()];
                    self.pass_response(client, *status, *location)?;
                }
            }
            Op::Advance(d) => self.now = hostile::later(self.now, *d),
            Op::Timeout { at_deadline } => {
                if *at_deadline {
                    if let Some(t) = self.engine.poll_timeout() {
                        self.now = self.now.max(t);
                    }
                }
                self.input(Input::Timeout)?;
            }
            Op::Peers(ix) => {
                let peers = ix.iter().map(|i| PEERS[*i].to_owned()).collect();
                self.input(Input::PeersChanged { peers })?;
            }
            Op::Late { fetch, what } => {
                let fetch = FetchId(*fetch);
                if self.fetches.contains_key(&fetch) {
                    return Ok(());
                }
                let input = match what {
                    0 => Input::UpstreamHead {
                        fetch,
                        head: http::Response::new(()).into_parts().0,
                    },
                    1 => Input::UpstreamBody {
                        fetch,
                        chunk: Bytes::from_static(b"late"),
                    },
                    2 => Input::UpstreamEnd { fetch },
                    _ => Input::UpstreamError {
                        fetch,
                        error: UpstreamError::Truncated,
                    },
                };
                self.input(input)?;
            }
        }
        Ok(())
    }

    fn complete(
        &mut self,
        fid: FetchId,
        len: u64,
        version: u8,
        extra: &[(&'static str, String)],
    ) -> Result<(), TestCaseError> {
        let generated = Head {
            status: 200,
            fields: extra.to_vec(),
        };
        self.head(fid, true, len, version, &generated)?;
        self.send_rest(fid)?;
        if self.fetches.contains_key(&fid) {
            self.input(Input::UpstreamEnd { fetch: fid })?;
        }
        Ok(())
    }

    /// Sends the rest of the declared body (at most 4 KiB: a head may declare 2^64 bytes).
    fn send_rest(&mut self, fid: FetchId) -> Result<(), TestCaseError> {
        while let Some(f) = self.fetches.get(&fid) {
            let want = f
                .declared
                .unwrap_or(0)
                .min(f.framing.unwrap_or(u64::MAX))
                .min(4096);
            let left = want.saturating_sub(f.sent);
            if left == 0 {
                break;
            }
            let before = f.sent;
            self.body(fid, left.min(97), false)?;
            if self.fetches.get(&fid).is_some_and(|f| f.sent == before) {
                break;
            }
        }
        Ok(())
    }

    fn error(&mut self, fid: FetchId, kind: u8) -> Result<(), TestCaseError> {
        let error = match kind {
            0 => UpstreamError::Connect,
            1 => UpstreamError::Timeout,
            2 => UpstreamError::Truncated,
            _ => UpstreamError::Protocol,
        };
        self.fetches.remove(&fid);
        self.finished.insert(fid);
        self.input(Input::UpstreamError { fetch: fid, error })
    }

    fn gone(&mut self, client: ClientId) -> Result<(), TestCaseError> {
        self.clients.get_mut(&client).expect("known").gone = true;
        self.input(Input::ClientGone { client })
    }

    fn pass_response(
        &mut self,
        client: ClientId,
        status: u16,
        location: Option<&str>,
    ) -> Result<(), TestCaseError> {
        let mut head = http::Response::builder()
            .status(status)
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        if let Some(l) = location {
            append(&mut head.headers, "location", l);
            append(&mut head.headers, "content-location", l);
        }
        self.clients.get_mut(&client).expect("known").passed_unsafe = false;
        self.input(Input::PassResponse { client, head })
    }

    /// Ends everything: every fetch answered (or failed), every timer run, then every client
    /// must have its answer, and once they leave nothing may stay in flight.
    fn wind_down(&mut self, honestly: bool) -> Result<(), TestCaseError> {
        for round in 0.. {
            if round > 200 {
                return Err(fail(format!(
                    "fetches never stop: {:?}",
                    self.fetches.keys().collect::<Vec<_>>()
                )));
            }
            if let Some(t) = self.engine.poll_timeout() {
                self.now = self.now.max(t);
                self.input(Input::Timeout)?;
            }
            let Some((&fid, f)) = self.fetches.iter().next() else {
                break;
            };
            if honestly {
                if !f.head {
                    self.complete(fid, 50, 1, &[])?;
                } else {
                    self.send_rest(fid)?;
                    if self.fetches.contains_key(&fid) {
                        self.input(Input::UpstreamEnd { fetch: fid })?;
                    }
                }
            } else {
                self.error(fid, 2)?;
            }
        }
        // Unsafe passes get their answer.
        let passed: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.passed_unsafe && !c.gone)
            .map(|(id, _)| *id)
            .collect();
        for c in passed {
            self.pass_response(c, 204, None)?;
        }
        // Nothing upstream is pending, so nobody may still be waiting.
        for (id, c) in &self.clients {
            if !c.done() {
                return Err(fail(format!(
                    "{id:?} ({}) left hanging after every fetch ended: {c:?}",
                    c.method
                )));
            }
        }
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for c in ids {
            self.gone(c)?;
        }
        if !self.fetches.is_empty() {
            return Err(fail(format!(
                "fetches started after every client left: {:?}",
                self.fetches.keys().collect::<Vec<_>>()
            )));
        }
        let in_flight = self.engine.in_flight();
        if in_flight != (0, 0) {
            return Err(fail(format!("in flight after the end: {in_flight:?}")));
        }
        let bound = self.fetched_keys.len() + URLS.len();
        if self.engine.remembered_keys() > bound {
            return Err(fail(format!(
                "remembers {} keys after {} distinct fetches",
                self.engine.remembered_keys(),
                self.fetched_keys.len()
            )));
        }
        Ok(())
    }
}

/// Checks a finished response: framing (body length = Content-Length), and that its bytes
/// are one piece of one version of the client's own object, at the offset the head says.
fn check_complete(
    client: ClientId,
    c: &ClientBook,
    objects: &[Option<CacheKey>],
) -> Result<(), TestCaseError> {
    let head = c.head.as_ref().expect("has a head");
    let status = head.status;
    let bodiless = c.method == "HEAD"
        || status == StatusCode::NOT_MODIFIED
        || status.as_u16() < 200
        || status == StatusCode::NO_CONTENT;
    if bodiless {
        // A cache-made error answer to HEAD carries its reason (the adapter drops it).
        let cache_made_error = c.method == "HEAD" && c.full && !c.from_entry;
        if !c.body.is_empty() && !cache_made_error {
            return Err(fail(format!(
                "{client:?}: body on a {status} to {}",
                c.method
            )));
        }
        return Ok(());
    }
    let lengths: Vec<&http::HeaderValue> = head
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    // Tolerated while the finding reproduces: an upstream Content-Length that is not one
    // valid number reaches the client unchanged.
    let valid = |v: &&http::HeaderValue| v.to_str().is_ok_and(|s| s.trim().parse::<u64>().is_ok());
    let invalid_relayed = c.ended
        && !c.from_entry
        && (!lengths.iter().all(valid) || lengths.windows(2).any(|w| w[0] != w[1]))
        && known::tolerated(&known::ENGINE_BAD_CONTENT_LENGTH);
    let short_open_range = c.ended
        && !c.from_entry
        && status == StatusCode::PARTIAL_CONTENT
        && known::tolerated(&known::ENGINE_OPEN_RANGE_TRUNCATED);
    if (c.full || c.ended) && !invalid_relayed && !short_open_range {
        for v in &lengths {
            let ok = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|n| n == c.body.len() as u64);
            if !ok {
                return Err(fail(format!(
                    "{client:?}: {status} {} with Content-Length {v:?} and a body of {} bytes (from cache: {})",
                    if c.ended { "ended" } else { "answered" },
                    c.body.len(),
                    c.from_entry
                )));
            }
        }
        if c.from_entry && lengths.is_empty() && !known::tolerated(&known::ENGINE_304_DROPS_LENGTH)
        {
            return Err(fail(format!(
                "{client:?}: stored answer without Content-Length"
            )));
        }
    }
    let multipart = head
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"multipart/"));
    if multipart || c.body.is_empty() || !(c.from_entry || c.ended) {
        return Ok(());
    }
    let start = match status {
        StatusCode::OK => 0,
        StatusCode::PARTIAL_CONTENT => match head
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse_content_range)
        {
            Some((r, _)) => {
                if r.len() != c.body.len() as u64 && !short_open_range {
                    return Err(fail(format!(
                        "{client:?}: 206 for {r:?} with {} bytes",
                        c.body.len()
                    )));
                }
                r.start
            }
            None => return Ok(()),
        },
        _ => return Ok(()),
    };
    let k = (c.body[0] as u64 + 251 - start % 251) % 251;
    for (i, b) in c.body.iter().enumerate() {
        if *b != byte(k, start.wrapping_add(i as u64)) {
            return Err(fail(format!(
                "{client:?}: byte {i} of a {status} from offset {start} is not of the version of byte 0 (spliced or misplaced)"
            )));
        }
    }
    if let Some(o) = c.object {
        if objects.get(o as usize).is_some_and(Option::is_some) && k / 20 != o {
            return Err(fail(format!(
                "{client:?}: got the bytes of object {} instead of {o}",
                k / 20
            )));
        }
    }
    Ok(())
}

/// What the cases reached, summed over a run (printed with `LARDER_FUZZ_VERBOSE`), to see
/// that generation gets past the first request: hits, streamed fills, stores, ranges.
static REACHED: [std::sync::atomic::AtomicU64; 6] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 6];
const REACHED_NAMES: [&str; 6] = [
    "cases",
    "hits",
    "hit 206",
    "streams ended",
    "stored",
    "segment fetches",
];

fn count(i: usize, n: u64) {
    REACHED[i].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// Runs one case; a panic inside the engine is a failure (proptest reports the input).
pub fn run(case: Case) -> Result<(), TestCaseError> {
    let mut d = Driver::new(&case.cfg);
    count(0, 1);
    let result = known::guarded(|| -> Result<(), TestCaseError> {
        for op in &case.ops {
            d.apply(op)?;
        }
        d.wind_down(case.finish_honestly)
    });
    let outcome = match result {
        Ok(r) => r,
        Err(panic) => Err(fail(format!("engine panicked: {panic}"))),
    };
    if std::env::var_os("LARDER_FUZZ_VERBOSE").is_some() {
        let cases = REACHED[0].load(std::sync::atomic::Ordering::Relaxed);
        if cases.is_power_of_two() {
            let all: Vec<String> = REACHED
                .iter()
                .zip(REACHED_NAMES)
                .map(|(n, name)| {
                    format!("{name}: {}", n.load(std::sync::atomic::Ordering::Relaxed))
                })
                .collect();
            eprintln!("engine fuzz reached {}", all.join(", "));
        }
    }
    if let (Err(e), true) = (&outcome, std::env::var_os("LARDER_FUZZ_VERBOSE").is_some()) {
        let tail: Vec<&String> = d
            .log
            .iter()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        eprintln!("engine case failed: {e}\nlast inputs/outputs:");
        for l in tail {
            eprintln!("  {l}");
        }
    }
    outcome
}
