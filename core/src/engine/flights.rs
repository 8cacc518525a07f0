//! The coalescing table: at most one shared fetch (a *flight*) per key, which later requests
//! for the key follow instead of asking the origin again (pingora-cache's `lock.rs`).

use super::io::FetchId;
use crate::key::CacheKey;
use hashbrown::HashMap;

/// The flight each key's requests may follow. A fetch is *joinable* exactly while it leads
/// its key here: it lands (stops taking followers) when its response turns out not to be
/// shareable, when it ends, fails or is dropped.
#[derive(Debug, Default)]
pub(super) struct Flights(HashMap<CacheKey, FetchId>);

impl Flights {
    /// `fetch` now leads `key` (replacing a leader that stopped taking followers).
    pub fn lead(&mut self, key: CacheKey, fetch: FetchId) {
        self.0.insert(key, fetch);
    }

    /// `fetch` leads `key` unless another flight already does.
    pub fn lead_if_free(&mut self, key: CacheKey, fetch: FetchId) {
        self.0.entry(key).or_insert(fetch);
    }

    /// The flight a request for `key` may follow.
    pub fn leader(&self, key: &CacheKey) -> Option<FetchId> {
        self.0.get(key).copied()
    }

    /// Whether `fetch` leads `key` (takes followers).
    pub fn leads(&self, key: &CacheKey, fetch: FetchId) -> bool {
        self.0.get(key) == Some(&fetch)
    }

    /// `fetch` takes no more followers; a newer flight for the key is left alone.
    pub fn land(&mut self, key: &CacheKey, fetch: FetchId) {
        if self.leads(key, fetch) {
            self.0.remove(key);
        }
    }
}

/// Why followers stop following their flight, and so what they do next (pingora-cache's
/// `LockStatus`: transient error → new leader, give up → release the followers, wait
/// timeout). A flight that completes needs no release: its followers were streamed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    /// The leader failed before any head: the followers elect a new leader among themselves
    /// and try once more, together.
    TransientError,
    /// The answer is not theirs to share (not storable, or another Vary selection): each
    /// fetches alone.
    GiveUp,
    /// They waited past `collapse_timeout`: each fetches alone.
    WaitTimeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_lands_its_flight() {
        let k = CacheKey::from_normalized("http://h/a");
        let mut f = Flights::default();
        f.lead(k.clone(), FetchId(1));
        f.lead_if_free(k.clone(), FetchId(2));
        assert_eq!(f.leader(&k), Some(FetchId(1)));
        f.land(&k, FetchId(2));
        assert!(f.leads(&k, FetchId(1)));
        f.lead(k.clone(), FetchId(3));
        f.land(&k, FetchId(1));
        assert_eq!(f.leader(&k), Some(FetchId(3)), "a newer flight stays");
        f.land(&k, FetchId(3));
        assert_eq!(f.leader(&k), None);
    }
}
