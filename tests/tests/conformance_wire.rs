//! Issue 11: conformance rules that only show on the wire (the first line of a response,
//! interim responses), checked byte for byte through the real peer.

use larder_tests::{RawOrigin, peer, raw_exchange, raw_response};
use std::time::Duration;

fn request(url: &str) -> Vec<u8> {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// RFC 9112 §4 / RFC 9110 §7.6: the reason phrase reaches the client as the origin wrote it,
/// on the miss and from the cache; a usual code keeps its usual phrase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusual_reason_phrase_is_passed_on_and_kept() {
    let origin = RawOrigin::start(|seen| {
        let status = if seen.target.ends_with("/odd") {
            "299 Quite Unusual"
        } else {
            "404 Not Found"
        };
        raw_response(status, &["cache-control: max-age=60"], "body")
    })
    .await;
    let p = peer(|_| {}).await;
    for (path, line) in [
        ("/odd", "HTTP/1.1 299 Quite Unusual\r\n"),
        ("/usual", "HTTP/1.1 404 Not Found\r\n"),
    ] {
        for round in ["miss", "hit"] {
            let got =
                raw_exchange(p.addr, &request(&origin.url(path)), Duration::from_secs(5)).await;
            assert!(got.starts_with(line), "{path} {round}: {got}");
            let hit = got
                .to_ascii_lowercase()
                .contains("cache-status: larder; hit");
            assert_eq!(hit, round == "hit", "{path} {round}: {got}");
        }
    }
    assert_eq!(origin.seen().len(), 2);
}
