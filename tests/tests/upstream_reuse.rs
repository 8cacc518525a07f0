//! Issue 11 (12): a pooled keep-alive connection the origin closes just as it is reused
//! (it read the request, then closed: its idle timeout raced ours) costs a GET a retry on
//! a new connection, not a 502.

use larder_tests::{get, peer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_by_the_origin_is_retried_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    if served == 1 {
                        // The second request on a connection: closed unanswered.
                        return;
                    }
                    served += 1;
                    let reply =
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncache-control: no-store\r\n\r\nok";
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let p = peer(|_| {}).await;
    for path in ["/a", "/b", "/c"] {
        let r = get(p.addr, &format!("http://{addr}{path}")).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{path}: {}",
            r.cache_status()
        );
    }
    // Each later request found the pooled connection closed and used a new one.
    assert!(connections.load(Ordering::SeqCst) >= 3);
}
