//! Prometheus counters per node, served at `GET /metrics` (prometheus-client).

use larder_core::Outcome;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, &'static str)>;

/// The `larder_requests` label of a request another peer answered (its owner).
const FORWARDED: &str = "forwarded";

/// Per-outcome handles into one counter family, made once (no label allocation on the
/// request path), in the order of `Outcome::ALL`.
struct ByOutcome([Counter; Outcome::ALL.len()]);

impl ByOutcome {
    fn new(family: &Family<Labels, Counter>) -> Self {
        ByOutcome(
            Outcome::ALL.map(|o| family.get_or_create(&vec![("outcome", o.as_str())]).clone()),
        )
    }

    fn get(&self, outcome: Outcome) -> &Counter {
        // `ALL` lists every outcome (the core tests it); a newer one counts as an error
        // rather than not at all.
        let i = Outcome::ALL.iter().position(|o| *o == outcome);
        &self.0[i.unwrap_or(Outcome::ALL.len() - 1)]
    }
}

/// Latency buckets: 0.25 ms to about 4 minutes, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 21))
}

/// One histogram per outcome in one family, made once.
struct LatencyByOutcome {
    family: Family<Labels, Histogram, fn() -> Histogram>,
    each: Vec<Histogram>,
}

impl LatencyByOutcome {
    fn new() -> Self {
        let family: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency);
        let each = Outcome::ALL
            .iter()
            .map(|o| family.get_or_create(&vec![("outcome", o.as_str())]).clone())
            .collect();
        LatencyByOutcome { family, each }
    }

    fn observe(&self, outcome: Outcome, d: std::time::Duration) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome);
        self.each[i.unwrap_or(Outcome::ALL.len() - 1)].observe(d.as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    /// `larder_responses_total{code}`: responses by status class.
    by_class: [Counter; 5],
    /// Time to the response head, and to its end, by outcome.
    first_byte: LatencyByOutcome,
    duration: LatencyByOutcome,
    /// Time an origin took to send a response head.
    pub origin_first_byte: Histogram,
    /// Hits served from each tier (`larder_hits_total{tier}`).
    pub hits_memory: Counter,
    pub hits_disk: Counter,
    /// `larder_requests` by the engine's outcome.
    outcomes: ByOutcome,
    /// `larder_requests{outcome="forwarded"}`.
    forwarded: Counter,
    /// `larder_forwarded` by the outcome the owner reported.
    forwarded_outcomes: ByOutcome,
    pub origin_fetches: Counter,
    /// Fetches the engine sent to the key's owner instead of the origin.
    pub peer_fetches: Counter,
    pub coalesced: Counter,
    pub peer_forwards: Counter,
    pub peer_errors: Counter,
    /// Forwarded responses cut mid-body and continued from another peer or this one.
    pub resumed: Counter,
    pub peers_up: Gauge,
    pub peers_down: Gauge,
    pub bytes_from_cache: Counter,
    pub bytes_from_origin: Counter,
    pub bytes_from_peers: Counter,
    /// `larder_cache_bytes{tier="memory"}` and `{tier="disk"}`: where the cluster's bytes
    /// are, peer by peer.
    pub cache_bytes: TierGauges,
    /// `larder_cache_entries{tier=...}`.
    pub cache_entries: TierGauges,
    pub stored: Counter,
    pub evictions: Counter,
    pub disk_bytes: Gauge,
    /// Bytes of hot copies of remote keys (part of `larder_cache_bytes`).
    pub hot_bytes: Gauge,
    pub disk_writes: Counter,
    pub disk_write_failures: Counter,
    pub disk_loads: Counter,
    pub disk_corrupt: Counter,
    /// 1 while the disk tier takes no writes (after ENOSPC or an unwritable directory).
    pub disk_resting: Gauge,
    /// Clients cut off for falling too far behind a shared download.
    pub clients_cut: Counter,
    /// Panics caught while handling an input (the request got an error, nothing leaked).
    pub engine_panics: Counter,
    /// 1 while this peer's etcd session is live (registered and watching).
    pub etcd_up: Gauge,
    /// Member list changes applied (from etcd).
    pub membership_changes: Counter,
    /// Members of the cluster as this peer knows them (itself included).
    pub members: Gauge,
    /// `larder_connect_total{result}`: what became of CONNECT requests.
    pub connect: ConnectCounts,
    /// `larder_tunnel_bytes_total{direction}`: bytes relayed through plain tunnels.
    pub tunnel_up: Counter,
    pub tunnel_down: Counter,
}

/// CONNECT requests by result, one handle per label, made once.
#[derive(Clone)]
pub struct ConnectCounts {
    family: Family<Labels, Counter>,
    /// Relayed as bytes to the destination (squid's `TCP_TUNNEL`).
    pub tunnelled: Counter,
    /// TLS terminated here; the requests inside served by the cache.
    pub intercepted: Counter,
    /// Plain HTTP inside the tunnel, served by the cache (undici's `http://` requests).
    pub http: Counter,
    /// Refused: client not allowed, port not allowed, destination not allowed.
    pub refused: Counter,
    /// The destination could not be reached, or the client's TLS failed.
    pub failed: Counter,
}

