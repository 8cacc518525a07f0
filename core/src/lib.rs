//! Larder's sans-IO core.
//!
//! Every piece here is a plain state machine: values in, decisions out, `now` passed in.
//! Nothing in this crate reads a clock, opens a socket, spawns a task or touches a file,
//! so the same code runs in the native peer, in a Spin component and in JavaScript, and
//! tests can replay whole clusters on a virtual clock.
//!
//! - [`key`]: the normalized cache key (what the ring hashes and the store indexes).
//! - [`ring`]: which peer owns a key (rendezvous by default, groupcache-compatible ring as an option).
//! - [`lru`]: byte-weighted eviction whose evictions are outputs.
//! - [`policy`]: RFC 9111 storability and freshness on top of `http-cache-semantics`.
//! - [`range`] and [`segment`]: client byte ranges and the Range segments used to fetch large objects.
//! - [`cache_status`]: the RFC 9211 `Cache-Status` header.
//! - [`door`] and [`hop`]: the front doors and the peer protocol every runtime speaks.
//! - [`storage`]: what crosses the boundary to the storage tiers, and the one entry format.
//! - [`time`]: saturating time arithmetic (header values and `now` are never trusted).
//! - [`engine`]: the state machine that combines all of them, driven with `handle_input` / `poll_output`.
#![forbid(unsafe_code)]

pub mod cache_status;
pub mod door;
pub mod engine;
pub mod heads;
pub mod hop;
pub mod key;
pub mod lru;
pub mod policy;
pub mod range;
pub mod ring;
pub mod segment;
pub mod storage;
pub mod time;

pub use cache_status::{CacheStatus, Outcome};
pub use engine::{ClientId, Config, Engine, FetchId, Input, Output, ResponseBody, Route};
pub use key::CacheKey;
pub use lru::{Admission, Eviction, Lru};
pub use policy::{CacheMode, NotServed, NotStored, Policy, PolicyConfig};
pub use ring::{PeerSelection, RingKind};
pub use storage::{EntryId, MemoryTier, StorageError, StoredBody, Tier};
