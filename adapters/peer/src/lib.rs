//! Larder's native peer: a thin tokio + hyper driver of `larder-core`.
//!
//! The engine decides everything about caching; this crate moves bytes: it accepts
//! connections ([`server`]), resolves the front doors ([`door`]), feeds the engine and
//! carries out its outputs ([`driver`]), fetches from origins ([`upstream`]), talks to other
//! peers ([`peers`]) and exports metrics ([`metrics`]).

pub mod body;
pub mod config;
pub mod door;
pub mod driver;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::{Args, Settings};
pub use server::{Running, start, start_on};
