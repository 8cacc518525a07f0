//! Policy tests, one group per RFC section.

use super::*;
use http::{Request, Response};

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn req(method: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = Request::builder()
        .method(method)
        .uri("http://example.test/r");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn res(status: u16, headers: &[(&str, &str)]) -> response::Parts {
    let mut b = Response::builder()
        .status(status)
        .header("date", date(t0()));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn shared() -> Policy {
    Policy::default()
}

fn secs(n: u64) -> SystemTime {
    t0() + Duration::from_secs(n)
}

fn store(p: &Policy, rq: &[(&str, &str)], rs: &[(&str, &str)]) -> Stored {
    p.storable(&req("GET", rq), &res(200, rs), t0()).unwrap()
}

// RFC 9111 §3: storing responses.
#[test]
fn s3_stores_explicitly_fresh_get() {
    let s = store(&shared(), &[], &[("cache-control", "max-age=60")]);
    assert_eq!(s.ttl(t0()), Duration::from_secs(60));
}

#[test]
fn s3_refuses_with_reasons() {
    let p = shared();
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, Headers, u16, Headers, NotStored)] = &[
        (
            "POST",
            &[],
            200,
            &[("cache-control", "max-age=60")],
            NotStored::Method,
        ),
        (
            "HEAD",
            &[],
            200,
            &[("cache-control", "max-age=60")],
            NotStored::Method,
        ),
        (
            "GET",
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")],
            NotStored::RequestNoStore,
        ),
        (
            "GET",
            &[],
            200,
            &[("cache-control", "no-store, max-age=60")],
            NotStored::NoStore,
        ),
        (
            "GET",
            &[],
            200,
            &[("cache-control", "private, max-age=60")],
            NotStored::Private,
        ),
        (
            "GET",
            &[("authorization", "Bearer x")],
            200,
            &[("cache-control", "max-age=60")],
            NotStored::Authorization,
        ),
        (
            "GET",
            &[],
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            NotStored::SetCookie,
        ),
        (
            "GET",
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            NotStored::VaryStar,
        ),
        (
            "GET",
            &[],
            500,
            // Explicit freshness stores any final status (RFC 9111 §3); heuristics do not.
            &[("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")],
            NotStored::Status(500),
        ),
        (
            "GET",
            &[],
            206,
            &[("cache-control", "max-age=60")],
            NotStored::Status(206),
        ),
        ("GET", &[], 302, &[], NotStored::NotCacheable),
        ("GET", &[], 200, &[], NotStored::StaleNoValidator),
        (
            "GET",
            &[],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-length", "999999999999"),
            ],
            NotStored::TooLarge,
        ),
    ];
    for (m, rq, st, rs, why) in cases {
        let got = p.storable(&req(m, rq), &res(*st, rs), t0());
        assert_eq!(got.err(), Some(*why), "{m} {rq:?} {st} {rs:?}");
    }
}

// RFC 9111 §3.5: Authorization is storable when the response explicitly allows sharing.
#[test]
fn s3_5_authorization_with_public_or_s_maxage() {
    let p = shared();
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        assert!(
            p.storable(
                &req("GET", &[("authorization", "x")]),
                &res(200, &[("cache-control", cc)]),
                t0()
            )
            .is_ok(),
            "{cc}"
        );
    }
}

#[test]
fn private_mode_stores_private_and_authorized() {
    let p = Policy::new(PolicyConfig {
        mode: CacheMode::Private,
        ..Default::default()
    });
    assert!(
        p.storable(
            &req("GET", &[]),
            &res(200, &[("cache-control", "private, max-age=60")]),
            t0()
        )
        .is_ok()
    );
    assert!(
        p.storable(
            &req("GET", &[("authorization", "x")]),
            &res(200, &[("cache-control", "max-age=60")]),
            t0()
        )
        .is_ok()
    );
}

