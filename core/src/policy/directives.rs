//! The one Cache-Control parser of the core (RFC 9111 §5.2, RFC 5861), with typed
//! accessors, in the manner of pingora's `cache_control.rs`.
//!
//! Every place that reads Cache-Control (storability, reuse, stale-*, the engine's request
//! checks, the header clean-up before `http-cache-semantics` sees a response) goes through
//! [`directives`] so they cannot disagree: list members are split outside quoted strings
//! only (`no-cache="Set-Cookie, X-Id"` is one directive), names are case-insensitive,
//! quoted values are unquoted (with `\` escapes), and delta-seconds saturate at 2^31.

use http::HeaderMap;
use http::header::CACHE_CONTROL;
use std::time::Duration;

/// One directive as written: `name` lower-cased, `value` unquoted, `raw` the member as it
/// appeared (trimmed), for rewriting a field without changing what is not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive<'a> {
    /// Lower-cased: directive names are case-insensitive.
    pub name: String,
    /// The argument, unquoted; `None` for a bare directive.
    pub value: Option<String>,
    /// The member as written, to copy it unchanged.
    pub raw: &'a str,
}

/// The directives of one field value, in order. Members are split at commas outside quoted
/// strings; empty members (`a,,b`) are skipped.
pub fn directives(field: &str) -> impl Iterator<Item = Directive<'_>> {
    split_members(field).map(|raw| {
        let (name, value) = match raw.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
            None => (raw, None),
        };
        Directive {
            name: name.to_ascii_lowercase(),
            value,
            raw,
        }
    })
}

/// The members of a comma-separated list, split outside quoted strings (a `\` escapes the
/// next character inside quotes), trimmed, empty ones skipped. A field whose quotes do not
/// balance is split at every comma: an unterminated quote must not hide the directives
/// after it (`x="a, no-store` still says `no-store`, as a plain comma split reads it).
pub fn split_members(field: &str) -> impl Iterator<Item = &str> {
    let balanced = quotes_balance(field);
    let mut rest = Some(field);
    std::iter::from_fn(move || {
        loop {
            let s = rest?;
            let (mut quoted, mut escaped) = (false, false);
            let mut end = None;
            for (i, c) in s.char_indices() {
                match c {
                    ',' if !balanced => {
                        end = Some(i);
                        break;
                    }
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    ',' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let member = match end {
                Some(i) => {
                    rest = Some(&s[i + 1..]);
                    &s[..i]
                }
                None => {
                    rest = None;
                    s
                }
            };
            let member = member.trim();
            if !member.is_empty() {
                return Some(member);
            }
        }
    })
}

/// Whether every quoted string in `field` is terminated.
fn quotes_balance(field: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in field.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// A token or a quoted string's content (RFC 9110 §5.6.4).
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"') else {
        return v.to_owned();
    };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// A delta-seconds directive: absent, present with a value that is not a number, or valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Seconds {
    #[default]
    Absent,
    Invalid,
    Valid(Duration),
}

impl Seconds {
    fn parse(v: Option<&str>) -> Self {
        match v.and_then(crate::time::delta_seconds) {
            Some(n) => Seconds::Valid(Duration::from_secs(n)),
            None => Seconds::Invalid,
        }
    }
}

/// The bit of a flag directive (one without a meaningful argument), 0 for any other name.
fn flag_bit(name: &str) -> u16 {
    match name {
        "no-store" => NO_STORE,
        "no-cache" => NO_CACHE,
        "private" => PRIVATE,
        "public" => PUBLIC,
        "must-revalidate" => MUST_REVALIDATE,
        "proxy-revalidate" => PROXY_REVALIDATE,
        "only-if-cached" => ONLY_IF_CACHED,
        "no-transform" => NO_TRANSFORM,
        "immutable" => IMMUTABLE,
        "must-understand" => MUST_UNDERSTAND,
        _ => 0,
    }
}

/// Whether the core knows `name` (lower-case) as a flag directive.
pub fn is_flag(name: &str) -> bool {
    flag_bit(name) != 0
}

/// Bits of the flag directives.
const NO_STORE: u16 = 1;
const NO_CACHE: u16 = 1 << 1;
const PRIVATE: u16 = 1 << 2;
const PUBLIC: u16 = 1 << 3;
const MUST_REVALIDATE: u16 = 1 << 4;
const PROXY_REVALIDATE: u16 = 1 << 5;
const ONLY_IF_CACHED: u16 = 1 << 6;
const NO_TRANSFORM: u16 = 1 << 7;
const IMMUTABLE: u16 = 1 << 8;
const MUST_UNDERSTAND: u16 = 1 << 9;

/// Parsed Cache-Control of one message (all field lines): the directives the core acts on,
/// as typed values. Small and without heap for the common case, since every stored entry
/// keeps its response's. A directive given twice keeps its first value (RFC 9111 §4.2.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    flags: u16,
    max_age: Seconds,
    s_maxage: Seconds,
    max_stale: Seconds,
    min_fresh: Seconds,
    stale_while_revalidate: Seconds,
    stale_if_error: Seconds,
}

