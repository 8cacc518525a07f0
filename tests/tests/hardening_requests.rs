//! Adversarial requests and misbehaving origins against one real peer on loopback (issue 8):
//! each test here failed before its fix.

use bytes::Bytes;
use larder_tests::{RawOrigin, get, peer, raw_response, send, send_body};

fn body_of(seen: &larder_tests::RawSeen) -> Vec<u8> {
    raw_response(
        "200 OK",
        &["cache-control: max-age=60"],
        &format!("body of {}", seen.target),
    )
}

/// A GET that declares a body must never reach the origin with framing that does not match
/// what is sent: an origin that reads the declared body would swallow the next request on the
/// pooled connection, and the tail of that request (chosen by the attacker) would be answered
/// and stored in place of the real resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_a_declared_body_cannot_poison_the_cache() {
    let origin = RawOrigin::start(body_of).await;
    let p = peer(|_| {}).await;
    let smuggle = [("x-pad", "GET /evil HTTP/1.1")];
    // Where the smuggled request line sits in the head the peer sends for a two-letter path.
    let probe = send(p.addr, "GET", &origin.url("/c"), &smuggle)
        .await
        .unwrap();
    assert_eq!(probe.text(), "body of /c");
    let offset = origin.seen()[0].raw.find("GET /evil").unwrap();
    // The attacker declares exactly that many body bytes on a GET ...
    let len = offset.to_string();
    let attack = send_body(
        p.addr,
        "GET",
        &origin.url("/x"),
        &[("content-length", len.as_str())],
        Bytes::from(vec![b'a'; offset]),
    )
    .await
    .unwrap();
    assert_eq!((attack.status, attack.text().as_str()), (200, "body of /x"));
    // ... then asks for /b with the smuggled line, over the same pooled origin connection.
    let b = send(p.addr, "GET", &origin.url("/b"), &smuggle)
        .await
        .unwrap();
    assert_eq!(b.text(), "body of /b", "{:?}", origin.seen());
    // Another client gets /b, not /evil, and nothing poisoned was stored.
    let victim = get(p.addr, &origin.url("/b")).await;
    assert_eq!(victim.text(), "body of /b", "{}", victim.cache_status());
    no_framing_upstream(&origin, "/evil");
}

/// HEAD and chunked GET bodies are read and dropped; a large one is refused before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_on_get_and_head_are_dropped_or_refused() {
    let origin = RawOrigin::start(body_of).await;
    let p = peer(|_| {}).await;
    let chunked = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        origin.url("/chunked"),
        origin.addr
    );
    let got = larder_tests::raw_exchange(
        p.addr,
        chunked.as_bytes(),
        std::time::Duration::from_secs(3),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("body of /chunked"), "{got}");
    let head = send_body(
        p.addr,
        "HEAD",
        &origin.url("/head"),
        &[("content-length", "4")],
        Bytes::from_static(b"abcd"),
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    let big = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: 10000000\r\n\r\n",
        origin.url("/big"),
        origin.addr
    );
    let got =
        larder_tests::raw_exchange(p.addr, big.as_bytes(), std::time::Duration::from_secs(3)).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    no_framing_upstream(&origin, "/big");
}

/// No request the origin saw carried body framing, and none was for `never` (a target that
/// only a desynchronised connection would have sent).
fn no_framing_upstream(origin: &RawOrigin, never: &str) {
    for s in origin.seen() {
        assert!(
            s.content_length.is_none(),
            "framing sent upstream: {}",
            s.raw
        );
        assert!(s.header("transfer-encoding").is_none(), "{}", s.raw);
        assert_ne!(s.target, never, "{}", s.raw);
    }
}

/// A hop marker (`larder-hop`) never widens access: without `--peer-secret` a marked request
/// passes the same `--allow` check as any other; with one, it must carry a valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_marker_never_widens_access() {
    let origin = larder_tests::Origin::start(|_, _| {
        larder_tests::Reply::ok("secret", &[("cache-control", "max-age=60")])
    })
    .await;
    let hop = [("larder-hop", "http://127.0.0.1:1")];
    let q = format!(
        "/proxy?{}",
        larder_core::door::proxy_query(&origin.url("/q"))
    );
    // Loopback clients are not in --allow here, and there is no peer secret.
    let p = peer(|a| a.allow = vec!["10.0.0.0/8".into()]).await;
    assert_eq!(get(p.addr, &origin.url("/a")).await.status, 403);
    for target in [origin.url("/a"), q.clone()] {
        let r = send(p.addr, "GET", &target, &hop).await.unwrap();
        assert_eq!(r.status, 403, "{target}: {}", r.text());
    }
    // With a secret, a marker without a valid signature is refused.
    let s = peer(|a| {
        a.allow = vec!["10.0.0.0/8".into()];
        a.peer_secret = Some("s3cret".into());
    })
    .await;
    for target in [origin.url("/a"), q.clone()] {
        let r = send(s.addr, "GET", &target, &hop).await.unwrap();
        assert_eq!(r.status, 401, "{target}: {}", r.text());
    }
    assert_eq!(origin.hits(), 0, "nothing reached the origin");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, gets 400 on every
