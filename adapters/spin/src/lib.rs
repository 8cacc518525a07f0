//! Larder at the edge: a Spin HTTP component. It is a Larder node like the native peers
//! (same doors, cache key, `Cache-Status`, hop marker and owner selection, all from
//! `larder-core`), with its L1 in the Spin key-value store and `now` from the WASI clock.
//!
//! Variables: `upstream` (mirror door: the upstream's origin, `scheme://host[:port]`),
//! `upstream_path` (the mirror's base path on it, e.g. `/debian`), `peers` (comma-separated
//! owner candidates), `peer_secret` (signs peer requests). A miss goes to the owner peer,
//! then the next choice, then the origin; no peers means the origin directly.

pub mod entry;

use bytes::Bytes;
use entry::Entry;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request, response};
use http_body_util::{BodyExt, Full};
use larder_core::cache_status::{CacheStatus, Fwd};
use larder_core::door::{self, Refused};
use larder_core::heads::{clone_request, clone_response};
use larder_core::policy::{self, Policy, Reuse, Revalidated, conditional};
use larder_core::ring::{PeerSelection, RingKind};
use larder_core::{CacheKey, hop};
use std::time::{Duration, SystemTime};

/// Larger bodies are streamed through uncached (a KV value is not the place for them).
pub const MAX_ENTRY: usize = 1 << 20;
const VIA: &str = "1.1 larder-edge";

type Resp = http::Response<Full<Bytes>>;

fn text(code: StatusCode, status: Option<CacheStatus>, msg: &str) -> Resp {
    let mut r = http::Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::VIA, VIA);
    if let Some(s) = status {
        r = r.header("cache-status", s.to_header_value());
    }
    r.body(Full::new(Bytes::from(format!("{msg}\n"))))
        .expect("valid response")
}

/// Settings from Spin variables (all optional).
struct Vars {
    upstream: Option<http::Uri>,
    peers: Vec<String>,
    secret: Option<String>,
}

