//! Which segments of each large object the store holds, so a range request can learn the
//! object's length from a stored segment and an invalidation can find every segment.

use crate::key::{CacheKey, SegmentKey};
use hashbrown::HashMap;

/// Stored segment indexes by object. Kept in step with the store: a segment is listed
/// while some variant of it is stored.
#[derive(Debug, Default)]
pub(super) struct SegmentIndex(HashMap<CacheKey, Vec<u64>>);

impl SegmentIndex {
    /// Lists a stored segment (once).
    pub fn add(&mut self, seg: SegmentKey) {
        let ix = self.0.entry(seg.object).or_default();
        if !ix.contains(&seg.index) {
            ix.push(seg.index);
        }
    }

    /// Unlists a segment no longer stored; an object with none left is forgotten.
    pub fn remove(&mut self, seg: &SegmentKey) {
        if let Some(ix) = self.0.get_mut(&seg.object) {
            ix.retain(|i| *i != seg.index);
            if ix.is_empty() {
                self.0.remove(&seg.object);
            }
        }
    }

    /// The listed segments of `object`, in the order they were stored.
    pub fn of(&self, object: &CacheKey) -> &[u64] {
        self.0.get(object).map_or(&[], Vec::as_slice)
    }

    /// Forgets `object`, handing back its segments (to drop them from the store).
    pub fn take(&mut self, object: &CacheKey) -> Vec<u64> {
        self.0.remove(object).unwrap_or_default()
    }

    /// Objects listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_forgets() {
        let o = CacheKey::from_normalized("http://h/big");
        let seg = |index| SegmentKey {
            object: o.clone(),
            index,
        };
        let mut ix = SegmentIndex::default();
        ix.add(seg(2));
        ix.add(seg(0));
        ix.add(seg(2));
        assert_eq!(ix.of(&o), [2, 0]);
        ix.remove(&seg(2));
        ix.remove(&seg(0));
        assert_eq!((ix.len(), ix.of(&o)), (0, &[][..]));
        ix.add(seg(5));
        assert_eq!(ix.take(&o), [5]);
        assert_eq!(ix.len(), 0);
    }
}
