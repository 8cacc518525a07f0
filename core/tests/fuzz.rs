//! Fuzz targets on the stable toolchain: every parser and decision of the core that takes
//! outside input, driven by proptest strategies that generate hostile values (cliff
//! numbers, overflowing dates, separators, quotes, unicode, repeats) and raw bytes, each
//! checking properties (no panic, bounded output, round trips, invariants), plus the engine
//! driven by random input sequences.
//!
//! CI runs a bounded number of cases (about a minute in debug on two cores). A longer run:
//!
//! ```text
//! LARDER_FUZZ_CASES=1000000 cargo test --release -p larder-core --test fuzz
//! ```
//!
//! `LARDER_FUZZ_CASES` is the case count of each parser target; the engine target runs a
//! quarter of it (each of its cases is a sequence of up to 60 inputs). Every case runs in a
//! forked child with a time limit, so an abort (allocation failure) or a hang is reported
//! with its input, shrunk, instead of killing the run. Failing seeds are saved beside this
//! file (`*.proptest-regressions`) and replayed first on the next run.

mod fuzz {
    pub mod engine;
    pub mod hostile;
    pub mod known;
}

use fuzz::hostile::{self, append, request, request_fields, response, response_head, u64_hostile};
use fuzz::known;
use http::{HeaderMap, Method, StatusCode, Uri};
use larder_core::EntryId;
use larder_core::door::{self, Door};
use larder_core::hop;
use larder_core::key::CacheKey;
use larder_core::policy::conditional;
use larder_core::policy::directives::{Directives, directives};
use larder_core::policy::vary::VaryKey;
use larder_core::policy::{
    self, CacheMode, Policy, PolicyConfig, Reuse, Revalidated, content_length,
};
use larder_core::range::{self, ByteRange, MAX_RANGES, RangeSpec};
use larder_core::segment::{Plan, SegmentAnswer, Segments};
use larder_core::storage::entry;
use proptest::prelude::*;
use proptest::sample::select;
use std::time::Duration;

