//! Settings: clap flags, `LARDER_*` environment variables and an optional TOML file, with
//! the same names everywhere. Precedence: flag, then environment, then file, then default.

use clap::Parser;
use ipnet::IpNet;
use larder_core::policy::{CacheMode, PolicyConfig};
use larder_core::ring::RingKind;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Larder: a caching HTTP proxy. One peer or a cluster shares one cache; every GET and
/// HEAD is answered from it or fetched from the origin once, as HTTP's caching rules allow.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "larder",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LARDER_GIT_COMMIT"), ")"),
    after_help = EXAMPLES
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with any of the settings below (keys as the long flags, e.g. `max-object-size`).
    #[arg(long, env = "LARDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, host:port (a name resolves to its first address)
    /// [default: 127.0.0.1:3128].
    #[arg(long, env = "LARDER_LISTEN")]
    pub listen: Option<String>,
    /// Serve origin-form requests from an upstream (reverse-proxy / package-mirror mode):
    /// `URL` for every path, or `/PREFIX=URL` for the paths under `/PREFIX` (repeatable; the
    /// longest prefix wins), e.g. `--mirror /debian=http://deb.example/debian`.
    #[arg(long, env = "LARDER_MIRROR", value_delimiter = ',')]
    pub mirror: Vec<String>,
    /// Regex over the URL's path (not its query): matching requests are never cached
    /// (repeatable).
    #[arg(long, env = "LARDER_PASSTHROUGH", value_delimiter = ',')]
    pub passthrough: Vec<String>,
    /// Memory for cached objects, e.g. 256MiB, 2GiB [default: 256MiB].
    #[arg(long, env = "LARDER_MEMORY")]
    pub memory: Option<String>,
    /// Directory of the disk tier (off when not given). What is complete on disk is served
    /// again after a restart.
    #[arg(long, env = "LARDER_DISK_DIR")]
    pub disk_dir: Option<PathBuf>,
    /// Disk tier size, its high watermark, e.g. 10GiB [default: 1GiB].
    #[arg(long, env = "LARDER_DISK_SIZE")]
    pub disk_size: Option<String>,
    /// Past --disk-size, the disk tier is cleaned down to this [default: 90% of --disk-size].
    #[arg(long, env = "LARDER_DISK_CLEAN_TO")]
    pub disk_clean_to: Option<String>,
    /// Largest object stored [default: 64MiB].
    #[arg(long, env = "LARDER_MAX_OBJECT_SIZE")]
    pub max_object_size: Option<String>,
    /// The least freshness a stored 200 gets, e.g. 1h (squid's refresh_pattern minimum: a
    /// shorter lifetime, or none, is raised to it; `no-store` and `no-cache` still rule)
    /// [default: 0s].
    #[arg(long, env = "LARDER_MIN_TTL")]
    pub min_ttl: Option<String>,
    /// Freshness rules for package archives, comma-separated: debian, ubuntu, pypi, npm,
    /// crates (versioned files immutable for a year; indexes revalidated). Off unless named;
    /// the config file's own `[[rule]]` entries come first.
    #[arg(long, env = "LARDER_PRESET", value_delimiter = ',')]
    pub preset: Vec<String>,
    /// Private-cache mode: store `private` and authorized responses (single tenant only).
    #[arg(long, env = "LARDER_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub private: Option<bool>,
    /// How stale a stored response may be served when the origin cannot be reached
    /// (refused, reset, silent; RFC 9111 §4.2.4) [default: 1d]; 0 turns it off.
    #[arg(long, env = "LARDER_SERVE_STALE_ON_ERROR")]
    pub serve_stale_on_error: Option<String>,
    /// Targeted cache-control fields this cache obeys instead of Cache-Control (RFC 9213),
    /// first match wins, e.g. larder-cache-control,cdn-cache-control [default:
    /// cdn-cache-control].
    #[arg(long, env = "LARDER_TARGETED_CACHE_CONTROL", value_delimiter = ',')]
    pub targeted_cache_control: Vec<String>,
    /// Peer placement: hrw (rendezvous, default) or groupcache (Go forwardcache compatible).
    #[arg(long, env = "LARDER_RING")]
    pub ring: Option<String>,
    /// Range segment size for large objects [default: 2MiB]; 0 turns segments off.
    #[arg(long, env = "LARDER_SEGMENT_SIZE")]
    pub segment_size: Option<String>,
    /// Segments of a large object fetched ahead of the one a client is reading
    /// [default: 3]; each buffers at most one segment per client.
    #[arg(long, env = "LARDER_SEGMENT_READ_AHEAD")]
    pub segment_read_ahead: Option<usize>,
    /// Store large objects as segments even without a validator (no strong ETag, no
    /// Last-Modified): only their length then tells versions apart [default: false, such
    /// objects are fetched whole].
    #[arg(
        long,
        env = "LARDER_SEGMENT_UNVALIDATED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub segment_unvalidated: Option<bool>,
    /// Memory (part of --memory) for hot copies of keys other peers own, served here
    /// within their freshness [default: 1/8 of --memory in a cluster]; 0 turns it off.
    #[arg(long, env = "LARDER_HOT_MEMORY")]
    pub hot_memory: Option<String>,
    /// The largest body kept in memory [default: 1/8 of --memory]; larger ones are served
    /// from --disk-dir while their metadata stays in memory (squid's
    /// maximum_object_size_in_memory).
    #[arg(long, env = "LARDER_MEMORY_MAX_OBJECT")]
    pub memory_max_object: Option<String>,
    /// Eviction policy of the memory and disk budgets: s3fifo (default) or lru.
    #[arg(long, env = "LARDER_EVICTION")]
    pub eviction: Option<String>,
    /// Requests for a remote key within a minute that earn it a hot copy [default: 3].
    #[arg(long, env = "LARDER_HOT_AFTER")]
    pub hot_after: Option<u32>,
    /// This peer's own URL as the others know it, e.g. http://10.0.0.1:3128.
    #[arg(long = "self", env = "LARDER_SELF")]
    pub self_url: Option<String>,
    /// Every member's URL, comma-separated. List --self to own a share of the keys; leave
    /// it out to run an entry point that forwards everything to the members.
    #[arg(long, env = "LARDER_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// etcd client URLs (comma-separated): membership from etcd instead of a static
    /// --peers list; this peer registers its --self URL and watches the others.
    #[arg(long, env = "LARDER_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The etcd key prefix members register under [default: /larder/peers/].
    #[arg(long, env = "LARDER_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// How long a peer that died stays a member (its lease) [default: 10s].
    #[arg(long, env = "LARDER_ETCD_TTL")]
    pub etcd_ttl: Option<String>,
    /// Shared secret that authenticates peer-to-peer requests (HMAC-SHA256).
    #[arg(long, env = "LARDER_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// Wait this long for a peer's first byte before trying the next [default: 2s].
    #[arg(long, env = "LARDER_PEER_TIMEOUT")]
    pub peer_timeout: Option<String>,
    /// Client networks allowed to use the forward-proxy doors, CIDR, repeatable
    /// [default: loopback only]. Mirror mode serves everyone.
    #[arg(long, env = "LARDER_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Client networks allowed to PURGE, CIDR, repeatable [default: loopback only]. A
    /// PURGE drops the URL from the whole cluster; it never reaches the origin.
    #[arg(long, env = "LARDER_PURGE_ALLOW", value_delimiter = ',')]
    pub purge_allow: Vec<String>,
    /// Origin address ranges (CIDR) opened again, repeatable. By default origins on
    /// loopback, link-local (cloud metadata), unspecified, multicast, broadcast and
    /// unique-local addresses are refused (403), whatever the URL spells.
    #[arg(long, env = "LARDER_ALLOW_DESTINATION", value_delimiter = ',')]
    pub allow_destination: Vec<String>,
    /// Extra CA certificates (PEM) trusted for HTTPS origins, besides the public roots.
    #[arg(long, env = "LARDER_CA_FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Ports CONNECT may reach (repeatable) [default: 443 and 80; plain HTTP inside a
    /// tunnel, as undici sends for http:// URLs, is served by the cache]. Other ports: 403.
    #[arg(long, env = "LARDER_CONNECT_PORT", value_delimiter = ',')]
    pub connect_port: Vec<u16>,
    /// Targets (host:port) CONNECT may reach whatever their port (repeatable).
    #[arg(long, env = "LARDER_CONNECT_ALLOW", value_delimiter = ',')]
    pub connect_allow: Vec<String>,
    /// Intercept every CONNECT tunnel: terminate its TLS with a certificate from Larder's
    /// CA (see `larder ca-cert`) and cache what is inside like any https:// request.
    #[arg(long, env = "LARDER_INTERCEPT", num_args = 0..=1, default_missing_value = "true")]
    pub intercept: Option<bool>,
    /// Intercept CONNECT tunnels to these hosts only (`host` or `*.domain`, repeatable);
    /// the others are tunnelled as they are.
    #[arg(long, env = "LARDER_INTERCEPT_HOST", value_delimiter = ',')]
    pub intercept_host: Vec<String>,
    /// Where Larder keeps its own state: the interception CA (`ca.pem`, `ca.key`)
    /// [default: $XDG_DATA_HOME/larder or ~/.local/share/larder].
    #[arg(long, env = "LARDER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Origin connect timeout [default: 5s].
    #[arg(long, env = "LARDER_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// Origin time to first byte [default: 30s].
    #[arg(long, env = "LARDER_FIRST_BYTE_TIMEOUT")]
    pub first_byte_timeout: Option<String>,
    /// Origin idle time between body bytes [default: 30s].
    #[arg(long, env = "LARDER_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Access log on standard output: combined (NCSA, what log tools ingest, with the cache
    /// status, duration and completion appended), json, or off [default: combined].
    #[arg(long, env = "LARDER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Diagnostic log level on standard error: error, warn, info, debug, trace, or a
    /// tracing filter such as `info,larder_peer::upstream=debug` [default: info; the
    /// LARDER_LOG variable too].
    #[arg(long, env = "LARDER_LOG")]
    pub log_level: Option<String>,
    /// Path of the forwardcache-compatible door [default: /proxy].
    #[arg(long, env = "LARDER_PROXY_PATH")]
    pub proxy_path: Option<String>,
}

