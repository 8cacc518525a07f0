//! A simulated cluster for scenario tests: N engines, a scripted origin and a virtual
//! clock, all in one thread (quinn-proto's `Pair`, str0m's `progress`). Deterministic.

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, request, response};
use larder_core::cache_status::{CACHE_NAME, Fwd};
use larder_core::engine::UpstreamError;
use larder_core::heads::clone_request;
use larder_core::storage::entry;
use larder_core::{
    ClientId, Config, Engine, EntryId, FetchId, Input, MemoryTier, Output, ResponseBody, Route,
    Tier,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// What the origin does with one request.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Serve `Range` requests with 206 (false: ignore Range and send 200).
    pub ranges: bool,
    pub fail: Option<Failure>,
    /// Interim (1xx) responses sent before the head: status and fields.
    pub interim: Vec<(u16, Vec<(String, String)>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused before any head.
    BeforeHead,
    /// Head and half the body, then the connection dies.
    CutBody,
    /// Never answers (the test drives timeouts: [`Sim::drive`]).
    Hang,
}

impl Reply {
    pub fn ok(body: &str, headers: &[(&str, &str)]) -> Self {
        Reply {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            ranges: true,
            fail: None,
            interim: Vec::new(),
        }
    }
    pub fn interim(mut self, status: u16, headers: &[(&str, &str)]) -> Self {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.interim.push((status, headers));
        self
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn ignore_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }
    pub fn failing(mut self, f: Failure) -> Self {
        self.fail = Some(f);
        self
    }
}

type Handler = Box<dyn FnMut(&request::Parts, usize) -> Reply>;

#[derive(Default, Debug)]
pub struct ClientResult {
    pub head: Option<response::Parts>,
    pub body: Vec<u8>,
    pub ended: bool,
    pub aborted: bool,
    pub forwarded_to: Vec<String>,
    pub passed: bool,
    pub pass_status: String,
    pub served_by: Option<usize>,
    /// Interim (1xx) heads received before the response head.
    pub interim: Vec<response::Parts>,
}

impl ClientResult {
    pub fn status(&self) -> u16 {
        self.head.as_ref().map(|h| h.status.as_u16()).unwrap_or(0)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .as_ref()?
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn cache_status(&self) -> String {
        self.header("cache-status").unwrap_or_default()
    }
    /// The response's `Cache-Status`, parsed (panics when there is none: a pass has its
    /// status in `pass_status`, see [`assert_passed`]).
    #[track_caller]
    pub fn status_parts(&self) -> StatusParts {
        let v = self
            .header("cache-status")
            .unwrap_or_else(|| panic!("no Cache-Status (passed: {}): {self:?}", self.passed));
        parse_cache_status(&v)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn complete(&self) -> bool {
        self.head.is_some() && (self.ended || !self.aborted)
    }
}

pub struct Sim {
    pub peers: Vec<String>,
    pub engines: Vec<Engine>,
    pub now: SystemTime,
    handler: Handler,
    /// Every request the origin saw (fetches and passes): (peer index, request).
    pub origin_log: Vec<(usize, request::Parts)>,
    pending: VecDeque<(usize, FetchId, request::Parts)>,
    hanging: Vec<(usize, FetchId)>,
    pub results: HashMap<ClientId, ClientResult>,
    pub stored: Vec<(usize, String, u64)>,
    pub evicted: Vec<(usize, String, u64)>,
    /// `UpdateMeta` outputs applied to the disk tiers.
    pub meta_updates: usize,
    pub cancelled: Vec<(usize, FetchId)>,
    next_client: u64,
    fetch_order: Vec<(usize, FetchId)>,
    /// Body chunk size the origin uses.
    pub chunk: usize,
    /// Each engine's memory tier.
    pub memory: Vec<MemoryTier>,
    /// Each engine's disk tier: whole records by id (survives [`Sim::restart`]).
    pub disk: Vec<HashMap<EntryId, Bytes>>,
    /// Loads answered with `LoadFailed` whatever the disk holds (a read error).
    pub failing_loads: bool,
    configs: Vec<Config>,
    /// Requests a peer serves for another's `FetchFromPeers`: the serving peer's client id
    /// → (the asking peer, its fetch, the serving peer).
    relays: HashMap<ClientId, (usize, FetchId, usize)>,
    /// Every `FetchFromPeers`: (asking peer, peer asked).
    pub peer_fetches: Vec<(usize, usize)>,
    /// Peers that refuse peer connections (a `FetchFromPeers` skips them).
    pub down: Vec<usize>,
    /// Every `InvalidatePeers` delivered: (from, to, key).
    pub invalidations: Vec<(usize, usize, String)>,
}

pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

impl Sim {
    /// `n` peers (n = 1: a single node without a ring).
    pub fn new(
        n: usize,
        config: Config,
        handler: impl FnMut(&request::Parts, usize) -> Reply + 'static,
    ) -> Self {
        let peers: Vec<String> = (0..n).map(|i| format!("http://peer{i}:3128")).collect();
        let configs: Vec<Config> = peers
            .iter()
            .map(|p| {
                let mut c = config.clone();
                if n > 1 {
                    c.self_id = Some(p.clone());
                    c.peers = peers.clone();
                }
                c
            })
            .collect();
        let engines = configs
            .iter()
            .map(|c| Engine::new(c.clone()).unwrap())
            .collect();
        Sim {
            peers,
            engines,
            now: t0(),
            handler: Box::new(handler),
            origin_log: Vec::new(),
            pending: VecDeque::new(),
            hanging: Vec::new(),
            results: HashMap::new(),
            stored: Vec::new(),
            evicted: Vec::new(),
            meta_updates: 0,
            cancelled: Vec::new(),
            next_client: 0,
            fetch_order: Vec::new(),
            chunk: 7,
            memory: (0..n).map(|_| MemoryTier::new()).collect(),
            disk: (0..n).map(|_| HashMap::new()).collect(),
            failing_loads: false,
            configs,
            relays: HashMap::new(),
            peer_fetches: Vec::new(),
            down: Vec::new(),
            invalidations: Vec::new(),
        }
    }

    /// Restarts peer `at`: a new engine (ids from `first_entry_id`), an empty memory tier,
    /// and every record its disk holds announced, as a peer's start-up scan does.
    pub fn restart(&mut self, at: usize, first_entry_id: u64) {
        let mut c = self.configs[at].clone();
        c.first_entry_id = first_entry_id;
        self.engines[at] = Engine::new(c).unwrap();
        self.memory[at] = MemoryTier::new();
        let mut records: Vec<(EntryId, Bytes)> =
            self.disk[at].iter().map(|(k, v)| (*k, v.clone())).collect();
        records.sort_by_key(|(id, _)| *id);
        for (id, record) in records {
            let Ok((meta, _)) = entry::decode(&record) else {
                self.disk[at].remove(&id);
                continue;
            };
            let meta = entry::Meta::decode(&meta).expect("a checked record decodes");
            self.input(
                at,
                Input::Restored {
                    entry: id,
                    key: meta.key,
                    bytes: record.len() as u64,
                },
            );
        }
    }

    pub fn single(handler: impl FnMut(&request::Parts, usize) -> Reply + 'static) -> Self {
        Sim::new(1, Config::default(), handler)
    }

    pub fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    pub fn origin_hits(&self) -> usize {
        self.origin_log.len()
    }

    /// Sends a request to peer `at` without letting the origin answer yet.
    pub fn send(
        &mut self,
        at: usize,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> ClientId {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let head = b.body(()).unwrap().into_parts().0;
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.results.insert(id, ClientResult::default());
        self.input(
            at,
            Input::Request {
                client: id,
                head,
                route: Route::ByRing,
            },
        );
        id
    }

    /// Sends a request and runs the whole system until idle.
    pub fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> &ClientResult {
        let id = self.send(0, "GET", url, headers);
        self.run();
        &self.results[&id]
    }

    /// A GET at peer `at`, run until idle.
    pub fn get_at(&mut self, at: usize, url: &str) -> &ClientResult {
        let id = self.send(at, "GET", url, &[]);
        self.run();
        &self.results[&id]
    }

    pub fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> &ClientResult {
        let id = self.send(0, method, url, headers);
        self.run();
        &self.results[&id]
    }

    pub fn input(&mut self, at: usize, input: Input) {
        let now = self.now;
        self.engines[at].handle_input(now, input);
        self.drain(at);
    }

    fn drain(&mut self, at: usize) {
        while let Some(out) = self.engines[at].poll_output() {
            // A relay cancelled while this peer's outputs were being drained (the asker's
            // reaction to an earlier one): what follows for it goes nowhere, as a real
            // adapter drops outputs for a connection already closed.
            let to = match &out {
                Output::Respond { client, .. }
                | Output::Interim { client, .. }
                | Output::Body { client, .. }
                | Output::BodyStored { client, .. }
                | Output::End { client }
                | Output::Abort { client } => Some(*client),
                _ => None,
            };
            if to.is_some_and(|c| c.0 > u64::MAX / 2 && !self.relays.contains_key(&c)) {
                continue;
            }
            match out {
                Output::Respond {
                    client, head, body, ..
                } if self.relays.contains_key(&client) => {
                    let (from, fetch, _) = self.relays[&client];
                    self.input(from, Input::UpstreamHead { fetch, head });
                    let bytes = match body {
                        ResponseBody::Stream => continue,
                        ResponseBody::Empty => Some(Bytes::new()),
                        ResponseBody::Full(b) => Some(b),
                        ResponseBody::Stored(stored) => match stored.tier {
                            Tier::Memory => self.memory[at].read(&stored),
                            Tier::Disk => self.disk[at].get(&stored.entry).and_then(|rec| {
                                let (_, body) = entry::decode(rec).ok()?;
                                larder_core::storage::assemble(&body, &stored.pieces)
                            }),
                        },
                    };
                    self.relays.remove(&client);
                    match bytes {
                        Some(b) => {
                            if !b.is_empty() {
                                self.input(from, Input::UpstreamBody { fetch, chunk: b });
                            }
                            self.input(from, Input::UpstreamEnd { fetch });
                        }
                        None => {
                            let error = UpstreamError::Truncated;
                            self.input(from, Input::UpstreamError { fetch, error });
                        }
                    }
                }
                Output::Body { client, chunk } if self.relays.contains_key(&client) => {
                    let (from, fetch, _) = self.relays[&client];
                    self.input(from, Input::UpstreamBody { fetch, chunk });
                }
                Output::BodyStored { client, body } => {
                    let bytes = match body.tier {
                        Tier::Memory => self.memory[at].read(&body),
                        Tier::Disk => self.disk[at].get(&body.entry).and_then(|rec| {
                            let (_, b) = entry::decode(rec).ok()?;
                            larder_core::storage::assemble(&b, &body.pieces)
                        }),
                    };
                    let Some(chunk) = bytes else {
                        // The tier lost it: the adapter aborts the response.
                        match self.relays.remove(&client) {
                            Some((from, fetch, _)) => {
                                let error = UpstreamError::Truncated;
                                self.input(from, Input::UpstreamError { fetch, error });
                            }
                            None => self.results.get_mut(&client).unwrap().aborted = true,
                        }
                        continue;
                    };
                    match self.relays.get(&client) {
                        Some(&(from, fetch, _)) => {
                            self.input(from, Input::UpstreamBody { fetch, chunk })
                        }
                        None => {
                            let r = self.results.get_mut(&client).unwrap();
                            assert!(r.head.is_some() && !r.ended, "body outside a stream");
                            r.body.extend_from_slice(&chunk);
                        }
                    }
                }
                Output::End { client } if self.relays.contains_key(&client) => {
                    let (from, fetch, _) = self.relays.remove(&client).expect("checked");
                    self.input(from, Input::UpstreamEnd { fetch });
                }
                Output::Abort { client } if self.relays.contains_key(&client) => {
                    let (from, fetch, _) = self.relays.remove(&client).expect("checked");
                    let error = UpstreamError::Truncated;
                    self.input(from, Input::UpstreamError { fetch, error });
                }
                Output::InvalidatePeers {
                    key,
                    peers,
                    selector,
                } => {
                    for p in peers {
                        let Some(target) = self.peers.iter().position(|q| *q == p) else {
                            continue;
                        };
                        if self.down.contains(&target) {
                            continue;
                        }
                        self.invalidations.push((at, target, key.to_string()));
                        let mut head = Request::builder()
                            .method("PURGE")
                            .uri(key.as_str())
                            .header(larder_core::hop::PURGE_SCOPE, "local")
                            .body(())
                            .unwrap()
                            .into_parts()
                            .0;
                        for (n, v) in selector.iter().flat_map(|s| s.fields()) {
                            head.headers.insert(n, v);
                        }
                        let client = ClientId(self.next_client);
                        self.next_client += 1;
                        self.results.insert(client, ClientResult::default());
                        self.input(
                            target,
                            Input::Request {
                                client,
                                head,
                                route: Route::Local,
                            },
                        );
                    }
                }
                Output::FetchFromPeers {
                    fetch,
                    peers,
                    request,
                } => {
                    let target = peers
                        .iter()
                        .filter_map(|p| self.peers.iter().position(|q| q == p))
                        .find(|i| !self.down.contains(i));
                    let Some(target) = target else {
                        let error = UpstreamError::Connect;
                        self.input(at, Input::UpstreamError { fetch, error });
                        continue;
                    };
                    self.peer_fetches.push((at, target));
                    self.next_client += 1;
                    let client = ClientId(u64::MAX / 2 + self.next_client);
                    self.relays.insert(client, (at, fetch, target));
                    // Served where it lands, as peer traffic.
                    self.input(
                        target,
                        Input::Request {
                            client,
                            head: request,
                            route: Route::Local,
                        },
                    );
                }
                Output::Interim { client, head } if self.relays.contains_key(&client) => {
                    let (from, fetch, _) = self.relays[&client];
                    self.input(from, Input::UpstreamInterim { fetch, head });
                }
                Output::Interim { client, head } => {
                    let r = self.results.get_mut(&client).expect("known client");
                    assert!(
                        r.head.is_none(),
                        "an interim head after the head for {client:?}"
                    );
                    r.interim.push(head);
                }
                Output::Respond {
                    client, head, body, ..
                } => {
                    let r = self.results.get_mut(&client).expect("known client");
                    assert!(r.head.is_none(), "two heads for {client:?}");
                    r.head = Some(head);
                    r.served_by = Some(at);
                    match body {
                        ResponseBody::Empty => r.ended = true,
                        ResponseBody::Full(b) => {
                            r.body.extend_from_slice(&b);
                            r.ended = true;
                        }
                        ResponseBody::Stored(stored) => {
                            let bytes = match stored.tier {
                                Tier::Memory => self.memory[at].read(&stored),
                                Tier::Disk => self.disk[at].get(&stored.entry).and_then(|rec| {
                                    let (_, body) = entry::decode(rec).ok()?;
                                    larder_core::storage::assemble(&body, &stored.pieces)
                                }),
                            };
                            match bytes {
                                Some(b) => {
                                    r.body.extend_from_slice(&b);
                                    r.ended = true;
                                }
                                None => r.aborted = true,
                            }
                        }
                        ResponseBody::Stream => {}
                    }
                }
                Output::Body { client, chunk } => {
                    let r = self.results.get_mut(&client).unwrap();
                    assert!(r.head.is_some() && !r.ended, "body outside a stream");
                    r.body.extend_from_slice(&chunk);
                }
                Output::End { client } => {
                    let r = self
                        .results
                        .get_mut(&client)
                        .unwrap_or_else(|| panic!("End for unknown {client:?} at {at}"));
                    assert!(!r.ended, "ended twice");
                    r.ended = true;
                }
                Output::Abort { client } => self.results.get_mut(&client).unwrap().aborted = true,
                Output::Forward {
                    client,
                    peers,
                    head,
                    ..
                } => {
                    let target = self
                        .peers
                        .iter()
                        .position(|p| *p == peers[0])
                        .expect("known peer");
                    self.results
                        .get_mut(&client)
                        .unwrap()
                        .forwarded_to
                        .push(peers[0].clone());
                    // Re-run the same request on the owner, marked as peer traffic.
                    self.input(
                        target,
                        Input::Request {
                            client,
                            head,
                            route: Route::Local,
                        },
                    );
                }
                Output::Pass {
                    client,
                    status,
                    head,
                } => {
                    let r = self.results.get_mut(&client).unwrap();
                    r.passed = true;
                    r.pass_status = status.to_string();
                    self.fetch_order
                        .push((at, FetchId(u64::MAX - self.fetch_order.len() as u64)));
                    let n = self.fetch_order.len() - 1;
                    let reply = (self.handler)(&head, n);
                    self.origin_log.push((at, head));
                    let (res, _) =
                        build(&clone_request(&self.origin_log.last().unwrap().1), &reply);
                    self.input(at, Input::PassResponse { client, head: res });
                }
                Output::Fetch { fetch, request } => {
                    self.fetch_order.push((at, fetch));
                    self.origin_log.push((at, clone_request(&request)));
                    self.pending.push_back((at, fetch, request));
                }
                Output::CancelFetch { fetch } => {
                    let relayed: Vec<(ClientId, usize)> = self
                        .relays
                        .iter()
                        .filter(|(_, (from, f, _))| *from == at && *f == fetch)
                        .map(|(c, (_, _, target))| (*c, *target))
                        .collect();
                    for (client, target) in relayed {
                        self.relays.remove(&client);
                        self.input(target, Input::ClientGone { client });
                    }
                    self.cancelled.push((at, fetch));
                    self.pending.retain(|(a, f, _)| !(*a == at && *f == fetch));
                }
                Output::Write {
                    entry: id,
                    tier,
                    key,
                    meta,
                    body,
                } => {
                    let bytes = body.len() as u64;
                    let known =
                        self.memory[at].get(id).is_some() || self.disk[at].contains_key(&id);
                    match tier {
                        Tier::Memory => self.memory[at].insert(id, body),
                        Tier::Disk => {
                            self.disk[at].insert(id, entry::encode(&meta, &body));
                        }
                    }
                    // A promotion from disk is not a new store.
                    let promoted = tier == Tier::Memory && self.disk[at].contains_key(&id);
                    if !known && !promoted {
                        self.stored.push((at, key.to_string(), bytes));
                    }
                }
                Output::UpdateMeta {
                    entry: id,
                    tier,
                    meta,
                    ..
                } => {
                    assert_eq!(tier, Tier::Disk, "only the disk tier keeps metadata");
                    let rec = self.disk[at]
                        .get(&id)
                        .expect("UpdateMeta of a record not held");
                    let new = entry::replace_meta(rec, &meta).expect("a sound record");
                    self.disk[at].insert(id, new);
                    self.meta_updates += 1;
                }
                Output::Delete {
                    entry: id,
                    tier,
                    key,
                } => {
                    let bytes = match tier {
                        Tier::Memory => self.memory[at].remove(id).map(|b| b.len() as u64),
                        Tier::Disk => self.disk[at].remove(&id).map(|b| b.len() as u64),
                    };
                    self.evicted.push((at, key.to_string(), bytes.unwrap_or(0)));
                }
                Output::Load { entry: id, body } => {
                    let loaded = self.disk[at]
                        .get(&id)
                        .filter(|_| !self.failing_loads)
                        .and_then(|rec| entry::decode(rec).ok());
                    let input = match loaded {
                        Some((meta, b)) => Input::Loaded {
                            entry: id,
                            meta,
                            body: body.then_some(b),
                        },
                        None => Input::LoadFailed { entry: id },
                    };
                    self.input(at, input);
                }
                // `Output` is non-exhaustive: an output the simulator does not know fails the test.
                other => panic!("unknown output {other:?}"),
            }
        }
    }

    /// Takes the first pending fetch for the test to answer by hand.
    pub fn take_pending(&mut self) -> Option<(usize, FetchId, request::Parts)> {
        self.pending.pop_front()
    }

    /// Lets the origin answer everything pending, repeatedly, until the system is idle.
    pub fn run(&mut self) {
        while let Some((at, fetch, req)) = self.pending.pop_front() {
            let n = self.fetch_index(at, fetch);
            let reply = (self.handler)(&req, n);
            self.answer(at, fetch, &req, reply);
        }
    }

    /// Answers only the first pending fetch's head (body held back) — for mid-stream joins.
    pub fn answer_head_only(&mut self) -> Option<(usize, FetchId, Reply)> {
        let (at, fetch, req) = self.pending.pop_front()?;
        let n = self.fetch_index(at, fetch);
        let reply = (self.handler)(&req, n);
        let (head, _) = build(&req, &reply);
        self.input(at, Input::UpstreamHead { fetch, head });
        Some((at, fetch, reply))
    }

    fn answer(&mut self, at: usize, fetch: FetchId, req: &request::Parts, reply: Reply) {
        match reply.fail {
            Some(Failure::BeforeHead) => {
                self.input(
                    at,
                    Input::UpstreamError {
                        fetch,
                        error: UpstreamError::Connect,
                    },
                );
                return;
            }
            Some(Failure::Hang) => {
                self.hanging.push((at, fetch));
                return;
            }
            _ => {}
        }
        for (status, fields) in &reply.interim {
            let mut b = Response::builder().status(*status);
            for (k, v) in fields {
                b = b.header(k.as_str(), v.as_str());
            }
            let head = b.body(()).unwrap().into_parts().0;
            self.input(at, Input::UpstreamInterim { fetch, head });
        }
        let (head, body) = build(req, &reply);
        self.input(at, Input::UpstreamHead { fetch, head });
        let cut = reply.fail == Some(Failure::CutBody);
        let limit = if cut { body.len() / 2 } else { body.len() };
        for piece in body[..limit].chunks(self.chunk.max(1)) {
            self.input(
                at,
                Input::UpstreamBody {
                    fetch,
                    chunk: Bytes::copy_from_slice(piece),
                },
            );
        }
        if cut {
            self.input(
                at,
                Input::UpstreamError {
                    fetch,
                    error: UpstreamError::Truncated,
                },
            );
        } else {
            self.input(at, Input::UpstreamEnd { fetch });
        }
    }

    /// 0-based position of this fetch among everything the origin was asked.
    fn fetch_index(&self, at: usize, fetch: FetchId) -> usize {
        self.fetch_order
            .iter()
            .position(|x| *x == (at, fetch))
            .expect("known fetch")
    }

    pub fn hanging(&self) -> usize {
        self.hanging.len()
    }

    /// Delivers `Input::Timeout` to every engine whose deadline is due at the current
    /// virtual time (the clock does not move; see [`Sim::drive`] for that).
    pub fn fire_timeouts(&mut self) {
        for i in 0..self.engines.len() {
            if let Some(t) = self.engines[i].poll_timeout() {
                if t <= self.now {
                    self.input(i, Input::Timeout);
                }
            }
        }
    }

    /// The earliest deadline any engine asked for (`poll_timeout`), if any.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.engines.iter().filter_map(Engine::poll_timeout).min()
    }

    /// Runs the system until nothing is left to do, letting virtual time pass as needed:
    /// the origin answers everything pending ([`Sim::run`]); then, while an engine has a
    /// deadline, the clock moves to the earliest one (never backwards) and every engine due
    /// gets `Input::Timeout`; and again. Returns when no engine has a deadline and no fetch
    /// is pending (hanging fetches stay hanging: the origin never answers them). Panics
    /// after [`DRIVE_STEPS_MAX`] rounds, which means a deadline that a timeout does not
    /// clear (the engine would spin an adapter's timer loop the same way).
    pub fn drive(&mut self) {
        for _ in 0..DRIVE_STEPS_MAX {
            self.run();
            let Some(deadline) = self.next_deadline() else {
                return;
            };
            self.now = self.now.max(deadline);
            self.fire_timeouts();
        }
        let since = |t: SystemTime| t.duration_since(t0()).unwrap_or_default();
        panic!(
            "Sim::drive: still busy after {DRIVE_STEPS_MAX} rounds at t0+{:?}: next deadline \
             t0+{:?}, {} fetch(es) pending; a deadline Input::Timeout does not clear?",
            since(self.now),
            self.next_deadline().map(since),
            self.pending.len(),
        );
    }
}

/// Rounds [`Sim::drive`] allows before it calls the system stuck.
pub const DRIVE_STEPS_MAX: usize = 10_000;

/// One `Cache-Status` list member (RFC 9211), parsed: `larder; hit; ttl=5`,
/// `larder; fwd=uri-miss; stored`. Tests assert on these fields, not on substrings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusParts {
    /// The cache's name (the member's bare item): always `larder` here.
    pub cache: String,
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    /// Remaining freshness in seconds; negative when served stale.
    pub ttl: Option<i64>,
    pub detail: Option<String>,
}

impl StatusParts {
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    /// Served from cache while fresh: `hit`, no `fwd`, `ttl` ≥ 0.
    pub fn is_hit(&self) -> bool {
        self.hit && self.fwd.is_none() && self.ttl.is_some_and(|t| t >= 0)
    }
    /// Served from cache while stale (`hit` with `ttl` < 0): by stale-while-revalidate, or
    /// by stale-if-error (which also says `fwd=stale`).
    pub fn is_stale(&self) -> bool {
        self.hit && self.ttl.is_some_and(|t| t < 0) && matches!(self.fwd, None | Some(Fwd::Stale))
    }
    /// Went forward for `why`, and was not a hit.
    pub fn is_fwd(&self, why: Fwd) -> bool {
        !self.hit && self.fwd == Some(why)
    }
    /// Went forward because nothing was stored for the URI.
    pub fn is_miss(&self) -> bool {
        self.is_fwd(Fwd::UriMiss)
    }
    /// A stored response validated with the origin, which answered 304.
    pub fn is_revalidated(&self) -> bool {
        !self.hit
            && matches!(self.fwd, Some(Fwd::Stale | Fwd::Request))
            && self.fwd_status == Some(304)
    }
}

/// Splits `s` on `sep` outside double-quoted strings (RFC 8941 sf-string, `\` escapes).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    assert!(!quoted, "unterminated string in {s:?}");
    parts.push(&s[start..]);
    parts
}

/// Parses a `Cache-Status` field value and returns its last member (RFC 9211: the cache
/// closest to the user). Panics on anything malformed or unknown, so a format change in
/// the engine shows up here rather than as a silently passing substring check.
pub fn parse_cache_status(value: &str) -> StatusParts {
    let member = split_unquoted(value, ',')
        .pop()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| panic!("empty Cache-Status {value:?}"));
    let mut items = split_unquoted(member, ';').into_iter().map(str::trim);
    let mut p = StatusParts {
        cache: items.next().unwrap_or_default().to_owned(),
        ..Default::default()
    };
    assert_eq!(p.cache, CACHE_NAME, "Cache-Status member {member:?}");
    for item in items {
        let known = match item.split_once('=').map(|(n, v)| (n.trim(), v.trim())) {
            None => {
                let flag = match item {
                    "hit" => Some(&mut p.hit),
                    "stored" => Some(&mut p.stored),
                    "collapsed" => Some(&mut p.collapsed),
                    _ => None,
                };
                // Known, and not said twice.
                flag.is_some_and(|f| !std::mem::replace(f, true))
            }
            Some(("fwd", v)) if p.fwd.is_none() => {
                p.fwd = Fwd::parse(v);
                p.fwd.is_some()
            }
            Some(("fwd-status", v)) if p.fwd_status.is_none() => {
                p.fwd_status = v.parse().ok();
                p.fwd_status.is_some()
            }
            Some(("ttl", v)) if p.ttl.is_none() => {
                p.ttl = v.parse().ok();
                p.ttl.is_some()
            }
            Some(("detail", v)) if p.detail.is_none() && !v.is_empty() => {
                p.detail = Some(match v.strip_prefix('"') {
                    Some(q) => unescape(q.strip_suffix('"').expect("a closed string")),
                    None => v.to_owned(),
                });
                true
            }
            _ => false,
        };
        assert!(known, "bad Cache-Status parameter {item:?} in {value:?}");
    }
    p
}

