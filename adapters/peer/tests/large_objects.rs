//! Issue 10 on real `larder` processes: large objects stored as segments spread over three
//! peers, fetched once per segment, assembled in order for any GET or range, never spliced
//! across a change at the origin, and completed when a peer dies mid-object.

mod common;

use common::{Peer, exchange, metric, start_cluster};
use larder_core::CacheKey;
use larder_core::ring::{PeerSelection, RingKind};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// What a [`RangeOrigin`] serves for one request: the body and its ETag.
type Answer = dyn Fn(usize) -> (Arc<Vec<u8>>, String) + Send + Sync;

/// A keep-alive origin on loopback that honours `Range` (206 with `Content-Range`), sends
/// at most `rate` bytes a second per request, and records each request's `Range`.
struct RangeOrigin {
    port: u16,
    log: Arc<Mutex<Vec<Option<String>>>>,
}

impl RangeOrigin {
    fn start(
        rate: Option<usize>,
        answer: impl Fn(usize) -> (Arc<Vec<u8>>, String) + Send + Sync + 'static,
    ) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let lg = log.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let (log, answer) = (lg.clone(), answer.clone());
                std::thread::spawn(move || serve(conn, rate, &log, &*answer));
            }
        });
        RangeOrigin { port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(
    conn: std::net::TcpStream,
    rate: Option<usize>,
    log: &Mutex<Vec<Option<String>>>,
    answer: &Answer,
) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                break;
            }
            let l = l.trim_end().to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("range: ") {
                range = Some(v.to_owned());
            }
        }
        let n = {
            let mut g = log.lock().unwrap();
            g.push(range.clone());
            g.len() - 1
        };
        let (body, etag) = answer(n);
        let total = body.len();
        let (status, from, to) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(spec) => {
                let (a, b) = spec.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = b.parse().map_or(total - 1, |b: usize| b.min(total - 1));
                ("206 Partial Content", a, b)
            }
            None => ("200 OK", 0, total - 1),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncache-control: max-age=600\r\n\
             etag: {etag}\r\ncontent-type: application/octet-stream\r\n",
            to + 1 - from
        );
        if status.starts_with("206") {
            head.push_str(&format!("content-range: bytes {from}-{to}/{total}\r\n"));
        }
        head.push_str("\r\n");
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        let slice = &body[from..=to];
        let piece = 64 * KIB;
        let started = Instant::now();
        for (i, chunk) in slice.chunks(piece).enumerate() {
            if let Some(rate) = rate {
                let due = Duration::from_secs_f64((i * piece) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if w.write_all(chunk).is_err() {
                return;
            }
        }
    }
}

/// Bytes that differ at every offset (a splice or a shift shows).
fn content(len: usize, salt: u8) -> Arc<Vec<u8>> {
    Arc::new(
        (0..len)
            .map(|i| ((i / 7) as u8).wrapping_mul(31) ^ (i as u8) ^ salt)
            .collect(),
    )
}

fn owner_of(peers: &[Peer], url: &str) -> usize {
    let urls: Vec<String> = peers
        .iter()
        .map(|p| format!("http://127.0.0.1:{}", p.port))
        .collect();
    let key = CacheKey::from_uri(&url.parse().unwrap()).unwrap();
    let owner = PeerSelection::new(RingKind::Rendezvous, &urls)
        .owner(key.as_bytes())
        .unwrap()
        .to_owned();
    urls.iter().position(|u| *u == owner).unwrap()
}

fn get(port: u16, url: &str, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    exchange(port, url, fields, Duration::from_secs(60)).expect("a response")
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map(str::trim)
}

fn memory_bytes(p: &Peer) -> f64 {
    metric(p.port, "larder_cache_bytes{tier=\"memory\"}")
}