const EXAMPLES: &str = "Examples:
  larder                                   a forward proxy on 127.0.0.1:3128, in memory
  curl -x http://127.0.0.1:3128 http://example.com/
  larder --allow 10.0.0.0/8 --listen 0.0.0.0:3128 --disk-dir /var/cache/larder
  larder --mirror /debian=http://deb.example/debian --preset debian
  larder --intercept --preset pypi,npm && larder ca-cert > larder-ca.pem
  larder --self http://10.0.0.1:3128 --peers http://10.0.0.1:3128,http://10.0.0.2:3128
  larder --config /etc/larder/larder.toml

Every flag is also a LARDER_* environment variable and a key of the --config file.";

/// What `larder` does besides serving.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the interception CA certificate (PEM), making it first if there is none, for
    /// clients to trust: `larder ca-cert > larder-ca.pem`.
    CaCert,
    /// Print a shell completion script: `larder completions bash > /etc/bash_completion.d/larder`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `larder man > /usr/local/share/man/man1/larder.1`.
    Man,
}

/// The TOML file: the same keys as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    /// One URL, or a list of `URL` / `/PREFIX=URL`.
    #[serde(default, deserialize_with = "one_or_many")]
    mirror: Option<Vec<String>>,
    /// `[[rule]]` entries, first match wins.
    rule: Option<Vec<RuleConfig>>,
    preset: Option<Vec<String>>,
    listen: Option<String>,
    passthrough: Option<Vec<String>>,
    memory: Option<String>,
    disk_dir: Option<PathBuf>,
    disk_size: Option<String>,
    disk_clean_to: Option<String>,
    max_object_size: Option<String>,
    min_ttl: Option<String>,
    private: Option<bool>,
    serve_stale_on_error: Option<String>,
    targeted_cache_control: Option<Vec<String>>,
    ring: Option<String>,
    segment_size: Option<String>,
    segment_read_ahead: Option<usize>,
    segment_unvalidated: Option<bool>,
    hot_memory: Option<String>,
    memory_max_object: Option<String>,
    eviction: Option<String>,
    hot_after: Option<u32>,
    #[serde(rename = "self")]
    self_url: Option<String>,
    peers: Option<Vec<String>>,
    etcd: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_ttl: Option<String>,
    peer_secret: Option<String>,
    peer_timeout: Option<String>,
    allow: Option<Vec<String>>,
    allow_destination: Option<Vec<String>>,
    purge_allow: Option<Vec<String>>,
    ca_file: Option<Vec<PathBuf>>,
    connect_port: Option<Vec<u16>>,
    connect_allow: Option<Vec<String>>,
    intercept: Option<bool>,
    intercept_host: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    proxy_path: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

