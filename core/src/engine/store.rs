//! The engine's index of stored entries: the variants of each key, the policy facts of hot
//! entries, and which tier holds each body. The bodies themselves are the tiers' business
//! ([`crate::storage`]): the index says what to write and delete, as [`Change`]s.
//!
//! An entry is *hot* while its metadata ([`Hot`]) is in memory; it is weighed in the memory
//! tier's LRU then (with its body when the memory tier holds that too). An entry only on
//! disk is *cold*: a key and a size, a few dozen bytes, until a request loads it.

use crate::eviction::{EvictionPolicy, Evictor};
use crate::key::CacheKey;
use crate::lru::{Admission, Eviction};
use crate::policy::Stored;
use crate::storage::{EntryId, Tier};
use hashbrown::HashMap;
use http::response;

/// What the engine knows of an entry whose metadata is loaded.
#[derive(Debug)]
pub struct Hot {
    pub stored: Stored,
    pub head: response::Parts,
    /// For a segment entry: the whole object's length.
    pub total: Option<u64>,
    pub body_len: u64,
}

#[derive(Debug)]
pub struct Slot {
    pub key: CacheKey,
    /// In the memory LRU exactly when present.
    pub hot: Option<Box<Hot>>,
    /// The memory tier holds the body.
    pub in_memory: bool,
    /// Bytes in the disk tier (in the disk LRU exactly when present).
    pub on_disk: Option<u64>,
    /// A hot copy of a key another peer owns: weighed in the remote LRU, never on disk.
    pub remote: bool,
}

/// What the tiers must do after an index change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Free this entry's storage in `tier`.
    Delete {
        id: EntryId,
        key: CacheKey,
        tier: Tier,
    },
    /// The index forgot an entry of `key` altogether.
    Gone { key: CacheKey },
}

#[derive(Debug)]
pub struct Store {
    variants: HashMap<CacheKey, Vec<EntryId>>,
    slots: HashMap<EntryId, Slot>,
    memory: Evictor<EntryId>,
    /// Hot copies of remote keys (groupcache's `hotCache`), with a budget of their own so
    /// popular remote keys cannot push out what this peer owns.
    remote: Evictor<EntryId>,
    disk: Evictor<EntryId>,
    /// Disk eviction runs from the high watermark (the queue's capacity) down to this.
    disk_clean_to: u64,
    next_id: u64,
    /// See [`Store::with_memory_max_object`].
    memory_max_object: u64,
}

/// Bytes a hot entry costs beyond its parts: the slot in the id map (with the map's growth
/// slack), its LRU node, its place in the variant index, and allocator overhead.
const ENTRY_FIXED: u64 = 640;

/// What a hot entry really costs on the heap: the served head, the policy's copies
/// ([`Stored::footprint`]), the key twice (slot and variant index), and the body when the
/// memory tier holds it. Calibrated against a counting allocator
/// (core/tests/memory_weight.rs), so `--memory` bounds the process.
fn weigh(key: &CacheKey, hot: &Hot, with_body: bool) -> u64 {
    let body = if with_body { hot.body_len } else { 0 };
    body + crate::heads::fields_footprint(&hot.head.headers)
        + hot.stored.footprint()
        + 2 * key.as_str().len() as u64
        + ENTRY_FIXED
}

/// What the eviction queues are told an entry holds: the same for every entry of a URL, so
/// S3-FIFO's ghost recognises a URL fetched again under a fresh [`EntryId`]. Fixed (xxh3,
/// unseeded), so a run replays the same.
fn hint(key: &CacheKey) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes())
}

impl Store {
    /// `memory` and `disk` budgets in bytes (disk 0: no disk tier); `remote` of `memory`
    /// is for hot copies of remote keys; ids start at `first_id`. All three budgets evict
    /// by `policy`.
    pub fn new(
        policy: EvictionPolicy,
        memory: u64,
        remote: u64,
        max_object: u64,
        disk: u64,
        disk_clean_to: u64,
        first_id: u64,
    ) -> Self {
        let remote = remote.min(memory);
        Store {
            variants: HashMap::new(),
            slots: HashMap::new(),
            memory: Evictor::new(policy, memory - remote, max_object + 64 * 1024),
            remote: Evictor::new(policy, remote, max_object + 64 * 1024),
            disk: Evictor::new(policy, disk, disk),
            disk_clean_to: disk_clean_to.min(disk),
            next_id: first_id,
            memory_max_object: 0,
        }
    }

    /// The largest body the memory tier keeps (squid's `maximum_object_size_in_memory`);
    /// 0: an eighth of the memory budget. Lower, the memory holds the metadata of many more
    /// entries whose bodies stay on disk (nginx's keys zone beside its cache files).
    pub fn with_memory_max_object(mut self, bytes: u64) -> Self {
        self.memory_max_object = bytes;
        self
    }

