//! Issue 13 (1): membership on a real etcd (Debian's etcd-server, installed by the test
//! command): peers join by registering, a peer killed with SIGKILL under load costs no
//! request and leaves when its lease runs out, a peer that stops leaves at once, and an
//! etcd outage keeps the last view serving until etcd is back.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Etcd {
    fn start(dir: PathBuf, port: u16, peer_port: u16) -> Etcd {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (scripts/test.sh installs etcd-server)");
        let e = Etcd {
            child,
            port,
            peer_port,
            dir,
        };
        wait("etcd to answer", || {
            common::exchange(port, "/health", &[], Duration::from_secs(1)).is_ok_and(|(h, b)| {
                h.starts_with("http/1.1 200") && b.starts_with(b"{\"health\":\"true\"")
            })
        });
        e
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn larder(port: u16, etcd: u16) -> common::Peer {
    let child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--self", &format!("http://127.0.0.1:{port}")])
        .args([
            "--etcd",
            &format!("http://127.0.0.1:{etcd}"),
            "--etcd-ttl",
            "2s",
        ])
        .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
        .env("LARDER_LOG", "warn")
        .env("LARDER_LOG_FORMAT", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut p = common::Peer { child, port };
    wait("larder to listen", || {
        assert!(p.alive());
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    p
}

fn members(port: u16) -> f64 {
    common::metric(port, "larder_members")
}

#[test]
fn join_leave_kill_and_outage_on_a_real_etcd() {
    let (origin, _) = common::origin(|_| {
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 2\r\n\r\nok".to_vec()
    });
    let dir = std::env::temp_dir().join(format!("larder-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut etcd = Etcd::start(dir.clone(), common::free_port(), common::free_port());
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let mut peers: Vec<common::Peer> = ports.iter().map(|p| larder(*p, etcd.port)).collect();
    for p in &ports {
        wait("three members", || members(*p) == 3.0);
        assert_eq!(common::metric(*p, "larder_etcd_up"), 1.0);
    }

    // Load through the first two peers while the third is killed with SIGKILL.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = ports[..2]
        .iter()
        .map(|&port| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let url = format!("http://127.0.0.1:{origin}/k{port}-{i}");
                    match common::exchange(port, &url, &[], Duration::from_secs(10)) {
                        Ok((h, b)) if h.starts_with("http/1.1 200") && b == b"ok" => {
                            ok.fetch_add(1, Ordering::SeqCst)
                        }
                        other => {
                            eprintln!("failed through {port}: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let _ = peers[2].child.kill();
    let _ = peers[2].child.wait();
    // The lease (2 s) runs out: the others drop it.
    for p in &ports[..2] {
        wait("the killed peer to leave", || members(*p) == 2.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request lost to the kill"
    );
    assert!(ok.load(Ordering::SeqCst) > 20);

    // etcd goes away: the last view is kept and served from.
    etcd.stop();
    for p in &ports[..2] {
        wait("the session to end", || {
            common::metric(*p, "larder_etcd_up") == 0.0
        });
        assert_eq!(members(*p), 2.0);
        let url = format!("http://127.0.0.1:{origin}/during-outage");
        let (h, _) = common::exchange(*p, &url, &[], Duration::from_secs(10)).unwrap();
        assert!(h.starts_with("http/1.1 200"), "{h}");
    }
    // ... and comes back: the peers register again.
    let (port, peer_port) = (etcd.port, etcd.peer_port);
    std::mem::forget(std::mem::replace(
        &mut etcd,
        Etcd::start(dir.clone(), port, peer_port),
    ));
    for p in &ports[..2] {
        wait("the session again", || {
            common::metric(*p, "larder_etcd_up") == 1.0
        });
        assert_eq!(members(*p), 2.0);
    }

    // A new peer joins; stopped gracefully, it leaves at once (its lease is revoked).
    let late = common::free_port();
    let mut joined = larder(late, etcd.port);
    for p in [ports[0], ports[1], late] {
        wait("the new member", || members(p) == 3.0);
    }
    let left = Instant::now();
    Command::new("kill")
        .args(["-TERM", &joined.child.id().to_string()])
        .status()
        .unwrap();
    let _ = joined.child.wait();
    for p in &ports[..2] {
        wait("the stopped peer to leave", || members(*p) == 2.0);
    }
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "left before its lease ran out"
    );
}
