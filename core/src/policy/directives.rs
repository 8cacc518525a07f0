//! The Cache-Control directives the core needs beyond what `http-cache-semantics` exposes.

use http::HeaderMap;
use http::header::CACHE_CONTROL;
use std::time::Duration;

/// Parsed Cache-Control of one message: directive names lower-cased, values unquoted.
#[derive(Debug, Default, Clone)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut out = Vec::new();
        for v in headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for part in v.split(',') {
                let mut kv = part.splitn(2, '=');
                let k = kv.next().unwrap_or("").trim().to_ascii_lowercase();
                if k.is_empty() {
                    continue;
                }
                let v = kv.next().map(|v| v.trim().trim_matches('"').to_owned());
                out.push((k, v));
            }
        }
        Directives(out)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// A delta-seconds directive (`max-age=60`), clamped to 2^31 s (RFC 9111 §1.2.2);
    /// invalid or missing values give `None`.
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| crate::time::delta_seconds(v.as_deref()?))
            .map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_flags() {
        let mut h = HeaderMap::new();
        h.append(
            CACHE_CONTROL,
            "max-age=60, Stale-While-Revalidate=\"30\"".parse().unwrap(),
        );
        h.append(
            CACHE_CONTROL,
            "no-cache, stale-if-error=bogus".parse().unwrap(),
        );
        let d = Directives::parse(&h);
        assert_eq!(d.seconds("max-age"), Some(Duration::from_secs(60)));
        assert_eq!(
            d.seconds("stale-while-revalidate"),
            Some(Duration::from_secs(30))
        );
        assert!(d.has("no-cache"));
        assert_eq!(d.seconds("stale-if-error"), None);
        assert!(!d.has("private"));
        let mut h = HeaderMap::new();
        h.append(
            CACHE_CONTROL,
            "max-age=18446744073709551615, s-maxage=99999999999999999999999"
                .parse()
                .unwrap(),
        );
        let d = Directives::parse(&h);
        assert_eq!(d.seconds("max-age"), Some(Duration::from_secs(1 << 31)));
        assert_eq!(d.seconds("s-maxage"), Some(Duration::from_secs(1 << 31)));
    }
}
