//! Larder's native peer: a thin tokio + hyper driver of `larder-core`.
//!
//! The engine decides everything about caching; this crate moves bytes: it accepts
//! connections ([`server`]), resolves the front doors (`larder_core::door`), feeds the engine and
//! carries out its outputs ([`driver`]), fetches from origins ([`upstream`]), talks to other
//! peers ([`peers`]) and exports metrics ([`metrics`]). [`Client`] is the library side: a
//! non-participating client that sends each request straight to its owner.

pub mod access;
pub mod body;
pub mod client;
pub mod config;
pub mod connect;
pub mod disk;
pub mod driver;
pub mod failure;
pub mod guard;
pub mod intercept;
pub mod interim;
pub mod membership;
pub mod metrics;
pub mod peers;
mod read_clock;
mod reason;
pub mod resume;
pub mod server;
pub mod tls;
pub mod upstream;

pub use client::{Client, ClientError};
pub use config::{Args, Settings};
pub use server::{Running, start, start_on};
