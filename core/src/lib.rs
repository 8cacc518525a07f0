//! Larder's sans-IO core.
//!
//! Every piece here is a plain state machine: values in, decisions out, `now` passed in.
//! Nothing in this crate reads a clock, opens a socket, spawns a task or touches a file,
//! so the same code runs in the native peer, in a Spin component and in JavaScript, and
//! tests can replay whole clusters on a virtual clock.
//!
//! # Driving the engine
//!
//! An adapter owns the sockets, the clock and the storage tiers; the [`Engine`] owns every
//! decision. The loop is the same in every runtime:
//!
//! 1. Hand the engine one [`Input`] with [`Engine::handle_input`] and the current time: a
//!    client request, a piece of an upstream answer, a tier's answer, a timeout.
//! 2. Drain [`Engine::poll_output`] until `None`, carrying out each [`Output`]: answer a
//!    client, fetch upstream, write to or read from a tier ([`MemoryTier`] is the memory
//!    tier, ready to use).
//! 3. Wait for I/O, or until [`Engine::poll_timeout`], then deliver [`Input::Timeout`].
//!
//! A miss, then a hit served from the memory tier:
//!
//! ```
//! use bytes::Bytes;
//! use larder_core::{ClientId, Config, Engine, Input, MemoryTier, Outcome, Output};
//! use larder_core::{ResponseBody, Route, Tier};
//! use std::time::{Duration, SystemTime};
//!
//! /// One input, then drain: the memory tier's work is done here, the rest returned.
//! fn feed(e: &mut Engine, mem: &mut MemoryTier, now: SystemTime, i: Input) -> Vec<Output> {
//!     e.handle_input(now, i);
//!     let mut rest = Vec::new();
//!     while let Some(out) = e.poll_output() {
//!         match out {
//!             Output::Write { entry, tier: Tier::Memory, body, .. } => mem.insert(entry, body),
//!             Output::Delete { entry, tier: Tier::Memory, .. } => drop(mem.remove(entry)),
//!             other => rest.push(other),
//!         }
//!     }
//!     rest
//! }
//!
//! let (mut engine, mut mem) = (Engine::new(Config::default())?, MemoryTier::new());
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! let get = |id| Input::Request {
//!     client: ClientId(id),
//!     head: http::Request::get("http://origin.test/a").body(()).unwrap().into_parts().0,
//!     route: Route::Local,
//! };
//!
//! // A miss: the engine asks for an upstream fetch.
//! let outs = feed(&mut engine, &mut mem, now, get(1));
//! let Some(Output::Fetch { fetch, .. }) = outs.into_iter().next() else { panic!("no fetch") };
//!
//! // The origin's answer is relayed to client 1 and stored.
//! let head = http::Response::builder()
//!     .header("cache-control", "max-age=60")
//!     .header("content-length", "5")
//!     .body(())?
//!     .into_parts()
//!     .0;
//! let outs = feed(&mut engine, &mut mem, now, Input::UpstreamHead { fetch, head });
//! assert!(matches!(outs[0], Output::Respond { outcome: Outcome::Miss, .. }));
//! let chunk = Bytes::from_static(b"hello");
//! feed(&mut engine, &mut mem, now, Input::UpstreamBody { fetch, chunk });
//! feed(&mut engine, &mut mem, now, Input::UpstreamEnd { fetch });
//!
//! // Ten seconds later the same URL is a hit, its body read from the memory tier.
//! let outs = feed(&mut engine, &mut mem, now + Duration::from_secs(10), get(2));
//! let [Output::Respond { body: ResponseBody::Stored(stored), outcome, .. }] = &outs[..] else {
//!     panic!("a hit is one response: {outs:?}");
//! };
//! assert_eq!(*outcome, Outcome::Hit);
//! assert_eq!(mem.read(stored).as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Everything an adapter needs is re-exported at the crate root. [`Input`], [`Output`] and
//! the error and reason enums are `#[non_exhaustive]`: an adapter logs and ignores an
//! output it does not know. [`ResponseBody`], [`Piece`] and [`Tier`] are not: a body or a
//! tier an adapter cannot handle must fail its build, not vanish.
//!
//! # Modules
//!
//! - [`key`]: the normalized cache key (what the ring hashes and the store indexes).
//! - [`ring`]: which peer owns a key (rendezvous by default, groupcache-compatible ring as an option).
//! - [`lru`]: byte-weighted eviction whose evictions are outputs.
//! - [`s3fifo`]: the same contract with S3-FIFO's queues; [`eviction`] picks one of the two.
//! - [`policy`]: RFC 9111 storability and freshness on top of `http-cache-semantics`.
//! - [`range`] and [`segment`]: client byte ranges and the Range segments used to fetch large objects.
//! - [`cache_status`]: the RFC 9211 `Cache-Status` header.
//! - [`door`] and [`hop`]: the front doors and the peer protocol every runtime speaks.
//! - [`heads`]: copying request heads (`http::request::Parts` is not `Clone`).
//! - [`storage`]: what crosses the boundary to the storage tiers, and the one entry format.
//! - [`engine`]: the state machine that combines all of them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache_status;
pub mod door;
pub mod engine;
pub mod eviction;
pub mod heads;
pub mod hop;
pub mod interim;
pub mod key;
pub mod lru;
pub mod policy;
pub mod purge;
pub mod range;
pub mod resume;
pub mod ring;
pub mod s3fifo;
pub mod segment;
pub mod storage;
mod time;

pub use cache_status::{CacheStatus, Fwd, Outcome};
pub use engine::{
    ClientId, Config, ConfigError, Engine, FetchId, Input, Output, ResponseBody, Route,
    UpstreamError,
};
pub use eviction::{EvictionPolicy, Evictor};
pub use key::{CacheKey, KeyError};
pub use lru::{Admission, Eviction, Lru};
pub use policy::{CacheMode, NotServed, NotStored, Policy, PolicyConfig};
pub use ring::{PeerSelection, RingKind};
pub use s3fifo::S3Fifo;
pub use storage::{EntryId, MemoryTier, Piece, StorageError, StoredBody, Tier};
