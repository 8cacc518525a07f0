//! Misses, hits and what makes two requests one key.

use crate::sim::{Reply, Sim, assert_hit, assert_miss};
use crate::{URL, fresh};

#[test]
fn miss_then_hit_fetches_once() {
    let mut s = Sim::single(|_, _| fresh("hello"));
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "hello"));
    assert!(assert_miss(r).stored, "{}", r.cache_status());
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "hello"));
    assert_hit(r);
    assert_eq!(r.header("age").as_deref(), Some("0"));
    assert_eq!(s.origin_hits(), 1);
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

#[test]
fn normalized_spellings_share_one_entry() {
    let mut s = Sim::single(|_, _| fresh("x"));
    s.get("http://ORIGIN.test:80/a", &[]);
    s.get(URL, &[]);
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn age_grows_with_the_virtual_clock() {
    let mut s = Sim::single(|_, _| fresh("x"));
    s.get(URL, &[]);
    s.advance(25);
    let r = s.get(URL, &[]);
    assert_eq!(r.header("age").as_deref(), Some("25"));
    assert_eq!(assert_hit(r).ttl, Some(35), "{}", r.cache_status());
}

#[test]
fn head_is_answered_from_a_stored_get_and_a_head_miss_fills() {
    let mut s = Sim::single(|req, _| {
        assert_eq!(req.method, "GET", "fills are GETs");
        fresh("twelve bytes")
    });
    let r = s.request("HEAD", URL, &[]);
    assert_eq!((r.status(), r.body.len()), (200, 0));
    assert_eq!(r.header("content-length").as_deref(), Some("12"));
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "twelve bytes");
    assert_hit(r);
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn client_conditionals_get_304_from_cache() {
    let mut s = Sim::single(|_, _| fresh("body"));
    s.get(URL, &[]);
    let r = s.get(URL, &[("if-none-match", "\"v1\"")]);
    assert_eq!((r.status(), r.body.len()), (304, 0));
    assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
    let r = s.get(URL, &[("if-none-match", "\"v0\"")]);
    assert_eq!(r.status(), 200);
    // On a miss, the fill is unconditional and the 304 is made here.
    let mut s = Sim::single(|req, _| {
        assert!(req.headers.get("if-none-match").is_none());
        fresh("body")
    });
    let r = s.get(URL, &[("if-none-match", "\"v1\"")]);
    assert_eq!(r.status(), 304);
    assert_hit(s.get(URL, &[]));
}

#[test]
fn bad_targets_get_400() {
    let mut s = Sim::single(|_, _| fresh("x"));
    let r = s.get("/relative", &[]);
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("absolute"));
}

/// RFC 9110 §8.6: a 204 carries no Content-Length, from the origin's fill or from the cache
/// (the store kept one, 0, for itself).
#[test]
fn a_204_from_cache_has_no_content_length() {
    let mut s = Sim::single(|_, _| Reply::ok("", &[("cache-control", "max-age=60")]).status(204));
    for round in 0..2 {
        let r = s.get(URL, &[]);
        assert_eq!(r.status(), 204, "round {round}");
        assert_eq!(r.header("content-length"), None, "round {round}");
    }
    assert_eq!(s.origin_hits(), 1);
}

/// RFC 9111 §5.2, RFC 9110 §7.6: `Cache-Control` reaches the client as the origin wrote it,
/// from the fill and from the cache; only the fields `no-cache="..."` and `private="..."`
/// name are withheld from the hits (the client that caused the fill gets them).
#[test]
fn cache_control_is_passed_on_as_written() {
    let cc = "max-age=60, no-cache=\"set-cookie\", private=\"x-user\", X-Ext=\"a, b\"";
    let mut s = Sim::single(move |_, _| {
        Reply::ok(
            "x",
            &[
                ("cache-control", cc),
                ("set-cookie", "a=b"),
                ("x-user", "u1"),
            ],
        )
    });
    let r = s.get(URL, &[]);
    assert_eq!(r.header("cache-control").as_deref(), Some(cc));
    assert_eq!(
        (
            r.header("set-cookie").as_deref(),
            r.header("x-user").as_deref()
        ),
        (Some("a=b"), Some("u1"))
    );
    let r = s.get(URL, &[]);
    assert_hit(r);
    assert_eq!(r.header("cache-control").as_deref(), Some(cc));
    assert_eq!((r.header("set-cookie"), r.header("x-user")), (None, None));
}

/// RFC 9110 §13.1.3, RFC 9111 §4.3.2: `If-Modified-Since` is answered 304 from a stored
/// response that has no `Last-Modified` but a `Date` no later than the client's date.
#[test]
fn if_modified_since_against_date_when_no_last_modified() {
    let mut s = Sim::single(|_, _| {
        Reply::ok(
            "x",
            &[
                ("cache-control", "max-age=600"),
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ],
        )
    });
    s.get(URL, &[]);
    let r = s.get(
        URL,
        &[("if-modified-since", "Wed, 15 Nov 2023 00:00:00 GMT")],
    );
    assert_eq!(r.status(), 304, "{}", r.cache_status());
    let r = s.get(
        URL,
        &[("if-modified-since", "Mon, 13 Nov 2023 00:00:00 GMT")],
    );
    assert_eq!(r.status(), 200);
    assert_eq!(s.origin_hits(), 1);
}
