//! Large objects on a cluster: segments spread by their own keys, responses assembled in
//! order from segments wherever they live, one origin request per segment, one version per
//! response, one revalidation per object.

use crate::sim::{Failure, Reply, Sim};
use larder_core::Config;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

const BIG: &str = "http://origin.test/big.iso";
const SEG: u64 = 16;

fn body(len: usize, salt: u8) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i as u8).wrapping_mul(7).wrapping_add(salt)) % 26))
        .collect()
}

fn config() -> Config {
    Config {
        segment_size: Some(SEG),
        ..Config::default()
    }
}

fn big(content: &str, etag: &str) -> Reply {
    Reply::ok(
        content,
        &[
            ("cache-control", "max-age=60"),
            ("etag", etag),
            ("content-type", "application/octet-stream"),
        ],
    )
}

/// The origin's `Range` values, in order.
fn ranges(s: &Sim) -> Vec<String> {
    s.origin_log
        .iter()
        .map(|(_, r)| {
            r.headers
                .get("range")
                .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

/// Bytes of segments stored, by peer.
fn segment_bytes(s: &Sim) -> HashMap<usize, u64> {
    let mut by: HashMap<usize, u64> = HashMap::new();
    for (at, key, bytes) in &s.stored {
        if key.contains("#seg=") {
            *by.entry(*at).or_default() += bytes;
        }
    }
    by
}

#[test]
fn a_large_object_is_spread_over_the_cluster_and_fetched_once() {
    let content = body(200, 0);
    let c = content.clone();
    let mut s = Sim::new(3, config(), move |_, _| big(&c, "\"v1\""));
    s.chunk = 5;
    let r = s.get_at(0, BIG);
    assert_eq!(r.status(), 200, "{}", r.cache_status());
    assert!(r.complete());
    assert_eq!(r.header("content-length").as_deref(), Some("200"));
    assert_eq!(r.text(), content);
    // One range request per segment, each once.
    let mut asked = ranges(&s);
    asked.sort();
    asked.dedup();
    assert_eq!(asked.len(), 13, "{:?}", ranges(&s));
    assert_eq!(s.origin_hits(), 13, "{:?}", ranges(&s));
    // Every byte is stored once, and every peer holds some of it.
    let by = segment_bytes(&s);
    assert_eq!(by.values().sum::<u64>(), 200, "{by:?}");
    assert_eq!(by.len(), 3, "every peer holds segments: {by:?}");
    // Another GET at any peer: all from the cluster, in order.
    for at in 0..3 {
        let r = s.get_at(at, BIG);
        assert_eq!(r.text(), content, "via peer {at}");
    }
    assert_eq!(s.origin_hits(), 13);
    for e in &s.engines {
        assert_eq!(e.in_flight(), (0, 0));
    }
}

#[test]
fn concurrent_cold_gets_make_one_origin_request_per_segment() {
    let content = body(100, 3);
    let c = content.clone();
    let mut s = Sim::new(3, config(), move |_, _| big(&c, "\"v1\""));
    s.chunk = 4;
    let ids: Vec<_> = (0..20).map(|i| s.send(i % 3, "GET", BIG, &[])).collect();
    s.run();
    for id in ids {
        let r = &s.results[&id];
        assert!(r.complete(), "{:?}", r.cache_status());
        assert_eq!(r.text(), content);
    }
    assert_eq!(s.origin_hits(), 7, "{:?}", ranges(&s));
}

#[test]
fn ranges_across_segments_multipart_suffix_and_416() {
    let content = body(100, 5);
    let c = content.clone();
    let mut s = Sim::new(3, config(), move |_, _| big(&c, "\"v1\""));
    // Cold: a range across three segments.
    let r = s.get(BIG, &[("range", "bytes=10-45")]);
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 10-45/100")
    );
    assert_eq!(r.text(), &content[10..=45]);
    let r = s.get(BIG, &[("range", "bytes=-20")]);
    assert_eq!((r.status(), r.text()), (206, content[80..].to_owned()));
    let r = s.get(BIG, &[("range", "bytes=90-")]);
    assert_eq!((r.status(), r.text()), (206, content[90..].to_owned()));
    let r = s.get(BIG, &[("range", "bytes=0-1,30-33,98-")]);
    assert_eq!(r.status(), 206);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(r.body.len(), len);
    let text = r.text();
    for (a, b) in [(0, 1), (30, 33), (98, 99)] {
        assert!(
            text.contains(&format!(
                "Content-Range: bytes {a}-{b}/100\r\n\r\n{}",
                &content[a..=b]
            )),
            "{text}"
        );
    }
    let r = s.get(BIG, &[("range", "bytes=100-")]);
    assert_eq!(
        (r.status(), r.header("content-range").as_deref()),
        (416, Some("bytes */100"))
    );
    // If-Range with another validator: the whole object.
    let r = s.get(BIG, &[("range", "bytes=0-1"), ("if-range", "\"old\"")]);
    assert_eq!((r.status(), r.text()), (200, content.clone()));
    // HEAD and a matching If-None-Match need no segment at all.
    let before = s.origin_hits();
    let r = s.request("HEAD", BIG, &[]);
    assert_eq!(
        (r.status(), r.header("content-length").as_deref()),
        (200, Some("100"))
    );
    let r = s.get(BIG, &[("if-none-match", "\"v1\"")]);
    assert_eq!(r.status(), 304);
    assert_eq!(s.origin_hits(), before);
    let mut asked = ranges(&s);
    asked.sort();
    asked.dedup();
    assert_eq!(
        asked.len(),
        s.origin_hits(),
        "no segment twice: {:?}",
        ranges(&s)
    );
    // Served at every peer, the same: all from segments.
    for at in 0..3 {
        let r = s.get_at(at, BIG);
        assert_eq!(r.text(), content);
        let id = s.send(at, "GET", BIG, &[("range", "bytes=20-70")]);
        s.run();
        assert_eq!(s.results[&id].text(), &content[20..=70]);
    }
    assert_eq!(
        asked.len(),
        s.origin_hits(),
        "no segment twice: {:?}",
        ranges(&s)
    );
}

/// The origin changes the object between two segment fetches: no response carries bytes
/// of both versions, and the next one is whole and of the new version.
#[test]
fn an_object_changing_mid_way_is_never_spliced() {
    let (v1, v2) = (body(100, 1), body(100, 9));
    let (a, b) = (v1.clone(), v2.clone());
    let mut s = Sim::new(3, config(), move |_, n| {
        if n < 3 {
            big(&a, "\"v1\"")
        } else {
            big(&b, "\"v2\"")
        }
    });
    s.chunk = 3;
    let r = s.get(BIG, &[]);
    let got = r.text();
    let consistent = got.len() <= 100
        && (v1.starts_with(&got) || v2.starts_with(&got))
        && (got.len() < 100 || r.complete());
    assert!(consistent, "spliced: {got}");
    if r.complete() {
        assert!(got == v1 || got == v2);
    } else {
        assert!(r.aborted, "a short body ends aborted, never as if whole");
    }
    let r = s.get(BIG, &[]);
    assert!(r.complete());
    assert_eq!(r.text(), v2);
    assert_eq!(r.header("etag").as_deref(), Some("\"v2\""));
}

/// A stale object is revalidated once, as a whole: one conditional request for its first
/// segment, and a 304 makes the whole object fresh again; segments of the same version stay
/// good however old they are on their owners (ATS slice revalidated every slice).
#[test]
fn a_stale_object_is_revalidated_once_not_per_segment() {
    let content = body(100, 2);
    let c = content.clone();
    let mut s = Sim::new(3, config(), move |req, _| {
        if req
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return big("", "\"v1\"").status(304);
        }
        big(&c, "\"v1\"")
    });
    s.get(BIG, &[]);
    assert_eq!(s.origin_hits(), 7);
    s.advance(120);
    for at in [0, 1, 2, 0] {
        let r = s.get_at(at, BIG);
        assert!(r.complete());
        assert_eq!(r.text(), content);
    }
    assert_eq!(s.origin_hits(), 8, "{:?}", ranges(&s));
    let (_, revalidation) = &s.origin_log[7];
    assert_eq!(revalidation.headers["range"], "bytes=0-15");
    assert_eq!(revalidation.headers["if-none-match"], "\"v1\"");
    // A changed object: the revalidation brings the new version, consistently.
    let v2 = body(100, 7);
    let c2 = v2.clone();
    let mut s = Sim::new(3, config(), move |_, n| {
        if n < 7 {
            big(&body(100, 2), "\"v1\"")
        } else {
            big(&c2, "\"v2\"")
        }
    });
    s.get(BIG, &[]);
    s.advance(120);
    let r = s.get_at(1, BIG);
    assert!(r.complete());
    assert_eq!((r.text(), r.header("etag")), (v2, Some("\"v2\"".into())));
}

/// An object without a validator could be spliced unnoticed: unless the admin allows it,
/// it is fetched and served whole.
#[test]
fn an_object_without_validator_is_fetched_whole() {
    let content = body(100, 4);
    let c = content.clone();
    let mut s = Sim::new(1, config(), move |_, _| {
        Reply::ok(&c, &[("cache-control", "max-age=60")])
    });
    let r = s.get(BIG, &[]);
    assert_eq!(r.text(), content);
    assert_eq!(ranges(&s), ["bytes=0-15", "-"]);
    assert!(s.stored.iter().all(|(_, k, _)| !k.contains("#seg")));
    let c = content.clone();
    let mut s = Sim::new(
        1,
        Config {
            segment_unvalidated: true,
            ..config()
        },
        move |_, _| Reply::ok(&c, &[("cache-control", "max-age=60")]),
    );
    let r = s.get(BIG, &[]);
    assert_eq!(r.text(), content);
    assert_eq!(s.origin_hits(), 7);
}

/// A small object (one segment) is stored whole under its key, as it always was.
#[test]
fn a_small_object_arrives_whole_from_its_first_segment() {
    let mut s = Sim::new(1, config(), |_, _| big("0123456789", "\"s\""));
    let r = s.get(BIG, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "0123456789"));
    assert_eq!(r.header("content-range"), None);
    assert_eq!(s.stored.len(), 1);
    assert_eq!(s.stored[0].1, BIG);
    let r = s.get(BIG, &[]);
    crate::sim::assert_hit(r);
}

