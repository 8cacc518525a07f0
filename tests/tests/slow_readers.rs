//! Issue 8 (5): one stalled reader must not stall every other client of the same download.
//! A fill is paced by its fastest client; a client behind that takes nothing for the idle
//! timeout is cut off.

use bytes::Bytes;
use larder_tests::{Origin, Reply, peer};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIZE: usize = 24 << 20;

async fn request(proxy: std::net::SocketAddr, url: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

/// Reads until EOF, an error, `limit` bytes, or `within` elapses; returns the bytes read
/// (head included).
async fn read_all(s: &mut TcpStream, limit: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < limit {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_hold_the_other_clients_of_a_download() {
    let body = Bytes::from(vec![b'z'; SIZE]);
    let origin = Origin::start(move |_, _| {
        Reply::ok(body.clone(), &[("cache-control", "max-age=600")])
            .throttle(256 * 1024, Duration::from_millis(5))
    })
    .await;
    let p = peer(|a| a.idle_timeout = Some("3s".into())).await;
    let url = origin.url("/big");
    // The first client reads a little, then stops reading altogether.
    let mut stalled = request(p.addr, &url).await;
    let mut buf = vec![0u8; 64 * 1024];
    let first = stalled.read(&mut buf).await.unwrap();
    assert!(first > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second client of the same URL joins the fill and must get everything, quickly.
    let start = Instant::now();
    let mut fast = request(p.addr, &url).await;
    let got = read_all(&mut fast, usize::MAX, Duration::from_secs(20)).await;
    let took = start.elapsed();
    assert!(
        got >= SIZE,
        "the second client got {got} of {SIZE} bytes in {took:?}: it waited on the stalled one"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The object has no validator, so it is not stored as segments: the request for its
    // first segment is followed by one plain fill, shared by both clients.
    assert_eq!(origin.hits(), 2, "one fill for both clients");
    let seen = origin.seen();
    assert!(seen[0].headers.contains_key("range") && !seen[1].headers.contains_key("range"));
    // The stalled client is cut off after the idle timeout: it never sees a complete body,
    // and its connection ends instead of holding the fill's buffers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rest = read_all(&mut stalled, usize::MAX, Duration::from_secs(10)).await;
    assert!(
        first + rest < SIZE + 1024,
        "a cut-off client got {} bytes",
        first + rest
    );
    // The object was stored all the same: a third client gets a hit.
    let r = larder_tests::get(p.addr, &url).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.body.len(), SIZE);
}

/// The same with a large object stored as segments: the stalled reader's segments are the
/// fast reader's too (one fetch each, paced by the faster), and it is cut off in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_hold_the_other_clients_of_a_segmented_download() {
    let body = Bytes::from((0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let b = body.clone();
    let origin = Origin::start(move |_, _| {
        Reply::ok(
            b.clone(),
            &[("cache-control", "max-age=600"), ("etag", "\"seg\"")],
        )
        .throttle(256 * 1024, Duration::from_millis(5))
    })
    .await;
    let p = peer(|a| a.idle_timeout = Some("3s".into())).await;
    let url = origin.url("/big");
    let mut stalled = request(p.addr, &url).await;
    let mut buf = vec![0u8; 64 * 1024];
    let first = stalled.read(&mut buf).await.unwrap();
    assert!(first > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut fast = request(p.addr, &url).await;
    let got = read_all(&mut fast, usize::MAX, Duration::from_secs(20)).await;
    let took = start.elapsed();
    assert!(
        got >= SIZE,
        "the second client got {got} of {SIZE} bytes in {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(origin.hits(), SIZE / (2 << 20), "one request per segment");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rest = read_all(&mut stalled, usize::MAX, Duration::from_secs(10)).await;
    assert!(
        first + rest < SIZE + 1024,
        "a cut-off client got {}",
        first + rest
    );
    let r = larder_tests::get(p.addr, &url).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert!(r.body == body);
}
