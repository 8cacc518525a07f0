//! Building what a client receives: from a stored entry, from a fill as it streams, or an
//! error. Client preconditions (304), ranges (206/416) and HEAD are applied here.

use super::{ClientId, Engine, FetchId, Output, ResponseBody};
use crate::cache_status::CacheStatus;
use crate::heads::clone_response;
use crate::policy::conditional;
use crate::range::{self, ByteRange};
use crate::storage::{EntryId, Piece, StoredBody};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header, response};

/// What a client gets for a representation of `total` bytes.
pub(super) enum Shape {
    Whole,
    Head,
    NotModified,
    Single(ByteRange),
    Multi(Vec<ByteRange>),
    Unsatisfiable,
}

pub(super) fn shape(
    req: &http::request::Parts,
    head: &response::Parts,
    total: Option<u64>,
) -> Shape {
    if head.status == StatusCode::OK && conditional::is_not_modified(&req.headers, &head.headers) {
        return Shape::NotModified;
    }
    if req.method == Method::HEAD {
        return Shape::Head;
    }
    // A zero-length representation has no range to select: send it whole (RFC 9110 §14.2
    // lets a server ignore Range), never a 206 whose Content-Range underflows.
    let (Some(total @ 1..), StatusCode::OK) = (total, head.status) else {
        return Shape::Whole;
    };
    let Some(specs) = req
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(range::parse)
    else {
        return Shape::Whole;
    };
    if !conditional::if_range_holds(&req.headers, &head.headers) {
        return Shape::Whole;
    }
    match range::resolve(&specs, total) {
        Err(_) => Shape::Unsatisfiable,
        Ok(r) if r.len() == 1 => Shape::Single(r[0]),
        Ok(r) => Shape::Multi(r),
    }
}