/// `min_ttl` is squid's minimum: a shorter lifetime is raised to it (a `max-age=30` page
/// under a 60 s minimum is fresh for 60 s), for plain successes only; what forbids storing
/// or asks for revalidation every time still does.
#[test]
fn min_ttl_raises_short_lifetimes() {
    let p = Policy::new(PolicyConfig {
        min_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    let ttl = |status: u16, fields: &[(&str, &str)]| {
        p.storable(&req("GET", &[]), &res(status, fields), t0())
            .map(|s| s.ttl(t0()))
    };
    assert_eq!(
        ttl(200, &[("cache-control", "max-age=30")]),
        Ok(Duration::from_secs(60))
    );
    assert_eq!(
        ttl(200, &[("cache-control", "max-age=600")]),
        Ok(Duration::from_secs(600))
    );
    // Even without a validator or any freshness of its own.
    assert_eq!(ttl(200, &[]), Ok(Duration::from_secs(60)));
    // A 404 keeps its own lifetime.
    assert_eq!(
        ttl(404, &[("cache-control", "max-age=5")]),
        Ok(Duration::from_secs(5))
    );
    assert_eq!(
        ttl(200, &[("cache-control", "no-store")]),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        ttl(200, &[("cache-control", "no-cache"), ("etag", "\"v\"")]),
        Ok(Duration::ZERO)
    );
}

fn ruled(rule: rules::FreshnessRule) -> Policy {
    Policy::new(PolicyConfig {
        rules: vec![rule],
        ..Default::default()
    })
}

/// Operator rules (squid's refresh_pattern): the first matching rule's default lifetime
/// applies to responses without explicit freshness, even without a validator; its clamps
/// bound any lifetime; `cache = false` stores nothing; other URLs are untouched.
#[test]
fn freshness_rules() {
    let mut r = rules::FreshnessRule::new(r"\.deb$").unwrap();
    r.default_ttl = Some(Duration::from_secs(86400));
    r.max_ttl = Some(Duration::from_secs(3600 * 48));
    let p = ruled(r);
    let at = |url: &str, fields: &[(&str, &str)]| {
        let q = http::Request::get(url).body(()).unwrap().into_parts().0;
        p.storable(&q, &res(200, fields), t0()).map(|s| s.ttl(t0()))
    };
    assert_eq!(
        at("http://m.test/a.deb", &[]),
        Ok(Duration::from_secs(86400))
    );
    assert_eq!(
        at(
            "http://m.test/a.deb",
            &[("cache-control", "max-age=999999")]
        ),
        Ok(Duration::from_secs(3600 * 48)),
        "clamped"
    );
    assert_eq!(
        at("http://m.test/a.deb", &[("cache-control", "max-age=60")]),
        Ok(Duration::from_secs(60)),
        "explicit freshness is the origin's"
    );
    assert_eq!(
        at("http://m.test/a.txt", &[]),
        Err(NotStored::StaleNoValidator)
    );
    let mut off = rules::FreshnessRule::new("/private/").unwrap();
    off.cache = false;
    let p = ruled(off);
    let q = http::Request::get("http://m.test/private/x")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let fresh = res(200, &[("cache-control", "max-age=60")]);
    assert_eq!(p.storable(&q, &fresh, t0()).err(), Some(NotStored::Rule));
}

/// An immutable rule serves a fresh entry even to a reload (`no-cache`, `max-age=0`).
#[test]
fn immutable_rules_ignore_reloads_while_fresh() {
    let p = ruled(rules::preset("pypi").unwrap().remove(0));
    let q = http::Request::get("http://f.test/packages/a/b/pkg-1.0-py3-none-any.whl")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let stored = p.storable(&q, &res(200, &[]), t0()).unwrap();
    assert!(stored.ttl(t0()) >= Duration::from_secs(364 * 86400));
    let mut reload = crate::heads::clone_request(&q);
    reload
        .headers
        .insert("cache-control", "no-cache".parse().unwrap());
    assert!(matches!(p.reuse(&stored, &reload, t0()), Reuse::Fresh));
    // Without the rule a reload revalidates.
    let plain = Policy::new(PolicyConfig::default());
    let stored = plain
        .storable(&q, &res(200, &[("cache-control", "max-age=600")]), t0())
        .unwrap();
    assert!(matches!(
        plain.reuse(&stored, &reload, t0()),
        Reuse::Stale { .. }
    ));
}

// RFC 9111 §4.2: freshness, Age, s-maxage, Expires, heuristics.
#[test]
fn s4_2_fresh_then_stale() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "max-age=60")]);
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(59)),
        Reuse::Fresh
    ));
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(61)),
        Reuse::Stale { .. }
    ));
}

