//! The RFC 9211 `Cache-Status` header: how this cache handled a request, and the
//! [`Outcome`] adapters count it by.

use core::fmt::{self, Write};
use http::StatusCode;

/// Why the request went forward (RFC 9211 §2.2).
///
/// `#[non_exhaustive]`: RFC 9211 defines more reasons (`partial`) than this cache writes
/// today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Every reason, for parsing.
    const ALL: [Fwd; 7] = [
        Fwd::Bypass,
        Fwd::Method,
        Fwd::UriMiss,
        Fwd::VaryMiss,
        Fwd::Stale,
        Fwd::Request,
        Fwd::Miss,
    ];

    /// The reason a `fwd=` token names (None for a token this cache does not write).
    pub fn parse(token: &str) -> Option<Fwd> {
        Fwd::ALL.into_iter().find(|f| f.as_str() == token)
    }

    /// The `fwd=` token, as RFC 9211 spells it.
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
    /// Served from the store (with `fwd` too when upstream was tried first: stale-if-error).
    pub hit: bool,
    /// Why the request went forward, when it did.
    pub fwd: Option<Fwd>,
    /// The status the next hop answered with: tells an origin's own error from the proxy's.
    pub fwd_status: Option<u16>,
    /// The response was stored for later requests.
    pub stored: bool,
    /// The request waited on another request's fetch.
    pub collapsed: bool,
    /// Remaining freshness in seconds (negative when served stale).
    pub ttl: Option<i64>,
    /// A token saying why (not stored, bypassed, which upstream error, stale-while-revalidate).
    pub detail: Option<&'static str>,
}

/// The cache's name in the header.
pub const CACHE_NAME: &str = "larder";

/// The `detail` of a stale response served while it is revalidated in the background: the
/// one detail the [`Outcome`] depends on (such a hit is otherwise a plain `hit`).
const STALE_WHILE_REVALIDATE: &str = "stale-while-revalidate";

