//! Byte-weighted S3-FIFO eviction (Yang et al., SOSP '23, "FIFO queues are all you need for
//! cache eviction").
//!
//! Three FIFO queues: *small* (a tenth of the bytes) takes every new key, *main* (the rest)
//! takes the keys that proved themselves, and a *ghost* remembers what small evicted
//! lately. Most objects in web traces are requested once; small lets them go after one short
//! stay without ever disturbing main, which is what costs LRU its hit ratio on such traces.
//! Each held key has a 2-bit frequency (0..=3) that [`Eviction::touch`] bumps:
//!
//! - small's oldest key goes to main when it was touched there (its frequency reset), else it
//!   is evicted and its *hint* put in the ghost;
//! - main's oldest key is evicted when its frequency is 0, else it goes round again with one
//!   less (CLOCK);
//! - a new key whose hint is in the ghost enters main directly: it was evicted from small
//!   too early.
//!
//! # Hints
//!
//! The ghost remembers *hints*, not keys. Larder's store gives every stored entry a fresh
//! [`crate::EntryId`]: a URL evicted and fetched again comes back under a new key, so a ghost
//! of keys would never be hit. [`S3Fifo::admit_hinted`] takes the hint separately (the store
//! passes a hash of the entry's [`crate::CacheKey`]); [`Eviction::admit`] uses a hash of the
//! key itself, for callers whose keys do name the object.
//!
//! Same contract as [`crate::Lru`]: evictions are returned, never performed; the limit holds
//! after every admit; and the key being admitted is never among its own evictions.

use crate::lru::{Admission, Eviction};
use core::hash::{Hash, Hasher};
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use std::collections::VecDeque;

const NIL: usize = usize::MAX;

/// Where the frequency saturates (2 bits).
const MAX_FREQ: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

