//! What gets stored: private responses, no-store and Set-Cookie (hit-for-miss),
//! oversize objects, passthrough patterns, truncated bodies, and eviction (LRU and S3-FIFO).

use crate::sim::{Failure, Reply, Sim, assert_hit, assert_miss, assert_passed};
use crate::{URL, fresh};
use larder_core::cache_status::Fwd;
use larder_core::policy::{CacheMode, PolicyConfig};
use larder_core::{Config, EvictionPolicy};

#[test]
fn private_responses_shared_vs_private_mode() {
    let private = || Reply::ok("mine", &[("cache-control", "private, max-age=60")]);
    let mut shared = Sim::single(move |_, _| private());
    let r = shared.get(URL, &[]);
    let p = assert_miss(r);
    assert_eq!((p.stored, p.detail()), (false, Some("private")));
    // Not a hit: the key is remembered as uncacheable and passes straight through.
    let r = shared.get(URL, &[]);
    let p = assert_passed(r);
    assert!(!p.hit, "{}", r.pass_status);
    assert_eq!(
        (p.fwd, p.detail()),
        (Some(Fwd::Bypass), Some("hit-for-miss"))
    );
    assert_eq!(shared.origin_hits(), 2);
    let cfg = Config {
        policy: PolicyConfig {
            mode: CacheMode::Private,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut priv_mode = Sim::new(1, cfg, move |_, _| private());
    priv_mode.get(URL, &[]);
    assert_hit(priv_mode.get(URL, &[]));
    assert_eq!(priv_mode.origin_hits(), 1);
}

#[test]
fn no_store_and_set_cookie_release_followers_and_mark_hit_for_miss() {
    let mut s = Sim::single(|_, n| {
        Reply::ok(
            &format!("user {n}"),
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        )
    });
    let a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    s.run();
    assert_ne!(
        s.results[&a].text(),
        s.results[&b].text(),
        "nobody gets another's Set-Cookie response"
    );
    assert_eq!(s.origin_hits(), 2);
    let r = s.get(URL, &[]);
    // A hit-for-miss key passes straight through.
    let p = assert_passed(r);
    assert_eq!(
        (p.fwd, p.detail()),
        (Some(Fwd::Bypass), Some("hit-for-miss")),
        "{}",
        r.pass_status
    );
}

#[test]
fn hit_for_miss_memory_is_bounded() {
    let mut s = Sim::single(|_, _| Reply::ok("x", &[("cache-control", "no-store")]));
    s.chunk = 1 << 20;
    for i in 0..(larder_core::engine::HIT_FOR_MISS_MAX + 500) {
        s.get(&format!("http://origin.test/api?id={i}"), &[]);
    }
    assert!(s.engines[0].remembered_keys() <= larder_core::engine::HIT_FOR_MISS_MAX);
    assert_eq!(
        s.engines[0].in_flight(),
        (0, 0),
        "nothing else is left behind"
    );
}

#[test]
fn oversize_objects_stream_through_unstored() {
    let cfg = Config {
        policy: PolicyConfig {
            max_object_size: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| fresh("more than ten bytes"));
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "more than ten bytes");
    let p = assert_miss(r);
    assert_eq!((p.stored, p.detail()), (false, Some("too-large")));
    assert!(s.stored.is_empty());
}

#[test]
fn passthrough_patterns_bypass_the_cache() {
    let cfg = Config {
        passthrough: vec!["^/api/".into(), r"\.pom$".into()],
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| fresh("x"));
    // The path is matched, not the query: `\.pom$` matches `/a.pom?x=1`.
    assert_passed(s.get("http://origin.test/lib/a.pom?x=1", &[]));
    assert!(assert_miss(s.get("http://origin.test/lib/a?f=.pom", &[])).stored);
    let r = s.get("http://origin.test/api/x", &[]);
    let p = assert_passed(r);
    assert_eq!(
        (p.fwd, p.detail()),
        (Some(Fwd::Bypass), Some("passthrough")),
        "{}",
        r.pass_status
    );
    assert!(assert_miss(s.get("http://origin.test/static/x", &[])).stored);
    let bad = larder_core::Engine::new(Config {
        passthrough: vec!["(".into()],
        ..Default::default()
    });
    assert!(bad.err().unwrap().0.contains("passthrough"));
}

#[test]
fn truncated_body_aborts_and_is_never_stored() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("a body that will be cut").failing(Failure::CutBody)
        } else {
            fresh("whole")
        }
    });
    let r = s.get(URL, &[]);
    assert!(r.aborted && !r.ended, "client sees an aborted response");
    assert!(s.stored.is_empty());
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "whole");
    assert_miss(r);
}

#[test]
fn lru_evictions_are_outputs() {
    // Entries weigh what they cost on the heap (about 3.6 KB each here, body included).
    let cfg = Config {
        memory: 12 * 1024,
        eviction: EvictionPolicy::Lru,
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| fresh(&"x".repeat(600)));
    for i in 0..6 {
        s.get(&format!("http://origin.test/{i}"), &[]);
    }
    assert!(!s.evicted.is_empty());
    assert!(s.engines[0].stored_bytes() <= 12 * 1024);
    assert_eq!(s.evicted[0].1, "http://origin.test/0");
    assert_miss(s.get("http://origin.test/0", &[]));
}