/// door; HTTP/1.0 needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_once_in_http_1_1() {
    use larder_tests::raw_exchange;
    use std::time::Duration;
    let origin = RawOrigin::start(body_of).await;
    let forward = peer(|_| {}).await;
    let base = origin.url("/m");
    let mirror = peer(|a| a.mirror = vec![base.clone()]).await;
    let url = origin.url("/x");
    let wait = Duration::from_secs(3);
    for (server, target) in [(forward.addr, url.as_str()), (mirror.addr, "/y")] {
        for fields in ["", "host: a\r\nhost: b\r\n"] {
            let req = format!("GET {target} HTTP/1.1\r\n{fields}connection: close\r\n\r\n");
            let got = raw_exchange(server, req.as_bytes(), wait).await;
            assert!(got.starts_with("HTTP/1.1 400"), "{req:?}: {got}");
        }
        let two_in_one =
            format!("GET {target} HTTP/1.1\r\nhost: a\r\nHost: a\r\nconnection: close\r\n\r\n");
        let got = raw_exchange(server, two_in_one.as_bytes(), wait).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{two_in_one:?}: {got}");
    }
    let no_host = raw_exchange(
        forward.addr,
        b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
    // HTTP/1.0 without Host is fine, and so is HTTP/1.1 with exactly one.
    let old = raw_exchange(
        forward.addr,
        format!("GET {url} HTTP/1.0\r\n\r\n").as_bytes(),
        wait,
    )
    .await;
    assert!(
        old.contains(" 200 OK") && old.ends_with("body of /x"),
        "{old}"
    );
    let one = format!(
        "GET {url} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        origin.addr
    );
    let one = raw_exchange(forward.addr, one.as_bytes(), wait).await;
    assert!(
        one.starts_with("HTTP/1.1 200") && one.ends_with("body of /x"),
        "{one}"
    );
}

/// RFC 9112 §6.3: when an origin sends both Transfer-Encoding and Content-Length, the
/// encoding wins and the length must not be passed on (nor stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_wins_over_content_length() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\
          content-length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec()
    })
    .await;
    let p = peer(|_| {}).await;
    let check = |r: &larder_tests::Got, what: &str| {
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.text(), "hello world", "{what}: {}", r.cache_status());
        assert!(
            r.header("content-length").is_none_or(|l| l == "11"),
            "{what}: {:?}",
            r.headers
        );
    };
    let miss = get(p.addr, &origin.url("/both")).await;
    check(&miss, "miss");
    let hit = get(p.addr, &origin.url("/both")).await;
    check(&hit, "hit");
    assert!(
        hit.is_hit(),
        "stored with its real length: {}",
        hit.cache_status()
    );
    let pass = send_body(p.addr, "POST", &origin.url("/post"), &[], "x".into())
        .await
        .unwrap();
    check(&pass, "pass-through");
    assert_eq!(
        origin.connections(),
        2,
        "a connection whose framing was in doubt is never reused"
    );
}

/// `http://127.0.0.1:99999/` is not port 80: out-of-range ports get 400 on every door and
/// never become a connection or a cache key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_ports_are_refused() {
    let p = peer(|_| {}).await;
    for url in [
        "http://127.0.0.1:99999/x",
        "http://127.0.0.1:65536/x",
        "http://127.0.0.1:0/x",
    ] {
        let r = send(p.addr, "GET", url, &[]).await.unwrap();
        assert_eq!(r.status, 400, "{url}: {} {}", r.cache_status(), r.text());
        assert!(r.text().contains("port"), "{url}: {}", r.text());
        let q = format!("/proxy?{}", larder_core::door::proxy_query(url));
        let r = send(p.addr, "GET", &q, &[]).await.unwrap();
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        let r = send_body(p.addr, "POST", url, &[], "x".into())
            .await
            .unwrap();
        assert_eq!(r.status, 400, "POST {url}: {}", r.text());
    }
}

/// Asterisk-form (`OPTIONS *`, `GET *`) is about the proxy itself: answered here, never
/// joined onto the mirror URL (which made `http://host:port*`, i.e. port 80 of the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_form_is_answered_locally() {
    use larder_tests::raw_exchange;
    use std::time::Duration;
    let origin = RawOrigin::start(body_of).await;
    let base = origin.url("/m");
    let mirror = peer(|a| a.mirror = vec![base.clone()]).await;
    let forward = peer(|_| {}).await;
    for server in [mirror.addr, forward.addr] {
        let ask = |m: &str| format!("{m} * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let got = raw_exchange(server, ask("OPTIONS").as_bytes(), Duration::from_secs(3)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.to_ascii_lowercase().contains("\r\nallow: "), "{got}");
        for m in ["GET", "HEAD", "POST"] {
            let got = raw_exchange(server, ask(m).as_bytes(), Duration::from_secs(3)).await;
            assert!(got.starts_with("HTTP/1.1 400"), "{m} *: {got}");
        }
    }
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
}
