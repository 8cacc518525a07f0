//! Range segments: large objects are fetched and stored in fixed-size pieces.
//!
//! Segment `i` covers bytes `[i·size, (i+1)·size)`. Each segment is its own cache entry
//! (`CacheKey::segment(i)`), so a client asking for 100 bytes of a 4 GiB file costs one
//! segment fetch, and the pieces of one object spread over the cluster. Upstream answers
//! are checked before anything is stored: a 206 must carry exactly the asked range; a 200
//! means the origin ignores Range, and the caller falls back to streaming the whole object.

use crate::range::{self, ByteRange, RangeSpec};
use http::{HeaderMap, StatusCode, header};

/// 2 MiB, as casserole and nginx `slice` deployments use.
pub const DEFAULT_SEGMENT_SIZE: u64 = 2 << 20;

/// The segment grid of every object: segment `i` covers bytes `[i·size, (i+1)·size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Bytes per segment (the last one of an object may be shorter).
    pub size: u64,
}

/// A run of consecutive segment indexes, `first..=last`. Plans are made of spans, never of
/// every index: a client may name a range of 2^64 bytes, and planning must cost the same for
/// it as for one byte (a list of indexes once took 4 GB and aborted the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First segment index.
    pub first: u64,
    /// Last segment index, inclusive.
    pub last: u64,
}

/// Which segments a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// These spans of segment indexes, ascending and disjoint, serve the ranges.
    Segments(Vec<Span>),
    /// The total length is unknown and needed (a suffix range): fetch segment 0 first, its
    /// `Content-Range` says the length, then plan again.
    NeedLength,
    /// No range is satisfiable: 416.
    Unsatisfiable,
}

impl Plan {
    /// The one segment this plan needs, if it needs exactly one.
    pub fn single(&self) -> Option<u64> {
        match self {
            Plan::Segments(spans) if spans.len() == 1 && spans[0].first == spans[0].last => {
                Some(spans[0].first)
            }
            _ => None,
        }
    }

    /// Every index of the plan in order, produced lazily (callers take what they need).
    pub fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        let spans: &[Span] = match self {
            Plan::Segments(s) => s,
            _ => &[],
        };
        spans.iter().flat_map(|s| s.first..=s.last)
    }
}

/// How an upstream answered a segment request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAnswer {
    /// A correct 206 for the segment; `total` is the object's length.
    Segment {
        /// The bytes it carries (those asked for, clamped to the object's end).
        range: ByteRange,
        /// The whole object's length.
        total: u64,
    },
    /// 200: the origin ignores Range. Stream the whole object; store no segment from it.
    WholeObject,
}

/// A segment answer that must not be used.
///
/// `#[non_exhaustive]`: stricter checks may add reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// Neither 206 nor 200 (416 past the end, 5xx, ...).
    Status(u16),
    /// 206 without a parseable `Content-Range`, or with a multipart body.
    BadContentRange,
    /// A 206 for other bytes than those asked for, or without a known total length.
    Mismatch,
}

impl Segments {
    /// The grid of `size`-byte segments; panics on 0 (the engine's config refuses it first).
    pub fn new(size: u64) -> Self {
        assert!(size > 0, "segment size must be positive");
        Segments { size }
    }

    /// The segment holding byte `offset`.
    pub fn index_of(&self, offset: u64) -> u64 {
        offset / self.size
    }

    /// The first byte of segment `index` (saturating: no index makes it wrap).
    pub fn start_of(&self, index: u64) -> u64 {
        index.saturating_mul(self.size)
    }

    /// The bytes of segment `index`, clamped to `total` when known.
    pub fn bounds(&self, index: u64, total: Option<u64>) -> ByteRange {
        let start = self.start_of(index);
        let mut end = start.saturating_add(self.size - 1);
        if let Some(t) = total {
            end = end.min(t.saturating_sub(1)).max(start);
        }
        ByteRange { start, end }
    }

    /// Number of segments of an object.
    pub fn count(&self, total: u64) -> u64 {
        total.div_ceil(self.size)
    }

