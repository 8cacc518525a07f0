//! Prometheus counters per node, served at `GET /metrics` (prometheus-client).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub origin_fetches: Counter,
    pub coalesced: Counter,
    pub peer_forwards: Counter,
    pub peer_errors: Counter,
    pub peers_up: Gauge,
    pub peers_down: Gauge,
    pub bytes_from_cache: Counter,
    pub bytes_from_origin: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub stored: Counter,
    pub evictions: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics::default();
        let r = &mut m.registry;
        r.register(
            "larder_requests",
            "Client requests by cache outcome",
            m.requests.clone(),
        );
        r.register(
            "larder_origin_fetches",
            "Upstream fetches made by the cache",
            m.origin_fetches.clone(),
        );
        r.register(
            "larder_coalesced",
            "Requests answered from another request's fetch",
            m.coalesced.clone(),
        );
        r.register(
            "larder_peer_forwards",
            "Requests forwarded to their owner peer",
            m.peer_forwards.clone(),
        );
        r.register(
            "larder_peer_errors",
            "Failed attempts to reach a peer",
            m.peer_errors.clone(),
        );
        r.register(
            "larder_peers_up",
            "Peers currently considered up",
            m.peers_up.clone(),
        );
        r.register(
            "larder_peers_down",
            "Peers currently marked down",
            m.peers_down.clone(),
        );
        r.register(
            "larder_bytes_from_cache",
            "Body bytes served from cache",
            m.bytes_from_cache.clone(),
        );
        r.register(
            "larder_bytes_from_origin",
            "Body bytes received from origins",
            m.bytes_from_origin.clone(),
        );
        r.register(
            "larder_cache_bytes",
            "Bytes held by the memory tier",
            m.cache_bytes.clone(),
        );
        r.register(
            "larder_cache_entries",
            "Entries held by the memory tier",
            m.cache_entries.clone(),
        );
        r.register("larder_stored", "Responses stored", m.stored.clone());
        r.register(
            "larder_evictions",
            "Entries evicted or invalidated",
            m.evictions.clone(),
        );
        m
    }

    /// Counts one request by the outcome its Cache-Status names.
    pub fn count(&self, cache_status: &str) {
        let outcome = if cache_status.is_empty() {
            "error"
        } else if cache_status.contains("; hit") {
            "hit"
        } else if cache_status.contains("fwd=stale") {
            "revalidated"
        } else if cache_status.contains("fwd=bypass") || cache_status.contains("fwd=method") {
            "pass"
        } else {
            "miss"
        };
        self.requests
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
        if cache_status.contains("collapsed") {
            self.coalesced.inc();
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}