#[test]
fn s4_2_3_age_header_counts_against_freshness() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "max-age=60"), ("age", "50")]);
    assert_eq!(s.age(t0()), Duration::from_secs(50));
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(11)),
        Reuse::Stale { .. }
    ));
}

#[test]
fn s4_2_1_s_maxage_wins_in_shared_cache() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "max-age=1000, s-maxage=10")]);
    assert_eq!(s.ttl(t0()), Duration::from_secs(10));
}

#[test]
fn s4_2_1_expires_and_invalid_expires() {
    let p = shared();
    let s = store(&p, &[], &[("expires", &date(secs(100)))]);
    assert_eq!(s.ttl(t0()), Duration::from_secs(100));
    let r = p.storable(&req("GET", &[]), &res(200, &[("expires", "0")]), t0());
    assert_eq!(r.err(), Some(NotStored::StaleNoValidator));
}

#[test]
fn s4_2_2_heuristic_from_last_modified() {
    let p = shared();
    let lm = t0() - Duration::from_secs(1000);
    let s = store(&p, &[], &[("last-modified", &date(lm))]);
    assert_eq!(s.ttl(t0()), Duration::from_secs(100));
}

// RFC 9111 §5.2.1: request directives.
#[test]
fn s5_2_1_request_no_cache_and_max_age_force_validation() {
    let p = shared();
    let s = store(
        &p,
        &[],
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
    );
    for cc in ["no-cache", "max-age=5", "min-fresh=55"] {
        match p.reuse(&s, &req("GET", &[("cache-control", cc)]), secs(10)) {
            Reuse::Stale {
                revalidate,
                while_revalidate,
            } => {
                assert_eq!(
                    revalidate.headers.get("if-none-match").unwrap(),
                    "\"v1\"",
                    "{cc}"
                );
                assert!(!while_revalidate);
            }
            other => panic!("{cc}: {other:?}"),
        }
    }
    assert!(matches!(
        p.reuse(&s, &req("GET", &[("pragma", "no-cache")]), secs(10)),
        Reuse::Stale { .. }
    ));
}

#[test]
fn s5_2_1_max_stale_allows_plain_stale_response() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "max-age=60")]);
    assert!(matches!(
        p.reuse(
            &s,
            &req("GET", &[("cache-control", "max-stale=100")]),
            secs(100)
        ),
        Reuse::Fresh
    ));
    assert!(matches!(
        p.reuse(
            &s,
            &req("GET", &[("cache-control", "max-stale=10")]),
            secs(100)
        ),
        Reuse::Stale { .. }
    ));
}

// kornelski/http-cache-semantics#56: max-stale must not unlock no-cache / proxy-revalidate.
#[test]
fn max_stale_never_unlocks_no_cache_or_proxy_revalidate() {
    let p = shared();
    for cc in [
        "no-cache, max-age=60",
        "proxy-revalidate, max-age=1",
        "s-maxage=1",
        "must-revalidate, max-age=1",
    ] {
        let s = store(&p, &[], &[("cache-control", cc), ("etag", "\"a\"")]);
        let r = p.reuse(&s, &req("GET", &[("cache-control", "max-stale")]), secs(30));
        assert!(matches!(r, Reuse::Stale { .. }), "{cc}: {r:?}");
    }
}

// RFC 9111 §5.2.2.4: no-cache response must be validated every time.
#[test]
fn s5_2_2_no_cache_response_is_always_validated() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "no-cache"), ("etag", "\"v\"")]);
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), t0()),
        Reuse::Stale { .. }
    ));
}

