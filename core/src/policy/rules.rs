//! The operator's freshness rules: squid's `refresh_pattern`, nginx's `proxy_cache_valid`,
//! Varnish's `beresp.ttl`. Package archives serve `.deb`s, wheels, tarballs and `.crate`s
//! with no freshness and often no validator: by RFC 9111 alone they are never reused, and
//! the operator knows better (a versioned file never changes).
//!
//! The first rule whose pattern matches the URL applies. It acts on the policy's own copy
//! of the response (what `http-cache-semantics` judges), never on what clients receive:
//! `default_ttl` gives a lifetime to a response with no explicit one (heuristics and a
//! missing validator notwithstanding), `min_ttl`/`max_ttl` clamp whatever lifetime was
//! computed, `immutable` serves a fresh entry even to a request that asks to revalidate
//! (a browser's reload), and `cache = false` stores nothing. What forbids storing
//! (`no-store`, `private` in a shared cache, `Authorization`, `Set-Cookie`) and `no-cache`
//! (revalidate every time) are still obeyed.

use super::directives::Directives;
use http::header::{self, HeaderMap};
use std::time::Duration;

/// One rule. Build with [`FreshnessRule::new`] (the pattern is checked there).
#[derive(Debug, Clone)]
pub struct FreshnessRule {
    pattern: regex_lite::Regex,
    /// Lifetime of a response without explicit freshness (`max-age`, `s-maxage`, `Expires`).
    pub default_ttl: Option<Duration>,
    /// The least lifetime a stored response gets.
    pub min_ttl: Option<Duration>,
    /// The most lifetime a stored response gets (zero: revalidated on every use).
    pub max_ttl: Option<Duration>,
    /// Fresh entries are served even to requests asking to revalidate (RFC 8246 in spirit).
    pub immutable: bool,
    /// False: matching responses are never stored.
    pub cache: bool,
}

impl FreshnessRule {
    /// A rule for URLs matching `pattern` (a regular expression over the whole URL, e.g.
    /// `^https?://[^/]+/debian/pool/`), doing nothing until its fields are set.
    pub fn new(pattern: &str) -> Result<FreshnessRule, String> {
        let pattern =
            regex_lite::Regex::new(pattern).map_err(|e| format!("rule {pattern:?}: {e}"))?;
        Ok(FreshnessRule {
            pattern,
            default_ttl: None,
            min_ttl: None,
            max_ttl: None,
            immutable: false,
            cache: true,
        })
    }

    /// The rule's pattern as written.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// Whether it applies to `url`.
    pub fn matches(&self, url: &str) -> bool {
        self.pattern.is_match(url)
    }

    /// `lifetime` (the computed one) within this rule's clamps, and under `floor` (the
    /// global `--min-ttl`) when the rule sets no minimum of its own.
    pub fn clamp(&self, lifetime: Duration, floor: Duration) -> Duration {
        let low = self.min_ttl.unwrap_or(floor);
        let l = lifetime.max(low);
        self.max_ttl.map_or(l, |high| l.min(high))
    }

    /// A rule applying only the global `--min-ttl` (for URLs no rule matches).
    pub fn none() -> FreshnessRule {
        FreshnessRule::new("^$").expect("literal")
    }
}

/// The rules of a named preset (`debian`, `pypi`, `npm`, `crates`), or `None` for a name
/// not known. Versioned files are immutable for a year; the indexes that name them are left
/// to the origin's headers, or revalidated on every use where archives give them none.
pub fn preset(name: &str) -> Option<Vec<FreshnessRule>> {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let immutable = |p: &str| {
        let mut r = FreshnessRule::new(p).expect("preset patterns are valid");
        r.default_ttl = Some(YEAR);
        r.min_ttl = Some(YEAR);
        r.immutable = true;
        r
    };
    let revalidated = |p: &str| {
        let mut r = FreshnessRule::new(p).expect("preset patterns are valid");
        r.max_ttl = Some(Duration::ZERO);
        r
    };
    Some(match name {
        // Debian and Ubuntu: pool files and by-hash files never change under one name; the
        // release files and indexes change in place and are revalidated every time.
        "debian" | "ubuntu" => vec![
            immutable(r"/pool/.+\.(u?deb|dsc|diff\.gz|tar\.(gz|xz|bz2|zst))$"),
            immutable(r"/by-hash/(MD5Sum|SHA1|SHA256|SHA512)/[0-9a-fA-F]+$"),
            revalidated(
                r"/dists/.+/(InRelease|Release(\.gpg)?|(Packages|Sources|Contents-[^/]+|Translation-[^/]+)(\.(gz|xz|bz2|lz4|zst))?)$",
            ),
        ],
        // PyPI: distribution files (wheels, sdists) by their versioned names.
        "pypi" => vec![immutable(
            r"/packages/.+\.(whl|tar\.gz|tar\.bz2|zip|egg)(#.*)?$",
        )],
        // npm: tarballs under `/-/` are versioned.
        "npm" => vec![immutable(r"/-/[^/]+-\d[^/]*\.tgz$")],
        // crates.io: `.crate` downloads are versioned.
        "crates" => vec![
            immutable(r"\.crate$"),
            immutable(r"/crates/[^/]+/[^/]+/download$"),
        ],
        _ => return None,
    })
}

