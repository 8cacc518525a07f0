//! Rendezvous (HRW) hashing.
//!
//! score(key, peer) = xxh3-64(key bytes, seed = xxh3-64(peer id as UTF-8)); the highest
//! score owns the key, ties broken by the peer id. O(N) per lookup, which at a few hundred
//! peers costs less than parsing the request.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Peers placed by rendezvous hashing: the default, best balanced scheme.
#[derive(Debug, Clone, Default)]
pub struct Rendezvous {
    peers: Vec<String>,
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// `peers` in any order, duplicates counted once: the same set gives the same owners.
    pub fn new<S: AsRef<str>>(peers: &[S]) -> Self {
        let mut list: Vec<String> = peers.iter().map(|p| p.as_ref().to_owned()).collect();
        list.sort();
        list.dedup();
        let seeds = list.iter().map(|p| xxh3_64(p.as_bytes())).collect();
        Rendezvous { peers: list, seeds }
    }

    /// The score of one peer for one key (exposed so other runtimes can check it).
    pub fn score(peer: &str, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, xxh3_64(peer.as_bytes()))
    }

    /// The peer with the highest score for `key`.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        let mut best: Option<(u64, usize)> = None;
        for (i, seed) in self.seeds.iter().enumerate() {
            let s = xxh3_64_with_seed(key, *seed);
            // Peers are sorted, so `>` keeps the smallest id on a tie.
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| self.peers[i].as_str())
    }

    /// Every peer by descending score: the owner, then the fail-over order.
    pub fn preference(&self, key: &[u8]) -> Vec<&str> {
        let mut scored: Vec<(u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| (xxh3_64_with_seed(key, *seed), i))
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(_, i)| self.peers[i].as_str())
            .collect()
    }

    /// The distinct peers, sorted.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_has_no_owner() {
        assert_eq!(Rendezvous::new::<&str>(&[]).owner(b"k"), None);
    }

    #[test]
    fn balance_and_movement_over_many_keys() {
        let peers: Vec<String> = (0..10).map(|i| format!("http://10.0.0.{i}:3128")).collect();
        let r = Rendezvous::new(&peers);
        let mut counts = std::collections::HashMap::new();
        let keys: Vec<String> = (0..50_000).map(|i| format!("http://h/obj/{i}")).collect();
        for k in &keys {
            *counts
                .entry(r.owner(k.as_bytes()).unwrap().to_owned())
                .or_insert(0u32) += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / 5_000.0 < 1.06, "max/mean {}", max / 5_000.0);
        // Removing one peer moves only that peer's keys.
        let fewer = Rendezvous::new(&peers[1..]);
        for k in &keys {
            let before = r.owner(k.as_bytes()).unwrap();
            if before != peers[0] {
                assert_eq!(fewer.owner(k.as_bytes()).unwrap(), before);
            }
        }
    }

    proptest! {
        #[test]
        fn owner_is_first_preference_and_order_ignores_input_order(
            mut peers in proptest::collection::vec("[a-z0-9:/.]{1,20}", 1..12),
            key in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let a = Rendezvous::new(&peers);
            peers.reverse();
            let b = Rendezvous::new(&peers);
            let pa = a.preference(&key);
            prop_assert_eq!(a.owner(&key), pa.first().copied());
            prop_assert_eq!(pa, b.preference(&key));
        }

        #[test]
        fn adding_a_peer_moves_keys_only_to_it(
            peers in proptest::collection::btree_set("[a-z]{1,8}", 1..10),
            newcomer in "[A-Z]{1,8}",
            key in "[ -~]{0,40}",
        ) {
            let peers: Vec<String> = peers.into_iter().collect();
            let before = Rendezvous::new(&peers);
            let mut more = peers.clone();
            more.push(newcomer.clone());
            let after = Rendezvous::new(&more);
            let (b, a) = (before.owner(key.as_bytes()).unwrap(), after.owner(key.as_bytes()).unwrap());
            prop_assert!(a == b || a == newcomer);
        }
    }
}