// RFC 9111 §4.1: Vary.
#[test]
fn s4_1_vary_selects_variants() {
    let p = shared();
    let s = store(
        &p,
        &[("accept-language", "en")],
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    assert!(matches!(
        p.reuse(&s, &req("GET", &[("accept-language", "en")]), t0()),
        Reuse::Fresh
    ));
    assert!(matches!(
        p.reuse(&s, &req("GET", &[("accept-language", "de")]), t0()),
        Reuse::NoMatch(NotServed::VaryMismatch)
    ));
}

// RFC 9110 §9.3.2: HEAD is answered from a stored GET.
#[test]
fn head_reuses_get() {
    let p = shared();
    let s = store(&p, &[], &[("cache-control", "max-age=60")]);
    assert!(matches!(
        p.reuse(&s, &req("HEAD", &[]), secs(1)),
        Reuse::Fresh
    ));
    assert!(matches!(
        p.reuse(&s, &req("POST", &[]), secs(1)),
        Reuse::NoMatch(NotServed::Method)
    ));
}

// Client preconditions never leak into the revalidation request.
#[test]
fn revalidation_uses_stored_validators_only() {
    let p = shared();
    let s = store(
        &p,
        &[],
        &[
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("last-modified", &date(t0())),
        ],
    );
    let r = p.reuse(
        &s,
        &req(
            "GET",
            &[("if-none-match", "\"other\""), ("range", "bytes=0-1")],
        ),
        secs(5),
    );
    let Reuse::Stale { revalidate, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(revalidate.headers.get("if-none-match").unwrap(), "\"v1\"");
    assert!(revalidate.headers.get("range").is_none());
    assert_eq!(revalidate.method, Method::GET);
}

// RFC 9111 §4.3.4: a 304 freshens the stored response.
#[test]
fn s4_3_4_not_modified_freshens() {
    let p = shared();
    let fields = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("x-old", "1"),
        ("link", "<a>"),
        ("link", "<b>"),
        ("x-multi", "old"),
        ("content-length", "4"),
        ("age", "3"),
    ];
    let s = store(&p, &[], &fields);
    let stored_head = res(200, &fields);
    let Reuse::Stale { revalidate, .. } = p.reuse(&s, &req("GET", &[]), secs(20)) else {
        panic!()
    };
    let mut r304 = res(
        304,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("x-new", "added"),
            ("x-multi", "n1"),
            ("x-multi", "n2"),
            ("content-length", "0"),
        ],
    );
    r304.headers.insert("date", date(secs(20)).parse().unwrap());
    match p.revalidated(&s, &stored_head, &revalidate, &r304, secs(20)) {
        Revalidated::NotModified { stored, head } => {
            assert_eq!(head.status, 200);
            assert_eq!(head.headers.get("x-old").unwrap(), "1");
            // RFC 9111 §3.2: new fields are added, every value of a field is replaced, the
            // stored body's framing stays, and the stored Age is not carried over.
            assert_eq!(head.headers.get("x-new").unwrap(), "added");
            let all = |n: &str| -> Vec<&str> {
                head.headers
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect()
            };
            assert_eq!(all("x-multi"), ["n1", "n2"]);
            assert_eq!(all("link"), ["<a>", "<b>"]);
            assert_eq!(all("content-length"), ["4"]);
            assert!(head.headers.get("age").is_none());
            assert_eq!(stored.ttl(secs(20)), Duration::from_secs(100));
            assert!(matches!(
                p.reuse(&stored, &req("GET", &[]), secs(50)),
                Reuse::Fresh
            ));
        }
        Revalidated::Modified => panic!("304 should match"),
    }
    let other = res(304, &[("etag", "\"v2\"")]);
    assert!(matches!(
        p.revalidated(&s, &stored_head, &revalidate, &other, secs(20)),
        Revalidated::Modified
    ));
}

// RFC 9111 §3.2 and §4.3.4: a lifetime the 304 adds is used (the crate's merge dropped
// fields the stored response did not have, Cache-Control among them).
#[test]
fn s4_3_4_a_304_can_add_the_lifetime() {
    let p = shared();
    let fields = [
        ("etag", "\"v1\""),
        ("last-modified", &date(secs(0)) as &str),
    ];
    let s = store(&p, &[], &fields);
    let stored_head = res(200, &fields);
    let Reuse::Stale { revalidate, .. } = p.reuse(&s, &req("GET", &[]), secs(20)) else {
        panic!("no lifetime: stale at once")
    };
    let mut r304 = res(304, &[("cache-control", "max-age=600"), ("etag", "\"v1\"")]);
    r304.headers.insert("date", date(secs(20)).parse().unwrap());
    let Revalidated::NotModified { stored, head } =
        p.revalidated(&s, &stored_head, &revalidate, &r304, secs(20))
    else {
        panic!("304 should match")
    };
    assert_eq!(head.headers["cache-control"], "max-age=600");
    assert_eq!(stored.ttl(secs(20)), Duration::from_secs(600));
    // A 304 that adds no-store cannot make the merged response storable: the narrower
    // merge keeps the entry as it was, refreshed.
    let mut r304 = res(304, &[("cache-control", "no-store"), ("etag", "\"v1\"")]);
    r304.headers.insert("date", date(secs(20)).parse().unwrap());
    assert!(matches!(
        p.revalidated(&s, &stored_head, &revalidate, &r304, secs(20)),
        Revalidated::NotModified { .. }
    ));
}