/// S3-FIFO through the engine: a URL hit once survives a run of one-hit wonders that
/// pushes it out of an LRU of the same size.
#[test]
fn s3fifo_keeps_a_url_used_twice_through_one_hit_wonders() {
    for (policy, kept) in [(EvictionPolicy::S3Fifo, true), (EvictionPolicy::Lru, false)] {
        let cfg = Config {
            memory: 40 * 1024,
            eviction: policy,
            ..Default::default()
        };
        let mut s = Sim::new(1, cfg, |_, _| fresh(&"x".repeat(600)));
        s.get("http://origin.test/hot", &[]);
        assert_hit(s.get("http://origin.test/hot", &[]));
        for i in 0..40 {
            s.get(&format!("http://origin.test/once/{i}"), &[]);
        }
        assert!(s.engines[0].stored_bytes() <= 40 * 1024);
        let r = s.get("http://origin.test/hot", &[]);
        if kept {
            assert_hit(r);
        } else {
            assert_miss(r);
        }
    }
}

/// S3-FIFO's ghost works across entries: a URL evicted unused and fetched again is stored
/// under a fresh entry id, and recognised by its key's hint, so it goes straight to the main
/// queue and outlives the one-hit wonders after it.
#[test]
fn s3fifo_remembers_a_url_evicted_too_early() {
    for (policy, kept) in [(EvictionPolicy::S3Fifo, true), (EvictionPolicy::Lru, false)] {
        let cfg = Config {
            memory: 40 * 1024,
            eviction: policy,
            ..Default::default()
        };
        let mut s = Sim::new(1, cfg, |_, _| fresh(&"x".repeat(600)));
        s.get("http://origin.test/back", &[]);
        // About eleven entries fit: this is just enough to evict it.
        for i in 0..14 {
            s.get(&format!("http://origin.test/once/{i}"), &[]);
        }
        assert_miss(s.get("http://origin.test/back", &[]));
        for i in 14..40 {
            s.get(&format!("http://origin.test/once/{i}"), &[]);
        }
        let r = s.get("http://origin.test/back", &[]);
        if kept {
            assert_hit(r);
        } else {
            assert_miss(r);
        }
    }
}

/// RFC 9111 §5.2.2.4: `no-cache="Set-Cookie"` lets the response be stored and shared
/// without its cookie; the client whose request caused the fill still gets the cookie.
#[test]
fn a_qualified_no_cache_keeps_the_cookie_for_the_client_that_asked() {
    let mut s = Sim::single(|_, _| {
        Reply::ok(
            "body",
            &[
                ("cache-control", "no-cache=\"Set-Cookie\", max-age=60"),
                ("set-cookie", "sid=secret"),
            ],
        )
    });
    let leader = s.send(0, "GET", URL, &[]);
    let follower = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(
        s.results[&leader].header("set-cookie").as_deref(),
        Some("sid=secret")
    );
    assert_eq!(
        s.results[&follower].header("set-cookie"),
        None,
        "shared without it"
    );
    assert_eq!(s.results[&follower].text(), "body");
    let r = s.get(URL, &[]);
    assert_hit(r);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(s.origin_hits(), 1);
}

/// RFC 9111 §3, §4.2.2: any final status is stored when it has explicit freshness (the
/// crate alone knows a fixed list); heuristic freshness stays with the codes RFC 9110 §15.1
/// makes heuristically cacheable.
#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    for status in [299u16, 400, 499, 500, 502, 503, 504, 599] {
        for (fields, stored) in [
            (&[("cache-control", "max-age=60")][..], true),
            (&[("cache-control", "s-maxage=60")][..], true),
            (&[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")][..], true),
            // Only heuristics: not for these codes.
            (
                &[("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")][..],
                false,
            ),
            (&[("cache-control", "max-age=60, no-store")][..], false),
        ] {
            let f: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut s = Sim::single(move |_, _| {
                let fs: Vec<(&str, &str)> =
                    f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Reply::ok("body", &fs).status(status)
            });
            let r = s.get(URL, &[]);
            assert_eq!(r.status(), status);
            let r = s.get(URL, &[]);
            if stored {
                // A hit, with its own status and body.
                assert_eq!((r.status(), r.text().as_str()), (status, "body"));
                assert_hit(r);
            } else {
                assert!(r.passed, "{status} {fields:?}: not stored, so passed");
            }
            assert_eq!(s.origin_hits() == 1, stored, "{status} {fields:?}");
        }
    }
}

/// RFC 9111 §5.2.2.3: `must-understand` stores a response whose status this cache
/// implements, ignoring the `no-store` beside it; any other status is not stored.
#[test]
fn must_understand_ignores_no_store_for_understood_statuses() {
    for (status, cc, stored) in [
        (200, "max-age=60, no-store, must-understand", true),
        (404, "max-age=60, must-understand, no-store", true),
        (299, "max-age=60, must-understand", false),
        (299, "max-age=60, no-store, must-understand", false),
        (200, "max-age=60, no-store", false),
    ] {
        let mut s =
            Sim::single(move |_, _| Reply::ok("body", &[("cache-control", cc)]).status(status));
        s.get(URL, &[]);
        let hit = s.get(URL, &[]).cache_status().contains("; hit");
        assert_eq!(
            (s.origin_hits() == 1, hit),
            (stored, stored),
            "{status} {cc}"
        );
    }
}
