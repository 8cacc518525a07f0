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
