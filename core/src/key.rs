//! The normalized cache key.
//!
//! Two spellings of one resource must land on one owner and one entry, so the key is the
//! absolute URI with the parts that do not change the resource normalized: scheme and host
//! lower-cased, the default port dropped, an empty path written as `/`, the fragment dropped.
//! Path and query are kept exactly as sent: `%2F` vs `/` or parameter order *can* name
//! different resources, and guessing otherwise would serve one resource for another.

use core::fmt;
use http::Uri;

/// A normalized absolute URI, e.g. `http://example.test/a?b=1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Box<str>);

/// What separates an object's key from a segment index in a segment's key.
const SEGMENT_MARK: &str = "#seg=";

/// One Range segment of an object: the typed form of a segment's [`CacheKey`], whose string
/// form (`<object>#seg=<index>`) is what the store indexes and the tiers persist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    /// The whole object's key.
    pub object: CacheKey,
    /// Which segment: bytes `index * size ..` of the object.
    pub index: u64,
}

impl SegmentKey {
    /// The key the store indexes this segment under.
    pub fn key(&self) -> CacheKey {
        CacheKey(format!("{}{SEGMENT_MARK}{}", self.object.0, self.index).into_boxed_str())
    }
}

/// Why a URI cannot be a cache key.
///
/// `#[non_exhaustive]`: stricter checks may add reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Origin-form (`/path`) without a scheme and host: the adapter must make it absolute first.
    NotAbsolute,
    /// Only `http` and `https` are proxied.
    UnsupportedScheme,
    /// The port is not a number from 1 to 65535 (`http://h:99999/` is not port 80).
    BadPort,
    /// No host (`http://:80/`): nothing to connect to, and no URI to key on.
    EmptyHost,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::NotAbsolute => "request target is not an absolute http(s) URI",
            KeyError::UnsupportedScheme => "only http and https URIs can be proxied",
            KeyError::BadPort => "the port must be a number from 1 to 65535",
            KeyError::EmptyHost => "the request target has no host",
        })
    }
}

impl std::error::Error for KeyError {}

/// The port an authority names: `None` when it names none (or an empty one, RFC 3986 §3.2.3),
/// `BadPort` when the text after the host is not a port in 1..=65535. (`Authority::port_u16`
/// says `None` for both `h` and `h:99999`, which would make the second port 80.)
pub fn port(authority: &http::uri::Authority) -> Result<Option<u16>, KeyError> {
    // Bytes, from the end (this runs for every request): after any userinfo, the host is
    // a bracketed IPv6 literal (then only nothing or `:port` may follow its `]`), or a name
    // or IPv4 address that ends at the last `:`.
    let s = authority.as_str().as_bytes();
    let hostport = &s[s.iter().rposition(|&b| b == b'@').map_or(0, |i| i + 1)..];
    let after_host = if hostport.first() == Some(&b'[') {
        match hostport.iter().rposition(|&b| b == b']') {
            Some(end) => &hostport[end + 1..],
            None => return Err(KeyError::BadPort),
        }
    } else {
        match hostport.iter().rposition(|&b| b == b':') {
            Some(colon) => &hostport[colon..],
            None => return Ok(None),
        }
    };
    let digits = match after_host {
        [] | [b':'] => return Ok(None),
        [b':', digits @ ..] => digits,
        _ => return Err(KeyError::BadPort),
    };
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(KeyError::BadPort);
    }
    let port = digits
        .iter()
        .fold(0u32, |p, d| p * 10 + u32::from(d - b'0'));
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => Err(KeyError::BadPort),
    }
}

/// The port a URI connects to: its own, else its scheme's default (443 for https, else 80);
/// `BadPort` for one that does not parse, never a default in its place.
pub fn port_or_default(uri: &Uri) -> Result<u16, KeyError> {
    let default = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    };
    Ok(uri
        .authority()
        .map(port)
        .transpose()?
        .flatten()
        .unwrap_or(default))
}

