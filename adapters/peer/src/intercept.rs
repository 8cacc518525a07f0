//! TLS interception (opt-in): the CA Larder signs per-host certificates with, so HTTPS
//! inside a CONNECT tunnel can be cached like absolute-form `https://` requests.
//!
//! The CA is made once, in `--data-dir` (`ca.pem`, and `ca.key` readable by its owner
//! only), and printed by `larder ca-cert` for clients to trust. Leaf certificates are
//! minted on demand for the CONNECT target's host (one key for all of them, made at start;
//! each certificate its own serial) and kept in memory. Upstream certificates are verified
//! as for any origin: interception never weakens what the client would have checked.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The CA's subject: re-created exactly to sign with, so leaves chain to the stored CA.
const CA_NAME: &str = "Larder interception CA";
/// Leaf certificates kept at most (minting one is a signature: cheap, but not free).
const LEAVES_MAX: usize = 4096;

pub struct Authority {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
    serial: AtomicU64,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "Larder");
    p.distinguished_name = dn;
    // It signs leaves only, never another CA.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Writes `bytes` to `path`, readable by its owner only when `secret`.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The CA's files in `dir`.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

impl Authority {
    /// The CA in `dir`, made there first if it is not (the directory too).
    pub fn load_or_create(dir: &Path) -> Result<Authority, String> {
        let (cert_path, key_path) = ca_files(dir);
        let at = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        if !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| at(dir, e))?;
            let key = KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params = ca_params();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            params.serial_number = Some(SerialNumber::from(now.unix_timestamp() as u64));
            let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
            write_new(&key_path, key.serialize_pem().as_bytes(), true)
                .map_err(|e| at(&key_path, e))?;
            write_new(&cert_path, cert.pem().as_bytes(), false).map_err(|e| at(&cert_path, e))?;
            tracing::info!(
                ca = %cert_path.display(),
                "made the interception CA: clients must trust it (larder ca-cert prints it)"
            );
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| at(&key_path, e))?;
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(|e| at(&cert_path, e))?;
        let issuer_key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{}: not a private key: {e}", key_path.display()))?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| format!("{}: not a certificate: {e}", cert_path.display()))?;
        // The same subject and key as the stored CA: what a leaf names as its issuer (and
        // its key identifier) is the stored CA's.
        let issuer = ca_params()
            .self_signed(&issuer_key)
            .map_err(|e| e.to_string())?;
        let leaf_key = KeyPair::generate().map_err(|e| e.to_string())?;
        Ok(Authority {
            ca_pem,
            ca_der,
            issuer,
            issuer_key,
            leaf_key,
            leaves: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
        })
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A TLS server configuration presenting a certificate for `host` (a name or an IP
    /// address), made on first use. ALPN offers HTTP/1.1 only.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Some(c) = self.lock().get(&host) {
            return Ok(c.clone());
        }
        let leaf = self.mint(&host)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![leaf, self.ca_der.clone()], key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.lock();
        if leaves.len() >= LEAVES_MAX {
            leaves.clear();
        }
        leaves.insert(host, config.clone());
        Ok(config)
    }

    /// A leaf certificate for `host` (lower-case, no brackets), signed by the CA.
    fn mint(&self, host: &str) -> Result<CertificateDer<'static>, String> {
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, host);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        // Unique per certificate (browsers refuse two certificates with one serial).
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut serial = now.unix_timestamp_nanos().to_be_bytes().to_vec();
        serial.extend_from_slice(&n.to_be_bytes());
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer, &self.issuer_key)
            .map_err(|e| e.to_string())?;
        Ok(leaf.der().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServerConfig>>> {
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which CONNECT targets are intercepted: all (`--intercept`) or those matching a
/// `--intercept-host` pattern (`host`, or `*.domain` for its subdomains), case-insensitive.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub all: bool,
    pub hosts: Vec<String>,
}

impl Targets {
    pub fn any(&self) -> bool {
        self.all || !self.hosts.is_empty()
    }

    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|p| match p.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => *p == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let t = Targets {
            all: false,
            hosts: vec!["files.example.org".into(), "*.pkg.test".into()],
        };
        assert!(t.matches("files.example.org") && t.matches("FILES.example.org."));
        assert!(t.matches("a.pkg.test") && t.matches("a.b.pkg.test"));
        assert!(!t.matches("pkg.test") && !t.matches("xpkg.test") && !t.matches("example.org"));
    }

    #[test]
    fn the_ca_is_made_once_with_a_private_key_and_signs_leaves_it_verifies() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = std::env::temp_dir().join(format!("larder-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Authority::load_or_create(&dir).unwrap();
        assert_eq!(a.ca_pem(), again.ca_pem(), "made once, then loaded");
        // A leaf from the reloaded CA verifies against the stored CA certificate.
        let config = again.server_config("files.example.org").unwrap();
        assert!(Arc::ptr_eq(
            &config,
            &again.server_config("FILES.example.org").unwrap()
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(a.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for host in ["files.example.org", "127.0.0.1"] {
            let leaf = again.mint(host).unwrap();
            let name = rustls_pki_types::ServerName::try_from(host).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            // And for no other name.
            let other = rustls_pki_types::ServerName::try_from("other.example.org").unwrap();
            assert!(
                verifier
                    .verify_server_cert(&leaf, &[], &other, &[], now)
                    .is_err()
            );
        }
        // Two leaves never share a serial number.
        assert_ne!(again.mint("a.test").unwrap(), again.mint("a.test").unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
