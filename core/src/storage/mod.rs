//! Storage as I/O: the values that cross the boundary between the engine, which decides
//! what to write, read, promote and delete, and the adapter's tiers, which carry it out.
//!
//! - The **memory tier** (hot) holds bodies the adapter can hand out at once, so a memory hit
//!   still resolves in one drain. [`MemoryTier`] is that tier as a plain map, for every
//!   adapter to use.
//! - The **disk tier** (warm, persistent) holds whole [`entry`] records: a directory on native
//!   peers, the key-value store in Spin, whatever an embedder provides in JavaScript.
//!
//! The engine keeps an index (keys, variants, policy facts of hot entries, sizes, tiers) and
//! asks for the rest with [`crate::Output::Load`]; see [`crate::engine`].

pub mod entry;

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;

/// One stored response (one variant of one key). Ids are never reused: a tier never holds
/// two different responses under one id, so a body read by id always matches its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

impl EntryId {
    /// The id as a fixed-width name (files, key-value keys).
    pub fn name(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parses [`EntryId::name`].
    pub fn from_name(s: &str) -> Option<EntryId> {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .map(EntryId)
    }
}

/// Where an entry's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The hot tier: bodies in process memory, read synchronously.
    Memory,
    /// The warm, persistent tier: whole records (metadata and body).
    Disk,
}

/// Why a tier could not take a write.
///
/// `#[non_exhaustive]`: tiers may report finer failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// No space left (`ENOSPC`, a quota, a store's size limit).
    Full,
    /// The tier cannot be written at all (permissions, a missing directory, a read-only store).
    Unavailable,
}

/// A piece of a body served from a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes the engine made (multipart boundaries).
    Literal(Bytes),
    /// `len` bytes of the stored body from `start`.
    Slice {
        /// Offset in the stored body.
        start: u64,
        /// Bytes from there.
        len: u64,
    },
}

/// A body the adapter reads from one of its tiers: the pieces in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody {
    /// The entry to read.
    pub entry: EntryId,
    /// The tier to read it from (memory reads resolve at once, disk reads stream).
    pub tier: Tier,
    /// What the client gets: the whole body as one slice, a range, or multipart pieces.
    pub pieces: Vec<Piece>,
}

impl StoredBody {
    /// Bytes the client receives.
    pub fn len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(b) => b.len() as u64,
                Piece::Slice { len, .. } => *len,
            })
            .sum()
    }

    /// Whether the client receives no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The memory tier as a map from id to body. Writes and deletes come from the engine's
/// outputs; a read resolves a [`StoredBody`] without copying when it is one slice.
#[derive(Debug, Default)]
pub struct MemoryTier {
    bodies: HashMap<EntryId, Bytes>,
}

impl MemoryTier {
    /// An empty tier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Carries out `Output::Write` for [`Tier::Memory`].
    pub fn insert(&mut self, id: EntryId, body: Bytes) {
        self.bodies.insert(id, body);
    }

    /// Carries out `Output::Delete` for [`Tier::Memory`].
    pub fn remove(&mut self, id: EntryId) -> Option<Bytes> {
        self.bodies.remove(&id)
    }

    /// The whole stored body of `id`.
    pub fn get(&self, id: EntryId) -> Option<&Bytes> {
        self.bodies.get(&id)
    }

    /// Bodies held.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Whether no body is held.
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    /// The body a response asks for, or `None` when the entry is not here (or a slice
    /// lies outside it: never a short body).
    pub fn read(&self, body: &StoredBody) -> Option<Bytes> {
        let stored = self.bodies.get(&body.entry)?;
        assemble(stored, &body.pieces)
    }
}

/// The pieces of `stored` as one buffer (one slice is not copied).
pub fn assemble(stored: &Bytes, pieces: &[Piece]) -> Option<Bytes> {
    let slice = |start: u64, len: u64| {
        let end = start.checked_add(len)?;
        (end <= stored.len() as u64).then(|| stored.slice(start as usize..end as usize))
    };
    match pieces {
        [] => Some(Bytes::new()),
        [Piece::Slice { start, len }] => slice(*start, *len),
        [Piece::Literal(b)] => Some(b.clone()),
        _ => {
            let mut out = BytesMut::new();
            for p in pieces {
                match p {
                    Piece::Literal(b) => out.extend_from_slice(b),
                    Piece::Slice { start, len } => out.extend_from_slice(&slice(*start, *len)?),
                }
            }
            Some(out.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_junk_is_refused() {
        let id = EntryId(0x0123_4567_89ab_cdef);
        assert_eq!(EntryId::from_name(&id.name()), Some(id));
        assert_eq!(EntryId::from_name("xyz"), None);
        assert_eq!(EntryId::from_name("0123456789abcdefg"), None);
    }

    #[test]
    fn a_slice_outside_the_body_is_no_body() {
        let mut m = MemoryTier::new();
        m.insert(EntryId(1), Bytes::from_static(b"hello"));
        let read = |pieces| {
            m.read(&StoredBody {
                entry: EntryId(1),
                tier: Tier::Memory,
                pieces,
            })
        };
        assert_eq!(
            read(vec![Piece::Slice { start: 1, len: 3 }]),
            Some(Bytes::from_static(b"ell"))
        );
        assert_eq!(read(vec![Piece::Slice { start: 3, len: 3 }]), None);
        assert_eq!(
            read(vec![Piece::Slice {
                start: u64::MAX,
                len: 2
            }]),
            None
        );
        assert_eq!(
            read(vec![
                Piece::Literal(Bytes::from_static(b"<")),
                Piece::Slice { start: 0, len: 5 },
                Piece::Literal(Bytes::from_static(b">")),
            ]),
            Some(Bytes::from_static(b"<hello>"))
        );
    }
}
