//! Findings in code this harness does not own, each with its minimal input.
//!
//! A target tolerates a failure of a finding's class only while that finding's minimal
//! input still reproduces on the tree under test: once the code is fixed, `present` turns
//! false and the same target fails on any recurrence. Nothing here needs editing when a
//! finding is fixed; `known_findings` (in fuzz.rs) reports which still reproduce, and
//! fails under `LARDER_FUZZ_STRICT=1` while any does.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

pub struct Known {
    pub id: &'static str,
    pub summary: &'static str,
    /// True when the minimal input still misbehaves (a panic counts).
    repro: fn() -> bool,
    cell: OnceLock<bool>,
}

impl Known {
    const fn new(id: &'static str, summary: &'static str, repro: fn() -> bool) -> Self {
        Known {
            id,
            summary,
            repro,
            cell: OnceLock::new(),
        }
    }
}

/// Whether the finding's minimal input still reproduces (computed once per process).
pub fn present(k: &Known) -> bool {
    *k.cell
        .get_or_init(|| catch_unwind(AssertUnwindSafe(k.repro)).unwrap_or(true))
}

/// A failure of `k`'s class is tolerated only while `k` still reproduces.
pub fn tolerated(k: &Known) -> bool {
    present(k)
}

/// Runs `f`, turning a panic into its message.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())
    })
}

// ---- the findings -----------------------------------------------------------------------

/// Issue 8 (9): `http://h:99999/` has the key of `http://h/` (port silently dropped).
pub static KEY_BAD_PORT: Known = Known::new(
    "F-key-port",
    "CacheKey::from_uri(\"http://h:99999/\") == \"http://h/\" (core/src/key.rs)",
    || {
        let uri: http::Uri = "http://h:99999/".parse().expect("http accepts it");
        larder_core::CacheKey::from_uri(&uri).is_ok()
    },
);

/// Issue 8 (10): mirror `OPTIONS *` with `--mirror http://mirror.test:8080` resolves to a
/// URI whose authority is `mirror.test:8080*` (port lost: port 80).
pub static MIRROR_ASTERISK: Known = Known::new(
    "F-door-asterisk",
    "door::resolve(OPTIONS *, mirror http://mirror.test:8080) leaves port 8080 (core/src/door.rs)",
    || {
        let parts = http::Request::builder()
            .method("OPTIONS")
            .uri("*")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        let m: http::Uri = "http://mirror.test:8080".parse().expect("valid");
        match larder_core::door::resolve(&parts, Some(&m), "/proxy") {
            Ok((u, _)) => u.port_u16() != Some(8080) || u.host() != Some("mirror.test"),
            Err(_) => false,
        }
    },
);

/// An upstream `Content-Length` that is not one valid number (`18446744073709551616`, or two
/// different values) is relayed to the client as is, and the stream is ended after however
/// many bytes came: the client sees a complete response whose length contradicts its head.
pub static ENGINE_BAD_CONTENT_LENGTH: Known = Known::new(
    "F-engine-bad-content-length",
    "200 with Content-Length: 18446744073709551616 and an empty body is relayed and Ended (core/src/engine/mod.rs on_head/on_end)",
    || {
        use larder_core::{ClientId, Config, Engine, Input, Output, Route};
        let mut e = Engine::new(Config::default()).expect("default config");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let head = http::Request::get("http://origin.test/a")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        e.handle_input(
            now,
            Input::Request {
                client: ClientId(0),
                head,
                route: Route::ByRing,
            },
        );
        let mut fetch = None;
        while let Some(o) = e.poll_output() {
            if let Output::Fetch { fetch: f, .. } = o {
                fetch = Some(f);
            }
        }
        let Some(fetch) = fetch else { return false };
        let res = http::Response::builder()
            .status(200)
            .header("content-length", "18446744073709551616")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        e.handle_input(now, Input::UpstreamHead { fetch, head: res });
        e.handle_input(now, Input::UpstreamEnd { fetch });
        let mut outs = Vec::new();
        while let Some(o) = e.poll_output() {
            outs.push(o);
        }
        let relayed = outs.iter().any(|o| {
            matches!(o, Output::Respond { head, .. }
            if head.headers.get("content-length").is_some_and(|v| v == "18446744073709551616"))
        });
        let ended = outs.iter().any(|o| matches!(o, Output::End { .. }));
        relayed && ended
    },
);

