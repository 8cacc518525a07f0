//! HTTPS origins through the forward door: Larder opens TLS itself, verifies the
//! certificate against the CA given with --ca-file, and caches the content.

use larder_tests::{Origin, Reply, get, peer};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Larder test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

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
        r.cache_status().contains("origin-unreachable"),
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
