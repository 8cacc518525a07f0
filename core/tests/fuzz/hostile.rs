//! Strategies for hostile values: the numbers, dates, separators and bytes an attacker
//! (or a broken origin) sends. Every strategy mixes a few well-chosen edge values with
//! arbitrary ones, so both the known cliffs and the unknown ones are tried.

use http::{HeaderMap, HeaderName, HeaderValue, request, response};
use proptest::prelude::*;
use proptest::sample::select;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Numbers that sit on an arithmetic cliff somewhere.
pub const EDGE_U64: [u64; 16] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX - 1,
    u64::MAX / 2,
    1 << 53,
    (1 << 53) + 1,
    1 << 63,
    (1 << 63) - 1,
    1 << 31,
    1 << 32,
    (1 << 32) - 1,
    2 << 20,
    (2 << 20) - 1,
    1125899906842623,
];

/// A u64 that is often on a cliff.
pub fn u64_hostile() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => select(&EDGE_U64[..]),
        2 => 0u64..4096,
        2 => any::<u64>(),
        1 => select(&EDGE_U64[..]).prop_flat_map(|e| (Just(e), -3i64..=3)
            .prop_map(|(e, d)| e.wrapping_add_signed(d))),
    ]
}

/// The decimal spellings a number field may take: huge, negative, signed, padded, empty.
pub fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => u64_hostile().prop_map(|n| n.to_string()),
        1 => select(&[
            "18446744073709551616",
            "99999999999999999999999999",
            "340282366920938463463374607431768211456",
            "-1",
            "-0",
            "+1",
            "1e3",
            "0x10",
            "1.5",
            "",
            " ",
            " 7 ",
            "\t9",
            "00000000000000000000000000000000000001",
            "\"60\"",
            "\"\"",
            "١٢٣",
            "𝟗",
            "9999999999",
            "2147483648",
            "4294967296",
        ][..])
        .prop_map(str::to_owned),
    ]
}

/// Characters that break naive splitting and quoting.
pub fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                ",", ",,", "\"", "=", "==", "-", ";", " ", "\t", "é", "\u{feff}", "\u{0}", "*",
                "/", "\\", "W/", "bytes", "%", "#", "?", "@", ":", "[", "]", "\r\n", "\u{7f}", "ü",
            ][..]
        )
        .prop_map(str::to_owned),
        "[ -~]{0,6}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

/// A Cache-Control value: known directives with hostile values, flags, junk, repeats.
pub fn cache_control() -> impl Strategy<Value = String> {
    let name = select(
        &[
            "max-age",
            "s-maxage",
            "stale-while-revalidate",
            "stale-if-error",
            "max-stale",
            "min-fresh",
            "no-cache",
            "no-store",
            "private",
            "public",
            "must-revalidate",
            "proxy-revalidate",
            "immutable",
            "only-if-cached",
            "no-transform",
            "MAX-AGE",
            "Max-Age",
            " max-age ",
            "",
        ][..],
    );
    let value = prop_oneof![
        2 => Just(None),
        4 => number_text().prop_map(Some),
        1 => number_text().prop_map(|n| Some(format!("\"{n}\""))),
        1 => Just(Some("\"set-cookie, authorization\"".to_owned())),
        1 => junk().prop_map(Some),
    ];
    let directive = (name, value).prop_map(|(n, v)| match v {
        Some(v) => format!("{n}={v}"),
        None => n.to_owned(),
    });
    let sep = select(&[", ", ",", " , ", ",,", ";", " "][..]);
    prop_oneof![
        8 => proptest::collection::vec((directive, sep), 0..6).prop_map(|ds| {
            let mut s = String::new();
            for (d, sep) in ds {
                s.push_str(&d);
                s.push_str(sep);
            }
            s
        }),
        1 => junk(),
    ]
}

