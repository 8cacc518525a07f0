//! Issue 8 (4): `--memory` bounds the process. The real `larder` binary fills its cache with
//! many distinct objects from a loopback origin; its peak RSS (VmHWM) must stay within
//! `--memory` plus a fixed overhead, for small, medium and large objects.

mod common;

use common::{origin, peak_rss, start};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The fixed overhead the README documents: runtime, buffers, allocator slack.
const OVERHEAD: u64 = 64 << 20;

/// `/SIZE/ANYTHING` answers SIZE bytes, cacheable for an hour.
fn sized(path: &str) -> Vec<u8> {
    let size: usize = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\ncache-control: max-age=3600\r\ncontent-type: application/octet-stream\r\netag: \"{}\"\r\n\r\n",
        path.len()
    )
    .into_bytes();
    out.resize(out.len() + size, b'x');
    out
}

/// `n` GETs of distinct URLs through the proxy over `conns` keep-alive connections.
fn fill(proxy: u16, origin: u16, size: usize, n: usize, conns: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let req = format!(
                        "GET http://127.0.0.1:{origin}/{size}/object-{i} HTTP/1.1\r\nhost: 127.0.0.1:{origin}\r\nuser-agent: memory-bound-test\r\n\r\n"
                    );
                    w.write_all(req.as_bytes()).unwrap();
                    let mut status = String::new();
                    r.read_line(&mut status).unwrap();
                    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
                    let mut len = 0usize;
                    loop {
                        let mut l = String::new();
                        r.read_line(&mut l).unwrap();
                        if l == "\r\n" {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    assert_eq!(len, size);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn check(memory_mib: u64, size: usize, n: usize) {
    let (origin, hits) = origin(sized);
    let memory = format!("{memory_mib}MiB");
    let peer = start(&["--memory", &memory]);
    fill(peer.port, origin, size, n, 8);
    assert_eq!(hits.load(Ordering::Relaxed), n, "every URL was a miss");
    let peak = peak_rss(peer.child.id());
    let limit = (memory_mib << 20) + OVERHEAD;
    println!(
        "--memory {memory_mib}MiB, {n} objects of {size} B: peak RSS {:.1} MiB (limit {:.0} MiB)",
        peak as f64 / (1 << 20) as f64,
        limit as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= limit,
        "peak RSS {} MiB over --memory {memory_mib} MiB + 64 MiB",
        peak >> 20
    );
}

#[test]
fn small_objects_stay_within_memory_plus_overhead() {
    // 1 KiB objects: about 6 KB each on the heap, so 48 MiB holds ~8k; 24k churn through.
    check(48, 1024, 24_000);
}

#[test]
fn medium_objects_stay_within_memory_plus_overhead() {
    check(48, 16 * 1024, 8_000);
}

#[test]
fn large_objects_stay_within_memory_plus_overhead() {
    check(64, 1 << 20, 192);
}