#[test]
fn a_large_object_spreads_over_three_peers_and_is_fetched_once() {
    let body = content(8 * MIB, 1);
    let b = body.clone();
    let origin = RangeOrigin::start(None, move |_| (b.clone(), "\"v1\"".into()));
    let peers = start_cluster(3, &["--segment-size", "256KiB", "--hot-memory", "0"]);
    let url = origin.url("/big.iso");
    let (head, got) = get(peers[0].port, &url, &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(field(&head, "content-length"), Some("8388608"));
    assert!(got == *body, "the body arrives whole and in order");
    // One range request per segment, each for its own bytes.
    let mut asked: Vec<String> = origin.ranges().into_iter().map(Option::unwrap).collect();
    assert_eq!(asked.len(), 32, "{asked:?}");
    asked.sort();
    asked.dedup();
    assert_eq!(asked.len(), 32);
    // The bytes spread: every peer holds a share of them in memory.
    let held: Vec<f64> = peers.iter().map(memory_bytes).collect();
    let total: f64 = held.iter().sum();
    assert!(total >= (8 * MIB) as f64, "{held:?}");
    for h in &held {
        let share = h / total;
        assert!((0.15..0.55).contains(&share), "uneven spread: {held:?}");
    }
    // Through any peer again: no origin request.
    for p in &peers {
        let (_, again) = get(p.port, &url, &[]);
        assert!(again == *body);
    }
    assert_eq!(origin.ranges().len(), 32);
}

#[test]
fn twenty_concurrent_cold_gets_through_three_peers_make_five_origin_requests() {
    let body = content(10 * MIB, 2);
    let b = body.clone();
    // 8 MiB/s per request: the GETs overlap the fetches.
    let origin = RangeOrigin::start(Some(8 * MIB), move |_| (b.clone(), "\"v1\"".into()));
    let peers = start_cluster(3, &[]);
    let url = origin.url("/ten.bin");
    let ports: Vec<u16> = peers.iter().map(|p| p.port).collect();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (port, url) = (ports[i % 3], url.clone());
            std::thread::spawn(move || get(port, &url, &[]))
        })
        .collect();
    for t in threads {
        let (head, got) = t.join().unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(got == *body, "every client gets the object whole");
    }
    let mut asked: Vec<String> = origin.ranges().into_iter().map(Option::unwrap).collect();
    asked.sort();
    let want: Vec<String> = (0..5u64)
        .map(|i| format!("bytes={}-{}", i << 21, ((i + 1) << 21) - 1))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(asked, want);
}

#[test]
fn ranges_across_segment_boundaries_are_served_from_segments() {
    let body = content(MIB, 3);
    let b = body.clone();
    let origin = RangeOrigin::start(None, move |_| (b.clone(), "\"v1\"".into()));
    let peers = start_cluster(3, &["--segment-size", "64KiB"]);
    let url = origin.url("/r.bin");
    for round in 0..2 {
        for (at, (range, from, to)) in [
            ("bytes=60000-200000", 60000, 200000),
            ("bytes=-100000", MIB - 100000, MIB - 1),
            ("bytes=1000000-", 1000000, MIB - 1),
            ("bytes=65535-65536", 65535, 65536),
        ]
        .into_iter()
        .enumerate()
        {
            let (head, got) = get(peers[at % 3].port, &url, &[("range", range)]);
            assert!(head.starts_with("http/1.1 206"), "{range}: {head}");
            let cr = format!("bytes {from}-{to}/{MIB}");
            assert_eq!(field(&head, "content-range"), Some(cr.as_str()), "{range}");
            assert!(got == body[from..=to], "{range} (round {round})");
        }
        let (head, got) = get(peers[1].port, &url, &[("range", "bytes=0-9,131070-131073")]);
        assert!(head.starts_with("http/1.1 206"), "{head}");
        assert!(
            field(&head, "content-type")
                .unwrap()
                .starts_with("multipart/byteranges")
        );
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.contains(&format!("bytes 131070-131073/{MIB}")),
            "{text}"
        );
        assert!(got.windows(4).any(|w| w == &body[131070..131074]));
        let (head, _) = get(peers[2].port, &url, &[("range", "bytes=2000000-")]);
        assert!(head.starts_with("http/1.1 416"), "{head}");
    }
    // Everything was planned from segments: no request for the whole object, none twice.
    let asked: Vec<String> = origin.ranges().into_iter().map(Option::unwrap).collect();
    let mut unique = asked.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(asked.len(), unique.len(), "{asked:?}");
}