impl Directives {
    /// Every Cache-Control field line of `headers` (lines that are not text are skipped).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for v in headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for dir in directives(v) {
                d.add(&dir.name, dir.value.as_deref());
            }
        }
        d
    }

    fn add(&mut self, name: &str, value: Option<&str>) {
        let flag = flag_bit(name);
        self.flags |= flag;
        let slot = match name {
            "max-age" => &mut self.max_age,
            "s-maxage" => &mut self.s_maxage,
            "max-stale" => &mut self.max_stale,
            "min-fresh" => &mut self.min_fresh,
            "stale-while-revalidate" => &mut self.stale_while_revalidate,
            "stale-if-error" => &mut self.stale_if_error,
            _ => return,
        };
        if *slot == Seconds::Absent {
            // `max-stale` without a value accepts any staleness (RFC 9111 §5.2.1.2).
            *slot = match (name, value) {
                ("max-stale", None) => Seconds::Valid(Duration::MAX),
                _ => Seconds::parse(value),
            };
        }
    }

    fn flag(&self, bit: u16) -> bool {
        self.flags & bit != 0
    }

    /// `no-store`.
    pub fn no_store(&self) -> bool {
        self.flag(NO_STORE)
    }
    /// `no-cache`, with or without a field list.
    pub fn no_cache(&self) -> bool {
        self.flag(NO_CACHE)
    }
    /// `private`, with or without a field list.
    pub fn private(&self) -> bool {
        self.flag(PRIVATE)
    }
    /// `public`: lets a shared cache store a response to an authorized request.
    pub fn public(&self) -> bool {
        self.flag(PUBLIC)
    }
    /// `must-revalidate`: never served stale, not even on error.
    pub fn must_revalidate(&self) -> bool {
        self.flag(MUST_REVALIDATE)
    }
    /// `proxy-revalidate`: `must-revalidate` for shared caches only.
    pub fn proxy_revalidate(&self) -> bool {
        self.flag(PROXY_REVALIDATE)
    }
    /// `only-if-cached`: answer from the store or with 504, never upstream.
    pub fn only_if_cached(&self) -> bool {
        self.flag(ONLY_IF_CACHED)
    }
    /// `no-transform`.
    pub fn no_transform(&self) -> bool {
        self.flag(NO_TRANSFORM)
    }
    /// `immutable` (RFC 8246).
    pub fn immutable(&self) -> bool {
        self.flag(IMMUTABLE)
    }
    /// `must-understand`: store only if the status code is understood.
    pub fn must_understand(&self) -> bool {
        self.flag(MUST_UNDERSTAND)
    }

    /// Present at all (a request's `max-age=0` or `max-age=x` both ask for validation).
    pub fn has_max_age(&self) -> bool {
        self.max_age != Seconds::Absent
    }
    /// `s-maxage` present at all, valid or not.
    pub fn has_s_maxage(&self) -> bool {
        self.s_maxage != Seconds::Absent
    }
    /// `min-fresh` present at all, valid or not.
    pub fn has_min_fresh(&self) -> bool {
        self.min_fresh != Seconds::Absent
    }
    /// `max-stale` present at all, valid or not.
    pub fn has_max_stale(&self) -> bool {
        self.max_stale != Seconds::Absent
    }

    /// Valid values only; an invalid one is `None`, as if absent, except for the `has_*`
    /// questions above.
    pub fn max_age(&self) -> Option<Duration> {
        valid(self.max_age)
    }
    /// `s-maxage`: the shared-cache lifetime, over `max-age`.
    pub fn s_maxage(&self) -> Option<Duration> {
        valid(self.s_maxage)
    }
    /// `Duration::MAX` for a bare `max-stale`.
    pub fn max_stale(&self) -> Option<Duration> {
        valid(self.max_stale)
    }
    /// `min-fresh`: the request wants this much freshness left.
    pub fn min_fresh(&self) -> Option<Duration> {
        valid(self.min_fresh)
    }
    /// `stale-while-revalidate` (RFC 5861): serve stale this long while revalidating.
    pub fn stale_while_revalidate(&self) -> Option<Duration> {
        valid(self.stale_while_revalidate)
    }
    /// `stale-if-error` (RFC 5861): serve stale this long when upstream fails.
    pub fn stale_if_error(&self) -> Option<Duration> {
        valid(self.stale_if_error)
    }
}

