//! Issue 9: the disk tier of the real `larder` binary — a restart keeps what was complete on
//! disk, `kill -9` during a fill leaves nothing that is served short, a corrupted file is
//! detected and refetched, a full disk is survived, and large entries stream from disk.

mod common;

use common::{exchange, start};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("larder-disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Body of `path` in version `v`: `len` bytes that differ by position and version.
fn body(path: &str, v: usize, len: usize) -> Vec<u8> {
    let seed = path.len() + 31 * v;
    (0..len).map(|i| b'a' + ((i + seed) % 26) as u8).collect()
}

/// A loopback origin: `/big/...` bodies are 3 MiB, others 40 KB; every answer carries its
/// version (the origin's request count) and is fresh for an hour. With `stall`, the first
/// answer sends its head and half the body, then hangs.
fn origin(stall: bool) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
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
                    let v = h.fetch_add(1, Ordering::SeqCst);
                    let len = if path.starts_with("/big") {
                        3 << 20
                    } else {
                        40_000
                    };
                    let b = body(&path, v, len);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncache-control: max-age=3600\r\netag: \"{v}\"\r\n\
                         x-version: {v}\r\ncontent-length: {}\r\n\r\n",
                        b.len()
                    );
                    if w.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if stall && v == 0 {
                        let _ = w.write_all(&b[..b.len() / 2]);
                        std::thread::sleep(Duration::from_secs(3600));
                        return;
                    }
                    if w.write_all(&b).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}

fn get(peer: &common::Peer, url: &str, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    exchange(peer.port, url, fields, WITHIN).unwrap()
}

/// The value of a metric (0 when absent).
fn metric(peer: &common::Peer, name: &str) -> f64 {
    let (_, b) = get(peer, "/metrics", &[]);
    String::from_utf8_lossy(&b)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entry files under the disk directory (temporary files excluded).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir).unwrap().flatten() {
        if fan.file_name() == "tmp" || !fan.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

fn disk_args(dir: &Path) -> Vec<String> {
    vec!["--disk-dir".into(), dir.display().to_string()]
}

fn start_with(args: &[String]) -> common::Peer {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&a)
}

