//! Issue 12 (4): admin freshness rules and presets on a package-archive layout whose files
//! carry no cache headers (as archives commonly serve them).

use larder_tests::{Origin, Reply, get, peer};

/// `--preset debian`: pool files without any freshness or validator are cached and served
/// as hits; the release file is revalidated on every use (304 when unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_preset_caches_pool_files_and_revalidates_indexes() {
    const LM: &str = "Sat, 01 Jan 2022 00:00:00 GMT";
    let origin = Origin::start(|seen, _| {
        if seen.uri.ends_with("/InRelease") {
            if seen
                .headers
                .get("if-modified-since")
                .is_some_and(|v| v == LM)
            {
                return Reply::ok("", &[("last-modified", LM)]).status(304);
            }
            return Reply::ok("release", &[("last-modified", LM)]);
        }
        // No Cache-Control, no Expires, no validator.
        Reply::ok("deb bytes", &[])
    })
    .await;
    let plain = peer(|_| {}).await;
    let deb = origin.url("/debian/pool/main/h/hello/hello_2.10-3_amd64.deb");
    get(plain.addr, &deb).await;
    let r = get(plain.addr, &deb).await;
    assert!(
        !r.is_hit(),
        "without a rule it cannot be reused: {}",
        r.cache_status()
    );
    let before = origin.hits();

    let p = peer(|a| a.preset = vec!["debian".into()]).await;
    let first = get(p.addr, &deb).await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    // A reload (no-cache) of an immutable file is still a hit.
    let reload = larder_tests::send(p.addr, "GET", &deb, &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert!(reload.is_hit(), "{}", reload.cache_status());
    assert_eq!(reload.text(), "deb bytes");
    assert_eq!(origin.hits(), before + 1);

    let release = origin.url("/debian/dists/stable/InRelease");
    let a = get(p.addr, &release).await;
    assert!(a.cache_status().contains("stored"), "{}", a.cache_status());
    let b = get(p.addr, &release).await;
    assert!(
        b.cache_status().contains("fwd-status=304"),
        "{}",
        b.cache_status()
    );
    assert_eq!(b.text(), "release");
}

/// `--min-ttl` raises short lifetimes (squid's meaning), it no longer refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ttl_is_a_floor() {
    let origin = Origin::start(|_, _| Reply::ok("page", &[("cache-control", "max-age=0")])).await;
    let p = peer(|a| a.min_ttl = Some("1h".into())).await;
    let url = origin.url("/page");
    let a = get(p.addr, &url).await;
    assert!(a.cache_status().contains("stored"), "{}", a.cache_status());
    let b = get(p.addr, &url).await;
    assert!(b.is_hit(), "{}", b.cache_status());
    assert!(b.cache_status().contains("ttl=3599") || b.cache_status().contains("ttl=3600"));
    assert_eq!(origin.hits(), 1);
}
