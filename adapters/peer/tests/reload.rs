//! Issue 13 (2): SIGHUP reloads the configuration without dropping the cache or the
//! process; an invalid new configuration is refused with a clear message and the old one
//! stays.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn plain(path: &str) -> Vec<u8> {
    // `/r...` carries no freshness at all; the rest is fresh for ten minutes.
    let cc = if path.starts_with("/r") {
        String::new()
    } else {
        "cache-control: max-age=600\r\n".into()
    };
    format!("HTTP/1.1 200 OK\r\n{cc}content-length: 2\r\n\r\nok").into_bytes()
}

fn cache_status(port: u16, url: &str) -> String {
    let (head, _) = common::exchange(port, url, &[], Duration::from_secs(5)).unwrap();
    head.lines()
        .find_map(|l| l.strip_prefix("cache-status: "))
        .unwrap_or("")
        .to_owned()
}

fn hup(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn sighup_applies_a_new_config_and_keeps_the_cache() {
    let (origin, hits) = common::origin(plain);
    let dir = std::env::temp_dir().join(format!("larder-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("larder.toml");
    std::fs::write(&config, "memory = \"64MiB\"\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .env("LARDER_ALLOW_DESTINATION", "127.0.0.0/8")
        .env("LARDER_LOG_FORMAT", "off")
        .env_remove("LARDER_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "larder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = |p: &str| format!("http://127.0.0.1:{origin}{p}");
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.lock().unwrap().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    cache_status(port, &url("/kept"));
    assert!(cache_status(port, &url("/kept")).contains("hit"));
    assert!(
        !cache_status(port, &url("/r1")).contains("stored"),
        "no rule yet"
    );

    // A rule, a passthrough and a memory change (which needs a restart).
    std::fs::write(
        &config,
        "memory = \"128MiB\"\npassthrough = [\"^/api/\"]\n\n[[rule]]\nmatch = '/r[0-9]$'\ndefault_ttl = \"1h\"\n",
    )
    .unwrap();
    hup(child.id());
    wait_for("reloaded");
    assert!(
        log.lock()
            .unwrap()
            .contains("memory changed: it takes effect at the next restart")
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop it"
    );
    assert!(
        cache_status(port, &url("/kept")).contains("hit"),
        "the cache stays"
    );
    assert!(
        cache_status(port, &url("/r2")).contains("stored"),
        "the new rule applies"
    );
    assert!(cache_status(port, &url("/r2")).contains("hit"));
    assert!(cache_status(port, &url("/api/x")).contains("detail=passthrough"));
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);

    // An invalid file is refused whole; what runs stays.
    std::fs::write(&config, "[[rule]]\nmatch = '('\n").unwrap();
    hup(child.id());
    wait_for("reload refused");
    assert!(child.try_wait().unwrap().is_none());
    assert!(cache_status(port, &url("/api/y")).contains("detail=passthrough"));
    assert!(cache_status(port, &url("/r2")).contains("hit"));
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) <= before + 1);

    // The same through `POST /-/reload` (for the addresses that may purge).
    std::fs::write(&config, "passthrough = [\"^/b/\"]\n").unwrap();
    let (code, text) = post_reload(port);
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("reloaded"), "{text}");
    assert!(cache_status(port, &url("/b/1")).contains("detail=passthrough"));
    std::fs::write(&config, "memory = \"lots\"\n").unwrap();
    let (code, text) = post_reload(port);
    assert_eq!(code, 422, "{text}");
    assert!(
        text.contains("reload refused") && text.contains("lots"),
        "{text}"
    );
    assert!(cache_status(port, &url("/b/2")).contains("detail=passthrough"));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
}

fn post_reload(port: u16) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned();
    (code, body)
}
