//! One real peer on loopback in front of a real origin (RFC 9111 behaviour end to end).

use bytes::Bytes;
use larder_tests::{Origin, Reply, get, peer, send, send_body};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fresh(body: &'static str) -> Reply {
    Reply::ok(body, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_through_the_forward_door() {
    let origin = Origin::start(|_, _| fresh("hello")).await;
    let p = peer(|_| {}).await;
    let a = get(p.addr, &origin.url("/a")).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"));
    assert!(
        a.cache_status().contains("fwd=uri-miss") && a.cache_status().contains("stored"),
        "{}",
        a.cache_status()
    );
    let b = get(p.addr, &origin.url("/a")).await;
    assert!(b.is_hit(), "{}", b.cache_status());
    assert_eq!(b.text(), "hello");
    assert!(b.header("age").is_some());
    // RFC 9110 §7.6.3: received-by is host:port (a pseudonym or URL would not be).
    assert_eq!(b.header("via"), Some(format!("1.1 {}", p.addr).as_str()));
    let seen = &origin.seen()[0];
    assert_eq!(
        seen.headers.get("via").unwrap(),
        format!("1.1 {}", p.addr).as_str(),
        "the origin sees the same hop"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_door_keeps_query_and_status() {
    let origin = Origin::start(|seen, _| {
        if seen.uri.starts_with("/pkg/missing") {
            Reply::ok("nope", &[("cache-control", "max-age=60")]).status(404)
        } else {
            Reply::ok(seen.uri.clone(), &[("cache-control", "max-age=60")])
        }
    })
    .await;
    let base = origin.url("/pkg");
    let p = peer(|a| a.mirror = vec![base.clone()]).await;
    let r = send(p.addr, "GET", "/file.deb?arch=amd64", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "/pkg/file.deb?arch=amd64")
    );
    let r = send(p.addr, "GET", "/missing", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    let r = send(p.addr, "GET", "/missing", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.is_hit(),
        "404s are cacheable by default: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits(), 2);
}

/// Issue 12 (5): one Larder serves several mirrors by path prefix (the longest wins), and
/// a path no mirror serves is a 404 that names the mirrored prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mirrors_by_prefix() {
    let deb = Origin::start(|seen, _| {
        Reply::ok(
            format!("deb {}", seen.uri),
            &[("cache-control", "max-age=60")],
        )
    })
    .await;
    let pypi = Origin::start(|seen, _| {
        Reply::ok(
            format!("pypi {}", seen.uri),
            &[("cache-control", "max-age=60")],
        )
    })
    .await;
    let p = peer(|a| {
        a.mirror = vec![
            format!("/debian={}", deb.url("/debian")),
            format!("/pypi={}", pypi.url("")),
        ]
    })
    .await;
    for _ in 0..2 {
        let r = send(p.addr, "GET", "/debian/pool/a.deb", &[])
            .await
            .unwrap();
        assert_eq!(r.text(), "deb /debian/pool/a.deb");
        let r = send(p.addr, "GET", "/pypi/simple/pkg/", &[]).await.unwrap();
        assert_eq!(r.text(), "pypi /simple/pkg/");
    }
    assert_eq!((deb.hits(), pypi.hits()), (1, 1), "second round from cache");
    let r = send(p.addr, "GET", "/npm/x", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/debian, /pypi"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwardcache_proxy_door() {
    let origin = Origin::start(|_, _| fresh("via q")).await;
    let p = peer(|_| {}).await;
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", &origin.url("/x?y=1"))
        .finish();
    let r = send(p.addr, "GET", &format!("/proxy?{q}"), &[])
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "via q"));
    assert_eq!(origin.seen()[0].uri, "/x?y=1");
    let r = send(p.addr, "GET", "/proxy", &[]).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("missing q"));
    let r = send(p.addr, "GET", "/proxy?q=not-a-url", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_requests_make_one_origin_request() {
    let body: &'static str = Box::leak("z".repeat(100_000).into_boxed_str());
    let origin = Arc::new(
        Origin::start(move |_, _| {
            fresh(body)
                .delay(Duration::from_millis(300))
                .throttle(8192, Duration::from_millis(5))
        })
        .await,
    );
    let p = peer(|_| {}).await;
    let url = origin.url("/cold");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        let addr = p.addr;
        tasks.push(tokio::spawn(async move { get(addr, &url).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 100_000);
        assert_eq!(r.body, Bytes::from_static(body.as_bytes()));
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_from_get_and_post_invalidates() {
    let origin = Origin::start(|seen, n| {
        if seen.method == "POST" {
            Reply::ok("posted", &[])
        } else {
            Reply::ok(format!("gen{n}"), &[("cache-control", "max-age=60")])
        }
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/r");
    assert_eq!(get(p.addr, &url).await.text(), "gen0");
    let h = send(p.addr, "HEAD", &url, &[]).await.unwrap();
    assert!(h.is_hit() && h.body.is_empty());
    assert_eq!(h.header("content-length"), Some("4"));
    let post = send_body(
        p.addr,
        "POST",
        &url,
        &[("content-type", "text/plain")],
        Bytes::from_static(b"data"),
    )
    .await
    .unwrap();
    assert_eq!(post.text(), "posted");
    assert!(
        post.cache_status().contains("fwd=method"),
        "{}",
        post.cache_status()
    );
    let after = get(p.addr, &url).await;
    assert!(
        after.cache_status().contains("uri-miss"),
        "{}",
        after.cache_status()
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_variants_and_304_revalidation() {
    let origin = Origin::start(|seen, _| {
        if seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return Reply::ok("", &[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
                .status(304);
        }
        let lang = seen
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            format!("in {lang}"),
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("vary", "accept-language"),
            ],
        )
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/v");
    let en = send(p.addr, "GET", &url, &[("accept-language", "en")])
        .await
        .unwrap();
    let de = send(p.addr, "GET", &url, &[("accept-language", "de")])
        .await
        .unwrap();
    assert_eq!((en.text().as_str(), de.text().as_str()), ("in en", "in de"));
    assert!(
        send(p.addr, "GET", &url, &[("accept-language", "en")])
            .await
            .unwrap()
            .is_hit()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let re = send(p.addr, "GET", &url, &[("accept-language", "de")])
        .await
        .unwrap();
    assert_eq!(re.text(), "in de");
    assert!(
        re.cache_status().contains("fwd-status=304"),
        "{}",
        re.cache_status()
    );
    assert!(
        send(p.addr, "GET", &url, &[("accept-language", "de")])
            .await
            .unwrap()
            .is_hit()
    );
    // Client conditional answered by the cache.
    let nm = send(
        p.addr,
        "GET",
        &url,
        &[("accept-language", "de"), ("if-none-match", "\"v1\"")],
    )
    .await
    .unwrap();
    assert_eq!(nm.status, 304);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_when_the_origin_is_gone() {
    let origin = Origin::start(|_, _| {
        Reply::ok(
            "old but gold",
            &[
                ("cache-control", "max-age=1, stale-if-error=600"),
                ("etag", "\"s\""),
            ],
        )
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/s");
    get(p.addr, &url).await;
    origin.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(p.addr, &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "old but gold"));
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_without_stale_gives_502_with_reason() {
    let origin = Origin::start(|_, _| fresh("x")).await;
    let url = origin.url("/gone");
    origin.stop();
    drop(origin);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = peer(|_| {}).await;
    let r = get(p.addr, &url).await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=connection-refused"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_are_not_stored() {
    let origin = Origin::start(|seen, n| {
        let cc = if seen.uri.contains("private") {
            "private, max-age=60"
        } else {
            "no-store"
        };
        Reply::ok(format!("{n}"), &[("cache-control", cc)])
    })
    .await;
    let p = peer(|_| {}).await;
    for path in ["/private", "/nostore"] {
        let url = origin.url(path);
        let a = get(p.addr, &url).await;
        let b = get(p.addr, &url).await;
        assert_ne!(a.text(), b.text(), "{path} served from cache");
        assert!(!b.is_hit());
    }
    assert_eq!(origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_body_is_an_error_and_never_stored() {
    let origin = Origin::start(|_, n| {
        let r = Reply::ok("x".repeat(50_000), &[("cache-control", "max-age=60")]);
        if n == 0 { r.cut_after(20_000) } else { r }
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/cut");
    let first = send(p.addr, "GET", &url, &[]).await;
    assert!(first.is_err(), "client must see the truncation: {first:?}");
    let second = get(p.addr, &url).await;
    assert_eq!(second.body.len(), 50_000);
    assert!(
        second.cache_status().contains("uri-miss"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_stream_before_the_origin_finishes() {
    let origin = Origin::start(|_, _| {
        Reply::ok("y".repeat(64 * 1024), &[("cache-control", "max-age=60")])
            .throttle(4096, Duration::from_millis(50))
    })
    .await;
    let p = peer(|_| {}).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/slow")).as_bytes())
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    // The whole body takes ~800 ms at the origin; the first bytes arrive long before.
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "first bytes after {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_does_not_block_others() {
    let origin = Origin::start(|_, _| fresh("fine")).await;
    let p = peer(|_| {}).await;
    let mut lorises = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET http://example.test/ HTTP/1.1\r\nHost: exa")
            .await
            .unwrap();
        lorises.push(s);
    }
    let start = Instant::now();
    let r = get(p.addr, &origin.url("/ok")).await;
    assert_eq!(r.text(), "fine");
    assert!(start.elapsed() < Duration::from_secs(2));
}

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_not_a_crash() {
    let p = peer(|_| {}).await;
    assert!(
        raw(p.addr, b"THIS IS NOT HTTP\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let huge = format!(
        "GET http://e.test/ HTTP/1.1\r\nHost: e\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let r = raw(p.addr, huge.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{}",
        &r[..r.len().min(40)]
    );
    let long = format!(
        "GET http://e.test/{} HTTP/1.1\r\nHost: e\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(
        raw(p.addr, long.as_bytes())
            .await
            .starts_with("HTTP/1.1 414")
    );
    let r = send(p.addr, "GET", "ftp://e.test/x", &[]).await.unwrap();
    assert_eq!(r.status, 400);
    let r = send(p.addr, "CONNECT", "e.test:25", &[]).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().contains("port 25 is not allowed"), "{}", r.text());
    let r = send(p.addr, "CONNECT", "e.test:443", &[]).await.unwrap();
    assert_eq!(r.status, 502);
    assert!(r.text().contains("does not resolve"), "{}", r.text());
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        p.addr,
        format!("GET http://e.test/ HTTP/1.1\r\nHost: e\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{}",
        &r[..r.len().min(40)]
    );
    // Still serving.
    assert_eq!(
        send(p.addr, "GET", "/healthz", &[]).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_open_proxy() {
    let origin = Origin::start(|_, _| fresh("secret intranet")).await;
    let p = peer(|a| a.allow = vec!["10.0.0.0/8".into()]).await;
    let r = get(p.addr, &origin.url("/")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("not an open proxy"));
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_through_the_proxy() {
    let big: Bytes = (0..5_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let b2 = big.clone();
    let origin = Origin::start(move |_, _| {
        Reply::ok(
            b2.clone(),
            &[("cache-control", "max-age=60"), ("etag", "\"big\"")],
        )
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/big.bin");
    let r = send(p.addr, "GET", &url, &[("range", "bytes=4500000-4500099")])
        .await
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, big.slice(4_500_000..4_500_100));
    assert_eq!(
        origin.seen()[0].headers.get("range").unwrap(),
        "bytes=4194304-6291455",
        "only the covering segment"
    );
    let r = send(p.addr, "GET", &url, &[("range", "bytes=4200000-4200009")])
        .await
        .unwrap();
    // Served from the stored segment, or from its fill if that is still streaming.
    assert!(
        r.is_hit() || r.cache_status().contains("collapsed"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.body, big.slice(4_200_000..4_200_010));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_responses() {
    let origin = Origin::start(|_, _| {
        Reply::ok("z".repeat(30_000), &[]).throttle(3000, Duration::from_millis(30))
    })
    .await;
    let p = peer(|_| {}).await;
    let addr = p.addr;
    let url = origin.url("/long");
    let inflight = tokio::spawn(async move { send(addr, "GET", &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.shutdown(Duration::from_secs(5)).await;
    let r = inflight.await.unwrap().expect("completed, not cut");
    assert_eq!(r.body.len(), 30_000);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes() {
    let origin = Origin::start(|_, _| fresh("m")).await;
    let p = peer(|_| {}).await;
    get(p.addr, &origin.url("/m")).await;
    get(p.addr, &origin.url("/m")).await;
    let m = send(p.addr, "GET", "/metrics", &[]).await.unwrap().text();
    assert!(
        m.contains("larder_requests_total{outcome=\"hit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("larder_requests_total{outcome=\"miss\"} 1"),
        "{m}"
    );
    assert!(m.contains("larder_origin_fetches_total 1"), "{m}");
    assert!(m.contains("larder_cache_entries{tier=\"memory\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_follows_the_unsafe_response() {
    let origin = Origin::start(|seen, n| match (seen.method.as_str(), seen.uri.as_str()) {
        ("POST", "/fail") => Reply::ok("no", &[]).status(500),
        ("POST", _) => Reply::ok(
            "made",
            &[("location", "/made"), ("content-location", "/cl")],
        )
        .status(201),
        _ => Reply::ok(format!("gen{n}"), &[("cache-control", "max-age=60")]),
    })
    .await;
    let p = peer(|_| {}).await;
    for path in ["/fail", "/post", "/made", "/cl"] {
        get(p.addr, &origin.url(path)).await;
    }
    send_body(
        p.addr,
        "POST",
        &origin.url("/fail"),
        &[],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert!(
        get(p.addr, &origin.url("/fail")).await.is_hit(),
        "a failed POST invalidates nothing"
    );
    send_body(
        p.addr,
        "POST",
        &origin.url("/post"),
        &[],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    for path in ["/post", "/made", "/cl"] {
        let r = get(p.addr, &origin.url(path)).await;
        assert!(
            r.cache_status().contains("uri-miss"),
            "{path}: {}",
            r.cache_status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_pauses_the_fetch_instead_of_buffering_the_object() {
    const SIZE: usize = 64 << 20;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = sent.clone();
    let body = Bytes::from(vec![b'b'; SIZE]);
    let origin = Origin::start(move |_, _| {
        Reply::ok(body.clone(), &[("cache-control", "max-age=60")])
            .throttle(64 * 1024, Duration::ZERO)
            .count_sent(s2.clone())
    })
    .await;
    // Too large to store: nothing but backpressure can bound the memory.
    let p = peer(|a| a.max_object_size = Some("1MiB".into())).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/huge")).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = s.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during_stall = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        during_stall < SIZE / 2,
        "origin pushed {during_stall} bytes to a client that stopped reading"
    );
    // Reading again resumes the transfer to the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got += n;
        if n == 0 || got >= SIZE || Instant::now() > deadline {
            break;
        }
    }
    assert!(got >= SIZE, "received {got}");
}

/// RFC 9111 §5.2.2.4 through the real binary: `no-cache="Set-Cookie"` lets the response
/// be shared without its cookie, and the client whose request fetched it still gets it (it
/// was stripped from that client too, which breaks logins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qualified_no_cache_keeps_the_cookie_for_the_client_that_asked() {
    let origin = Origin::start(|_, _| {
        Reply::ok(
            "welcome",
            &[
                ("cache-control", "no-cache=\"Set-Cookie\", max-age=60"),
                ("set-cookie", "sid=secret"),
            ],
        )
    })
    .await;
    let p = peer(|_| {}).await;
    let first = get(p.addr, &origin.url("/login")).await;
    assert_eq!(first.header("set-cookie"), Some("sid=secret"));
    let second = get(p.addr, &origin.url("/login")).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.header("set-cookie"), None, "never shared");
    assert_eq!(second.text(), "welcome");
    assert_eq!(origin.hits(), 1);
}

/// Cache-Control directive names are case-insensitive, and an unterminated quoted string
/// does not hide a later `no-store` (the library under the policy read both wrongly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_is_read_as_rfc_9111_says() {
    let origin = Origin::start(|seen, _| {
        let cc = if seen.uri.starts_with("/upper") {
            "MAX-AGE=60"
        } else {
            "x=\"a, no-store, max-age=60"
        };
        Reply::ok("body", &[("cache-control", cc)])
    })
    .await;
    let p = peer(|_| {}).await;
    get(p.addr, &origin.url("/upper")).await;
    let r = get(p.addr, &origin.url("/upper")).await;
    assert!(r.is_hit(), "MAX-AGE=60 is max-age=60: {}", r.cache_status());
    get(p.addr, &origin.url("/quote")).await;
    let r = get(p.addr, &origin.url("/quote")).await;
    assert!(
        !r.is_hit(),
        "no-store after an open quote: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits(), 3);
}

/// A request that arrives while a Vary'd fill streams, asking for another variant, gets
/// its own variant, never the one being streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_with_another_variant_gets_its_own() {
    let origin = Origin::start(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Reply::ok(
            lang.repeat(20_000),
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        )
        .throttle(4096, Duration::from_millis(10))
    })
    .await;
    let p = peer(|_| {}).await;
    let url = origin.url("/v");
    let (addr, u) = (p.addr, url.clone());
    let en = tokio::spawn(async move {
        send(addr, "GET", &u, &[("accept-language", "en")])
            .await
            .unwrap()
    });
    // The en fill's head is out and its body streaming when de arrives.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let de = send(p.addr, "GET", &url, &[("accept-language", "de")])
        .await
        .unwrap();
    let en = en.await.unwrap();
    assert_eq!(en.body.as_ref(), "en".repeat(20_000).as_bytes());
    assert_eq!(de.body.as_ref(), "de".repeat(20_000).as_bytes());
    assert_eq!(origin.hits(), 2);
}

/// A request whose `Via` already names this peer (host:port, as it writes it) looped: 508.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_passed_here_before_is_a_loop() {
    let origin = Origin::start(|_, _| fresh("x")).await;
    let nodes = larder_tests::cluster(1, |_| {}).await;
    let me = nodes[0].addr;
    let r = send(
        me,
        "GET",
        &origin.url("/l"),
        &[("via", &format!("1.1 proxy.example:80, 1.1 {me} (larder)"))],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 508, "{}", r.text());
    let r = send(
        me,
        "GET",
        &origin.url("/l"),
        &[("via", "1.1 other.example:3128")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}
