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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub size: u64,
}

/// Which segments a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// These segment indexes, ascending, serve the ranges.
    Segments(Vec<u64>),
    /// The total length is unknown and needed (a suffix range): fetch segment 0 first, its
    /// `Content-Range` says the length, then plan again.
    NeedLength,
    /// No range is satisfiable: 416.
    Unsatisfiable,
}

/// How an upstream answered a segment request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAnswer {
    /// A correct 206 for the segment; `total` is the object's length.
    Segment { range: ByteRange, total: u64 },
    /// 200: the origin ignores Range. Stream the whole object; store no segment from it.
    WholeObject,
}

/// A segment answer that must not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Neither 206 nor 200 (416 past the end, 5xx, ...).
    Status(u16),
    /// 206 without a parseable `Content-Range`, or with a multipart body.
    BadContentRange,
    /// A 206 for other bytes than those asked for, or without a known total length.
    Mismatch,
}

impl Segments {
    pub fn new(size: u64) -> Self {
        assert!(size > 0, "segment size must be positive");
        Segments { size }
    }

    pub fn index_of(&self, offset: u64) -> u64 {
        offset / self.size
    }

    /// The bytes of segment `index`, clamped to `total` when known.
    pub fn bounds(&self, index: u64, total: Option<u64>) -> ByteRange {
        let start = index * self.size;
        let mut end = start + self.size - 1;
        if let Some(t) = total {
            end = end.min(t.saturating_sub(1));
        }
        ByteRange { start, end }
    }

    /// Number of segments of an object.
    pub fn count(&self, total: u64) -> u64 {
        total.div_ceil(self.size)
    }

    /// The covering segments of resolved ranges, ascending and without repeats.
    pub fn covering(&self, ranges: &[ByteRange]) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for r in ranges {
            out.extend(self.index_of(r.start)..=self.index_of(r.end));
        }
        out.sort_unstable();
        out.dedup();
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
                // Without the length, open ends reach to the end of the *first* segment they
                // touch; the first answer tells the length and the caller plans again.
                let ranges: Vec<ByteRange> = specs
                    .iter()
                    .map(|s| match *s {
                        RangeSpec::FromTo(a, b) => ByteRange { start: a, end: b },
                        RangeSpec::From(a) => ByteRange { start: a, end: a },
                        RangeSpec::Suffix(_) => unreachable!("handled above"),
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
        assert_eq!(plan, Plan::Segments(vec![2]));
        assert_eq!(seg().range_header(2), "bytes=4194304-6291455");
    }

    #[test]
    fn plans_every_range_form() {
        let total = Some(10 * MIB);
        assert_eq!(
            seg().plan(&parse("bytes=-100").unwrap(), total),
            Plan::Segments(vec![4])
        );
        assert_eq!(
            seg().plan(&parse("bytes=9000000-").unwrap(), total),
            Plan::Segments(vec![4])
        );
        assert_eq!(
            seg().plan(&parse("bytes=0-0,4194304-4194305,-1").unwrap(), total),
            Plan::Segments(vec![0, 2, 4])
        );
        assert_eq!(
            seg().plan(&parse("bytes=2097100-2097200").unwrap(), total),
            Plan::Segments(vec![0, 1])
        );
        assert_eq!(
            seg().plan(&parse("bytes=99999999-").unwrap(), total),
            Plan::Unsatisfiable
        );
        assert_eq!(
            seg().plan(&parse("bytes=-5").unwrap(), None),
            Plan::NeedLength
        );
        assert_eq!(
            seg().plan(&parse("bytes=3000000-").unwrap(), None),
            Plan::Segments(vec![1])
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