pub(super) fn set_status_headers(
    head: &mut response::Parts,
    status: &CacheStatus,
    age: Option<u64>,
) {
    // RFC 9110 §8.6: no Content-Length on a 1xx or 204 (the store keeps its own, 0).
    if head.status == StatusCode::NO_CONTENT || head.status.is_informational() {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(age) = age {
        head.headers.insert(header::AGE, age.into());
    }
    head.headers.insert(
        header::HeaderName::from_static("cache-status"),
        status.to_header_value(),
    );
}

/// 416, with `Content-Range: bytes */total` when the length is known.
pub(super) fn unsatisfiable(total: Option<u64>) -> response::Parts {
    let mut out = http::Response::new(()).into_parts().0;
    out.status = StatusCode::RANGE_NOT_SATISFIABLE;
    if let Some(total) = total {
        out.headers.insert(
            header::CONTENT_RANGE,
            format!("bytes */{total}").parse().expect("ascii"),
        );
    }
    out.headers.insert(header::CONTENT_LENGTH, 0.into());
    out
}

/// A response the cache makes itself: `code`, a one-line reason as a plain-text body,
/// never stored downstream, with its `Cache-Status`.
pub fn error_response(
    code: StatusCode,
    status: &CacheStatus,
    reason: &str,
) -> (response::Parts, Bytes) {
    let body = Bytes::from(format!("{reason}\n"));
    let mut head = http::Response::new(()).into_parts().0;
    head.status = code;
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    head.headers
        .insert(header::CONTENT_LENGTH, body.len().into());
    head.headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_status_headers(&mut head, status, None);
    (head, body)
}

pub(super) fn partial(head: &response::Parts, r: ByteRange, total: u64) -> response::Parts {
    let mut out = clone_response(head);
    out.status = StatusCode::PARTIAL_CONTENT;
    out.headers.insert(
        header::CONTENT_RANGE,
        r.content_range(total).parse().expect("ascii"),
    );
    out.headers.insert(header::CONTENT_LENGTH, r.len().into());
    out
}

/// `multipart/byteranges` (RFC 9110 §14.6) for several ranges of a stored body: the
/// boundaries made here, the ranges read from the tier.
pub(super) fn multipart(
    head: &response::Parts,
    ranges: &[ByteRange],
    total: u64,
) -> (response::Parts, Vec<Piece>) {
    let boundary = format!("larder-{:016x}", total ^ ((ranges.len() as u64) << 48));
    let ctype = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut pieces = Vec::with_capacity(2 * ranges.len() + 1);
    let mut len = 0u64;
    for r in ranges {
        let mut part = format!("\r\n--{boundary}\r\n");
        if let Some(ct) = &ctype {
            part.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        part.push_str(&format!(
            "Content-Range: {}\r\n\r\n",
            r.content_range(total)
        ));
        len += part.len() as u64 + r.len();
        pieces.push(Piece::Literal(Bytes::from(part)));
        pieces.push(Piece::Slice {
            start: r.start,
            len: r.len(),
        });
    }
    let end = format!("\r\n--{boundary}--\r\n");
    len += end.len() as u64;
    pieces.push(Piece::Literal(Bytes::from(end)));
    let mut h = clone_response(head);
    h.status = StatusCode::PARTIAL_CONTENT;
    h.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
            .expect("ascii"),
    );
    h.headers.insert(header::CONTENT_LENGTH, len.into());
    (h, pieces)
}

impl Engine {
    /// Answers a client from a stored entry (whole object or one segment of it).
    pub(super) fn answer_from_entry(&mut self, cid: ClientId, id: EntryId, status: CacheStatus) {
        let Some(client) = self.take_client(cid) else {
            return;
        };
        if let Some(fid) = client.phase.fetch() {
            if let Some(f) = self.fetches.get_mut(&fid) {
                f.clients.retain(|x| *x != cid);
            }
        }
        let Some((e, tier)) = self.store.hot_with_tier(id) else {
            // The entry went meanwhile (evicted when it was re-weighed): a miss, never silence.
            self.lookup(cid, client.req, super::Route::Local, true);
            return;
        };
        let age = e.stored.age(self.now).as_secs();
        let (total, base) = match e.total {
            Some(t) => {
                let size = self
                    .config
                    .segment_size
                    .unwrap_or(crate::segment::DEFAULT_SEGMENT_SIZE);
                let index = self
                    .store
                    .slot(id)
                    .and_then(|s| Some(s.key.as_segment()?.index))
                    .unwrap_or(0);
                (t, index.saturating_mul(size))
            }
            None => (e.body_len, 0),
        };
        let mut whole = clone_response(&e.head);
        if e.total.is_some() {
            // A segment is stored with its own length; clients see the whole object's.
            whole.headers.insert(header::CONTENT_LENGTH, total.into());
        }
        let stored = |pieces| {
            ResponseBody::Stored(StoredBody {
                entry: id,
                tier,
                pieces,
            })
        };
        let held = base..base.saturating_add(e.body_len);
        let (mut head, body) = match shape(&client.req, &whole, Some(total)) {
            Shape::NotModified => (
                conditional::not_modified_response(&whole),
                ResponseBody::Empty,
            ),
            Shape::Head => (whole, ResponseBody::Empty),
            Shape::Unsatisfiable => (unsatisfiable(Some(total)), ResponseBody::Empty),
            Shape::Single(r) if held.contains(&r.start) && held.contains(&r.end) => {
                let slice = Piece::Slice {
                    start: r.start - base,
                    len: r.len(),
                };
                (partial(&whole, r, total), stored(vec![slice]))
            }
            Shape::Multi(rs) if e.total.is_none() => {
                let (h, pieces) = multipart(&whole, &rs, total);
                (h, stored(pieces))
            }
            _ if e.total.is_none() => {
                let all = Piece::Slice {
                    start: 0,
                    len: e.body_len,
                };
                (whole, stored(vec![all]))
            }
            // A segment cannot serve what lies outside it; planning never asks it to.
            _ => (unsatisfiable(Some(total)), ResponseBody::Empty),
        };
        set_status_headers(&mut head, &status, Some(age));
        self.outputs.push_back(Output::Respond {
            client: cid,
            outcome: status.outcome(head.status),
            collapsed: status.collapsed,
            head,
            body,
        });
    }

    /// Starts a client's response from a fetch whose head has arrived, replaying the body
    /// received so far (followers join mid-stream).
    pub(super) fn start_stream(&mut self, cid: ClientId, fid: FetchId) {
        let Some(f) = self.fetches.get(&fid) else {
            return;
        };
        let Some(head) = f.head.as_ref() else { return };
        let Some(client) = self.clients.get(&cid) else {
            return;
        };
        // The client that asked gets the head as the origin sent it; others the shared form.
        let head = match &f.leader_head {
            Some((leader, original)) if *leader == cid => original,
            _ => head,
        };
        let mut status = CacheStatus::fwd(client.fwd);
        status.fwd_status = f.upstream_status;
        status.stored = f.storing.is_some();
        status.collapsed = client.collapsed;
        status.detail = f.not_stored.map(|n| n.as_str());
        let total = f.total;
        if let (super::FetchKind::Probe, Some(total)) = (f.kind, total) {
            // Segment 0 of a large object: the response is assembled from segments (the
            // version is the shared head's; the client that asked may see more fields).
            let shared = f.head.as_ref().expect("checked above");
            let version = crate::segment::Version::of(&shared.headers, total);
            let whole = clone_response(head);
            let object = f.object_key.clone();
            self.begin_assembly(
                cid,
                object,
                version,
                &whole,
                (status, None),
                Some(super::assembly::Source::Fetch(fid)),
            );
            return;
        }
        let (mut out, window, body) = match shape(&client.req, head, total) {
            Shape::NotModified => (
                conditional::not_modified_response(head),
                None,
                ResponseBody::Empty,
            ),
            Shape::Head => (clone_response(head), None, ResponseBody::Empty),
            Shape::Unsatisfiable => (unsatisfiable(total), None, ResponseBody::Empty),
            Shape::Single(mut r) => {
                // A segment fetch holds only its segment's bytes: a range reaching past them
                // is answered with the part it holds (its Content-Range says so), never a
                // head that promises more than the stream will carry. If the object changed
                // length since the plan, the range may miss the segment altogether.
                let piece = matches!(
                    f.kind,
                    super::FetchKind::Segment { .. } | super::FetchKind::Part { .. }
                );
                if let (true, Some(held)) = (piece, f.declared) {
                    let last = f.base.saturating_add(held).saturating_sub(1);
                    r.start = r.start.max(f.base);
                    r.end = r.end.min(last);
                    if r.start > r.end || held == 0 {
                        let mut s = status;
                        s.detail = Some("segment-mismatch");
                        self.respond_error(
                            cid,
                            StatusCode::BAD_GATEWAY,
                            s,
                            "the object changed while its range was fetched (segment-mismatch)"
                                .into(),
                        );
                        return;
                    }
                }
                (
                    partial(head, r, total.unwrap_or(0)),
                    Some(r),
                    ResponseBody::Stream,
                )
            }
            Shape::Whole | Shape::Multi(_) => {
                // A segment fetch only serves its planned range; anything else is a 200.
                (clone_response(head), None, ResponseBody::Stream)
            }
        };
        set_status_headers(&mut out, &status, None);
        let chunks: Vec<Bytes> = if body == ResponseBody::Stream {
            f.chunks.clone()
        } else {
            Vec::new()
        };
        let base = f.base;
        let streaming = body == ResponseBody::Stream;
        self.outputs.push_back(Output::Respond {
            client: cid,
            outcome: status.outcome(out.status),
            collapsed: status.collapsed,
            head: out,
            body,
        });
        if !streaming {
            self.detach(cid);
            return;
        }
        let c = self.clients.get_mut(&cid).expect("checked");
        c.phase = super::Phase::Streaming { fetch: fid, window };
        self.deadlines.clear(cid);
        let mut offset = base;
        for chunk in chunks {
            let len = chunk.len() as u64;
            self.deliver(cid, offset, &chunk);
            offset += len;
        }
    }

    /// Sends the part of a body chunk at `offset` that the client wants.
    pub(super) fn deliver(&mut self, cid: ClientId, offset: u64, chunk: &Bytes) {
        let Some(c) = self.clients.get(&cid) else {
            return;
        };
        let super::Phase::Streaming { window, .. } = c.phase else {
            return;
        };
        let Some(w) = window else {
            self.outputs.push_back(Output::Body {
                client: cid,
                chunk: chunk.clone(),
            });
            return;
        };
        let end = offset + chunk.len() as u64; // exclusive
        let (s, e) = (w.start.max(offset), (w.end + 1).min(end));
        if s < e {
            let slice = chunk.slice((s - offset) as usize..(e - offset) as usize);
            self.outputs.push_back(Output::Body {
                client: cid,
                chunk: slice,
            });
        }
        if end > w.end {
            self.outputs.push_back(Output::End { client: cid });
            self.detach(cid);
        }
    }

    /// The client's response is complete: forget it (its fetch may go on for the cache).
    fn detach(&mut self, cid: ClientId) {
        if let Some(c) = self.take_client(cid) {
            if let Some(fid) = c.phase.fetch() {
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.clients.retain(|x| *x != cid);
                }
                self.maybe_finish(fid);
            }
        }
    }

    /// 416 for a client whose range starts past the end of the representation.
    pub(super) fn respond_unsatisfiable(&mut self, cid: ClientId, total: Option<u64>) {
        let Some(c) = self.take_client(cid) else {
            return;
        };
        let mut head = unsatisfiable(total);
        let mut status = CacheStatus::fwd(c.fwd);
        status.fwd_status = Some(416);
        status.collapsed = c.collapsed;
        set_status_headers(&mut head, &status, None);
        self.outputs.push_back(Output::Respond {
            client: cid,
            outcome: status.outcome(head.status),
            collapsed: status.collapsed,
            head,
            body: ResponseBody::Empty,
        });
    }

    /// An error response generated by the cache itself, with a one-line reason.
    pub(super) fn respond_error(
        &mut self,
        cid: ClientId,
        code: StatusCode,
        status: CacheStatus,
        reason: String,
    ) {
        if let Some(c) = self.take_client(cid) {
            if let Some(fid) = c.phase.fetch() {
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.clients.retain(|x| *x != cid);
                }
            }
        }
        let (head, body) = error_response(code, &status, &reason);
        self.outputs.push_back(Output::Respond {
            client: cid,
            outcome: status.outcome(code),
            collapsed: status.collapsed,
            head,
            body: ResponseBody::Full(body),
        });
    }
}
