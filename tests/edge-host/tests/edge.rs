//! The real Spin component (built for wasm32-wasip2) running in wasmtime with WASI HTTP p3,
//! against a real origin and real native peers on loopback.

use bytes::Bytes;
use larder_core::CacheKey;
use larder_core::ring::{PeerSelection, RingKind};
use larder_edge_host::{EdgeHost, SPIN_HEADERS};
use larder_tests::{Origin, Reply};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The component CI builds (`cargo build -p larder-spin --target wasm32-wasip2 --profile component`).
fn component() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/wasm32-wasip2/component/larder_spin.wasm");
    assert!(
        p.exists(),
        "build the component first: cargo build -p larder-spin --target wasm32-wasip2 --profile component"
    );
    p
}

fn get(url: &str) -> http::Request<Bytes> {
    http::Request::get(url).body(Bytes::new()).unwrap()
}

fn cache_status(r: &http::Response<Bytes>) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn proxy_url(target: &str) -> String {
    format!(
        "http://edge.test/proxy?{}",
        larder_core::door::proxy_query(target)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_from_spin_key_value() {
    let origin = Origin::start(|_, _| {
        Reply::ok(
            "from the edge",
            &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
        )
    })
    .await;
    let host = EdgeHost::load(
        &component(),
        &[("upstream", &origin.url(""))],
        &[origin.addr.to_string()],
    )
    .unwrap();
    let first = host.handle(get("http://edge.test/doc?x=1")).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.body().as_ref(), b"from the edge");
    assert!(
        cache_status(&first).contains("fwd=uri-miss") && cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let second = host.handle(get("http://edge.test/doc?x=1")).await.unwrap();
    assert!(
        cache_status(&second).starts_with("larder; hit; ttl="),
        "{}",
        cache_status(&second)
    );
    assert!(second.headers().get("age").is_some());
    assert_eq!(second.body().as_ref(), b"from the edge");
    assert_eq!(origin.hits(), 1);
    assert_eq!(origin.seen()[0].uri, "/doc?x=1");
    assert_eq!(host.kv.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_is_not_stored_and_head_and_conditionals_work() {
    let origin = Origin::start(|seen, n| {
        if seen.uri.contains("secret") {
            Reply::ok(format!("{n}"), &[("cache-control", "no-store")])
        } else {
            Reply::ok("v", &[("cache-control", "max-age=60"), ("etag", "\"v\"")])
        }
    })
    .await;
    let host = EdgeHost::load(
        &component(),
        &[("upstream", &origin.url(""))],
        &[origin.addr.to_string()],
    )
    .unwrap();
    let a = host.handle(get("http://edge.test/secret")).await.unwrap();
    assert!(
        cache_status(&a).contains("detail=no-store"),
        "{}",
        cache_status(&a)
    );
    host.handle(get("http://edge.test/secret")).await.unwrap();
    assert_eq!(origin.hits(), 2);
    assert!(host.kv.lock().unwrap().is_empty());
    host.handle(get("http://edge.test/v")).await.unwrap();
    let head = host
        .handle(
            http::Request::head("http://edge.test/v")
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(cache_status(&head).contains("hit") && head.body().is_empty());
    let nm = host
        .handle(
            http::Request::get("http://edge.test/v")
                .header("if-none-match", "\"v\"")
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(nm.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_host_not_allowed_is_a_clear_502() {
    let origin = Origin::start(|_, _| Reply::ok("never", &[])).await;
    let host = EdgeHost::load(&component(), &[], &[]).unwrap();
    let r = host
        .handle(get(&proxy_url(&origin.url("/x"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        cache_status(&r).contains("detail=not-in-allowed-outbound-hosts"),
        "{}",
        cache_status(&r)
    );
    let text = String::from_utf8_lossy(r.body());
    assert!(
        text.contains(&origin.url("")) && text.contains("allowed_outbound_hosts"),
        "{text}"
    );
    assert_eq!(origin.hits(), 0);
}

/// Names of `spin-*` fields in `h`.
fn spin_fields(h: &http::HeaderMap) -> Vec<String> {
    h.keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("spin-"))
        .collect()
}

/// The host adds Spin's own fields (client address, the edge's URL, route) to every request,
/// as Spin does; none may reach the origin or a peer, be stored in key-value or come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_host_headers_reach_neither_the_origin_nor_the_cache() {
    let origin = Origin::start(|_, _| {
        Reply::ok(
            "clean",
            &[("cache-control", "max-age=60"), ("vary", "accept")],
        )
    })
    .await;
    let host = EdgeHost::load(
        &component(),
        &[("upstream", &origin.url(""))],
        &[origin.addr.to_string()],
    )
    .unwrap();
    let miss = host.handle(get("http://edge.test/h")).await.unwrap();
    assert!(
        cache_status(&miss).contains("stored"),
        "{}",
        cache_status(&miss)
    );
    let hit = host.handle(get("http://edge.test/h")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    let post = host
        .handle(
            http::Request::post("http://edge.test/form")
                .body(Bytes::from_static(b"form"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(origin.hits(), 2, "the GET once, then the POST");
    for seen in origin.seen() {
        assert!(
            spin_fields(&seen.headers).is_empty(),
            "{} {} reached the origin with {:?}",
            seen.method,
            seen.uri,
            spin_fields(&seen.headers)
        );
    }
    for r in [&miss, &hit, &post] {
        assert!(spin_fields(r.headers()).is_empty(), "{:?}", r.headers());
    }
    let kv = host.kv.lock().unwrap();
    let entry = kv.values().next().expect("the GET is stored");
    let entry = String::from_utf8_lossy(entry);
    for name in SPIN_HEADERS {
        assert!(!entry.contains(name), "{name} stored: {entry}");
    }
    assert!(!entry.contains("127.0.0.1:54321"), "{entry}");
}

/// A miss the edge forwards to its owner peer carries no `spin-*` field either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_host_headers_do_not_reach_a_peer() {
    let origin = Origin::start(|_, _| Reply::ok("owned", &[("cache-control", "max-age=60")])).await;
    let peers = larder_tests::cluster(1, |_| {}).await;
    let url = peers[0].state.settings.self_url.clone().unwrap();
    let host = EdgeHost::load(
        &component(),
        &[("peers", &url)],
        &[peers[0].addr.to_string(), origin.addr.to_string()],
    )
    .unwrap();
    let r = host
        .handle(get(&proxy_url(&origin.url("/p"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let via = format!(
        "{:?}",
        r.headers().get_all("via").iter().collect::<Vec<_>>()
    );
    assert!(via.contains(&url), "answered by the peer: {via}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        spin_fields(&seen[0].headers).is_empty(),
        "{:?}",
        seen[0].headers
    );
}

/// What Spin makes of `adapters/spin/spin.toml` with these application variables (the others
/// keep their defaults): the component's `allowed_outbound_hosts` and its variables. A small
/// reader for this one manifest's shape: `[variables]` defaults, the component's allow-list
/// and `[component.larder.variables]` templates.
fn manifest(set: &[(&str, &str)]) -> (Vec<String>, Vec<(String, String)>) {
    let text = include_str!("../../../adapters/spin/spin.toml");
    let quoted =
        |s: &str| -> Vec<String> { s.split('"').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut section = "";
    let mut app: Vec<(String, String)> = Vec::new();
    let mut allowed = Vec::new();
    let mut templates = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        match section {
            "[variables]" => {
                let default = value
                    .split_once("default =")
                    .map(|(_, d)| quoted(d).into_iter().next().unwrap_or_default())
                    .unwrap_or_default();
                app.push((name.to_owned(), default));
            }
            "[component.larder]" if name == "allowed_outbound_hosts" => allowed = quoted(value),
            "[component.larder.variables]" => {
                templates.push((name.to_owned(), quoted(value).concat()))
            }
            _ => {}
        }
    }
    for (k, v) in set {
        let slot = app
            .iter_mut()
            .find(|(n, _)| n == k)
            .expect("a manifest variable");
        slot.1 = v.to_string();
    }
    let render = |t: &str| -> String {
        let mut out = String::new();
        let mut rest = t;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let j = rest[i..].find("}}").expect("closed template") + i;
            let name = rest[i + 2..j].trim();
            let value = app
                .iter()
                .find(|(n, _)| n == name)
                .expect("a manifest variable");
            out.push_str(&value.1);
            rest = &rest[j + 2..];
        }
        out.push_str(rest);
        out
    };
    (
        allowed.iter().map(|a| render(a)).collect(),
        templates
            .iter()
            .map(|(n, t)| (n.clone(), render(t)))
            .collect(),
    )
}

fn load_manifest(set: &[(&str, &str)]) -> EdgeHost {
    let (allowed, vars) = manifest(set);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    EdgeHost::load(&component(), &vars, &allowed).unwrap()
}

/// A mirror under a base path (`http://host:port/debian`), configured as spin.toml says:
/// the origin in `upstream` (and so in `allowed_outbound_hosts`), the path in `upstream_path`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_a_base_path_is_served() {
    let origin =
        Origin::start(|seen, _| Reply::ok(seen.uri.clone(), &[("cache-control", "max-age=60")]))
            .await;
    let host = load_manifest(&[("upstream", &origin.url("")), ("upstream_path", "/debian")]);
    let first = host
        .handle(get("http://edge.test/pool/main/x.deb"))
        .await
        .unwrap();
    assert_eq!(
        first.status(),
        200,
        "{}",
        String::from_utf8_lossy(first.body())
    );
    assert_eq!(first.body().as_ref(), b"/debian/pool/main/x.deb");
    let second = host
        .handle(get("http://edge.test/pool/main/x.deb"))
        .await
        .unwrap();
    assert!(
        cache_status(&second).contains("hit"),
        "{}",
        cache_status(&second)
    );
    assert_eq!(origin.hits(), 1);
    assert_eq!(origin.seen()[0].uri, "/debian/pool/main/x.deb");
}

/// The old way (the path in `upstream`) puts a path into `allowed_outbound_hosts`: Spin then
/// refuses every outbound request, and the 502 says so instead of blaming the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_in_the_allow_list_is_a_502_that_says_so() {
    let origin = Origin::start(|_, _| Reply::ok("never", &[])).await;
    let host = load_manifest(&[("upstream", &origin.url("/debian"))]);
    let r = host
        .handle(get("http://edge.test/pool/x.deb"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        cache_status(&r).contains("detail=not-in-allowed-outbound-hosts"),
        "{}",
        cache_status(&r)
    );
    let text = String::from_utf8_lossy(r.body());
    assert!(
        text.contains("allowed_outbound_hosts") && text.contains("upstream_path"),
        "{text}"
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_requests_are_all_served() {
    let origin =
        Origin::start(|seen, _| Reply::ok(seen.uri.clone(), &[("cache-control", "max-age=60")]))
            .await;
    let host = Arc::new(
        EdgeHost::load(
            &component(),
            &[("upstream", &origin.url(""))],
            &[origin.addr.to_string()],
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..30 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            host.handle(get(&format!("http://edge.test/c{}", i % 10)))
                .await
                .unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), format!("/c{}", i % 10).as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_go_to_the_owner_the_native_ring_names_and_fail_over() {
    let origin = Origin::start(|_, _| Reply::ok("owned", &[("cache-control", "max-age=60")])).await;
    let peers = larder_tests::cluster(2, |_| {}).await;
    let urls: Vec<String> = peers
        .iter()
        .map(|p| p.state.settings.self_url.clone().unwrap())
        .collect();
    let target = origin.url("/routed");
    let key = CacheKey::from_uri(&target.parse().unwrap()).unwrap();
    let owner = PeerSelection::new(RingKind::Rendezvous, &urls)
        .owner(key.as_bytes())
        .unwrap()
        .to_owned();
    let mut allowed: Vec<String> = peers.iter().map(|p| p.addr.to_string()).collect();
    allowed.push(origin.addr.to_string());
    let host = EdgeHost::load(&component(), &[("peers", &urls.join(","))], &allowed).unwrap();
    let r = host.handle(get(&proxy_url(&target))).await.unwrap();
    assert_eq!(
        (r.status(), r.body().as_ref()),
        (http::StatusCode::OK, b"owned".as_ref())
    );
    let via = r
        .headers()
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        via.contains(&owner),
        "answered by the owner {owner}: via {via}"
    );
    assert_eq!(origin.hits(), 1);
    // Owner stopped: the next choice answers.
    let mut peers = peers;
    let idx = peers
        .iter()
        .position(|p| p.state.settings.self_url.as_deref() == Some(owner.as_str()))
        .unwrap();
    peers.remove(idx).shutdown(Duration::from_millis(100)).await;
    let start = Instant::now();
    let r = host.handle(get(&proxy_url(&target))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_and_per_request_time() {
    let origin = Origin::start(|_, _| Reply::ok("t", &[("cache-control", "max-age=60")])).await;
    let host = EdgeHost::load(
        &component(),
        &[("upstream", &origin.url(""))],
        &[origin.addr.to_string()],
    )
    .unwrap();
    host.handle(get("http://edge.test/t")).await.unwrap();
    let n = 50;
    let start = Instant::now();
    for _ in 0..n {
        assert!(
            cache_status(&host.handle(get("http://edge.test/t")).await.unwrap()).contains("hit")
        );
    }
    let per = start.elapsed() / n;
    eprintln!(
        "edge host: load {:?}, hit {:?} per request ({} host)",
        host.load_time,
        per,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert!(per < Duration::from_secs(1));
}

/// `core/vectors/ring.txt` through the component: with every peer unreachable (none is
/// allowed), the component tries them in its preference order, so the first outbound
/// attempt names the owner. It must be the owner every other runtime computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_vectors_hold_inside_the_component() {
    let text = include_str!("../../../core/vectors/ring.txt");
    let mut checked = 0;
    for line in text.lines().filter(|l| l.starts_with("hrw|")) {
        let f: Vec<&str> = line.split('|').collect();
        let (peers, key, owner) = (f[1], f[2], f[3]);
        let host = EdgeHost::load(&component(), &[("peers", peers)], &[]).unwrap();
        let r = host.handle(get(&proxy_url(key))).await.unwrap();
        assert_eq!(r.status(), 502, "nothing is reachable");
        let attempts = host.attempts.lock().unwrap().clone();
        let want: http::Uri = owner.parse().unwrap();
        assert_eq!(
            attempts.first().map(String::as_str),
            want.authority().map(|a| a.as_str()),
            "{line}"
        );
        // Every peer is tried once before the origin.
        assert_eq!(attempts.len(), peers.split(',').count() + 1, "{line}");
        checked += 1;
    }
    assert!(checked >= 100, "{checked}");
}

/// `core/vectors/policy.txt` through the component, on the host's clock: the storage
/// decision (stored, or the reason in `Cache-Status: detail=`) and the reuse decision
/// `later` seconds on (hit, or why the origin was asked again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_vectors_hold_inside_the_component() {
    use larder_core::policy::vectors::{Case, T0_SECS};
    let text = include_str!("../../../core/vectors/policy.txt");
    let cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Case::parse(l).unwrap())
        .collect();
    let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(T0_SECS);
    for c in cases {
        let (status, res) = (c.status, c.res.clone());
        let origin = Origin::start(move |_, _| {
            let mut h: Vec<(String, String)> = vec![("date".into(), httpdate::fmt_http_date(t0))];
            h.extend(res.clone());
            let pairs: Vec<(&str, &str)> =
                h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Reply::ok("body", &pairs).status(status)
        })
        .await;
        let host = EdgeHost::load(
            &component(),
            &[("upstream", &origin.url(""))],
            &[origin.addr.to_string()],
        )
        .unwrap();
        let path = c.url.trim_start_matches("http://o.test");
        let mut first = http::Request::builder()
            .method(c.method.as_str())
            .uri(format!("http://edge.test{path}"));
        for (k, v) in &c.req {
            first = first.header(k.as_str(), v.as_str());
        }
        *host.clock.lock().unwrap() = Some(T0_SECS);
        let r1 = host
            .handle(first.body(Bytes::new()).unwrap())
            .await
            .unwrap();
        let cs1 = cache_status(&r1);
        let storage = if cs1.contains("; stored") {
            "stored".to_owned()
        } else if cs1.contains("fwd=method") {
            "method".to_owned()
        } else {
            cs1.split("detail=").nth(1).unwrap_or("").to_owned()
        };
        assert_eq!(storage, c.storage, "{}: {cs1}", c.name);
        if c.reuse == "-" {
            continue;
        }
        *host.clock.lock().unwrap() = Some(T0_SECS + c.later);
        let mut then = http::Request::builder()
            .method(if c.name == "head-from-get" {
                "HEAD"
            } else {
                "GET"
            })
            .uri(format!("http://edge.test{path}"));
        for (k, v) in &c.req_then {
            then = then.header(k.as_str(), v.as_str());
        }
        let cs2 = cache_status(&host.handle(then.body(Bytes::new()).unwrap()).await.unwrap());
        let reuse = if cs2.contains("; hit") {
            "fresh"
        } else if cs2.contains("fwd=vary-miss") {
            "vary-mismatch"
        } else if cs2.contains("fwd=stale") {
            "stale"
        } else {
            "other"
        };
        // The edge revalidates instead of serving stale-while-revalidate (no background work).
        let want = if c.reuse == "stale-while-revalidate" {
            "stale"
        } else {
            c.reuse.as_str()
        };
        assert_eq!(reuse, want, "{}: {cs2}", c.name);
    }
}