/// An empty host is accepted: `http://:80/` gets the key `http:///`, which is not a URI
/// (normalising it again fails), and `http://u@:1/` the key `http://:1/`.
pub static KEY_EMPTY_HOST: Known = Known::new(
    "F-key-empty-host",
    "CacheKey::from_uri(\"http://:80/\") == Ok(\"http:///\") (core/src/key.rs)",
    || {
        let uri: http::Uri = "http://:80/".parse().expect("http accepts it");
        larder_core::CacheKey::from_uri(&uri).is_ok()
    },
);

/// After the adapter reports `UpstreamError` for a revalidation whose entry may be served
/// stale (`stale-if-error`), the engine answers with `CancelFetch` for that same, already
/// finished fetch (`serve_stale_on_error` drops it with `cancel = true`).
pub static ENGINE_CANCEL_AFTER_ERROR: Known = Known::new(
    "F-engine-cancel-after-error",
    "CancelFetch for a fetch the adapter just reported failed (core/src/engine/mod.rs serve_stale_on_error)",
    || {
        use larder_core::{ClientId, Config, Engine, Input, Output, Route};
        let mut e = Engine::new(Config::default()).expect("default config");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let get = || {
            http::Request::get("http://origin.test/a")
                .body(())
                .expect("valid")
                .into_parts()
                .0
        };
        let mut fetches = Vec::new();
        let drain = |e: &mut Engine, fetches: &mut Vec<_>, cancels: &mut Vec<_>| {
            while let Some(o) = e.poll_output() {
                match o {
                    Output::Fetch { fetch, .. } => fetches.push(fetch),
                    Output::CancelFetch { fetch } => cancels.push(fetch),
                    _ => {}
                }
            }
        };
        let mut cancels = Vec::new();
        e.handle_input(
            t,
            Input::Request {
                client: ClientId(0),
                head: get(),
                route: Route::ByRing,
            },
        );
        drain(&mut e, &mut fetches, &mut cancels);
        let Some(&f0) = fetches.first() else {
            return false;
        };
        let res = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=1, stale-if-error=100")
            .header("content-length", "0")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        e.handle_input(
            t,
            Input::UpstreamHead {
                fetch: f0,
                head: res,
            },
        );
        e.handle_input(t, Input::UpstreamEnd { fetch: f0 });
        drain(&mut e, &mut fetches, &mut cancels);
        let t = t + std::time::Duration::from_secs(2);
        e.handle_input(
            t,
            Input::Request {
                client: ClientId(1),
                head: get(),
                route: Route::ByRing,
            },
        );
        drain(&mut e, &mut fetches, &mut cancels);
        let Some(&f1) = fetches.get(1) else {
            return false;
        };
        e.handle_input(
            t,
            Input::UpstreamError {
                fetch: f1,
                error: larder_core::engine::UpstreamError::Truncated,
            },
        );
        drain(&mut e, &mut fetches, &mut cancels);
        cancels.contains(&f1)
    },
);