    /// The covering segments of resolved ranges: ascending, disjoint spans (at most one per
    /// range, so the work is bounded by the number of ranges, never by their size).
    pub fn covering(&self, ranges: &[ByteRange]) -> Vec<Span> {
        let mut spans: Vec<Span> = ranges
            .iter()
            .map(|r| Span {
                first: self.index_of(r.start),
                last: self.index_of(r.end.max(r.start)),
            })
            .collect();
        spans.sort_unstable_by_key(|s| s.first);
        let mut out: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            match out.last_mut() {
                Some(l) if s.first <= l.last.saturating_add(1) => l.last = l.last.max(s.last),
                _ => out.push(s),
            }
        }
        out
    }

    /// Maps a client's Range specs to segments.
    pub fn plan(&self, specs: &[RangeSpec], total: Option<u64>) -> Plan {
        match total {
            Some(t) => match range::resolve(specs, t) {
                Ok(ranges) => Plan::Segments(self.covering(&ranges)),
                Err(_) => Plan::Unsatisfiable,
            },
            None if specs.iter().any(|s| matches!(s, RangeSpec::Suffix(_))) => Plan::NeedLength,
            None => {
                // Without the length, an open end reaches as far as the object may go: such
                // a plan is never one segment, and the caller fetches the whole object (a
                // one-segment answer would cut `bytes=0-` short at the segment's end).
                let ranges: Vec<ByteRange> = specs
                    .iter()
                    .map(|s| match *s {
                        RangeSpec::FromTo(a, b) => ByteRange { start: a, end: b },
                        RangeSpec::From(a) => ByteRange {
                            start: a,
                            end: u64::MAX,
                        },
                        // Answered by NeedLength above.
                        RangeSpec::Suffix(_) => ByteRange {
                            start: 0,
                            end: u64::MAX,
                        },
                    })
                    .collect();
                Plan::Segments(self.covering(&ranges))
            }
        }
    }

    /// The upstream `Range` value for a segment.
    pub fn range_header(&self, index: u64) -> String {
        let b = self.bounds(index, None);
        format!("bytes={}-{}", b.start, b.end)
    }

    /// Checks an upstream answer to `range_header(index)`.
    pub fn check(
        &self,
        index: u64,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<SegmentAnswer, SegmentError> {
        match status {
            StatusCode::OK => Ok(SegmentAnswer::WholeObject),
            StatusCode::PARTIAL_CONTENT => {
                let cr = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(SegmentError::BadContentRange)?;
                let (got, total) =
                    range::parse_content_range(cr).ok_or(SegmentError::BadContentRange)?;
                let total = total.ok_or(SegmentError::Mismatch)?;
                if got != self.bounds(index, Some(total)) {
                    return Err(SegmentError::Mismatch);
                }
                Ok(SegmentAnswer::Segment { range: got, total })
            }
            other => Err(SegmentError::Status(other.as_u16())),
        }
    }
}

/// Which version of an object a segment belongs to: the object's length and validator.
/// Every segment one response is made of must carry the same, so no response ever splices
/// two versions of an object (the origin changed it between two segment fetches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The whole object's length, from `Content-Range`.
    pub total: u64,
    /// What tells two versions of the same length apart.
    pub validator: Validator,
}

/// A segment's validator: a strong ETag, else Last-Modified (RFC 9110 §8.8: a weak ETag
/// cannot vouch for bytes), else none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    /// A strong entity tag, quotes included.
    ETag(String),
    /// A `Last-Modified` date, as sent.
    LastModified(String),
    /// Neither: only the length tells versions apart.
    None,
}

impl Version {
    /// The version a segment's head describes, for an object of `total` bytes.
    pub fn of(headers: &HeaderMap, total: u64) -> Self {
        let get = |n: header::HeaderName| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let validator = match (get(header::ETAG), get(header::LAST_MODIFIED)) {
            (Some(e), _) if !e.starts_with("W/") => Validator::ETag(e.to_owned()),
            (_, Some(lm)) => Validator::LastModified(lm.to_owned()),
            _ => Validator::None,
        };
        Version { total, validator }
    }

