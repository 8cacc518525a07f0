//! Engine scenarios on a virtual clock: a simulated cluster, a scripted origin, no sockets.

mod sim;

use larder_core::policy::{CacheMode, PolicyConfig};
use larder_core::{Config, Input};
use sim::{Failure, Reply, Sim, t0};
use std::time::Duration;

const URL: &str = "http://origin.test/a";

fn fresh(body: &str) -> Reply {
    Reply::ok(body, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
}

#[test]
fn miss_then_hit_fetches_once() {
    let mut s = Sim::single(|_, _| fresh("hello"));
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "hello"));
    assert!(
        r.cache_status().contains("fwd=uri-miss") && r.cache_status().contains("stored"),
        "{}",
        r.cache_status()
    );
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "hello"));
    assert!(
        r.cache_status().starts_with("larder; hit"),
        "{}",
        r.cache_status()
    );
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
    assert!(r.cache_status().contains("ttl=35"), "{}", r.cache_status());
}

#[test]
fn hundred_concurrent_requests_through_three_peers_fetch_once() {
    let mut s = Sim::new(3, Config::default(), |_, _| {
        fresh("shared body, 31 bytes long.....")
    });
    let ids: Vec<_> = (0..100).map(|i| s.send(i % 3, "GET", URL, &[])).collect();
    assert_eq!(
        s.origin_hits(),
        1,
        "one fetch before the origin even answers"
    );
    s.run();
    assert_eq!(s.origin_hits(), 1);
    let owner = s.engines[0]
        .ring()
        .owner(b"http://origin.test/a")
        .unwrap()
        .to_owned();
    let owner_idx = s.peers.iter().position(|p| *p == owner).unwrap();
    let mut collapsed = 0;
    for id in &ids {
        let r = &s.results[id];
        assert_eq!(r.text(), "shared body, 31 bytes long.....");
        assert!(r.ended && !r.aborted);
        assert_eq!(r.served_by, Some(owner_idx));
        assert!(r.forwarded_to.len() <= 1, "one hop at most");
        collapsed += r.cache_status().contains("collapsed") as usize;
    }
    assert_eq!(collapsed, 99);
    // Then 100 more, GET and HEAD mixed: all hits.
    let more: Vec<_> = (0..100)
        .map(|i| s.send(i % 3, if i % 2 == 0 { "GET" } else { "HEAD" }, URL, &[]))
        .collect();
    s.run();
    assert_eq!(s.origin_hits(), 1);
    for (i, id) in more.iter().enumerate() {
        let r = &s.results[id];
        assert_eq!(r.status(), 200);
        assert_eq!(r.body.len(), if i % 2 == 0 { 31 } else { 0 });
        assert_eq!(r.header("content-length").as_deref(), Some("31"));
    }
}

#[test]
fn followers_join_a_fill_while_it_streams() {
    let mut s = Sim::single(|_, _| fresh("0123456789abcdefghij"));
    let a = s.send(0, "GET", URL, &[]);
    let (at, fetch, reply) = s.answer_head_only().unwrap();
    s.input(
        at,
        Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::from_static(b"0123456789"),
        },
    );
    let b = s.send(0, "GET", URL, &[]);
    assert_eq!(
        s.results[&b].text(),
        "0123456789",
        "late joiner replays what arrived"
    );
    s.input(
        at,
        Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::copy_from_slice(&reply.body[10..]),
        },
    );
    s.input(at, Input::UpstreamEnd { fetch });
    for id in [a, b] {
        assert_eq!(s.results[&id].text(), "0123456789abcdefghij");
        assert!(s.results[&id].ended);
    }
    assert_eq!(s.origin_hits(), 1);
}

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
    assert!(
        r.cache_status().contains("fwd=stale") && r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.header("x-gen").as_deref(), Some("1"));
    s.advance(50);
    let r = s.get(URL, &[]);
    assert!(
        r.cache_status().contains("hit"),
        "freshened for 100 s: {}",
        r.cache_status()
    );
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
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
    // Beyond the window the error shows.
    s.advance(400);
    let r = s.get(URL, &[]);
    assert_eq!(r.status(), 502);
    assert!(
        r.cache_status().contains("origin-unreachable"),
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
    assert!(
        s.results[&id]
            .cache_status()
            .contains("stale-while-revalidate")
    );
    s.run();
    assert_eq!(s.origin_hits(), 2);
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "new");
    assert!(r.cache_status().contains("hit"));
}

