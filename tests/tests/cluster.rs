//! Clusters of real peers on loopback in front of a real origin that counts requests.

use larder_core::CacheKey;
use larder_core::ring::{GroupcacheRing, PeerSelection, RingKind};
use larder_tests::{Origin, Reply, cluster, get, send};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn owner_of(peers: &[String], kind: RingKind, url: &str) -> String {
    let key = CacheKey::from_uri(&url.parse().unwrap()).unwrap();
    PeerSelection::new(kind, peers)
        .owner(key.as_bytes())
        .unwrap()
        .to_owned()
}

fn urls(c: &[larder_peer::Running]) -> Vec<String> {
    c.iter()
        .map(|r| r.state.settings.self_url.clone().unwrap())
        .collect()
}

fn fetches(r: &larder_peer::Running) -> u64 {
    let m = r.state.metrics.render();
    m.lines()
        .find(|l| l.starts_with("larder_origin_fetches_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_gets_over_three_peers_make_one_origin_request() {
    let body: &'static str = Box::leak("c".repeat(50_000).into_boxed_str());
    let origin = Origin::start(move |_, _| {
        Reply::ok(body, &[("cache-control", "max-age=60")])
            .delay(Duration::from_millis(300))
            .throttle(8192, Duration::from_millis(5))
    })
    .await;
    let c = cluster(3, |_| {}).await;
    let url = origin.url("/cold");
    let addrs: Vec<_> = c.iter().map(|r| r.addr).collect();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (addr, url) = (addrs[i % 3], url.clone());
        tasks.push(tokio::spawn(async move { get(addr, &url).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref(), body.as_bytes());
    }
    assert_eq!(origin.hits(), 1);
    let owner = owner_of(&urls(&c), RingKind::Rendezvous, &url);
    for r in &c {
        let expected = if r.state.settings.self_url.as_deref() == Some(owner.as_str()) {
            1
        } else {
            0
        };
        assert_eq!(fetches(r), expected, "only the owner fetches");
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (addr, url) = (addrs[i % 3], url.clone());
        let method = if i % 2 == 0 { "GET" } else { "HEAD" };
        tasks.push(tokio::spawn(async move {
            send(addr, method, &url, &[]).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(origin.hits(), 1, "GET and HEAD mixed add nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_owner_fails_over_fast_and_still_coalesces() {
    let origin =
        Origin::start(|_, _| Reply::ok("survivor", &[("cache-control", "max-age=60")])).await;
    let mut c = cluster(3, |_| {}).await;
    let peers = urls(&c);
    // A URL owned by peer 0, entered through peer 1.
    let url = (0..1000)
        .map(|i| origin.url(&format!("/k{i}")))
        .find(|u| owner_of(&peers, RingKind::Rendezvous, u) == peers[0])
        .unwrap();
    let owner = c.remove(0);
    owner.shutdown(Duration::from_millis(100)).await;
    let start = Instant::now();
    let r = get(c[0].addr, &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "survivor"));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(origin.hits() <= 1);
    let again = get(c[0].addr, &url).await;
    assert_eq!(again.status, 200);
    let other = get(c[1].addr, &url).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        origin.hits(),
        1,
        "the node that took over keeps coalescing and caching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_owner_is_skipped_after_the_peer_timeout() {
    // A peer that accepts connections and never answers.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let origin =
        Origin::start(|_, _| Reply::ok("answered", &[("cache-control", "max-age=60")])).await;
    let hole2 = hole_url.clone();
    let c = cluster(2, move |a| {
        a.peers.push(hole2.clone());
        a.peer_timeout = Some("500ms".into());
    })
    .await;
    let mut all = urls(&c);
    all.push(hole_url.clone());
    let url = (0..1000)
        .map(|i| origin.url(&format!("/h{i}")))
        .find(|u| owner_of(&all, RingKind::Rendezvous, u) == hole_url)
        .unwrap();
    let start = Instant::now();
    let r = get(c[0].addr, &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "answered"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    // Marked down: the next request does not wait again.
    let start = Instant::now();
    assert_eq!(get(c[0].addr, &url).await.status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "took {:?}",
        start.elapsed()
    );
    let m = send(c[0].addr, "GET", "/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(m.contains("larder_peer_errors_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergent_peer_lists_neither_loop_nor_deadlock() {
    let origin = Origin::start(|_, _| Reply::ok("ok", &[("cache-control", "max-age=60")])).await;
    let ls: Vec<TcpListener> = vec![
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let u: Vec<String> = ls
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let (a, b, cc) = (u[0].clone(), u[1].clone(), u[2].clone());
    // A's list [B, C] (A is an entry point), B's list [A, B, C].
    let views = [
        vec![b.clone(), cc.clone()],
        vec![a.clone(), b.clone(), cc.clone()],
        vec![a.clone(), b.clone(), cc.clone()],
    ];
    let url = (0..5000)
        .map(|i| origin.url(&format!("/d{i}")))
        .find(|url| {
            owner_of(&views[0], RingKind::Rendezvous, url) == b
                && owner_of(&views[1], RingKind::Rendezvous, url) == a
        })
        .expect("a key each thinks the other owns");
    let mut running = Vec::new();
    for ((l, me), view) in ls.into_iter().zip(&u).zip(&views) {
        let args = larder_peer::Args {
            self_url: Some(me.clone()),
            peers: view.clone(),
            allow_destination: larder_tests::loopback_destinations(),
            ..Default::default()
        };
        let mut s = args.resolve().unwrap();
        s.listen = l.local_addr().unwrap();
        running.push(larder_peer::start_on(l, s).await.unwrap());
    }
    let start = Instant::now();
    let (ra, rb) = tokio::join!(get(running[0].addr, &url), get(running[1].addr, &url));
    assert_eq!((ra.status, rb.status), (200, 200));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(origin.hits() <= 2, "origin saw {}", origin.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_needs_the_secret() {
    let origin =
        Origin::start(|_, _| Reply::ok("members only", &[("cache-control", "max-age=60")])).await;
    let c = cluster(3, |a| a.peer_secret = Some("correct horse".into())).await;
    let url = origin.url("/s");
    let r = send(c[0].addr, "GET", &url, &[("larder-hop", "http://intruder")])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let forged = send(
        c[0].addr,
        "GET",
        &url,
        &[("larder-hop", "x"), ("larder-peer-auth", "t=1,sig=00")],
    )
    .await
    .unwrap();
    assert_eq!(forged.status, 401);
    // A signed peer request is served where it lands (one hop at most): send it to the owner.
    let owner = owner_of(&urls(&c), RingKind::Rendezvous, &url);
    let at = c
        .iter()
        .find(|r| r.state.settings.self_url.as_deref() == Some(owner.as_str()))
        .unwrap()
        .addr;
    let mut signed_fields = http::HeaderMap::new();
    signed_fields.insert("larder-hop", http::HeaderValue::from_static("x"));
    let sig = larder_core::hop::sign(
        "correct horse",
        1,
        &http::Method::GET,
        &url,
        &signed_fields,
        std::time::SystemTime::now(),
    );
    let ok = send(
        at,
        "GET",
        &url,
        &[("larder-hop", "x"), ("larder-peer-auth", &sig)],
    )
    .await
    .unwrap();
    assert_eq!((ok.status, ok.text().as_str()), (200, "members only"));
    // And the members reach each other with it: every entry point works.
    for p in &c {
        assert_eq!(get(p.addr, &url).await.status, 200);
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_goes_straight_to_the_owner_and_fails_over() {
    let origin =
        Origin::start(|seen, _| Reply::ok(seen.uri.clone(), &[("cache-control", "max-age=60")]))
            .await;
    let mut c = cluster(3, |_| {}).await;
    let peers = urls(&c);
    let client = larder_peer::Client::new(&peers, RingKind::Rendezvous).unwrap();
    let targets: Vec<String> = (0..12).map(|i| origin.url(&format!("/lib{i}"))).collect();
    for t in &targets {
        let resp = client
            .send(
                http::Request::get(t.as_str())
                    .body(bytes::Bytes::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // No peer forwarded anything: every request landed on its owner.
    for r in &c {
        let m = r.state.metrics.render();
        assert!(m.contains("larder_peer_forwards_total 0"), "{m}");
    }
    for t in &targets {
        let owner = owner_of(&peers, RingKind::Rendezvous, t);
        assert_eq!(client.owner_for(t).unwrap(), owner);
    }
    // One peer down: everything still served.
    let down = c.remove(1);
    down.shutdown(Duration::from_millis(100)).await;
    let mut svc = client.clone();
    for t in &targets {
        let resp = tower_call(&mut svc, t).await;
        assert_eq!(resp.status(), 200, "{t}");
    }
}

async fn tower_call(
    svc: &mut larder_peer::Client,
    url: &str,
) -> http::Response<hyper::body::Incoming> {
    use tower_service::Service;
    std::future::poll_fn(|cx| {
        Service::<http::Request<http_body_util::Empty<bytes::Bytes>>>::poll_ready(svc, cx)
    })
    .await
    .unwrap();
    svc.call(
        http::Request::get(url)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groupcache_ring_mode_places_keys_like_groupcache() {
    let origin = Origin::start(|_, _| Reply::ok("g", &[("cache-control", "max-age=60")])).await;
    let c = cluster(3, |a| a.ring = Some("groupcache".into())).await;
    let peers = urls(&c);
    let ring = GroupcacheRing::new(&peers);
    for i in 0..30 {
        let url = origin.url(&format!("/g{i}"));
        assert_eq!(get(c[i % 3].addr, &url).await.status, 200);
        let key = CacheKey::from_uri(&url.parse().unwrap()).unwrap();
        let owner = ring.owner(key.as_bytes()).unwrap();
        let holder: Vec<&str> = c
            .iter()
            .filter(|r| r.state.driver.with_engine(|e| e.ring().kind()) == RingKind::Groupcache)
            .filter(|r| fetches(r) > 0 && r.state.settings.self_url.as_deref() == Some(owner))
            .map(|r| r.state.settings.self_url.as_deref().unwrap())
            .collect();
        assert_eq!(holder, vec![owner], "{url}");
    }
    let total: u64 = c.iter().map(fetches).sum();
    assert_eq!(total, 30);
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_stalling_mid_body_aborts_the_relay() {
    // The origin sends half the body, then nothing: the owner waits on it, and the entry
    // peer must not wait forever either.
    let origin = Origin::start(|_, _| {
        Reply::ok("s".repeat(40_000), &[("cache-control", "max-age=60")])
            .throttle(20_000, Duration::from_secs(30))
    })
    .await;
    let c = cluster(2, |a| a.idle_timeout = Some("1s".into())).await;
    let peers = urls(&c);
    let url = (0..1000)
        .map(|i| origin.url(&format!("/stall{i}")))
        .find(|u| owner_of(&peers, RingKind::Rendezvous, u) == peers[1])
        .unwrap();
    let start = Instant::now();
    let r = send(c[0].addr, "GET", &url, &[]).await;
    assert!(
        r.is_err(),
        "the client sees the stall as an error, never a short 200: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

fn metric(r: &larder_peer::Running, name: &str) -> f64 {
    let m = r.state.metrics.render();
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Issue 10, the hot cache: a remote key asked for often at one entry peer is kept there
/// and served there, even with its owner gone, while fresh; once stale it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_popular_remote_key_is_served_by_the_entry_peer_itself() {
    let origin =
        Origin::start(|_, n| Reply::ok(format!("popular v{n}"), &[("cache-control", "max-age=3")]))
            .await;
    let mut c = cluster(3, |a| a.hot_after = Some(3)).await;
    let peers = urls(&c);
    // A URL owned by peer 0, entered through peer 1.
    let url = (0..1000)
        .map(|i| origin.url(&format!("/hot{i}")))
        .find(|u| owner_of(&peers, RingKind::Rendezvous, u) == peers[0])
        .unwrap();
    for _ in 0..3 {
        let r = get(c[1].addr, &url).await;
        assert_eq!((r.status, r.text().as_str()), (200, "popular v0"));
    }
    assert_eq!(metric(&c[1], "larder_peer_fetches_total"), 1.0);
    assert!(metric(&c[1], "larder_hot_bytes") > 0.0);
    let r = get(c[1].addr, &url).await;
    let status = r.header("cache-status").unwrap_or_default();
    assert!(
        status.contains("hit") && status.contains("detail=hot"),
        "{status}"
    );
    // Served at the entry: the owner can be gone.
    let owner = c.remove(0);
    owner.shutdown(Duration::from_millis(100)).await;
    let r = get(c[0].addr, &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "popular v0"));
    assert!(
        r.header("cache-status")
            .unwrap_or_default()
            .contains("detail=hot")
    );
    assert_eq!(origin.hits(), 1);
    // Past max-age=3 the copy is not served: the request goes on (here to the origin, the
    // owner being gone), and gets the new version.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = get(c[0].addr, &url).await;
    assert_eq!((r.status, r.text().as_str()), (200, "popular v1"));
    assert!(
        !r.header("cache-status")
            .unwrap_or_default()
            .contains("detail=hot")
    );
}

/// Issue 13's PURGE on three real peers: sent to any peer, it reaches the owner (which drops
/// the URL) and every other peer (which drop their hot copies); it never reaches the origin;
/// only --purge-allow may send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_at_any_peer_drops_the_url_cluster_wide() {
    let origin = Origin::start(|req, n| {
        assert_ne!(req.method, "PURGE", "a PURGE reached the origin");
        Reply::ok(format!("v{n}"), &[("cache-control", "max-age=600")])
    })
    .await;
    let c = cluster(3, |a| a.hot_after = Some(2)).await;
    let peers = urls(&c);
    let url = (0..1000)
        .map(|i| origin.url(&format!("/p{i}")))
        .find(|u| owner_of(&peers, RingKind::Rendezvous, u) == peers[0])
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get(c[1].addr, &url).await.text(), "v0");
    }
    assert!(
        metric(&c[1], "larder_hot_bytes") > 0.0,
        "a hot copy at peer 1"
    );
    let r = send(c[2].addr, "PURGE", &url, &[]).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "purged 1 entry\n"));
    // The fan-out is fire and forget: give it a moment.
    for _ in 0..50 {
        if metric(&c[1], "larder_hot_bytes") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&c[1], "larder_hot_bytes"), 0.0, "the hot copy went");
    let r = get(c[1].addr, &url).await;
    assert_eq!(r.text(), "v1", "refetched after the purge");
    let r = send(c[2].addr, "PURGE", &origin.url("/never"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    // Not from an address outside --purge-allow.
    let strict = cluster(1, |a| a.purge_allow = vec!["10.0.0.0/8".into()]).await;
    let r = send(strict[0].addr, "PURGE", &url, &[]).await.unwrap();
    assert_eq!(r.status, 403);
}

/// Issue 13 (3): a purge by tag taken by one peer reaches every peer over the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_tag_reaches_every_peer() {
    let origin = Origin::start(|seen, _| {
        let tag = if seen.uri.starts_with("/t/") {
            "release-7"
        } else {
            "other"
        };
        Reply::ok(
            "x",
            &[("cache-control", "max-age=600"), ("surrogate-key", tag)],
        )
    })
    .await;
    let nodes = cluster(2, |_| {}).await;
    let urls: Vec<String> = (0..8).map(|i| origin.url(&format!("/t/{i}"))).collect();
    for u in &urls {
        larder_tests::get(nodes[0].addr, u).await;
    }
    larder_tests::get(nodes[0].addr, &origin.url("/keep")).await;
    let r = larder_tests::send(
        nodes[1].addr,
        "PURGE",
        &origin.url("/"),
        &[("larder-purge-tag", "release-7")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for u in &urls {
        let r = larder_tests::get(nodes[0].addr, u).await;
        assert!(!r.is_hit(), "{u} survived the purge: {}", r.cache_status());
    }
    assert!(
        larder_tests::get(nodes[1].addr, &origin.url("/keep"))
            .await
            .is_hit()
    );
}