/// An HTTP date, valid or not, from 1970 to far beyond 9999.
pub fn http_date() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..253_402_300_799)
            .prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s))),
        2 => select(&[
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Thu, 01 Jan 1970 00:00:01 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Sat, 01 Jan 10000 00:00:00 GMT",
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "Tue, 19 Jan 2038 03:14:08 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            "0",
            "-1",
            "18446744073709551615",
            "",
            "Thu, 32 Feb 2024 25:61:61 GMT",
            "Fri, 13 Nov 2026 12:00:00 GMT",
        ][..])
        .prop_map(str::to_owned),
        1 => junk(),
    ]
}

/// An instant as an adapter may hand it in: near the epoch (either side), now-ish, the end
/// of httpdate's range, and as far as a `SystemTime` goes.
pub fn instant() -> impl Strategy<Value = SystemTime> {
    let far = select(
        &[
            0u64,
            1,
            59,
            86_400,
            1_700_000_000,
            253_402_300_799,
            253_402_300_800,
            1 << 33,
            1 << 40,
            (i64::MAX as u64) / 2,
            i64::MAX as u64 - 1,
            i64::MAX as u64,
            u64::MAX,
        ][..],
    );
    prop_oneof![
        4 => (1_600_000_000u64..1_900_000_000).prop_map(|s| at(s as i128)),
        2 => far.prop_map(|s| at(s as i128)),
        1 => (0u64..1000).prop_map(|s| at(-(s as i128))),
        1 => any::<u64>().prop_map(|s| at(s as i128)),
    ]
}

/// `UNIX_EPOCH ± secs`, clamped to what this platform's `SystemTime` can represent.
pub fn at(secs: i128) -> SystemTime {
    let mag = secs.unsigned_abs().min(u64::MAX as u128) as u64;
    let mut d = Duration::from_secs(mag);
    loop {
        let t = if secs < 0 {
            UNIX_EPOCH.checked_sub(d)
        } else {
            UNIX_EPOCH.checked_add(d)
        };
        match t {
            Some(t) => return t,
            None => d /= 2,
        }
    }
}

/// A duration to move the clock by: none, seconds, a day, centuries, "forever".
pub fn advance() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (0u64..120).prop_map(Duration::from_secs),
        2 => select(&[0u64, 1, 5, 60, 61, 121, 3600, 86_400, 31_536_000][..])
            .prop_map(Duration::from_secs),
        1 => select(&[1u64 << 31, 1 << 40, i64::MAX as u64, u64::MAX][..])
            .prop_map(Duration::from_secs),
    ]
}

/// `t + d`, saturating at the largest representable instant.
pub fn later(t: SystemTime, d: Duration) -> SystemTime {
    let mut d = d;
    loop {
        match t.checked_add(d) {
            Some(t) => return t,
            None if d.is_zero() => return t,
            None => d /= 2,
        }
    }
}

/// Raw bytes for a header value: whatever `HeaderValue` accepts (obs-text included).
pub fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..24)
}

/// A header value from text, or from raw bytes when the text is not a valid value.
pub fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s)
        .ok()
        .or_else(|| HeaderValue::from_bytes(s.as_bytes()).ok())
}

/// Appends `name: v` when `v` is a valid header value (hostile text often is not).
pub fn append(h: &mut HeaderMap, name: &str, v: &str) {
    if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), value(v)) {
        h.append(n, v);
    }
}

