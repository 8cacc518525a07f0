//! Replays a cache trace against both eviction policies at several byte capacities and
//! prints object and byte hit ratios:
//!
//! ```text
//! python3 bench/trace/gen.py --alpha 0.8 -o /tmp/zipf-0.8.trace
//! cargo run --release -p larder-core --example hit_ratio -- /tmp/zipf-0.8.trace -p 0.1,1,10
//! ```
//!
//! The trace is one request a line, `key size` (bytes; further columns and `#` lines are
//! ignored), from a file or `-` for stdin. Capacities are percentages of the working set (the
//! summed sizes of the distinct keys).
//!
//! The queues are driven the way Larder's store drives them: a request for a held object is
//! a hit and `touch`es it; any other is a miss that admits the object under a *fresh* id
//! (every stored entry gets a new `EntryId`) with the object's hash as the hint. Objects
//! larger than an eighth of the capacity are never admitted (the store keeps a body in
//! memory only then). Weights are body bytes (the store adds about 1 KiB of metadata each).

use larder_core::lru::{Admission, Eviction};
use larder_core::{EvictionPolicy, Evictor};
use std::io::Read;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

struct Trace {
    /// Object index per request.
    requests: Vec<u32>,
    /// Size per object (the first one seen).
    sizes: Vec<u64>,
    /// Hint per object: xxh3 of its key, as the store hashes a `CacheKey`.
    hints: Vec<u64>,
}

impl Trace {
    fn parse(text: &str) -> Result<Trace, String> {
        let mut index = hashbrown::HashMap::<&str, u32>::new();
        let mut t = Trace {
            requests: Vec::new(),
            sizes: Vec::new(),
            hints: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let mut cols = line.split_ascii_whitespace();
            let Some(key) = cols.next().filter(|k| !k.starts_with('#')) else {
                continue;
            };
            let size: u64 = cols
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("line {}: expected `key size`", n + 1))?;
            let next = t.sizes.len() as u32;
            let obj = *index.entry(key).or_insert_with(|| {
                t.sizes.push(size);
                t.hints.push(xxh3_64(key.as_bytes()));
                next
            });
            t.requests.push(obj);
        }
        Ok(t)
    }

    fn working_set(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

#[derive(Clone, Copy)]
struct Ratios {
    objects: f64,
    bytes: f64,
    /// Nanoseconds of queue work per request (the whole replay loop).
    ns: f64,
}

const NONE: u64 = u64::MAX;

fn simulate(trace: &Trace, policy: EvictionPolicy, capacity: u64) -> Ratios {
    let start = Instant::now();
    let mut q = Evictor::new(policy, capacity, capacity / 8);
    // The id an object is held under, and the object each id was given to.
    let mut held = vec![NONE; trace.sizes.len()];
    let mut owner: Vec<u32> = Vec::new();
    let (mut hits, mut hit_bytes, mut bytes) = (0u64, 0u64, 0u64);
    for &obj in &trace.requests {
        let size = trace.sizes[obj as usize];
        bytes += size;
        let id = held[obj as usize];
        if id != NONE && q.touch(&id) {
            hits += 1;
            hit_bytes += size;
            continue;
        }
        let id = owner.len() as u64;
        owner.push(obj);
        if let Admission::Admitted { evicted } = q.admit_hinted(id, size, trace.hints[obj as usize])
        {
            held[obj as usize] = id;
            for (e, _) in evicted {
                held[owner[e as usize] as usize] = NONE;
            }
        }
    }
    let n = trace.requests.len().max(1) as f64;
    Ratios {
        objects: hits as f64 / n,
        bytes: hit_bytes as f64 / bytes.max(1) as f64,
        ns: start.elapsed().as_nanos() as f64 / n,
    }
}

fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut path = None;
    let mut percents = vec![0.1, 1.0, 10.0];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--percent" | "-p" => {
                let list = args.next().ok_or("--percent needs a list, e.g. 0.1,1,10")?;
                percents = list
                    .split(',')
                    .map(|p| p.trim().parse::<f64>())
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!("usage: hit_ratio [TRACE|-] [--percent 0.1,1,10]");
                return Ok(());
            }
            _ if path.is_none() => path = Some(a),
            _ => return Err(format!("unexpected argument {a:?}").into()),
        }
    }
    let t0 = Instant::now();
    let mut text = String::new();
    match path.as_deref() {
        None | Some("-") => {
            std::io::stdin().read_to_string(&mut text)?;
        }
        Some(p) => text = std::fs::read_to_string(p)?,
    }
    let trace = Trace::parse(&text)?;
    drop(text);
    let ws = trace.working_set();
    let requested: u64 = trace
        .requests
        .iter()
        .map(|&o| trace.sizes[o as usize])
        .sum();
    println!(
        "{}: {} requests, {} objects, working set {}, requested {} (parsed in {:.1?})",
        path.as_deref().unwrap_or("-"),
        trace.requests.len(),
        trace.sizes.len(),
        human(ws),
        human(requested),
        t0.elapsed()
    );
    println!(
        "{:>8} {:>11} | {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} | {:>6} {:>6}",
        "capacity",
        "bytes",
        "lru obj",
        "lru byte",
        "s3f obj",
        "s3f byte",
        "d obj",
        "d byte",
        "lru ns",
        "s3f ns"
    );
    for pct in percents {
        let capacity = (ws as f64 * pct / 100.0) as u64;
        let lru = simulate(&trace, EvictionPolicy::Lru, capacity);
        let s3 = simulate(&trace, EvictionPolicy::S3Fifo, capacity);
        println!(
            "{:>7}% {:>11} | {:>9.4} {:>9.4} | {:>9.4} {:>9.4} | {:>+8.4} {:>+8.4} | {:>6.0} {:>6.0}",
            pct,
            human(capacity),
            lru.objects,
            lru.bytes,
            s3.objects,
            s3.bytes,
            s3.objects - lru.objects,
            s3.bytes - lru.bytes,
            lru.ns,
            s3.ns
        );
    }
    println!("(d: s3fifo minus lru; ns: per request, replay loop included)");
    Ok(())
}