/// Cases per parser target (`LARDER_FUZZ_CASES`, default sized for CI).
pub fn cases() -> u32 {
    std::env::var("LARDER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10_000)
}

/// The proptest settings every target uses: `n` cases, each in a forked child with a time
/// limit (an abort or a hang is a finding, not the end of the run), bounded shrinking.
pub fn config(n: u32) -> ProptestConfig {
    let fork = std::env::var("LARDER_FUZZ_FORK").map_or(true, |v| v != "0");
    ProptestConfig {
        cases: n.max(1),
        fork,
        timeout: if fork { 20_000 } else { 0 },
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

// ---- 1. range ---------------------------------------------------------------------------

fn spec() -> impl Strategy<Value = RangeSpec> {
    prop_oneof![
        (u64_hostile(), u64_hostile()).prop_map(|(a, b)| RangeSpec::FromTo(a.min(b), a.max(b))),
        u64_hostile().prop_map(RangeSpec::From),
        u64_hostile().prop_map(RangeSpec::Suffix),
    ]
}

fn spec_text(s: &RangeSpec) -> String {
    match *s {
        RangeSpec::FromTo(a, b) => format!("{a}-{b}"),
        RangeSpec::From(a) => format!("{a}-"),
        RangeSpec::Suffix(n) => format!("-{n}"),
    }
}

/// The bytes a spec selects in a representation of `total` bytes (None: unsatisfiable).
fn model(s: &RangeSpec, total: u64) -> Option<(u64, u64)> {
    if total == 0 {
        return None;
    }
    match *s {
        RangeSpec::FromTo(a, _) | RangeSpec::From(a) if a >= total => None,
        RangeSpec::FromTo(a, b) => Some((a, b.min(total - 1))),
        RangeSpec::From(a) => Some((a, total - 1)),
        RangeSpec::Suffix(0) => None,
        RangeSpec::Suffix(n) => Some((total.saturating_sub(n), total - 1)),
    }
}

fn check_resolved(specs: &[RangeSpec], total: u64) -> Result<(), TestCaseError> {
    let got = range::resolve(specs, total);
    let wanted: Vec<(u64, u64)> = specs.iter().filter_map(|s| model(s, total)).collect();
    match got {
        Err(_) => prop_assert!(
            wanted.is_empty(),
            "416 for {specs:?} / {total}, but {wanted:?} are satisfiable"
        ),
        Ok(rs) => {
            prop_assert!(!rs.is_empty() && rs.len() <= specs.len());
            let mut sum: u128 = 0;
            for r in &rs {
                prop_assert!(
                    r.start <= r.end && r.end < total,
                    "{r:?} outside 0..{total}"
                );
                sum += r.len() as u128;
            }
            // Overlaps are merged: a response is never larger than the representation.
            prop_assert!(
                sum <= total as u128,
                "{specs:?} / {total}: {sum} bytes of ranges"
            );
            for (a, b) in wanted {
                prop_assert!(
                    rs.iter().any(|r| r.start <= a && b <= r.end),
                    "{a}-{b} of {specs:?} / {total} not covered by {rs:?}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(cases()))]

    /// `range::parse` on anything: no panic, at most MAX_RANGES, ordered ends.
    #[test]
    fn range_parse_any_text(s in prop_oneof![hostile::range_value(), any::<String>()]) {
        if let Some(specs) = range::parse(&s) {
            prop_assert!(!specs.is_empty() && specs.len() <= MAX_RANGES);
            for sp in &specs {
                if let RangeSpec::FromTo(a, b) = sp {
                    prop_assert!(a <= b);
                }
            }
        }
    }

    /// Well-formed specs survive printing and parsing; resolving them against any length
    /// (0 and u64::MAX included) gives ranges inside the representation, covering what was
    /// asked, never larger in sum than the representation.
    #[test]
    fn range_round_trip_and_resolve(
        specs in proptest::collection::vec(spec(), 1..=MAX_RANGES),
        total in u64_hostile(),
        spaces in any::<bool>(),
    ) {
        let sep = if spaces { " , " } else { "," };
        let text = format!("bytes={}", specs.iter().map(spec_text).collect::<Vec<_>>().join(sep));
        prop_assert_eq!(range::parse(&text), Some(specs.clone()));
        check_resolved(&specs, total)?;
        check_resolved(&specs, 0)?;
        check_resolved(&specs, u64::MAX)?;
    }

    /// `ByteRange::len` and `content_range` for any ordered pair; `parse_content_range` on
    /// anything, and on what `content_range` prints.
    #[test]
    fn content_range_any(
        a in u64_hostile(),
        b in u64_hostile(),
        total in u64_hostile(),
        text in prop_oneof![
            (hostile::number_text(), hostile::number_text(), hostile::number_text())
                .prop_map(|(a, b, t)| format!("bytes {a}-{b}/{t}")),
            (hostile::junk(), hostile::number_text()).prop_map(|(j, n)| format!("bytes {n}{j}{n}/*")),
            any::<String>(),
        ],
    ) {
        let r = ByteRange { start: a.min(b), end: a.max(b) };
        let len = r.len();
        prop_assert_eq!(len, (r.end - r.start).saturating_add(1));
        let cr = r.content_range(total);
        let parsed = range::parse_content_range(&cr);
        if r.end < total {
            prop_assert_eq!(parsed, Some((r, Some(total))));
        } else {
            prop_assert_eq!(parsed, None);
        }
        if let Some((got, t)) = range::parse_content_range(&text) {
            prop_assert!(got.start <= got.end);
            prop_assert!(t.is_none_or(|t| got.end < t), "{text:?} -> {got:?}/{t:?}");
        }
    }
}

// ---- 2. segment -------------------------------------------------------------------------

fn segment_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        select(
            &[
                1u64,
                2,
                3,
                7,
                1 << 20,
                2 << 20,
                u64::MAX,
                u64::MAX / 2,
                1 << 63
            ][..]
        ),
        1u64..=u64::MAX,
    ]
}

/// Checks a plan against the specs it was made from: bounded by the number of specs
/// whatever the numbers, spans ascending and disjoint, covering every byte asked for.
fn check_plan(
    segs: &Segments,
    specs: &[RangeSpec],
    total: Option<u64>,
) -> Result<(), TestCaseError> {
    let plan = segs.plan(specs, total);
    // Bounded output: the plan's size depends on the number of specs, never on the values.
    let shown = format!("{plan:?}");
    prop_assert!(
        shown.len() <= 64 + specs.len() * 96,
        "plan of {} specs is {} bytes",
        specs.len(),
        shown.len()
    );
    match (&plan, total) {
        (Plan::NeedLength, None) => prop_assert!(
            specs.iter().any(|s| matches!(s, RangeSpec::Suffix(_))),
            "NeedLength without a suffix range"
        ),
        (Plan::NeedLength, Some(_)) => prop_assert!(false, "NeedLength with a known length"),
        (Plan::Unsatisfiable, Some(t)) => {
            prop_assert!(specs.iter().all(|s| model(s, t).is_none()))
        }
        (Plan::Unsatisfiable, None) => prop_assert!(false, "416 without a length"),
        (Plan::Segments(spans), _) => {
            prop_assert!(!spans.is_empty() && spans.len() <= specs.len());
            for w in spans.windows(2) {
                prop_assert!(w[0].last < w[1].first, "spans not ascending: {spans:?}");
            }
            for s in spans.iter() {
                prop_assert!(s.first <= s.last);
                if let Some(t) = total {
                    prop_assert!(s.last <= segs.index_of(t.saturating_sub(1)));
                }
            }
            let covered = |i: u64| spans.iter().any(|s| s.first <= i && i <= s.last);
            let wanted: Vec<(u64, u64)> = match total {
                Some(t) => specs.iter().filter_map(|s| model(s, t)).collect(),
                None => specs
                    .iter()
                    .map(|s| match *s {
                        RangeSpec::FromTo(a, b) => (a, b),
                        RangeSpec::From(a) | RangeSpec::Suffix(a) => (a, a),
                    })
                    .collect(),
            };
            for (a, b) in wanted {
                prop_assert!(
                    covered(segs.index_of(a)) && covered(segs.index_of(b)),
                    "{a}-{b} not covered by {spans:?}"
                );
            }
            // Lazy enumeration: taking a few indexes costs a few steps.
            let first: Vec<u64> = plan.indexes().take(4).collect();
            prop_assert!(!first.is_empty() && first.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(
                plan.single().is_some(),
                spans.len() == 1 && spans[0].first == spans[0].last
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(cases()))]

    /// Planning, bounds, Range headers and answer checks: bounded in time and memory
    /// whatever the numbers (a plan once materialised every index of `0-18446744073709551614`
    /// and aborted the process).
    #[test]
    fn segment_plan_bounds_check(
        size in segment_size(),
        specs in prop_oneof![
            4 => proptest::collection::vec(spec(), 1..=MAX_RANGES),
            // Mapped, not filtered: most hostile values are no range, and a filter would
            // exhaust proptest's reject budget on long runs.
            1 => hostile::range_value()
                .prop_map(|s| range::parse(&s).unwrap_or_else(|| vec![RangeSpec::From(0)])),
        ],
        total in proptest::option::of(u64_hostile()),
        index in u64_hostile(),
        status in select(&[200u16, 206, 206, 206, 304, 416, 500, 100, 999][..]),
        content_range in prop_oneof![
            (u64_hostile(), u64_hostile(), u64_hostile())
                .prop_map(|(a, b, t)| format!("bytes {a}-{b}/{t}")),
            (u64_hostile(), u64_hostile()).prop_map(|(a, b)| format!("bytes {a}-{b}/*")),
            hostile::junk(),
        ],
    ) {
        let segs = Segments::new(size);
        check_plan(&segs, &specs, total)?;
        check_plan(&segs, &specs, None)?;

        let _ = segs.count(total.unwrap_or(u64::MAX));
        let b = segs.bounds(index, total);
        prop_assert!(b.start <= b.end);
        prop_assert!(b.end - b.start < size, "{b:?} longer than a segment of {size}");
        if let Some(t) = total.filter(|t| b.start < *t) {
            prop_assert!(b.end < t, "{b:?} past {t}");
        }
        let header = segs.range_header(index);
        let whole = segs.bounds(index, None);
        prop_assert_eq!(
            range::parse(&header),
            Some(vec![RangeSpec::FromTo(whole.start, whole.end)]),
            "{}", header
        );

        let mut h = HeaderMap::new();
        append(&mut h, "content-range", &content_range);
        let status = StatusCode::from_u16(status).expect("valid");
        match segs.check(index, status, &h) {
            Ok(SegmentAnswer::Segment { range, total }) => {
                prop_assert_eq!(status, StatusCode::PARTIAL_CONTENT);
                prop_assert_eq!(range, segs.bounds(index, Some(total)));
                prop_assert!(range.end < total);
            }
            Ok(SegmentAnswer::WholeObject) => prop_assert_eq!(status, StatusCode::OK),
            Err(_) => {}
        }
        // The honest answer to a segment inside the object is accepted.
        if let Some(t) = total.filter(|t| whole.start < *t) {
            let good = segs.bounds(index, Some(t));
            let mut h = HeaderMap::new();
            append(&mut h, "content-range", &good.content_range(t));
            prop_assert_eq!(
                segs.check(index, StatusCode::PARTIAL_CONTENT, &h),
                Ok(SegmentAnswer::Segment { range: good, total: t })
            );
        }
    }
}

// ---- 3. Cache-Control and the policy ----------------------------------------------------

proptest! {
    #![proptest_config(config(cases()))]

    /// Content-Length on raw bytes and hostile numbers: one parser for framing and reading.
    #[test]
    fn content_length_any(
        values in proptest::collection::vec(
            prop_oneof![
                hostile::number_text().prop_map(String::into_bytes),
                (hostile::number_text(), hostile::number_text())
                    .prop_map(|(a, b)| format!("{a}, {b}").into_bytes()),
                hostile::header_bytes(),
            ],
            0..3,
        ),
    ) {
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                h.append(http::header::CONTENT_LENGTH, v);
            }
        }
        // One parser: the framing check and the plain reading never disagree, and a length
        // is accepted only when every member of every line spells that very number.
        let declared = policy::declared_length(&h);
        prop_assert_eq!(policy::content_length(&h), declared.ok().flatten());
        if let Ok(Some(n)) = declared {
            for v in h.get_all(http::header::CONTENT_LENGTH) {
                for part in v.to_str().expect("valid means text").split(',') {
                    prop_assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
                }
            }
        }
    }

    /// Directive parsing on raw bytes and hostile values: no panic; every name the parser
    /// yields is in the field (lower-cased); values only with presence; and a prepared
    /// response's Cache-Control (what `http-cache-semantics` is given) means to this parser
    /// what the original meant, so the crate and the core cannot disagree on freshness.
    #[test]
    fn directives_any(
        values in proptest::collection::vec(
            prop_oneof![
                hostile::cache_control().prop_map(String::into_bytes),
                hostile::header_bytes(),
            ],
            0..4,
        ),
    ) {
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                h.append(http::header::CACHE_CONTROL, v);
            }
        }
        let text: String = h.get_all(http::header::CACHE_CONTROL).iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(",");
        for d in h.get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(directives) {
            prop_assert!(text.contains(&d.name), "{:?} not in {:?}", d.name, text);
        }
        let d = Directives::parse(&h);
        prop_assert!(d.max_age().is_none() || d.has_max_age());
        prop_assert!(d.s_maxage().is_none() || d.has_s_maxage());
        prop_assert!(d.max_stale().is_none() || d.has_max_stale());
        prop_assert!(d.min_fresh().is_none() || d.has_min_fresh());
        let mut raw = http::Response::new(()).into_parts().0;
        raw.headers = h.clone();
        // What the policy judges: the canonical form.
        let res = Policy::default().canonical_response(&raw);
        let p = Directives::parse(&res.headers);
        prop_assert_eq!(
            (p.max_age(), p.s_maxage(), p.stale_while_revalidate(), p.stale_if_error()),
            (d.max_age(), d.s_maxage(), d.stale_while_revalidate(), d.stale_if_error()),
            "{:?} became {:?}", h, res.headers
        );
        prop_assert_eq!(
            (p.no_store(), p.public(), p.must_revalidate(), p.proxy_revalidate(), p.immutable()),
            (d.no_store(), d.public(), d.must_revalidate(), d.proxy_revalidate(), d.immutable())
        );
        // And the prepared field splits the same at every comma (the crate's way) as
        // quote-aware: nothing hides inside quotes any more.
        for v in res.headers.get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()) {
            let naive = v.split(',').filter(|m| !m.trim().is_empty()).count();
            prop_assert_eq!(directives(v).count(), naive, "{:?}", v);
        }
    }

    /// The whole policy on hostile heads and instants: `prepare_response`, `storable`,
    /// then `ttl`/`age`/`keep_until`/`staleness`, `reuse`, `stale_if_error` and
    /// `revalidated` at other instants. Nothing panics, and the results hold together.
    #[test]
    fn policy_decisions(
        shared in any::<bool>(),
        min_ttl in select(&[0u64, 60, u64::MAX][..]),
        max_object in select(&[0u64, 10, 64 << 20, u64::MAX][..]),
        method in select(&["GET", "GET", "HEAD", "POST"][..]),
        req_fields in request_fields(),
        res in response_head(),
        later_fields in request_fields(),
        later_method in select(&["GET", "HEAD", "DELETE"][..]),
        revalidation in response_head(),
        t0 in hostile::instant(),
        dt in hostile::advance(),
        dt2 in hostile::advance(),
    ) {
        let policy = Policy::new(PolicyConfig {
            mode: if shared { CacheMode::Shared } else { CacheMode::Private },
            min_ttl: Duration::from_secs(min_ttl),
            max_object_size: max_object,
            heuristic_fraction: 0.1,
            stale_if_unreachable: Duration::from_secs(min_ttl.min(1 << 31)),
            targeted: vec!["cdn-cache-control".into()],
            rules: Vec::new(),
        });
        let client = request(method, &req_fields);
        let sent = policy::fill_request(&client);
        prop_assert_eq!(&sent.method, &Method::GET);
        for n in ["range", "if-none-match", "if-modified-since", "if-range", "connection", "host"] {
            prop_assert!(!sent.headers.contains_key(n), "{} reached the origin", n);
        }
        let mut head = response(&res);
        policy.prepare_response(&mut head);
        if let Some(age) = head.headers.get(http::header::AGE) {
            let ok = age.to_str().ok().and_then(|a| a.parse::<u64>().ok()).is_some_and(|a| a <= 1 << 31);
            prop_assert!(ok, "Age {:?} after prepare_response", age);
        }
        // `sent` is the request the cache makes; judge as the engine does (with the client's
        // method, to cover the HEAD/POST refusals too).
        let mut judged = policy::fill_request(&client);
        judged.method = client.method.clone();
        let decision = policy.storable(&judged, &head, t0);
        let Ok(stored) = decision else {
            return Ok(());
        };
        prop_assert_eq!(&client.method, &Method::GET);
        prop_assert!(head.status != StatusCode::PARTIAL_CONTENT);
        if let Some(len) = content_length(&head.headers) {
            prop_assert!(len <= max_object);
        }
        // httpdate stops at 9999-12-31: past it, the crate's arithmetic on Date is not
        // meaningful (only "no panic" is asked there).
        let dated = t0 < hostile::at(253_402_300_799 - (1 << 31));
        // `min_ttl` raises lifetimes (never past 2^31 s, RFC 9111 §1.2.2), whatever the origin
        // or the minimum says.
        prop_assert!(stored.ttl(t0) <= Duration::from_secs(1 << 31));
        let plain = head.headers.is_empty() && head.status == StatusCode::OK;
        prop_assert!(
            !dated || !plain || stored.ttl(t0) >= Duration::from_secs(min_ttl.min(1 << 31)),
            "a 200 with nothing to say about its freshness lives min_ttl"
        );
        prop_assert!(*stored.vary() != VaryKey::Star);
        prop_assert!(stored.vary().matches(&client.headers), "a variant must match its own request");

        let t1 = hostile::later(t0, dt);
        let t2 = hostile::later(t1, dt2);
        // Freshness only runs out; age only grows.
        prop_assert!(stored.ttl(t1) <= stored.ttl(t0));
        prop_assert!(stored.ttl(t2) <= stored.ttl(t1));
        prop_assert!(stored.age(t1) >= stored.age(t0));
        prop_assert!(stored.age(t2) >= stored.age(t1));
        let _ = stored.keep_until(t1);
        let _ = policy.staleness(&stored, t1);

        let plain = request("GET", &[]);
        if stored.ttl(t1) > Duration::ZERO && stored.vary().matches(&plain.headers) {
            prop_assert!(matches!(policy.reuse(&stored, &plain, t1), Reuse::Fresh));
        }
        let later = request(later_method, &later_fields);
        let reuse = policy.reuse(&stored, &later, t1);
        if later.method == Method::DELETE {
            prop_assert!(matches!(reuse, Reuse::NoMatch(_)));
        }
        if let Reuse::Stale { revalidate, .. } = &reuse {
            prop_assert_eq!(&revalidate.method, &Method::GET);
            prop_assert!(!revalidate.headers.contains_key("range"));
        }
        let _ = reuse.token();
        let _ = policy.stale_if_error(&stored, &later, t2);

        let mut answer = response(&revalidation);
        policy.prepare_response(&mut answer);
        match policy.revalidated(&stored, &head, &sent, &answer, t2) {
            Revalidated::NotModified { stored: fresh, head } => {
                prop_assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
                prop_assert!(!head.headers.contains_key(http::header::AGE));
                let _ = fresh.ttl(t2);
                let _ = policy.reuse(&fresh, &later, hostile::later(t2, dt));
            }
            Revalidated::Modified => {}
        }
        // Client preconditions against the stored head: no panic whatever the values.
        let _ = conditional::is_not_modified(&later.headers, &head.headers);
        let _ = conditional::if_range_holds(&later.headers, &head.headers);
        let nm = conditional::not_modified_response(&head);
        prop_assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
        prop_assert!(!nm.headers.contains_key("content-length"));
    }

    /// Vary on hostile names and values: a request always matches the key made from it.
    #[test]
    fn vary_matches_its_own_request(req_fields in request_fields(), res in response_head()) {
        let req = request("GET", &req_fields);
        let head = response(&res);
        let key = VaryKey::of(&req.headers, &head.headers);
        if key != VaryKey::Star {
            prop_assert!(key.matches(&req.headers));
        } else {
            prop_assert!(!key.matches(&req.headers));
        }
    }
}

// ---- 4. cache keys ----------------------------------------------------------------------

fn uri_text() -> impl Strategy<Value = String> {
    let scheme = select(&["http", "HTTP", "https", "hTtPs", "ftp", "file", "h", ""][..]);
    let userinfo = select(&["", "", "u@", "u:p@", "@"][..]);
    let host = prop_oneof![
        select(
            &[
                "example.test",
                "EXAMPLE.test",
                "Ex-Ample.TEST",
                "127.0.0.1",
                "0x7f000001",
                "2130706433",
                "[::1]",
                "[::FFFF:127.0.0.1]",
                "[fe80::1%25eth0]",
                "localhost.",
                "a",
                "xn--bcher-kva.test",
                "",
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-zA-Z0-9.-]{0,12}",
    ];
    let port = prop_oneof![
        3 => Just(String::new()),
        2 => select(&[":", ":0", ":80", ":443", ":8080", ":65535", ":65536", ":99999",
            ":18446744073709551615", ":00080", ":-1", ":+80", ":8o"][..]).prop_map(str::to_owned),
        1 => any::<u32>().prop_map(|p| format!(":{p}")),
    ];
    let path = prop_oneof![
        select(
            &[
                "", "/", "/a", "/A?B=1", "/a%2Fb", "/a/../b", "//x", "/a?", "/?q=%zz", "/a#frag",
                "/a?b#c", "/%", "/~user", "/a;b=c", "/é", "*"
            ][..]
        )
        .prop_map(str::to_owned),
        "(/[a-zA-Z0-9%._~!$&'()*+,;=:@-]{0,8}){0,3}(\\?[a-zA-Z0-9%._~!$&'()*+,;=:@/?-]{0,10})?(#[a-z]{0,3})?",
    ];
    prop_oneof![
        8 => (scheme, userinfo, host, port, path)
            .prop_map(|(s, u, h, p, pa)| format!("{s}://{u}{h}{p}{pa}")),
        1 => any::<String>(),
        1 => "[ -~]{0,24}",
    ]
}

proptest! {
    #![proptest_config(config(cases()))]

    /// `CacheKey::from_uri` on every URI `http::Uri` accepts: no panic; the key is an
    /// absolute http(s) URI without a fragment, lower-case scheme and host, and normalising
    /// it again gives the same key. A port that is not a port never vanishes from a key.
    #[test]
    fn cache_key_normalisation(text in uri_text()) {
        let Ok(uri) = text.parse::<Uri>() else { return Ok(()) };
        let Ok(key) = CacheKey::from_uri(&uri) else { return Ok(()) };
        let k = key.as_str();
        if uri.host() == Some("") && known::tolerated(&known::KEY_EMPTY_HOST) {
            return Ok(());
        }
        prop_assert!(k.starts_with("http://") || k.starts_with("https://"), "{k}");
        prop_assert!(!k.contains('#'), "fragment in {k}: segment keys would collide");
        let again: Uri = match k.parse() {
            Ok(u) => u,
            Err(e) => return Err(TestCaseError::fail(format!("key {k:?} of {text:?} is not a URI: {e}"))),
        };
        let auth = again.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let host = again.host().unwrap_or("");
        let lower = host.to_ascii_lowercase();
        prop_assert_eq!(host, lower.as_str());
        let scheme = uri.scheme_str().map(|s| s.to_ascii_lowercase());
        prop_assert_eq!(again.scheme_str(), scheme.as_deref());
        let renormalised = CacheKey::from_uri(&again);
        prop_assert_eq!(renormalised.as_ref().ok(), Some(&key), "not idempotent for {:?}", text);
        // Issue 8 (9): `http://h:99999/` must not become the key of `http://h/`.
        let port = port_text(&uri);
        if bad_port(&uri) && !known::tolerated(&known::KEY_BAD_PORT) {
            prop_assert!(false, "{:?} has port {:?} but its key is {:?} (authority {:?})", text, port, k, auth);
        }
        let seg = key.segment(7);
        prop_assert_eq!(seg.as_str(), format!("{k}#seg=7"));
    }
}

/// The port as written in a URI's authority (`None`: no port; `Some("")`: `host:`).
fn port_text(u: &Uri) -> Option<String> {
    let a = u.authority()?.as_str();
    let hostport = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let after_host = match hostport.rfind(']') {
        Some(i) => &hostport[i + 1..],
        None => hostport,
    };
    match after_host.rsplit_once(':') {
        Some((_, p)) => Some(p.to_owned()),
        // `[::1]*`: something that is not a port after an IPv6 literal.
        None if hostport.starts_with('[') && !after_host.is_empty() => Some(after_host.to_owned()),
        None => None,
    }
}

/// A port that is written but is no TCP port (1 to 65535): issue 8 (9).
fn bad_port(u: &Uri) -> bool {
    port_text(u).is_some_and(|p| {
        let valid = p.bytes().all(|b| b.is_ascii_digit()) && matches!(p.parse::<u16>(), Ok(1..));
        !p.is_empty() && !valid
    })
}

// ---- 5. front doors ---------------------------------------------------------------------

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => uri_text(),
        2 => "(/[a-zA-Z0-9%._~@:-]{0,6}){1,3}(\\?[a-zA-Z0-9%=&._~@:/-]{0,12})?",
        2 => uri_text().prop_map(|u| format!("/proxy?{}", door::proxy_query(&u))),
        1 => (uri_text(), hostile::junk()).prop_map(|(u, j)| format!("/proxy?x=1&q={u}{j}&q=http://second.test/")),
        1 => select(&["*", "/proxy", "/proxy?", "/proxy?q=", "/proxy?q=%", "example.test:443",
            "/", "//evil.test/x", "/@evil.test", "/proxy/x?q=http://a/", "/%2e%2e/"][..]).prop_map(str::to_owned),
    ]
}

fn mirror() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        select(
            &[
                "http://mirror.test",
                "https://mirror.test/",
                "https://mirror.test/debian",
                "http://mirror.test:8080",
                "http://mirror.test:8080/base/",
                "http://[::1]:3000/x",
                "http://Mirror.TEST/deb/",
                "http://u@mirror.test/",
            ][..],
        )
        .prop_map(str::to_owned),
    )
}