/// One `[[rule]]` of the config file (see `larder_core::policy::rules`).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RuleConfig {
    /// A regular expression over the whole URL.
    #[serde(rename = "match")]
    pattern: String,
    #[serde(alias = "default_ttl")]
    default_ttl: Option<String>,
    #[serde(alias = "min_ttl")]
    min_ttl: Option<String>,
    #[serde(alias = "max_ttl")]
    max_ttl: Option<String>,
    immutable: Option<bool>,
    cache: Option<bool>,
}

impl RuleConfig {
    fn build(self) -> Result<larder_core::policy::rules::FreshnessRule, String> {
        let mut r = larder_core::policy::rules::FreshnessRule::new(&self.pattern)?;
        let d = |v: Option<String>| v.map(|v| parse_duration(&v)).transpose();
        r.default_ttl = d(self.default_ttl)?;
        r.min_ttl = d(self.min_ttl)?;
        r.max_ttl = d(self.max_ttl)?;
        r.immutable = self.immutable.unwrap_or(false);
        r.cache = self.cache.unwrap_or(true);
        if let (Some(lo), Some(hi)) = (r.min_ttl, r.max_ttl) {
            if lo > hi {
                return Err(format!("rule {:?}: min-ttl exceeds max-ttl", self.pattern));
            }
        }
        Ok(r)
    }
}

