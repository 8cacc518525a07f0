//! `cargo bench -p larder-peer --bench access_log`: formatting one access-log line, the
//! per-request cost of the default log (combined) and of json.

use criterion::{Criterion, criterion_group, criterion_main};
use larder_peer::access::{Entry, Format, Url};
use std::hint::black_box;
use std::time::{Duration, SystemTime};

fn line(c: &mut Criterion) {
    let uri: http::Uri = "http://origin.test/pool/main/l/larder/larder_1.0_amd64.deb"
        .parse()
        .unwrap();
    let entry = |t: SystemTime| Entry {
        time: t,
        client: "10.1.2.3:5555".parse().unwrap(),
        method: "GET",
        url: Url::of(None, &uri),
        version: http::Version::HTTP_11,
        status: 200,
        bytes: 1024,
        referer: None,
        user_agent: Some("Debian APT-HTTP/1.3 (2.6.1)"),
        cache: "larder; hit; ttl=3599",
        duration: Duration::from_micros(180),
        complete: true,
    };
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let mut out = String::with_capacity(512);
    for (name, format) in [("combined", Format::Combined), ("json", Format::Json)] {
        c.bench_function(&format!("access_line_{name}"), |b| {
            b.iter(|| {
                out.clear();
                entry(black_box(t0)).render_into(format, &mut out);
                out.len()
            })
        });
    }
}

criterion_group!(benches, line);
criterion_main!(benches);