/// The owner of a segment is down: its next peer on the ring serves it (from the origin),
/// and the client's response completes.
#[test]
fn a_segment_whose_owner_is_down_comes_from_the_next_peer() {
    let content = body(100, 6);
    let c = content.clone();
    let mut s = Sim::new(3, config(), move |_, _| big(&c, "\"v1\""));
    s.down = vec![2];
    // Peer 0 owns the object itself (it is served there, not forwarded); peer 2 owns
    // some of its segments.
    let r = s.get_at(0, BIG);
    assert!(r.forwarded_to.is_empty());
    assert!(r.complete(), "{}", r.cache_status());
    assert_eq!(r.text(), content);
    let by = segment_bytes(&s);
    assert_eq!(
        (by.get(&2), by.values().sum::<u64>()),
        (None, 100),
        "{by:?}"
    );
    // With peer 2 up, its segments would have been its own.
    let c = content.clone();
    let mut up = Sim::new(3, config(), move |_, _| big(&c, "\"v1\""));
    up.get_at(0, BIG);
    assert!(segment_bytes(&up).contains_key(&2));
}

/// A segment fetch dies mid-body: the segment is fetched again (from the origin), and
/// the client's response completes with the bytes it was missing, none twice.
#[test]
fn a_segment_cut_mid_body_is_fetched_again() {
    let content = body(100, 8);
    let c = content.clone();
    let cut = Rc::new(RefCell::new(false));
    let once = cut.clone();
    let mut s = Sim::new(1, config(), move |req, _| {
        let r = big(&c, "\"v1\"");
        let third = req
            .headers
            .get("range")
            .is_some_and(|v| v.to_str().unwrap().starts_with("bytes=32-"));
        if third && !*once.borrow() {
            *once.borrow_mut() = true;
            return r.failing(Failure::CutBody);
        }
        r
    });
    s.chunk = 3;
    let r = s.get(BIG, &[]);
    assert!(r.complete(), "{}", r.cache_status());
    assert_eq!(r.text(), content);
    assert!(*cut.borrow());
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

/// After a restart, the segments kept on disk are read back, not fetched again (segment 0
/// through the request's own lookup, the others as the response reaches them).
#[test]
fn segments_on_disk_serve_again_after_a_restart() {
    let content = body(100, 11);
    let c = content.clone();
    let cfg = Config {
        disk: 1 << 20,
        ..config()
    };
    let mut s = Sim::new(1, cfg, move |_, _| big(&c, "\"v1\""));
    assert_eq!(s.get(BIG, &[]).text(), content);
    assert_eq!(s.origin_hits(), 7);
    s.restart(0, 1_000_000);
    let r = s.get(BIG, &[]);
    assert!(r.complete());
    assert_eq!(r.text(), content);
    assert_eq!(s.origin_hits(), 7, "{:?}", ranges(&s));
    let r = s.get(BIG, &[("range", "bytes=50-60")]);
    assert_eq!(r.text(), &content[50..=60]);
    assert_eq!(s.origin_hits(), 7);
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

/// Two ranges of one segment, the later bytes first: multipart keeps the order asked, and
/// the segment's earlier bytes are still there for the second range.
#[test]
fn ranges_of_one_segment_out_of_order() {
    let content = body(100, 5);
    let c = content.clone();
    let mut s = Sim::new(1, config(), move |_, _| big(&c, "\"v1\""));
    s.chunk = 3;
    let cold = BIG;
    // Two ranges of one segment, the later bytes first (multipart keeps the order asked).
    let r = s.get(cold, &[("range", "bytes=10-12,2-5")]);
    assert_eq!(r.status(), 206, "{}", r.cache_status());
    assert!(r.complete());
    let text = r.text();
    let (a, b) = (
        text.find(&format!("bytes 10-12/100\r\n\r\n{}", &content[10..=12])),
        text.find(&format!("bytes 2-5/100\r\n\r\n{}", &content[2..=5])),
    );
    assert!(a.is_some() && b.is_some() && a < b, "{text}");
}