#[test]
fn an_object_changing_at_the_origin_mid_way_is_never_spliced() {
    let (v1, v2) = (content(MIB, 4), content(MIB, 5));
    let (a, b) = (v1.clone(), v2.clone());
    let origin = RangeOrigin::start(None, move |n| {
        if n < 4 {
            (a.clone(), "\"v1\"".into())
        } else {
            (b.clone(), "\"v2\"".into())
        }
    });
    let peers = start_cluster(3, &["--segment-size", "64KiB"]);
    let url = origin.url("/changing.bin");
    let (head, got) = get(peers[0].port, &url, &[]);
    let whole = got.len() == MIB;
    assert!(
        got[..] == v1[..got.len()] || got[..] == v2[..got.len()],
        "one version's bytes only (got {} bytes)",
        got.len()
    );
    if !whole {
        // Cut short: the client sees a broken response, never a whole-looking one.
        assert_eq!(field(&head, "content-length"), Some("1048576"), "{head}");
    }
    let (head, got) = get(peers[1].port, &url, &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(field(&head, "etag"), Some("\"v2\""));
    assert!(got == *v2, "the next response is whole, of the new version");
}

#[test]
fn a_peer_killed_mid_object_does_not_break_the_response() {
    let body = content(8 * MIB, 6);
    let b = body.clone();
    // 1 MiB/s per request, four segments at a time: the object takes about two seconds.
    let origin = RangeOrigin::start(Some(MIB), move |_| (b.clone(), "\"v1\"".into()));
    let mut peers = start_cluster(3, &["--segment-size", "512KiB", "--hot-memory", "0"]);
    // An object peer 0 owns (it assembles it), read through peer 0; peer 2 dies.
    let url = (0..1000)
        .map(|i| origin.url(&format!("/kill{i}.bin")))
        .find(|u| owner_of(&peers, u) == 0)
        .unwrap();
    let port = peers[0].port;
    let u = url.clone();
    let client = std::thread::spawn(move || get(port, &u, &[]));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!client.is_finished(), "killed mid-object");
    let victim = &mut peers[2];
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let (head, got) = client.join().unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        got == *body,
        "completed from the origin ({} bytes)",
        got.len()
    );
    // The survivors answer again, with peer 2's segments fetched anew.
    let (_, again) = get(peers[1].port, &url, &[]);
    assert!(again == *body);
}

/// Segments read from disk (a memory tier too small to hold them) come out in order with
/// the rest of the response, and are served again after a restart without the origin.
#[test]
fn segments_on_disk_are_served_in_order_and_after_a_restart() {
    let body = content(4 * MIB, 7);
    let b = body.clone();
    let origin = RangeOrigin::start(None, move |_| (b.clone(), "\"v1\"".into()));
    let dir = std::env::temp_dir().join(format!(
        "larder-segments-disk-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    // 256 KiB segments never fit a 1 MiB memory tier (at most 1/8 of it is promoted).
    let args = [
        "--disk-dir",
        d.as_str(),
        "--memory",
        "1MiB",
        "--segment-size",
        "256KiB",
    ];
    let url = origin.url("/disk.bin");
    {
        let peer = common::start(&args);
        for _ in 0..2 {
            let (head, got) = get(peer.port, &url, &[]);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(got == *body, "in order, from disk the second time");
        }
        let (head, got) = get(peer.port, &url, &[("range", "bytes=300000-1000000")]);
        assert!(head.starts_with("http/1.1 206"), "{head}");
        assert!(got == body[300000..=1000000]);
        assert_eq!(origin.ranges().len(), 16);
    }
    let peer = common::start(&args);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The start-up scan announces what is on disk in the background.
    while metric(peer.port, "larder_cache_entries{tier=\"disk\"}") < 16.0 {
        assert!(Instant::now() < deadline, "the disk scan did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, got) = get(peer.port, &url, &[]);
    assert!(got == *body, "after a restart");
    assert_eq!(origin.ranges().len(), 16, "nothing fetched again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The URL's owner itself dies while another peer relays its response: the entry peer asks
/// the next choice (or itself) for the rest with `Range` + `If-Range`, and the client's
/// response completes with the right bytes.
#[test]
fn the_owner_killed_mid_object_does_not_break_a_forwarded_response() {
    let body = content(8 * MIB, 8);
    let b = body.clone();
    let origin = RangeOrigin::start(Some(MIB), move |_| (b.clone(), "\"v1\"".into()));
    let mut peers = start_cluster(3, &["--segment-size", "512KiB", "--hot-memory", "0"]);
    let url = (0..1000)
        .map(|i| origin.url(&format!("/owner{i}.bin")))
        .find(|u| owner_of(&peers, u) == 1)
        .unwrap();
    let port = peers[0].port;
    let u = url.clone();
    let client = std::thread::spawn(move || get(port, &u, &[]));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!client.is_finished(), "killed mid-object");
    let owner = &mut peers[1];
    owner.child.kill().unwrap();
    owner.child.wait().unwrap();
    let (head, got) = client.join().unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(got.len(), body.len(), "the response completes");
    assert!(got == *body, "with the right bytes");
    assert_eq!(metric(peers[0].port, "larder_resumed_total"), 1.0);
}