#[test]
fn a_restart_serves_what_was_on_disk() {
    let dir = scratch("restart");
    let (port, hits) = origin(false);
    let url = format!("http://127.0.0.1:{port}/pkg/a.deb");
    let peer = start_with(&disk_args(&dir));
    let (head, b) = get(&peer, &url, &[]);
    assert!(head.contains("fwd=uri-miss"), "{head}");
    assert_eq!(b, body("/pkg/a.deb", 0, 40_000));
    wait_for("the disk write", || {
        metric(&peer, "larder_disk_writes_total") >= 1.0
    });
    drop(peer); // SIGKILL: no shutdown work
    let peer = start_with(&disk_args(&dir));
    wait_for("the start-up scan", || {
        metric(&peer, "larder_disk_bytes") > 0.0
    });
    let (head, b) = get(&peer, &url, &[]);
    assert!(head.contains("larder; hit"), "a hit from disk: {head}");
    assert_eq!(b, body("/pkg/a.deb", 0, 40_000), "the same bytes");
    // Ranges and HEAD are answered from the restored entry too.
    let (head, b) = get(&peer, &url, &[("range", "bytes=100-199")]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(b, body("/pkg/a.deb", 0, 40_000)[100..200].to_vec());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the origin was asked once in all"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_during_a_fill_leaves_nothing_served_short() {
    let dir = scratch("kill9");
    let (port, hits) = origin(true);
    let url = format!("http://127.0.0.1:{port}/big/b.iso");
    let mut peer = start_with(&disk_args(&dir));
    // The first fill stalls half-way; kill -9 the peer while it waits.
    let p = peer.port;
    let u = url.clone();
    let client = std::thread::spawn(move || {
        exchange(p, &u, &[], Duration::from_secs(3)).map(|(h, b)| (h, b.len()))
    });
    wait_for("the fill to start", || hits.load(Ordering::SeqCst) == 1);
    std::thread::sleep(Duration::from_millis(300));
    peer.child.kill().unwrap();
    peer.child.wait().unwrap();
    if let Ok(Ok((head, len))) = client.join() {
        // The client saw a truncated response, never a complete-looking short one.
        assert!(len < 3 << 20, "{head}");
    }
    assert!(entries(&dir).is_empty(), "no entry for an incomplete fill");
    let peer = start_with(&disk_args(&dir));
    let (head, b) = get(&peer, &url, &[]);
    assert!(
        head.contains("fwd=uri-miss"),
        "refetched after the restart: {head}"
    );
    assert_eq!(
        b,
        body("/big/b.iso", 1, 3 << 20),
        "whole, from the second answer"
    );
    let tmp: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        tmp.is_empty(),
        "the crashed run's temporary files are gone: {tmp:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupted_entry_is_detected_and_refetched() {
    let dir = scratch("corrupt");
    let (port, hits) = origin(false);
    let url = format!("http://127.0.0.1:{port}/pkg/c.deb");
    let peer = start_with(&disk_args(&dir));
    get(&peer, &url, &[]);
    wait_for("the disk write", || {
        metric(&peer, "larder_disk_writes_total") >= 1.0
    });
    drop(peer);
    // Flip one byte near the end of the body.
    let files = entries(&dir);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&files[0], &bytes).unwrap();
    let peer = start_with(&disk_args(&dir));
    wait_for("the start-up scan", || {
        metric(&peer, "larder_disk_bytes") > 0.0
    });
    let (head, b) = get(&peer, &url, &[]);
    assert!(
        head.contains("fwd=uri-miss"),
        "a miss, not the corrupt bytes: {head}"
    );
    assert_eq!(b, body("/pkg/c.deb", 1, 40_000), "the refetched version");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(metric(&peer, "larder_disk_corrupt_total") >= 1.0);
    assert!(!files[0].exists(), "the corrupt file was deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn large_entries_stream_from_disk_when_memory_is_small() {
    let dir = scratch("stream");
    let (port, hits) = origin(false);
    let url = format!("http://127.0.0.1:{port}/big/d.iso");
    let mut args = disk_args(&dir);
    args.extend(["--memory".into(), "1MiB".into()]);
    let peer = start_with(&args);
    let (_, b) = get(&peer, &url, &[]);
    assert_eq!(b.len(), 3 << 20);
    wait_for("the disk write", || {
        metric(&peer, "larder_disk_writes_total") >= 1.0
    });
    let expect = body("/big/d.iso", 0, 3 << 20);
    let (head, b) = get(&peer, &url, &[]);
    assert!(head.contains("larder; hit"), "{head}");
    assert!(b == expect, "the whole body, streamed from disk");
    let (head, b) = get(&peer, &url, &[("range", "bytes=1000000-1000099")]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(b, expect[1_000_000..1_000_100].to_vec());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs (we run as root on the CI machine); `None` when mounting is not possible.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_survived() {
    let dir = scratch("enospc");
    let Some(_mount) = Mount::tmpfs(&dir, "300k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let (port, hits) = origin(false);
    let mut args = disk_args(&dir);
    args.extend(["--disk-size".into(), "100MiB".into()]);
    let peer = start_with(&args);
    // 40 KB each: the 300 KiB file system fills after about seven.
    for i in 0..15 {
        let path = format!("/pkg/{i}.deb");
        let (head, b) = get(&peer, &format!("http://127.0.0.1:{port}{path}"), &[]);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(
            b,
            body(&path, i, 40_000),
            "served whole while the disk fills"
        );
    }
    wait_for("a failed write", || {
        metric(&peer, "larder_disk_write_failures_total") >= 1.0
    });
    assert_eq!(metric(&peer, "larder_disk_resting"), 1.0);
    // Everything is still served: from memory, and nothing is fetched twice.
    for i in 0..15 {
        let path = format!("/pkg/{i}.deb");
        let (head, b) = get(&peer, &format!("http://127.0.0.1:{port}{path}"), &[]);
        assert!(head.contains("larder; hit"), "{path}: {head}");
        assert_eq!(b, body(&path, i, 40_000));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 15);
    // What was stored before the disk filled is still there after a restart.
    drop(peer);
    let peer = start_with(&args);
    wait_for("the start-up scan", || {
        metric(&peer, "larder_disk_bytes") > 0.0
    });
    let (head, b) = get(&peer, &format!("http://127.0.0.1:{port}/pkg/0.deb"), &[]);
    assert!(head.contains("larder; hit"), "{head}");
    assert_eq!(b, body("/pkg/0.deb", 0, 40_000));
}

/// An origin whose answer is fresh for 1 s, and which answers a revalidation with a 304
/// that makes it fresh for an hour and adds a field.
fn revalidating_origin() -> (u16, Arc<AtomicUsize>) {
    common::origin_seeing(|_, fields| {
        let answer = if fields.iter().any(|f| f == "if-none-match: \"v\"") {
            "HTTP/1.1 304 Not Modified\r\ncache-control: max-age=3600\r\n\
             etag: \"v\"\r\nx-refreshed: yes\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncache-control: max-age=1\r\netag: \"v\"\r\n\
             content-length: 9\r\n\r\nthe body!"
        };
        answer.as_bytes().to_vec()
    })
}

/// RFC 9111 §4.3.4 across a restart: the 304's refresh is written to the entry's record
/// (metadata replaced, body kept), so the restarted peer serves it fresh, with the 304's
/// fields, without asking the origin again.
#[test]
fn a_304_refresh_survives_a_restart() {
    let dir = scratch("refresh");
    let (port, hits) = revalidating_origin();
    let url = format!("http://127.0.0.1:{port}/r");
    let peer = start_with(&disk_args(&dir));
    let (head, _) = get(&peer, &url, &[]);
    assert!(head.contains("fwd=uri-miss"), "{head}");
    wait_for("the disk write", || {
        metric(&peer, "larder_disk_writes_total") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(2100));
    let (head, b) = get(&peer, &url, &[]);
    assert!(head.contains("fwd-status=304"), "revalidated: {head}");
    assert!(head.contains("x-refreshed: yes"), "{head}");
    assert_eq!(b, b"the body!");
    wait_for("the record's new metadata", || {
        entries(&dir)
            .iter()
            .any(|f| std::fs::read(f).is_ok_and(|b| b.windows(11).any(|w| w == b"x-refreshed")))
    });
    drop(peer);
    let peer = start_with(&disk_args(&dir));
    wait_for("the start-up scan", || {
        metric(&peer, "larder_disk_bytes") > 0.0
    });
    let (head, b) = get(&peer, &url, &[]);
    assert!(
        head.contains("larder; hit"),
        "fresh after the restart: {head}"
    );
    assert!(head.contains("x-refreshed: yes"), "{head}");
    assert_eq!(b, b"the body!");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "fill and revalidation only");
    let _ = std::fs::remove_dir_all(&dir);
}
