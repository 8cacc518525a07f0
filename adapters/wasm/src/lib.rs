//! Larder's core for JavaScript runtimes (Node, Deno, Workers, service workers).
//!
//! Thin bindings: every decision is `larder-core`'s. Time comes from the caller as
//! milliseconds since the epoch (`Date.now()`), since the core never reads a clock.

use http::{HeaderName, HeaderValue, Request, Response};
use larder_core::lru::{Admission, Eviction};
use larder_core::policy::{Policy, PolicyConfig, Stored};
use larder_core::ring::{PeerSelection, RingKind};
use larder_core::{CacheKey, CacheMode};
use std::time::{Duration, SystemTime};
use wasm_bindgen::prelude::*;

fn at(now_ms: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms.max(0.0) as u64)
}

fn key_of(url: &str) -> Result<CacheKey, JsError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| JsError::new(&format!("bad URL {url:?}: {e}")))?;
    CacheKey::from_uri(&uri).map_err(|e| JsError::new(&e.to_string()))
}

fn ring(kind: &str, peers: &[String]) -> Result<PeerSelection, JsError> {
    let kind: RingKind = kind.parse().map_err(|e: String| JsError::new(&e))?;
    Ok(PeerSelection::new(kind, peers))
}

/// Headers as a flat `[name, value, name, value, ...]` array (what `Headers` entries flatten to).
fn headers(flat: &[String]) -> Result<http::HeaderMap, JsError> {
    if !flat.len().is_multiple_of(2) {
        return Err(JsError::new(
            "headers must be a flat [name, value, ...] array",
        ));
    }
    let mut h = http::HeaderMap::new();
    for pair in flat.chunks(2) {
        let name = HeaderName::from_bytes(pair[0].as_bytes())
            .map_err(|e| JsError::new(&format!("header {:?}: {e}", pair[0])))?;
        let value = HeaderValue::from_str(&pair[1])
            .map_err(|e| JsError::new(&format!("header {:?}: {e}", pair[0])))?;
        h.append(name, value);
    }
    Ok(h)
}

fn request(method: &str, url: &str, flat: &[String]) -> Result<http::request::Parts, JsError> {
    let mut r = Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .map_err(|e| JsError::new(&e.to_string()))?
        .into_parts()
        .0;
    r.headers = headers(flat)?;
    Ok(r)
}

/// The normalized cache key of a URL (what the ring hashes).
#[wasm_bindgen(js_name = cacheKey)]
pub fn cache_key(url: &str) -> Result<String, JsError> {
    Ok(key_of(url)?.to_string())
}

/// The peer that owns `url` (`ring`: "hrw" or "groupcache"); undefined for no peers.
#[wasm_bindgen]
pub fn owner(peers: Vec<String>, url: &str, ring_kind: &str) -> Result<Option<String>, JsError> {
    let key = key_of(url)?;
    Ok(ring(ring_kind, &peers)?
        .owner(key.as_bytes())
        .map(str::to_owned))
}

/// Owner of an already-normalized key (the ring vectors use raw keys).
#[wasm_bindgen(js_name = ownerOfKey)]
pub fn owner_of_key(
    peers: Vec<String>,
    key: &str,
    ring_kind: &str,
) -> Result<Option<String>, JsError> {
    Ok(ring(ring_kind, &peers)?
        .owner(key.as_bytes())
        .map(str::to_owned))
}

/// Every peer for `url`, best first (owner, then fail-over order).
#[wasm_bindgen]
pub fn preference(peers: Vec<String>, url: &str, ring_kind: &str) -> Result<Vec<String>, JsError> {
    let key = key_of(url)?;
    Ok(ring(ring_kind, &peers)?
        .preference(key.as_bytes())
        .into_iter()
        .map(str::to_owned)
        .collect())
}

/// The storability decision for a response, and what it needs to judge reuse later.
#[wasm_bindgen]
pub struct Decision {
    policy: Policy,
    stored: Option<Stored>,
    reason: String,
}

