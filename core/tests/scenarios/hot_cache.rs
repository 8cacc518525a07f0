//! The hot cache of remote keys (groupcache's `hotCache`): an entry peer keeps a copy of a
//! key another peer owns once it is asked for often, serves it within its freshness, drops
//! it on an unsafe request, and falls back to serving locally when no peer answers.

use crate::sim::{Sim, assert_hit, assert_miss};
use crate::{URL, fresh};
use larder_core::Config;

fn hot_config() -> Config {
    Config {
        hot_memory: 1 << 20,
        hot_after: 3,
        ..Config::default()
    }
}

/// Three peers; returns the sim, the owner of URL, and another peer (the entry).
fn cluster() -> (Sim, usize, usize) {
    let s = Sim::new(3, hot_config(), |_, _| fresh("popular body"));
    let owner = s.engines[0]
        .ring()
        .owner(URL.as_bytes())
        .unwrap()
        .to_owned();
    let owner = s.peers.iter().position(|p| *p == owner).unwrap();
    let entry = (owner + 1) % 3;
    (s, owner, entry)
}

fn get(s: &mut Sim, at: usize) -> larder_core::ClientId {
    let id = s.send(at, "GET", URL, &[]);
    s.run();
    id
}

#[test]
fn a_popular_remote_key_is_kept_and_served_at_the_entry() {
    let (mut s, owner, entry) = cluster();
    // The first two are forwarded to the owner (the first is its miss).
    for _ in 0..2 {
        let id = get(&mut s, entry);
        assert_eq!(s.results[&id].forwarded_to.len(), 1);
        assert_eq!(s.results[&id].text(), "popular body");
    }
    // The third earns a hot copy: fetched from the owner through the entry peer.
    let id = get(&mut s, entry);
    assert_eq!(s.results[&id].text(), "popular body");
    assert!(s.results[&id].forwarded_to.is_empty());
    assert_eq!(s.peer_fetches, [(entry, owner)]);
    assert!(s.engines[entry].hot_bytes() > 0);
    // Then the entry answers alone: no forward, no peer fetch, no origin request.
    let id = get(&mut s, entry);
    let parts = assert_hit(&s.results[&id]);
    assert_eq!(parts.detail.as_deref(), Some("hot"));
    assert_eq!(s.results[&id].served_by, Some(entry));
    assert_eq!(s.results[&id].text(), "popular body");
    assert_eq!((s.peer_fetches.len(), s.origin_hits()), (1, 1));
    for e in &s.engines {
        assert_eq!(e.in_flight(), (0, 0));
    }
}

