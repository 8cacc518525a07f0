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

const HINTS: &str = "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n";

/// An origin that sends `103 Early Hints` (and a `102`) before every answer.
async fn hinting_origin() -> RawOrigin {
    RawOrigin::start(|seen| {
        let mut out = b"HTTP/1.1 102 Processing\r\n\r\n".to_vec();
        out.extend_from_slice(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        );
        let cc = if seen.method == "POST" {
            "cache-control: no-store"
        } else {
            "cache-control: max-age=60"
        };
        out.extend(raw_response("200 OK", &[cc], "page"));
        out
    })
    .await
}

/// RFC 9110 §15.2: the 1xx an origin sends ahead of its answer reach the client, in order,
/// before the final response (on a miss, through a cluster's owner, and on a pass); they
/// are never stored (a hit has none), and an HTTP/1.0 client gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_relayed_ahead_of_the_answer_and_never_stored() {
    let origin = hinting_origin().await;
    let peers = larder_tests::cluster(2, |_| {}).await;
    let wait = Duration::from_secs(5);
    for i in 0..6 {
        let url = origin.url(&format!("/page{i}"));
        for (n, p) in peers.iter().enumerate() {
            let got = raw_exchange(p.addr, &request(&url), wait).await;
            let lower = got.to_ascii_lowercase();
            let first = n == 0;
            let expect = if first {
                format!("HTTP/1.1 102 Processing\r\n\r\n{HINTS}HTTP/1.1 200 OK\r\n")
            } else {
                "HTTP/1.1 200 OK\r\n".to_owned()
            };
            assert!(
                lower.starts_with(&expect.to_ascii_lowercase()),
                "{url} via peer {n}: {got}"
            );
            assert!(lower.ends_with("\r\n\r\npage"), "{url} via peer {n}: {got}");
            assert_eq!(lower.contains("cache-status: larder; hit"), !first, "{got}");
        }
    }
    // A pass (POST) relays them too.
    let p = &peers[0];
    let host = origin.addr.to_string();
    let post = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        origin.url("/form")
    );
    let got = raw_exchange(p.addr, post.as_bytes(), wait).await;
    assert!(
        got.starts_with(&format!(
            "HTTP/1.1 102 Processing\r\n\r\n{HINTS}HTTP/1.1 200 OK\r\n"
        )),
        "{got}"
    );
    // HTTP/1.0 clients cannot take a 1xx (RFC 9110 §15.2).
    let old = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n",
        origin.url("/old")
    );
    let got = raw_exchange(p.addr, old.as_bytes(), wait).await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
}

/// RFC 9110 §10.1.1: a client that sends `Expect: 100-continue` gets `100 Continue`
/// (once, from this proxy, which reads the body) and then the origin's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_met_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = RawOrigin::start(|_| {
        let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        out.extend(raw_response("201 Created", &[], "made"));
        out
    })
    .await;
    let p = peer(|_| {}).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        origin.url("/up"),
        origin.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 Continue before the body is sent")
        .unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"data").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 201 Created\r\n"), "{rest}");
    assert!(rest.ends_with("made"), "{rest}");
    assert_eq!(origin.seen().len(), 1);
}
