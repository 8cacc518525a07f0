//! Issue 8 (4): `--memory` bounds the process. The real `larder` binary fills its cache with
//! many distinct objects from a loopback origin; its peak RSS (VmHWM) must stay within
//! `--memory` plus a fixed overhead, for small, medium and large objects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The fixed overhead the README documents: runtime, buffers, allocator slack.
const OVERHEAD: u64 = 64 << 20;

/// A minimal keep-alive origin: `/SIZE/ANYTHING` answers SIZE bytes, cacheable for an hour.
fn origin() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let h = h.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let size: usize = path
                        .trim_start_matches('/')
                        .split('/')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1);
                    h.fetch_add(1, Ordering::Relaxed);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\ncache-control: max-age=3600\r\ncontent-type: application/octet-stream\r\netag: \"{}\"\r\n\r\n",
                        path.len()
                    );
                    let mut out = head.into_bytes();
                    out.resize(out.len() + size, b'x');
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Peer(Child, u16);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(memory: &str) -> Peer {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--memory", memory])
        .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
        .env("LARDER_LOG", "warn")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("larder binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "larder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Peer(child, port)
}

fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
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
    let (origin, hits) = origin();
    let peer = start(&format!("{memory_mib}MiB"));
    fill(peer.1, origin, size, n, 8);
    assert_eq!(hits.load(Ordering::Relaxed), n, "every URL was a miss");
    let peak = peak_rss(peer.0.id());
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
