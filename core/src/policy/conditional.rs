//! Client preconditions evaluated against a stored response (RFC 9110 §13): the cache
//! answers `If-None-Match` / `If-Modified-Since` with 304 itself instead of asking the origin.

use http::header::{self, HeaderMap, HeaderValue};

/// True when a GET/HEAD with these request headers should get 304 for this stored response.
pub fn is_not_modified(req: &HeaderMap, res: &HeaderMap) -> bool {
    if let Some(inm) = header_str(req, header::IF_NONE_MATCH) {
        // If-None-Match wins over If-Modified-Since (§13.2.2 step 3 before 4).
        let etag = header_str(res, header::ETAG);
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || etag.is_some_and(|e| weak_eq(t, e.trim())));
    }
    // RFC 9110 §13.1.3: without a Last-Modified, the stored response's Date (when it was
    // generated) may stand for it (RFC 9111 §4.3.2 lets a cache use it).
    let modified = header_str(res, header::LAST_MODIFIED).or(header_str(res, header::DATE));
    if let (Some(ims), Some(lm)) = (header_str(req, header::IF_MODIFIED_SINCE), modified) {
        if let (Ok(ims), Ok(lm)) = (
            httpdate::parse_http_date(ims),
            httpdate::parse_http_date(lm),
        ) {
            return lm <= ims;
        }
    }
    false
}

/// RFC 9110 §8.8.3.2 weak comparison.
pub fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// Whether an `If-Range` validator lets a Range apply (§13.1.5): a strong ETag equal to the
/// stored one, or a date equal to Last-Modified.
pub fn if_range_holds(req: &HeaderMap, res: &HeaderMap) -> bool {
    let Some(v) = header_str(req, header::IF_RANGE) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return header_str(res, header::ETAG).is_some_and(|e| e.trim() == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    match (
        httpdate::parse_http_date(v),
        header_str(res, header::LAST_MODIFIED),
    ) {
        (Ok(d), Some(lm)) => httpdate::parse_http_date(lm).is_ok_and(|lm| lm == d),
        _ => false,
    }
}

/// The 304 answering a client's precondition from a stored response head.
pub fn not_modified_response(stored: &http::response::Parts) -> http::response::Parts {
    let mut out = http::Response::new(()).into_parts().0;
    out.status = http::StatusCode::NOT_MODIFIED;
    out.headers = not_modified_headers(&stored.headers);
    out
}

/// The header fields a 304 carries (§15.4.5), taken from the stored response.
pub fn not_modified_headers(res: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
        header::AGE,
    ] {
        for v in res.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v: &HeaderValue| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let res = h(&[(header::ETAG, "W/\"v1\"")]);
        assert!(is_not_modified(
            &h(&[(header::IF_NONE_MATCH, "\"x\", \"v1\"")]),
            &res
        ));
        assert!(is_not_modified(&h(&[(header::IF_NONE_MATCH, "*")]), &res));
        assert!(!is_not_modified(
            &h(&[(header::IF_NONE_MATCH, "\"v2\"")]),
            &res
        ));
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let res = h(&[
            (header::ETAG, "\"v1\""),
            (header::LAST_MODIFIED, "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let req = h(&[
            (header::IF_NONE_MATCH, "\"v2\""),
            (header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!is_not_modified(&req, &res));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let res = h(&[(header::LAST_MODIFIED, "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(is_not_modified(
            &h(&[(header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &res
        ));
        assert!(!is_not_modified(
            &h(&[(header::IF_MODIFIED_SINCE, "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &res
        ));
        assert!(!is_not_modified(
            &h(&[(header::IF_MODIFIED_SINCE, "garbage")]),
            &res
        ));
    }

    #[test]
    fn if_range_needs_strong_match() {
        let res = h(&[(header::ETAG, "\"v1\"")]);
        assert!(if_range_holds(&h(&[(header::IF_RANGE, "\"v1\"")]), &res));
        assert!(!if_range_holds(&h(&[(header::IF_RANGE, "\"v2\"")]), &res));
        assert!(if_range_holds(&h(&[]), &res));
    }
}