impl Default for ConnectCounts {
    fn default() -> Self {
        let family: Family<Labels, Counter> = Family::default();
        let get = |r: &'static str| family.get_or_create(&vec![("result", r)]).clone();
        ConnectCounts {
            tunnelled: get("tunnel"),
            intercepted: get("intercept"),
            http: get("http"),
            refused: get("refused"),
            failed: get("failed"),
            family,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests: Family<Labels, Counter> = Family::default();
        let outcomes = ByOutcome::new(&requests);
        let forwarded = requests
            .get_or_create(&vec![("outcome", FORWARDED)])
            .clone();
        let by_owner: Family<Labels, Counter> = Family::default();
        let forwarded_outcomes = ByOutcome::new(&by_owner);
        let classes: Family<Labels, Counter> = Family::default();
        let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|c| classes.get_or_create(&vec![("code", c)]).clone());
        let hits: Family<Labels, Counter> = Family::default();
        let hits_memory = hits.get_or_create(&vec![("tier", "memory")]).clone();
        let hits_disk = hits.get_or_create(&vec![("tier", "disk")]).clone();
        let mut m = Metrics {
            registry: Registry::default(),
            by_class,
            first_byte: LatencyByOutcome::new(),
            duration: LatencyByOutcome::new(),
            origin_first_byte: latency(),
            hits_memory,
            hits_disk,
            outcomes,
            forwarded,
            forwarded_outcomes,
            origin_fetches: Counter::default(),
            peer_fetches: Counter::default(),
            coalesced: Counter::default(),
            peer_forwards: Counter::default(),
            peer_errors: Counter::default(),
            resumed: Counter::default(),
            peers_up: Gauge::default(),
            peers_down: Gauge::default(),
            bytes_from_cache: Counter::default(),
            bytes_from_origin: Counter::default(),
            bytes_from_peers: Counter::default(),
            cache_bytes: TierGauges::default(),
            cache_entries: TierGauges::default(),
            stored: Counter::default(),
            evictions: Counter::default(),
            disk_bytes: Gauge::default(),
            hot_bytes: Gauge::default(),
            disk_writes: Counter::default(),
            disk_write_failures: Counter::default(),
            disk_loads: Counter::default(),
            disk_corrupt: Counter::default(),
            disk_resting: Gauge::default(),
            clients_cut: Counter::default(),
            engine_panics: Counter::default(),
            connect: ConnectCounts::default(),
            etcd_up: Gauge::default(),
            membership_changes: Counter::default(),
            members: Gauge::default(),
            tunnel_up: Counter::default(),
            tunnel_down: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "larder_requests",
            "Client requests by cache outcome (forwarded: answered by the owner peer)",
            requests,
        );
        r.register(
            "larder_forwarded",
            "Requests answered by their owner peer, by the outcome the owner reported",
            by_owner,
        );
        r.register(
            "larder_origin_fetches",
            "Upstream fetches made by the cache",
            m.origin_fetches.clone(),
        );
        r.register(
            "larder_peer_fetches",
            "Fetches sent to the key's owner peer instead of the origin",
            m.peer_fetches.clone(),
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
            "larder_resumed",
            "Forwarded responses cut mid-body and continued (Range + If-Range)",
            m.resumed.clone(),
        );
        r.register(
            "larder_clients_cut",
            "Clients cut off for falling too far behind a shared download",
            m.clients_cut.clone(),
        );
        r.register(
            "larder_engine_panics",
            "Panics caught while handling an input (answered with an error, state released)",
            m.engine_panics.clone(),
        );
        r.register(
            "larder_etcd_up",
            "1 while the etcd membership session is live (0: etcd unreachable, last view kept)",
            m.etcd_up.clone(),
        );
        r.register(
            "larder_members",
            "Cluster members as this peer knows them (from --peers or etcd)",
            m.members.clone(),
        );
        r.register(
            "larder_membership_changes",
            "Member list changes applied from etcd",
            m.membership_changes.clone(),
        );
        r.register(
            "larder_responses",
            "Responses to clients by status class",
            classes,
        );
        r.register_with_unit(
            "larder_response_first_byte",
            "Time from a request's arrival to its response head, by cache outcome",
            Unit::Seconds,
            m.first_byte.family.clone(),
        );
        r.register_with_unit(
            "larder_response_duration",
            "Time from a request's arrival to the end of its response, by cache outcome",
            Unit::Seconds,
            m.duration.family.clone(),
        );
        r.register_with_unit(
            "larder_origin_first_byte",
            "Time an origin took to answer with a response head",
            Unit::Seconds,
            m.origin_first_byte.clone(),
        );
        r.register(
            "larder_hits",
            "Hits served, by the tier the body came from",
            hits,
        );
        r.register(
            "larder_connect",
            "CONNECT requests by result (tunnel, intercept, http, refused, failed)",
            m.connect.family.clone(),
        );
        let tunnel: Family<Labels, Counter> = Family::default();
        r.register(
            "larder_tunnel_bytes",
            "Bytes relayed through CONNECT tunnels (up: client to destination)",
            tunnel.clone(),
        );
        m.tunnel_up = tunnel.get_or_create(&vec![("direction", "up")]).clone();
        m.tunnel_down = tunnel.get_or_create(&vec![("direction", "down")]).clone();
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
            "larder_origin_bytes",
            "Body bytes received from origins",
            m.bytes_from_origin.clone(),
        );
        r.register(
            "larder_peer_bytes",
            "Body bytes received from peers for this node's fetches",
            m.bytes_from_peers.clone(),
        );
        r.register(
            "larder_cache_bytes",
            "Bytes held, by tier (memory: bodies and metadata; disk: records)",
            m.cache_bytes.family.clone(),
        );
        r.register(
            "larder_cache_entries",
            "Entries held, by tier (an entry on disk with its metadata in memory counts in both)",
            m.cache_entries.family.clone(),
        );
        r.register("larder_stored", "Responses stored", m.stored.clone());
        r.register(
            "larder_evictions",
            "Entries evicted or invalidated",
            m.evictions.clone(),
        );
        r.register(
            "larder_disk_bytes",
            "Bytes held by the disk tier",
            m.disk_bytes.clone(),
        );
        r.register(
            "larder_hot_bytes",
            "Bytes of hot copies of keys other peers own (part of larder_cache_bytes)",
            m.hot_bytes.clone(),
        );
        r.register(
            "larder_disk_writes",
            "Entries written to the disk tier",
            m.disk_writes.clone(),
        );
        r.register(
            "larder_disk_write_failures",
            "Disk writes that failed (no space, unwritable directory)",
            m.disk_write_failures.clone(),
        );
        r.register(
            "larder_disk_loads",
            "Entries read back from the disk tier",
            m.disk_loads.clone(),
        );
        r.register(
            "larder_disk_corrupt",
            "Disk entries found corrupt or unreadable (deleted, refetched)",
            m.disk_corrupt.clone(),
        );
        r.register(
            "larder_disk_resting",
            "1 while the disk tier takes no writes after a failure",
            m.disk_resting.clone(),
        );
        m
    }

    /// Counts one request this node served, by its typed outcome; `collapsed` when it was
    /// answered from another request's fetch.
    pub fn count(&self, outcome: Outcome, collapsed: bool) {
        self.outcomes.get(outcome).inc();
        if collapsed {
            self.coalesced.inc();
        }
    }

    /// Counts a response by its status class and the time to its head.
    pub fn responded(&self, status: u16, outcome: Outcome, first_byte: std::time::Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.first_byte.observe(outcome, first_byte);
    }

    /// The time a response took to its end.
    pub fn finished(&self, outcome: Outcome, duration: std::time::Duration) {
        self.duration.observe(outcome, duration);
    }

    /// Counts one request answered by its owner peer: `larder_requests{outcome="forwarded"}`
    /// (the owner counts how it served it, so a cluster's sum counts each request once),
    /// and `larder_forwarded` by the outcome the owner's Cache-Status reports.
    pub fn count_forwarded(&self, owner: Outcome) {
        self.forwarded.inc();
        self.forwarded_outcomes.get(owner).inc();
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, line: &str) -> u64 {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{}", m.render()))
    }

    #[test]
    fn every_outcome_has_its_label() {
        let m = Metrics::new();
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                m.count(o, false);
            }
        }
        m.count(Outcome::Miss, true);
        m.count_forwarded(Outcome::Stale);
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            let extra = u64::from(o == Outcome::Miss);
            let line = format!("larder_requests_total{{outcome=\"{}\"}}", o.as_str());
            assert_eq!(value(&m, &line), n as u64 + 1 + extra, "{line}");
        }
        assert_eq!(value(&m, "larder_requests_total{outcome=\"forwarded\"}"), 1);
        assert_eq!(value(&m, "larder_forwarded_total{outcome=\"stale\"}"), 1);
        assert_eq!(value(&m, "larder_forwarded_total{outcome=\"hit\"}"), 0);
        assert_eq!(value(&m, "larder_coalesced_total"), 1);
    }
}

/// One gauge per storage tier, in one labelled family; the handles are made once (no label
/// lookup when they are set after every input).
#[derive(Clone)]
pub struct TierGauges {
    family: Family<Labels, Gauge>,
    /// `tier="memory"`.
    pub memory: Gauge,
    /// `tier="disk"`.
    pub disk: Gauge,
}

impl Default for TierGauges {
    fn default() -> Self {
        let family: Family<Labels, Gauge> = Family::default();
        let memory = family.get_or_create(&vec![("tier", "memory")]).clone();
        let disk = family.get_or_create(&vec![("tier", "disk")]).clone();
        TierGauges {
            family,
            memory,
            disk,
        }
    }
}
