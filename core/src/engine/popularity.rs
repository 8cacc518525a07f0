//! How often remote keys are asked for here: a key asked for often enough within a window
//! earns a hot copy on this peer (groupcache's hot cache, by frequency rather than by one
//! request in ten at random).

use crate::key::CacheKey;
use hashbrown::HashMap;
use std::time::{Duration, SystemTime};

/// Most keys counted at once; beyond it, expired counts go, then everything (counting is an
/// optimization: forgetting only delays a hot copy).
pub const POPULARITY_MAX: usize = 16_384;

/// Request counts of remote keys within a window.
#[derive(Debug, Default)]
pub(super) struct Popularity(HashMap<CacheKey, (u32, SystemTime)>);

impl Popularity {
    /// Counts one request for `key` at `now` and returns the count within `window` of the
    /// first one counted.
    pub fn seen(&mut self, key: &CacheKey, now: SystemTime, window: Duration) -> u32 {
        if let Some((n, since)) = self.0.get_mut(key) {
            if crate::time::after(*since, window) > now {
                *n = n.saturating_add(1);
                return *n;
            }
            *n = 1;
            *since = now;
            return 1;
        }
        if self.0.len() >= POPULARITY_MAX {
            self.0
                .retain(|_, (_, since)| crate::time::after(*since, window) > now);
            if self.0.len() >= POPULARITY_MAX {
                self.0.clear();
            }
        }
        self.0.insert(key.clone(), (1, now));
        1
    }

    /// Keys counted.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_stays_bounded() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let w = Duration::from_secs(60);
        let k = |i: usize| CacheKey::from_normalized(&format!("http://h/{i}"));
        let mut p = Popularity::default();
        assert_eq!(p.seen(&k(0), t(0), w), 1);
        assert_eq!(p.seen(&k(0), t(30), w), 2);
        assert_eq!(p.seen(&k(0), t(61), w), 1, "a new window");
        for i in 0..POPULARITY_MAX + 5 {
            p.seen(&k(i), t(100), w);
        }
        assert!(p.len() <= POPULARITY_MAX);
    }
}
