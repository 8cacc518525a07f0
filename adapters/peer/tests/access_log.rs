//! Issue 13 (5): the access log says what happened to each request: the client's address,
//! the bytes the client actually took, the real duration, whether it completed; combined
//! (NCSA) or JSON on standard output, no terminal colour codes in a file or a pipe.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIZE: usize = 12 << 20;

fn big(_: &str) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: {SIZE}\r\n\r\n")
            .into_bytes();
    r.resize(r.len() + SIZE, b'x');
    r
}

struct Logged {
    child: std::process::Child,
    port: u16,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(format: &str) -> Logged {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            format,
        ])
        .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
        .env("LARDER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = stdout.clone();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(l);
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let errs = stderr.clone();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            errs.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "larder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Logged {
        child,
        port,
        stdout,
        stderr,
    }
}

/// Waits for the `n`th access line.
fn line(l: &Logged, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = l.stdout.lock().unwrap().get(n) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "no access line {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(port: u16, url: &str, read_at_most: usize, pause: Duration) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {url} HTTP/1.1\r\nHost: x\r\nUser-Agent: probe/1 \"quoted\"\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < read_at_most {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        std::thread::sleep(pause);
    }
    got
}

#[test]
fn lines_say_what_the_client_got() {
    let (origin, _) = common::origin(big);
    let l = start("json");
    let url = format!("http://127.0.0.1:{origin}/big");
    assert!(get(l.port, &url, usize::MAX, Duration::ZERO) > SIZE);
    let miss: serde_json::Value = serde_json::from_str(&line(&l, 0)).unwrap();
    assert_eq!(miss["client"], "127.0.0.1");
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["url"], url.as_str());
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["bytes"], SIZE as u64);
    assert_eq!(miss["complete"], true);
    assert_eq!(miss["user_agent"], "probe/1 \"quoted\"");
    assert!(miss["cache"].as_str().unwrap().contains("fwd=uri-miss"));
    // A hit read slowly, then abandoned at about a third: the line says so, with the time
    // it took, not how fast the cache handed the body over.
    let started = Instant::now();
    get(l.port, &url, 4 << 20, Duration::from_millis(10));
    let hit: serde_json::Value = serde_json::from_str(&line(&l, 1)).unwrap();
    let elapsed = started.elapsed().as_millis() as u64;
    assert!(hit["cache"].as_str().unwrap().contains("hit"), "{hit}");
    assert_eq!(hit["complete"], false, "{hit}");
    let bytes = hit["bytes"].as_u64().unwrap();
    // What the client read, plus what the kernel buffered for it: never the whole body.
    assert!(((4 << 20)..(SIZE as u64)).contains(&bytes), "{hit}");
    let ms = hit["ms"].as_u64().unwrap();
    assert!(
        ms >= 300 && ms <= elapsed + 1000,
        "{hit} after {elapsed} ms"
    );
    let errs = String::from_utf8_lossy(&l.stderr.lock().unwrap()).into_owned();
    assert!(
        !errs.contains('\u{1b}'),
        "no colour codes in a pipe: {errs}"
    );
}

#[test]
fn combined_is_one_ncsa_line_per_request() {
    let (origin, _) =
        common::origin(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope".to_vec());
    let l = start("combined");
    let url = format!("http://127.0.0.1:{origin}/missing");
    get(l.port, &url, usize::MAX, Duration::ZERO);
    let text = line(&l, 0);
    assert!(text.starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        text.contains(&format!("] \"GET {url} HTTP/1.1\" 404 4 \"-\" \"probe/1 \\\"quoted\\\"\" cache=\"larder; fwd=uri-miss; fwd-status=404; detail=stale-no-validator\" ms=")),
        "{text}"
    );
    assert!(text.ends_with("complete=true"), "{text}");
    // A refusal is a request too.
    get(l.port, "ftp://127.0.0.1/x", usize::MAX, Duration::ZERO);
    let refused = line(&l, 1);
    assert!(
        refused.contains("\"GET ftp://127.0.0.1/x HTTP/1.1\" 400 "),
        "{refused}"
    );
}