/// Links of a node in an index-linked list: `prev` towards the head (newest), `next`
/// towards the tail (oldest).
#[derive(Debug, Clone, Copy)]
struct Link {
    prev: usize,
    next: usize,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

trait Linked {
    fn link(&mut self) -> &mut Link;
}

/// One FIFO over a slab: head is the newest, tail the oldest.
#[derive(Debug, Clone, Copy)]
struct Fifo {
    head: usize,
    tail: usize,
}

impl Fifo {
    const EMPTY: Fifo = Fifo {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(&self) -> bool {
        self.tail == NIL
    }

    /// Whether `i` is all this queue holds.
    fn is_only(&self, i: usize) -> bool {
        self.head == i && self.tail == i
    }

    fn unlink<T: Linked>(&mut self, slab: &mut [T], i: usize) {
        let Link { prev, next } = *slab[i].link();
        if prev != NIL {
            slab[prev].link().next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            slab[next].link().prev = prev;
        } else {
            self.tail = prev;
        }
        *slab[i].link() = UNLINKED;
    }

    fn push_head<T: Linked>(&mut self, slab: &mut [T], i: usize) {
        *slab[i].link() = Link {
            prev: NIL,
            next: self.head,
        };
        if self.head != NIL {
            slab[self.head].link().prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

#[derive(Debug)]
struct Node<K> {
    key: Option<K>,
    weight: u64,
    hint: u64,
    freq: u8,
    queue: Queue,
    link: Link,
}

impl<K> Linked for Node<K> {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }
}

/// Byte-weighted S3-FIFO on hashbrown with index-linked FIFOs in slabs: O(1) amortised per
/// operation (main's second chances are paid for by the touches that earned them), no
/// `unsafe`.
#[derive(Debug)]
pub struct S3Fifo<K> {
    map: HashMap<K, usize>,
    nodes: Vec<Node<K>>,
    free: Vec<usize>,
    small: Fifo,
    main: Fifo,
    small_weight: u64,
    main_weight: u64,
    ghost: Ghosts,
    capacity: u64,
    /// Small's share: past it, evictions come from small.
    small_capacity: u64,
    max_item: u64,
}

impl<K: Hash + Eq + Clone> S3Fifo<K> {
    /// `capacity` bytes in all (a tenth for small); no single item heavier than `max_item`.
    pub fn new(capacity: u64, max_item: u64) -> Self {
        S3Fifo {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            small: Fifo::EMPTY,
            main: Fifo::EMPTY,
            small_weight: 0,
            main_weight: 0,
            // Bounded by main's capacity: the ghost recalls what a main that size would
            // have taken, had small not evicted it.
            ghost: Ghosts::new(capacity - capacity / 10),
            capacity,
            small_capacity: capacity / 10,
            max_item: max_item.min(capacity),
        }
    }

    /// The byte limit `admit` keeps to.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Inserts or re-weighs `key`; `hint` names the object it holds, so that an object
    /// evicted from small and admitted again under a new key is recognised (see the module
    /// docs). Re-admitting a held key counts as a use and keeps its queue.
    pub fn admit_hinted(&mut self, key: K, weight: u64, hint: u64) -> Admission<K> {
        if weight > self.max_item {
            // An existing entry under `key` is left alone: the caller decides whether it is stale.
            return Admission::TooLarge {
                weight,
                limit: self.max_item,
            };
        }
        // One probe of the map (the entry), whether `key` is held or new.
        let i = match self.map.entry(key) {
            Entry::Occupied(held) => {
                let i = *held.get();
                let node = &mut self.nodes[i];
                let old = core::mem::replace(&mut node.weight, weight);
                node.freq = (node.freq + 1).min(MAX_FREQ);
                match node.queue {
                    Queue::Small => self.small_weight = self.small_weight - old + weight,
                    Queue::Main => self.main_weight = self.main_weight - old + weight,
                }
                i
            }
            Entry::Vacant(new) => {
                let queue = if self.ghost.take(hint) {
                    Queue::Main
                } else {
                    Queue::Small
                };
                let node = Node {
                    key: Some(new.key().clone()),
                    weight,
                    hint,
                    freq: 0,
                    queue,
                    link: UNLINKED,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i] = node;
                        i
                    }
                    None => {
                        self.nodes.push(node);
                        self.nodes.len() - 1
                    }
                };
                new.insert(i);
                match queue {
                    Queue::Small => {
                        self.small.push_head(&mut self.nodes, i);
                        self.small_weight += weight;
                    }
                    Queue::Main => {
                        self.main.push_head(&mut self.nodes, i);
                        self.main_weight += weight;
                    }
                }
                i
            }
        };
        let mut evicted = Vec::new();
        while self.weight() > self.capacity {
            if !self.evict_one(i, &mut evicted) {
                // Only `key` is left, and it fits: unreachable, but never loop.
                break;
            }
        }
        Admission::Admitted { evicted }
    }

    /// Evicts in policy order until at most `target` bytes remain (a low watermark),
    /// returning the evicted items in eviction order.
    pub fn shrink_to(&mut self, target: u64) -> Vec<(K, u64)> {
        let mut evicted = Vec::new();
        while self.weight() > target && self.evict_one(NIL, &mut evicted) {}
        evicted
    }

    /// Whether `key` is held in main (false when in small or absent; for tests and dumps).
    pub fn in_main(&self, key: &K) -> bool {
        self.map
            .get(key)
            .is_some_and(|&i| self.nodes[i].queue == Queue::Main)
    }

    /// Whether the ghost remembers `hint`.
    pub fn ghost_contains(&self, hint: u64) -> bool {
        self.ghost.contains(hint)
    }

    /// Small's and main's keys, oldest first (for tests and dumps; O(n)).
    pub fn keys_oldest_first(&self) -> (Vec<K>, Vec<K>) {
        let walk = |q: Fifo| {
            let mut out = Vec::new();
            let mut i = q.tail;
            while i != NIL {
                out.push(self.nodes[i].key.clone().expect("linked node has a key"));
                i = self.nodes[i].link.prev;
            }
            out
        };
        (walk(self.small), walk(self.main))
    }

    /// Evicts one item, `protect` (a node index, or NIL) excepted; false when nothing else
    /// is held. Small's oldest items may move to main and main's go round first.
    fn evict_one(&mut self, protect: usize, out: &mut Vec<(K, u64)>) -> bool {
        loop {
            let small_has = !self.small.is_empty() && !self.small.is_only(protect);
            let main_has = !self.main.is_empty() && !self.main.is_only(protect);
            let from_small = if self.small_weight > self.small_capacity {
                small_has || !main_has
            } else {
                !main_has
            };
            if from_small {
                if !small_has {
                    return false;
                }
                let t = self.small.tail;
                self.small.unlink(&mut self.nodes, t);
                let node = &mut self.nodes[t];
                self.small_weight -= node.weight;
                // A protected tail is a held key re-admitted (its frequency bumped): it is
                // never the one evicted.
                if node.freq > 0 || t == protect {
                    node.freq = 0;
                    node.queue = Queue::Main;
                    self.main_weight += node.weight;
                    self.main.push_head(&mut self.nodes, t);
                    continue;
                }
                let (hint, weight) = (node.hint, node.weight);
                out.push(self.release(t));
                self.ghost.push(hint, weight);
                return true;
            }
            let t = self.main.tail;
            self.main.unlink(&mut self.nodes, t);
            let node = &mut self.nodes[t];
            if t == protect || node.freq > 0 {
                if t != protect {
                    node.freq -= 1;
                }
                self.main.push_head(&mut self.nodes, t);
                continue;
            }
            self.main_weight -= node.weight;
            out.push(self.release(t));
            return true;
        }
    }

    /// Frees an unlinked node whose weight is already off its queue's books.
    fn release(&mut self, i: usize) -> (K, u64) {
        let node = &mut self.nodes[i];
        let key = node.key.take().expect("linked node has a key");
        self.map.remove(&key);
        self.free.push(i);
        (key, node.weight)
    }
}

/// The ghost: a FIFO of the weights of hints evicted from small (oldest at the front), and
/// an index from each remembered hint to its entry's sequence number.
///
/// Entries that age out of the FIFO are not removed from the index, which would cost a
/// probe of it on every eviction: an index entry counts while its number falls within the
/// FIFO, and the stale ones are swept when they outnumber the live ones. Entries taken (a
/// ghost hit) or superseded (the hint evicted again) are marked dead in place, weight 0, and
/// the FIFO is compacted when the dead outnumber the live. Both sweeps are O(n) once per
/// O(n) operations.
///
/// The index is 32-bit both ways (hints folded, numbers wrapping), half the memory and
/// cache misses of 64-bit entries: the ghost is probed on every miss. Two hints folding
/// alike read as one, a wrong ghost hit once in 2^32 per ghost held (the object merely
/// starts in main).
#[derive(Debug)]
struct Ghosts {
    fifo: VecDeque<u64>,
    index: HashMap<u32, u32>,
    /// The sequence number of `fifo[0]` (wrapping).
    front: u32,
    /// How far `front` moved since the index was last swept of stale entries: one that
    /// fell 2^32 behind would read as live again, so sweeps come well before.
    advanced: u32,
    /// Entries neither dead nor aged out.
    live: usize,
    /// Their summed weights (each at least 1, so weightless keys cannot grow the ghost
    /// without bound).
    weight: u64,
    capacity: u64,
}

/// A dead FIFO entry's weight (live ones weigh at least 1).
const DEAD: u64 = 0;

/// Sweeps wait for this much garbage at least, so small ghosts do not sweep constantly.
const SWEEP_SLACK: usize = 64;

/// At most this many FIFO entries (and this far may `front` move between index sweeps), so
/// that wrapping sequence numbers never meet stale ones.
const GHOST_SPAN: u32 = 1 << 30;

fn fold(hint: u64) -> u32 {
    (hint ^ (hint >> 32)) as u32
}

impl Ghosts {
    fn new(capacity: u64) -> Self {
        Ghosts {
            fifo: VecDeque::new(),
            index: HashMap::new(),
            front: 0,
            advanced: 0,
            live: 0,
            weight: 0,
            capacity,
        }
    }

