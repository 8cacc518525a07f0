//! HTTPS origins through the forward door: Larder opens TLS itself, verifies the
//! certificate against the CA given with --ca-file, and caches the content.

use larder_tests::{Origin, Reply, get, peer, pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_content_is_cached_with_verification_on() {
    let pki = pki();
    let origin = Origin::start_tls(pki.server.clone(), |_, _| {
        Reply::ok("over tls", &[("cache-control", "max-age=60")])
    })
    .await;
    let url = format!("https://localhost:{}/secure", origin.addr.port());
    let ca = std::env::temp_dir().join(format!("larder-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let p = peer(|a| a.ca_file = vec![ca.clone()]).await;
    let a = get(p.addr, &url).await;
    assert_eq!((a.status, a.text().as_str()), (200, "over tls"));
    let b = get(p.addr, &url).await;
    assert!(b.is_hit(), "{}", b.cache_status());
    assert_eq!(origin.hits(), 1);

    // Without the CA the certificate is refused: 502 with a reason, nothing cached.
    let strict = peer(|_| {}).await;
    let r = get(
        strict.addr,
        &format!("https://localhost:{}/other", origin.addr.port()),
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=tls-untrusted-issuer"),
        "{}",
        r.cache_status()
    );
    assert!(
        r.text().contains("not issued by a trusted CA"),
        "{}",
        r.text()
    );
    // Trusted, but not for that name (the certificate names localhost, not 127.0.0.1).
    let r = get(
        p.addr,
        &format!("https://127.0.0.1:{}/by-address", origin.addr.port()),
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=tls-name-mismatch"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits(),
        1,
        "the TLS handshake failed before any request"
    );
    std::fs::remove_file(ca).ok();
}

/// Upstream failures say what failed, to the client (`Cache-Status` detail, the 502 body)
/// for cached and passed requests alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_say_why() {
    let p = peer(|_| {}).await;
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let r = get(p.addr, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=connection-refused"),
        "{}",
        r.cache_status()
    );
    assert!(r.text().contains("refused the connection"), "{}", r.text());
    let r = larder_tests::send(p.addr, "POST", &format!("http://127.0.0.1:{port}/x"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=connection-refused"),
        "{}",
        r.cache_status()
    );
    // A name that does not resolve (RFC 6761 reserves .invalid).
    let r = get(p.addr, "http://no-such-host.invalid/x").await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("detail=dns-not-found"),
        "{}",
        r.cache_status()
    );
}
