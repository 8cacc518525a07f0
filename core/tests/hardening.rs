//! Issue 8 at the engine level: hostile numbers in client and origin headers neither panic
//! nor hang, and leave nothing behind.

mod sim;

use larder_core::Config;
use sim::{Reply, Sim};

const URL: &str = "http://origin.test/a";

/// `Range: bytes=0-18446744073709551614` on an uncached URL aborted the process (every
/// segment index was materialised); `bytes=0-1125899906842623` held the lock for 4 s.
#[test]
fn huge_ranges_on_a_miss_are_planned_in_constant_space() {
    let body = "0123456789";
    let mut s = Sim::single(move |_, _| {
        Reply::ok(body, &[("cache-control", "max-age=60"), ("etag", "\"v\"")])
    });
    for (i, range) in [
        "bytes=0-18446744073709551614",
        "bytes=0-18446744073709551615",
        "bytes=0-1125899906842623",
        "bytes=3-18446744073709551615",
    ]
    .iter()
    .enumerate()
    {
        let url = format!("{URL}{i}");
        let r = s.get(&url, &[("range", range)]);
        assert_eq!(r.status(), 206, "{range}: {}", r.cache_status());
        let start: usize = range[6..].split('-').next().unwrap().parse().unwrap();
        assert_eq!(r.text(), &body[start..], "{range}");
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {start}-9/10"),
            "{range}"
        );
        // And again from the stored object.
        let r = s.get(&url, &[("range", range)]);
        assert_eq!((r.status(), r.text()), (206, body[start..].to_owned()));
    }
    // An open range far past any segment: one segment fetch, answered 416 by the origin's
    // length (never a loop over segments).
    let r = s.get(
        &format!("{URL}x"),
        &[("range", "bytes=18446744073709551000-")],
    );
    assert!(
        matches!(r.status(), 200 | 416),
        "{} {}",
        r.status(),
        r.cache_status()
    );
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

/// An empty cacheable body with `Range: bytes=-5` gave `206` and
/// `Content-Range: bytes 0-18446744073709551615/0` on a miss.
#[test]
fn suffix_range_of_an_empty_body_is_not_a_206() {
    let mut s = Sim::single(|_, _| Reply::ok("", &[("cache-control", "max-age=60")]));
    for _ in 0..2 {
        let r = s.get(URL, &[("range", "bytes=-5")]);
        assert_eq!(r.status(), 200, "{}", r.cache_status());
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.text(), "");
    }
    // The first GET asks for the first segment (416: there is no byte 0), then for the
    // object plainly; the second is a hit.
    assert_eq!(s.origin_hits(), 2);
    assert!(!s.origin_log[1].1.headers.contains_key("range"));
}

/// `Cache-Control: max-age=18446744073709551615` panicked in the engine path: the client
/// never got an answer and the request's state leaked. Delta-seconds are clamped to 2^31
/// (RFC 9111 §1.2.2) and every instant saturates.
#[test]
fn huge_freshness_values_are_clamped_not_panicked_on() {
    for cc in [
        "max-age=18446744073709551615",
        "s-maxage=18446744073709551615",
        "max-age=999999999999999999999999999",
        "max-age=60, stale-while-revalidate=18446744073709551615",
        "max-age=0, stale-if-error=18446744073709551615",
    ] {
        let mut s = Sim::single(move |_, _| {
            Reply::ok(
                "x",
                &[
                    ("cache-control", cc),
                    ("age", "18446744073709551615"),
                    ("etag", "\"v\""),
                ],
            )
        });
        let r = s.get(URL, &[]);
        assert_eq!((r.status(), r.text().as_str()), (200, "x"), "{cc}");
        s.advance(3600);
        let r = s.get(URL, &[("cache-control", "max-stale=18446744073709551615")]);
        assert_eq!(r.status(), 200, "{cc}");
        let r = s.get(URL, &[("cache-control", "min-fresh=18446744073709551615")]);
        assert_eq!(r.status(), 200, "{cc}");
        assert_eq!(s.engines[0].in_flight(), (0, 0), "{cc}");
    }
}

/// The clock itself may be anything the adapter hands in.
#[test]
fn far_future_clock_does_not_overflow() {
    let mut s = Sim::new(1, Config::default(), |_, _| {
        Reply::ok("x", &[("cache-control", "max-age=2147483648")])
    });
    // The last second `SystemTime` can hold on this platform, give or take.
    s.now =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i64::MAX as u64 - 1000);
    let r = s.get(URL, &[]);
    assert_eq!(r.status(), 200);
    let r = s.get(URL, &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

/// An origin answering an unconditional fill with 304, or a fill without Range with 206,
/// misbehaves: the client never asked for either. It gets a 502 that says why; nothing is
/// stored. (With segments on, a GET asks for its first segment first: a 206 for other bytes
/// sends it back to a plain request.)
#[test]
fn unsolicited_304_and_206_from_the_origin_are_502() {
    for (status, segments) in [(304, true), (206, false), (206, true)] {
        let cfg = Config {
            segment_size: segments.then_some(1 << 21),
            ..Config::default()
        };
        let mut s = Sim::new(1, cfg, move |_, _| {
            Reply::ok(
                "part",
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-3/10"),
                ],
            )
            .status(status)
        });
        let r = s.get(URL, &[]);
        assert_eq!(r.status(), 502, "{status}: {}", r.cache_status());
        assert!(
            r.cache_status().contains("detail=origin-unsolicited"),
            "{}",
            r.cache_status()
        );
        // With segments, the 206 to the first-segment request did not fit it: the object
        // was asked for plainly, and that 206 is unsolicited.
        if (status, segments) == (206, true) {
            let last = &s.origin_log.last().unwrap().1;
            assert!(!last.headers.contains_key("range"));
        }
        assert!(s.stored.is_empty());
        assert_eq!(s.engines[0].in_flight(), (0, 0));
    }
}

