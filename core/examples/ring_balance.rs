//! Prints load balance and key movement of both placement schemes over 1M keys:
//! `cargo run --release -p larder-core --example ring_balance`.

use larder_core::ring::{PeerSelection, RingKind};

fn main() {
    let keys: Vec<String> = (0..1_000_000u32)
        .map(|i| format!("http://example.test/objects/{i:07}.bin"))
        .collect();
    println!(
        "{:<11} {:>4} {:>9} {:>10} {:>10}",
        "scheme", "N", "max/mean", "moved-rm", "moved-add"
    );
    for kind in [RingKind::Rendezvous, RingKind::Groupcache] {
        for n in [3usize, 10, 100] {
            let peers: Vec<String> = (0..n)
                .map(|i| format!("http://10.0.{}.{}:3128", i / 250, i % 250))
                .collect();
            let sel = PeerSelection::new(kind, &peers);
            let mut counts = std::collections::HashMap::new();
            let owners: Vec<&str> = keys
                .iter()
                .map(|k| sel.owner(k.as_bytes()).unwrap())
                .collect();
            for o in &owners {
                *counts.entry(*o).or_insert(0u64) += 1;
            }
            let max = *counts.values().max().unwrap() as f64;
            let mean = keys.len() as f64 / n as f64;
            let mut fewer = peers.clone();
            fewer.remove(n / 2);
            let rm = PeerSelection::new(kind, &fewer);
            let mut more = peers.clone();
            more.push("http://10.9.9.9:3128".into());
            let add = PeerSelection::new(kind, &more);
            let moved = |s: &PeerSelection| {
                keys.iter()
                    .zip(&owners)
                    .filter(|(k, o)| s.owner(k.as_bytes()).unwrap() != **o)
                    .count() as f64
                    / keys.len() as f64
            };
            println!(
                "{:<11} {:>4} {:>9.3} {:>10.4} {:>10.4}",
                format!("{kind:?}"),
                n,
                max / mean,
                moved(&rm),
                moved(&add)
            );
        }
    }
}