    /// Whether a validator backs it: without one, segments are kept only when the admin
    /// allows it (`Config::segment_unvalidated`).
    pub fn is_validated(&self) -> bool {
        self.validator != Validator::None
    }

    /// The value of the peer field [`crate::hop::SEGMENT`]: `<total> etag <tag>`,
    /// `<total> lm <date>` or `<total>`.
    pub fn to_field(&self) -> String {
        match &self.validator {
            Validator::ETag(e) => format!("{} etag {e}", self.total),
            Validator::LastModified(lm) => format!("{} lm {lm}", self.total),
            Validator::None => self.total.to_string(),
        }
    }

    /// Reads [`Version::to_field`]'s form back; `None` for anything else.
    pub fn from_field(v: &str) -> Option<Self> {
        let (total, rest) = match v.split_once(' ') {
            Some((t, r)) => (t, Some(r)),
            None => (v, None),
        };
        // Digits only: `+5` or ` 5` is not a length this crate wrote.
        if total.is_empty() || !total.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let total: u64 = total.parse().ok()?;
        let validator = match rest.map(|r| r.split_once(' ')) {
            None => Validator::None,
            Some(Some(("etag", e))) if !e.is_empty() && !e.starts_with("W/") => {
                Validator::ETag(e.to_owned())
            }
            Some(Some(("lm", lm))) if !lm.is_empty() => Validator::LastModified(lm.to_owned()),
            Some(_) => return None,
        };
        Some(Version { total, validator })
    }
}

/// The key whose owner on the ring holds segment `index` of `object`. Segment 0 lives with
/// the object's owner, which serves the object and learns its length and validator from it
/// (and stores a small object whole instead); every other segment has an owner of its own,
/// so the bytes of a large object spread over the cluster.
pub fn placement(object: &crate::key::CacheKey, index: u64) -> crate::key::CacheKey {
    match index {
        0 => object.clone(),
        i => object.segment(i),
    }
}

