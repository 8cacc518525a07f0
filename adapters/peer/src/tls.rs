//! TLS to origins: rustls with certificate verification always on, trusting the system's
//! store (so a private CA or a TLS-inspecting gateway's CA installed there works as it
//! does for curl), plus any CA files the operator names. The bundled public roots stand in
//! only where the system has no store at all.

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Where the trusted roots come from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// The system store (this many certificates).
    System(usize),
    /// No usable system store: the bundled public roots.
    Bundled,
}

/// The system's trusted roots, read once per process (`SSL_CERT_FILE` / `SSL_CERT_DIR`
/// are honoured, as by OpenSSL).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("system trust store: {e}");
        }
        found.certs
    })
}

/// The roots upstream TLS trusts, and where they came from.
pub fn roots(extra_cas: &[PathBuf]) -> Result<(RootCertStore, Roots), String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
    let source = if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Roots::Bundled
    } else {
        Roots::System(added)
    };
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
    Ok((roots, source))
}

pub fn client_config(extra_cas: &[PathBuf]) -> Result<rustls::ClientConfig, String> {
    let (roots, _) = roots(extra_cas)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