// RFC 5861.
#[test]
fn rfc5861_stale_while_revalidate_window() {
    let p = shared();
    let s = store(
        &p,
        &[],
        &[
            ("cache-control", "max-age=10, stale-while-revalidate=30"),
            ("etag", "\"v\""),
        ],
    );
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(20)),
        Reuse::Stale {
            while_revalidate: true,
            ..
        }
    ));
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(41)),
        Reuse::Stale {
            while_revalidate: false,
            ..
        }
    ));
    assert!(matches!(
        p.reuse(&s, &req("GET", &[("cache-control", "no-cache")]), secs(20)),
        Reuse::Stale {
            while_revalidate: false,
            ..
        }
    ));
}

#[test]
fn rfc5861_stale_if_error_window() {
    let p = shared();
    let s = store(
        &p,
        &[],
        &[
            ("cache-control", "max-age=10, stale-if-error=60"),
            ("etag", "\"v\""),
        ],
    );
    assert!(p.stale_if_error(&s, &req("GET", &[]), secs(69)));
    assert!(!p.stale_if_error(&s, &req("GET", &[]), secs(71)));
    let plain = store(
        &p,
        &[],
        &[("cache-control", "max-age=10"), ("etag", "\"v\"")],
    );
    assert!(!p.stale_if_error(&plain, &req("GET", &[]), secs(20)));
    assert!(p.stale_if_error(
        &plain,
        &req("GET", &[("cache-control", "stale-if-error=100")]),
        secs(20)
    ));
    let strict = store(
        &p,
        &[],
        &[
            (
                "cache-control",
                "max-age=10, stale-if-error=60, must-revalidate",
            ),
            ("etag", "\"v\""),
        ],
    );
    assert!(!p.stale_if_error(&strict, &req("GET", &[]), secs(20)));
}

#[test]
fn unsafe_methods_invalidate() {
    for m in ["POST", "PUT", "DELETE", "PATCH", "PURGE"] {
        assert!(invalidates(&m.parse().unwrap()), "{m}");
    }
    for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
        assert!(!invalidates(&m.parse().unwrap()), "{m}");
    }
}

#[test]
fn fill_request_strips_client_conditions_and_hop_by_hop() {
    let r = req(
        "HEAD",
        &[
            ("if-none-match", "\"x\""),
            ("range", "bytes=0-1"),
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ],
    );
    let f = fill_request(&r);
    assert_eq!(f.method, Method::GET);
    for h in ["if-none-match", "range", "connection", "x-foo", "te"] {
        assert!(f.headers.get(h).is_none(), "{h}");
    }
    assert_eq!(f.headers.get("accept").unwrap(), "*/*");
}

/// `vectors/policy.txt`: the same cases every runtime checks.
#[test]
fn committed_policy_vectors_hold() {
    let text = include_str!("../../vectors/policy.txt");
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let c = vectors::Case::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let got = vectors::run(&c);
        assert_eq!(
            got,
            (c.storage.clone(), c.reuse.clone()),
            "vector {}",
            c.name
        );
        n += 1;
    }
    assert!(n >= 25, "only {n} vectors");
}

