//! Copies of message heads. `http`'s `Parts` are not `Clone` (their extensions may not be),
//! and every runtime needs to keep a head while sending another copy on.

use bytes::Bytes;
use http::{request, response};

/// Method, URI, version and header fields of a request head (extensions are dropped).
pub fn clone_request(r: &request::Parts) -> request::Parts {
    let mut out = http::Request::new(()).into_parts().0;
    out.method = r.method.clone();
    out.uri = r.uri.clone();
    out.version = r.version;
    out.headers = r.headers.clone();
    out
}

/// Status, version, header fields and [`Reason`] of a response head (other extensions are
/// dropped).
pub fn clone_response(r: &response::Parts) -> response::Parts {
    let mut out = http::Response::new(()).into_parts().0;
    out.status = r.status;
    out.version = r.version;
    out.headers = r.headers.clone();
    if let Some(reason) = r.extensions.get::<Reason>() {
        out.extensions.insert(reason.clone());
    }
    out
}

/// A response's reason phrase when it is not its status code's usual one: a proxy passes a
/// message on as received (RFC 9112 §4, RFC 9110 §7.6), and an unusual code's phrase is often
/// all a client shows. An extension of the head, so every copy of a head (stored, replayed,
/// merged by a 304) keeps it; each runtime maps it to and from its HTTP library's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason(Bytes);

impl Reason {
    /// A phrase as RFC 9112 §4 allows it (`*( HTAB / SP / VCHAR / obs-text )`, at most
    /// 1 KiB); `None` for anything else, so no stored or received byte can split a head.
    pub fn new(phrase: Bytes) -> Option<Reason> {
        let valid = phrase.len() <= 1024
            && phrase
                .iter()
                .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80);
        valid.then_some(Reason(phrase))
    }

    /// The phrase's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The phrase.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

/// The same fields in storage of their own, exactly sized. A parser's header values are
/// slices of its read buffer (hyper's are), so one small stored head would otherwise keep a
/// whole 8–400 KiB buffer alive; the cache must hold only what it weighs.
pub fn owned_fields(h: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let mut v =
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
    }
    out
}

/// Heap bytes a header map holds, estimated from what `http` allocates per field (bucket,
/// index slot, value bytes, custom name bytes) plus the map itself. Used to weigh entries
/// so that `--memory` bounds the process, not just the bodies.
pub fn fields_footprint(h: &http::HeaderMap) -> u64 {
    /// Per field: the bucket (~104 B) with the entries vector's growth slack, its index slot,
    /// and the allocator's overhead on the value's own allocation.
    const PER_FIELD: u64 = 176;
    /// The map's fixed allocations (index table and entries vector headers).
    const PER_MAP: u64 = 96;
    PER_MAP
        + h.iter()
            .map(|(k, v)| k.as_str().len() as u64 + v.len() as u64 + PER_FIELD)
            .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_everything_but_extensions() {
        let r = http::Request::post("http://h/a")
            .header("x", "1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let c = clone_request(&r);
        assert_eq!((c.method, c.uri, c.headers), (r.method, r.uri, r.headers));
        let s = http::Response::builder()
            .status(404)
            .header("y", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let c = clone_response(&s);
        assert_eq!((c.status, c.headers), (s.status, s.headers));
    }

    #[test]
    fn a_reason_phrase_travels_with_every_copy() {
        let mut s = http::Response::builder()
            .status(299)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let reason = Reason::new(Bytes::from_static(b"Whatever It Is")).unwrap();
        s.extensions.insert(reason.clone());
        assert_eq!(clone_response(&s).extensions.get::<Reason>(), Some(&reason));
    }

    #[test]
    fn a_reason_phrase_cannot_split_a_head() {
        for bad in [&b"a\r\nX: y"[..], b"nul\0", b"del\x7f", &[b'a'; 1025]] {
            assert!(
                Reason::new(Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
        assert!(Reason::new(Bytes::from_static(b"Ok \tfine \xe9")).is_some());
    }
}