#[test]
fn two_vary_variants_are_kept() {
    let mut s = Sim::single(|req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &format!("text in {lang}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    assert_eq!(
        s.get(URL, &[("accept-language", "en")]).text(),
        "text in en"
    );
    let de = s.get(URL, &[("accept-language", "de")]);
    assert!(
        de.cache_status().contains("fwd=vary-miss"),
        "{}",
        de.cache_status()
    );
    assert_eq!(
        s.get(URL, &[("accept-language", "en")]).text(),
        "text in en"
    );
    assert_eq!(
        s.get(URL, &[("accept-language", "de")]).text(),
        "text in de"
    );
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn followers_with_another_variant_fetch_their_own() {
    let mut s = Sim::single(|req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &lang,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    let en = s.send(0, "GET", URL, &[("accept-language", "en")]);
    let de = s.send(0, "GET", URL, &[("accept-language", "de")]);
    s.run();
    assert_eq!(s.results[&en].text(), "en");
    assert_eq!(s.results[&de].text(), "de");
    assert_eq!(s.origin_hits(), 2);
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
    assert!(r.cache_status().contains("hit"));
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn unsafe_methods_invalidate_and_pass() {
    let mut s = Sim::single(|_, _| fresh("v"));
    s.get(URL, &[]);
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = s.request(m, URL, &[]);
        assert!(r.passed, "{m} passes through");
        assert!(s.evicted.iter().any(|(_, k, _)| k == URL) || m != "POST");
        let r = s.get(URL, &[]);
        assert!(
            r.cache_status().contains("uri-miss"),
            "{m}: {}",
            r.cache_status()
        );
    }
}

#[test]
fn min_ttl_is_respected() {
    let cfg = Config {
        policy: PolicyConfig {
            min_ttl: Duration::from_secs(60),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, n| {
        Reply::ok(
            "x",
            &[(
                "cache-control",
                if n == 0 { "max-age=30" } else { "max-age=90" },
            )],
        )
    });
    let r = s.get(URL, &[]);
    assert!(
        r.cache_status().contains("detail=below-min-ttl"),
        "{}",
        r.cache_status()
    );
    s.advance(200); // past hit-for-miss
    s.fire_timeouts();
    s.get(URL, &[]);
    assert!(s.get(URL, &[]).cache_status().contains("hit"));
}

#[test]
fn private_responses_shared_vs_private_mode() {
    let private = || Reply::ok("mine", &[("cache-control", "private, max-age=60")]);
    let mut shared = Sim::single(move |_, _| private());
    shared.get(URL, &[]);
    let r = shared.get(URL, &[]);
    assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
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
    assert!(priv_mode.get(URL, &[]).cache_status().contains("hit"));
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
    assert!(r.passed, "a hit-for-miss key passes straight through");
    assert!(
        r.pass_status.contains("fwd=bypass; detail=hit-for-miss"),
        "{}",
        r.pass_status
    );
}

#[test]
fn a_hundred_byte_range_fetches_only_its_segment() {
    let big: String = (0..5_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = big.clone();
    let mut s = Sim::single(move |_, _| fresh(&body));
    s.chunk = 1 << 20;
    let r = s.get(URL, &[("range", "bytes=4500000-4500099")]);
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 4500000-4500099/5000000")
    );
    assert_eq!(r.text(), &big[4_500_000..4_500_100]);
    assert_eq!(s.origin_hits(), 1);
    assert_eq!(
        s.origin_log[0].1.headers.get("range").unwrap(),
        "bytes=4194304-6291455"
    );
    // A second range inside the same segment is a hit; another segment costs one fetch.
    let r = s.get(URL, &[("range", "bytes=4200000-4200009")]);
    assert_eq!(r.text(), &big[4_200_000..4_200_010]);
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    let r = s.get(URL, &[("range", "bytes=-10")]);
    assert_eq!(r.text(), &big[4_999_990..]);
    assert_eq!(
        s.origin_hits(),
        1,
        "suffix range lies in the stored segment"
    );
    let r = s.get(URL, &[("range", "bytes=10-19")]);
    assert_eq!(r.text(), &big[10..20]);
    assert_eq!(s.origin_hits(), 2);
    assert_eq!(
        s.origin_log[1].1.headers.get("range").unwrap(),
        "bytes=0-2097151"
    );
}

#[test]
fn origin_ignoring_range_is_detected() {
    let mut s = Sim::single(|_, _| fresh("0123456789").ignore_ranges());
    let r = s.get(URL, &[("range", "bytes=2-4")]);
    // The whole object arrived instead; the client still gets exactly its range.
    assert_eq!((r.status(), r.text().as_str()), (206, "234"));
    assert!(
        s.stored.iter().all(|(_, k, _)| !k.contains("#seg")),
        "no wrong segment stored: {:?}",
        s.stored
    );
    assert!(s.stored.iter().any(|(_, k, _)| k == URL));
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "0123456789");
    assert!(r.cache_status().contains("hit"));
}

#[test]
fn ranges_from_a_stored_object() {
    let mut s = Sim::single(|_, _| {
        Reply::ok(
            "0123456789",
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
            ],
        )
    });
    s.get(URL, &[]);
    let r = s.get(URL, &[("range", "bytes=-3")]);
    assert_eq!((r.status(), r.text().as_str()), (206, "789"));
    let r = s.get(URL, &[("range", "bytes=0-1,5-6")]);
    assert_eq!(r.status(), 206);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges; boundary=")
    );
    assert!(
        r.text().contains("Content-Range: bytes 0-1/10\r\n\r\n01")
            && r.text().contains("bytes 5-6/10\r\n\r\n56")
    );
    let r = s.get(URL, &[("range", "bytes=50-")]);
    assert_eq!(
        (r.status(), r.header("content-range").as_deref()),
        (416, Some("bytes */10"))
    );
    let r = s.get(URL, &[("range", "lines=1-2")]);
    assert_eq!((r.status(), r.text().as_str()), (200, "0123456789"));
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
    assert!(s.get(URL, &[]).cache_status().contains("hit"));
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
    assert!(r.cache_status().contains("uri-miss"));
}

#[test]
fn leader_failure_elects_a_new_leader() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("").failing(Failure::BeforeHead)
        } else {
            fresh("second try")
        }
    });
    let a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    let c = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(s.results[&a].status(), 502);
    assert_eq!(s.results[&b].text(), "second try");
    assert_eq!(s.results[&c].text(), "second try");
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn followers_give_up_waiting_after_the_collapse_timeout() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("").failing(Failure::Hang)
        } else {
            fresh("own fetch")
        }
    });
    let _a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(s.hanging(), 1);
    assert_eq!(
        s.engines[0].poll_timeout(),
        Some(t0() + Duration::from_secs(5))
    );
    s.advance(5);
    s.fire_timeouts();
    s.run();
    assert_eq!(s.results[&b].text(), "own fetch");
}

