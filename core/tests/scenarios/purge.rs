//! `PURGE` and cluster-wide invalidation: the owner drops every variant and segment, and
//! every other peer drops its hot copy, wherever the request came in.

use crate::sim::{Sim, assert_hit, assert_miss};
use crate::{URL, fresh};
use larder_core::Config;

fn purge(s: &mut Sim, at: usize) -> (u16, String) {
    let id = s.send(at, "PURGE", URL, &[]);
    s.run();
    let r = &s.results[&id];
    (r.status(), r.text())
}

#[test]
fn purge_drops_every_variant_and_segment() {
    let mut s = Sim::single(|_, _| {
        let mut r = fresh("0123456789");
        r.headers.push(("vary".into(), "accept-language".into()));
        r
    });
    s.get(URL, &[("accept-language", "en")]);
    s.get(URL, &[("accept-language", "fr")]);
    s.get(URL, &[("range", "bytes=2-4")]);
    let stored = s.engines[0].stored_entries();
    assert!(stored >= 2, "{stored}");
    assert_eq!(
        purge(&mut s, 0),
        (200, format!("purged {stored} entries\n"))
    );
    assert_eq!(s.engines[0].stored_entries(), 0);
    assert!(s.memory[0].is_empty(), "the tier freed them too");
    assert_miss(s.get(URL, &[("accept-language", "en")]));
    // Nothing left: 404, and the origin never saw a PURGE.
    s.run();
    let (code, _) = purge(&mut s, 0);
    let again = purge(&mut s, 0);
    assert_eq!((code, again.0), (200, 404));
    assert!(s.origin_log.iter().all(|(_, r)| r.method != "PURGE"));
}

/// Three peers, each answer a new version: returns the sim, the owner of URL, a peer that
/// holds a hot copy of it, and the third peer.
fn hot_copy_at_a_peer() -> (Sim, usize, usize, usize) {
    let config = Config {
        hot_memory: 1 << 20,
        hot_after: 2,
        ..Config::default()
    };
    let mut s = Sim::new(3, config, |_, n| fresh(&format!("v{n}")));
    let owner = s.engines[0]
        .ring()
        .owner(URL.as_bytes())
        .unwrap()
        .to_owned();
    let owner = s.peers.iter().position(|p| *p == owner).unwrap();
    let (a, b) = ((owner + 1) % 3, (owner + 2) % 3);
    for _ in 0..3 {
        s.get_at(a, URL);
    }
    (s, owner, a, b)
}

#[test]
fn a_purge_at_any_peer_reaches_the_owner_and_every_hot_copy() {
    let (mut s, owner, a, b) = hot_copy_at_a_peer();
    assert!(s.engines[a].hot_bytes() > 0, "a hot copy at {a}");
    // Purged through the third peer: the owner drops it and tells the others.
    let (code, _) = purge(&mut s, b);
    assert_eq!(code, 200);
    assert_eq!(s.engines[owner].stored_entries(), 0);
    assert_eq!(s.engines[a].hot_bytes(), 0, "the hot copy went too");
    let r = s.get_at(a, URL);
    assert_eq!(r.text(), "v1", "the next answer is the origin's new one");
    assert!(s.invalidations.iter().all(|(from, _, _)| *from == owner));
    for e in &s.engines {
        assert_eq!(e.in_flight(), (0, 0));
    }
}

/// RFC 9111 §4.4 across the cluster: a successful unsafe request invalidates the URL at the
/// owner, and the hot copies the other peers hold.
#[test]
fn an_unsafe_request_invalidates_hot_copies_on_every_peer() {
    let (mut s, owner, a, b) = hot_copy_at_a_peer();
    assert_hit(s.get_at(a, URL));
    let id = s.send(b, "POST", URL, &[]);
    s.run();
    assert!(s.results[&id].passed, "passed to the origin by the owner");
    assert_eq!(s.engines[a].hot_bytes(), 0);
    assert!(
        s.invalidations
            .iter()
            .any(|(from, to, _)| (*from, *to) == (owner, a))
    );
}

/// Purge by prefix and by tag (`Surrogate-Key` / `Cache-Tag`), cluster-wide: every peer
/// drops what it holds under the prefix or with the tag, and nothing else.
#[test]
fn purge_by_prefix_and_by_tag_across_the_cluster() {
    let mut s = Sim::new(3, Config::default(), |req, _| {
        let path = req.uri.path().to_owned();
        let mut r = fresh(&path);
        if path.starts_with("/docs/") {
            r.headers
                .push(("surrogate-key".into(), "docs release-1".into()));
        }
        if path == "/img/logo" {
            r.headers
                .push(("cache-tag".into(), "brand,release-1".into()));
        }
        r
    });
    let urls: Vec<String> = [
        "/a/1",
        "/a/2",
        "/a/3/x",
        "/ab",
        "/docs/x",
        "/docs/y",
        "/img/logo",
        "/z",
    ]
    .iter()
    .map(|p| format!("http://origin.test{p}"))
    .collect();
    for u in &urls {
        s.get(u, &[]);
    }
    let total = |s: &Sim| s.engines.iter().map(|e| e.stored_entries()).sum::<usize>();
    assert_eq!(total(&s), urls.len());
    let purge = |s: &mut Sim, at: usize, url: &str, h: &[(&str, &str)]| {
        let id = s.send(at, "PURGE", url, h);
        s.run();
        s.results[&id].status()
    };
    // Everything under /a/ (not /ab), whichever peer owns it.
    assert_eq!(
        purge(
            &mut s,
            1,
            "http://origin.test/a/",
            &[("larder-purge", "prefix")]
        ),
        200
    );
    assert_eq!(total(&s), urls.len() - 3);
    assert_hit(s.get(&urls[3], &[]));
    assert_miss(s.get(&urls[0], &[]));
    // Every response tagged release-1, through any URL.
    purge(
        &mut s,
        2,
        "http://origin.test/",
        &[("larder-purge-tag", "release-1")],
    );
    for u in ["/docs/x", "/docs/y", "/img/logo"] {
        assert_miss(s.get(&format!("http://origin.test{u}"), &[]));
    }
    assert_hit(s.get(&urls[7], &[]));
    assert!(s.origin_log.iter().all(|(_, r)| r.method != "PURGE"));
}
