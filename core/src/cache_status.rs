//! The RFC 9211 `Cache-Status` header: how this cache handled a request.

use core::fmt::{self, Write};

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// The cache was configured not to handle this request (method, passthrough, hit-for-miss).
    Bypass,
    /// The request method cannot be served from cache.
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// Stored, but for another variant.
    VaryMiss,
    /// Stored, but stale.
    Stale,
    /// Stored, but the request asked for validation (`no-cache`, `max-age=0`, ...).
    Request,
    /// Sent to a peer that owns the key.
    Miss,
}

impl Fwd {
    pub fn as_str(&self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Miss => "miss",
        }
    }
}

/// One `Cache-Status` entry for this cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    /// Remaining freshness in seconds (negative when served stale).
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
}

/// The cache's name in the header.
pub const CACHE_NAME: &str = "larder";

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    pub fn fwd(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The header value, e.g. `larder; fwd=uri-miss; stored`.
    pub fn to_header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(&self.to_string()).expect("Cache-Status is ASCII")
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CACHE_NAME)?;
        if self.hit {
            f.write_str("; hit")?;
        }
        if let Some(fwd) = self.fwd {
            write!(f, "; fwd={}", fwd.as_str())?;
        }
        if let Some(s) = self.fwd_status {
            write!(f, "; fwd-status={s}")?;
        }
        if self.stored {
            f.write_str("; stored")?;
        }
        if self.collapsed {
            f.write_str("; collapsed")?;
        }
        if let Some(t) = self.ttl {
            write!(f, "; ttl={t}")?;
        }
        if let Some(d) = self.detail {
            f.write_str("; detail=")?;
            // A token when it is one, else a quoted string (RFC 8941).
            if d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
                && !d.is_empty()
            {
                f.write_str(d)?;
            } else {
                f.write_char('"')?;
                f.write_str(&d.replace('\\', "\\\\").replace('"', "\\\""))?;
                f.write_char('"')?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc9211_parameters() {
        assert_eq!(CacheStatus::hit(42).to_string(), "larder; hit; ttl=42");
        let mut s = CacheStatus::fwd(Fwd::Stale);
        s.fwd_status = Some(304);
        s.stored = true;
        s.collapsed = true;
        assert_eq!(
            s.to_string(),
            "larder; fwd=stale; fwd-status=304; stored; collapsed"
        );
        assert_eq!(
            CacheStatus::fwd(Fwd::UriMiss)
                .with_detail("no-store")
                .to_string(),
            "larder; fwd=uri-miss; detail=no-store"
        );
        assert_eq!(
            CacheStatus::fwd(Fwd::Bypass)
                .with_detail("origin error")
                .to_string(),
            "larder; fwd=bypass; detail=\"origin error\""
        );
    }
}
