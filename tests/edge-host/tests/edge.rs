//! The real Spin component (built for wasm32-wasip2) running in wasmtime with WASI HTTP p3,
//! against a real origin and real native peers on loopback.

use bytes::Bytes;
use larder_core::CacheKey;
use larder_core::ring::{PeerSelection, RingKind};
use larder_core::storage::entry::{self, Meta};
use larder_edge_host::{EdgeHost, SPIN_HEADERS};
use larder_tests::{Origin, Reply};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The component's largest stored body (`larder_spin::MAX_ENTRY`).
const MAX_ENTRY: usize = 1 << 20;

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

/// The component with `origin` as its mirror upstream (and the only allowed destination).
fn mirror_of(origin: &Origin) -> EdgeHost {
    EdgeHost::load(
        &component(),
        &[("upstream", &origin.url(""))],
        &[origin.addr.to_string()],
    )
    .unwrap()
}

/// The key-value store as the component keeps it: `ix:<key>` lists (key, record names) and
/// `e:<id>` records (name, decoded metadata, body). Every record must decode.
struct Kv {
    indexes: Vec<(String, Vec<String>)>,
    records: Vec<(String, Meta, Bytes)>,
}

fn kv(host: &EdgeHost) -> Kv {
    let map = host.kv.lock().unwrap();
    let mut out = Kv {
        indexes: Vec::new(),
        records: Vec::new(),
    };
    for (k, v) in map.iter() {
        if let Some(key) = k.strip_prefix("ix:") {
            let names = String::from_utf8(v.clone())
                .unwrap()
                .lines()
                .map(|l| l.split(' ').next().unwrap().to_owned())
                .collect();
            out.indexes.push((key.to_owned(), names));
        } else if let Some(name) = k.strip_prefix("e:") {
            let (meta, body) = entry::decode(&Bytes::from(v.clone())).expect("a whole record");
            out.records
                .push((name.to_owned(), Meta::decode(&meta).unwrap(), body));
        } else {
            panic!("unexpected key-value key {k}");
        }
    }
    out.indexes.sort();
    out.records.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Kv {
    /// Record names listed for `key` (sorted).
    fn listed(&self, key: &str) -> Vec<String> {
        let mut names = self
            .indexes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn names(&self) -> Vec<String> {
        self.records.iter().map(|r| r.0.clone()).collect()
    }
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
    // One record in the core's entry format, listed under its key.
    let kv = kv(&host);
    let key = origin.url("/doc?x=1");
    assert_eq!(kv.records.len(), 1);
    assert_eq!(kv.listed(&key), kv.names());
    let (_, meta, body) = &kv.records[0];
    assert_eq!(meta.key.as_str(), key);
    assert_eq!(body.as_ref(), b"from the edge");
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
    assert_eq!(kv(&host).records.len(), 1, "the GET is stored");
    for (k, v) in host.kv.lock().unwrap().iter() {
        let value = String::from_utf8_lossy(v);
        for name in SPIN_HEADERS {
            assert!(!value.contains(name), "{name} stored in {k}: {value}");
        }
        assert!(!value.contains("127.0.0.1:54321"), "{k}: {value}");
    }
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
    // The peer's received-by is its host:port (RFC 9110 §7.6.3).
    let by = format!("1.1 {}", url.trim_start_matches("http://"));
    assert!(via.contains(&by), "answered by the peer: {via}");
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
    let by = format!("1.1 {}", owner.trim_start_matches("http://"));
    assert!(
        via.contains(&by),
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

/// `core/vectors/ring.txt` through the component, for both ring kinds (the `ring` variable):
/// with every peer unreachable (none is allowed), the component tries them in its preference
/// order, so the first outbound attempt names the owner. It must be the owner every other
/// runtime computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_vectors_hold_inside_the_component() {
    let text = include_str!("../../../core/vectors/ring.txt");
    let mut checked = [0, 0];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('|').collect();
        let (scheme, peers, key, owner) = (f[0], f[1], f[2], f[3]);
        let (ring, i) = match scheme {
            "hrw" => ("rendezvous", 0),
            "groupcache" => ("groupcache", 1),
            _ => panic!("unknown scheme in {line}"),
        };
        let host = EdgeHost::load(&component(), &[("peers", peers), ("ring", ring)], &[]).unwrap();
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
        checked[i] += 1;
    }
    assert!(checked[0] >= 100 && checked[1] >= 100, "{checked:?}");
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
        } else if cs1.contains("detail=origin-unsolicited-206") {
            // The engine refuses a 206 to a request without Range before the policy judges
            // it (a 502, nothing stored): the policy's "status" one step earlier.
            "status".to_owned()
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
        let reuse = if cs2.contains("detail=stale-while-revalidate") {
            "stale-while-revalidate"
        } else if cs2.contains("; hit") {
            "fresh"
        } else if cs2.contains("fwd=vary-miss") {
            "vary-mismatch"
        } else if cs2.contains("fwd=stale") || cs2.contains("fwd=request") {
            // Stored but not reusable without validation; the engine names it `request` when
            // the request asked for that (no-cache, max-age=0), `stale` when the entry aged.
            "stale"
        } else {
            "other"
        };
        assert_eq!(reuse, c.reuse, "{}: {cs2}", c.name);
    }
}

// ---- the engine's scenarios at the edge ----------------------------------------------------
//
// A shared subset of `core/tests/scenarios.rs`, `storage.rs` and `hardening.rs` (same names,
// same assertions), run through the real component: the edge has no orchestration of its own,
// so what the engine does in simulation it does here, with Spin key-value as its disk tier.

fn fresh(body: &str) -> Reply {
    Reply::ok(body.to_owned(), &[("cache-control", "max-age=60")])
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> http::Request<Bytes> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::new()).unwrap()
}

