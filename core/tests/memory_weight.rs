//! Issue 8 (4): `--memory` must bound the process, so an entry's weight must be what it
//! really costs on the heap (key, head, policy, indexes), not just its body. A counting
//! allocator measures the live heap the engine holds per stored entry and checks the LRU's
//! weight never under-counts it.

use bytes::Bytes;
use larder_core::{ClientId, Config, Engine, Input, MemoryTier, Output, Route};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the only addition is an atomic counter of live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout as given to us.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Fills `n` distinct URLs of `size` bytes each (a body delivered in one chunk cut from a
/// larger buffer, as hyper does) and returns (live heap growth, stored weight).
fn fill(n: usize, size: usize, extra_request_header: usize, extra_fields: usize) -> (i64, u64) {
    let mut e = Engine::new(Config {
        memory: 1 << 40,
        ..Config::default()
    })
    .unwrap();
    let read_buffer = Bytes::from(vec![b'x'; 64 * 1024 + size]);
    let before = LIVE.load(Ordering::Relaxed);
    let mut tier = MemoryTier::new();
    for i in 0..n {
        let mut req = http::Request::get(format!(
            "http://origin.test/packages/pool/main/some-package_{i}.deb"
        ))
        .header("user-agent", "Debian APT-HTTP/1.3 (2.6.1)")
        .header("accept", "*/*");
        if extra_request_header > 0 {
            req = req.header("x-padding", "p".repeat(extra_request_header));
        }
        let head = req.body(()).unwrap().into_parts().0;
        e.handle_input(
            t0(),
            Input::Request {
                client: ClientId(i as u64),
                head,
                route: Route::Local,
            },
        );
        let mut fetch = None;
        while let Some(o) = e.poll_output() {
            if let Output::Fetch { fetch: f, .. } = o {
                fetch = Some(f);
            }
        }
        let fetch = fetch.expect("a miss fetches");
        let mut res = http::Response::builder();
        for f in 0..extra_fields {
            res = res.header(
                format!("x-origin-field-{f}"),
                format!("value number {f} of the origin"),
            );
        }
        let res = res
            .header("content-type", "application/vnd.debian.binary-package")
            .header("content-length", size)
            .header("cache-control", "public, max-age=86400")
            .header("etag", format!("\"{i:08x}-5f3a2b1c\""))
            .header("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")
            .header("date", "Tue, 14 Nov 2023 22:13:20 GMT")
            .header("accept-ranges", "bytes")
            .header("server", "nginx")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        e.handle_input(t0(), Input::UpstreamHead { fetch, head: res });
        e.handle_input(
            t0(),
            Input::UpstreamBody {
                fetch,
                chunk: read_buffer.slice(i % 1024..i % 1024 + size),
            },
        );
        e.handle_input(t0(), Input::UpstreamEnd { fetch });
        // The memory tier holds the bodies (the adapter's side of the boundary).
        while let Some(o) = e.poll_output() {
            match o {
                Output::Write { entry, body, .. } => tier.insert(entry, body),
                Output::Delete { entry, .. } => drop(tier.remove(entry)),
                _ => {}
            }
        }
    }
    assert_eq!(e.in_flight(), (0, 0));
    assert_eq!(e.stored_entries(), n);
    let grown = (LIVE.load(Ordering::Relaxed) - before) as i64;
    let weight = e.stored_bytes();
    drop(e);
    drop(tier);
    (grown, weight)
}

#[test]
fn weight_covers_the_real_heap_cost_of_an_entry() {
    // Warm up lazily-initialised statics outside the measurement.
    let _ = fill(10, 16, 0, 0);
    for (size, extra, fields) in [
        (1024, 0, 0),
        (16 * 1024, 0, 0),
        (1024, 4096, 0),
        (0, 0, 0),
        (1024, 0, 24),
    ] {
        let n = 4000;
        let (grown, weight) = fill(n, size, extra, fields);
        let real = grown as f64 / n as f64;
        let weighed = weight as f64 / n as f64;
        println!(
            "body {size} B, request padding {extra} B, {fields} extra fields: heap {real:.0} B/entry, weight {weighed:.0} B/entry"
        );
        assert!(
            weighed >= real,
            "weight under-counts: {weighed:.0} < {real:.0} bytes per entry (body {size})"
        );
        assert!(
            weighed <= real * 1.5 + 256.0,
            "weight over-counts badly: {weighed:.0} vs {real:.0} bytes per entry (body {size})"
        );
    }
}