    /// Where `seq` is in the FIFO, if it is there (a stale number is not).
    fn offset(&self, seq: u32) -> Option<usize> {
        let d = seq.wrapping_sub(self.front) as usize;
        (d < self.fifo.len()).then_some(d)
    }

    fn contains(&self, hint: u64) -> bool {
        self.index
            .get(&fold(hint))
            .is_some_and(|&seq| self.offset(seq).is_some())
    }

    /// Forgets `hint`; whether it was remembered.
    fn take(&mut self, hint: u64) -> bool {
        let Some(at) = self.index.remove(&fold(hint)).and_then(|s| self.offset(s)) else {
            // Absent, or stale (removed for free).
            return false;
        };
        self.kill(at);
        self.pop_dead();
        self.sweep();
        true
    }

    /// Remembers `hint` (anew, if it was already), forgetting the oldest past capacity.
    fn push(&mut self, hint: u64, weight: u64) {
        let weight = weight.max(1);
        if weight > self.capacity {
            self.take(hint);
            return;
        }
        let seq = self.front.wrapping_add(self.fifo.len() as u32);
        self.fifo.push_back(weight);
        self.live += 1;
        self.weight += weight;
        if let Some(at) = self
            .index
            .insert(fold(hint), seq)
            .and_then(|old| self.offset(old))
        {
            self.kill(at);
        }
        while self.weight > self.capacity || self.fifo.len() > GHOST_SPAN as usize {
            let w = self.fifo.pop_front().expect("weight is held");
            self.advance();
            if w != DEAD {
                self.weight -= w;
                self.live -= 1;
            }
        }
        self.pop_dead();
        self.sweep();
    }

