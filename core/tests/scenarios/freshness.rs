//! Freshness and revalidation: 304s, stale-if-error, stale-while-revalidate, min_ttl,
//! only-if-cached.

use crate::sim::{
    Failure, Reply, Sim, assert_hit, assert_miss, assert_revalidated, assert_stale, t0,
};
use crate::{URL, fresh};
use larder_core::Config;
use larder_core::cache_status::Fwd;
use larder_core::policy::PolicyConfig;
use std::time::Duration;

#[test]
fn revalidation_304_freshens_the_entry() {
    let mut s = Sim::single(|req, n| {
        if n >= 1 {
            assert_eq!(req.headers.get("if-none-match").unwrap(), "\"v1\"");
            Reply::ok("", &[("cache-control", "max-age=100"), ("etag", "\"v1\"")]).status(304)
        } else {
            Reply::ok(
                "body",
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("x-gen", "1"),
                ],
            )
        }
    });
    s.get(URL, &[]);
    s.advance(20);
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "body"));
    assert_eq!(assert_revalidated(r).fwd, Some(Fwd::Stale));
    assert_eq!(r.header("x-gen").as_deref(), Some("1"));
    s.advance(50);
    // Freshened for 100 s.
    assert_hit(s.get(URL, &[]));
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn stale_if_error_serves_stale_when_origin_fails() {
    let mut s = Sim::single(|_, n| {
        if n >= 1 {
            Reply::ok("", &[]).failing(Failure::BeforeHead)
        } else {
            Reply::ok(
                "keep me",
                &[
                    ("cache-control", "max-age=10, stale-if-error=300"),
                    ("etag", "\"a\""),
                ],
            )
        }
    });
    s.get(URL, &[]);
    s.advance(60);
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "keep me"));
    let p = assert_stale(r);
    assert_eq!(
        (p.fwd, p.detail()),
        (Some(Fwd::Stale), Some("stale-if-error"))
    );
    // Beyond the window the error shows.
    s.advance(400);
    let r = s.get(URL, &[]);
    assert_eq!(r.status(), 502);
    let p = r.status_parts();
    assert_eq!(
        (p.hit, p.fwd, p.detail()),
        (false, Some(Fwd::Stale), Some("origin-unreachable")),
        "{}",
        r.cache_status()
    );
}

#[test]
fn stale_if_error_on_5xx() {
    let mut s = Sim::single(|_, n| {
        if n >= 1 {
            Reply::ok("oops", &[]).status(503)
        } else {
            Reply::ok(
                "old",
                &[
                    ("cache-control", "max-age=1, stale-if-error=60"),
                    ("etag", "\"a\""),
                ],
            )
        }
    });
    s.get(URL, &[]);
    s.advance(5);
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "old"));
    let p = assert_stale(r);
    assert_eq!(
        (p.fwd, p.fwd_status, p.detail()),
        (Some(Fwd::Stale), Some(503), Some("stale-if-error"))
    );
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let mut s = Sim::single(|_, n| {
        let body = if n >= 1 { "new" } else { "old" };
        Reply::ok(
            body,
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=60"),
                ("etag", &format!("\"{n}\"")),
            ],
        )
    });
    s.get(URL, &[]);
    s.advance(20);
    let id = s.send(0, "GET", URL, &[]);
    assert_eq!(s.results[&id].text(), "old", "answered before the origin");
    let p = assert_stale(&s.results[&id]);
    assert_eq!(
        (p.fwd, p.detail(), p.ttl),
        (None, Some("stale-while-revalidate"), Some(-10))
    );
    s.run();
    assert_eq!(s.origin_hits(), 2);
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "new");
    assert_hit(r);
}

