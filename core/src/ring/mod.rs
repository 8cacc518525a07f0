//! Peer selection: which peer owns a key.
//!
//! Positions come from a named hash over explicit bytes (never `#[derive(Hash)]` or
//! `DefaultHasher`), so native peers, the Spin component and JavaScript agree on owners
//! forever. `vectors/ring.txt` pins both schemes; every runtime checks it.

mod groupcache;
mod rendezvous;

pub use groupcache::GroupcacheRing;
pub use rendezvous::Rendezvous;

/// Which placement scheme a cluster uses. Every member must use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingKind {
    /// Rendezvous (highest random weight) hashing with xxh3-64: best balance, exactly 1/N
    /// keys move on a membership change, and the preference order is the fail-over list.
    #[default]
    Rendezvous,
    /// groupcache's ring (CRC-32/IEEE, 50 replicas): places keys exactly as Go
    /// forwardcache/groupcache do, for mixed clusters and migrations.
    Groupcache,
}

impl core::str::FromStr for RingKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hrw" | "rendezvous" => Ok(RingKind::Rendezvous),
            "groupcache" => Ok(RingKind::Groupcache),
            other => Err(format!(
                "unknown ring {other:?}: expected hrw or groupcache"
            )),
        }
    }
}

/// The peer set under one placement scheme.
#[derive(Debug, Clone)]
pub enum PeerSelection {
    /// [`RingKind::Rendezvous`].
    Rendezvous(Rendezvous),
    /// [`RingKind::Groupcache`].
    Groupcache(GroupcacheRing),
}

impl PeerSelection {
    /// `peers` placed by `kind` (duplicates count once).
    pub fn new<S: AsRef<str>>(kind: RingKind, peers: &[S]) -> Self {
        match kind {
            RingKind::Rendezvous => PeerSelection::Rendezvous(Rendezvous::new(peers)),
            RingKind::Groupcache => PeerSelection::Groupcache(GroupcacheRing::new(peers)),
        }
    }

    /// The scheme in use (every member of a cluster must report the same).
    pub fn kind(&self) -> RingKind {
        match self {
            PeerSelection::Rendezvous(_) => RingKind::Rendezvous,
            PeerSelection::Groupcache(_) => RingKind::Groupcache,
        }
    }

    /// The peer that owns `key`, or `None` when the set is empty.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        match self {
            PeerSelection::Rendezvous(r) => r.owner(key),
            PeerSelection::Groupcache(r) => r.owner(key),
        }
    }

    /// Every peer, best first: the owner, then the fail-over targets in order.
    pub fn preference(&self, key: &[u8]) -> Vec<&str> {
        match self {
            PeerSelection::Rendezvous(r) => r.preference(key),
            PeerSelection::Groupcache(r) => r.preference(key),
        }
    }

    /// The distinct peers.
    pub fn peers(&self) -> &[String] {
        match self {
            PeerSelection::Rendezvous(r) => r.peers(),
            PeerSelection::Groupcache(r) => r.peers(),
        }
    }
}

#[cfg(test)]
mod vector_tests {
    use super::*;

    /// `vectors/ring.txt`: `scheme|peer,peer,...|key|owner` lines, shared with every runtime.
    #[test]
    fn committed_vectors_hold() {
        let text = include_str!("../../vectors/ring.txt");
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 4, "bad vector line {line:?}");
            let kind: RingKind = f[0].parse().unwrap();
            let peers: Vec<&str> = f[1].split(',').collect();
            let sel = PeerSelection::new(kind, &peers);
            assert_eq!(sel.owner(f[2].as_bytes()), Some(f[3]), "vector {line:?}");
            n += 1;
        }
        assert!(n >= 100, "only {n} vectors");
    }
}