    fn advance(&mut self) {
        self.front = self.front.wrapping_add(1);
        self.advanced += 1;
    }

    fn pop_dead(&mut self) {
        while self.fifo.front() == Some(&DEAD) {
            self.fifo.pop_front();
            self.advance();
        }
    }

    /// Marks the live entry at `at` dead.
    fn kill(&mut self, at: usize) {
        let w = core::mem::replace(&mut self.fifo[at], DEAD);
        debug_assert_ne!(w, DEAD);
        self.weight -= w;
        self.live -= 1;
    }

    fn sweep(&mut self) {
        let limit = 2 * self.live + SWEEP_SLACK;
        if self.index.len() > limit || self.advanced >= GHOST_SPAN {
            let (front, len) = (self.front, self.fifo.len());
            self.index
                .retain(|_, seq| (seq.wrapping_sub(front) as usize) < len);
            self.advanced = 0;
        }
        if self.fifo.len() > limit {
            // Renumber the live entries after every number in use: the index then holds
            // no stale entry, and no old number is reused soon.
            let renumbered = self.front.wrapping_add(self.fifo.len() as u32);
            let mut rank = Vec::with_capacity(self.fifo.len());
            let mut kept = VecDeque::with_capacity(2 * self.live);
            for &w in &self.fifo {
                rank.push(kept.len() as u32);
                if w != DEAD {
                    kept.push_back(w);
                }
            }
            let (front, len) = (self.front, self.fifo.len());
            self.index.retain(|_, seq| {
                let d = seq.wrapping_sub(front) as usize;
                if d >= len {
                    return false;
                }
                *seq = renumbered.wrapping_add(rank[d]);
                true
            });
            self.fifo = kept;
            self.front = renumbered;
            self.advanced = 0;
        }
    }
}

/// The hint [`Eviction::admit`] uses: FNV-1a over what `key` hashes, with a final mix.
/// Fixed, unlike hashbrown's seeded default, so runs are reproducible.
pub fn key_hint<K: Hash + ?Sized>(key: &K) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // splitmix64's finaliser: FNV's low bits are weak.
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    h.finish()
}

impl<K: Hash + Eq + Clone> Eviction<K> for S3Fifo<K> {
    /// [`S3Fifo::admit_hinted`] with [`key_hint`] of `key`.
    fn admit(&mut self, key: K, weight: u64) -> Admission<K> {
        let hint = key_hint(&key);
        self.admit_hinted(key, weight, hint)
    }

