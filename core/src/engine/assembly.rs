//! Large objects served from their segments. One client's response is assembled in order
//! from segments stored here, fetched from the peers that own them, or fetched from the
//! origin, with a few segments read ahead; each is sent as soon as its bytes arrive.
//! Every segment must carry the version (length and validator) the response began with:
//! a mismatch aborts the response, never splices two versions into one, and drops the
//! older copies here so the next request is served whole from the newer one.

use super::{ClientId, Engine, FetchId, FetchKind, Output, Phase};
use crate::cache_status::CacheStatus;
use crate::key::CacheKey;
use crate::policy::{self, Reuse, conditional};
use crate::segment::{self, Segments, Version};
use crate::storage::{EntryId, Piece, StoredBody};
use bytes::Bytes;
use http::{header, request, response};
use std::collections::{BTreeMap, VecDeque};

/// What a large object's stored segment 0 says about a request.
pub(super) enum Segment0 {
    /// Answered from the segments (or parked for a disk load).
    Answered,
    /// Stored but stale: revalidate it with this request.
    Stale(EntryId, Box<request::Parts>),
    /// Not stored here.
    Unknown,
}

/// One client's response made of an object's segments.
#[derive(Debug)]
pub(super) struct Assembly {
    object: CacheKey,
    version: Version,
    /// The request segment fetches send: the client's, without Range or conditions.
    request: request::Parts,
    /// What is still to send, in order (byte slices of the object, multipart boundaries).
    pieces: VecDeque<Piece>,
    /// The segments being read, by index: the current one and those read ahead.
    parts: BTreeMap<u64, Part>,
    /// The response head, held until the first segment needed shows the version it was
    /// made for: an object found changed by then is answered anew, consistently.
    head: Option<Output>,
    /// Tells this assembly from a later one of the same client (answered anew).
    generation: u64,
}

/// Where one segment's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// An entry of this peer's tiers.
    Stored(EntryId),
    /// A fetch under way (from the origin or the segment's owner).
    Fetch(FetchId),
    /// This peer's copy, on disk only (after a restart): its record is being read.
    Loading,
}

#[derive(Debug)]
struct Part {
    source: Source,
    /// The segment's bytes received so far, from its start. Kept until the part is no
    /// longer needed (one segment at most): a multi-range request may read an earlier
    /// offset of the same segment after a later one.
    chunks: Vec<Bytes>,
    /// Segment offset of the end of what arrived.
    received: u64,
    done: bool,
    /// Fetched again after a failure: a second failure ends the response.
    retried: bool,
    /// Its head showed the assembly's version (a stored copy was chosen for it).
    verified: bool,
}

impl Part {
    fn new(source: Source) -> Self {
        Part {
            source,
            chunks: Vec::new(),
            received: 0,
            done: false,
            retried: false,
            verified: matches!(source, Source::Stored(_)),
        }
    }

    fn push(&mut self, offset: u64, chunk: Bytes) {
        if chunk.is_empty() || offset > self.received {
            return;
        }
        if offset + chunk.len() as u64 <= self.received {
            return;
        }
        // Only what is new (a replay after a retry may overlap what arrived).
        let chunk = chunk.slice((self.received - offset) as usize..);
        self.received += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    /// Up to `want` bytes from segment offset `at`, when they have arrived.
    fn take(&self, at: u64, want: u64) -> Option<Bytes> {
        let mut start = 0u64;
        for c in &self.chunks {
            let end = start + c.len() as u64;
            if at < end {
                let from = (at - start) as usize;
                let n = (c.len() - from).min(want as usize);
                return Some(c.slice(from..from + n));
            }
            start = end;
        }
        None
    }

    fn reset(&mut self, source: Source) {
        *self = Part {
            retried: true,
            ..Part::new(source)
        };
    }
}

/// The request a segment fetch sends: the client's, without Range or conditions, and
/// without its `Via` (a new request of this peer's, not the client's passing through: the
/// entry peer that forwarded it may own a segment, and would see itself in it as a loop).
pub(super) fn part_request(client: &request::Parts) -> request::Parts {
    let mut r = policy::fill_request(client);
    r.headers.remove(header::VIA);
    r
}

/// Where `start_part` looks for a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Stored here (in memory or on disk), a fetch under way, its owner, the origin.
    Everywhere,
    /// The same, but no disk load (one was just tried).
    NotDisk,
    /// The origin only (its owner failed).
    Origin,
}

