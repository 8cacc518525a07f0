//! Why an upstream connection failed, told apart from the error's chain of causes, so the
//! client (`Cache-Status: ...; detail=`, the 502 body) and the log say what went wrong:
//! an unresolvable name, a refused port, an untrusted certificate ... not "unreachable".

use larder_core::engine::UpstreamError;
use rustls::CertificateError;
use std::error::Error;

/// A name that does not resolve (marks the lookup's own I/O error).
#[derive(Debug)]
pub struct DnsFailed {
    pub host: String,
    pub error: std::io::Error,
}

impl std::fmt::Display for DnsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot resolve {}: {}", self.host, self.error)
    }
}

impl Error for DnsFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

/// The most telling cause in `e`'s chain.
pub fn classify(e: &(dyn Error + 'static)) -> UpstreamError {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<crate::guard::NotAllowed>().is_some() {
            return UpstreamError::DestinationNotAllowed;
        }
        if c.downcast_ref::<DnsFailed>().is_some() {
            return UpstreamError::DnsNotFound;
        }
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    UpstreamError::TlsUntrustedIssuer
                }
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => UpstreamError::TlsNameMismatch,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. },
                ) => UpstreamError::TlsExpired,
                _ => UpstreamError::Tls,
            };
        }
        // An io::Error's `source()` skips the error it wraps (tokio-rustls wraps rustls's
        // that way): look inside it first.
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return UpstreamError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return UpstreamError::Timeout,
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn Error + 'static));
                continue;
            }
        }
        cur = c.source();
    }
    UpstreamError::Connect
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn the_telling_cause_wins_however_deep() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let boxed: Box<dyn Error + Send + Sync> = Box::new(tls);
        assert_eq!(classify(&*boxed), UpstreamError::TlsUntrustedIssuer);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), UpstreamError::ConnectionRefused);
        let dns = DnsFailed {
            host: "nowhere.invalid".into(),
            error: io::Error::other("failed to lookup address information"),
        };
        assert_eq!(classify(&dns), UpstreamError::DnsNotFound);
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert_eq!(classify(&name), UpstreamError::TlsNameMismatch);
        let other = io::Error::other("reset");
        assert_eq!(classify(&other), UpstreamError::Connect);
    }
}
