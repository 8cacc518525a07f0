//! Misses, hits and what makes two requests one key.

use crate::sim::{Sim, assert_hit, assert_miss};
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
