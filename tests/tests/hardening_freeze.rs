//! Issue 8 #14: a `larder` process frozen (SIGSTOP) for longer than the header-read timeout
//! answers, once resumed (SIGCONT), the requests its clients sent in full while it was frozen:
//! the timeout counts only time the server had to read them.
//!
//! This runs the real binary (built here with cargo if needed) and freezes it with `kill`.

use larder_tests::{Origin, Reply};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `larder` binary of the profile these tests were built with.
fn larder_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-q", "-p", "larder-peer", "--bin", "larder"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of the larder binary failed");
    profile_dir.join("larder")
}

/// The child process: resumed and killed whatever happens in the test.
struct Larder(Child);

impl Drop for Larder {
    fn drop(&mut self) {
        signal("CONT", self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Reads one response with a Content-Length body; the text of its head and body.
fn read_response(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(text);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {:?}", text)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {text:?}")),
        }
    }
}

#[test]
fn requests_sent_while_frozen_are_answered_after_resume() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start(|_, _| {
        Reply::ok("fresh", &[("cache-control", "max-age=60")])
    }));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(larder_binary())
        .args(["--listen", &addr.to_string()])
        .args(["--allow-destination", "127.0.0.0/8"])
        .env("LARDER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let larder = Larder(child);
    let pid = larder.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "larder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\n\r\n",
        origin.url("/f"),
        origin.addr
    );
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    // Kept-alive connections that have served one request, and accepted ones still idle.
    let mut kept: Vec<TcpStream> = (0..10).map(|_| connect()).collect();
    for s in &mut kept {
        s.write_all(request.as_bytes()).unwrap();
        assert!(read_response(s).unwrap().starts_with("HTTP/1.1 200"));
    }
    let mut idle: Vec<TcpStream> = (0..10).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));

    signal("STOP", pid);
    for s in kept.iter_mut().chain(idle.iter_mut()) {
        s.write_all(request.as_bytes()).unwrap();
    }
    let mut queued = connect();
    queued.write_all(request.as_bytes()).unwrap();
    // Longer than the 10 s header-read timeout.
    std::thread::sleep(Duration::from_secs(11));
    signal("CONT", pid);

    let all = kept
        .iter_mut()
        .map(|s| ("kept-alive", s))
        .chain(idle.iter_mut().map(|s| ("idle", s)))
        .chain([("queued", &mut queued)]);
    let mut failed = Vec::new();
    for (name, s) in all {
        match read_response(s) {
            Ok(got) if got.starts_with("HTTP/1.1 200") && got.ends_with("fresh") => {}
            Ok(got) => failed.push(format!("{name}: {got}")),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 21 failed: {failed:#?}",
        failed.len()
    );
    // The header-read timeout still closes a connection that sends nothing once running.
    let mut silent = connect();
    let start = Instant::now();
    let mut one = [0u8; 1];
    let n = silent.read(&mut one).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        start.elapsed() >= Duration::from_secs(9) && start.elapsed() < Duration::from_secs(14),
        "closed after {:?}",
        start.elapsed()
    );
    drop(larder);
}
