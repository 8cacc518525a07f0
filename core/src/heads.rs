//! Copies of message heads. `http`'s `Parts` are not `Clone` (their extensions may not be),
//! and every runtime needs to keep a head while sending another copy on.

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

/// Status, version and header fields of a response head (extensions are dropped).
pub fn clone_response(r: &response::Parts) -> response::Parts {
    let mut out = http::Response::new(()).into_parts().0;
    out.status = r.status;
    out.version = r.version;
    out.headers = r.headers.clone();
    out
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
}