/// `min_ttl` is a floor (squid's refresh_pattern minimum): a 30 s lifetime lives 60 s.
#[test]
fn min_ttl_raises_short_lifetimes() {
    let cfg = Config {
        policy: PolicyConfig {
            min_ttl: Duration::from_secs(60),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| {
        Reply::ok("x", &[("cache-control", "max-age=30")])
    });
    assert!(assert_miss(s.get(URL, &[])).stored);
    s.advance(45);
    assert_hit(s.get(URL, &[]));
    s.advance(20);
    assert!(!s.get(URL, &[]).status_parts().is_hit());
    assert_eq!(s.origin_hits(), 2);
}

/// A key found uncacheable passes through (hit-for-miss) until that lapses by the clock,
/// not by a timer.
#[test]
fn hit_for_miss_lapses_by_the_clock() {
    let mut s = Sim::single(|_, n| {
        Reply::ok(
            "x",
            &[(
                "cache-control",
                if n == 0 { "no-store" } else { "max-age=90" },
            )],
        )
    });
    let r = s.get(URL, &[]);
    let p = r.status_parts();
    assert!(
        p.is_miss() && !p.stored && p.detail() == Some("no-store"),
        "{}",
        r.cache_status()
    );
    // Past hit-for-miss (120 s): it lapses by the clock, not by a timer.
    s.advance(200);
    assert_eq!(s.next_deadline(), None);
    s.get(URL, &[]);
    assert_hit(s.get(URL, &[]));
}

#[test]
fn only_if_cached_gives_504_on_miss() {
    let mut s = Sim::single(|_, _| fresh("x"));
    let r = s.get(URL, &[("cache-control", "only-if-cached")]);
    assert_eq!(r.status(), 504);
    let p = r.status_parts();
    assert!(
        p.is_miss() && p.detail() == Some("only-if-cached"),
        "{}",
        r.cache_status()
    );
    assert_eq!(s.origin_hits(), 0);
}

#[test]
fn bare_304_without_validators_still_freshens() {
    // Python's http.server answers If-Modified-Since with a 304 that carries no validator.
    let lm = httpdate::fmt_http_date(t0() - Duration::from_secs(100));
    let mut s = Sim::single(move |_, n| {
        if n == 0 {
            Reply::ok(
                "body",
                &[("last-modified", &lm), ("cache-control", "max-age=5")],
            )
        } else {
            Reply::ok("", &[]).status(304)
        }
    });
    s.get(URL, &[]);
    s.advance(10);
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "body"));
    assert_revalidated(r);
    assert_eq!(s.origin_hits(), 2, "one revalidation, no loop");
}

#[test]
fn unmatched_304_is_retried_unconditionally_once() {
    let mut s = Sim::single(|req, n| match n {
        0 => Reply::ok("v1", &[("etag", "\"1\""), ("cache-control", "max-age=5")]),
        1 => Reply::ok("", &[("etag", "\"other\"")]).status(304),
        _ => {
            assert!(
                req.headers.get("if-none-match").is_none(),
                "retry is unconditional"
            );
            Reply::ok("v2", &[("etag", "\"2\""), ("cache-control", "max-age=5")])
        }
    });
    s.get(URL, &[]);
    s.advance(10);
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "v2"));
    assert_eq!(s.origin_hits(), 3);
}

/// RFC 9111 §5.2.1.5: a request with `no-store` that revalidates an entry gets its answer,
/// but nothing of that exchange is stored: the 304's lifetime and fields do not refresh the
/// entry, so the next request revalidates again.
#[test]
fn a_no_store_request_does_not_refresh_the_entry() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            Reply::ok(
                "body",
                &[("cache-control", "max-age=10"), ("etag", "\"v\"")],
            )
        } else {
            Reply::ok(
                "",
                &[
                    ("cache-control", "max-age=1000"),
                    ("etag", "\"v\""),
                    ("x-new", "1"),
                ],
            )
            .status(304)
        }
    });
    s.get(URL, &[]);
    s.advance(20);
    let r = s.get(URL, &[("cache-control", "no-store")]);
    assert_eq!((r.status(), r.text().as_str()), (200, "body"));
    let parts = assert_revalidated(r);
    assert!(!parts.stored);
    s.advance(1);
    let r = s.get(URL, &[]);
    assert_revalidated(r);
    assert_eq!(
        r.header("x-new").as_deref(),
        Some("1"),
        "this exchange may store"
    );
    assert_eq!(s.origin_hits(), 3);
}

/// RFC 9110 §5.6.7, RFC 9111 §5.3: the three date formats a recipient must accept give the
/// same freshness; invalid dates (a wrong day name, an extra space, a zone other than GMT)
/// make `Expires` "already expired".
#[test]
fn http_dates_in_all_three_formats_and_invalid_ones() {
    for (expires, fresh) in [
        ("Thu, 01 Jan 2099 00:00:00 GMT", true),
        ("Sunday, 01-Jan-40 00:00:00 GMT", true),
        ("Thu Jan  1 00:00:00 2099", true),
        ("Fri, 01 Jan 2099 00:00:00 GMT", false),
        ("Thu,  01 Jan 2099 00:00:00 GMT", false),
        ("Thu, 01 Jan 2099 00:00:00 UTC", false),
        ("Thu, 01 Jan 2099 00:00:00 +0000", false),
        ("0", false),
    ] {
        let e = expires.to_owned();
        let mut s = crate::sim::Sim::single(move |_, _| {
            crate::sim::Reply::ok("x", &[("expires", e.as_str()), ("etag", "\"a\"")])
        });
        s.get(crate::URL, &[]);
        let r = s.get(crate::URL, &[]);
        assert_eq!(
            r.cache_status().contains("; hit"),
            fresh,
            "{expires}: {}",
            r.cache_status()
        );
        // Passed on as written.
        assert_eq!(r.header("expires").as_deref(), Some(expires));
    }
}