/// Resolved settings for one peer.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Upstreams served to origin-form requests, by path prefix.
    pub mirrors: Vec<larder_core::door::Mirror>,
    pub engine: larder_core::Config,
    /// The disk tier's directory (the engine's `disk` budget is 0 without one).
    pub disk_dir: Option<PathBuf>,
    pub self_url: Option<String>,
    pub peers: Vec<String>,
    /// Membership from etcd (then `peers` is only the view until etcd answers).
    pub etcd: Option<crate::membership::Etcd>,
    pub peer_secret: Option<String>,
    pub peer_timeout: Duration,
    pub allow: Vec<IpNet>,
    /// Who may PURGE (empty: loopback only).
    pub purge_allow: Vec<IpNet>,
    /// Destination ranges the guard lets through after all.
    pub allow_destination: Vec<IpNet>,
    pub ca_files: Vec<PathBuf>,
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// `host:port` targets CONNECT may reach on any port.
    pub connect_allow: Vec<String>,
    /// Which CONNECT targets are intercepted (none by default).
    pub intercept: crate::intercept::Targets,
    /// Larder's own state (the interception CA).
    pub data_dir: PathBuf,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub proxy_path: String,
    /// How access lines are written.
    pub log_format: crate::access::Format,
    /// The diagnostic log filter.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Args::default().resolve().expect("defaults are valid")
    }
}

/// Parses sizes like `64MiB`, `2GiB`, `512k`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("bad size unit {other:?} in {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// A TOML value that is one string or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// `host:port` to a socket address: a literal, or a name resolved to its first address
/// (`localhost:3128`).
fn listen_address(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.trim().parse() {
        return Ok(a);
    }
    s.trim()
        .to_socket_addrs()
        .map_err(|e| format!("bad --listen {s:?}: {e} (expected host:port)"))?
        .next()
        .ok_or_else(|| format!("--listen {s:?} resolves to no address"))
}

