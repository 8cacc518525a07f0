//! The real `larder` binary and a raw loopback origin, for tests of the process itself
//! (its memory, and inputs that once aborted it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A keep-alive origin on loopback: `answer(path)` gives the whole response (head and
/// body) for each request. Returns its port and a count of requests.
pub fn origin(answer: fn(&str) -> Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    origin_seeing(move |path, _| answer(path))
}

/// [`origin`] whose `answer(path, header_lines)` also sees the request's header lines
/// (lower-cased, without the line ends), e.g. to answer a conditional request with 304.
pub fn origin_seeing(
    answer: impl Fn(&str, &[String]) -> Vec<u8> + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let (h, answer) = (h.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                    let mut fields = Vec::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                        fields.push(l.trim_end().to_ascii_lowercase());
                    }
                    h.fetch_add(1, Ordering::Relaxed);
                    if w.write_all(&answer(&path, &fields)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}

/// A port no other test in this process was given: the kernel may hand a just-released
/// port out again, and two peers racing for one would make a test talk to another's peer.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running `larder` process, killed when dropped. `LARDER_BIN` runs another build of it
/// (e.g. an older one, to see a test fail before its fix).
pub struct Peer {
    pub child: Child,
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Still running (not aborted).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Starts `larder` on a free loopback port with `args`; loopback origins are allowed.
/// Starts `larder` on a free loopback port with `args`; loopback origins are allowed. A
/// peer that could not listen (another process took the port) is started again elsewhere.
pub fn start(args: &[&str]) -> Peer {
    let bin = std::env::var("LARDER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_larder").into());
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
            .env("LARDER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder binary");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            && child.try_wait().unwrap().is_none()
        {
            assert!(Instant::now() < deadline, "larder did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            return Peer { child, port };
        }
    }
    panic!("larder could not listen on any of 5 ports");
}

/// `n` `larder` processes that know each other (`--self`, `--peers`) on free loopback
/// ports, each also given `args`.
pub fn start_cluster(n: usize, args: &[&str]) -> Vec<Peer> {
    let bin = std::env::var("LARDER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_larder").into());
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let peers = urls.join(",");
    let mut out: Vec<Peer> = Vec::new();
    for (port, me) in ports.iter().zip(&urls) {
        let child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--self", me, "--peers", &peers])
            .args(args)
            .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
            .env("LARDER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder binary");
        out.push(Peer { child, port: *port });
    }
    for p in &mut out {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", p.port)).is_err() {
            assert!(p.alive(), "larder on {} exited", p.port);
            assert!(Instant::now() < deadline, "larder did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// One value of a peer's `/metrics` (the first line whose name and labels match).
pub fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = exchange(port, "/metrics", &[], Duration::from_secs(5)).expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// One request on its own connection (`Connection: close`): the response head (text) and
/// body, or an error if the connection broke or nothing came within `within`.
pub fn exchange(
    port: u16,
    target: &str,
    fields: &[(&str, &str)],
    within: Duration,
) -> Result<(String, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(within)).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for (k, v) in fields {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).map_err(|e| e.to_string())?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {} bytes", all.len()))?;
    let head = String::from_utf8_lossy(&all[..at]).to_ascii_lowercase();
    Ok((head, all[at + 4..].to_vec()))
}