proptest! {
    #![proptest_config(config(cases()))]

    /// `door::resolve` on any request target, method and mirror / proxy-path setting: no
    /// panic; what it resolves is an absolute http(s) URI that makes a cache key; the mirror
    /// door never leaves the mirror's scheme, host and port.
    #[test]
    fn door_resolve_any_target(
        target in target(),
        method in select(&["GET", "HEAD", "OPTIONS", "CONNECT", "POST", "PURGE"][..]),
        host in proptest::option::of(select(&["mirror.test", "evil.test", "", "a:99999"][..])),
        mirror in mirror(),
        proxy_path in select(&["/proxy", "/", "", "/p/q", "*"][..]),
    ) {
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let parts = b.body(()).expect("valid").into_parts().0;
        let mirror: Option<Uri> = mirror.map(|m| m.parse().expect("valid mirror"));
        let Ok((got, d)) = door::resolve(&parts, mirror.as_ref(), proxy_path) else {
            return Ok(());
        };
        prop_assert!(matches!(got.scheme_str(), Some("http" | "https")), "{got}");
        prop_assert!(got.authority().is_some());
        prop_assert_eq!(d == Door::Forward, parts.uri.scheme().is_some());
        let key = CacheKey::from_uri(&got);
        prop_assert!(
            key.is_ok() || bad_port(&got) || got.host() == Some(""),
            "{} resolved to {} which makes no key: {:?}", target, got, key
        );
        if d == Door::Mirror {
            let m = mirror.as_ref().expect("mirror door without a mirror");
            let (ga, ma) = (got.authority().expect("checked"), m.authority().expect("mirror"));
            let same = got.scheme_str() == m.scheme_str()
                && ga.host().eq_ignore_ascii_case(ma.host())
                && ga.port_u16() == ma.port_u16()
                && ga.as_str().eq_ignore_ascii_case(ma.as_str());
            prop_assert!(
                same || known::tolerated(&known::MIRROR_ASTERISK),
                "mirror {} + target {:?} left the mirror: {}", m, target, got
            );
        }
    }

    /// Several mirrors by prefix (`--mirror /PREFIX=URL`): no panic; an origin-form
    /// target resolves to exactly one mirror's scheme, authority and path, the one with the
    /// longest prefix that serves it whole-segment; nothing else names a mirror.
    #[test]
    fn door_prefixed_mirrors(
        target in target(),
        root in proptest::bool::ANY,
    ) {
        let mut specs = vec![
            "/debian=http://deb.test/debian",
            "/debian/security=http://sec.test:8080/s/",
            "/pypi=https://pypi.test",
        ];
        if root {
            specs.push("http://all.test/base");
        }
        let mirrors: Vec<door::Mirror> =
            specs.iter().map(|s| door::Mirror::parse(s).expect("valid")).collect();
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
        let parts = http::Request::get(uri).body(()).expect("valid").into_parts().0;
        let Ok((got, d)) = door::resolve_in(&parts, &mirrors, "/proxy") else {
            return Ok(());
        };
        if d != Door::Mirror {
            return Ok(());
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let serves = |m: &door::Mirror| {
            let rest = pq.strip_prefix(m.prefix());
            rest.is_some_and(|r| r.is_empty() || r.starts_with(['/', '?']))
        };
        let chosen = mirrors
            .iter()
            .filter(|m| serves(m))
            .max_by_key(|m| m.prefix().len())
            .expect("a mirror door names a mirror that serves the path");
        let base = chosen.base();
        prop_assert_eq!(got.scheme_str(), base.scheme_str());
        prop_assert_eq!(got.authority(), base.authority(), "{} for {:?}", got, target);
        prop_assert!(
            got.path().starts_with(base.path().trim_end_matches('/')),
            "{} left {}'s path for {:?}", got, base, target
        );
    }

    /// The `/proxy?q=` door gives back exactly the URL `proxy_query` escaped.
    #[test]
    fn proxy_query_round_trip(url in uri_text()) {
        let Ok(u) = url.parse::<Uri>() else { return Ok(()) };
        if !matches!(u.scheme_str(), Some("http" | "https")) || u.authority().is_none() {
            return Ok(());
        }
        let target: Uri = format!("/proxy?{}", door::proxy_query(&url)).parse().expect("escaped");
        let parts = http::Request::get(target).body(()).expect("valid").into_parts().0;
        match door::resolve(&parts, None, "/proxy") {
            Ok((got, d)) => {
                prop_assert_eq!(d, Door::ProxyPath);
                prop_assert_eq!(got, u);
            }
            // Refused only for what cannot be a destination (issue 8 (9)).
            Err(e) => prop_assert!(
                u.host() == Some("") || bad_port(&u),
                "{url:?} refused: {e:?}"
            ),
        }
    }
}

// ---- 6. peer hop auth -------------------------------------------------------------------

fn auth_value() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        hostile::number_text().prop_map(|n| format!("t={n}")),
        hostile::number_text().prop_map(|n| format!("n={n}")),
        "[0-9a-fA-F]{0,70}".prop_map(|s| format!("sig={s}")),
        "[ -~]{0,8}".prop_map(|s| format!("sig={s}")),
        any::<String>().prop_map(|s| format!("sig={}", s.chars().take(6).collect::<String>())),
        hostile::junk(),
    ];
    prop_oneof![
        4 => proptest::collection::vec(part, 0..5).prop_map(|p| p.join(",").into_bytes()),
        1 => hostile::header_bytes(),
    ]
}

