//! Issue 9, "typed outcome on Respond": the engine itself, driven through each way a request
//! can be served, says how it counts (`Output::Respond::outcome`), and the `Cache-Status`
//! it writes reads back to the same outcome.

use bytes::Bytes;
use http::{Method, StatusCode, request, response};
use larder_core::engine::UpstreamError;
use larder_core::{ClientId, Config, Engine, FetchId, Input, Outcome, Output, Route};
use std::time::{Duration, SystemTime};

const T0: u64 = 1_700_000_000;

struct Harness {
    engine: Engine,
    now: SystemTime,
    next: u64,
}

/// What one request produced.
#[derive(Debug, Default)]
struct Seen {
    /// The response: its status, outcome, `collapsed` and Cache-Status text.
    respond: Option<(StatusCode, Outcome, bool, String)>,
    /// A `Pass` and its typed status.
    pass: Option<larder_core::CacheStatus>,
    fetches: Vec<(FetchId, request::Parts)>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            engine: Engine::new(Config::default()).unwrap(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
            next: 0,
        }
    }

    fn input(&mut self, input: Input) -> Seen {
        self.engine.handle_input(self.now, input);
        let mut seen = Seen::default();
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Respond {
                    head,
                    outcome,
                    collapsed,
                    ..
                } => {
                    let cs = head
                        .headers
                        .get("cache-status")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert!(seen.respond.is_none(), "one response per input here");
                    seen.respond = Some((head.status, outcome, collapsed, cs));
                }
                Output::Pass { status, .. } => seen.pass = Some(status),
                Output::Fetch { fetch, request } => seen.fetches.push((fetch, request)),
                _ => {}
            }
        }
        seen
    }

    fn request(&mut self, method: Method, url: &str, fields: &[(&str, &str)]) -> Seen {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        self.next += 1;
        self.input(Input::Request {
            client: ClientId(self.next),
            head: b.body(()).unwrap().into_parts().0,
            route: Route::Local,
        })
    }

    fn get(&mut self, url: &str) -> Seen {
        self.request(Method::GET, url, &[])
    }

    /// The upstream answers `fetch` with `status`, `fields` and a short body.
    fn answer(&mut self, fetch: FetchId, status: u16, fields: &[(&str, &str)]) -> Seen {
        let mut b = http::Response::builder().status(status);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        let date = httpdate::fmt_http_date(self.now);
        let head: response::Parts = b.header("date", date).body(()).unwrap().into_parts().0;
        let mut seen = self.input(Input::UpstreamHead { fetch, head });
        if status != 304 {
            let more = self.input(Input::UpstreamBody {
                fetch,
                chunk: Bytes::from_static(b"hello"),
            });
            seen.respond = seen.respond.or(more.respond);
            let end = self.input(Input::UpstreamEnd { fetch });
            seen.respond = seen.respond.or(end.respond);
        }
        seen
    }

    fn later(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }
}

/// The response's outcome, checked against its own header read back by the one parser.
fn outcome(seen: &Seen) -> (StatusCode, Outcome) {
    let (status, outcome, _, cs) = seen.respond.as_ref().expect("a response");
    assert_eq!(
        Outcome::from_cache_status(cs, *status),
        *outcome,
        "{cs:?} / {status} reads back"
    );
    (*status, *outcome)
}

fn only_fetch(seen: &Seen) -> FetchId {
    assert_eq!(seen.fetches.len(), 1, "{seen:?}");
    seen.fetches[0].0
}

const CACHEABLE: &[(&str, &str)] = &[
    ("cache-control", "max-age=1"),
    ("etag", "\"v1\""),
    ("content-length", "5"),
];

#[test]
fn miss_then_hit() {
    let mut h = Harness::new();
    let first = h.get("http://o.test/a");
    let done = h.answer(only_fetch(&first), 200, CACHEABLE);
    assert_eq!(outcome(&done), (StatusCode::OK, Outcome::Miss));
    assert_eq!(
        outcome(&h.get("http://o.test/a")),
        (StatusCode::OK, Outcome::Hit)
    );
}

#[test]
fn stale_while_revalidate_is_stale() {
    let mut h = Harness::new();
    let first = h.get("http://o.test/swr");
    let fields = [
        ("cache-control", "max-age=1, stale-while-revalidate=60"),
        ("content-length", "5"),
    ];
    h.answer(only_fetch(&first), 200, &fields);
    h.later(5);
    let stale = h.get("http://o.test/swr");
    let (_, _, _, cs) = stale.respond.as_ref().unwrap();
    assert!(
        cs.contains("; hit") && cs.contains("stale-while-revalidate"),
        "{cs}"
    );
    assert_eq!(outcome(&stale), (StatusCode::OK, Outcome::Stale));
    assert_eq!(stale.fetches.len(), 1, "revalidated in the background");
}

