//! Hit-for-miss memory (Varnish's term): URLs whose last response could not be stored, so
//! their requests skip coalescing for a while instead of queueing behind a fetch whose
//! answer they could not share.

use crate::key::CacheKey;
use hashbrown::HashMap;
use std::time::SystemTime;

/// Most URLs remembered as uncacheable at once.
pub const HIT_FOR_MISS_MAX: usize = 16_384;

/// Uncacheable URLs and until when. An optimization, so bounded: expired marks are pruned
/// as it fills, and a flood of unique uncacheable URLs that still overflows it makes it
/// forget everything (it only costs coalescing, never correctness).
#[derive(Debug, Default)]
pub(super) struct HitForMiss(HashMap<CacheKey, SystemTime>);

impl HitForMiss {
    /// Remembers `key` as uncacheable until `until`.
    pub fn mark(&mut self, key: CacheKey, until: SystemTime, now: SystemTime) {
        if self.0.len() >= HIT_FOR_MISS_MAX {
            self.prune(now);
            if self.0.len() >= HIT_FOR_MISS_MAX {
                self.0.clear();
            }
        }
        self.0.insert(key, until);
    }

    /// Whether `key` is marked at `now`; an expired mark is forgotten.
    pub fn is_marked(&mut self, key: &CacheKey, now: SystemTime) -> bool {
        match self.0.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.0.remove(key);
                false
            }
            None => false,
        }
    }

    /// Forgets expired marks.
    pub fn prune(&mut self, now: SystemTime) {
        self.0.retain(|_, until| *until > now);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn marks_expire_and_stay_bounded() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let k = |i: usize| CacheKey::from_normalized(&format!("http://h/{i}"));
        let mut h = HitForMiss::default();
        h.mark(k(0), t(10), t(0));
        assert!(h.is_marked(&k(0), t(5)));
        assert!(!h.is_marked(&k(0), t(10)));
        assert_eq!(h.len(), 0, "an expired mark is forgotten when seen");
        for i in 0..HIT_FOR_MISS_MAX + 10 {
            h.mark(k(i), t(100), t(0));
        }
        assert!(h.len() <= HIT_FOR_MISS_MAX);
    }
}
