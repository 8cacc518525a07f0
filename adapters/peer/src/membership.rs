//! Cluster membership on etcd (`--etcd`): each peer registers its `--self` URL under
//! `--etcd-prefix` with a lease it keeps alive, and watches the prefix; every change is the
//! engine's `PeersChanged`. A peer that dies leaves when its lease runs out (`--etcd-ttl`);
//! one that stops leaves at once (its lease is revoked).
//!
//! etcd is spoken to through its v3 JSON gateway (`/v3/lease/grant`, `/v3/kv/put`,
//! `/v3/kv/range`, `/v3/watch`, the same API and port as gRPC), over the pooled HTTP client
//! every peer already has: the gRPC client crates need `protoc` to build, which would break
//! `cargo run` on a fresh machine.
//!
//! When etcd cannot be reached the last known view is kept and served from; the session is
//! retried with back-off (1 s doubling to 30 s), and the log and `larder_etcd_up` say so.

use crate::server::State;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;

/// Where and how this peer registers.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// Client URLs of the etcd members (tried in turn).
    pub endpoints: Vec<Uri>,
    /// Keys under this prefix are members: `<prefix><self URL>` = the URL.
    pub prefix: String,
    /// Lease time-to-live: how long a dead peer stays a member.
    pub ttl: Duration,
}

type Json = serde_json::Value;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(raw).ok()
}

/// The key just past every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return String::from_utf8_lossy(&end).into_owned();
        }
    }
    "\0".into()
}

struct Session<'a> {
    state: &'a Arc<State>,
    etcd: &'a Etcd,
    endpoint: Uri,
}

impl Session<'_> {
    async fn call(&self, path: &str, body: Json) -> Result<Json, String> {
        let resp = self.post(path, body, Duration::from_secs(5)).await?;
        let bytes = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .map_err(|_| format!("{path}: no answer"))?
            .map_err(|e| format!("{path}: {e}"))?
            .to_bytes();
        let v: Json = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
        if let Some(e) = v.get("error").or_else(|| v.get("message")) {
            return Err(format!("{path}: {e}"));
        }
        Ok(v)
    }

    async fn post(
        &self,
        path: &str,
        body: Json,
        wait: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let url = format!("{}{path}", self.endpoint.to_string().trim_end_matches('/'));
        let req = Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(Bytes::from(body.to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| e.to_string())?;
        let resp = self
            .state
            .peer_link
            .upstream
            .send(req, wait)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{path}: etcd answered {}", resp.status()));
        }
        Ok(resp)
    }

    /// The members now, and the revision they were read at.
    async fn members(&self) -> Result<(Vec<String>, i64), String> {
        let v = self
            .call(
                "/v3/kv/range",
                serde_json::json!({
                    "key": b64(&self.etcd.prefix),
                    "range_end": b64(&prefix_end(&self.etcd.prefix)),
                }),
            )
            .await?;
        let revision = v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let mut peers: Vec<String> = v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| unb64(kv["value"].as_str()?))
            .filter_map(|url| crate::config::canonical_peer(&url).ok())
            .collect();
        peers.sort();
        peers.dedup();
        Ok((peers, revision))
    }
}

/// Keeps this peer registered and the engine's peers in step with etcd, for as long as
/// the peer runs. `self_url` is this peer's canonical URL.
pub async fn run(state: Arc<State>, etcd: Etcd, self_url: String) {
    let mut backoff = Duration::from_secs(1);
    let mut turn = 0usize;
    loop {
        let endpoint = etcd.endpoints[turn % etcd.endpoints.len()].clone();
        turn += 1;
        let session = Session {
            state: &state,
            etcd: &etcd,
            endpoint: endpoint.clone(),
        };
        let started = std::time::Instant::now();
        let why = serve(&session, &self_url).await;
        state.metrics.etcd_up.set(0);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            etcd = %endpoint,
            "etcd session ended ({why}); keeping the last known {} peers, retrying in {:?}",
            state.live().peers.len(),
            backoff
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One session: a lease, this peer's key under it, then the watch. Returns why it ended.
async fn serve(s: &Session<'_>, self_url: &str) -> String {
    let ttl = s.etcd.ttl.as_secs().max(1);
    let lease = match s
        .call("/v3/lease/grant", serde_json::json!({ "TTL": ttl }))
        .await
    {
        Ok(v) => match v["ID"].as_str() {
            Some(id) => id.to_owned(),
            None => return format!("no lease in {v}"),
        },
        Err(e) => return e,
    };
    let key = format!("{}{self_url}", s.etcd.prefix);
    let put = serde_json::json!({ "key": b64(&key), "value": b64(self_url), "lease": lease });
    if let Err(e) = s.call("/v3/kv/put", put).await {
        return e;
    }
    s.state.set_lease(Some((s.endpoint.clone(), lease.clone())));
    let (peers, revision) = match s.members().await {
        Ok(m) => m,
        Err(e) => return e,
    };
    s.state.metrics.etcd_up.set(1);
    tracing::info!(peers = peers.len(), "registered in etcd as {self_url}");
    s.state.set_peers(peers);
    let watch = serde_json::json!({
        "create_request": {
            "key": b64(&s.etcd.prefix),
            "range_end": b64(&prefix_end(&s.etcd.prefix)),
            "start_revision": revision.saturating_add(1).to_string(),
        }
    });
    let resp = match s.post("/v3/watch", watch, Duration::from_secs(5)).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut keepalive = tokio::time::interval(Duration::from_secs((ttl / 3).max(1)));
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                let ka = serde_json::json!({ "ID": lease });
                match s.call("/v3/lease/keepalive", ka).await {
                    // An expired lease answers with no TTL: this peer's key is gone.
                    Ok(v) if v["result"]["TTL"].as_str().is_some_and(|t| t != "0") => {}
                    Ok(v) => return format!("lease expired ({v})"),
                    Err(e) => return e,
                }
            }
            frame = body.frame() => {
                let chunk = match frame {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                    Some(Err(e)) => return format!("watch: {e}"),
                    None => return "watch stream closed".into(),
                };
                buf.extend_from_slice(&chunk);
                if buf.len() > 16 << 20 {
                    return "watch message too large".into();
                }
                // Newline-delimited messages; any event means the member list changed.
                let mut changed = false;
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let Ok(v) = serde_json::from_slice::<Json>(&line) else { continue };
                    if v["result"]["canceled"].as_bool() == Some(true) {
                        return "watch canceled".into();
                    }
                    changed |= v["result"]["events"].as_array().is_some_and(|e| !e.is_empty());
                }
                if changed {
                    match s.members().await {
                        Ok((peers, _)) => s.state.set_peers(peers),
                        Err(e) => return e,
                    }
                }
            }
        }
    }
}

/// Gives up this peer's lease at shutdown, so the others drop it at once.
pub async fn leave(state: &Arc<State>) {
    let Some((endpoint, lease)) = state.lease() else {
        return;
    };
    let etcd = Etcd {
        endpoints: vec![endpoint.clone()],
        prefix: String::new(),
        ttl: Duration::from_secs(1),
    };
    let s = Session {
        state,
        etcd: &etcd,
        endpoint,
    };
    match s
        .call("/v3/lease/revoke", serde_json::json!({ "ID": lease }))
        .await
    {
        Ok(_) => tracing::info!("left the etcd membership"),
        Err(e) => {
            tracing::warn!("could not leave the etcd membership ({e}); the lease will expire")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_just_past_it() {
        assert_eq!(prefix_end("/larder/peers/"), "/larder/peers0");
        assert_eq!(unb64(&b64("http://a:1")).as_deref(), Some("http://a:1"));
    }
}