// RFC 9111 §5.2.2.4 / §5.2.2.7: qualified no-cache and private.
#[test]
fn qualified_no_cache_and_private_strip_fields_only() {
    let p = shared();
    let mut r = res(
        200,
        &[
            ("cache-control", "no-cache=\"a, b\""),
            ("cache-control", "max-age=3600"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ],
    );
    p.prepare_response(&mut r);
    assert!(r.headers.get("a").is_none() && r.headers.get("b").is_none());
    assert_eq!(r.headers.get("c").unwrap(), "3");
    // Cache-Control is passed on as written (RFC 9111 §5.2); the policy judges its
    // canonical form.
    let cc: Vec<_> = r.headers.get_all("cache-control").iter().collect();
    assert_eq!(cc, ["no-cache=\"a, b\"", "max-age=3600"]);
    let canonical = p.canonical_response(&r);
    assert_eq!(
        canonical.headers.get("cache-control").unwrap(),
        "max-age=3600"
    );
    let s = p.storable(&req("GET", &[]), &r, t0()).unwrap();
    assert!(matches!(
        p.reuse(&s, &req("GET", &[]), secs(10)),
        Reuse::Fresh
    ));
    let mut r = res(
        200,
        &[
            ("cache-control", "private=\"set-cookie\", max-age=60"),
            ("set-cookie", "x=1"),
        ],
    );
    p.prepare_response(&mut r);
    assert!(r.headers.get("set-cookie").is_none());
    assert!(p.storable(&req("GET", &[]), &r, t0()).is_ok());
}

// RFC 9111 §5.1: Age parsing (the cache-tests `age-parse` cases).
#[test]
fn age_header_is_parsed_strictly() {
    let p = shared();
    let fresh_after = |ages: &[&str]| {
        let mut h: Vec<(&str, &str)> = vec![("cache-control", "max-age=3600")];
        h.extend(ages.iter().map(|a| ("age", *a)));
        let mut r = res(200, &h);
        p.prepare_response(&mut r);
        // Stale on arrival without a validator is not even stored.
        p.storable(&req("GET", &[]), &r, t0())
            .is_ok_and(|s| matches!(p.reuse(&s, &req("GET", &[]), secs(1)), Reuse::Fresh))
    };
    for fresh in [
        &["abc"][..],
        &["-7200"],
        &["7200.0"],
        &["0, 7200"],
        &["0", "7200"],
        &["0, 0"],
        &["3000"],
    ] {
        assert!(fresh_after(fresh), "{fresh:?} should be fresh");
    }
    for stale in [
        &["2147483648"][..],
        &["2147483649"],
        &["7200, 0"],
        &["7200", "0"],
        &["7200;foo=bar"],
    ] {
        assert!(!fresh_after(stale), "{stale:?} should be stale");
    }
}

/// Found by the 1M-case fuzz run: an unbalanced quote hides `max-age` from Larder's own
/// (quote-aware) splitter but not from the crate's, so the crate's lifetime was unclamped and
/// a min-TTL of more than 2^31 s let the response be stored with a 2^31 s lifetime.
#[test]
fn freshness_is_bounded_whatever_the_parsers_see() {
    // Private mode: `s-maxage` does not apply, so the crate reads `max-age` (in shared mode
    // the broken `s-maxage` gives a lifetime of 0).
    let policy = Policy::new(PolicyConfig {
        min_ttl: Duration::from_secs(u64::MAX),
        mode: CacheMode::Private,
        ..PolicyConfig::default()
    });
    let req = http::Request::get("http://o.test/a")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut res = http::Response::builder()
        .header(
            "cache-control",
            "s-maxage=\", max-age=18446744073709551615, ",
        )
        .body(())
        .unwrap()
        .into_parts()
        .0;
    policy.prepare_response(&mut res);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    // The crate is given canonical Cache-Control (one parser decides): the unbalanced member
    // is dropped whole. The 2^64 s minimum then raises the lifetime, to 2^31 s at most.
    match policy.storable(&req, &res, now) {
        Ok(s) => assert!(
            s.ttl(now) <= Duration::from_secs(1 << 31),
            "{:?}",
            s.ttl(now)
        ),
        Err(e) => panic!("unexpected refusal {e:?}"),
    }
}

/// One Content-Length parser for framing (engine) and reading (size limit, logs).
#[test]
fn declared_length_accepts_one_number_only() {
    let h = |vals: &[&str]| {
        let mut m = http::HeaderMap::new();
        for v in vals {
            m.append(header::CONTENT_LENGTH, v.parse().unwrap());
        }
        m
    };
    assert_eq!(declared_length(&h(&[])), Ok(None));
    assert_eq!(declared_length(&h(&["10"])), Ok(Some(10)));
    assert_eq!(declared_length(&h(&["10, 10"])), Ok(Some(10)));
    assert_eq!(declared_length(&h(&["10", "10"])), Ok(Some(10)));
    for bad in [
        &["10, 11"][..],
        &["10", "11"],
        &["-1"],
        &["+1"],
        &["18446744073709551616"],
        &[""],
        &["1e3"],
    ] {
        assert_eq!(declared_length(&h(bad)), Err(InvalidLength), "{bad:?}");
        assert_eq!(content_length(&h(bad)), None);
    }
}

/// A response as the engine judges it: prepared first (every upstream head is).
fn prepared_store(p: &Policy, rs: &[(&str, &str)]) -> Result<Stored, NotStored> {
    let mut r = res(200, rs);
    p.prepare_response(&mut r);
    p.storable(&req("GET", &[]), &r, t0())
}

// RFC 9111 §5.2: directive names are case-insensitive, members split outside quotes only.
#[test]
fn s5_2_directive_names_are_case_insensitive() {
    let p = shared();
    let s = prepared_store(&p, &[("cache-control", "MAX-AGE=60")]).unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(60));
    let s = prepared_store(&p, &[("cache-control", "Max-Age=\"60\", Public")]).unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(60));
    assert_eq!(
        prepared_store(&p, &[("cache-control", "No-Store, max-age=60")]).unwrap_err(),
        NotStored::NoStore
    );
    let s = store(
        &p,
        &[],
        &[("cache-control", "max-age=60"), ("etag", "\"v\"")],
    );
    assert!(matches!(
        p.reuse(&s, &req("GET", &[("cache-control", "NO-CACHE")]), secs(1)),
        Reuse::Stale { .. }
    ));
}