/// A Range header value: well-formed specs with cliff numbers, repeats, junk.
pub fn range_value() -> impl Strategy<Value = String> {
    let spec = prop_oneof![
        (number_text(), number_text()).prop_map(|(a, b)| format!("{a}-{b}")),
        number_text().prop_map(|a| format!("{a}-")),
        number_text().prop_map(|n| format!("-{n}")),
        (u64_hostile(), u64_hostile()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        junk(),
    ];
    let unit = select(
        &[
            "bytes=", "bytes=", "bytes=", "Bytes=", "bytes =", "items=", "",
        ][..],
    );
    prop_oneof![
        8 => (unit, proptest::collection::vec(spec, 0..20)).prop_map(|(u, specs)| {
            format!("{u}{}", specs.join(","))
        }),
        1 => select(&[
            "bytes=0-18446744073709551614",
            "bytes=0-18446744073709551615",
            "bytes=0-1125899906842623",
            "bytes=-18446744073709551615",
            "bytes=18446744073709551615-",
            "bytes=18446744073709551614-18446744073709551615",
            "bytes=-0",
            "bytes=0-0,-1",
            "bytes=1-,0-,1-,0-,1-,0-,1-,0-,1-,0-,1-,0-,1-,0-,1-,0-",
        ][..])
        .prop_map(str::to_owned),
        1 => junk(),
    ]
}

// ---- heads ----------------------------------------------------------------------------

/// A response head as generated: status and fields in order (repeats allowed).
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub fields: Vec<(&'static str, String)>,
}

pub fn request_fields() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let field = prop_oneof![
        4 => cache_control().prop_map(|v| ("cache-control", v)),
        1 => select(&["no-cache", "", "x"][..]).prop_map(|v| ("pragma", v.to_owned())),
        1 => Just(("authorization", "Basic dTpw".to_owned())),
        1 => select(&["\"v1\"", "W/\"v1\"", "*", "\"v1\", \"v2\"", ""][..])
            .prop_map(|v| ("if-none-match", v.to_owned())),
        1 => http_date().prop_map(|v| ("if-modified-since", v)),
        1 => prop_oneof![http_date(), Just("\"v1\"".to_owned())]
            .prop_map(|v| ("if-range", v)),
        1 => range_value().prop_map(|v| ("range", v)),
        2 => select(&["gzip", "br", "gzip, br", " gzip ,br ", "", "*"][..])
            .prop_map(|v| ("accept-encoding", v.to_owned())),
        1 => select(&["en", "fr", ""][..]).prop_map(|v| ("accept-language", v.to_owned())),
        1 => junk().prop_map(|v| ("cookie", v)),
    ];
    proptest::collection::vec(field, 0..6)
}

pub fn response_head() -> impl Strategy<Value = Head> {
    let status = select(
        &[
            200u16, 200, 200, 203, 204, 206, 301, 304, 404, 410, 500, 503, 599, 100, 199, 999,
        ][..],
    );
    let field = prop_oneof![
        6 => cache_control().prop_map(|v| ("cache-control", v)),
        2 => number_text().prop_map(|v| ("age", v)),
        1 => (number_text(), junk()).prop_map(|(n, j)| ("age", format!("{n}{j}{n}"))),
        2 => http_date().prop_map(|v| ("expires", v)),
        3 => http_date().prop_map(|v| ("date", v)),
        2 => http_date().prop_map(|v| ("last-modified", v)),
        2 => select(&["accept-encoding", "*", "Accept-Encoding, accept-language", "", ",,", "x y", "cookie"][..])
            .prop_map(|v| ("vary", v.to_owned())),
        2 => select(&["\"v1\"", "W/\"v1\"", "\"\"", "garbage"][..]).prop_map(|v| ("etag", v.to_owned())),
        2 => number_text().prop_map(|v| ("content-length", v)),
        1 => Just(("set-cookie", "a=b".to_owned())),
        1 => select(&["no-cache", ""][..]).prop_map(|v| ("pragma", v.to_owned())),
        1 => select(&["close, x-a", "keep-alive", ""][..]).prop_map(|v| ("connection", v.to_owned())),
    ];
    (status, proptest::collection::vec(field, 0..8))
        .prop_map(|(status, fields)| Head { status, fields })
}

pub fn request(method: &str, fields: &[(&'static str, String)]) -> request::Parts {
    let mut p = http::Request::builder()
        .method(method)
        .uri("http://origin.test/a")
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    for (k, v) in fields {
        append(&mut p.headers, k, v);
    }
    p
}

pub fn response(h: &Head) -> response::Parts {
    let mut p = http::Response::builder()
        .status(h.status)
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    for (k, v) in &h.fields {
        append(&mut p.headers, k, v);
    }
    p
}
