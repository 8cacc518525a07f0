//! Upstream TLS trusts the system's store by default: a private CA installed there (here
//! named by `SSL_CERT_FILE`, as OpenSSL and curl honour it) is trusted without --ca-file.
//! Its own test binary with one test: the store is read once per process, and the
//! variable is set before any other thread exists.

use larder_tests::{Origin, Reply, get, peer, pki};

#[test]
fn a_ca_in_the_system_store_is_trusted() {
    let pki = pki();
    let ca = std::env::temp_dir().join(format!("larder-system-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // SAFETY: `set_var` is unsound only with another thread reading the environment at the
    // same time. This binary runs this one test; the harness read its own variables before
    // starting it and only waits for it, and the runtime (the first thread of ours) is
    // built after this line.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let origin = Origin::start_tls(pki.server.clone(), |_, _| {
            Reply::ok("trusted", &[("cache-control", "max-age=60")])
        })
        .await;
        let p = peer(|_| {}).await;
        let r = get(
            p.addr,
            &format!("https://localhost:{}/s", origin.addr.port()),
        )
        .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "trusted"),
            "{}",
            r.cache_status()
        );
    });
    std::fs::remove_file(ca).ok();
}