fn request(method: &str, url: &str) -> http::Request<Bytes> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(Bytes::from_static(b"payload"))
        .unwrap()
}

fn text(r: &http::Response<Bytes>) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

/// Two Vary variants of one URL are two entries: both are hits on the second round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vary_variants_are_kept() {
    let origin = Origin::start(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            format!("text in {lang}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    })
    .await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/v";
    let en = host
        .handle(get_with(url, &[("accept-language", "en")]))
        .await
        .unwrap();
    assert_eq!(text(&en), "text in en");
    let de = host
        .handle(get_with(url, &[("accept-language", "de")]))
        .await
        .unwrap();
    assert!(
        cache_status(&de).contains("fwd=vary-miss"),
        "{}",
        cache_status(&de)
    );
    for lang in ["en", "de"] {
        let r = host
            .handle(get_with(url, &[("accept-language", lang)]))
            .await
            .unwrap();
        assert_eq!(text(&r), format!("text in {lang}"));
        assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    }
    assert_eq!(origin.hits(), 2);
    let kv = kv(&host);
    assert_eq!(kv.records.len(), 2, "one record per variant");
    assert_eq!(kv.listed(&origin.url("/v")), kv.names());
}

/// Unsafe methods pass through (with their body) and, on success, invalidate the stored GET:
/// its records leave the key-value store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_and_pass() {
    let origin = Origin::start(|_, _| fresh("v")).await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/u";
    host.handle(get(url)).await.unwrap();
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        assert!(
            cache_status(&host.handle(get(url)).await.unwrap()).contains("hit"),
            "{m}: stored before"
        );
        let r = host.handle(request(m, url)).await.unwrap();
        assert_eq!(r.status(), 200, "{m}: {}", text(&r));
        assert!(
            cache_status(&r).contains("fwd=method"),
            "{m} passes through"
        );
        assert!(kv(&host).records.is_empty(), "{m}: the record is deleted");
        assert!(kv(&host).indexes.is_empty(), "{m}: and its index with it");
        let r = host.handle(get(url)).await.unwrap();
        assert!(
            cache_status(&r).contains("uri-miss"),
            "{m}: {}",
            cache_status(&r)
        );
    }
    let passed: Vec<(String, String)> = origin
        .seen()
        .iter()
        .filter(|s| s.method != "GET")
        .map(|s| (s.method.clone(), s.uri.clone()))
        .collect();
    assert_eq!(passed.len(), 4, "{passed:?}");
}

