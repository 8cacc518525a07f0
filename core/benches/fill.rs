//! `cargo bench -p larder-core --bench fill`: what a miss costs the engine, and what each
//! follower of a coalesced fill adds (one fetch, N clients answered from it).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use larder_core::{ClientId, Config, Engine, Input, Output, Route};
use std::time::{Duration, SystemTime};

/// One fill of a fresh URL with `clients` asking for it at once: the first leads, the rest
/// follow; the origin answers 1 KiB; every client is answered and then leaves.
fn fill(e: &mut Engine, t0: SystemTime, url: &str, first: u64, clients: u64) -> usize {
    for c in 0..clients {
        let head = Request::get(url).body(()).unwrap().into_parts().0;
        e.handle_input(
            t0,
            Input::Request {
                client: ClientId(first + c),
                head,
                route: Route::ByRing,
            },
        );
    }
    let mut fetch = None;
    let mut outputs = 0;
    while let Some(out) = e.poll_output() {
        outputs += 1;
        if let Output::Fetch { fetch: f, .. } = out {
            fetch = Some(f);
        }
    }
    let fetch = fetch.expect("the first request fetches");
    let head = Response::builder()
        .header("date", httpdate::fmt_http_date(t0))
        .header("cache-control", "max-age=600")
        .header("content-length", "1024")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    e.handle_input(t0, Input::UpstreamHead { fetch, head });
    e.handle_input(
        t0,
        Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::from_static(&[b'x'; 1024]),
        },
    );
    e.handle_input(t0, Input::UpstreamEnd { fetch });
    for c in 0..clients {
        e.handle_input(
            t0,
            Input::ClientGone {
                client: ClientId(first + c),
            },
        );
    }
    while e.poll_output().is_some() {
        outputs += 1;
    }
    outputs
}

fn coalesced_fill(c: &mut Criterion) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut g = c.benchmark_group("coalesced_fill_1KiB");
    for clients in [1u64, 10, 100] {
        let mut e = Engine::new(Config::default()).unwrap();
        let mut n = 0u64;
        // Per client: with one client it is the cost of a plain miss.
        g.throughput(Throughput::Elements(clients));
        g.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, &k| {
            b.iter(|| {
                n += 1;
                let url = format!("http://example.test/miss/{n}");
                fill(&mut e, t0, &url, n * 1000, k)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, coalesced_fill);
criterion_main!(benches);
