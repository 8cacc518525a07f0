//! Invalidation by unsafe methods (RFC 9111 §4.4), including `Location` and
//! `Content-Location` targets.

use crate::sim::{Reply, Sim, assert_hit, assert_miss, assert_passed};
use crate::{URL, fresh};
use larder_core::cache_status::Fwd;

#[test]
fn unsafe_methods_invalidate_and_pass() {
    let mut s = Sim::single(|_, _| fresh("v"));
    s.get(URL, &[]);
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = s.request(m, URL, &[]);
        assert!(r.passed, "{m} passes through");
        assert_eq!(assert_passed(r).fwd, Some(Fwd::Method), "{m}");
        assert!(s.evicted.iter().any(|(_, k, _)| k == URL) || m != "POST");
        let r = s.get(URL, &[]);
        assert!(r.status_parts().is_miss(), "{m}: {}", r.cache_status());
    }
}

#[test]
fn failed_unsafe_requests_do_not_invalidate() {
    let mut s = Sim::single(|req, _| {
        if req.method == "POST" {
            Reply::ok("boom", &[]).status(500)
        } else {
            fresh("kept")
        }
    });
    s.get(URL, &[]);
    s.request("POST", URL, &[]);
    // A 500 leaves the entry alone.
    assert_hit(s.get(URL, &[]));
}

#[test]
fn location_and_content_location_are_invalidated() {
    let mut s = Sim::single(|req, _| {
        if req.method == "POST" {
            Reply::ok(
                "",
                &[
                    ("location", "/other"),
                    ("content-location", "http://origin.test/third"),
                ],
            )
            .status(201)
        } else {
            fresh("x")
        }
    });
    for path in ["/a", "/other", "/third"] {
        s.get(&format!("http://origin.test{path}"), &[]);
    }
    s.get("http://elsewhere.test/other", &[]);
    s.request("POST", URL, &[]);
    for path in ["/a", "/other", "/third"] {
        let r = s.get(&format!("http://origin.test{path}"), &[]);
        assert!(r.status_parts().is_miss(), "{path}: {}", r.cache_status());
    }
    // Other origins are untouched.
    assert_hit(s.get("http://elsewhere.test/other", &[]));
}

#[test]
fn unknown_unsafe_methods_invalidate_too() {
    let mut s = Sim::single(|_, _| fresh("x"));
    s.get(URL, &[]);
    s.request("M-SEARCH", URL, &[]);
    assert_miss(s.get(URL, &[]));
}