/// A successful unsafe request invalidates its target and the same-origin `Location` and
/// `Content-Location` URLs of its answer; other origins are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_and_content_location_are_invalidated() {
    let elsewhere = Origin::start(|_, _| fresh("elsewhere")).await;
    let third = Arc::new(std::sync::OnceLock::<String>::new());
    let t = third.clone();
    let origin = Origin::start(move |seen, _| {
        if seen.method == "POST" {
            Reply::ok(
                "",
                &[
                    ("location", "/other"),
                    ("content-location", t.get().unwrap().as_str()),
                ],
            )
            .status(201)
        } else {
            fresh("x")
        }
    })
    .await;
    third.set(origin.url("/third")).unwrap();
    let host = EdgeHost::load(
        &component(),
        &[],
        &[origin.addr.to_string(), elsewhere.addr.to_string()],
    )
    .unwrap();
    let targets: Vec<String> = ["/a", "/other", "/third"]
        .iter()
        .map(|p| origin.url(p))
        .collect();
    for t in &targets {
        host.handle(get(&proxy_url(t))).await.unwrap();
    }
    host.handle(get(&proxy_url(&elsewhere.url("/other"))))
        .await
        .unwrap();
    assert_eq!(kv(&host).records.len(), 4);
    let r = host
        .handle(request("POST", &proxy_url(&targets[0])))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for t in &targets {
        let r = host.handle(get(&proxy_url(t))).await.unwrap();
        assert!(
            cache_status(&r).contains("uri-miss"),
            "{t}: {}",
            cache_status(&r)
        );
    }
    let r = host
        .handle(get(&proxy_url(&elsewhere.url("/other"))))
        .await
        .unwrap();
    assert!(cache_status(&r).contains("hit"), "other origins untouched");
}

/// An origin answering an unconditional fill with 304, or a fill without Range with 206,
/// misbehaves: the client never asked for either. It gets a 502 that says why (never the
/// 304 relayed to a plain GET); nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_304_and_206_from_the_origin_are_502() {
    for status in [304, 206] {
        let origin = Origin::start(move |_, _| {
            Reply::ok(
                "part",
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-3/10"),
                ],
            )
            .status(status)
        })
        .await;
        let host = mirror_of(&origin);
        let r = host.handle(get("http://edge.test/u")).await.unwrap();
        assert_eq!(r.status(), 502, "{status}: {}", cache_status(&r));
        assert!(
            cache_status(&r).contains("detail=origin-unsolicited"),
            "{}",
            cache_status(&r)
        );
        assert!(host.kv.lock().unwrap().is_empty());
    }
}

/// A peer that refuses the edge (401) or sees a loop (508) has not answered: the next choice
/// is asked, then the edge serves the request itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answering_401_or_508_is_skipped() {
    let refusing = Origin::start(|_, _| Reply::ok("no", &[]).status(401)).await;
    let looping = Origin::start(|_, _| Reply::ok("loop", &[]).status(508)).await;
    let origin = Origin::start(|_, _| fresh("from the origin")).await;
    let peers = format!("{},{}", refusing.url(""), looping.url(""));
    let host = EdgeHost::load(
        &component(),
        &[("peers", &peers)],
        &[
            refusing.addr.to_string(),
            looping.addr.to_string(),
            origin.addr.to_string(),
        ],
    )
    .unwrap();
    let target = origin.url("/p");
    let r = host.handle(get(&proxy_url(&target))).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), text(&r).as_str()),
        (200, "from the origin")
    );
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!((refusing.hits(), looping.hits(), origin.hits()), (1, 1, 1));
    // Both peers are asked first every time; then the edge's own store answers.
    let r = host.handle(get(&proxy_url(&target))).await.unwrap();
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert_eq!((refusing.hits(), looping.hits(), origin.hits()), (2, 2, 1));
}