/// The segment indexes the remaining pieces need, in order, at most `limit` of them.
fn needed(pieces: &VecDeque<Piece>, segs: Segments, limit: usize) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::with_capacity(limit);
    for p in pieces {
        let Piece::Slice { start, len } = *p else {
            continue;
        };
        if len == 0 {
            continue;
        }
        let (first, last) = (
            segs.index_of(start),
            segs.index_of(start.saturating_add(len - 1)),
        );
        let mut i = first;
        while i <= last && out.len() < limit {
            if !out.contains(&i) {
                out.push(i);
            }
            i += 1;
        }
        if out.len() >= limit {
            break;
        }
    }
    out
}

impl Engine {
    fn segments_grid(&self) -> Segments {
        Segments::new(
            self.config
                .segment_size
                .unwrap_or(segment::DEFAULT_SEGMENT_SIZE),
        )
    }

    /// Answers a client from the segments of a large object of `version`, whose whole head
    /// (a 200 with the object's length) is `whole`. `first`: segment 0's source, known.
    pub(super) fn begin_assembly(
        &mut self,
        cid: ClientId,
        object: CacheKey,
        version: Version,
        whole: &response::Parts,
        (status, age): (CacheStatus, Option<u64>),
        first: Option<Source>,
    ) {
        let Some(client) = self.clients.get(&cid) else {
            return;
        };
        let total = version.total;
        let (mut head, pieces) = match super::respond::shape(&client.req, whole, Some(total)) {
            super::respond::Shape::NotModified => (conditional::not_modified_response(whole), None),
            super::respond::Shape::Head => (crate::heads::clone_response(whole), None),
            super::respond::Shape::Unsatisfiable => {
                (super::respond::unsatisfiable(Some(total)), None)
            }
            super::respond::Shape::Whole => (
                crate::heads::clone_response(whole),
                Some(vec![Piece::Slice {
                    start: 0,
                    len: total,
                }]),
            ),
            super::respond::Shape::Single(r) => (
                super::respond::partial(whole, r, total),
                Some(vec![Piece::Slice {
                    start: r.start,
                    len: r.len(),
                }]),
            ),
            super::respond::Shape::Multi(rs) => {
                let (h, p) = super::respond::multipart(whole, &rs, total);
                (h, Some(p))
            }
        };
        super::respond::set_status_headers(&mut head, &status, age);
        let streaming = pieces.is_some();
        let respond = Output::Respond {
            client: cid,
            outcome: status.outcome(head.status),
            collapsed: status.collapsed,
            head,
            body: if streaming {
                super::ResponseBody::Stream
            } else {
                super::ResponseBody::Empty
            },
        };
        let respond = if streaming {
            Some(respond)
        } else {
            self.outputs.push_back(respond);
            None
        };
        // It no longer waits on any fetch as a client; segment 0's fetch feeds it instead.
        let waited = self
            .clients
            .get(&cid)
            .and_then(|c| c.phase.fetch())
            .or(match first {
                Some(Source::Fetch(f)) => Some(f),
                _ => None,
            });
        if let Some(fid) = waited {
            if let Some(f) = self.fetches.get_mut(&fid) {
                f.clients.retain(|c| *c != cid);
            }
        }
        let Some(pieces) = pieces else {
            self.take_client(cid);
            if let Some(fid) = waited {
                self.maybe_finish(fid);
            }
            return;
        };
        let request = {
            let c = self.clients.get_mut(&cid).expect("checked");
            c.phase = Phase::Assembling;
            part_request(&c.req)
        };
        self.deadlines.clear(cid);
        let mut a = Assembly {
            object,
            version,
            request,
            pieces: pieces.into(),
            parts: BTreeMap::new(),
            head: respond,
            generation: {
                self.next_assembly += 1;
                self.next_assembly
            },
        };
        if let Some(source) = first {
            let mut part = Part::new(source);
            // Segment 0's head is where the version came from.
            part.verified = true;
            if let Source::Fetch(fid) = source {
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.feeds.push(cid);
                    let mut at = 0;
                    for c in &f.chunks {
                        part.push(at, c.clone());
                        at += c.len() as u64;
                    }
                }
            }
            a.parts.insert(0, part);
        }
        self.assemblies.insert(cid, a);
        self.pump(cid);
    }

    /// Sends what can be sent now, in order; starts the segments needed next.
    pub(super) fn pump(&mut self, cid: ClientId) {
        let segs = self.segments_grid();
        loop {
            self.schedule(cid);
            let Some(a) = self.assemblies.get_mut(&cid) else {
                return;
            };
            if a.head.is_some() {
                let first = needed(&a.pieces, segs, 1);
                let ready = first
                    .first()
                    .is_none_or(|i| a.parts.get(i).is_some_and(|p| p.verified));
                if !ready {
                    return;
                }
                let head = a.head.take().expect("checked");
                self.outputs.push_back(head);
                continue;
            }
            let total = a.version.total;
            let Some(front) = a.pieces.front_mut() else {
                self.end_assembly(cid);
                if self.take_client(cid).is_some() {
                    self.outputs.push_back(Output::End { client: cid });
                }
                return;
            };
            let (start, len) = match front {
                Piece::Literal(b) => {
                    let chunk = b.clone();
                    a.pieces.pop_front();
                    self.outputs.push_back(Output::Body { client: cid, chunk });
                    continue;
                }
                Piece::Slice { start, len } => (*start, *len),
            };
            if len == 0 {
                a.pieces.pop_front();
                continue;
            }
            let index = segs.index_of(start);
            let seg = segs.bounds(index, Some(total));
            let at = start - seg.start;
            let want = len.min(seg.end + 1 - start);
            let Some(part) = a.parts.get_mut(&index) else {
                return;
            };
            let sent = match part.source {
                Source::Stored(id) => {
                    let Some((e, tier)) = self.store.hot_with_tier(id) else {
                        // Evicted since: fetch it again.
                        self.refetch_part(cid, index);
                        continue;
                    };
                    if e.body_len < at + want {
                        self.spliced(cid, None);
                        return;
                    }
                    self.outputs.push_back(Output::BodyStored {
                        client: cid,
                        body: StoredBody {
                            entry: id,
                            tier,
                            pieces: vec![Piece::Slice {
                                start: at,
                                len: want,
                            }],
                        },
                    });
                    want
                }
                Source::Loading => return,
                Source::Fetch(_) => match part.take(at, want) {
                    Some(chunk) => {
                        let n = chunk.len() as u64;
                        self.outputs.push_back(Output::Body { client: cid, chunk });
                        n
                    }
                    None if part.done => {
                        // The segment ended short of what its head promised.
                        self.spliced(cid, None);
                        return;
                    }
                    None => return,
                },
            };
            let a = self.assemblies.get_mut(&cid).expect("checked");
            if let Some(Piece::Slice { start, len }) = a.pieces.front_mut() {
                *start += sent;
                *len -= sent;
                if *len == 0 {
                    a.pieces.pop_front();
                }
            }
        }
    }

    /// Drops the parts no longer needed and starts those needed next (the current segment
    /// and `Config::segment_read_ahead` more).
    fn schedule(&mut self, cid: ClientId) {
        let segs = self.segments_grid();
        let limit = 1 + self.config.segment_read_ahead;
        let Some(a) = self.assemblies.get_mut(&cid) else {
            return;
        };
        let want = needed(&a.pieces, segs, limit);
        let generation = a.generation;
        let gone: Vec<u64> = a
            .parts
            .keys()
            .copied()
            .filter(|i| !want.contains(i))
            .collect();
        let mut released = Vec::new();
        for i in gone {
            if let Some(Part {
                source: Source::Fetch(fid),
                ..
            }) = a.parts.remove(&i)
            {
                released.push(fid);
            }
        }
        let missing: Vec<u64> = want
            .into_iter()
            .filter(|i| !a.parts.contains_key(i))
            .collect();
        for fid in released {
            self.unfeed(fid, cid);
        }
        for i in missing {
            if self
                .assemblies
                .get(&cid)
                .is_some_and(|a| a.generation == generation)
            {
                let started = self.assemblies[&cid].parts.contains_key(&i);
                if !started {
                    self.start_part(cid, i, Look::Everywhere);
                }
            }
        }
    }

    /// Finds or starts the source of segment `index` for an assembling client: a stored
    /// copy of its version, a fetch of it under way here, the peer that owns it, or the
    /// origin (`origin`: straight to the origin, after its owner failed).
    fn start_part(&mut self, cid: ClientId, index: u64, look: Look) {
        let origin = look == Look::Origin;
        let Some(a) = self.assemblies.get(&cid) else {
            return;
        };
        let (object, version) = (a.object.clone(), a.version.clone());
        let seg_key = object.segment(index);
        if !origin {
            if let Some(id) = self.stored_segment(&seg_key, &version, &a.request) {
                self.store.touch(id);
                let a = self.assemblies.get_mut(&cid).expect("checked");
                a.parts.insert(index, Part::new(Source::Stored(id)));
                return;
            }
            if let Some(fid) = self.flights.leader(&seg_key) {
                if self.feed_from(cid, index, fid) {
                    return;
                }
            }
            if look == Look::Everywhere && self.store.has_cold(&seg_key) {
                // Kept on disk here (a restart forgot all but its index): read it back
                // rather than fetch it again.
                let cold: Vec<(EntryId, u64)> = self
                    .store
                    .variants(&seg_key)
                    .iter()
                    .filter_map(|id| {
                        let s = self.store.slot(*id)?;
                        (s.hot.is_none()).then_some((*id, s.on_disk.unwrap_or(0)))
                    })
                    .collect();
                for (id, bytes) in cold {
                    if !self.loads.contains_key(&id) {
                        self.loads.insert(id, seg_key.clone());
                        let body = self.store.fits_memory(bytes);
                        self.outputs.push_back(Output::Load { entry: id, body });
                    }
                }
                self.part_loads.entry(seg_key).or_default().push(cid);
                let a = self.assemblies.get_mut(&cid).expect("checked");
                a.parts.insert(index, Part::new(Source::Loading));
                return;
            }
        }
        let a = self.assemblies.get(&cid).expect("checked");
        let segs = self.segments_grid();
        let mut sent = crate::heads::clone_request(&a.request);
        sent.headers.insert(
            header::RANGE,
            segs.range_header(index).parse().expect("ascii"),
        );
        let peers = if origin {
            None
        } else {
            self.part_peers(&object, index)
        };
        let kind = match peers {
            Some(_) => {
                sent.headers.insert(
                    crate::hop::SEGMENT,
                    version
                        .to_field()
                        .parse()
                        .unwrap_or_else(|_| "?".parse().expect("ascii")),
                );
                FetchKind::Part { index }
            }
            None => FetchKind::Segment { index },
        };
        let fid = self.start_fetch_via(seg_key.clone(), object, sent, kind, peers);
        let f = self.fetches.get_mut(&fid).expect("just made");
        f.base = segs.start_of(index);
        f.feeds.push(cid);
        self.flights.lead_if_free(seg_key, fid);
        let a = self.assemblies.get_mut(&cid).expect("checked");
        let retried = a.parts.get(&index).is_some_and(|p| p.retried) || origin;
        let mut part = Part::new(Source::Fetch(fid));
        part.retried = retried;
        a.parts.insert(index, part);
    }

    /// Records of `key` were read back from disk (or could not be): the assemblies waiting
    /// for them look for the segment again.
    pub(super) fn segment_loaded(&mut self, key: &CacheKey) {
        let Some(waiting) = self.part_loads.remove(key) else {
            return;
        };
        let Some(index) = key.as_segment().map(|s| s.index) else {
            return;
        };
        for cid in waiting {
            let loading = self
                .assemblies
                .get(&cid)
                .and_then(|a| a.parts.get(&index))
                .is_some_and(|p| p.source == Source::Loading);
            if loading {
                self.assemblies
                    .get_mut(&cid)
                    .expect("checked")
                    .parts
                    .remove(&index);
                // Read back or not, it is not read again: a record that cannot be kept in
                // memory (a tiny memory tier) would be loaded for ever.
                self.start_part(cid, index, Look::NotDisk);
                self.pump(cid);
            }
        }
    }

    /// Feeds segment `index` of an assembly from fetch `fid` under way, replaying what it
    /// received so far. False when that fetch cannot (its early bytes were not kept).
    fn feed_from(&mut self, cid: ClientId, index: u64, fid: FetchId) -> bool {
        let segs = self.segments_grid();
        let Some(f) = self.fetches.get_mut(&fid) else {
            return false;
        };
        let kept: u64 = f.chunks.iter().map(|c| c.len() as u64).sum();
        if f.base != segs.start_of(index) || kept != f.received {
            return false;
        }
        f.feeds.push(cid);
        let mut part = Part::new(Source::Fetch(fid));
        let mut at = 0;
        for c in &f.chunks {
            part.push(at, c.clone());
            at += c.len() as u64;
        }
        let head = f.head.is_some();
        let a = self.assemblies.get_mut(&cid).expect("caller checked");
        a.parts.insert(index, part);
        if head {
            self.check_part(cid, fid);
        }
        true
    }

    /// A stored copy of a segment of `version` that `req` may use, however old: the object
    /// was validated as a whole when its response began.
    pub(super) fn stored_segment(
        &self,
        seg_key: &CacheKey,
        version: &Version,
        req: &request::Parts,
    ) -> Option<EntryId> {
        self.store
            .variants(seg_key)
            .iter()
            .rev()
            .copied()
            .find(|id| {
                self.store.hot(*id).is_some_and(|e| {
                    Version::of(&e.head.headers, e.total.unwrap_or(e.body_len)) == *version
                        && !matches!(
                            self.policy.reuse(&e.stored, req, self.now),
                            Reuse::NoMatch(_)
                        )
                })
            })
    }

    /// The peers to ask for segment `index` of `object`, owner first; `None` when this
    /// peer is its owner (or there is no cluster).
    pub(super) fn part_peers(&self, object: &CacheKey, index: u64) -> Option<Vec<String>> {
        let me = self.config.self_id.as_deref()?;
        let prefs = self
            .ring
            .preference(segment::placement(object, index).as_bytes());
        if prefs.first().is_none_or(|p| *p == me) {
            return None;
        }
        Some(
            prefs
                .into_iter()
                .take_while(|p| *p != me)
                .map(str::to_owned)
                .collect(),
        )
    }

    /// A fetch feeding assemblies has its head: each checks the version it carries.
    pub(super) fn feeds_head(&mut self, fid: FetchId) {
        let feeds = self
            .fetches
            .get(&fid)
            .map(|f| f.feeds.clone())
            .unwrap_or_default();
        for cid in feeds {
            self.check_part(cid, fid);
        }
    }

    fn check_part(&mut self, cid: ClientId, fid: FetchId) {
        let Some(f) = self.fetches.get(&fid) else {
            return;
        };
        let (Some(head), Some(total)) = (&f.head, f.total) else {
            return;
        };
        let got = Version::of(&head.headers, total);
        let Some(a) = self.assemblies.get_mut(&cid) else {
            return;
        };
        if got != a.version {
            let object = a.object.clone();
            self.retire_other_versions(&object, &got);
            let Some(a) = self.assemblies.get(&cid) else {
                return;
            };
            if a.head.is_some() {
                // Nothing sent yet: answer the request anew, from the object as it is now.
                self.restart(cid, got);
            } else {
                self.spliced(cid, Some(got));
            }
            return;
        }
        if let Some(p) = a
            .parts
            .values_mut()
            .find(|p| p.source == Source::Fetch(fid))
        {
            p.verified = true;
        }
        self.pump(cid);
    }

    /// A segment showed `newer`: fetches of `object` under way for another version store
    /// nothing and lead no flight any more (a request answered anew must not join them, and
    /// they must not bring the older version back into the store).
    fn retire_other_versions(&mut self, object: &CacheKey, newer: &Version) {
        let mut landed = Vec::new();
        for (fid, f) in self.fetches.iter_mut() {
            if f.object_key != *object {
                continue;
            }
            let (Some(head), Some(total)) = (&f.head, f.total) else {
                continue;
            };
            if Version::of(&head.headers, total) != *newer {
                f.storing = None;
                f.chunks = Vec::new();
                landed.push((*fid, f.key.clone()));
            }
        }
        for (fid, key) in landed {
            self.flights.land(&key, fid);
            self.maybe_finish(fid);
        }
    }

    /// The object changed before any of its response was sent: the older copies here go
    /// and the request is looked up again (once: an object changing all the time ends it).
    fn restart(&mut self, cid: ClientId, newer: Version) {
        let object = self.assemblies.get(&cid).map(|a| a.object.clone());
        self.end_assembly(cid);
        if let Some(object) = &object {
            self.drop_other_versions(object, &newer);
        }
        let again = self.restarted.contains(&cid);
        let Some(c) = self.take_client(cid) else {
            return;
        };
        if again {
            let status = CacheStatus::fwd(c.fwd).with_detail("segment-mismatch");
            self.clients.insert(cid, c);
            self.respond_error(
                cid,
                http::StatusCode::BAD_GATEWAY,
                status,
                "the object kept changing while its segments were fetched".into(),
            );
            return;
        }
        self.restarted.insert(cid);
        self.lookup(cid, c.req, super::Route::Local, false);
    }

    /// Bytes at object offset `offset` arrived on a fetch feeding assemblies.
    pub(super) fn feeds_body(&mut self, fid: FetchId, offset: u64, chunk: &Bytes) {
        let segs = self.segments_grid();
        let feeds = match self.fetches.get(&fid) {
            Some(f) if !f.feeds.is_empty() => f.feeds.clone(),
            _ => return,
        };
        for cid in feeds {
            let Some(a) = self.assemblies.get_mut(&cid) else {
                continue;
            };
            let Some((index, part)) = a
                .parts
                .iter_mut()
                .find(|(_, p)| p.source == Source::Fetch(fid))
            else {
                continue;
            };
            part.push(offset.saturating_sub(segs.start_of(*index)), chunk.clone());
            self.pump(cid);
        }
    }

    /// A fetch feeding assemblies completed.
    pub(super) fn feeds_end(&mut self, fid: FetchId, feeds: Vec<ClientId>) {
        for cid in feeds {
            let Some(a) = self.assemblies.get_mut(&cid) else {
                continue;
            };
            if let Some(p) = a
                .parts
                .values_mut()
                .find(|p| p.source == Source::Fetch(fid))
            {
                p.done = true;
            }
            self.pump(cid);
        }
    }

    /// A fetch feeding assemblies failed or was dropped: each fetches the segment again,
    /// from the origin, once; a second failure ends its response (truncated, never short).
    pub(super) fn feeds_failed(&mut self, fid: FetchId, feeds: Vec<ClientId>) {
        for cid in feeds {
            let Some(a) = self.assemblies.get(&cid) else {
                continue;
            };
            let Some((index, retried)) = a
                .parts
                .iter()
                .find(|(_, p)| p.source == Source::Fetch(fid))
                .map(|(i, p)| (*i, p.retried))
            else {
                continue;
            };
            if retried {
                self.spliced(cid, None);
            } else {
                self.refetch_part(cid, index);
                self.pump(cid);
            }
        }
    }

    /// Fetch `to` replaces fetch `from` for the assemblies `feeds`, from the segment's
    /// start (its first failure: a second one ends the response).
    pub(super) fn move_feeds(&mut self, from: FetchId, to: FetchId, feeds: Vec<ClientId>) {
        for cid in &feeds {
            if let Some(p) = self.assemblies.get_mut(cid).and_then(|a| {
                a.parts
                    .values_mut()
                    .find(|p| p.source == Source::Fetch(from))
            }) {
                p.reset(Source::Fetch(to));
            }
        }
        if let Some(f) = self.fetches.get_mut(&to) {
            f.feeds.extend(feeds);
        }
    }

    /// Fetches segment `index` again, from the origin; the bytes already sent are skipped.
    fn refetch_part(&mut self, cid: ClientId, index: u64) {
        let Some(a) = self.assemblies.get_mut(&cid) else {
            return;
        };
        let old = a.parts.get(&index).map(|p| (p.source, p.retried));
        if let Some((_, true)) = old {
            self.spliced(cid, None);
            return;
        }
        if let Some(p) = a.parts.get_mut(&index) {
            p.reset(p.source);
        }
        if let Some((Source::Fetch(f), _)) = old {
            self.unfeed(f, cid);
        }
        self.start_part(cid, index, Look::Origin);
    }

    /// The response cannot be completed consistently: it ends (the client sees it cut
    /// short). `newer`: the version the origin has now, when a segment showed it; copies
    /// of any other version stored here go, so the next request is served from one version.
    fn spliced(&mut self, cid: ClientId, newer: Option<Version>) {
        let (object, unsent) = match self.assemblies.get(&cid) {
            Some(a) => (Some(a.object.clone()), a.head.is_some()),
            None => (None, false),
        };
        self.end_assembly(cid);
        if unsent {
            if let Some(c) = self.take_client(cid) {
                let status = CacheStatus::fwd(c.fwd).with_detail("segment-failed");
                self.clients.insert(cid, c);
                self.respond_error(
                    cid,
                    http::StatusCode::BAD_GATEWAY,
                    status,
                    "a segment of the object could not be fetched".into(),
                );
            }
        } else if self.take_client(cid).is_some() {
            self.outputs.push_back(Output::Abort { client: cid });
        }
        if let (Some(object), Some(v)) = (object, newer) {
            self.drop_other_versions(&object, &v);
        }
    }

    /// Forgets a client's assembly, letting go of the fetches that fed it.
    pub(super) fn end_assembly(&mut self, cid: ClientId) {
        let Some(a) = self.assemblies.remove(&cid) else {
            return;
        };
        for p in a.parts.into_values() {
            if let Source::Fetch(fid) = p.source {
                self.unfeed(fid, cid);
            }
        }
    }

    /// `cid` no longer reads from fetch `fid`, which stops when nobody else needs it.
    fn unfeed(&mut self, fid: FetchId, cid: ClientId) {
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        f.feeds.retain(|c| *c != cid);
        let idle = f.clients.is_empty() && f.feeds.is_empty();
        if idle && (f.storing.is_none() && (f.head.is_some() || f.kind.is_part())) {
            self.drop_fetch(fid, true);
        }
    }

    /// A large object's segment 0, stored here and fresh for `client`: its response is
    /// assembled from the segments. True when answered (or parked for a disk load).
    pub(super) fn answer_from_segments(
        &mut self,
        cid: ClientId,
        client: &mut super::Client,
    ) -> Segment0 {
        if self.config.segment_size.is_none() {
            return Segment0::Unknown;
        }
        let seg0 = client.key.segment(0);
        if !client.replayed {
            let head = crate::heads::clone_request(&client.req);
            if self.park_for_loads(cid, &seg0, &head) {
                return Segment0::Answered;
            }
        }
        let ids: Vec<EntryId> = self.store.variants(&seg0).iter().rev().copied().collect();
        for id in ids {
            let Some(e) = self.store.hot(id) else {
                continue;
            };
            let Some(total) = e.total else {
                continue;
            };
            match self.policy.reuse(&e.stored, &client.req, self.now) {
                Reuse::Fresh => {}
                Reuse::Stale { revalidate, .. } => {
                    let mut sent = revalidate;
                    sent.headers.remove(header::VIA);
                    return Segment0::Stale(id, sent);
                }
                Reuse::NoMatch(_) => continue,
            }
            let version = Version::of(&e.head.headers, total);
            if !version.is_validated() && !self.config.segment_unvalidated {
                // A segment kept for a range inside it: nothing would tell its version from
                // another segment's, so no response is assembled from it.
                return Segment0::Unknown;
            }
            let mut whole = crate::heads::clone_response(&e.head);
            whole.headers.insert(header::CONTENT_LENGTH, total.into());
            let status = CacheStatus::hit(e.stored.ttl(self.now).as_secs() as i64);
            let age = e.stored.age(self.now).as_secs();
            self.store.touch(id);
            let c = std::mem::replace(client, super::placeholder_client(&client.key));
            let object = c.key.clone();
            self.clients.insert(cid, c);
            self.begin_assembly(
                cid,
                object,
                version,
                &whole,
                (status, Some(age)),
                Some(Source::Stored(id)),
            );
            return Segment0::Answered;
        }
        Segment0::Unknown
    }

    /// Answers a client from a stored entry: a large object's segment 0 starts a response
    /// assembled from the segments, anything else is answered as it is.
    pub(super) fn answer_or_assemble(&mut self, cid: ClientId, id: EntryId, status: CacheStatus) {
        let segment0 = self.store.slot(id).and_then(|s| s.key.as_segment());
        let e = self.store.hot(id);
        let (Some(seg), Some(e)) = (segment0, e) else {
            return self.answer_from_entry(cid, id, status);
        };
        let Some(total) = e.total.filter(|_| seg.index == 0) else {
            return self.answer_from_entry(cid, id, status);
        };
        let version = Version::of(&e.head.headers, total);
        let mut whole = crate::heads::clone_response(&e.head);
        whole.headers.insert(header::CONTENT_LENGTH, total.into());
        let age = e.stored.age(self.now).as_secs();
        self.begin_assembly(
            cid,
            seg.object,
            version,
            &whole,
            (status, Some(age)),
            Some(Source::Stored(id)),
        );
    }
}
