//! Engine scenarios on a virtual clock: a simulated cluster, a scripted origin, no sockets.
//!
//! One test binary, split by topic. Responses are checked through the sim's typed
//! `Cache-Status` assertions (`assert_hit`, `assert_miss`, `assert_stale`, ...), and time
//! moves either by hand (`Sim::advance`) or to the engines' own deadlines (`Sim::drive`).

#[path = "../sim/mod.rs"]
mod sim;

mod coalescing;
mod freshness;
mod hits;
mod hot_cache;
mod interim;
mod invalidation;
mod purge;
mod ranges;
mod routing;
mod segments;
mod sim_checks;
mod storability;
mod vary;

use sim::Reply;

const URL: &str = "http://origin.test/a";

/// A 200 fresh for 60 s, with a validator.
fn fresh(body: &str) -> Reply {
    Reply::ok(body, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
}
