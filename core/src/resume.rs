//! Continuing a response cut mid-body (the peer relaying it died): the rest is asked for
//! with `Range: bytes=N-` and `If-Range` (RFC 9110 §14.2, §13.1.5), and only a 206 for
//! exactly those bytes of the same representation continues it. Anything else ends the
//! response cut short: never spliced from two versions, never short and looking whole.

use crate::range;
use http::{HeaderValue, StatusCode, header, response};

/// A response that can be continued: its length and a strong validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumable {
    total: u64,
    /// The strong ETag, else the Last-Modified date (what `If-Range` carries).
    validator: HeaderValue,
    etag: bool,
}

impl Resumable {
    /// A 200 with one `Content-Length` and a strong ETag or a Last-Modified date; `None`
    /// for anything else (a weak ETag cannot vouch for bytes).
    pub fn of(head: &response::Parts) -> Option<Self> {
        if head.status != StatusCode::OK {
            return None;
        }
        let total = crate::policy::content_length(&head.headers).filter(|t| *t > 0)?;
        let etag = head
            .headers
            .get(header::ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/") && !v.is_empty());
        let (validator, etag) = match (etag, head.headers.get(header::LAST_MODIFIED)) {
            (Some(e), _) => (e.clone(), true),
            (None, Some(lm)) => (lm.clone(), false),
            (None, None) => return None,
        };
        Some(Resumable {
            total,
            validator,
            etag,
        })
    }

    /// The whole length.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The fields that ask for what follows the first `sent` bytes, only if the
    /// representation is still the same.
    pub fn request_fields(&self, sent: u64) -> [(header::HeaderName, HeaderValue); 2] {
        [
            (
                header::RANGE,
                HeaderValue::from_str(&format!("bytes={sent}-")).expect("digits"),
            ),
            (header::IF_RANGE, self.validator.clone()),
        ]
    }

    /// Whether `head` answers that request with exactly the rest of the same
    /// representation: a 206 for `sent..total` of the same length and validator.
    pub fn continues(&self, sent: u64, head: &response::Parts) -> bool {
        if head.status != StatusCode::PARTIAL_CONTENT || sent >= self.total {
            return false;
        }
        let Some((got, Some(total))) = head
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse_content_range)
        else {
            return false;
        };
        let same = match self.etag {
            true => head.headers.get(header::ETAG) == Some(&self.validator),
            false => head.headers.get(header::LAST_MODIFIED) == Some(&self.validator),
        };
        same && total == self.total
            && got.start == sent
            && got.end.checked_add(1) == Some(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, fields: &[(&str, &str)]) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_the_rest_of_the_same_representation_continues() {
        let first = head(200, &[("content-length", "100"), ("etag", "\"v1\"")]);
        let r = Resumable::of(&first).unwrap();
        let [(_, range), (_, if_range)] = r.request_fields(40);
        assert_eq!(
            (range.to_str().unwrap(), if_range.to_str().unwrap()),
            ("bytes=40-", "\"v1\"")
        );
        let rest = |cr: &str, etag: &str| {
            head(
                206,
                &[
                    ("content-range", cr),
                    ("etag", etag),
                    ("content-length", "60"),
                ],
            )
        };
        assert!(r.continues(40, &rest("bytes 40-99/100", "\"v1\"")));
        assert!(
            !r.continues(40, &rest("bytes 40-99/100", "\"v2\"")),
            "another version"
        );
        assert!(
            !r.continues(40, &rest("bytes 41-99/100", "\"v1\"")),
            "other bytes"
        );
        assert!(
            !r.continues(40, &rest("bytes 40-98/99", "\"v1\"")),
            "another length"
        );
        assert!(!r.continues(40, &rest("bytes 40-99/*", "\"v1\"")));
        // A hostile end never overflows (it used to add 1 to it).
        assert!(!r.continues(40, &rest("bytes 40-18446744073709551615/100", "\"v1\"")));
        let whole = head(200, &[("content-length", "100"), ("etag", "\"v1\"")]);
        assert!(
            !r.continues(40, &whole),
            "If-Range failed: the whole object again"
        );
        // Nothing to vouch for the bytes: not resumable.
        for fields in [
            &[("content-length", "100")][..],
            &[("content-length", "100"), ("etag", "W/\"v1\"")][..],
            &[("etag", "\"v1\"")][..],
        ] {
            assert_eq!(Resumable::of(&head(200, fields)), None, "{fields:?}");
        }
        let lm = head(
            200,
            &[
                ("content-length", "9"),
                ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT"),
            ],
        );
        let r = Resumable::of(&lm).unwrap();
        let next = head(
            206,
            &[
                ("content-range", "bytes 3-8/9"),
                ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT"),
            ],
        );
        assert!(r.continues(3, &next));
    }
}
