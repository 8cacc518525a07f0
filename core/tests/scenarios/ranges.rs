//! Range requests: segments fetched on demand, origins that ignore Range, ranges cut from
//! a stored object, and the segment index under eviction.

use crate::sim::{Reply, Sim, assert_hit};
use crate::{URL, fresh};
use larder_core::Config;

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
    assert_eq!(assert_hit(r).detail(), Some("segment"));
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
    assert_hit(r);
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
    assert_hit(r);
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
    // The fillers have no validator: each is remembered as fetched whole for a while (no
    // first-segment request); those marks expire, the segment index holds nothing.
    assert_eq!(s.engines[0].remembered_keys(), 10);
    s.advance(200);
    s.input(0, larder_core::Input::Timeout);
    assert_eq!(s.engines[0].remembered_keys(), 0);
}
