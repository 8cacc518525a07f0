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