/// `$XDG_DATA_HOME/larder`, else `~/.local/share/larder`, else `./larder-data`.
fn default_data_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_DATA_HOME")
        .map(|d| d.join("larder"))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/larder")))
        .unwrap_or_else(|| PathBuf::from("larder-data"))
}

fn or<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.or(b)
}

fn list<T>(cli: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli
    }
}

/// CIDR ranges (a bare address is a /32 or /128).
fn nets(flag: &str, v: Vec<String>) -> Result<Vec<IpNet>, String> {
    v.iter()
        .map(|a| {
            a.trim()
                .parse::<IpNet>()
                .or_else(|_| a.trim().parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|e| format!("bad {flag} {a:?}: {e}"))
        })
        .collect()
}

/// A peer URL in canonical form (scheme and host lower-case, no trailing slash), so every
/// node hashes the same string.
pub fn canonical_peer(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("peer URL {url:?} needs http:// or https://"))?;
    let auth = uri
        .authority()
        .ok_or_else(|| format!("peer URL {url:?} has no host"))?;
    Ok(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        auth.as_str().to_ascii_lowercase()
    ))
}

impl Args {
    /// Merges flags/environment with the config file and defaults.
    pub fn resolve(self) -> Result<Settings, String> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let size = |v: Option<String>, d: u64| {
            v.map(|v| parse_size(&v))
                .transpose()
                .map(|v| v.unwrap_or(d))
        };
        let dur = |v: Option<String>, d: Duration| {
            v.map(|v| parse_duration(&v))
                .transpose()
                .map(|v| v.unwrap_or(d))
        };
        let memory = size(or(self.memory, file.memory), 256 << 20)?;
        let disk_dir = or(self.disk_dir, file.disk_dir);
        let disk_size = size(or(self.disk_size, file.disk_size), 1 << 30)?;
        let disk_clean_to = size(
            or(self.disk_clean_to, file.disk_clean_to),
            disk_size / 10 * 9,
        )?;
        if disk_dir.is_some() && (disk_size == 0 || disk_clean_to > disk_size) {
            return Err(format!(
                "--disk-clean-to ({disk_clean_to}) must not exceed --disk-size ({disk_size}), \
                 which must be positive"
            ));
        }
        let max_object_size = size(or(self.max_object_size, file.max_object_size), 64 << 20)?;
        let segment_size = size(or(self.segment_size, file.segment_size), 2 << 20)?;
        let min_ttl = dur(or(self.min_ttl, file.min_ttl), Duration::ZERO)?;
        let stale_if_unreachable = dur(
            or(self.serve_stale_on_error, file.serve_stale_on_error),
            Duration::from_secs(24 * 3600),
        )?;
        let ring: RingKind = or(self.ring, file.ring)
            .unwrap_or_else(|| "hrw".into())
            .parse()?;
        let private = or(self.private, file.private).unwrap_or(false);
        let mirrors = list(self.mirror, file.mirror)
            .iter()
            .map(|m| larder_core::door::Mirror::parse(m).map_err(|e| format!("--mirror: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, m) in mirrors.iter().enumerate() {
            if mirrors[..i].iter().any(|o| o.prefix() == m.prefix()) {
                return Err(format!("--mirror: two mirrors for {:?}", m.prefix()));
            }
        }
        let self_url = or(self.self_url, file.self_url)
            .map(|u| canonical_peer(&u))
            .transpose()?;
        let mut peers = list(self.peers, file.peers)
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| canonical_peer(p))
            .collect::<Result<Vec<_>, _>>()?;
        peers.sort();
        peers.dedup();
        if !peers.is_empty() && self_url.is_none() {
            return Err("--peers needs --self (this peer's URL as the others know it)".into());
        }
        let etcd_urls = list(self.etcd, file.etcd);
        let etcd = if etcd_urls.is_empty() {
            None
        } else {
            let Some(me) = &self_url else {
                return Err("--etcd needs --self (the URL this peer registers)".into());
            };
            if !peers.contains(me) {
                peers.push(me.clone());
                peers.sort();
            }
            let endpoints = etcd_urls
                .iter()
                .map(|u| {
                    let uri: http::Uri = u
                        .trim()
                        .parse()
                        .map_err(|e| format!("bad --etcd URL {u:?}: {e}"))?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) {
                        return Err(format!("--etcd {u:?} must be an http(s) URL"));
                    }
                    Ok(uri)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let prefix =
                or(self.etcd_prefix, file.etcd_prefix).unwrap_or_else(|| "/larder/peers/".into());
            let ttl = dur(or(self.etcd_ttl, file.etcd_ttl), Duration::from_secs(10))?;
            if ttl < Duration::from_secs(1) {
                return Err("--etcd-ttl must be at least 1s".into());
            }
            Some(crate::membership::Etcd {
                endpoints,
                prefix,
                ttl,
            })
        };
        let hot_memory = size(or(self.hot_memory, file.hot_memory), memory / 8)?;
        if hot_memory > memory {
            return Err(format!(
                "--hot-memory ({hot_memory}) is part of --memory ({memory}) and cannot exceed it"
            ));
        }
        let hot_after = or(self.hot_after, file.hot_after).unwrap_or(3).max(1);
        let memory_max_object = size(or(self.memory_max_object, file.memory_max_object), 0)?;
        let eviction: larder_core::EvictionPolicy = match or(self.eviction, file.eviction) {
            Some(e) => e.parse().map_err(|e| format!("--eviction: {e}"))?,
            None => larder_core::EvictionPolicy::default(),
        };
        let allow = nets("--allow", list(self.allow, file.allow))?;
        let purge_allow = nets("--purge-allow", list(self.purge_allow, file.purge_allow))?;
        let allow_destination = nets(
            "--allow-destination",
            list(self.allow_destination, file.allow_destination),
        )?;
        let passthrough = list(self.passthrough, file.passthrough);
        let mut rules = Vec::new();
        for r in file.rule.unwrap_or_default() {
            rules.push(r.build()?);
        }
        for name in list(self.preset, file.preset) {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            rules.extend(larder_core::policy::rules::preset(&name).ok_or_else(|| {
                format!(
                    "unknown --preset {name:?} (known: {})",
                    larder_core::policy::rules::PRESETS.join(", ")
                )
            })?);
        }
        let engine = larder_core::Config {
            policy: PolicyConfig {
                mode: if private {
                    CacheMode::Private
                } else {
                    CacheMode::Shared
                },
                min_ttl,
                max_object_size,
                stale_if_unreachable,
                rules,
                targeted: {
                    let names = list(self.targeted_cache_control, file.targeted_cache_control);
                    if names.is_empty() {
                        PolicyConfig::default().targeted
                    } else {
                        names
                            .iter()
                            .map(|n| n.trim().to_ascii_lowercase())
                            .filter(|n| !n.is_empty())
                            .collect()
                    }
                },
                ..PolicyConfig::default()
            },
            memory,
            disk: if disk_dir.is_some() { disk_size } else { 0 },
            disk_clean_to,
            // Ids never repeat across restarts: start from the clock, in nanoseconds.
            first_entry_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            ring,
            self_id: self_url.clone().filter(|_| !peers.is_empty()),
            peers: peers.clone(),
            segment_size: if segment_size == 0 {
                None
            } else {
                Some(segment_size)
            },
            segment_read_ahead: or(self.segment_read_ahead, file.segment_read_ahead)
                .unwrap_or(3)
                .min(64),
            segment_unvalidated: or(self.segment_unvalidated, file.segment_unvalidated)
                .unwrap_or(false),
            passthrough,
            // Only a peer of a cluster has remote keys to keep.
            hot_memory: if peers.is_empty() { 0 } else { hot_memory },
            hot_after,
            memory_max_object,
            eviction,
            ..larder_core::Config::default()
        };
        // Fail early on a bad regex rather than at the first request.
        larder_core::Engine::new(engine.clone()).map_err(|e| e.to_string())?;
        let proxy_path = or(self.proxy_path, file.proxy_path).unwrap_or_else(|| "/proxy".into());
        if !proxy_path.starts_with('/') {
            return Err(format!("--proxy-path {proxy_path:?} must start with /"));
        }
        let listen = match or(self.listen, file.listen) {
            Some(l) => listen_address(&l)?,
            None => "127.0.0.1:3128".parse().expect("literal"),
        };
        Ok(Settings {
            listen,
            mirrors,
            engine,
            disk_dir,
            self_url,
            peers,
            etcd,
            peer_secret: or(self.peer_secret, file.peer_secret).filter(|s| !s.is_empty()),
            peer_timeout: dur(
                or(self.peer_timeout, file.peer_timeout),
                Duration::from_secs(2),
            )?,
            allow,
            purge_allow,
            allow_destination,
            ca_files: list(self.ca_file, file.ca_file),
            connect_ports: {
                let ports = list(self.connect_port, file.connect_port);
                if ports.is_empty() {
                    vec![443, 80]
                } else {
                    ports
                }
            },
            connect_allow: list(self.connect_allow, file.connect_allow),
            intercept: crate::intercept::Targets {
                all: or(self.intercept, file.intercept).unwrap_or(false),
                hosts: list(self.intercept_host, file.intercept_host)
                    .iter()
                    .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
            },
            data_dir: or(self.data_dir, file.data_dir).unwrap_or_else(default_data_dir),
            connect_timeout: dur(
                or(self.connect_timeout, file.connect_timeout),
                Duration::from_secs(5),
            )?,
            first_byte_timeout: dur(
                or(self.first_byte_timeout, file.first_byte_timeout),
                Duration::from_secs(30),
            )?,
            idle_timeout: dur(
                or(self.idle_timeout, file.idle_timeout),
                Duration::from_secs(30),
            )?,
            proxy_path,
            log_format: or(self.log_format, file.log_format)
                .map(|f| f.parse())
                .transpose()?
                .unwrap_or_default(),
            log_level: or(self.log_level, file.log_level).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn what_a_new_user_types_is_accepted() {
        let s = Args::try_parse_from(["larder", "--listen", "localhost:3999", "--private"])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(s.listen.ip().is_loopback() && s.listen.port() == 3999);
        assert_eq!(s.engine.policy.mode, CacheMode::Private);
        let a = Args::try_parse_from(["larder", "--private", "false", "--intercept"]).unwrap();
        assert_eq!((a.private, a.intercept), (Some(false), Some(true)));
        let s = a.resolve().unwrap();
        assert!(s.intercept.all && s.connect_ports == [443, 80]);
        let a = Args::try_parse_from(["larder", "ca-cert", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(a.command, Some(Command::CaCert));
        assert_eq!(a.resolve().unwrap().data_dir, PathBuf::from("/tmp/x"));
        assert!(
            Args::try_parse_from(["larder", "--listen", "no port"])
                .unwrap()
                .resolve()
                .unwrap_err()
                .contains("--listen")
        );
    }

    #[test]
    fn rules_from_the_file_come_before_presets() {
        let path = std::env::temp_dir().join(format!("larder-rules-{}", std::process::id()));
        std::fs::write(
            &path,
            "preset = [\"npm\"]\n\n[[rule]]\nmatch = '\\.iso$'\ndefault_ttl = \"7d\"\nimmutable = true\n\n[[rule]]\nmatch = '/api/'\ncache = false\n",
        )
        .unwrap();
        let s = Args {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let rules = &s.engine.policy.rules;
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].pattern(), r"\.iso$");
        assert_eq!(rules[0].default_ttl, Some(Duration::from_secs(7 * 86400)));
        assert!(rules[0].immutable && !rules[1].cache);
        assert!(rules[2].matches("https://r.test/x/-/x-1.0.0.tgz"));
        std::fs::write(&path, "[[rule]]\nmatch = '('\n").unwrap();
        let e = Args {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("rule"), "{e}");
        std::fs::remove_file(path).ok();
        let e = Args::try_parse_from(["larder", "--preset", "debian,gentoo"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.contains("gentoo") && e.contains("known"), "{e}");
    }

    /// `packaging/larder.toml` names every key the file takes, and parses to the defaults.
    #[test]
    fn the_sample_config_is_complete_and_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/larder.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let fields = [
            "mirror",
            "rule",
            "preset",
            "listen",
            "passthrough",
            "memory",
            "disk-dir",
            "disk-size",
            "disk-clean-to",
            "max-object-size",
            "min-ttl",
            "private",
            "serve-stale-on-error",
            "targeted-cache-control",
            "ring",
            "segment-size",
            "segment-read-ahead",
            "segment-unvalidated",
            "hot-memory",
            "hot-after",
            "self",
            "peers",
            "peer-secret",
            "peer-timeout",
            "allow",
            "allow-destination",
            "purge-allow",
            "ca-file",
            "connect-port",
            "connect-allow",
            "intercept",
            "intercept-host",
            "data-dir",
            "connect-timeout",
            "first-byte-timeout",
            "idle-timeout",
            "proxy-path",
            "log-format",
            "log-level",
        ];
        for f in fields {
            let named = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ', '[']);
                l.starts_with(&format!("{f} =")) || l.starts_with(&format!("{f}]]"))
            });
            assert!(named, "packaging/larder.toml does not show `{f}`");
        }
        let s = Args {
            config: Some(PathBuf::from(path)),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let d = Settings::default();
        assert_eq!((s.listen, s.engine.memory), (d.listen, d.engine.memory));
        assert_eq!(s.connect_ports, d.connect_ports);
    }

    #[test]
    fn defaults_are_a_single_loopback_node() {
        let s = Settings::default();
        assert_eq!(s.listen.to_string(), "127.0.0.1:3128");
        assert!(s.engine.self_id.is_none() && s.peers.is_empty());
        assert_eq!(s.engine.memory, 256 << 20);
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("larder-cfg-{}", std::process::id()));
        std::fs::write(
            &dir,
            "memory = \"1GiB\"\nring = \"groupcache\"\nmin-ttl = \"60s\"\n",
        )
        .unwrap();
        let s = Args {
            config: Some(dir.clone()),
            memory: Some("2GiB".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.engine.memory, 2 << 30);
        assert_eq!(s.engine.ring, RingKind::Groupcache);
        assert_eq!(s.engine.policy.min_ttl, Duration::from_secs(60));
        std::fs::write(&dir, "memroy = \"1GiB\"\n").unwrap();
        assert!(
            Args {
                config: Some(dir.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .contains("unknown field")
        );
        std::fs::remove_file(dir).ok();
    }

    #[test]
    fn allow_destination_from_file_and_flags() {
        let path = std::env::temp_dir().join(format!("larder-dst-{}", std::process::id()));
        std::fs::write(&path, "allow-destination = [\"127.0.0.0/8\", \"::1\"]\n").unwrap();
        let s = Args {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.allow_destination,
            vec![
                "127.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        std::fs::remove_file(path).ok();
        assert!(
            Args {
                allow_destination: vec!["nonsense".into()],
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .contains("--allow-destination")
        );
        assert!(Settings::default().allow_destination.is_empty());
    }

    #[test]
    fn peers_are_canonical_and_self_is_a_member_only_when_listed() {
        let s = Args {
            self_url: Some("HTTP://127.0.0.1:4001/".into()),
            peers: vec!["http://127.0.0.1:4002".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.peers,
            vec!["http://127.0.0.1:4002"],
            "self not listed: an entry point"
        );
        assert_eq!(s.self_url.as_deref(), Some("http://127.0.0.1:4001"));
        assert!(
            Args {
                peers: vec!["http://a:1".into()],
                ..Default::default()
            }
            .resolve()
            .is_err()
        );
    }
}
