//! The destination guard end to end (issue 8 #6): a peer with the default guard never
//! connects to loopback, link-local, unspecified, multicast, broadcast or unique-local
//! addresses, whatever the URL spells; `--allow-destination` opens ranges again; the mirror
//! and the peers themselves stay reachable.

use larder_tests::{Origin, Reply, cluster, get, peer, raw_exchange, send, send_body};
use std::time::Duration;

fn fresh(body: &'static str) -> Reply {
    Reply::ok(body, &[("cache-control", "max-age=60")])
}

fn refused(r: &larder_tests::Got, what: &str) {
    assert_eq!(r.status, 403, "{what}: {} {}", r.cache_status(), r.text());
    assert!(
        r.cache_status().contains("detail=destination-not-allowed"),
        "{what}: {}",
        r.cache_status()
    );
    assert!(r.text().contains("destination"), "{what}: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_are_refused_under_every_spelling() {
    let origin = Origin::start(|_, _| fresh("secret")).await;
    let port = origin.addr.port();
    // The default guard: nothing opened again.
    let p = peer(|a| a.allow_destination.clear()).await;
    for host in [
        "127.0.0.1",
        "localhost",
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ] {
        let url = format!("http://{host}:{port}/x");
        refused(&get(p.addr, &url).await, &url);
    }
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::1]/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ] {
        refused(&get(p.addr, url).await, url);
    }
    // The forwardcache door, a pass-through (unsafe method) and a Range request too.
    let q = larder_core::door::proxy_query(&origin.url("/q"));
    let r = send(p.addr, "GET", &format!("/proxy?{q}"), &[])
        .await
        .unwrap();
    refused(&r, "/proxy?q=");
    let r = send_body(p.addr, "POST", &origin.url("/p"), &[], "x".into())
        .await
        .unwrap();
    refused(&r, "POST");
    let r = send(p.addr, "GET", &origin.url("/r"), &[("range", "bytes=0-1")])
        .await
        .unwrap();
    refused(&r, "range");
    assert_eq!(origin.hits(), 0, "no request reached the loopback origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_are_guarded_too() {
    let origin = Origin::start(|_, _| fresh("secret")).await;
    let target = origin.addr.to_string();
    let p = peer(|a| {
        a.allow_destination.clear();
        a.connect_allow = vec![target.clone()];
    })
    .await;
    let req = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
    let got = raw_exchange(p.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert!(got.contains("loopback"), "{got}");
    let open = peer(|a| a.connect_allow = vec![target.clone()]).await;
    let got = raw_exchange(open.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_destination_mirror_and_peers_stay_reachable() {
    let origin = Origin::start(|_, _| fresh("ok")).await;
    // --allow-destination opens the range again.
    let p = peer(|a| a.allow_destination = vec!["127.0.0.0/8".into()]).await;
    let r = get(p.addr, &origin.url("/a")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // ... but only that range.
    refused(&get(p.addr, "http://[::1]:1/").await, "::1 not opened");
    // The mirror is the operator's upstream: reachable with the default guard, and so are
    // the members of a cluster (peer traffic is not origin traffic).
    let base = origin.url("/m");
    let nodes = cluster(2, |a| {
        a.allow_destination.clear();
        a.mirror = vec![base.clone()];
    })
    .await;
    for i in 0..8 {
        for n in &nodes {
            let r = send(n.addr, "GET", &format!("/f{i}"), &[]).await.unwrap();
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "ok"),
                "{}",
                r.cache_status()
            );
        }
    }
    let forwarded: u64 = nodes
        .iter()
        .map(|n| n.state.metrics.peer_forwards.get())
        .sum();
    assert!(forwarded > 0, "some requests went to the other peer");
    // The forward door of the same cluster still refuses other loopback origins.
    let other = Origin::start(|_, _| fresh("other")).await;
    for n in &nodes {
        refused(&get(n.addr, &other.url("/b")).await, "cluster forward door");
    }
    assert_eq!(other.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_schemes_are_refused_with_400() {
    let p = peer(|_| {}).await;
    for target in [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/1",
        "ftp://127.0.0.1/x",
        "data:text/plain,hi",
        "/proxy?q=file%3A%2F%2F%2Fetc%2Fpasswd",
        "/proxy?q=gopher%3A%2F%2F127.0.0.1%3A70%2F",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let got = raw_exchange(p.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{target}: {got}");
    }
}