async fn var(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The mirror base: `upstream` (an origin; spin.toml also puts it in
/// `allowed_outbound_hosts`, where Spin refuses a path) followed by `upstream_path`.
fn upstream_url(origin: Option<String>, path: Option<String>) -> Option<http::Uri> {
    let origin = origin?;
    let path = path.unwrap_or_default();
    let path = path.trim_matches('/');
    let joined = if path.is_empty() {
        origin.trim_end_matches('/').to_owned()
    } else {
        format!("{}/{path}", origin.trim_end_matches('/'))
    };
    joined.parse().ok()
}

async fn vars() -> Vars {
    Vars {
        upstream: upstream_url(var("upstream").await, var("upstream_path").await),
        peers: var("peers")
            .await
            .map(|p| {
                p.split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        secret: var("peer_secret").await,
    }
}

fn to_head(r: &spin_sdk::http::Response) -> response::Parts {
    let mut head = http::Response::builder()
        .status(r.status())
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    head.headers = r.headers().clone();
    policy::strip_hop_by_hop(&mut head.headers);
    head
}

/// Sends a request upstream and reads the whole answer (bounded by `limit`).
async fn fetch(
    req: request::Parts,
    body: Bytes,
    limit: usize,
) -> Result<(response::Parts, Bytes, bool), String> {
    let req = http::Request::from_parts(req, Full::new(body));
    let resp = spin_sdk::http::send(req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let head = to_head(&resp);
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e:?}"))?;
        if let Ok(d) = frame.into_data() {
            out.extend_from_slice(&d);
            if out.len() > limit {
                complete = false;
            }
        }
    }
    Ok((head, Bytes::from(out), complete))
}

fn respond(
    mut head: response::Parts,
    body: Bytes,
    status: &CacheStatus,
    age: Option<u64>,
    req: &request::Parts,
) -> Resp {
    if head.status == StatusCode::OK && conditional::is_not_modified(&req.headers, &head.headers) {
        head = conditional::not_modified_response(&head);
    }
    if let Some(a) = age {
        head.headers.insert(header::AGE, a.into());
    }
    head.headers
        .insert("cache-status", status.to_header_value());
    head.headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    let empty = req.method == Method::HEAD || head.status == StatusCode::NOT_MODIFIED;
    if empty {
        // WASI HTTP frames the body by Content-Length whatever the method: a HEAD or 304
        // answer without a body must not announce the GET's length.
        head.headers.remove(header::CONTENT_LENGTH);
    } else {
        head.headers
            .insert(header::CONTENT_LENGTH, body.len().into());
    }
    http::Response::from_parts(head, Full::new(if empty { Bytes::new() } else { body }))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The family of request fields the Spin host adds to every incoming request
/// (`spin-full-url`, `spin-client-addr`, `spin-path-info`, `spin-base-path`,
/// `spin-matched-route`, `spin-component-route`, `spin-raw-component-route`,
/// `spin-path-match-*`).
pub const HOST_HEADER_PREFIX: &str = "spin-";

/// Removes the host-added `spin-*` fields. They describe this edge and its client (the
/// client's address, the edge's own URL), so none may reach a peer or the origin, be
/// stored with an entry or take part in a peer signature.
pub fn strip_host_headers(headers: &mut HeaderMap) {
    let names: Vec<header::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(HOST_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The component's entry point.
#[spin_sdk::http_service]
async fn handle(req: spin_sdk::http::Request) -> Resp {
    let (mut parts, body) = req.into_parts();
    strip_host_headers(&mut parts.headers);
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                None,
                &format!("cannot read request body: {e:?}"),
            );
        }
    };
    serve(parts, body, vars().await).await
}

async fn serve(mut parts: request::Parts, body: Bytes, vars: Vars) -> Resp {
    let now = SystemTime::now();
    let policy = Policy::default();
    // Spin hands the component its own absolute URL: the doors see the origin-form part
    // (mirror path, or the forwardcache `/proxy?q=` door); the edge is never a forward proxy.
    let origin_form = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    parts.uri = match origin_form.parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, None, "bad request target"),
    };
    let (target, _door) = match door::resolve(&parts, vars.upstream.as_ref(), "/proxy") {
        Ok(t) => t,
        Err(Refused(code, msg)) => return text(code, None, &msg),
    };
    let from_peer = parts.headers.contains_key(hop::HOP);
    if from_peer
        && let Some(secret) = &vars.secret
        && let Err(why) = hop::verify(
            secret,
            &parts.method,
            &target.to_string(),
            &parts.headers,
            now,
        )
    {
        return text(StatusCode::UNAUTHORIZED, None, why);
    }
    for h in [hop::HOP, hop::AUTH] {
        parts.headers.remove(h);
    }
    parts.uri = target;
    let key = match CacheKey::from_uri(&parts.uri) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, None, &e.to_string()),
    };
    if let Ok(u) = key.as_str().parse() {
        parts.uri = u;
    }
    // The owner serves; this node only when every better choice failed.
    if !from_peer && !vars.peers.is_empty() {
        let ring = PeerSelection::new(RingKind::Rendezvous, &vars.peers);
        for peer in ring.preference(key.as_bytes()) {
            let mut fwd = request::Request::builder()
                .method(parts.method.clone())
                .uri(peer_url(peer, key.as_str()));
            let h = fwd.headers_mut().expect("fresh builder");
            for (k, v) in &parts.headers {
                h.append(k.clone(), v.clone());
            }
            policy::strip_hop_by_hop(h);
            h.remove(header::HOST);
            h.insert(hop::HOP, HeaderValue::from_static("larder-edge"));
            if let Some(secret) = &vars.secret
                && let Ok(v) = HeaderValue::from_str(&hop::sign(
                    secret,
                    edge_nonce(now, key.as_str()),
                    &parts.method,
                    key.as_str(),
                    h,
                    now,
                ))
            {
                h.insert(hop::AUTH, v);
            }
            let fwd = fwd.body(()).expect("valid").into_parts().0;
            if let Ok((mut head, b, _)) = fetch(fwd, body.clone(), usize::MAX).await {
                head.headers
                    .append(header::VIA, HeaderValue::from_static(VIA));
                return http::Response::from_parts(head, Full::new(b));
            }
        }
    }
    if !policy::is_cacheable_method(&parts.method) {
        let unsafe_method = policy::invalidates(&parts.method);
        let mut pass = request::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        pass.headers = parts.headers.clone();
        policy::strip_hop_by_hop(&mut pass.headers);
        return match fetch(pass, body, usize::MAX).await {
            Ok((head, b, _)) => {
                if unsafe_method
                    && (head.status.is_success() || head.status.is_redirection())
                    && let Ok(store) = spin_sdk::key_value::Store::open_default().await
                {
                    let _ = store.delete(kv_key(&key)).await;
                }
                respond(head, b, &CacheStatus::fwd(Fwd::Method), None, &parts)
            }
            Err(e) => upstream_failed(Fwd::Method, &parts.uri, &e),
        };
    }
    local(&policy, parts, key, now).await
}

