//! Issue 9, "typed outcome on Respond", against the real `larder` binary: `/metrics` counts
//! requests by the engine's typed outcome. A 502 the proxy makes (origin unreachable) and a
//! 504 for `only-if-cached` count as `error` (they counted as `miss`), a
//! stale-while-revalidate hit as `stale` (it counted as `hit`), and an origin's own 502,
//! relayed as it came, stays a `miss`.

mod common;

use common::{exchange, origin, start};
use std::net::TcpListener;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(10);

fn answer(path: &str) -> Vec<u8> {
    let (status, cc) = match path {
        "/swr" => ("200 OK", "max-age=1, stale-while-revalidate=600"),
        "/bad-gateway" => ("502 Bad Gateway", "no-store"),
        _ => ("200 OK", "max-age=600"),
    };
    format!("HTTP/1.1 {status}\r\ncache-control: {cc}\r\ncontent-length: 2\r\n\r\nok").into_bytes()
}

/// `larder_requests_total{outcome="..."}` (0 when absent).
fn count(peer: &common::Peer, outcome: &str) -> u64 {
    let (_, body) = exchange(peer.port, "/metrics", &[], WITHIN).unwrap();
    let name = format!("larder_requests_total{{outcome=\"{outcome}\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Status line and Cache-Status of a response head (lower-cased by `exchange`).
fn summary(head: &str) -> (u16, String) {
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let cs = head
        .lines()
        .find_map(|l| l.strip_prefix("cache-status:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    (status, cs)
}

#[test]
fn metrics_count_the_typed_outcome() {
    let (port, _) = origin(answer);
    let peer = start(&["--passthrough", "^/pass"]);
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let get = |target: &str, fields: &[(&str, &str)]| {
        summary(&exchange(peer.port, target, fields, WITHIN).unwrap().0)
    };

    // miss, then hit.
    assert_eq!(get(&url("/fresh"), &[]).0, 200);
    let (code, cs) = get(&url("/fresh"), &[]);
    assert!(code == 200 && cs.contains("; hit"), "{code} {cs}");

    // A stale-while-revalidate hit: stale, not hit.
    assert_eq!(get(&url("/swr"), &[]).0, 200);
    std::thread::sleep(Duration::from_millis(2_500));
    let (code, cs) = get(&url("/swr"), &[]);
    assert!(
        code == 200 && cs.contains("; hit") && cs.contains("stale-while-revalidate"),
        "{code} {cs}"
    );

    // The origin's own 502, relayed: a miss.
    let (code, cs) = get(&url("/bad-gateway"), &[]);
    assert!(code == 502 && cs.contains("fwd-status=502"), "{code} {cs}");

    // The proxy's own errors: an origin that refuses connections, only-if-cached.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, cs) = get(&format!("http://127.0.0.1:{dead}/x"), &[]);
    assert!(code == 502 && !cs.contains("fwd-status"), "{code} {cs}");
    let (code, _) = get(&url("/nothing"), &[("cache-control", "only-if-cached")]);
    assert_eq!(code, 504);

    // A pass records what upstream answered.
    let (code, cs) = get(&url("/pass/1"), &[]);
    assert!(
        code == 200 && cs.contains("fwd=bypass") && cs.contains("fwd-status=200"),
        "{code} {cs}"
    );

    for (outcome, n) in [
        ("hit", 1),
        ("stale", 1),
        ("revalidated", 0),
        ("miss", 3),
        ("pass", 1),
        ("error", 2),
        ("forwarded", 0),
    ] {
        assert_eq!(count(&peer, outcome), n, "outcome {outcome}");
    }
}