#[test]
fn stale_if_error_is_stale() {
    let mut h = Harness::new();
    let first = h.get("http://o.test/sie");
    let fields = [
        ("cache-control", "max-age=1, stale-if-error=60"),
        ("etag", "\"v1\""),
        ("content-length", "5"),
    ];
    h.answer(only_fetch(&first), 200, &fields);
    h.later(5);
    let again = h.get("http://o.test/sie");
    assert!(again.respond.is_none());
    let failed = h.input(Input::UpstreamError {
        fetch: only_fetch(&again),
        error: UpstreamError::Connect,
    });
    let (_, _, _, cs) = failed.respond.as_ref().unwrap();
    assert!(cs.contains("; hit") && cs.contains("fwd=stale"), "{cs}");
    assert_eq!(outcome(&failed), (StatusCode::OK, Outcome::Stale));
}

#[test]
fn not_modified_is_revalidated() {
    let mut h = Harness::new();
    let first = h.get("http://o.test/r");
    h.answer(only_fetch(&first), 200, CACHEABLE);
    h.later(5);
    let again = h.get("http://o.test/r");
    let (fid, sent) = &again.fetches[0];
    assert!(sent.headers.contains_key("if-none-match"), "{sent:?}");
    let done = h.answer(
        *fid,
        304,
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
    );
    assert_eq!(outcome(&done), (StatusCode::OK, Outcome::Revalidated));
    // And a changed object on revalidation is a miss.
    h.later(120);
    let third = h.get("http://o.test/r");
    let done = h.answer(only_fetch(&third), 200, CACHEABLE);
    assert_eq!(outcome(&done), (StatusCode::OK, Outcome::Miss));
}

#[test]
fn upstream_failures_are_errors_origin_errors_are_misses() {
    let mut h = Harness::new();
    for (error, code) in [
        (UpstreamError::Connect, StatusCode::BAD_GATEWAY),
        (UpstreamError::Timeout, StatusCode::GATEWAY_TIMEOUT),
    ] {
        let r = h.get("http://o.test/down");
        let failed = h.input(Input::UpstreamError {
            fetch: only_fetch(&r),
            error,
        });
        assert_eq!(outcome(&failed), (code, Outcome::Error), "{error:?}");
    }
    // The origin's own 502 and 504, relayed as they came: the cache worked.
    for code in [502, 504] {
        let r = h.get(&format!("http://o.test/{code}"));
        let done = h.answer(only_fetch(&r), code, &[("content-length", "5")]);
        assert_eq!(outcome(&done).1, Outcome::Miss, "{code}");
    }
}

#[test]
fn only_if_cached_and_bad_targets_are_errors() {
    let mut h = Harness::new();
    let r = h.request(
        Method::GET,
        "http://o.test/none",
        &[("cache-control", "only-if-cached")],
    );
    assert_eq!(outcome(&r), (StatusCode::GATEWAY_TIMEOUT, Outcome::Error));
    let r = h.get("ftp://o.test/x");
    assert_eq!(outcome(&r), (StatusCode::BAD_REQUEST, Outcome::Error));
}

#[test]
fn passes_count_as_pass() {
    let mut h = Harness::new();
    let r = h.request(Method::POST, "http://o.test/form", &[]);
    let mut status = r.pass.expect("a pass");
    // What the adapter does before counting: the upstream's status is recorded.
    status.fwd_status = Some(404);
    assert_eq!(status.outcome(StatusCode::NOT_FOUND), Outcome::Pass);
    // A pass the proxy could not complete is its own error.
    status.fwd_status = None;
    assert_eq!(status.outcome(StatusCode::BAD_GATEWAY), Outcome::Error);
}

#[test]
fn collapsed_followers_say_so() {
    let mut h = Harness::new();
    let leader = h.get("http://o.test/c");
    let follower = h.get("http://o.test/c");
    assert!(follower.fetches.is_empty() && follower.respond.is_none());
    let fid = only_fetch(&leader);
    let date = httpdate::fmt_http_date(h.now);
    let head = http::Response::builder()
        .header("cache-control", "max-age=60")
        .header("content-length", "5")
        .header("date", date)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    h.engine
        .handle_input(h.now, Input::UpstreamHead { fetch: fid, head });
    let mut collapsed = Vec::new();
    while let Some(out) = h.engine.poll_output() {
        if let Output::Respond {
            outcome,
            collapsed: c,
            ..
        } = out
        {
            collapsed.push((outcome, c));
        }
    }
    collapsed.sort_by_key(|(_, c)| *c);
    assert_eq!(
        collapsed,
        [(Outcome::Miss, false), (Outcome::Miss, true)],
        "the leader, then its follower"
    );
}
