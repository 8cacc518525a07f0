//! Client byte ranges (RFC 9110 §14).
//!
//! Parsing follows httparse's shape: a syntax the cache does not understand is not an
//! error, the Range header is simply ignored and the whole representation is sent (§14.2
//! allows it). Only a well-formed set with no satisfiable range gives 416.

/// One range as written by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `a-b` (inclusive).
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Most ranges accepted in one request; more is a denial-of-service shape (§14.2).
pub const MAX_RANGES: usize = 16;

/// Parses `bytes=...`. `None` means "ignore the header" (other unit, bad syntax, too many).
pub fn parse(value: &str) -> Option<Vec<RangeSpec>> {
    let rest = value.trim().strip_prefix("bytes=")?;
    let mut out = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-')?;
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        let spec = match (a.trim(), b.trim()) {
            ("", n) => RangeSpec::Suffix(num(n)?),
            (a, "") => RangeSpec::From(num(a)?),
            (a, b) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return None;
                }
                RangeSpec::FromTo(a, b)
            }
        };
        out.push(spec);
    }
    if out.is_empty() || out.len() > MAX_RANGES {
        None
    } else {
        Some(out)
    }
}

/// An absolute range `start..=end` within a representation (`start <= end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset, inclusive (as `Content-Range` writes it).
    pub end: u64,
}

impl ByteRange {
    /// Bytes in the range. Saturates: `0-18446744073709551615` is one byte longer than a
    /// u64 can say, and a hostile header must not make arithmetic wrap or panic.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }

    /// Always false: an inclusive range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `bytes start-end/total`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// No range of a request lies within the representation: 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Resolves specs against a length. Every range comes out clamped to `0..total`, so what
/// follows (slicing, segment planning) works on numbers no larger than the object.
/// A zero-length representation has no byte to select: unsatisfiable (callers serve such
/// objects whole, which RFC 9110 §14.2 always allows).
pub fn resolve(specs: &[RangeSpec], total: u64) -> Result<Vec<ByteRange>, Unsatisfiable> {
    if total == 0 {
        return Err(Unsatisfiable);
    }
    let mut out = Vec::new();
    for s in specs {
        let r = match *s {
            RangeSpec::FromTo(a, _) | RangeSpec::From(a) if a >= total => continue,
            RangeSpec::FromTo(a, b) => ByteRange {
                start: a,
                end: b.min(total - 1),
            },
            RangeSpec::From(a) => ByteRange {
                start: a,
                end: total - 1,
            },
            RangeSpec::Suffix(0) => continue,
            RangeSpec::Suffix(n) => ByteRange {
                start: total.saturating_sub(n),
                end: total - 1,
            },
        };
        out.push(r);
    }
    if out.is_empty() {
        Err(Unsatisfiable)
    } else {
        Ok(coalesce(out))
    }
}

/// Merges overlapping or adjacent ranges (§14.2 lets a server do so). Disjoint ranges keep
/// request order, as clients expect their parts back in the order asked; when any two
/// overlap, all are sorted and merged, so a response is never larger than the object
/// (`bytes=1-,0-,1-,0-,…` would otherwise send a 64 MiB object sixteen times).
fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    if ranges.len() < 2 {
        return ranges;
    }
    let mut sorted = ranges.clone();
    sorted.sort_unstable_by_key(|r| r.start);
    let touching = sorted
        .windows(2)
        .any(|w| w[1].start <= w[0].end.saturating_add(1));
    if !touching {
        return ranges;
    }
    let mut out: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    ranges.clear();
    out
}

/// `Content-Range: bytes a-b/total` (or `bytes a-b/*`) from an upstream 206.
pub fn parse_content_range(value: &str) -> Option<(ByteRange, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (start, end) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((ByteRange { start, end }, total))
}

/// `Content-Range: bytes */total` of a 416: the representation's length.
pub fn parse_unsatisfied_range(value: &str) -> Option<u64> {
    let total = value.trim().strip_prefix("bytes */")?.trim();
    if total.is_empty() || !total.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    total.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("bytes=0-99"), Some(vec![RangeSpec::FromTo(0, 99)]));
        assert_eq!(parse("bytes=100-"), Some(vec![RangeSpec::From(100)]));
        assert_eq!(parse("bytes=-5"), Some(vec![RangeSpec::Suffix(5)]));
        assert_eq!(
            parse("bytes=0-1, 5-6"),
            Some(vec![RangeSpec::FromTo(0, 1), RangeSpec::FromTo(5, 6)])
        );
        for bad in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let many = format!(
            "bytes={}",
            (0..20)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(parse(&many), None);
    }

    #[test]
    fn resolves_and_clamps() {
        let r = |s: &str, t| resolve(&parse(s).unwrap(), t);
        assert_eq!(
            r("bytes=0-99", 50),
            Ok(vec![ByteRange { start: 0, end: 49 }])
        );
        assert_eq!(
            r("bytes=-10", 50),
            Ok(vec![ByteRange { start: 40, end: 49 }])
        );
        assert_eq!(
            r("bytes=-100", 50),
            Ok(vec![ByteRange { start: 0, end: 49 }])
        );
        assert_eq!(r("bytes=60-", 50), Err(Unsatisfiable));
        assert_eq!(
            r("bytes=0-1,2-3,10-12", 50),
            Ok(vec![
                ByteRange { start: 0, end: 3 },
                ByteRange { start: 10, end: 12 }
            ])
        );
        assert_eq!(r("bytes=-0", 50), Err(Unsatisfiable));
        // Disjoint ranges keep their order; overlapping ones are merged, never repeated.
        assert_eq!(
            r("bytes=10-12,0-1", 50),
            Ok(vec![
                ByteRange { start: 10, end: 12 },
                ByteRange { start: 0, end: 1 }
            ])
        );
        assert_eq!(
            r("bytes=1-,0-,1-,0-,5-9", 50),
            Ok(vec![ByteRange { start: 0, end: 49 }])
        );
    }

    /// Issue 8 (12): an empty body with `bytes=-5` once gave `bytes 0-18446744073709551615/0`.
    #[test]
    fn zero_length_and_huge_numbers_never_wrap() {
        for spec in [
            "bytes=-5",
            "bytes=0-",
            "bytes=0-0",
            "bytes=-18446744073709551615",
        ] {
            assert_eq!(
                resolve(&parse(spec).unwrap(), 0),
                Err(Unsatisfiable),
                "{spec}"
            );
        }
        let all = ByteRange {
            start: 0,
            end: u64::MAX,
        };
        assert_eq!(all.len(), u64::MAX);
        let r = resolve(&parse("bytes=0-18446744073709551615").unwrap(), u64::MAX).unwrap();
        assert_eq!(r[0].end, u64::MAX - 1);
        assert_eq!(
            resolve(&parse("bytes=-18446744073709551615").unwrap(), 10),
            Ok(vec![ByteRange { start: 0, end: 9 }])
        );
    }

    #[test]
    fn content_range_round_trip() {
        let br = ByteRange { start: 5, end: 9 };
        assert_eq!(
            parse_content_range(&br.content_range(100)),
            Some((br, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((br, None)));
        assert_eq!(parse_content_range("bytes 5-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_unsatisfied_range("bytes */100"), Some(100));
        for bad in [
            "bytes */",
            "bytes */-1",
            "bytes */+1",
            "bytes 0-1/2",
            "bytes */99999999999999999999",
        ] {
            assert_eq!(parse_unsatisfied_range(bad), None, "{bad}");
        }
    }
}
