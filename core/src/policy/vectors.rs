//! The shared policy vectors (`vectors/policy.txt`): parsing and evaluation, so every
//! runtime (native, wasm-bindgen, the Spin component) runs the exact same cases.

use super::Policy;
use http::{HeaderName, HeaderValue, Request, Response};
use std::time::{Duration, SystemTime};

/// The vectors' time origin: every response carries `Date` = t0.
pub const T0_SECS: u64 = 1_700_000_000;

/// One vector line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Names the case in failure messages (and selects HEAD for `head-from-get`).
    pub name: String,
    /// Method of the storing request.
    pub method: String,
    /// Target of both requests.
    pub url: String,
    /// Fields of the storing request.
    pub req: Vec<(String, String)>,
    /// Status of the response.
    pub status: u16,
    /// Fields of the response (`Date` = t0 is added).
    pub res: Vec<(String, String)>,
    /// Expected: `stored`, or the [`NotStored`](super::NotStored) token.
    pub storage: String,
    /// Seconds after t0 that the second request comes.
    pub later: u64,
    /// Fields of the second request.
    pub req_then: Vec<(String, String)>,
    /// Expected [`Reuse::token`](super::Reuse::token) of the second request (`-`: not stored).
    pub reuse: String,
}

fn headers(s: &str) -> Vec<(String, String)> {
    if s == "-" {
        return Vec::new();
    }
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

impl Case {
    /// One `|`-separated line of the vectors file (comments are the caller's to skip).
    pub fn parse(line: &str) -> Result<Case, String> {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 10 {
            return Err(format!("expected 10 fields, found {}", f.len()));
        }
        Ok(Case {
            name: f[0].into(),
            method: f[1].into(),
            url: f[2].into(),
            req: headers(f[3]),
            status: f[4].parse().map_err(|_| "bad status")?,
            res: headers(f[5]),
            storage: f[6].into(),
            later: f[7].parse().map_err(|_| "bad seconds")?,
            req_then: headers(f[8]),
            reuse: f[9].into(),
        })
    }
}

fn build_req(method: &str, url: &str, h: &[(String, String)]) -> http::request::Parts {
    let mut r = Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    for (k, v) in h {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers.append(k, v);
        }
    }
    r
}

/// Evaluates a case with the default (shared) policy: (storage token, reuse token).
pub fn run(c: &Case) -> (String, String) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(T0_SECS);
    let policy = Policy::default();
    let req = build_req(&c.method, &c.url, &c.req);
    let mut res = Response::builder()
        .status(c.status)
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    res.headers.insert(
        http::header::DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(t0)).expect("ascii"),
    );
    for (k, v) in &c.res {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            res.headers.append(k, v);
        }
    }
    match policy.storable(&req, &res, t0) {
        Err(why) => (why.as_str().to_owned(), "-".to_owned()),
        Ok(stored) => {
            let then = build_req(
                if c.name == "head-from-get" {
                    "HEAD"
                } else {
                    "GET"
                },
                &c.url,
                &c.req_then,
            );
            let reuse = policy
                .reuse(&stored, &then, t0 + Duration::from_secs(c.later))
                .token();
            ("stored".to_owned(), reuse.to_owned())
        }
    }
}