/// Whether two answers describe the same representation (strong ETag, else Last-Modified):
/// segments of one object fetched at different times must not be stitched across a change.
pub fn same_representation(a: &HeaderMap, b: &HeaderMap) -> bool {
    fn get(h: &HeaderMap, n: header::HeaderName) -> Option<&str> {
        h.get(n).and_then(|v| v.to_str().ok()).map(str::trim)
    }
    match (get(a, header::ETAG), get(b, header::ETAG)) {
        (Some(x), Some(y)) => !x.starts_with("W/") && x == y,
        (None, None) => match (get(a, header::LAST_MODIFIED), get(b, header::LAST_MODIFIED)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::parse;

    const MIB: u64 = 1 << 20;

    fn seg() -> Segments {
        Segments::new(2 * MIB)
    }

    #[test]
    fn a_hundred_bytes_need_one_segment() {
        let plan = seg().plan(&parse("bytes=5000000-5000099").unwrap(), Some(100 * MIB));
        assert_eq!(plan.single(), Some(2));
        assert_eq!(seg().range_header(2), "bytes=4194304-6291455");
    }

    #[test]
    fn plans_every_range_form() {
        let total = Some(10 * MIB);
        let ix = |p: Plan| p.indexes().collect::<Vec<_>>();
        assert_eq!(
            ix(seg().plan(&parse("bytes=-100").unwrap(), total)),
            vec![4]
        );
        assert_eq!(
            ix(seg().plan(&parse("bytes=9000000-").unwrap(), total)),
            vec![4]
        );
        assert_eq!(
            ix(seg().plan(&parse("bytes=0-0,4194304-4194305,-1").unwrap(), total)),
            vec![0, 2, 4]
        );
        assert_eq!(
            ix(seg().plan(&parse("bytes=2097100-2097200").unwrap(), total)),
            vec![0, 1]
        );
        assert_eq!(
            seg().plan(&parse("bytes=99999999-").unwrap(), total),
            Plan::Unsatisfiable
        );
        assert_eq!(
            seg().plan(&parse("bytes=-5").unwrap(), None),
            Plan::NeedLength
        );
        // An open range on an unknown length may reach past its first segment: not one.
        assert_eq!(
            seg().plan(&parse("bytes=3000000-").unwrap(), None).single(),
            None
        );
        assert_eq!(
            seg()
                .plan(&parse("bytes=3000000-3000009").unwrap(), None)
                .single(),
            Some(1)
        );
    }

    /// Issue 8: `bytes=0-18446744073709551614` on an unknown length once materialised every
    /// segment index (SIGABRT). Planning is now one span per range, whatever the numbers.
    #[test]
    fn huge_ranges_plan_in_constant_space() {
        for r in [
            "bytes=0-18446744073709551614",
            "bytes=0-18446744073709551615",
            "bytes=0-1125899906842623",
            "bytes=18446744073709551615-",
            "bytes=0-1,18446744073709551000-18446744073709551615",
        ] {
            let specs = parse(r).unwrap();
            for total in [None, Some(0), Some(1), Some(10 * MIB), Some(u64::MAX)] {
                match seg().plan(&specs, total) {
                    Plan::Segments(spans) => assert!(spans.len() <= specs.len(), "{r}"),
                    Plan::NeedLength | Plan::Unsatisfiable => {}
                }
            }
        }
        let s = Segments::new(1);
        assert_eq!(s.bounds(u64::MAX, None).start, u64::MAX);
        assert_eq!(
            s.bounds(u64::MAX, Some(5)),
            ByteRange {
                start: u64::MAX,
                end: u64::MAX
            }
        );
        let s = seg();
        assert_eq!(s.start_of(u64::MAX), u64::MAX);
        let _ = s.range_header(u64::MAX);
        assert_eq!(
            s.plan(
                &parse("bytes=0-18446744073709551614").unwrap(),
                Some(5 * MIB)
            ),
            Plan::Segments(vec![Span { first: 0, last: 2 }])
        );
    }

    fn h(cr: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_RANGE, cr.parse().unwrap());
        m
    }

    #[test]
    fn checks_upstream_answers() {
        let s = seg();
        assert_eq!(
            s.check(
                1,
                StatusCode::PARTIAL_CONTENT,
                &h("bytes 2097152-4194303/10000000")
            ),
            Ok(SegmentAnswer::Segment {
                range: ByteRange {
                    start: 2 * MIB,
                    end: 4 * MIB - 1
                },
                total: 10_000_000
            })
        );
        // The last segment is short.
        assert!(
            s.check(
                4,
                StatusCode::PARTIAL_CONTENT,
                &h("bytes 8388608-9999999/10000000")
            )
            .is_ok()
        );
        assert_eq!(
            s.check(1, StatusCode::OK, &HeaderMap::new()),
            Ok(SegmentAnswer::WholeObject)
        );
        assert_eq!(
            s.check(1, StatusCode::PARTIAL_CONTENT, &h("bytes 0-99/10000000")),
            Err(SegmentError::Mismatch)
        );
        assert_eq!(
            s.check(
                1,
                StatusCode::PARTIAL_CONTENT,
                &h("bytes 2097152-4194303/*")
            ),
            Err(SegmentError::Mismatch)
        );
        assert_eq!(
            s.check(1, StatusCode::PARTIAL_CONTENT, &HeaderMap::new()),
            Err(SegmentError::BadContentRange)
        );
        assert_eq!(
            s.check(1, StatusCode::RANGE_NOT_SATISFIABLE, &HeaderMap::new()),
            Err(SegmentError::Status(416))
        );
    }

    #[test]
    fn representation_identity() {
        let e = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ETAG, v.parse().unwrap());
            m
        };
        assert!(same_representation(&e("\"a\""), &e("\"a\"")));
        assert!(!same_representation(&e("\"a\""), &e("\"b\"")));
        assert!(!same_representation(&e("W/\"a\""), &e("W/\"a\"")));
        assert!(!same_representation(&HeaderMap::new(), &HeaderMap::new()));
    }
}
