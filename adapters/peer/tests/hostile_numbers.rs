//! Issue 8 (2, 3, 12) against the real `larder` binary: numbers from a client's `Range` or an
//! origin's `Cache-Control` once aborted the process (SIGABRT), held the engine lock for
//! seconds, left clients with no answer, or produced a 206 with an underflowed range.
//! `LARDER_BIN=<older build> cargo test -p larder-peer --test hostile_numbers` shows the
//! failures on a build before the fixes.

mod common;

use common::{exchange, origin, start};
use std::time::{Duration, Instant};

fn answer(path: &str) -> Vec<u8> {
    let (cc, body): (&str, &str) = match path {
        p if p.starts_with("/huge-max-age") => ("max-age=18446744073709551615", "fresh forever"),
        p if p.starts_with("/empty") => ("max-age=60", ""),
        _ => ("max-age=60", "0123456789"),
    };
    format!(
        "HTTP/1.1 200 OK\r\ncache-control: {cc}\r\netag: \"v\"\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const WITHIN: Duration = Duration::from_secs(10);

/// A peer in mirror mode over the test origin (so both the forward and the mirror door work),
/// and the forward-door URL of a path.
fn setup() -> (common::Peer, impl Fn(&str) -> String) {
    let (port, _) = origin(answer);
    let mirror = format!("http://127.0.0.1:{port}");
    let peer = start(&["--mirror", &mirror]);
    (peer, move |path: &str| {
        format!("http://127.0.0.1:{port}{path}")
    })
}

/// The process answers its health check afterwards: nothing killed or wedged it.
fn still_serving(peer: &mut common::Peer) {
    let (head, _) = exchange(peer.port, "/healthz", &[], WITHIN).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(peer.alive());
}

#[test]
fn huge_ranges_neither_kill_nor_stall_the_process() {
    let (mut peer, forward) = setup();
    // (2) Eight huge ranges on uncached URLs, through the forward and the mirror door.
    for i in 0..8 {
        let target = if i % 2 == 0 {
            forward(&format!("/r{i}"))
        } else {
            format!("/r{i}")
        };
        let (head, body) = exchange(
            peer.port,
            &target,
            &[("range", "bytes=0-18446744073709551614")],
            WITHIN,
        )
        .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(head.starts_with("http/1.1 206"), "{target}: {head}");
        assert!(head.contains("content-range: bytes 0-9/10"), "{head}");
        assert_eq!(body, b"0123456789");
        assert!(peer.alive(), "the process died on {target}");
    }
    // A petabyte range is planned in constant time: no multi-second stall.
    let start = Instant::now();
    let (head, _) = exchange(
        peer.port,
        &forward("/pb"),
        &[("range", "bytes=0-1125899906842623")],
        WITHIN,
    )
    .unwrap();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    still_serving(&mut peer);
}

#[test]
fn huge_max_age_is_answered_and_stored() {
    let (mut peer, forward) = setup();
    // (3) An origin's max-age of 2^64-1: answered, stored (clamped to 2^31 s), a hit after.
    for i in 0..3 {
        let (head, body) = exchange(peer.port, &forward("/huge-max-age"), &[], WITHIN)
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, b"fresh forever");
        if i > 0 {
            assert!(head.contains("cache-status: larder; hit"), "{head}");
        }
    }
    still_serving(&mut peer);
}

#[test]
fn suffix_range_of_an_empty_body_is_served_whole() {
    let (mut peer, forward) = setup();
    // (12) An empty cacheable body and `bytes=-5`: served whole, never a wrapped range.
    for _ in 0..2 {
        let (head, body) = exchange(
            peer.port,
            &forward("/empty"),
            &[("range", "bytes=-5")],
            WITHIN,
        )
        .unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("content-range"), "{head}");
        assert!(body.is_empty());
    }
    still_serving(&mut peer);
}
