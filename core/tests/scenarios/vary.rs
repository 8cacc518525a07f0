//! `Vary`: variants stored side by side, and followers that want another variant.

use crate::URL;
use crate::sim::{Reply, Sim, assert_fwd, assert_hit};
use larder_core::cache_status::Fwd;

#[test]
fn two_vary_variants_are_kept() {
    let mut s = Sim::single(|req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &format!("text in {lang}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    assert_eq!(
        s.get(URL, &[("accept-language", "en")]).text(),
        "text in en"
    );
    let de = s.get(URL, &[("accept-language", "de")]);
    assert!(
        assert_fwd(de, Fwd::VaryMiss).stored,
        "{}",
        de.cache_status()
    );
    let en = s.get(URL, &[("accept-language", "en")]);
    assert_eq!(en.text(), "text in en");
    assert_hit(en);
    let de = s.get(URL, &[("accept-language", "de")]);
    assert_eq!(de.text(), "text in de");
    assert_hit(de);
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn followers_with_another_variant_fetch_their_own() {
    let mut s = Sim::single(|req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &lang,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    let en = s.send(0, "GET", URL, &[("accept-language", "en")]);
    let de = s.send(0, "GET", URL, &[("accept-language", "de")]);
    s.run();
    assert_eq!(s.results[&en].text(), "en");
    assert_eq!(s.results[&de].text(), "de");
    assert_eq!(s.origin_hits(), 2);
}

/// A request that arrives while a fill streams (its head known) joins it only when the
/// head's Vary selection matches its own; otherwise it was served the leader's variant.
#[test]
fn a_late_joiner_with_another_variant_fetches_its_own() {
    let mut s = Sim::single(|req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &format!("{lang}-body"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    let en = s.send(0, "GET", URL, &[("accept-language", "en")]);
    let (at, fetch, reply) = s.answer_head_only().unwrap();
    let de = s.send(0, "GET", URL, &[("accept-language", "de")]);
    let same = s.send(0, "GET", URL, &[("accept-language", "en")]);
    s.input(
        at,
        larder_core::Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::from(reply.body.clone()),
        },
    );
    s.input(at, larder_core::Input::UpstreamEnd { fetch });
    s.run();
    assert_eq!(s.results[&en].text(), "en-body");
    assert_eq!(
        s.results[&same].text(),
        "en-body",
        "a matching joiner follows"
    );
    assert_eq!(
        s.results[&de].text(),
        "de-body",
        "never the leader's variant"
    );
    assert_eq!(s.origin_hits(), 2);
}

/// RFC 9111 §4.1: what may be normalised is: whitespace around commas, the case of the
/// field names `Vary` lists, values split over several field lines; a different value is
/// still another variant.
#[test]
fn vary_matching_normalises_what_it_may() {
    let mut s = Sim::single(|_, _| {
        Reply::ok(
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("vary", "ACCEPT-encoding, X-Lang"),
            ],
        )
    });
    s.get(URL, &[("accept-encoding", "gzip,br"), ("x-lang", "en")]);
    for same in [
        &[("accept-encoding", "gzip, br"), ("x-lang", "en")][..],
        &[("accept-encoding", "gzip ,  br"), ("x-lang", "en")],
        &[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br"),
            ("x-lang", "en"),
        ],
    ] {
        assert_hit(s.get(URL, same));
    }
    assert_eq!(s.origin_hits(), 1);
    for other in [
        &[("accept-encoding", "br, gzip"), ("x-lang", "en")][..],
        &[("accept-encoding", "gzip,br"), ("x-lang", "fr")],
        &[("accept-encoding", "gzip,br")],
    ] {
        let r = s.get(URL, other);
        assert!(!r.cache_status().contains("; hit"), "{other:?}");
    }
}