fn hop_fields() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let name = select(
        &[
            "accept-encoding",
            "accept",
            "range",
            "x-a",
            "via",
            "host",
            "content-length",
            "connection",
            "larder-hop",
            "cookie",
        ][..],
    );
    proptest::collection::vec((name, hostile::header_bytes()), 0..5)
}

fn hop_headers(fields: &[(&'static str, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in fields {
        if let Ok(v) = http::HeaderValue::from_bytes(v) {
            h.append(*k, v);
        }
    }
    h
}

proptest! {
    #![proptest_config(config(cases()))]

    /// `hop::verify` on any credentials, method, URL, fields and instant: no panic; random
    /// credentials never pass; `sign`'s own pass inside the window and only for the same
    /// secret, method, URL and signed fields; a replay guard admits a signature once.
    #[test]
    fn hop_verify_any(
        secret in prop_oneof![Just(String::new()), "[ -~]{1,40}", any::<String>()],
        method in select(&["GET", "HEAD", "POST", "PURGE", "M-SEARCH"][..]),
        url in prop_oneof![uri_text(), any::<String>()],
        value in auth_value(),
        fields in hop_fields(),
        nonce in u64_hostile(),
        now in hostile::instant(),
        skew in prop_oneof![Just(0i64), -40i64..=40, any::<i64>()],
        capacity in select(&[0usize, 1, 2, 1000][..]),
        other in "[ -~]{0,10}",
    ) {
        let method: Method = method.parse().expect("token");
        let mut h = hop_headers(&fields);
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            h.insert(hop::AUTH, v);
        }
        prop_assert!(hop::verify(&secret, &method, &url, &h, now).is_err(), "forged: {:?}", h.get(hop::AUTH));
        h.remove(hop::AUTH);
        prop_assert!(hop::verify(&secret, &method, &url, &h, now).is_err());

        let signed_at = {
            let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            hostile::at(secs as i128 + skew as i128)
        };
        let v = hop::sign(&secret, nonce, &method, &url, &h, signed_at);
        h.insert(hop::AUTH, http::HeaderValue::from_str(&v).expect("ascii"));
        let got = hop::verify(&secret, &method, &url, &h, now);
        let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let apart = secs(now).abs_diff(secs(signed_at));
        if apart <= 1 {
            prop_assert!(got.is_ok(), "own signature refused: {v} ({got:?})");
        }
        if apart > 3600 {
            prop_assert!(got.is_err(), "signature from {apart}s away accepted");
        }
        if let Ok(signed) = got {
            prop_assert_eq!(signed.nonce, nonce);
            prop_assert_eq!(signed.t, secs(signed_at));
            let mut guard = hop::ReplayGuard::new(capacity);
            let first = guard.admit(b"peer1", signed, now);
            prop_assert!(guard.admit(b"peer1", signed, now).is_err(), "replay admitted");
            prop_assert!(guard.len() <= capacity.max(1));
            let _ = first;
            // Unsigned fields may change on the way; signed ones may not.
            let mut via = h.clone();
            via.append("via", http::HeaderValue::from_static("1.1 x"));
            prop_assert!(hop::verify(&secret, &method, &url, &via, now).is_ok());
            let mut extra = h.clone();
            extra.append("x-added", http::HeaderValue::from_static("1"));
            prop_assert!(hop::verify(&secret, &method, &url, &extra, now).is_err());
        }
        let other_url = format!("{url}{other}x");
        prop_assert!(hop::verify(&secret, &method, &other_url, &h, signed_at).is_err());
        let other_secret = format!("{secret}{other}x");
        prop_assert!(hop::verify(&other_secret, &method, &url, &h, signed_at).is_err());
    }
}