#[test]
fn s5_2_quoted_commas_are_not_directives() {
    let p = shared();
    // An extension's quoted value must not read as `max-age=9999` (nor as `no-store`).
    let s = prepared_store(
        &p,
        &[("cache-control", "x-ext=\"a, max-age=9999\", max-age=10")],
    )
    .unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(10));
    let s = prepared_store(&p, &[("cache-control", "x-ext=\"a,no-store\", max-age=10")]).unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(10));
    // no-cache with a field list: those fields go, the response is stored fresh.
    let mut r = res(
        200,
        &[
            ("cache-control", "no-cache=\"Set-Cookie, X-Id\", max-age=30"),
            ("set-cookie", "a=b"),
            ("x-id", "7"),
        ],
    );
    p.prepare_response(&mut r);
    assert!(r.headers.get("set-cookie").is_none() && r.headers.get("x-id").is_none());
    let s = p.storable(&req("GET", &[]), &r, t0()).unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(30));
}

// Review findings on the Cache-Control rewrite.
#[test]
fn s5_2_edge_cases_of_the_canonical_form() {
    let p = shared();
    // An empty field list is the bare directive.
    assert_eq!(
        prepared_store(&p, &[("cache-control", "private=\"\", max-age=60")]).unwrap_err(),
        NotStored::Private
    );
    // An unterminated quote does not hide a later no-store.
    assert_eq!(
        prepared_store(&p, &[("cache-control", "x=\"a, no-store, max-age=60")]).unwrap_err(),
        NotStored::NoStore
    );
    // Duplicates: the first value, for the crate too (it would read conflicting copies as
    // invalid and add must-revalidate).
    let s = prepared_store(&p, &[("cache-control", "max-age=10, MAX-AGE=20")]).unwrap();
    assert_eq!(s.ttl(t0()), Duration::from_secs(10));
    // A request's invalid max-stale is no max-stale at all (the crate read it as any).
    let s = store(
        &p,
        &[],
        &[("cache-control", "max-age=10"), ("etag", "\"v\"")],
    );
    assert!(matches!(
        p.reuse(
            &s,
            &req("GET", &[("cache-control", "max-stale=abc")]),
            secs(100)
        ),
        Reuse::Stale { .. }
    ));
}