/// How a request was served, for counting (the `outcome` label of `larder_requests`).
///
/// Adapters count this typed value instead of reading the `Cache-Status` text: it is
/// derived in one place, [`CacheStatus::outcome`], from what the engine decided and the
/// status the client gets. Responses relayed from another Larder carry only the header;
/// [`Outcome::from_cache_status`] reads it back through the same derivation.
///
/// `#[non_exhaustive]`: a finer outcome may be added; count unknown ones under a
/// catch-all rather than failing to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Served from the store, fresh, without contacting upstream.
    Hit,
    /// Served from the store although stale: `stale-while-revalidate` (a hit, revalidated
    /// in the background) or `stale-if-error` (upstream failed or answered 5xx). Counted
    /// apart from hits: a cluster serving much stale content has an origin problem.
    Stale,
    /// The stored entry was stale (or the request asked for validation), upstream answered
    /// the conditional request with 304, and the refreshed entry was served.
    Revalidated,
    /// Fetched upstream for this cache (the fill was relayed), stored or not. An
    /// origin's own error status (a 404, a 500 it sent) relayed as it came is a miss too:
    /// the cache worked, the origin answered.
    Miss,
    /// Not for the cache: relayed upstream unchanged (unsafe or uncacheable method,
    /// `--passthrough`, hit-for-miss). A pass the proxy could not complete is an `Error`.
    Pass,
    /// The proxy answered with an error of its own, not an upstream's: 502/504 when
    /// upstream could not be reached, timed out, broke off or answered inconsistently
    /// (segment mismatch, unsolicited 304/206), 504 for `only-if-cached` without an entry,
    /// 400 for a target it cannot key, 403 for a refused destination, 500 for a stored body
    /// that could not be read. A 416 is not an error here: the client asked for bytes the
    /// representation lacks, and it counts where the representation came from.
    Error,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Miss,
        Outcome::Pass,
        Outcome::Error,
    ];

    /// The metrics label (`larder_requests{outcome="..."}`): stable, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Miss => "miss",
            Outcome::Pass => "pass",
            Outcome::Error => "error",
        }
    }

    /// The body came out of the store (a hit, stale or not, or a revalidated entry).
    pub fn from_store(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::Stale | Outcome::Revalidated)
    }

    /// The outcome of a response relayed from another Larder (a peer that owns the key),
    /// read from its `Cache-Status` field value and its status: this cache's last entry in
    /// the list, derived like the engine's own ([`CacheStatus::outcome`]). A value with no
    /// entry of this cache (a response made before any engine saw the request, or not by
    /// a Larder) counts as an `Error` when its status is an error (416 aside), else as a
    /// `Miss`. Any text is accepted: nothing here panics.
    pub fn from_cache_status(value: &str, status: StatusCode) -> Outcome {
        CacheStatus::parse(value)
            .unwrap_or_default()
            .outcome(status)
    }

    /// [`Outcome::from_cache_status`] over every `Cache-Status` field of a response head
    /// (one list, in field order; fields that are not text are skipped).
    pub fn from_headers(status: StatusCode, headers: &http::HeaderMap) -> Outcome {
        headers
            .get_all("cache-status")
            .iter()
            .rev()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .find_map(CacheStatus::parse)
            .unwrap_or_default()
            .outcome(status)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CacheStatus {
    /// A hit with `ttl` seconds of freshness left.
    pub fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    /// A request that went forward for `fwd`.
    pub fn fwd(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    /// The same status with a `detail` token.
    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// How this request counts, given the status the client gets: the one derivation of
    /// [`Outcome`]. In order:
    ///
    /// 1. `hit`: [`Outcome::Stale`] when it also went forward (`fwd=stale`: stale-if-error)
    ///    or its detail is `stale-while-revalidate`, else [`Outcome::Hit`] (whatever the
    ///    status: a stored 404 served fresh is a hit, and so is a 304 or 416 made from it).
    /// 2. An error status (4xx or 5xx, except 416) that is not upstream's own (`fwd-status`
    ///    absent or different): the proxy made it, [`Outcome::Error`].
    /// 3. `fwd=bypass` or `fwd=method`: [`Outcome::Pass`]. An adapter relaying a pass
    ///    records the upstream's status in `fwd_status` first, so an origin's own 404 to a
    ///    pass stays a pass.
    /// 4. `fwd-status=304`: [`Outcome::Revalidated`] (the engine answers a 304 from the
    ///    refreshed entry; a 304 to a fill never reaches a client).
    /// 5. Anything else went upstream and was relayed: [`Outcome::Miss`].
    pub fn outcome(&self, status: StatusCode) -> Outcome {
        let code = status.as_u16();
        if self.hit {
            if self.fwd.is_some() || self.detail == Some(STALE_WHILE_REVALIDATE) {
                Outcome::Stale
            } else {
                Outcome::Hit
            }
        } else if code >= 400
            && status != StatusCode::RANGE_NOT_SATISFIABLE
            && self.fwd_status != Some(code)
        {
            Outcome::Error
        } else if matches!(self.fwd, Some(Fwd::Bypass | Fwd::Method)) {
            Outcome::Pass
        } else if self.fwd_status == Some(304) {
            Outcome::Revalidated
        } else {
            Outcome::Miss
        }
    }

    /// Reads this cache's entry (named [`CACHE_NAME`]) back from a `Cache-Status` field
    /// value: the last one when several caches (or several Larders) are listed; None when
    /// there is none. Lenient and total: unknown parameters and values are ignored, any
    /// text is accepted, nothing panics. `detail` is kept only when it is one the outcome
    /// depends on (`stale-while-revalidate`); other details are free text and read as None.
    pub fn parse(value: &str) -> Option<CacheStatus> {
        split_top(value, b',').filter_map(parse_member).last()
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

/// `s` split at `sep` outside quoted strings (RFC 8941 `"..."` with `\\` escapes). Splits
/// only at ASCII bytes, so every piece is a valid `str` slice whatever the input.
fn split_top(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    core::iter::from_fn(move || {
        let s = rest?;
        let b = s.as_bytes();
        let mut quoted = false;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
            i += 1;
        }
        rest = None;
        Some(s)
    })
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// A token, or the contents of a quoted string with its escapes removed.
fn unquote(s: &str) -> std::borrow::Cow<'_, str> {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if c == '\\' && !escaped {
                    escaped = true;
                } else {
                    out.push(c);
                    escaped = false;
                }
            }
            out.into()
        }
        Some(inner) => inner.into(),
        None => s.into(),
    }
}

