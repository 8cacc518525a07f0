//! The memory tier: variants per key, bodies as shared `Bytes`, weighed by an LRU.

use crate::key::CacheKey;
use crate::lru::{Admission, Eviction, Lru};
use crate::policy::Stored;
use bytes::Bytes;
use hashbrown::HashMap;
use http::response;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub key: CacheKey,
    pub stored: Stored,
    pub head: response::Parts,
    pub body: Bytes,
    /// For a segment entry: the whole object's length.
    pub total: Option<u64>,
    weight: u64,
}

#[derive(Debug)]
pub struct Store {
    variants: HashMap<CacheKey, Vec<u64>>,
    entries: HashMap<u64, Entry>,
    lru: Lru<u64>,
    next_id: u64,
}

/// Bytes an entry costs beyond its parts: the `Entry` itself in the id map (with the map's
/// growth slack), its LRU node, its slot in the variant index, and allocator overhead.
const ENTRY_FIXED: u64 = 640;

/// What an entry really costs on the heap: body, the served head, the policy's copies
/// ([`Stored::footprint`]), and the key twice (entry and variant index). Calibrated against a
/// counting allocator (core/tests/memory_weight.rs), so `--memory` bounds the process.
fn weigh(key: &CacheKey, head: &response::Parts, body: &Bytes, stored: &Stored) -> u64 {
    body.len() as u64
        + crate::heads::fields_footprint(&head.headers)
        + stored.footprint()
        + 2 * key.as_str().len() as u64
        + ENTRY_FIXED
}

impl Store {
    pub fn new(capacity: u64, max_object: u64) -> Self {
        Store {
            variants: HashMap::new(),
            entries: HashMap::new(),
            lru: Lru::new(capacity, max_object + 64 * 1024),
            next_id: 0,
        }
    }

    pub fn variants(&self, key: &CacheKey) -> &[u64] {
        self.variants.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    pub fn touch(&mut self, id: u64) {
        self.lru.touch(&id);
    }

    pub fn bytes(&self) -> u64 {
        self.lru.weight()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Stores a response, replacing the variant with the same Vary selection. Returns the
    /// new id (None when too large) and what was dropped.
    pub fn insert(
        &mut self,
        key: CacheKey,
        stored: Stored,
        head: response::Parts,
        body: Bytes,
        total: Option<u64>,
    ) -> (Option<u64>, Vec<(CacheKey, u64)>) {
        let mut dropped = Vec::new();
        let same: Vec<u64> = self
            .variants(&key)
            .iter()
            .copied()
            .filter(|id| {
                self.entries
                    .get(id)
                    .is_some_and(|e| e.stored.vary() == stored.vary())
            })
            .collect();
        for id in same {
            if let Some(d) = self.remove(id) {
                dropped.push(d);
            }
        }
        let weight = weigh(&key, &head, &body, &stored);
        let id = self.next_id;
        self.next_id += 1;
        match self.lru.admit(id, weight) {
            Admission::TooLarge { .. } => (None, dropped),
            Admission::Admitted { evicted } => {
                for (eid, _) in evicted {
                    if let Some(d) = self.forget(eid) {
                        dropped.push(d);
                    }
                }
                let ids = self.variants.entry(key.clone()).or_default();
                ids.push(id);
                let excess = ids.len().saturating_sub(super::MAX_VARIANTS);
                let oldest: Vec<u64> = ids.iter().copied().take(excess).collect();
                for old in oldest {
                    if let Some(d) = self.remove(old) {
                        dropped.push(d);
                    }
                }
                self.entries.insert(
                    id,
                    Entry {
                        key,
                        stored,
                        head,
                        body,
                        total,
                        weight,
                    },
                );
                (Some(id), dropped)
            }
        }
    }

    /// Removes one entry.
    pub fn remove(&mut self, id: u64) -> Option<(CacheKey, u64)> {
        self.lru.remove(&id);
        self.forget(id)
    }

    /// Removes every variant of `key`.
    pub fn remove_key(&mut self, key: &CacheKey) -> Vec<(CacheKey, u64)> {
        let ids = self.variants.get(key).cloned().unwrap_or_default();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Drops an entry the LRU no longer holds.
    fn forget(&mut self, id: u64) -> Option<(CacheKey, u64)> {
        let e = self.entries.remove(&id)?;
        if let Some(v) = self.variants.get_mut(&e.key) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.variants.remove(&e.key);
            }
        }
        Some((e.key, e.weight))
    }
}