/// Within the stale-while-revalidate window the stale response is served as it is, and the
/// revalidation runs after it within the same request (the body closes once it is stored):
/// the next request gets the new version, fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    const T0: u64 = 1_700_000_000;
    let origin = Origin::start(|_, n| {
        let (body, at) = if n >= 1 {
            ("new", T0 + 20)
        } else {
            ("old", T0)
        };
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(at));
        Reply::ok(
            body,
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=60"),
                ("etag", &format!("\"{n}\"")),
                ("date", &date),
            ],
        )
    })
    .await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/swr";
    *host.clock.lock().unwrap() = Some(T0);
    host.handle(get(url)).await.unwrap();
    *host.clock.lock().unwrap() = Some(T0 + 20);
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!(text(&r), "old", "answered from the stale entry");
    assert!(
        cache_status(&r).contains("stale-while-revalidate"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(origin.hits(), 2, "revalidated behind the answer");
    assert!(
        origin.seen()[1].headers.contains_key("if-none-match"),
        "a conditional revalidation"
    );
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!(text(&r), "new");
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert_eq!(
        kv(&host).records.len(),
        1,
        "the new version replaced the old"
    );
}

/// A record whose bytes no longer match its checksums (one flipped byte) is a miss: the
/// object is fetched again, and the corrupt record is deleted and unlisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_a_miss_that_deletes_and_refetches_it() {
    let origin = Origin::start(|_, n| fresh(&format!("version {n}"))).await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/c";
    assert_eq!(text(&host.handle(get(url)).await.unwrap()), "version 0");
    let old = kv(&host).names();
    assert_eq!(old.len(), 1);
    {
        let mut map = host.kv.lock().unwrap();
        let rec = map.get_mut(&format!("e:{}", old[0])).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 1;
        assert!(entry::decode(&Bytes::from(rec.clone())).is_err());
    }
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!(text(&r), "version 1", "refetched, never the corrupt bytes");
    let kv = kv(&host);
    assert!(
        !kv.names().contains(&old[0]),
        "the corrupt record was deleted"
    );
    assert_eq!(kv.records.len(), 1);
    assert_eq!(kv.listed(&origin.url("/c")), kv.names(), "and unlisted");
    assert_eq!(origin.hits(), 2);
}

/// An object larger than the largest entry streams through whole and is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_objects_stream_through_unstored() {
    let big: Bytes = (0..MAX_ENTRY + 1).map(|i| (i % 251) as u8).collect();
    let b = big.clone();
    let origin = Origin::start(move |_, _| {
        Reply::ok(b.clone(), &[("cache-control", "max-age=60")]).throttle(64 * 1024, Duration::ZERO)
    })
    .await;
    let host = mirror_of(&origin);
    for round in 0..2 {
        let r = host.handle(get("http://edge.test/big")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.body() == &big, "round {round}: the whole body");
        assert!(
            cache_status(&r).contains("detail=too-large"),
            "{}",
            cache_status(&r)
        );
        assert!(host.kv.lock().unwrap().is_empty());
    }
    assert_eq!(origin.hits(), 2);
}

/// A body that ends early reaches the client broken, never short and looking whole, and is
/// never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_aborts_and_is_never_stored() {
    let origin = Origin::start(|_, n| {
        if n == 0 {
            fresh("a body that will be cut").cut_after(5)
        } else {
            fresh("whole")
        }
    })
    .await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/t";
    let cut = host.handle(get(url)).await;
    assert!(
        cut.is_err(),
        "the body fails (the host sees an error, not an end): {cut:?}"
    );
    assert!(host.kv.lock().unwrap().is_empty());
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!(text(&r), "whole");
    assert!(
        cache_status(&r).contains("uri-miss"),
        "{}",
        cache_status(&r)
    );
}