/// A boolean parameter: bare (true) or `?1` / `?0` (RFC 8941).
fn flag(value: Option<&str>) -> bool {
    matches!(value, None | Some("?1"))
}

/// One list member, when it is this cache's.
fn parse_member(member: &str) -> Option<CacheStatus> {
    let mut params = split_top(member, b';');
    if unquote(trim_ows(params.next()?)) != CACHE_NAME {
        return None;
    }
    let mut s = CacheStatus::default();
    for p in params {
        let p = trim_ows(p);
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (trim_ows(k), Some(trim_ows(v))),
            None => (p, None),
        };
        match key {
            "hit" => s.hit = flag(value),
            "stored" => s.stored = flag(value),
            "collapsed" => s.collapsed = flag(value),
            "fwd" => s.fwd = value.and_then(|v| Fwd::parse(&unquote(v))),
            "fwd-status" => s.fwd_status = value.and_then(|v| v.parse().ok()),
            "ttl" => s.ttl = value.and_then(|v| v.parse().ok()),
            "detail" => {
                s.detail = value
                    .filter(|v| unquote(v) == STALE_WHILE_REVALIDATE)
                    .map(|_| STALE_WHILE_REVALIDATE)
            }
            _ => {}
        }
    }
    Some(s)
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

    fn code(c: u16) -> StatusCode {
        StatusCode::from_u16(c).unwrap()
    }

    /// `fwd` with an upstream status, as a relayed fill carries it.
    fn relayed(fwd: Fwd, status: u16) -> CacheStatus {
        let mut s = CacheStatus::fwd(fwd);
        s.fwd_status = Some(status);
        s
    }

    /// Each outcome from the statuses the engine builds (see `engine/mod.rs` and
    /// `engine/respond.rs`), and the cases the issue named as miscounted.
    #[test]
    fn outcome_of_each_engine_status() {
        use Outcome::*;
        let cases: Vec<(CacheStatus, u16, Outcome)> = vec![
            // Fresh hits, including what a client's precondition or range makes of one,
            // and a stored error status served fresh.
            (CacheStatus::hit(42), 200, Hit),
            (CacheStatus::hit(0), 304, Hit),
            (CacheStatus::hit(5), 206, Hit),
            (CacheStatus::hit(5), 416, Hit),
            (CacheStatus::hit(5), 404, Hit),
            (CacheStatus::hit(7).with_detail("segment"), 206, Hit),
            // stale-while-revalidate: a hit with its detail (ttl may round to 0).
            (
                CacheStatus::hit(-3).with_detail("stale-while-revalidate"),
                200,
                Stale,
            ),
            (
                CacheStatus::hit(0).with_detail("stale-while-revalidate"),
                304,
                Stale,
            ),
            // stale-if-error: a hit that went forward, upstream failed or sent 5xx.
            (
                CacheStatus {
                    fwd: Some(Fwd::Stale),
                    ..CacheStatus::hit(-9).with_detail("origin-unreachable")
                },
                200,
                Stale,
            ),
            (
                CacheStatus {
                    fwd: Some(Fwd::Stale),
                    fwd_status: Some(503),
                    ..CacheStatus::hit(-9).with_detail("origin-error")
                },
                200,
                Stale,
            ),
            // A 304 refreshed the entry, whatever the client then gets from it.
            (relayed(Fwd::Stale, 304), 200, Revalidated),
            (
                CacheStatus {
                    stored: true,
                    collapsed: true,
                    ..relayed(Fwd::Request, 304)
                },
                200,
                Revalidated,
            ),
            (relayed(Fwd::Stale, 304), 304, Revalidated),
            (relayed(Fwd::Stale, 304), 416, Revalidated),
            // Fills, stored or not, and the origin's own statuses relayed.
            (
                CacheStatus {
                    stored: true,
                    ..relayed(Fwd::UriMiss, 200)
                },
                200,
                Miss,
            ),
            (
                relayed(Fwd::UriMiss, 200).with_detail("no-store"),
                200,
                Miss,
            ),
            (relayed(Fwd::VaryMiss, 200), 206, Miss),
            (relayed(Fwd::Stale, 200), 200, Miss),
            (relayed(Fwd::UriMiss, 200), 304, Miss),
            (relayed(Fwd::UriMiss, 404), 404, Miss),
            (relayed(Fwd::UriMiss, 502), 502, Miss),
            (relayed(Fwd::UriMiss, 503), 503, Miss),
            // 416: the client's range lies past the end (known from the origin).
            (relayed(Fwd::UriMiss, 416), 416, Miss),
            (relayed(Fwd::UriMiss, 200), 416, Miss),
            // Passes: the adapter records the upstream's status before counting.
            (CacheStatus::fwd(Fwd::Method), 200, Pass),
            (
                CacheStatus {
                    fwd_status: Some(404),
                    ..CacheStatus::fwd(Fwd::Method)
                },
                404,
                Pass,
            ),
            (
                CacheStatus {
                    fwd_status: Some(502),
                    ..CacheStatus::fwd(Fwd::Bypass).with_detail("passthrough")
                },
                502,
                Pass,
            ),
            (
                CacheStatus::fwd(Fwd::Bypass).with_detail("hit-for-miss"),
                200,
                Pass,
            ),
            (
                CacheStatus {
                    fwd_status: Some(304),
                    ..CacheStatus::fwd(Fwd::Bypass).with_detail("hit-for-miss")
                },
                304,
                Pass,
            ),
            // The proxy's own errors.
            (
                CacheStatus::fwd(Fwd::UriMiss).with_detail("origin-unreachable"),
                502,
                Error,
            ),
            (
                CacheStatus {
                    collapsed: true,
                    ..CacheStatus::fwd(Fwd::UriMiss).with_detail("origin-timeout")
                },
                502,
                Error,
            ),
            (
                CacheStatus::fwd(Fwd::Stale).with_detail("origin-unsolicited-304"),
                502,
                Error,
            ),
            (
                relayed(Fwd::UriMiss, 206).with_detail("segment-mismatch"),
                502,
                Error,
            ),
            (
                CacheStatus::fwd(Fwd::UriMiss).with_detail("only-if-cached"),
                504,
                Error,
            ),
            (
                CacheStatus::fwd(Fwd::Stale).with_detail("only-if-cached"),
                504,
                Error,
            ),
            (
                CacheStatus::fwd(Fwd::Bypass).with_detail("bad-target"),
                400,
                Error,
            ),
            (
                CacheStatus::fwd(Fwd::Method).with_detail("destination-not-allowed"),
                403,
                Error,
            ),
            (CacheStatus::fwd(Fwd::Method), 504, Error),
            (
                CacheStatus::default().with_detail("stored-body-missing"),
                500,
                Error,
            ),
            // No entry at all (what `from_cache_status` falls back to).
            (CacheStatus::default(), 200, Miss),
            (CacheStatus::default(), 413, Error),
        ];
        for (status, c, want) in cases {
            assert_eq!(status.outcome(code(c)), want, "{status} / {c}");
            // The header says the same.
            assert_eq!(
                Outcome::from_cache_status(&status.to_string(), code(c)),
                want,
                "{status} / {c} read back"
            );
        }
    }

    #[test]
    fn labels_are_distinct_and_listed() {
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            ["hit", "stale", "revalidated", "miss", "pass", "error"]
        );
        // ALL lists every variant: this match must grow with the enum.
        for o in Outcome::ALL {
            match o {
                Outcome::Hit
                | Outcome::Stale
                | Outcome::Revalidated
                | Outcome::Miss
                | Outcome::Pass
                | Outcome::Error => {}
            }
        }
        assert!(Outcome::Revalidated.from_store() && !Outcome::Miss.from_store());
    }

    #[test]
    fn parses_lists_quotes_and_foreign_entries() {
        let swr = "larder; hit; ttl=-2; detail=stale-while-revalidate";
        assert_eq!(
            CacheStatus::parse(swr),
            Some(CacheStatus::hit(-2).with_detail("stale-while-revalidate"))
        );
        // Another cache's entry first, a quoted detail with separators, Larder's last.
        let list = "ExampleCDN; hit; detail=\"a, b; c\", larder; fwd=stale; fwd-status=304; \
                    detail=\"x, \\\"y\\\"; z\"";
        assert_eq!(CacheStatus::parse(list), Some(relayed(Fwd::Stale, 304)));
        // Two Larders (a chain): the last one is the closest to the client.
        assert_eq!(
            CacheStatus::parse("larder; hit, larder; fwd=uri-miss"),
            Some(CacheStatus::fwd(Fwd::UriMiss))
        );
        assert_eq!(
            CacheStatus::parse("\"larder\"; hit=?1; stored=?0"),
            Some(CacheStatus {
                hit: true,
                ..Default::default()
            })
        );
        assert_eq!(CacheStatus::parse(""), None);
        assert_eq!(CacheStatus::parse("ExampleCDN; hit"), None);
        assert_eq!(CacheStatus::parse("larderx; hit"), None);
        // Unknown values are dropped, not guessed.
        assert_eq!(
            CacheStatus::parse("larder; fwd=elsewhere; fwd-status=99999; ttl=x; hit=2"),
            Some(CacheStatus::default())
        );
        let mut h = http::HeaderMap::new();
        h.append("cache-status", "Other; fwd=uri-miss".parse().unwrap());
        h.append("cache-status", "larder; hit".parse().unwrap());
        assert_eq!(Outcome::from_headers(StatusCode::OK, &h), Outcome::Hit);
        assert_eq!(
            Outcome::from_headers(StatusCode::BAD_GATEWAY, &http::HeaderMap::new()),
            Outcome::Error
        );
    }

    /// Details as the engine writes them (static tokens, some needing quotes).
    const DETAILS: [&str; 7] = [
        "stale-while-revalidate",
        "no-store",
        "origin error",
        "segment",
        "only-if-cached",
        "we\"ird\\one; x, y",
        "",
    ];

    fn any_status() -> impl proptest::strategy::Strategy<Value = CacheStatus> {
        use proptest::prelude::*;
        (
            any::<bool>(),
            proptest::option::of(proptest::sample::select(&Fwd::ALL[..])),
            proptest::option::of(any::<u16>()),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(proptest::sample::select(&DETAILS[..])),
        )
            .prop_map(|(hit, fwd, fwd_status, stored, collapsed, ttl, detail)| {
                CacheStatus {
                    hit,
                    fwd,
                    fwd_status,
                    stored,
                    collapsed,
                    ttl,
                    detail,
                }
            })
    }

    proptest::proptest! {
        /// Any text, and any bytes a header value may hold: no panic, and a result only
        /// when the text names this cache.
        #[test]
        fn parse_any_text(
            s in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "[a-z\"\\\\;,=? \t?01-]{0,40}",
                "(larder|\"larder\"|x)(; ?(hit|fwd|fwd-status|ttl|detail|stored|collapsed)(=[a-z0-9\"\\\\?,;-]{0,8})?){0,6}",
            ],
            c in 100u16..1000,
        ) {
            let parsed = CacheStatus::parse(&s);
            if parsed.is_some() {
                proptest::prop_assert!(s.contains(CACHE_NAME));
            }
            let _ = Outcome::from_cache_status(&s, code(c));
        }

        /// Every status the engine can write reads back as itself (detail kept when the
        /// outcome reads it) and gives the same outcome for every response status.
        #[test]
        fn round_trip(status in any_status(), c in 100u16..1000, before in "[A-Za-z]{0,6}") {
            let text = status.to_string();
            let mut want = status.clone();
            want.detail = status.detail.filter(|d| *d == STALE_WHILE_REVALIDATE);
            proptest::prop_assert_eq!(CacheStatus::parse(&text), Some(want), "{}", text);
            proptest::prop_assert_eq!(
                Outcome::from_cache_status(&text, code(c)),
                status.outcome(code(c))
            );
            // Behind another cache's entry, too.
            let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
            let listed = format!("{before}; detail=\"{quoted}\", {text}");
            proptest::prop_assert_eq!(
                Outcome::from_cache_status(&listed, code(c)),
                status.outcome(code(c))
            );
        }
    }
}