/// A whole entry stored from an answer without Content-Length (chunked) gets its length
/// added at store time, but a 304 revalidation replaces the head with the policy's merge of
/// the original answer and the 304: the refreshed entry is served without Content-Length.
pub static ENGINE_304_DROPS_LENGTH: Known = Known::new(
    "F-engine-304-drops-length",
    "after a 304, a chunked-origin entry is served with no Content-Length (core/src/engine/mod.rs on_head Revalidate: entry.head = merged)",
    || {
        use larder_core::{ClientId, Config, Engine, Input, Output, ResponseBody, Route};
        fn outs(e: &mut Engine) -> Vec<Output> {
            std::iter::from_fn(|| e.poll_output()).collect()
        }
        fn fetch(o: &[Output]) -> Option<larder_core::FetchId> {
            o.iter().find_map(|o| match o {
                Output::Fetch { fetch, .. } => Some(*fetch),
                _ => None,
            })
        }
        let get = || {
            http::Request::get("http://origin.test/a")
                .body(())
                .expect("valid")
                .into_parts()
                .0
        };
        let res = |status: u16, cc: &str| {
            http::Response::builder()
                .status(status)
                .header("etag", "\"v1\"")
                .header("cache-control", cc)
                .body(())
                .expect("valid")
                .into_parts()
                .0
        };
        let mut e = Engine::new(Config::default()).expect("default config");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        e.handle_input(
            t,
            Input::Request {
                client: ClientId(0),
                head: get(),
                route: Route::ByRing,
            },
        );
        let Some(f0) = fetch(&outs(&mut e)) else {
            return false;
        };
        e.handle_input(
            t,
            Input::UpstreamHead {
                fetch: f0,
                head: res(200, "max-age=1"),
            },
        );
        e.handle_input(
            t,
            Input::UpstreamBody {
                fetch: f0,
                chunk: bytes::Bytes::from_static(b"hello"),
            },
        );
        e.handle_input(t, Input::UpstreamEnd { fetch: f0 });
        outs(&mut e);
        let t = t + std::time::Duration::from_secs(5);
        e.handle_input(
            t,
            Input::Request {
                client: ClientId(1),
                head: get(),
                route: Route::ByRing,
            },
        );
        let Some(f1) = fetch(&outs(&mut e)) else {
            return false;
        };
        e.handle_input(
            t,
            Input::UpstreamHead {
                fetch: f1,
                head: res(304, "max-age=100"),
            },
        );
        outs(&mut e).iter().any(|o| {
            matches!(o, Output::Respond { head, body: ResponseBody::Full(b), .. }
            if !b.is_empty() && !head.headers.contains_key("content-length"))
        })
    },
);

/// `Range: bytes=N-` on an object not yet known is planned as the one segment holding N;
/// the client's 206 head says `N-(total-1)` (Content-Length total-N), and when that one
/// segment ends the client gets `End`: a truncated body delivered as complete. With the
/// default 2 MiB segments this is any `bytes=N-` on an uncached object over 2 MiB.
pub static ENGINE_OPEN_RANGE_TRUNCATED: Known = Known::new(
    "F-engine-open-range-truncated",
    "segment size 4, `bytes=1-` of a 10-byte object: 206 Content-Length 9, 3 bytes, End (core/src/engine/mod.rs try_segment + on_end)",
    || {
        use larder_core::{ClientId, Config, Engine, Input, Output, Route};
        let mut e = Engine::new(Config {
            segment_size: Some(4),
            ..Config::default()
        })
        .expect("valid config");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let head = http::Request::get("http://origin.test/a")
            .header("range", "bytes=1-")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        e.handle_input(
            t,
            Input::Request {
                client: ClientId(0),
                head,
                route: Route::ByRing,
            },
        );
        let outs: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
        let Some(fetch) = outs.iter().find_map(|o| match o {
            Output::Fetch { fetch, .. } => Some(*fetch),
            _ => None,
        }) else {
            return false;
        };
        let res = http::Response::builder()
            .status(206)
            .header("content-range", "bytes 0-3/10")
            .header("content-length", "4")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        e.handle_input(t, Input::UpstreamHead { fetch, head: res });
        e.handle_input(
            t,
            Input::UpstreamBody {
                fetch,
                chunk: bytes::Bytes::from_static(b"abcd"),
            },
        );
        e.handle_input(t, Input::UpstreamEnd { fetch });
        let (mut declared, mut got, mut ended) = (None, 0usize, false);
        while let Some(o) = e.poll_output() {
            match o {
                Output::Respond { head, .. } => {
                    declared = head
                        .headers
                        .get("content-length")
                        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                }
                Output::Body { chunk, .. } => got += chunk.len(),
                Output::End { .. } => ended = true,
                _ => {}
            }
        }
        ended && declared.is_some_and(|d| d != got)
    },
);

pub static ALL: [&Known; 7] = [
    &ENGINE_OPEN_RANGE_TRUNCATED,
    &ENGINE_304_DROPS_LENGTH,
    &ENGINE_CANCEL_AFTER_ERROR,
    &KEY_BAD_PORT,
    &KEY_EMPTY_HOST,
    &MIRROR_ASTERISK,
    &ENGINE_BAD_CONTENT_LENGTH,
];
