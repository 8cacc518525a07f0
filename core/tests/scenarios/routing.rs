//! Routing between peers: requests go to the key's owner, in one hop at most.

use crate::sim::{Sim, assert_hit, assert_miss};
use crate::{URL, fresh};
use larder_core::{Config, Input};

#[test]
fn peer_traffic_is_never_forwarded_again() {
    // Divergent views: peer0 believes peer1 owns everything, peer1 believes peer0 does.
    let mut s = Sim::new(2, Config::default(), |_, _| fresh("x"));
    let key = "http://origin.test/a";
    let owner = s.engines[0]
        .ring()
        .owner(key.as_bytes())
        .unwrap()
        .to_owned();
    let other = s.peers.iter().position(|p| *p != owner).unwrap();
    let owner_idx = 1 - other;
    s.input(
        owner_idx,
        Input::PeersChanged {
            peers: vec![s.peers[other].clone()],
        },
    );
    let id = s.send(other, "GET", key, &[]);
    s.run();
    let r = &s.results[&id];
    assert_eq!(r.status(), 200);
    assert_eq!(r.forwarded_to.len(), 1, "exactly one hop, no loop");
}

#[test]
fn requests_at_any_peer_are_served_by_the_owner() {
    let mut s = Sim::new(3, Config::default(), |_, _| fresh("x"));
    let owner = s.engines[0]
        .ring()
        .owner(URL.as_bytes())
        .unwrap()
        .to_owned();
    let owner_idx = s.peers.iter().position(|p| *p == owner).unwrap();
    for at in 0..3 {
        let id = s.send(at, "GET", URL, &[]);
        s.run();
        let r = &s.results[&id];
        assert_eq!(r.served_by, Some(owner_idx));
        let hops = if at == owner_idx { 0 } else { 1 };
        assert_eq!(r.forwarded_to, vec![owner.clone(); hops], "from peer {at}");
        if id.0 == 0 {
            assert_miss(r);
        } else {
            assert_hit(r);
        }
    }
    assert_eq!(s.origin_hits(), 1);
    assert_eq!(s.stored.len(), 1, "stored once, on the owner");
    assert_eq!(s.stored[0].0, owner_idx);
}