    fn touch(&mut self, key: &K) -> bool {
        match self.map.get(key) {
            Some(&i) => {
                let f = &mut self.nodes[i].freq;
                *f = (*f + 1).min(MAX_FREQ);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &K) -> Option<u64> {
        let i = self.map.remove(key)?;
        let node = &self.nodes[i];
        let w = node.weight;
        match node.queue {
            Queue::Small => {
                self.small.unlink(&mut self.nodes, i);
                self.small_weight -= w;
            }
            Queue::Main => {
                self.main.unlink(&mut self.nodes, i);
                self.main_weight -= w;
            }
        }
        self.nodes[i].key = None;
        self.free.push(i);
        Some(w)
    }

    fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn evicted<K>(a: Admission<K>) -> Vec<(K, u64)> {
        match a {
            Admission::Admitted { evicted } => evicted,
            Admission::TooLarge { .. } => panic!("refused"),
        }
    }

    #[test]
    fn one_hit_wonders_go_before_a_key_used_twice() {
        let mut s = S3Fifo::new(1000, 1000);
        s.admit(0u32, 50);
        s.touch(&0);
        s.touch(&0);
        let mut gone = Vec::new();
        for k in 1..200u32 {
            gone.extend(evicted(s.admit(k, 50)).into_iter().map(|e| e.0));
            assert!(s.weight() <= 1000);
        }
        assert!(s.contains(&0), "the key used twice stays");
        assert!(s.in_main(&0));
        assert!(gone.len() > 150 && !gone.contains(&0));
        // An LRU in the same place lost it long ago.
        let mut l = crate::Lru::new(1000, 1000);
        l.admit(0u32, 50);
        l.touch(&0);
        l.touch(&0);
        for k in 1..200u32 {
            l.admit(k, 50);
        }
        assert!(!l.contains(&0));
    }

    #[test]
    fn small_evicts_in_fifo_order_into_the_ghost() {
        let mut s = S3Fifo::new(100, 100);
        for k in 0..10u32 {
            assert_eq!(evicted(s.admit_hinted(k, 10, 100 + u64::from(k))), vec![]);
        }
        assert_eq!(evicted(s.admit_hinted(10, 10, 110)), vec![(0, 10)]);
        assert_eq!(
            evicted(s.admit_hinted(11, 25, 111)),
            vec![(1, 10), (2, 10), (3, 10)]
        );
        assert!(s.ghost_contains(100) && s.ghost_contains(103));
        assert!(!s.ghost_contains(104));
        assert_eq!(s.weight(), 95);
    }

    #[test]
    fn a_ghost_hit_goes_to_main_under_a_new_key() {
        let mut s = S3Fifo::new(100, 100);
        s.admit_hinted(1u32, 50, 7);
        s.admit_hinted(2, 50, 8);
        // Full: the oldest small key goes, its hint into the ghost.
        assert_eq!(evicted(s.admit_hinted(3, 50, 9)), vec![(1, 50)]);
        assert!(s.ghost_contains(7));
        // The same object under a fresh key (the store's fresh entry id) is recognised.
        assert_eq!(evicted(s.admit_hinted(4, 50, 7)), vec![(2, 50)]);
        assert!(s.in_main(&4));
        assert!(!s.ghost_contains(7), "a ghost is used once");
        // A hint not in the ghost enters small.
        s.admit_hinted(5, 10, 99);
        assert!(s.contains(&5) && !s.in_main(&5));
    }

    #[test]
    fn touched_small_keys_move_to_main_and_main_gives_second_chances() {
        let mut s = S3Fifo::new(100, 100);
        s.admit(1u32, 30);
        s.admit(2, 30);
        s.admit(3, 30);
        s.touch(&1);
        // 1 moves to main (frequency reset), 2 is the one evicted.
        assert_eq!(evicted(s.admit(4, 30)), vec![(2, 30)]);
        assert!(s.in_main(&1));
        assert_eq!(s.keys_oldest_first(), (vec![3, 4], vec![1]));
        // Small is still past its share (60 > 10): it keeps paying.
        assert_eq!(evicted(s.admit(5, 30)), vec![(3, 30)]);
        s.touch(&1);
        s.shrink_to(60);
        assert!(s.contains(&1));
        // With small empty main goes, 1 after its second chance.
        assert_eq!(s.shrink_to(0).last(), Some(&(1, 30)));
        assert!(s.is_empty());
    }

    #[test]
    fn never_evicts_the_key_it_admits() {
        // The new key alone in small, over small's share: main pays.
        let mut s = S3Fifo::new(100, 100);
        s.admit(1u32, 50);
        s.touch(&1);
        assert_eq!(evicted(s.admit(2, 60)), vec![(1, 50)]);
        assert!(s.contains(&2));
        // A ghost hit alone in main, small within its share: small pays.
        let mut s = S3Fifo::new(100, 100);
        s.admit_hinted(1u32, 60, 1);
        s.admit_hinted(2, 50, 2);
        assert!(s.ghost_contains(1));
        assert_eq!(s.keys_oldest_first(), (vec![2], vec![]));
        s.admit_hinted(3, 5, 3);
        assert_eq!(evicted(s.admit_hinted(4, 98, 1)), vec![(2, 50), (3, 5)]);
        assert!(s.in_main(&4));
        // Re-weighing a held key never evicts it either.
        assert_eq!(evicted(s.admit_hinted(4, 100, 1)), vec![]);
        assert_eq!(s.weight(), 100);
    }

    #[test]
    fn refuses_oversize_items_and_keeps_the_rest() {
        let mut s = S3Fifo::new(100, 50);
        s.admit("a", 10);
        assert_eq!(
            s.admit("big", 51),
            Admission::TooLarge {
                weight: 51,
                limit: 50
            }
        );
        assert_eq!(
            s.admit("a", 60),
            Admission::TooLarge {
                weight: 60,
                limit: 50
            }
        );
        assert!(s.contains(&"a") && !s.contains(&"big"));
        assert_eq!(s.weight(), 10);
        assert_eq!(s.remove(&"a"), Some(10));
        assert_eq!(s.remove(&"a"), None);
        assert!(s.is_empty() && s.weight() == 0);
    }

    #[test]
    fn the_ghost_is_bounded_by_mains_bytes() {
        let mut s = S3Fifo::new(1000, 1000);
        for k in 0..10_000u64 {
            s.admit_hinted(k, 10, k);
        }
        assert!(s.ghost.weight <= 900);
        assert_eq!(s.ghost.live, 90);
        assert_eq!(s.ghost.fifo.len(), 90);
        assert!(
            s.ghost.index.len() <= 2 * 90 + SWEEP_SLACK,
            "stale hints are swept"
        );
        // The last 100 keys are held; the 90 before them are ghosts.
        assert!(s.ghost_contains(9_899) && s.ghost_contains(9_810));
        assert!(!s.ghost_contains(9_809) && !s.ghost_contains(9_900));
    }

    #[test]
    fn the_ghost_sweeps_what_aged_out() {
        let mut g = Ghosts::new(100);
        for h in 0..1000 {
            g.push(h, 50);
            assert!(g.index.len() <= 2 * 2 + SWEEP_SLACK);
            assert!(g.contains(h) && (h == 0 || g.contains(h - 1)));
            assert!(h < 2 || !g.contains(h - 2));
        }
        assert_eq!((g.live, g.weight, g.fifo.len()), (2, 100, 2));
    }

    #[test]
    fn the_ghost_compacts_what_was_taken() {
        let mut g = Ghosts::new(1000);
        g.push(1, 1);
        for i in 0..500 {
            g.push(100 + i, 1);
            assert!(g.take(100 + i));
            if i == 250 {
                g.push(2, 1);
            }
        }
        assert_eq!((g.live, g.weight), (2, 2));
        assert!(
            g.fifo.len() <= 2 * 2 + SWEEP_SLACK,
            "compacted: {}",
            g.fifo.len()
        );
        assert!(g.contains(1) && g.contains(2) && !g.contains(100));
        // Renumbered in order: the oldest still goes first.
        g.push(3, 999);
        assert!(!g.contains(1) && g.contains(2) && g.contains(3));
        assert!(g.take(2) && !g.take(2));
        assert_eq!((g.live, g.weight), (1, 999));
    }

    /// A naive S3-FIFO on Vecs (index 0 the oldest), to check the linked one against.
    #[derive(Debug)]
    struct Model {
        /// (key, weight, freq, hint)
        small: Vec<(u8, u64, u8, u64)>,
        main: Vec<(u8, u64, u8, u64)>,
        /// (hint, weight)
        ghost: Vec<(u64, u64)>,
        cap: u64,
        max_item: u64,
    }

    impl Model {
        fn total(&self) -> u64 {
            self.small.iter().chain(&self.main).map(|e| e.1).sum()
        }

        fn admit(&mut self, k: u8, w: u64, hint: u64) -> Admission<u8> {
            if w > self.max_item {
                return Admission::TooLarge {
                    weight: w,
                    limit: self.max_item,
                };
            }
            if let Some(e) = self
                .small
                .iter_mut()
                .chain(&mut self.main)
                .find(|e| e.0 == k)
            {
                e.1 = w;
                e.2 = (e.2 + 1).min(3);
            } else if let Some(g) = self.ghost.iter().position(|g| g.0 == hint) {
                self.ghost.remove(g);
                self.main.push((k, w, 0, hint));
            } else {
                self.small.push((k, w, 0, hint));
            }
            let mut evicted = vec![];
            while self.total() > self.cap {
                match self.evict_one(Some(k)) {
                    Some(e) => evicted.push(e),
                    None => break,
                }
            }
            Admission::Admitted { evicted }
        }

        fn evict_one(&mut self, protect: Option<u8>) -> Option<(u8, u64)> {
            let small_cap = self.cap / 10;
            let ghost_cap = self.cap - small_cap;
            loop {
                let only = |q: &Vec<(u8, u64, u8, u64)>| q.len() == 1 && Some(q[0].0) == protect;
                let small_has = !self.small.is_empty() && !only(&self.small);
                let main_has = !self.main.is_empty() && !only(&self.main);
                let small_w: u64 = self.small.iter().map(|e| e.1).sum();
                let from_small = if small_w > small_cap {
                    small_has || !main_has
                } else {
                    !main_has
                };
                if from_small {
                    if !small_has {
                        return None;
                    }
                    let mut t = self.small.remove(0);
                    if t.2 > 0 || Some(t.0) == protect {
                        t.2 = 0;
                        self.main.push(t);
                        continue;
                    }
                    self.ghost.retain(|g| g.0 != t.3);
                    if t.1.max(1) <= ghost_cap {
                        self.ghost.push((t.3, t.1.max(1)));
                    }
                    while self.ghost.iter().map(|g| g.1).sum::<u64>() > ghost_cap {
                        self.ghost.remove(0);
                    }
                    return Some((t.0, t.1));
                }
                let mut t = self.main.remove(0);
                if Some(t.0) == protect {
                    self.main.push(t);
                } else if t.2 > 0 {
                    t.2 -= 1;
                    self.main.push(t);
                } else {
                    return Some((t.0, t.1));
                }
            }
        }

        fn shrink_to(&mut self, target: u64) -> Vec<(u8, u64)> {
            let mut out = vec![];
            while self.total() > target {
                match self.evict_one(None) {
                    Some(e) => out.push(e),
                    None => break,
                }
            }
            out
        }

        fn touch(&mut self, k: u8) -> bool {
            match self
                .small
                .iter_mut()
                .chain(&mut self.main)
                .find(|e| e.0 == k)
            {
                Some(e) => {
                    e.2 = (e.2 + 1).min(3);
                    true
                }
                None => false,
            }
        }

        fn remove(&mut self, k: u8) -> Option<u64> {
            for q in [&mut self.small, &mut self.main] {
                if let Some(p) = q.iter().position(|e| e.0 == k) {
                    return Some(q.remove(p).1);
                }
            }
            None
        }

        fn queues(&self) -> (Vec<u8>, Vec<u8>) {
            (
                self.small.iter().map(|e| e.0).collect(),
                self.main.iter().map(|e| e.0).collect(),
            )
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8, u64, u64),
        Touch(u8),
        Remove(u8),
        Shrink(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, 0u64..60, 0u64..10).prop_map(|(k, w, h)| Op::Admit(k, w, h)),
            4 => (0u8..24).prop_map(Op::Touch),
            1 => (0u8..24).prop_map(Op::Remove),
            1 => (0u64..200).prop_map(Op::Shrink),
        ]
    }

    proptest! {
        /// The ghost alone, with enough distinct hints and hits that both sweeps run.
        #[test]
        fn ghosts_match_a_naive_fifo(
            ops in proptest::collection::vec((0u8..8, 0u64..400, 0u64..40), 0..3000)
        ) {
            let cap = 200;
            let mut g = Ghosts::new(cap);
            // Numbers wrap early on.
            g.front = u32::MAX - 100;
            let mut m: Vec<(u64, u64)> = Vec::new();
            let mut checked = 0;
            for (kind, hint, w) in ops {
                // 0: push; 1: take; else push and take at once (dead entries mid-FIFO, so
                // that it is compacted now and then).
                if kind != 1 {
                    g.push(hint, w);
                    m.retain(|e| e.0 != hint);
                    if w.max(1) <= cap {
                        m.push((hint, w.max(1)));
                    }
                    while m.iter().map(|e| e.1).sum::<u64>() > cap {
                        m.remove(0);
                    }
                }
                if kind != 0 {
                    let had = m.iter().any(|e| e.0 == hint);
                    m.retain(|e| e.0 != hint);
                    prop_assert_eq!(g.take(hint), had);
                }
                prop_assert_eq!(g.weight, m.iter().map(|e| e.1).sum::<u64>());
                prop_assert_eq!(g.live, m.len());
                prop_assert!(g.fifo.len() <= 2 * g.live + SWEEP_SLACK);
                prop_assert!(g.index.len() <= 2 * g.live + SWEEP_SLACK);
                // Every hint now and then (all 400 each time would be slow).
                checked += 1;
                if checked % 50 == 0 {
                    for h in 0..400 {
                        prop_assert_eq!(g.contains(h), m.iter().any(|e| e.0 == h));
                    }
                }
                for e in &m {
                    prop_assert!(g.contains(e.0));
                }
                // The FIFO order: the live weights, oldest first.
                let live: Vec<u64> = g.fifo.iter().copied().filter(|w| *w != DEAD).collect();
                prop_assert_eq!(live, m.iter().map(|e| e.1).collect::<Vec<_>>());
            }
        }

        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(op(), 0..300)) {
            let (cap, max_item) = (200u64, 60u64);
            let mut s = S3Fifo::new(cap, max_item);
            let mut m = Model { small: vec![], main: vec![], ghost: vec![], cap, max_item };
            // What the caller believes is held, from the admissions and evictions it saw.
            let mut held: std::collections::HashMap<u8, u64> = Default::default();
            for op in ops {
                match op {
                    Op::Admit(k, w, h) => {
                        let got = s.admit_hinted(k, w, h);
                        prop_assert_eq!(&got, &m.admit(k, w, h));
                        if let Admission::Admitted { evicted } = got {
                            prop_assert!(s.contains(&k), "the admitted key is held");
                            held.insert(k, w);
                            for (e, ew) in evicted {
                                prop_assert!(e != k, "never evicts the key it admits");
                                prop_assert!(!s.contains(&e));
                                prop_assert_eq!(held.remove(&e), Some(ew));
                            }
                        }
                        prop_assert!(s.weight() <= cap);
                    }
                    Op::Touch(k) => prop_assert_eq!(s.touch(&k), m.touch(k)),
                    Op::Remove(k) => {
                        let got = s.remove(&k);
                        prop_assert_eq!(got, m.remove(k));
                        prop_assert_eq!(got, held.remove(&k));
                    }
                    Op::Shrink(t) => {
                        let got = s.shrink_to(t);
                        prop_assert_eq!(&got, &m.shrink_to(t));
                        for (e, ew) in got {
                            prop_assert!(!s.contains(&e));
                            prop_assert_eq!(held.remove(&e), Some(ew));
                        }
                        prop_assert!(s.weight() <= t);
                    }
                }
                prop_assert_eq!(s.weight(), held.values().sum::<u64>());
                prop_assert_eq!(s.len(), held.len());
                prop_assert_eq!(s.weight(), m.total());
                prop_assert_eq!(s.keys_oldest_first(), m.queues());
                prop_assert_eq!(s.ghost.weight, m.ghost.iter().map(|g| g.1).sum::<u64>());
                for h in 0..10 {
                    prop_assert_eq!(s.ghost_contains(h), m.ghost.iter().any(|g| g.0 == h));
                }
                prop_assert_eq!(s.ghost.live, m.ghost.len());
                prop_assert!(s.ghost.fifo.len() <= 2 * s.ghost.live + SWEEP_SLACK);
                prop_assert!(s.ghost.index.len() <= 2 * s.ghost.live + SWEEP_SLACK);
            }
        }
    }
}
