//! Interim (1xx) responses on their way from upstream to a client (RFC 9110 §15.2).
//!
//! A proxy forwards 1xx responses it did not ask for itself, never stores them, and sends
//! none to an HTTP/1.0 client. The adapters' HTTP libraries deal with `100 Continue` (the
//! client's expectation is met where its body is read) and `101` (an upgrade is a tunnel,
//! not a response): those two are never relayed as interim answers.

use http::{StatusCode, Version, response};

/// The head to send `client` ahead of its final response, or `None` when `head` is not an
/// interim response this cache relays (or the client cannot receive one).
pub fn to_forward(head: &response::Parts, client: Version) -> Option<response::Parts> {
    let relayed = head.status.is_informational()
        && head.status != StatusCode::CONTINUE
        && head.status != StatusCode::SWITCHING_PROTOCOLS;
    if !relayed || client < Version::HTTP_11 {
        return None;
    }
    let mut out = crate::heads::clone_response(head);
    // A 1xx has no body: nothing may frame one, and its hop-by-hop fields stay on its hop.
    crate::policy::strip_hop_by_hop(&mut out.headers);
    out.headers.remove(http::header::CONTENT_LENGTH);
    out.headers.remove(http::header::TRANSFER_ENCODING);
    Some(out)
}

/// An interim head as HTTP/1.1 writes it (status line, fields, blank line), for adapters
/// whose server cannot send one itself.
pub fn http1_bytes(head: &response::Parts) -> Vec<u8> {
    let reason = head
        .extensions
        .get::<crate::heads::Reason>()
        .map(|r| r.as_bytes().to_vec())
        .or_else(|| {
            head.status
                .canonical_reason()
                .map(|r| r.as_bytes().to_vec())
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(64 + head.headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
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
    fn early_hints_and_processing_are_relayed_to_http11_clients_only() {
        let hints = head(
            103,
            &[
                ("link", "</s.css>; rel=preload"),
                ("connection", "x"),
                ("x", "1"),
            ],
        );
        let out = to_forward(&hints, Version::HTTP_11).unwrap();
        assert_eq!(out.status, 103);
        assert_eq!(out.headers.get("link").unwrap(), "</s.css>; rel=preload");
        assert!(out.headers.get("connection").is_none() && out.headers.get("x").is_none());
        assert!(to_forward(&hints, Version::HTTP_10).is_none());
        assert!(to_forward(&head(102, &[]), Version::HTTP_11).is_some());
        for status in [100, 101, 200, 304] {
            assert!(
                to_forward(&head(status, &[]), Version::HTTP_11).is_none(),
                "{status}"
            );
        }
    }

    #[test]
    fn written_as_http11() {
        let h = to_forward(&head(103, &[("link", "</a>")]), Version::HTTP_11).unwrap();
        assert_eq!(
            http1_bytes(&h),
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".to_vec()
        );
        assert_eq!(
            http1_bytes(&head(199, &[])),
            b"HTTP/1.1 199 \r\n\r\n".to_vec()
        );
    }
}