/// The inside of an sf-string: a backslash escapes the character after it.
fn unescape(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut chars = q.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// The response was served from cache while fresh ([`StatusParts::is_hit`]).
#[track_caller]
pub fn assert_hit(r: &ClientResult) -> StatusParts {
    let p = r.status_parts();
    assert!(
        p.is_hit(),
        "expected a fresh hit, got {:?}",
        r.cache_status()
    );
    p
}

/// The response was served from cache while stale ([`StatusParts::is_stale`]).
#[track_caller]
pub fn assert_stale(r: &ClientResult) -> StatusParts {
    let p = r.status_parts();
    assert!(
        p.is_stale(),
        "expected a stale hit, got {:?}",
        r.cache_status()
    );
    p
}

/// The response went to the origin because nothing was stored for the URI
/// (`fwd=uri-miss`, no `hit`).
#[track_caller]
pub fn assert_miss(r: &ClientResult) -> StatusParts {
    assert_fwd(r, Fwd::UriMiss)
}

/// The response went forward for `why`, and was not a hit.
#[track_caller]
pub fn assert_fwd(r: &ClientResult, why: Fwd) -> StatusParts {
    let p = r.status_parts();
    assert!(
        p.is_fwd(why),
        "expected fwd={}, got {:?}",
        why.as_str(),
        r.cache_status()
    );
    p
}

/// A stored response was validated with the origin, which answered 304: not a hit,
/// `fwd=stale` (or `request`), `fwd-status=304`.
#[track_caller]
pub fn assert_revalidated(r: &ClientResult) -> StatusParts {
    let p = r.status_parts();
    assert!(
        p.is_revalidated(),
        "expected a 304 revalidation, got {:?}",
        r.cache_status()
    );
    p
}

/// The request was passed to the origin untouched (`Output::Pass`); returns the status
/// the pass carried.
#[track_caller]
pub fn assert_passed(r: &ClientResult) -> StatusParts {
    assert!(r.passed, "expected a pass, got {:?}", r.cache_status());
    parse_cache_status(&r.pass_status)
}

/// The origin's response: honours Range (206) when asked and allowed.
fn build(req: &request::Parts, reply: &Reply) -> (response::Parts, Vec<u8>) {
    let mut b = Response::builder()
        .status(reply.status)
        .header("date", httpdate::fmt_http_date(t0()));
    let mut headers = HeaderMap::new();
    for (k, v) in &reply.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut body = reply.body.clone();
    let range = req
        .headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut status = StatusCode::from_u16(reply.status).unwrap();
    if let (Some(r), true, 200) = (range, reply.ranges, reply.status) {
        let (a, bnd) = r.trim_start_matches("bytes=").split_once('-').unwrap();
        let total = body.len() as u64;
        let a: u64 = a.parse().unwrap();
        if a >= total {
            body.clear();
            status = StatusCode::RANGE_NOT_SATISFIABLE;
            headers.insert("content-range", format!("bytes */{total}").parse().unwrap());
        } else {
            let e: u64 = bnd.parse::<u64>().unwrap().min(total - 1);
            body = body[a as usize..=e as usize].to_vec();
            status = StatusCode::PARTIAL_CONTENT;
            headers.insert(
                "content-range",
                format!("bytes {a}-{e}/{total}").parse().unwrap(),
            );
        }
    }
    if status != StatusCode::NOT_MODIFIED {
        headers.insert("content-length", body.len().into());
    } else {
        body.clear();
    }
    b = b.status(status);
    let mut head = b.body(()).unwrap().into_parts().0;
    for (k, v) in headers.iter() {
        head.headers.append(k.clone(), v.clone());
    }
    (head, body)
}
