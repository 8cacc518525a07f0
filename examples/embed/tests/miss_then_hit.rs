//! The embedded proxy, on real sockets: a MISS then a HIT, the origin asked once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn get(proxy: std::net::SocketAddr, url: &str) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.write_all(format!("GET {url} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn miss_then_hit() {
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in origin.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nhello",
            );
        }
    });
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    std::thread::spawn(move || larder_embed::serve(proxy, Some(2)));
    let url = format!("http://{origin_addr}/a");
    let miss = get(proxy_addr, &url);
    assert!(miss.starts_with("HTTP/1.1 200"), "{miss}");
    assert!(
        miss.contains("cache-status: larder; fwd=uri-miss") && miss.ends_with("hello"),
        "{miss}"
    );
    let hit = get(proxy_addr, &url);
    assert!(hit.contains("cache-status: larder; hit"), "{hit}");
    assert!(hit.ends_with("hello"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
