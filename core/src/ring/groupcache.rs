//! groupcache's consistent-hash ring, bit for bit (golang/groupcache consistenthash).
//!
//! Each peer gets `replicas` points at `hash(decimal(i) + peer)`; a key belongs to the first
//! point at or after `hash(key)`, wrapping to the first point. Like Go's map, a later point
//! that collides with an earlier one overwrites it. CRC-32/IEEE with 50 replicas is what
//! forwardcache and groupcache's HTTPPool use, so a mixed cluster agrees on owners.

use std::collections::BTreeMap;

/// groupcache's `defaultReplicas`.
pub const DEFAULT_REPLICAS: usize = 50;

/// Peers placed on groupcache's hash ring, so a mixed Go/Larder cluster agrees on owners.
#[derive(Clone)]
pub struct GroupcacheRing {
    hash: fn(&[u8]) -> u32,
    replicas: usize,
    peers: Vec<String>,
    /// (point, index into `peers`), sorted by point.
    points: Vec<(u32, usize)>,
}

impl core::fmt::Debug for GroupcacheRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupcacheRing")
            .field("replicas", &self.replicas)
            .field("peers", &self.peers)
            .finish()
    }
}

fn crc32_ieee(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

impl GroupcacheRing {
    /// CRC-32/IEEE, 50 replicas: Go forwardcache/groupcache defaults.
    pub fn new<S: AsRef<str>>(peers: &[S]) -> Self {
        Self::with_hash(DEFAULT_REPLICAS, crc32_ieee, peers)
    }

    /// Any hash and replica count (groupcache's `consistenthash.New(replicas, fn)`).
    pub fn with_hash<S: AsRef<str>>(replicas: usize, hash: fn(&[u8]) -> u32, peers: &[S]) -> Self {
        let mut ring = GroupcacheRing {
            hash,
            replicas,
            peers: Vec::new(),
            points: Vec::new(),
        };
        ring.add(peers);
        ring
    }

    /// Adds peers, as `Map.Add` does (points of later peers overwrite colliding earlier ones).
    pub fn add<S: AsRef<str>>(&mut self, peers: &[S]) {
        let mut map: BTreeMap<u32, usize> = self.points.iter().copied().collect();
        for p in peers {
            let p = p.as_ref();
            let idx = match self.peers.iter().position(|q| q == p) {
                Some(i) => i,
                None => {
                    self.peers.push(p.to_owned());
                    self.peers.len() - 1
                }
            };
            for i in 0..self.replicas {
                let label = format!("{i}{p}");
                map.insert((self.hash)(label.as_bytes()), idx);
            }
        }
        self.points = map.into_iter().collect();
    }

    fn start(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = (self.hash)(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// The peer owning `key`: the first point at or after its hash.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        self.start(key)
            .map(|i| self.peers[self.points[i].1].as_str())
    }

    /// The owner, then each further distinct peer met walking the ring clockwise.
    pub fn preference(&self, key: &[u8]) -> Vec<&str> {
        let Some(start) = self.start(key) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.peers.len()];
        let mut out = Vec::with_capacity(self.peers.len());
        for step in 0..self.points.len() {
            let idx = self.points[(start + step) % self.points.len()].1;
            if !seen[idx] {
                seen[idx] = true;
                out.push(self.peers[idx].as_str());
                if out.len() == self.peers.len() {
                    break;
                }
            }
        }
        out
    }

    /// The distinct peers, in the order added.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atoi(b: &[u8]) -> u32 {
        std::str::from_utf8(b).unwrap().parse().unwrap()
    }

    /// groupcache's own fixture (consistenthash_test.go TestHashing).
    #[test]
    fn groupcache_fixture() {
        let mut ring = GroupcacheRing::with_hash(3, atoi, &["6", "4", "2"]);
        for (k, owner) in [("2", "2"), ("11", "2"), ("23", "4"), ("27", "2")] {
            assert_eq!(ring.owner(k.as_bytes()), Some(owner), "key {k}");
        }
        ring.add(&["8"]);
        assert_eq!(ring.owner(b"27"), Some("8"));
        for (k, owner) in [("2", "2"), ("11", "2"), ("23", "4")] {
            assert_eq!(ring.owner(k.as_bytes()), Some(owner), "key {k}");
        }
    }

    /// consistenthash_test.go TestConsistency: the order peers are added in does not matter.
    #[test]
    fn insertion_order_does_not_matter() {
        let a = GroupcacheRing::new(&["Bill", "Bob", "Bonny"]);
        let b = GroupcacheRing::new(&["Bob", "Bonny", "Bill"]);
        for k in ["Ben", "Bob", "Bonny", "x"] {
            assert_eq!(a.owner(k.as_bytes()), b.owner(k.as_bytes()));
        }
    }

    #[test]
    fn preference_lists_every_peer_once() {
        let r = GroupcacheRing::new(&["a", "b", "c", "d"]);
        let p = r.preference(b"http://h/x");
        assert_eq!(p.len(), 4);
        assert_eq!(Some(p[0]), r.owner(b"http://h/x"));
        let mut s = p.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
    }
}