#[test]
fn only_if_cached_gives_504_on_miss() {
    let mut s = Sim::single(|_, _| fresh("x"));
    let r = s.get(URL, &[("cache-control", "only-if-cached")]);
    assert_eq!(r.status(), 504);
    assert_eq!(s.origin_hits(), 0);
}

#[test]
fn lru_evictions_are_outputs() {
    // Entries weigh what they cost on the heap (about 3.6 KB each here, body included).
    let cfg = Config {
        memory: 12 * 1024,
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| fresh(&"x".repeat(600)));
    for i in 0..6 {
        s.get(&format!("http://origin.test/{i}"), &[]);
    }
    assert!(!s.evicted.is_empty());
    assert!(s.engines[0].stored_bytes() <= 12 * 1024);
    assert_eq!(s.evicted[0].1, "http://origin.test/0");
    assert!(
        s.get("http://origin.test/0", &[])
            .cache_status()
            .contains("uri-miss")
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
    assert!(r.cache_status().contains("detail=too-large"));
    assert!(s.stored.is_empty());
}

#[test]
fn passthrough_patterns_bypass_the_cache() {
    let cfg = Config {
        passthrough: vec!["^/api/".into()],
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| fresh("x"));
    let r = s.get("http://origin.test/api/x", &[]);
    assert!(r.passed);
    assert!(r.pass_status.contains("passthrough"), "{}", r.pass_status);
    assert!(
        s.get("http://origin.test/static/x", &[])
            .cache_status()
            .contains("stored")
    );
    let bad = larder_core::Engine::new(Config {
        passthrough: vec!["(".into()],
        ..Default::default()
    });
    assert!(bad.err().unwrap().0.contains("passthrough"));
}

#[test]
fn bad_targets_get_400() {
    let mut s = Sim::single(|_, _| fresh("x"));
    let r = s.get("/relative", &[]);
    assert_eq!(r.status(), 400);
    assert!(r.text().contains("absolute"));
}

#[test]
fn peer_traffic_is_never_forwarded_again() {
    // Divergent views: peer0 believes peer1 owns everything, peer1 believes peer0 does.
    let mut s = Sim::new(2, Config::default(), |_, _| fresh("x"));
    let key = "http://origin.test/a";
    let owner = s.engines[0]
        .ring()
        .owner(key.as_bytes())
        .unwrap()
        .to_owned();
    let other = s.peers.iter().position(|p| *p != owner).unwrap();
    let owner_idx = 1 - other;
    s.input(
        owner_idx,
        Input::PeersChanged {
            peers: vec![s.peers[other].clone()],
        },
    );
    let id = s.send(other, "GET", key, &[]);
    s.run();
    let r = &s.results[&id];
    assert_eq!(r.status(), 200);
    assert_eq!(r.forwarded_to.len(), 1, "exactly one hop, no loop");
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
    assert!(
        s.get(URL, &[]).cache_status().contains("hit"),
        "a 500 leaves the entry alone"
    );
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
        assert!(
            r.cache_status().contains("uri-miss"),
            "{path}: {}",
            r.cache_status()
        );
    }
    assert!(
        s.get("http://elsewhere.test/other", &[])
            .cache_status()
            .contains("hit"),
        "other origins untouched"
    );
}