    /// A fresh id, never handed out before by this index.
    pub fn next_id(&mut self) -> EntryId {
        let id = EntryId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    pub fn has_disk(&self) -> bool {
        self.disk.capacity() > 0
    }

    /// Whether a body this long would be kept in memory (promotion reads it whole).
    pub fn fits_memory(&self, body_len: u64) -> bool {
        let eighth = self.memory.capacity() / 8;
        let max = match self.memory_max_object {
            0 => eighth,
            m => m.min(eighth),
        };
        body_len <= max
    }

    /// Whether a hot copy this long is worth keeping: a quarter of the hot budget at most, so
    /// one large remote object never empties it (nor is buffered whole for nothing).
    pub fn fits_remote(&self, body_len: u64) -> bool {
        body_len <= self.remote.capacity() / 4
    }

    pub fn variants(&self, key: &CacheKey) -> &[EntryId] {
        self.variants.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn slot(&self, id: EntryId) -> Option<&Slot> {
        self.slots.get(&id)
    }

    pub fn hot(&self, id: EntryId) -> Option<&Hot> {
        self.slots.get(&id)?.hot.as_deref()
    }

    pub fn hot_mut(&mut self, id: EntryId) -> Option<&mut Hot> {
        self.slots.get_mut(&id)?.hot.as_deref_mut()
    }

    /// A hot entry and the tier its body is read from (one lookup: the hit path).
    pub fn hot_with_tier(&self, id: EntryId) -> Option<(&Hot, Tier)> {
        let s = self.slots.get(&id)?;
        let tier = if s.in_memory {
            Tier::Memory
        } else {
            s.on_disk.map(|_| Tier::Disk)?
        };
        Some((s.hot.as_deref()?, tier))
    }

    /// Whether `key` has a variant whose metadata must be loaded first (only a disk tier
    /// holds such entries: without one this costs nothing on the hit path).
    pub fn has_cold(&self, key: &CacheKey) -> bool {
        self.has_disk()
            && self
                .variants(key)
                .iter()
                .any(|id| self.slots.get(id).is_some_and(|s| s.hot.is_none()))
    }

    pub fn touch(&mut self, id: EntryId) {
        if !self.memory.touch(&id) && self.remote.capacity() > 0 {
            self.remote.touch(&id);
        }
        if self.has_disk() {
            self.disk.touch(&id);
        }
    }

    /// A hot entry changed in place (a 304 merged new fields into its head): weighed again,
    /// and made the most recently used. Evicts others if it grew past the budget.
    pub fn reweigh(&mut self, id: EntryId, out: &mut Vec<Change>) {
        let Some(s) = self.slots.get(&id) else {
            return;
        };
        let Some(hot) = s.hot.as_deref() else {
            return;
        };
        let weight = weigh(&s.key, hot, s.in_memory);
        let hint = hint(&s.key);
        let lru = if s.remote {
            &mut self.remote
        } else {
            &mut self.memory
        };
        match lru.admit_hinted(id, weight, hint) {
            Admission::Admitted { evicted } => {
                for (e, _) in evicted {
                    self.cool(e, out);
                    self.forget_if_empty(e, out);
                }
            }
            // Grown past what one entry may weigh: it goes.
            Admission::TooLarge { .. } => self.remove(id, out),
        }
        if self.has_disk() {
            self.disk.touch(&id);
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.weight() + self.remote.weight()
    }

    /// Entries whose metadata is in memory (own and remote).
    pub fn memory_entries(&self) -> usize {
        self.memory.len() + self.remote.len()
    }

    /// Entries in the disk tier.
    pub fn disk_entries(&self) -> usize {
        self.disk.len()
    }

    /// Bytes of hot copies of remote keys (part of [`Store::memory_bytes`]).
    pub fn remote_bytes(&self) -> u64 {
        self.remote.weight()
    }

    /// Whether hot copies of remote keys are kept at all.
    pub fn keeps_remote(&self) -> bool {
        self.remote.capacity() > 0
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk.weight()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds a new entry: hot, with its body in memory when the memory tier admits it, and on
    /// disk when `disk_bytes` is given and the disk tier admits it. Replaces hot variants
    /// with the same Vary selection. Returns where it went (memory, disk); nothing kept at
    /// all leaves no slot.
    pub fn insert(
        &mut self,
        id: EntryId,
        key: CacheKey,
        hot: Hot,
        disk_bytes: Option<u64>,
        out: &mut Vec<Change>,
    ) -> (bool, bool) {
        self.replace_selection(&key, &hot, out);
        self.add_slot(id, &key);
        let on_disk = disk_bytes.is_some_and(|b| self.admit_disk(id, b, out));
        // With an explicit --memory-max-object, a body above it that went to disk is not
        // kept in memory as well: its metadata is, as for a body read back from disk.
        let with_body = !on_disk || self.memory_max_object == 0 || self.fits_memory(hot.body_len);
        let in_memory = self.admit_hot(id, hot, with_body, out);
        if !in_memory && !on_disk {
            self.remove(id, out);
            return (false, false);
        }
        self.cap_variants(&key, out);
        (in_memory, on_disk)
    }

    /// Adds a hot copy of a remote key: memory only, in the remote budget. Replaces variants
    /// with the same Vary selection. False when it does not fit.
    pub fn insert_remote(
        &mut self,
        id: EntryId,
        key: CacheKey,
        hot: Hot,
        out: &mut Vec<Change>,
    ) -> bool {
        self.replace_selection(&key, &hot, out);
        self.add_slot(id, &key);
        if let Some(s) = self.slots.get_mut(&id) {
            s.remote = true;
        }
        if !self.admit_hot(id, hot, true, out) {
            self.remove(id, out);
            return false;
        }
        self.cap_variants(&key, out);
        true
    }

    /// Indexes an entry the disk tier holds (cold). False when the disk budget refuses it.
    pub fn restore(
        &mut self,
        id: EntryId,
        key: CacheKey,
        bytes: u64,
        out: &mut Vec<Change>,
    ) -> bool {
        if self.slots.contains_key(&id) || !self.has_disk() {
            return false;
        }
        self.add_slot(id, &key);
        if !self.admit_disk(id, bytes, out) {
            self.remove(id, out);
            return false;
        }
        self.cap_variants(&key, out);
        true
    }

    /// A cold entry's metadata arrived: make it hot (and its body resident when `with_body`
    /// and the memory tier admits it). Returns whether the body is now in memory.
    pub fn warm(&mut self, id: EntryId, hot: Hot, with_body: bool, out: &mut Vec<Change>) -> bool {
        if !self.slots.contains_key(&id) {
            return false;
        }
        self.admit_hot(id, hot, with_body, out)
    }

    /// Takes an entry out of one tier (a failed write); the slot goes when no tier is left.
    pub fn drop_tier(&mut self, id: EntryId, tier: Tier, out: &mut Vec<Change>) {
        match tier {
            Tier::Disk => {
                if self.disk.remove(&id).is_some() {
                    if let Some(s) = self.slots.get_mut(&id) {
                        s.on_disk = None;
                    }
                }
            }
            Tier::Memory => self.cool(id, out),
        }
        self.forget_if_empty(id, out);
    }

    /// Removes one entry from every tier.
    pub fn remove(&mut self, id: EntryId, out: &mut Vec<Change>) {
        self.memory.remove(&id);
        self.remote.remove(&id);
        self.disk.remove(&id);
        let Some(s) = self.slots.remove(&id) else {
            return;
        };
        if s.in_memory {
            out.push(Change::Delete {
                id,
                key: s.key.clone(),
                tier: Tier::Memory,
            });
        }
        if s.on_disk.is_some() {
            out.push(Change::Delete {
                id,
                key: s.key.clone(),
                tier: Tier::Disk,
            });
        }
        if let Some(v) = self.variants.get_mut(&s.key) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.variants.remove(&s.key);
            }
        }
        out.push(Change::Gone { key: s.key });
    }

    /// The keys one of whose entries `select(key, head)` picks (`head` is `None` for an
    /// entry whose metadata is not loaded: on disk only, after a restart).
    pub fn keys_where(
        &self,
        mut select: impl FnMut(&CacheKey, Option<&http::HeaderMap>) -> bool,
    ) -> Vec<CacheKey> {
        self.variants
            .iter()
            .filter(|(key, ids)| {
                ids.iter().any(|id| {
                    let head = self
                        .slots
                        .get(id)
                        .and_then(|s| s.hot.as_ref())
                        .map(|h| &h.head.headers);
                    select(key, head)
                })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Removes every variant of `key`.
    pub fn remove_key(&mut self, key: &CacheKey, out: &mut Vec<Change>) {
        for id in self.variants.get(key).cloned().unwrap_or_default() {
            self.remove(id, out);
        }
    }

    /// Removes the hot variants of `key` with the same Vary selection as `hot` (a new
    /// response replaces them).
    fn replace_selection(&mut self, key: &CacheKey, hot: &Hot, out: &mut Vec<Change>) {
        let same: Vec<EntryId> = self
            .variants(key)
            .iter()
            .copied()
            .filter(|v| {
                self.hot(*v)
                    .is_some_and(|h| h.stored.vary() == hot.stored.vary())
            })
            .collect();
        for v in same {
            self.remove(v, out);
        }
    }

    /// An empty slot, listed as the newest variant of `key` (its tiers are admitted next).
    fn add_slot(&mut self, id: EntryId, key: &CacheKey) {
        self.slots.insert(
            id,
            Slot {
                key: key.clone(),
                hot: None,
                in_memory: false,
                on_disk: None,
                remote: false,
            },
        );
        self.variants.entry(key.clone()).or_default().push(id);
    }

    /// Hot in the memory LRU; the body too when `with_body` and it fits.
    fn admit_hot(&mut self, id: EntryId, hot: Hot, with_body: bool, out: &mut Vec<Change>) -> bool {
        let Some((key, remote)) = self.slots.get(&id).map(|s| (s.key.clone(), s.remote)) else {
            return false;
        };
        let mut attempts = if with_body {
            vec![true, false]
        } else {
            vec![false]
        };
        let mut hot = Some(hot);
        while let Some(body) = attempts.first().copied() {
            attempts.remove(0);
            let weight = weigh(&key, hot.as_ref().expect("kept"), body);
            let lru = if remote {
                &mut self.remote
            } else {
                &mut self.memory
            };
            match lru.admit_hinted(id, weight, hint(&key)) {
                Admission::TooLarge { .. } => continue,
                Admission::Admitted { evicted } => {
                    let s = self.slots.get_mut(&id).expect("checked");
                    s.hot = hot.take().map(Box::new);
                    s.in_memory = body;
                    for (e, _) in evicted {
                        self.cool(e, out);
                        self.forget_if_empty(e, out);
                    }
                    return body && self.slots.get(&id).is_some_and(|s| s.in_memory);
                }
            }
        }
        false
    }

    /// In the disk LRU, evicting from the high watermark down to the low one.
    fn admit_disk(&mut self, id: EntryId, bytes: u64, out: &mut Vec<Change>) -> bool {
        if !self.has_disk() || bytes > self.disk.capacity() {
            return false;
        }
        let mut evicted = Vec::new();
        if self.disk.weight().saturating_add(bytes) > self.disk.capacity() {
            evicted = self
                .disk
                .shrink_to(self.disk_clean_to.saturating_sub(bytes));
        }
        let hint = self.slots.get(&id).map_or(0, |s| hint(&s.key));
        match self.disk.admit_hinted(id, bytes, hint) {
            Admission::TooLarge { .. } => return false,
            Admission::Admitted { evicted: more } => evicted.extend(more),
        }
        if let Some(s) = self.slots.get_mut(&id) {
            s.on_disk = Some(bytes);
        }
        for (e, _) in evicted {
            if let Some(s) = self.slots.get_mut(&e) {
                s.on_disk = None;
                out.push(Change::Delete {
                    id: e,
                    key: s.key.clone(),
                    tier: Tier::Disk,
                });
            }
            self.forget_if_empty(e, out);
        }
        true
    }

    /// Out of the memory tier: metadata dropped, body freed; still indexed if on disk.
    fn cool(&mut self, id: EntryId, out: &mut Vec<Change>) {
        self.memory.remove(&id);
        self.remote.remove(&id);
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        s.hot = None;
        if s.in_memory {
            s.in_memory = false;
            out.push(Change::Delete {
                id,
                key: s.key.clone(),
                tier: Tier::Memory,
            });
        }
    }

    /// A slot in no tier at all is forgotten.
    fn forget_if_empty(&mut self, id: EntryId, out: &mut Vec<Change>) {
        if self
            .slots
            .get(&id)
            .is_some_and(|s| s.hot.is_none() && s.on_disk.is_none())
        {
            self.remove(id, out);
        }
    }

    /// A key keeps at most [`super::MAX_VARIANTS`] variants, the oldest go first.
    fn cap_variants(&mut self, key: &CacheKey, out: &mut Vec<Change>) {
        let ids = self.variants(key);
        let excess = ids.len().saturating_sub(super::MAX_VARIANTS);
        let oldest: Vec<EntryId> = ids.iter().copied().take(excess).collect();
        for old in oldest {
            self.remove(old, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_object_lowers_the_eighth_never_raises_it() {
        let store = |max| {
            Store::new(
                EvictionPolicy::default(),
                8 << 20,
                0,
                1 << 20,
                1 << 30,
                0,
                1,
            )
            .with_memory_max_object(max)
        };
        // Default: an eighth of the memory budget.
        assert!(store(0).fits_memory(1 << 20));
        assert!(!store(0).fits_memory((1 << 20) + 1));
        // Lower: bodies above it stay on disk.
        assert!(store(16 << 10).fits_memory(16 << 10));
        assert!(!store(16 << 10).fits_memory((16 << 10) + 1));
        // Higher than the eighth: the eighth still holds (promotion reads a body whole).
        assert!(!store(4 << 20).fits_memory((1 << 20) + 1));
    }
}