/// The names [`preset`] knows.
pub const PRESETS: [&str; 5] = ["debian", "ubuntu", "pypi", "npm", "crates"];

/// Whether the response states its own lifetime (in a shared cache `s-maxage` counts).
pub(super) fn has_explicit_lifetime(h: &HeaderMap, shared: bool) -> bool {
    let cc = Directives::parse(h);
    cc.has_max_age() || (shared && cc.has_s_maxage()) || h.contains_key(header::EXPIRES)
}

/// The policy's copy of a response made to have `lifetime`: `Expires` goes, `max-age`
/// (and `s-maxage`, in a shared cache that read it) says `lifetime`; every other directive
/// stays (`must-revalidate`, `no-cache` ...).
pub(super) fn with_lifetime(h: &mut HeaderMap, lifetime: Duration, shared: bool) {
    let secs = lifetime.as_secs().min(crate::time::DELTA_SECONDS_MAX);
    let had_s_maxage = shared && Directives::parse(h).has_s_maxage();
    let mut kept: Vec<String> = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            !d.is_empty()
                && !name.eq_ignore_ascii_case("max-age")
                && !name.eq_ignore_ascii_case("s-maxage")
        })
        .map(str::to_owned)
        .collect();
    kept.push(format!("max-age={secs}"));
    if had_s_maxage {
        kept.push(format!("s-maxage={secs}"));
    }
    h.remove(header::EXPIRES);
    if let Ok(v) = kept.join(", ").parse() {
        h.insert(header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_what_they_name() {
        let debian = preset("debian").unwrap();
        let first = |url: &str| debian.iter().position(|r| r.matches(url));
        assert_eq!(
            first("http://m.test/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"),
            Some(0)
        );
        assert_eq!(
            first("http://m.test/debian/dists/stable/main/binary-amd64/by-hash/SHA256/0a1b2c"),
            Some(1)
        );
        assert_eq!(
            first("http://m.test/debian/dists/stable/InRelease"),
            Some(2)
        );
        assert_eq!(
            first("http://m.test/debian/dists/stable/main/binary-amd64/Packages.xz"),
            Some(2)
        );
        assert_eq!(first("http://m.test/debian/README"), None);
        let pypi = preset("pypi").unwrap();
        assert!(pypi[0].matches("https://f.test/packages/ab/cd/pkg-1.0-py3-none-any.whl"));
        assert!(!pypi[0].matches("https://p.test/simple/pkg/"));
        let npm = preset("npm").unwrap();
        assert!(npm[0].matches("https://r.test/left-pad/-/left-pad-1.3.0.tgz"));
        assert!(!npm[0].matches("https://r.test/left-pad"));
        let crates = preset("crates").unwrap();
        assert!(
            crates
                .iter()
                .any(|r| r.matches("https://s.test/api/v1/crates/serde/1.0.0/download"))
        );
        assert!(
            crates
                .iter()
                .any(|r| r.matches("https://s.test/serde/serde-1.0.0.crate"))
        );
        assert!(preset("nonsense").is_none());
        for p in PRESETS {
            assert!(preset(p).is_some());
        }
    }

    #[test]
    fn clamps() {
        let mut r = FreshnessRule::new(".").unwrap();
        assert_eq!(
            r.clamp(Duration::from_secs(60), Duration::ZERO),
            Duration::from_secs(60)
        );
        assert_eq!(
            r.clamp(Duration::from_secs(60), Duration::from_secs(600)),
            Duration::from_secs(600)
        );
        r.min_ttl = Some(Duration::from_secs(10));
        r.max_ttl = Some(Duration::from_secs(100));
        assert_eq!(
            r.clamp(Duration::from_secs(60), Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            r.clamp(Duration::from_secs(1), Duration::ZERO),
            Duration::from_secs(10)
        );
        assert_eq!(
            r.clamp(Duration::from_secs(1000), Duration::ZERO),
            Duration::from_secs(100)
        );
        assert!(FreshnessRule::new("(").is_err());
    }

    #[test]
    fn a_lifetime_replaces_max_age_and_expires_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=60, s-maxage=30, must-revalidate"
                .parse()
                .unwrap(),
        );
        h.insert(
            header::EXPIRES,
            "Thu, 01 Jan 2037 00:00:00 GMT".parse().unwrap(),
        );
        with_lifetime(&mut h, Duration::from_secs(3600), true);
        assert_eq!(
            h.get(header::CACHE_CONTROL).unwrap(),
            "public, must-revalidate, max-age=3600, s-maxage=3600"
        );
        assert!(h.get(header::EXPIRES).is_none());
        let mut h = HeaderMap::new();
        with_lifetime(&mut h, Duration::from_secs(5), false);
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "max-age=5");
    }
}