#[test]
fn unknown_unsafe_methods_invalidate_too() {
    let mut s = Sim::single(|_, _| fresh("x"));
    s.get(URL, &[]);
    s.request("M-SEARCH", URL, &[]);
    assert!(s.get(URL, &[]).cache_status().contains("uri-miss"));
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
fn evicted_segments_leave_the_segment_index() {
    let cfg = Config {
        memory: 4 * 1024,
        segment_size: Some(16),
        ..Default::default()
    };
    let mut s = Sim::new(1, cfg, |req, _| {
        if req.uri.path() == "/seg" {
            fresh("0123456789abcdefghijklmnopqrstuvwxyz")
        } else {
            Reply::ok("x".repeat(600).leak(), &[("cache-control", "max-age=60")])
        }
    });
    let r = s.get("http://origin.test/seg", &[("range", "bytes=0-3")]);
    assert_eq!((r.status(), r.text().as_str()), (206, "0123"));
    assert_eq!(s.engines[0].remembered_keys(), 1);
    for i in 0..10 {
        s.get(&format!("http://origin.test/filler{i}"), &[]);
    }
    assert!(s.evicted.iter().any(|(_, k, _)| k.ends_with("#seg=0")));
    assert_eq!(s.engines[0].remembered_keys(), 0);
}