/// RFC 9111 §5.2: directive names are case-insensitive, in responses and requests.
#[test]
fn directive_names_in_any_case() {
    let mut s = crate::sim::Sim::single(|_, _| {
        crate::sim::Reply::ok("x", &[("cache-control", "MaX-aGe=60"), ("etag", "\"a\"")])
    });
    s.get(crate::URL, &[]);
    assert!(s.get(crate::URL, &[]).cache_status().contains("; hit"));
    let r = s.get(crate::URL, &[("cache-control", "No-CaChE")]);
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
}

/// RFC 9111 §4.2.4: an origin that cannot be reached at all gets a stale copy served (up to
/// `stale_if_unreachable`), unless a directive forbids serving it stale; `stale-if-error`,
/// when present, bounds it.
#[test]
fn a_stale_copy_is_served_when_the_origin_is_unreachable() {
    use larder_core::Config;
    use larder_core::policy::PolicyConfig;
    let run = |cc: &'static str, req: &[(&str, &str)], limit: u64| {
        let cfg = Config {
            policy: PolicyConfig {
                stale_if_unreachable: std::time::Duration::from_secs(limit),
                ..PolicyConfig::default()
            },
            ..Config::default()
        };
        let mut s = Sim::new(1, cfg, move |_, n| {
            if n >= 1 {
                Reply::ok("", &[]).failing(Failure::BeforeHead)
            } else {
                Reply::ok("keep me", &[("cache-control", cc), ("etag", "\"a\"")])
            }
        });
        s.get(URL, &[]);
        s.advance(60);
        let r = s.get(URL, req);
        (r.status(), r.cache_status())
    };
    let (status, cs) = run("max-age=10", &[], 3600);
    assert_eq!(status, 200, "{cs}");
    assert!(
        cs.contains("fwd=stale") && cs.contains("detail=origin-unreachable"),
        "{cs}"
    );
    for (cc, req, limit) in [
        ("max-age=10, must-revalidate", &[][..], 3600),
        ("max-age=10, proxy-revalidate", &[], 3600),
        ("max-age=10, s-maxage=10", &[], 3600),
        ("max-age=10, no-cache", &[], 3600),
        ("max-age=10", &[("cache-control", "no-cache")][..], 3600),
        ("max-age=10, stale-if-error=5", &[], 3600),
        ("max-age=10", &[], 30),
        ("max-age=10", &[], 0),
    ] {
        let (status, cs) = run(cc, req, limit);
        assert_eq!(status, 502, "{cc} {req:?} {limit}: {cs}");
    }
}

/// RFC 9213: `CDN-Cache-Control` (a Structured Fields Dictionary) decides instead of
/// Cache-Control and Expires when it parses; an invalid one is ignored whole; both reach the
/// client unchanged.
#[test]
fn cdn_cache_control_targets_this_cache() {
    let run = |fields: &'static [(&'static str, &'static str)]| {
        let mut s = Sim::single(move |_, _| Reply::ok("x", fields));
        s.get(URL, &[]);
        s.advance(30);
        let r = s.get(URL, &[]);
        let hit = r.cache_status().contains("; hit");
        // (A response not stored is passed on the second time: no head in the sim.)
        if r.head.is_some() {
            for (k, v) in fields {
                assert_eq!(r.header(k).as_deref(), Some(*v), "{k} passed on");
            }
        }
        (hit, s.origin_hits())
    };
    // The targeted field wins over Cache-Control, both ways.
    let fresh = run(&[
        ("cdn-cache-control", "max-age=60"),
        ("cache-control", "no-store"),
    ]);
    assert_eq!(fresh, (true, 1));
    let gone = run(&[
        ("cdn-cache-control", "no-store"),
        ("cache-control", "max-age=600"),
    ]);
    assert_eq!(gone.1, 2);
    let short = run(&[
        ("cdn-cache-control", "max-age=10"),
        ("cache-control", "max-age=600"),
    ]);
    assert!(!short.0);
    // Expires is ignored too.
    let exp = run(&[
        ("cdn-cache-control", "max-age=60"),
        ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
    ]);
    assert_eq!(exp, (true, 1));
    // Invalid as a Dictionary: ignored whole, Cache-Control decides.
    for bad in ["max-age=60,", "max-age=6O", "max-age=60;;x", "MAX-AGE=60"] {
        let leaked: &'static str = Box::leak(bad.to_owned().into_boxed_str());
        let fields: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
            ("cdn-cache-control", leaked),
            ("cache-control", "max-age=600"),
        ]));
        assert_eq!(run(fields), (true, 1), "{bad}");
    }
    // A string where seconds are due is not a lifetime.
    let string = run(&[
        ("cdn-cache-control", "max-age=\"60\""),
        ("cache-control", "max-age=600"),
    ]);
    assert!(!string.0, "no lifetime: heuristics only (none here)");
}