#[wasm_bindgen]
impl Decision {
    /// May the response be stored?
    #[wasm_bindgen(getter)]
    pub fn storable(&self) -> bool {
        self.stored.is_some()
    }

    /// Why not ("" when storable): no-store, private, set-cookie, vary-star, ...
    #[wasm_bindgen(getter)]
    pub fn reason(&self) -> String {
        self.reason.clone()
    }

    /// Seconds of freshness left at `nowMs` (0 when not storable or stale).
    pub fn ttl(&self, now_ms: f64) -> f64 {
        self.stored
            .as_ref()
            .map_or(0.0, |s| s.ttl(at(now_ms)).as_secs_f64())
    }

    /// Current Age in seconds.
    pub fn age(&self, now_ms: f64) -> f64 {
        self.stored
            .as_ref()
            .map_or(0.0, |s| s.age(at(now_ms)).as_secs_f64())
    }

    /// How the stored response may serve a later request: "fresh", "stale",
    /// "stale-while-revalidate", "vary-mismatch", "method", or "not-stored".
    pub fn reuse(
        &self,
        method: &str,
        url: &str,
        request_headers: Vec<String>,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let Some(stored) = &self.stored else {
            return Ok("not-stored".into());
        };
        let req = request(method, url, &request_headers)?;
        Ok(self.policy.reuse(stored, &req, at(now_ms)).token().into())
    }
}

/// Decides whether a response to a request may be stored (shared cache unless `private`).
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)]
pub fn decide(
    method: &str,
    url: &str,
    request_headers: Vec<String>,
    status: u16,
    response_headers: Vec<String>,
    now_ms: f64,
    private: bool,
) -> Result<Decision, JsError> {
    let policy = Policy::new(PolicyConfig {
        mode: if private {
            CacheMode::Private
        } else {
            CacheMode::Shared
        },
        ..PolicyConfig::default()
    });
    let req = request(method, url, &request_headers)?;
    let mut res = Response::builder()
        .status(status)
        .body(())
        .map_err(|e| JsError::new(&e.to_string()))?
        .into_parts()
        .0;
    res.headers = headers(&response_headers)?;
    let (stored, reason) = match policy.storable(&req, &res, at(now_ms)) {
        Ok(s) => (Some(s), String::new()),
        Err(why) => (None, why.as_str().to_owned()),
    };
    Ok(Decision {
        policy,
        stored,
        reason,
    })
}

/// A byte-weighted LRU whose evictions are returned, so JavaScript frees its own storage.
#[wasm_bindgen]
pub struct Lru(larder_core::Lru<String>);

#[wasm_bindgen]
impl Lru {
    #[wasm_bindgen(constructor)]
    pub fn new(capacity: f64, max_item: f64) -> Lru {
        Lru(larder_core::Lru::new(capacity as u64, max_item as u64))
    }

    /// Inserts or re-weighs `key`; returns the keys evicted to make room. Throws when the
    /// item is larger than the largest admitted.
    pub fn admit(&mut self, key: String, weight: f64) -> Result<Vec<String>, JsError> {
        match self.0.admit(key, weight as u64) {
            Admission::Admitted { evicted } => Ok(evicted.into_iter().map(|(k, _)| k).collect()),
            Admission::TooLarge { weight, limit } => Err(JsError::new(&format!(
                "item of {weight} bytes exceeds the limit of {limit}"
            ))),
        }
    }

    /// Marks `key` used; false when absent.
    pub fn touch(&mut self, key: &str) -> bool {
        self.0.touch(&key.to_owned())
    }

    pub fn remove(&mut self, key: &str) -> bool {
        self.0.remove(&key.to_owned()).is_some()
    }

    #[wasm_bindgen(getter)]
    pub fn weight(&self) -> f64 {
        self.0.weight() as f64
    }

    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.0.len()
    }
}