/// The 502 for an origin request that got no answer. The host refusing it
/// (`HttpRequestDenied`) is a manifest matter, not the origin's, and says so.
fn upstream_failed(fwd: Fwd, target: &http::Uri, e: &str) -> Resp {
    if e.contains("Denied") {
        let origin = format!(
            "{}://{}",
            target.scheme_str().unwrap_or("http"),
            target.authority().map(|a| a.as_str()).unwrap_or("")
        );
        return text(
            StatusCode::BAD_GATEWAY,
            Some(CacheStatus::fwd(fwd).with_detail("not-in-allowed-outbound-hosts")),
            &format!(
                "the Spin host refused the request to {target}: {origin} is not in the \
                 component's allowed_outbound_hosts (spin.toml). Entries there are \
                 scheme://host[:port] without a path, and one entry with a path makes Spin \
                 refuse the whole list: set `upstream` to the origin only and put a mirror's \
                 base path in `upstream_path` ({e})"
            ),
        );
    }
    text(
        StatusCode::BAD_GATEWAY,
        Some(CacheStatus::fwd(fwd).with_detail("origin-unreachable")),
        &format!("origin failed (origin-unreachable): {e}"),
    )
}

fn peer_url(peer: &str, target: &str) -> String {
    let q: String = larder_core::door::proxy_query(target);
    format!("{peer}/proxy?{q}")
}

fn kv_key(key: &CacheKey) -> String {
    format!("larder/{key}")
}