/// A URL whose response varies on a field the client controls must not grow an unbounded
/// list of variants that every request then walks.
#[test]
fn variants_per_url_are_bounded() {
    let mut s = Sim::single(|req, _| {
        let v = req.headers.get("x-v").unwrap().to_str().unwrap().to_owned();
        Reply::ok(&v, &[("cache-control", "max-age=60"), ("vary", "x-v")])
    });
    for i in 0..200 {
        s.get(URL, &[("x-v", &i.to_string())]);
    }
    assert!(
        s.engines[0].stored_entries() <= larder_core::engine::MAX_VARIANTS,
        "{} variants kept",
        s.engines[0].stored_entries()
    );
    // The newest variants are the ones kept.
    let r = s.get(URL, &[("x-v", "199")]);
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.text(), "199");
}

/// `Range: bytes=N-` on an uncached object larger than a segment was planned as the one
/// segment holding N: the 206 head promised the whole tail, the stream ended after one
/// segment (found by the engine fuzz target).
#[test]
fn open_ranges_on_unknown_lengths_are_never_cut_at_a_segment() {
    let cfg = Config {
        segment_size: Some(4),
        ..Config::default()
    };
    let mut s = Sim::new(1, cfg, |_, _| {
        Reply::ok(
            "0123456789",
            &[("cache-control", "max-age=60"), ("etag", "\"v\"")],
        )
    });
    for (i, (range, want, cr)) in [
        ("bytes=1-", "123456789", "bytes 1-9/10"),
        ("bytes=0-", "0123456789", "bytes 0-9/10"),
        ("bytes=5-", "56789", "bytes 5-9/10"),
    ]
    .into_iter()
    .enumerate()
    {
        let url = format!("{URL}{i}");
        let r = s.get(&url, &[("range", range)]);
        assert_eq!(r.status(), 206, "{range}");
        assert!(r.complete(), "{range}");
        assert_eq!(r.header("content-range").as_deref(), Some(cr), "{range}");
        assert_eq!(r.header("content-length"), Some(want.len().to_string()));
        assert_eq!(r.text(), want, "{range}");
    }
    // A bounded range inside one segment still costs one segment fetch.
    let r = s.get(&format!("{URL}b"), &[("range", "bytes=5-6")]);
    assert_eq!((r.status(), r.text().as_str()), (206, "56"));
    assert_eq!(
        s.origin_log.last().unwrap().1.headers.get("range").unwrap(),
        "bytes=4-7"
    );
}

/// An origin `Content-Length` that is not one valid number cannot frame the body: 502, not a
/// response whose head contradicts what it carries.
#[test]
fn invalid_content_length_from_the_origin_is_502() {
    for cl in ["18446744073709551616", "10, 11", "-1", "abc"] {
        let mut s = Sim::single(move |_, _| Reply::ok("", &[("cache-control", "max-age=60")]));
        // The sim writes its own Content-Length; replace it with the hostile one.
        let id = s.send(0, "GET", URL, &[]);
        let (at, fetch, req) = s.take_pending().expect("a fill");
        let mut head = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        for v in cl.split(", ") {
            head.headers.append("content-length", v.parse().unwrap());
        }
        let _ = req;
        s.input(at, larder_core::Input::UpstreamHead { fetch, head });
        let r = &s.results[&id];
        assert_eq!(r.status(), 502, "{cl}");
        assert!(r.cache_status().contains("origin-protocol-error"), "{cl}");
        assert!(s.stored.is_empty());
        assert_eq!(s.engines[0].in_flight(), (0, 0), "{cl}");
    }
}

/// The object changed length between two segment fetches (34 → 31 bytes): a suffix range
/// planned on the old length fell outside the one segment fetched, and the 206 promised 4
/// bytes while carrying 1 (found by a long engine fuzz run). The answer now never promises
/// more than it carries, and the old version's segments are dropped.
#[test]
fn a_changed_object_never_yields_a_short_206_or_a_mixed_plan() {
    let cfg = Config {
        segment_size: Some(5),
        ..Config::default()
    };
    let mut s = Sim::new(1, cfg, |_, n| {
        let body = if n == 0 {
            "a".repeat(34)
        } else {
            "b".repeat(31)
        };
        Reply::ok(&body, &[("cache-control", "max-age=60")])
    });
    let r = s.get(URL, &[("range", "bytes=0-3")]);
    assert_eq!((r.status(), r.text().as_str()), (206, "aaaa"));
    let r = s.get(URL, &[("range", "bytes=-4")]);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(r.complete());
    assert_eq!(r.body.len(), len, "{:?}", r.header("content-range"));
    if r.status() == 206 {
        assert!(r.text().chars().all(|c| c == 'b'), "{}", r.text());
    }
    assert!(
        s.evicted.iter().any(|(_, k, _)| k.ends_with("#seg=0")),
        "the old version's segment is dropped: {:?}",
        s.evicted
    );
    // Planned on the new length now: the last 4 bytes, all of them.
    let r = s.get(URL, &[("range", "bytes=-4")]);
    assert_eq!((r.status(), r.text().as_str()), (206, "bbbb"));
}