// ---- 8. the engine (fuzz/engine.rs) and the known bugs (fuzz/known.rs) -----------------

proptest! {
    #![proptest_config(config((cases() / 4).max(1)))]

    /// The engine driven by random input sequences (see `fuzz/engine.rs`).
    #[test]
    fn engine_random_sequences(case in fuzz::engine::case()) {
        fuzz::engine::run(case)?;
    }
}

// ---- storage: the one entry format --------------------------------------------------

/// A record that decodes: hostile heads included (any field the http crate accepts).
fn record_parts() -> impl Strategy<Value = (entry::Meta, Vec<u8>)> {
    (
        any::<u64>(),
        uri_text(),
        any::<u64>(),
        0u32..1_000_000_000,
        proptest::option::of(any::<u64>()),
        request_fields(),
        response_head(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(id, uri, secs, nanos, total, req, res, body)| {
            let mut request = http::Request::new(()).into_parts().0;
            request.uri = uri
                .parse()
                .unwrap_or_else(|_| Uri::from_static("http://x.test/"));
            for (k, v) in &req {
                append(&mut request.headers, k, v);
            }
            let response = response(&res);
            let meta = entry::Meta {
                id: EntryId(id),
                key: CacheKey::from_normalized(&uri),
                response_time: std::time::SystemTime::UNIX_EPOCH
                    + Duration::new(secs % (1 << 33), nanos),
                request,
                response,
                total,
            };
            (meta, body)
        })
}

proptest! {
    #![proptest_config(config(cases()))]

    /// Raw bytes as a record and as metadata: never a panic, and whatever decodes as a
    /// record has the length and checksums its header claims.
    #[test]
    fn entry_decode_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let b = bytes::Bytes::from(bytes);
        if let Ok((meta, body)) = entry::decode(&b) {
            prop_assert_eq!(entry::HEADER_LEN + meta.len() + body.len(), b.len());
        }
        let _ = entry::Meta::decode(&b);
        let _ = entry::Header::parse(&b);
    }

    /// A record round-trips; every single flipped bit and every truncation is refused.
    #[test]
    fn entry_round_trip_and_damage((meta, body) in record_parts(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let record = entry::encode(&meta.encode(), &body);
        let (m, b) = entry::decode(&record).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&b[..], &body[..]);
        let back = entry::Meta::decode(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.id, meta.id);
        prop_assert_eq!(back.key, meta.key);
        prop_assert_eq!(back.total, meta.total);
        prop_assert_eq!(back.response.status, meta.response.status);
        prop_assert_eq!(&back.response.headers, &meta.response.headers);
        prop_assert_eq!(&back.request.headers, &meta.request.headers);
        let i = at.index(record.len());
        let mut bad = record.to_vec();
        bad[i] ^= 1 << bit;
        prop_assert!(entry::decode(&bytes::Bytes::from(bad)).is_err(), "flip at {}", i);
        prop_assert!(entry::decode(&record.slice(..i)).is_err(), "cut at {}", i);
    }
}

/// Every finding's minimal input, replayed: prints which still reproduce. With
/// `LARDER_FUZZ_STRICT=1` it fails while any does (for the engineer fixing them).
#[test]
fn known_findings() {
    let strict = std::env::var("LARDER_FUZZ_STRICT").is_ok_and(|v| v == "1");
    let mut present = Vec::new();
    for bug in known::ALL {
        let p = known::present(bug);
        eprintln!(
            "{}: {} ({})",
            bug.id,
            if p { "STILL REPRODUCES" } else { "fixed" },
            bug.summary
        );
        if p {
            present.push(bug.id);
        }
    }
    assert!(
        !strict || present.is_empty(),
        "findings still reproducing: {present:?}"
    );
}
