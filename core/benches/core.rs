//! `cargo bench -p larder-core`: the costs on the hot paths.

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use http::{Request, Response};
use larder_core::lru::{Eviction, Lru};
use larder_core::ring::{PeerSelection, RingKind};
use larder_core::s3fifo::S3Fifo;
use larder_core::{ClientId, Config, Engine, Input, Output, Policy, Route};
use std::time::{Duration, SystemTime};

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_owner");
    for n in [3usize, 10, 100] {
        let peers: Vec<String> = (0..n)
            .map(|i| format!("http://10.0.{}.{}:3128", i / 250, i % 250))
            .collect();
        for kind in [RingKind::Rendezvous, RingKind::Groupcache] {
            let sel = PeerSelection::new(kind, &peers);
            let key = b"http://example.test/some/object/path.tar.gz?v=12345";
            g.bench_with_input(BenchmarkId::new(format!("{kind:?}"), n), &n, |b, _| {
                b.iter(|| sel.owner(black_box(key)))
            });
        }
    }
    g.finish();
}

fn lru(c: &mut Criterion) {
    let n = 1_000_000u64;
    let mut l = Lru::new(n * 100, 1000);
    for i in 0..n {
        l.admit(i, 100);
    }
    let mut i = 0u64;
    c.bench_function("lru_touch_1M", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            l.touch(black_box(&i))
        })
    });
    let mut j = n;
    c.bench_function("lru_admit_evict_1M", |b| {
        b.iter(|| {
            j += 1;
            l.admit(black_box(j), 100)
        })
    });
}

/// The same operations as `lru`, on S3-FIFO. `admit` hashes the key for its ghost hint.
fn s3fifo(c: &mut Criterion) {
    let n = 1_000_000u64;
    let mut s = S3Fifo::new(n * 100, 1000);
    for i in 0..n {
        s.admit(i, 100);
    }
    let mut i = 0u64;
    c.bench_function("s3fifo_touch_1M", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            s.touch(black_box(&i))
        })
    });
    let mut j = n;
    c.bench_function("s3fifo_admit_evict_1M", |b| {
        b.iter(|| {
            j += 1;
            s.admit(black_box(j), 100)
        })
    });
}

fn policy(c: &mut Criterion) {
    let p = Policy::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let req = Request::get("http://example.test/a")
        .header("accept", "*/*")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let res = Response::builder()
        .header("date", httpdate::fmt_http_date(t0))
        .header("cache-control", "public, max-age=600")
        .header("etag", "\"abc\"")
        .header("content-type", "text/html")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    c.bench_function("policy_storable", |b| {
        b.iter(|| p.storable(black_box(&req), black_box(&res), t0).is_ok())
    });
    let stored = p.storable(&req, &res, t0).unwrap();
    c.bench_function("policy_reuse", |b| {
        b.iter(|| {
            p.reuse(
                black_box(&stored),
                black_box(&req),
                t0 + Duration::from_secs(5),
            )
        })
    });
}

fn engine_hit(c: &mut Criterion) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut e = Engine::new(Config::default()).unwrap();
    let req = || {
        Request::get("http://example.test/hit")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    e.handle_input(
        t0,
        Input::Request {
            client: ClientId(0),
            head: req(),
            route: Route::ByRing,
        },
    );
    let Some(Output::Fetch { fetch, .. }) = e.poll_output() else {
        panic!("expected a fetch")
    };
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
            chunk: bytes::Bytes::from(vec![b'x'; 1024]),
        },
    );
    e.handle_input(t0, Input::UpstreamEnd { fetch });
    while e.poll_output().is_some() {}
    let mut id = 1;
    c.bench_function("engine_hit_1KiB", |b| {
        b.iter(|| {
            id += 1;
            e.handle_input(
                t0,
                Input::Request {
                    client: ClientId(id),
                    head: req(),
                    route: Route::ByRing,
                },
            );
            let out = e.poll_output();
            assert!(matches!(out, Some(Output::Respond { .. })));
            out
        })
    });
}

criterion_group!(benches, ring, lru, s3fifo, policy, engine_hit);
criterion_main!(benches);