fn valid(s: Seconds) -> Option<Duration> {
    match s {
        Seconds::Valid(d) => Some(d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(lines: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(CACHE_CONTROL, l.parse().unwrap());
        }
        Directives::parse(&h)
    }

    #[test]
    fn parses_values_and_flags() {
        let d = cc(&[
            "max-age=60, Stale-While-Revalidate=\"30\"",
            "no-cache, stale-if-error=bogus",
        ]);
        assert_eq!(d.max_age(), Some(Duration::from_secs(60)));
        assert_eq!(d.stale_while_revalidate(), Some(Duration::from_secs(30)));
        assert!(d.no_cache());
        assert_eq!(d.stale_if_error(), None);
        assert!(!d.private());
        let d = cc(&["max-age=18446744073709551615, s-maxage=99999999999999999999999"]);
        assert_eq!(d.max_age(), Some(Duration::from_secs(1 << 31)));
        assert_eq!(d.s_maxage(), Some(Duration::from_secs(1 << 31)));
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let d = cc(&["no-cache=\"Set-Cookie, X-Id\", max-age=5, private=\"a,b\""]);
        assert!(d.no_cache() && d.private());
        assert_eq!(d.max_age(), Some(Duration::from_secs(5)));
        let names: Vec<String> = directives("no-cache=\"Set-Cookie, X-Id\", max-age=5")
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["no-cache", "max-age"]);
        let v: Vec<Option<String>> = directives(r#"x="a\"b, c", y"#).map(|d| d.value).collect();
        assert_eq!(v, [Some("a\"b, c".to_owned()), None]);
    }

    #[test]
    fn first_value_wins_and_presence_is_kept_for_invalid_values() {
        let d = cc(&["max-age=10", "max-age=99"]);
        assert_eq!(d.max_age(), Some(Duration::from_secs(10)));
        let d = cc(&["max-age=abc, min-fresh"]);
        assert!(d.has_max_age() && d.has_min_fresh());
        assert_eq!(d.max_age(), None);
        let d = cc(&["max-stale"]);
        assert_eq!(d.max_stale(), Some(Duration::MAX));
        let d = cc(&["MAX-STALE=5, ,, ONLY-IF-CACHED"]);
        assert_eq!(d.max_stale(), Some(Duration::from_secs(5)));
        assert!(d.only_if_cached());
    }

    #[test]
    fn hostile_fields_never_panic() {
        for s in ["\"", "\\", "=\"", "a=\"\\", ",,,", "\"\"\"=,", "é=ü, ü"] {
            let _ = directives(s).count();
        }
        // An unterminated quote does not hide what follows it.
        let unterminated: Vec<&str> = split_members("a=\"x, no-store").collect();
        assert_eq!(unterminated, ["a=\"x", "no-store"]);
        assert!(cc(&["x=\"a, no-store"]).no_store());
    }
}