/// Served by this node: Spin KV first, then the origin.
async fn local(policy: &Policy, req: request::Parts, key: CacheKey, now: SystemTime) -> Resp {
    let store = spin_sdk::key_value::Store::open_default().await.ok();
    let mut stale: Option<(Entry, larder_core::policy::Stored, request::Parts)> = None;
    let mut fwd = Fwd::UriMiss;
    if let Some(store) = &store
        && let Some(e) = store
            .get(kv_key(&key))
            .await
            .ok()
            .flatten()
            .and_then(|b| Entry::decode(&b))
    {
        let arrived = SystemTime::UNIX_EPOCH + Duration::from_secs(e.time);
        if let Ok(stored) = policy.storable(&e.request, &e.response, arrived) {
            match policy.reuse(&stored, &req, now) {
                Reuse::Fresh => {
                    let status = CacheStatus::hit(stored.ttl(now).as_secs() as i64);
                    return respond(
                        e.response,
                        e.body,
                        &status,
                        Some(stored.age(now).as_secs()),
                        &req,
                    );
                }
                Reuse::Stale { revalidate, .. } => {
                    fwd = Fwd::Stale;
                    stale = Some((e, stored, *revalidate));
                }
                Reuse::NoMatch(_) => fwd = Fwd::VaryMiss,
            }
        }
    }
    let sent = match &stale {
        Some((_, _, revalidate)) => clone_request(revalidate),
        None => policy::fill_request(&req),
    };
    let origin = fetch(clone_request(&sent), Bytes::new(), MAX_ENTRY).await;
    let (mut head, body, complete) = match origin {
        Ok(x) => x,
        Err(e) => {
            if let Some((entry, stored, _)) = stale
                && policy.stale_if_error(&stored, &req, now)
            {
                let mut s = CacheStatus::hit(-(policy.staleness(&stored, now).as_secs() as i64));
                s.fwd = Some(Fwd::Stale);
                s.detail = Some("stale-if-error");
                return respond(
                    entry.response,
                    entry.body,
                    &s,
                    Some(stored.age(now).as_secs()),
                    &req,
                );
            }
            return upstream_failed(fwd, &req.uri, &e);
        }
    };
    let mut status = CacheStatus::fwd(fwd);
    status.fwd_status = Some(head.status.as_u16());
    if let Some((mut entry, stored, _)) = stale
        && head.status == StatusCode::NOT_MODIFIED
        && let Revalidated::NotModified {
            stored: fresh,
            head: merged,
        } = policy.revalidated(&stored, &sent, &head, now)
    {
        entry.response = merged;
        entry.time = unix(now);
        entry.request = policy::fill_request(&req);
        if let Some(store) = &store {
            status.stored = store.set(kv_key(&key), entry.encode()).await.is_ok();
        }
        return respond(
            entry.response,
            entry.body,
            &status,
            Some(fresh.age(now).as_secs()),
            &req,
        );
    }
    policy.prepare_response(&mut head);
    let fill = policy::fill_request(&req);
    match policy.storable(&fill, &head, now) {
        Ok(_) if complete => {
            let entry = Entry {
                time: unix(now),
                request: fill,
                response: clone_response(&head),
                body: body.clone(),
            };
            if let Some(store) = &store {
                status.stored = store.set(kv_key(&key), entry.encode()).await.is_ok();
            }
        }
        Ok(_) => status.detail = Some("too-large"),
        Err(why) => status.detail = Some(why.as_str()),
    }
    respond(head, body, &status, None, &req)
}

/// A nonce for a signature from this edge instance (a Spin instance lives for one request
/// and keeps no counter): the clock in nanoseconds mixed with the key, so two requests share
/// one only if they sign the same URL in the same nanosecond (the peer then refuses the
/// second, which falls back to the next choice).
fn edge_nonce(now: std::time::SystemTime, key: &str) -> u64 {
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ xxhash_rust::xxh3::xxh3_64(key.as_bytes()).rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("spin-full-url", "http://edge.test/a?b"),
            ("spin-client-addr", "127.0.0.1:54321"),
            ("spin-path-info", "/a"),
            ("spin-path-match-name", "a"),
            ("accept", "*/*"),
            ("x-spin-note", "kept"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_host_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-spin-note"]);
    }

    #[test]
    fn upstream_is_an_origin_plus_a_base_path() {
        let u = |o: &str, p: &str| {
            upstream_url(
                Some(o.into()),
                Some(p.into()).filter(|p: &String| !p.is_empty()),
            )
            .map(|u| u.to_string())
        };
        assert_eq!(
            u("http://m.test:8000", "").as_deref(),
            Some("http://m.test:8000/")
        );
        assert_eq!(
            u("http://m.test:8000/", "/debian/").as_deref(),
            Some("http://m.test:8000/debian")
        );
        assert_eq!(
            u("http://m.test:8000", "debian").as_deref(),
            Some("http://m.test:8000/debian")
        );
        assert_eq!(upstream_url(None, Some("/debian".into())), None);
    }
}