#[test]
fn a_hot_copy_is_served_only_while_fresh() {
    let (mut s, _, entry) = cluster();
    for _ in 0..3 {
        get(&mut s, entry);
    }
    assert!(s.engines[entry].hot_bytes() > 0);
    // max-age=60: past it the entry does not answer from its copy.
    s.advance(61);
    let id = get(&mut s, entry);
    let r = &s.results[&id];
    assert_eq!(r.text(), "popular body");
    assert!(
        r.status_parts().detail.as_deref() != Some("hot"),
        "a stale hot copy was served: {}",
        r.cache_status()
    );
    // The owner revalidated or refetched: the origin was asked again.
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn an_unsafe_request_at_the_entry_drops_its_hot_copy() {
    let (mut s, _, entry) = cluster();
    for _ in 0..3 {
        get(&mut s, entry);
    }
    assert!(s.engines[entry].hot_bytes() > 0);
    let id = s.send(entry, "POST", URL, &[]);
    s.run();
    assert_eq!(
        s.results[&id].forwarded_to.len(),
        1,
        "the owner passes it on"
    );
    assert_eq!(
        s.engines[entry].hot_bytes(),
        0,
        "dropped on the way through"
    );
    let id = get(&mut s, entry);
    assert!(s.results[&id].status_parts().detail.as_deref() != Some("hot"));
}

#[test]
fn when_no_peer_answers_the_entry_serves_it_itself() {
    let (mut s, owner, entry) = cluster();
    for _ in 0..2 {
        get(&mut s, entry);
    }
    s.down = vec![owner, 0, 1, 2];
    let id = get(&mut s, entry);
    let r = &s.results[&id];
    assert_eq!(r.text(), "popular body");
    assert_eq!(r.served_by, Some(entry));
    assert_miss(r);
    assert_eq!(s.origin_hits(), 2, "the entry filled it from the origin");
    assert_eq!(s.engines[entry].in_flight(), (0, 0));
}

#[test]
fn without_a_hot_budget_everything_is_forwarded() {
    let mut s = Sim::new(3, Config::default(), |_, _| fresh("popular body"));
    let owner = s.engines[0]
        .ring()
        .owner(URL.as_bytes())
        .unwrap()
        .to_owned();
    let entry = (s.peers.iter().position(|p| *p == owner).unwrap() + 1) % 3;
    for _ in 0..10 {
        let id = get(&mut s, entry);
        assert_eq!(s.results[&id].forwarded_to.len(), 1);
    }
    assert!(s.peer_fetches.is_empty());
}

/// The owner's answer carries its Age: a copy made 30 s into a 60 s lifetime is fresh for
/// 30 s more at the entry, not 60.
#[test]
fn a_hot_copy_keeps_the_owners_age() {
    let (mut s, _, entry) = cluster();
    for _ in 0..2 {
        get(&mut s, entry);
    }
    s.advance(30);
    get(&mut s, entry);
    s.advance(20);
    let id = get(&mut s, entry);
    let parts = assert_hit(&s.results[&id]);
    assert_eq!(parts.detail.as_deref(), Some("hot"));
    assert_eq!(s.results[&id].header("age").as_deref(), Some("50"));
    s.advance(11);
    let id = get(&mut s, entry);
    assert!(s.results[&id].status_parts().detail.as_deref() != Some("hot"));
}

/// Ranges are forwarded as asked, however popular the key: a hot copy is of whole objects,
/// and a range of a large object must never become a whole fetch.
#[test]
fn ranges_are_forwarded_not_turned_into_hot_fetches() {
    let (mut s, _, entry) = cluster();
    for _ in 0..5 {
        let id = s.send(entry, "GET", URL, &[("range", "bytes=0-3")]);
        s.run();
        let r = &s.results[&id];
        assert_eq!((r.status(), r.text().as_str()), (206, "popu"));
        assert_eq!(r.forwarded_to.len(), 1);
    }
    assert!(s.peer_fetches.is_empty());
}

/// A remote object too large for a hot copy (over a quarter of the hot budget) is relayed
/// by the entry's one peer fetch, never buffered whole nor kept, and forwarded from then on
/// (a 256 MiB object once cost its entry twice its size in memory, for nothing).
#[test]
fn a_remote_object_too_large_for_a_hot_copy_is_relayed_not_kept() {
    let big = "x".repeat(2000);
    let b = big.clone();
    let cfg = Config {
        hot_memory: 4096,
        ..hot_config()
    };
    let mut s = Sim::new(3, cfg, move |_, _| fresh(&b));
    let owner = s.engines[0]
        .ring()
        .owner(URL.as_bytes())
        .unwrap()
        .to_owned();
    let owner = s.peers.iter().position(|p| *p == owner).unwrap();
    let entry = (owner + 1) % 3;
    for i in 0..5 {
        let id = get(&mut s, entry);
        let r = &s.results[&id];
        assert_eq!(r.text(), big, "request {i}");
        assert!(
            !r.cache_status().contains("stored") || i == 0,
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(s.engines[entry].hot_bytes(), 0);
    assert_eq!(
        s.peer_fetches.len(),
        1,
        "one try at a hot copy, then forwarded"
    );
    assert_eq!(s.origin_hits(), 1);
}