/// Traffic marked as coming from a peer (`larder-hop`) is served here without forwarding
/// only with a valid signature; without `peer_secret` the edge refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_traffic_needs_a_valid_signature() {
    use larder_core::hop;
    let origin = Origin::start(|_, _| fresh("served here")).await;
    let target = origin.url("/h");
    let marked = |auth: Option<String>| {
        let mut b = http::Request::get(proxy_url(&target)).header(hop::HOP, "peer-a");
        if let Some(a) = auth {
            b = b.header(hop::AUTH, a);
        }
        b.body(Bytes::new()).unwrap()
    };
    // No secret at the edge: refused, whatever the request says.
    let open = EdgeHost::load(&component(), &[], &[origin.addr.to_string()]).unwrap();
    let r = open.handle(marked(None)).await.unwrap();
    assert_eq!(r.status(), 401, "{}", text(&r));
    assert_eq!(origin.hits(), 0);
    // With a secret, and a peer that no request may reach: a bad signature is refused, a
    // good one is served here (never forwarded again).
    let host = EdgeHost::load(
        &component(),
        &[("peer_secret", "s3cret"), ("peers", "http://127.0.0.1:9")],
        &[origin.addr.to_string()],
    )
    .unwrap();
    let r = host
        .handle(marked(Some("t=1,n=1,sig=00".into())))
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", text(&r));
    let mut signed = http::HeaderMap::new();
    signed.insert(hop::HOP, http::HeaderValue::from_static("peer-a"));
    let auth = hop::sign(
        "s3cret",
        7,
        &http::Method::GET,
        &target,
        &signed,
        SystemTime::now(),
    );
    let r = host.handle(marked(Some(auth))).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), text(&r).as_str()),
        (200, "served here")
    );
    assert_eq!(
        host.attempts.lock().unwrap().clone(),
        [origin.addr.to_string()],
        "the origin only: peer traffic is not forwarded again"
    );
}

/// A 304 to a revalidation freshens the stored entry: the next request within the new
/// lifetime is a hit, without asking the origin again. Each edge request is a new engine,
/// so this holds only because the refresh reaches key-value (`Output::UpdateMeta`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_304_freshens_the_entry() {
    const T0: u64 = 1_700_000_000;
    let origin = Origin::start(|seen, n| {
        let date = httpdate::fmt_http_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 20 * n as u64),
        );
        if n >= 1 {
            assert_eq!(seen.headers.get("if-none-match").unwrap(), "\"v1\"");
            Reply::ok(
                "",
                &[
                    ("cache-control", "max-age=100"),
                    ("etag", "\"v1\""),
                    ("date", &date),
                ],
            )
            .status(304)
        } else {
            Reply::ok(
                "body",
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("x-gen", "1"),
                    ("date", &date),
                ],
            )
        }
    })
    .await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/r";
    *host.clock.lock().unwrap() = Some(T0);
    host.handle(get(url)).await.unwrap();
    *host.clock.lock().unwrap() = Some(T0 + 20);
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!((r.status().as_u16(), text(&r).as_str()), (200, "body"));
    assert!(
        cache_status(&r).contains("fwd=stale") && cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(
        r.headers().get("x-gen").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    *host.clock.lock().unwrap() = Some(T0 + 70);
    let r = host.handle(get(url)).await.unwrap();
    assert!(
        cache_status(&r).contains("hit"),
        "freshened for 100 s: {}",
        cache_status(&r)
    );
    assert_eq!(origin.hits(), 2);
}

/// With the origin unreachable, a stale entry inside its stale-if-error window is served;
/// beyond it the error shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_stale_when_origin_fails() {
    const T0: u64 = 1_700_000_000;
    let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(T0));
    let origin = Origin::start(move |_, _| {
        Reply::ok(
            "keep me",
            &[
                ("cache-control", "max-age=10, stale-if-error=300"),
                ("etag", "\"a\""),
                ("date", &date),
            ],
        )
    })
    .await;
    let host = mirror_of(&origin);
    let url = "http://edge.test/sie";
    *host.clock.lock().unwrap() = Some(T0);
    host.handle(get(url)).await.unwrap();
    origin.stop();
    *host.clock.lock().unwrap() = Some(T0 + 60);
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!((r.status().as_u16(), text(&r).as_str()), (200, "keep me"));
    assert!(
        cache_status(&r).contains("stale-if-error"),
        "{}",
        cache_status(&r)
    );
    // Beyond the window the error shows.
    *host.clock.lock().unwrap() = Some(T0 + 460);
    let r = host.handle(get(url)).await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        cache_status(&r).contains("origin-unreachable"),
        "{}",
        cache_status(&r)
    );
}
