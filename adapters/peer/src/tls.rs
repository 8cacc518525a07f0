//! TLS to origins: rustls with certificate verification on, the public web roots, plus
//! any CA files the operator names (private PKI, tests).

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;

pub fn client_config(extra_cas: &[PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_cas {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in CA file {}", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
