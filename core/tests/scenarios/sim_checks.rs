//! The sim's own machinery: the `Cache-Status` parser the typed assertions rest on, and
//! `Sim::drive`.

use crate::sim::{Sim, StatusParts, parse_cache_status, t0};
use crate::{URL, fresh};
use larder_core::cache_status::Fwd;

#[test]
fn cache_status_parses_into_its_parts() {
    assert_eq!(
        parse_cache_status("larder; hit; ttl=5"),
        StatusParts {
            cache: "larder".into(),
            hit: true,
            ttl: Some(5),
            ..Default::default()
        }
    );
    assert_eq!(
        parse_cache_status("larder; fwd=stale; fwd-status=304; stored; collapsed"),
        StatusParts {
            cache: "larder".into(),
            fwd: Some(Fwd::Stale),
            fwd_status: Some(304),
            stored: true,
            collapsed: true,
            ..Default::default()
        }
    );
    let p = parse_cache_status(r#"larder; fwd=bypass; detail="origin; \"error\", x""#);
    assert_eq!(
        (p.fwd, p.detail()),
        (Some(Fwd::Bypass), Some(r#"origin; "error", x"#))
    );
    // A list: the last member is the cache closest to the client.
    let p = parse_cache_status("other-cache; hit, larder; fwd=uri-miss; ttl=-3");
    assert!(p.is_miss() && p.ttl == Some(-3));
    assert!(!p.is_hit() && !p.is_stale());
    assert!(parse_cache_status("larder; hit; ttl=-3").is_stale());
    assert!(!parse_cache_status("larder; hit; ttl=-3").is_hit());
}

#[test]
#[should_panic(expected = "bad Cache-Status parameter")]
fn cache_status_with_an_unknown_fwd_is_rejected() {
    parse_cache_status("larder; fwd=elsewhere");
}

#[test]
#[should_panic(expected = "bad Cache-Status parameter")]
fn cache_status_with_a_repeated_flag_is_rejected() {
    parse_cache_status("larder; hit; hit; ttl=1");
}

#[test]
fn drive_leaves_the_clock_alone_when_nothing_is_due() {
    let mut s = Sim::single(|_, _| fresh("x"));
    s.send(0, "GET", URL, &[]);
    s.drive();
    assert_eq!(s.now, t0());
    assert_eq!(s.origin_hits(), 1, "drive answers pending fetches");
}
