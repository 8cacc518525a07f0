//! Byte-weighted eviction.
//!
//! Evictions are *returned*, never performed behind the caller's back: the caller owns the
//! storage (memory, Spin KV, disk) and frees exactly what it is told. pingora's LRU, which
//! leaves limit enforcement to a second call, shipped caches that never evicted; here the
//! limit holds after every `admit`.

use core::hash::Hash;
use hashbrown::HashMap;

/// What `admit` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<K> {
    /// Stored; these entries were evicted to make room (least recently used first).
    Admitted {
        /// (key, weight) pairs the caller must now free.
        evicted: Vec<(K, u64)>,
    },
    /// Not stored: heavier than the largest object this cache admits (or than its capacity).
    TooLarge {
        /// The weight offered.
        weight: u64,
        /// The most one item may weigh.
        limit: u64,
    },
}

/// An eviction policy over keys and byte weights: [`Lru`] or [`crate::S3Fifo`] (the default).
pub trait Eviction<K> {
    /// Inserts or re-weighs `key` and marks it most recently used.
    fn admit(&mut self, key: K, weight: u64) -> Admission<K>;
    /// Marks `key` used; false when absent.
    fn touch(&mut self, key: &K) -> bool;
    /// Forgets `key`, returning its weight.
    fn remove(&mut self, key: &K) -> Option<u64>;
    /// Whether `key` is held (without marking it used).
    fn contains(&self, key: &K) -> bool;
    /// Total weight held.
    fn weight(&self) -> u64;
    /// Keys held.
    fn len(&self) -> usize;
    /// Whether nothing is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<K> {
    key: Option<K>,
    weight: u64,
    prev: usize,
    next: usize,
}

/// LRU on hashbrown with an index-linked list in a slab: O(1) per operation, no `unsafe`.
#[derive(Debug)]
pub struct Lru<K> {
    map: HashMap<K, usize>,
    nodes: Vec<Node<K>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    weight: u64,
    capacity: u64,
    max_item: u64,
}

impl<K: Hash + Eq + Clone> Lru<K> {
    /// `capacity` bytes in all; no single item heavier than `max_item`.
    pub fn new(capacity: u64, max_item: u64) -> Self {
        Lru {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            weight: 0,
            capacity,
            max_item: max_item.min(capacity),
        }
    }

    /// The byte limit `admit` keeps to.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Evicts least recently used items until at most `target` bytes remain (a low
    /// watermark), returning them in eviction order.
    pub fn shrink_to(&mut self, target: u64) -> Vec<(K, u64)> {
        let mut evicted = Vec::new();
        while self.weight > target && self.tail != NIL {
            let (k, w) = self.release(self.tail);
            self.map.remove(&k);
            evicted.push((k, w));
        }
        evicted
    }