impl CacheKey {
    /// Normalizes an absolute URI.
    pub fn from_uri(uri: &Uri) -> Result<Self, KeyError> {
        let scheme = uri.scheme_str().ok_or(KeyError::NotAbsolute)?;
        let authority = uri.authority().ok_or(KeyError::NotAbsolute)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(KeyError::UnsupportedScheme),
        };
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(KeyError::EmptyHost);
        }
        let pq_len = uri.path_and_query().map_or(1, |p| p.as_str().len());
        let mut out = String::with_capacity(scheme.len() + 3 + authority.as_str().len() + pq_len);
        out.push_str(&scheme);
        out.push_str("://");
        out.push_str(&host);
        if let Some(port) = port(authority)?.filter(|p| *p != default_port) {
            out.push(':');
            out.push_str(&port.to_string());
        }
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let pq = pq.split('#').next().unwrap_or("");
        if !pq.starts_with('/') {
            out.push('/');
        }
        out.push_str(pq);
        Ok(CacheKey(out.into_boxed_str()))
    }

    /// Builds a key from a string that is already normalized (e.g. read back from storage).
    pub fn from_normalized(s: &str) -> Self {
        CacheKey(s.into())
    }

    /// The key of one Range segment of this object. `#` cannot occur in a normalized key
    /// (fragments are dropped), so segment keys never collide with object keys.
    pub fn segment(&self, index: u64) -> CacheKey {
        SegmentKey {
            object: self.clone(),
            index,
        }
        .key()
    }

    /// The object and index of a segment key; `None` for an object key.
    pub fn as_segment(&self) -> Option<SegmentKey> {
        let (object, index) = self.0.rsplit_once(SEGMENT_MARK)?;
        // Only the canonical spelling: `#seg=01` is not a key this crate made.
        let index: u64 = index.parse().ok()?;
        (index.to_string().len() == self.0.len() - object.len() - SEGMENT_MARK.len()).then(|| {
            SegmentKey {
                object: CacheKey::from_normalized(object),
                index,
            }
        })
    }

    /// The normalized URI (with `#seg=<index>` for a segment).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes the ring hashes: peer placement depends on exactly these.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Result<String, KeyError> {
        CacheKey::from_uri(&s.parse::<Uri>().unwrap()).map(|k| k.to_string())
    }

    #[test]
    fn normalizes_scheme_host_and_default_port() {
        assert_eq!(
            key("HTTP://Example.TEST:80/a?B=1").unwrap(),
            "http://example.test/a?B=1"
        );
        assert_eq!(
            key("https://example.test:443").unwrap(),
            "https://example.test/"
        );
        assert_eq!(
            key("https://example.test:8443/x").unwrap(),
            "https://example.test:8443/x"
        );
        assert_eq!(
            key("http://example.test:443/x").unwrap(),
            "http://example.test:443/x"
        );
    }

    #[test]
    fn keeps_path_and_query_as_sent() {
        assert_eq!(
            key("http://h/a%2Fb?z=1&a=2").unwrap(),
            "http://h/a%2Fb?z=1&a=2"
        );
        assert_ne!(key("http://h/A").unwrap(), key("http://h/a").unwrap());
    }

    #[test]
    fn rejects_origin_form_and_other_schemes() {
        assert_eq!(key("/a"), Err(KeyError::NotAbsolute));
        assert_eq!(key("ftp://h/a"), Err(KeyError::UnsupportedScheme));
    }

    #[test]
    fn ports_out_of_range_are_refused_not_defaulted() {
        for bad in [
            "http://h:99999/",
            "http://h:65536/",
            "http://h:0/",
            "http://127.0.0.1:99999/",
            "http://[::1]:70000/",
            "https://u@h:123456/",
            "http://h:abc/",
            "http://u:p@h:x1/",
            "http://[::1]*",
        ] {
            assert_eq!(key(bad), Err(KeyError::BadPort), "{bad}");
        }
        assert_eq!(key("http://h:/a").unwrap(), "http://h/a");
        assert_eq!(key("http://h:65535/a").unwrap(), "http://h:65535/a");
        assert_eq!(key("http://[::1]:8080/").unwrap(), "http://[::1]:8080/");
        assert_eq!(key("http://[::1]/").unwrap(), "http://[::1]/");
        assert_eq!(key("http://u:p@h:8080/").unwrap(), "http://h:8080/");
        assert_eq!(key("http://u:p@h/").unwrap(), "http://h/");
        assert_eq!(key("http://u@h:/").unwrap(), "http://h/");
    }

    #[test]
    fn ports_default_by_scheme_and_never_replace_a_bad_one() {
        let p = |s: &str| port_or_default(&s.parse::<Uri>().unwrap());
        assert_eq!(p("http://h/"), Ok(80));
        assert_eq!(p("HTTPS://h/"), Ok(443));
        assert_eq!(p("https://h:8443/"), Ok(8443));
        assert_eq!(p("http://h:99999/"), Err(KeyError::BadPort));
    }

    #[test]
    fn empty_hosts_are_refused() {
        assert_eq!(key("http://:80/"), Err(KeyError::EmptyHost));
        assert_eq!(key("http://u@:1/"), Err(KeyError::EmptyHost));
    }

    #[test]
    fn segment_keys_are_distinct() {
        let k = CacheKey::from_uri(&"http://h/a".parse().unwrap()).unwrap();
        assert_eq!(k.segment(3).as_str(), "http://h/a#seg=3");
        assert_ne!(k.segment(0), k);
        let seg = k.segment(3).as_segment().unwrap();
        assert_eq!((seg.object, seg.index), (k.clone(), 3));
        assert_eq!(k.as_segment(), None);
        for odd in [
            "http://h/a#seg=",
            "http://h/a#seg=01",
            "http://h/a#seg=-1",
            "http://h/a#seg=x",
        ] {
            assert_eq!(CacheKey::from_normalized(odd).as_segment(), None, "{odd}");
        }
    }
}