    /// Keys from least to most recently used (for tests and dumps; O(n)).
    pub fn keys_lru_first(&self) -> Vec<K> {
        let mut out = Vec::with_capacity(self.map.len());
        let mut i = self.tail;
        while i != NIL {
            out.push(self.nodes[i].key.clone().expect("linked node has a key"));
            i = self.nodes[i].prev;
        }
        out
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev != NIL {
            self.nodes[prev].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn release(&mut self, i: usize) -> (K, u64) {
        self.unlink(i);
        let node = &mut self.nodes[i];
        let key = node.key.take().expect("linked node has a key");
        let w = node.weight;
        self.weight -= w;
        self.free.push(i);
        (key, w)
    }
}

impl<K: Hash + Eq + Clone> Eviction<K> for Lru<K> {
    fn admit(&mut self, key: K, weight: u64) -> Admission<K> {
        if weight > self.max_item {
            // An existing entry under `key` is left alone: the caller decides whether it is stale.
            return Admission::TooLarge {
                weight,
                limit: self.max_item,
            };
        }
        if let Some(&i) = self.map.get(&key) {
            self.weight = self.weight - self.nodes[i].weight + weight;
            self.nodes[i].weight = weight;
            self.unlink(i);
            self.push_front(i);
        } else {
            let node = Node {
                key: Some(key.clone()),
                weight,
                prev: NIL,
                next: NIL,
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
            self.map.insert(key, i);
            self.weight += weight;
            self.push_front(i);
        }
        let mut evicted = Vec::new();
        while self.weight > self.capacity {
            let t = self.tail;
            let (k, w) = self.release(t);
            self.map.remove(&k);
            evicted.push((k, w));
        }
        Admission::Admitted { evicted }
    }

    fn touch(&mut self, key: &K) -> bool {
        match self.map.get(key) {
            Some(&i) => {
                if self.head != i {
                    self.unlink(i);
                    self.push_front(i);
                }
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &K) -> Option<u64> {
        let i = self.map.remove(key)?;
        Some(self.release(i).1)
    }

    fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    fn weight(&self) -> u64 {
        self.weight
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let mut l = Lru::new(100, 100);
        assert_eq!(l.admit("a", 40), Admission::Admitted { evicted: vec![] });
        assert_eq!(l.admit("b", 40), Admission::Admitted { evicted: vec![] });
        assert!(l.touch(&"a"));
        assert_eq!(
            l.admit("c", 40),
            Admission::Admitted {
                evicted: vec![("b", 40)]
            }
        );
        assert_eq!(l.weight(), 80);
        assert_eq!(l.keys_lru_first(), vec!["a", "c"]);
    }

    #[test]
    fn refuses_oversize_items_and_keeps_the_rest() {
        let mut l = Lru::new(100, 50);
        l.admit("a", 10);
        assert_eq!(
            l.admit("big", 51),
            Admission::TooLarge {
                weight: 51,
                limit: 50
            }
        );
        assert!(l.contains(&"a"));
        assert!(!l.contains(&"big"));
        assert_eq!(
            l.admit("a", 60),
            Admission::TooLarge {
                weight: 60,
                limit: 50
            }
        );
        assert!(l.contains(&"a"));
        assert_eq!(l.weight(), 10);
    }

    /// The naive model: a Vec in recency order (front = LRU).
    #[derive(Default)]
    struct Model(Vec<(u8, u64)>);

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8, u64),
        Touch(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..20, 0u64..60).prop_map(|(k, w)| Op::Admit(k, w)),
            (0u8..20).prop_map(Op::Touch),
            (0u8..20).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(op(), 0..200)) {
            let (cap, max_item) = (150u64, 50u64);
            let mut lru = Lru::new(cap, max_item);
            let mut m = Model::default();
            for op in ops {
                match op {
                    Op::Admit(k, w) => {
                        let got = lru.admit(k, w);
                        if w > max_item {
                            prop_assert_eq!(got, Admission::TooLarge { weight: w, limit: max_item });
                        } else {
                            m.0.retain(|(mk, _)| *mk != k);
                            m.0.push((k, w));
                            let mut evicted = vec![];
                            while m.0.iter().map(|e| e.1).sum::<u64>() > cap {
                                evicted.push(m.0.remove(0));
                            }
                            prop_assert_eq!(got, Admission::Admitted { evicted });
                        }
                    }
                    Op::Touch(k) => {
                        let pos = m.0.iter().position(|e| e.0 == k);
                        prop_assert_eq!(lru.touch(&k), pos.is_some());
                        if let Some(p) = pos { let e = m.0.remove(p); m.0.push(e); }
                    }
                    Op::Remove(k) => {
                        let pos = m.0.iter().position(|e| e.0 == k);
                        prop_assert_eq!(lru.remove(&k), pos.map(|p| m.0.remove(p).1));
                    }
                }
                prop_assert_eq!(lru.keys_lru_first(), m.0.iter().map(|e| e.0).collect::<Vec<_>>());
                prop_assert_eq!(lru.weight(), m.0.iter().map(|e| e.1).sum::<u64>());
                prop_assert!(lru.weight() <= cap);
                prop_assert_eq!(lru.len(), m.0.len());
            }
        }
    }
}
