//! The peer protocol's hop marker and its authentication, shared by every runtime (native
//! peers, the Spin component, the client library).
//!
//! A request forwarded by a peer carries `larder-hop: <sender id>`; the receiver serves it
//! itself, never forwarding it again (one hop at most, whatever the peer lists say). With a
//! shared secret, `larder-peer-auth` carries an HMAC-SHA256 over the time, a nonce, the
//! method, the URL and every end-to-end header field, checked in constant time; the time is
//! the caller's `now` (this crate reads no clock). A signature is good for [`WINDOW`]
//! seconds either way, and a [`ReplayGuard`] admits each (sender, nonce) once, so a captured
//! request can be neither replayed nor extended with fields of its own.

use hashbrown::HashSet;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method};
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Marks a request as sent by a peer (value: the sender's id). A marked request is served
/// where it lands, never forwarded again: one hop at most, whatever the peer lists say.
pub const HOP: &str = "larder-hop";
/// On a `PURGE` one peer fans out to the others: `local` means drop your own copies only,
/// and tell nobody else.
pub const PURGE_SCOPE: &str = "larder-purge-scope";
/// On a peer's request for one segment of a large object: the version (length and
/// validator, [`crate::segment::Version::to_field`]) the asking peer is assembling, or `?`
/// when it does not know it yet. The receiver serves a stored copy of that version however
/// old (the object was revalidated once, as a whole, by the asker), or fetches the origin.
/// Adapters drop it from requests that are not peer traffic.
pub const SEGMENT: &str = "larder-segment";
/// `t=<unix seconds>,n=<nonce>,sig=<hex HMAC-SHA256>`.
pub const AUTH: &str = "larder-peer-auth";
/// How far a signature's timestamp may be from our clock, in seconds.
pub const WINDOW: u64 = 30;

/// Fields a signature does not cover: the connection's own (hop-by-hop, framing, `Host`,
/// which the HTTP client writes) and those each hop appends (`Via`), and the signature.
const UNSIGNED: [&str; 13] = [
    "host",
    "via",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    AUTH,
];

type HmacSha256 = Hmac<sha2::Sha256>;

fn mac(
    secret: &str,
    t: u64,
    nonce: u64,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(format!("larder-hop-v2\n{t}\n{nonce}\n{method}\n{url}\n").as_bytes());
    // Every signed field, by name (values of one name in order): a field added, dropped or
    // changed on the way breaks the signature.
    let mut fields: Vec<(&str, &HeaderValue)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .filter(|(k, _)| !UNSIGNED.contains(k))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in fields {
        m.update(k.as_bytes());
        m.update(b":");
        m.update(v.as_bytes());
        m.update(b"\n");
    }
    m
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The AUTH header value for a request whose other fields are `headers` (as sent, `HOP`
/// included). `nonce` must never repeat for one sender id.
pub fn sign(
    secret: &str,
    nonce: u64,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> String {
    let t = unix(now);
    let sig = mac(secret, t, nonce, method, url, headers)
        .finalize()
        .into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},n={nonce},sig={hex}")
}

/// What a good signature says: when it was made, and its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// Signing time, Unix seconds: places the nonce in the [`ReplayGuard`]'s window.
    pub t: u64,
    /// The sender's one-time number: a second request with it is a replay.
    pub nonce: u64,
}

/// Checks the AUTH field of `headers` in constant time: the MAC, and the time within
/// [`WINDOW`]. Replays are the [`ReplayGuard`]'s to catch.
pub fn verify(
    secret: &str,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Signed, &'static str> {
    let v = headers
        .get(AUTH)
        .and_then(|v| v.to_str().ok())
        .ok_or("missing peer credentials")?;
    let (mut t, mut nonce, mut sig) = (None, None, None);
    for part in v.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("n", x)) => nonce = x.parse::<u64>().ok(),
            Some(("sig", x)) => sig = decode_hex(x),
            _ => {}
        }
    }
    let (Some(t), Some(nonce), Some(sig)) = (t, nonce, sig) else {
        return Err("malformed peer credentials");
    };
    if unix(now).abs_diff(t) > WINDOW {
        return Err("peer credentials expired (check clocks)");
    }
    mac(secret, t, nonce, method, url, headers)
        .verify_slice(&sig)
        .map_err(|_| "bad peer credentials")?;
    Ok(Signed { t, nonce })
}

/// Admits each (sender, nonce) once while its signature is within the window.
///
/// Nonces are kept in one bucket per second of signing time and forgotten once that second
/// leaves the window. The memory is bounded: when `capacity` nonces are held, the oldest
/// second is dropped and becomes the floor, below which nothing is admitted, so a replay is
/// never accepted, however full the guard (under extreme peer load the usable window only
/// shrinks, and a refused sender fails over).
#[derive(Debug)]
pub struct ReplayGuard {
    buckets: VecDeque<(u64, HashSet<u64>)>,
    held: usize,
    capacity: usize,
    floor: u64,
}

impl ReplayGuard {
    /// A guard holding at most `capacity` nonces (at least one).
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            buckets: VecDeque::new(),
            held: 0,
            capacity: capacity.max(1),
            floor: 0,
        }
    }

    /// Nonces held now (bounded by the capacity).
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Records a verified request from `sender`; an error if it was seen before.
    pub fn admit(
        &mut self,
        sender: &[u8],
        signed: Signed,
        now: SystemTime,
    ) -> Result<(), &'static str> {
        let now = unix(now);
        while self
            .buckets
            .front()
            .is_some_and(|(t, _)| t.saturating_add(WINDOW) < now)
        {
            let (_, set) = self.buckets.pop_front().expect("checked");
            self.held -= set.len();
        }
        if signed.t < self.floor || signed.t.saturating_add(WINDOW) < now {
            return Err("peer credentials expired (replay window)");
        }
        let id = xxhash_rust::xxh3::xxh3_64_with_seed(sender, signed.nonce);
        let at = match self.buckets.iter().position(|(t, _)| *t >= signed.t) {
            Some(i) if self.buckets[i].0 == signed.t => i,
            Some(i) => {
                self.buckets.insert(i, (signed.t, HashSet::new()));
                i
            }
            None => {
                self.buckets.push_back((signed.t, HashSet::new()));
                self.buckets.len() - 1
            }
        };
        if !self.buckets[at].1.insert(id) {
            return Err("peer credentials replayed");
        }
        self.held += 1;
        while self.held > self.capacity {
            let (t, set) = self
                .buckets
                .pop_front()
                .expect("over capacity means non-empty");
            self.held -= set.len();
            self.floor = t + 1;
        }
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fields(extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOP, HeaderValue::from_static("http://peer1"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        for (k, v) in extra {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn signed(h: &mut HeaderMap, nonce: u64, now: SystemTime) {
        let v = sign("s3cret", nonce, &Method::GET, "http://o/a", h, now);
        h.insert(AUTH, HeaderValue::from_str(&v).unwrap());
    }

    #[test]
    fn hmac_round_trip_and_rejections() {
        let now = SystemTime::now();
        let mut h = fields(&[]);
        signed(&mut h, 1, now);
        let ok =
            |secret: &str, m: &Method, url: &str, h: &HeaderMap, at| verify(secret, m, url, h, at);
        assert!(ok("s3cret", &Method::GET, "http://o/a", &h, now).is_ok());
        assert!(ok("other", &Method::GET, "http://o/a", &h, now).is_err());
        assert!(ok("s3cret", &Method::GET, "http://o/b", &h, now).is_err());
        assert!(ok("s3cret", &Method::POST, "http://o/a", &h, now).is_err());
        // The window is seconds, not minutes.
        assert!(
            ok(
                "s3cret",
                &Method::GET,
                "http://o/a",
                &h,
                now + Duration::from_secs(WINDOW + 2)
            )
            .is_err()
        );
        assert!(ok("s3cret", &Method::GET, "http://o/a", &HeaderMap::new(), now).is_err());
        let mut bad = HeaderMap::new();
        bad.insert(AUTH, HeaderValue::from_static("t=1,n=1,sig=zz"));
        assert!(ok("s3cret", &Method::GET, "http://o/a", &bad, now).is_err());
    }

    /// Issue 8 (7): extra unsigned headers could be added to a captured request.
    #[test]
    fn every_end_to_end_field_is_covered() {
        let now = SystemTime::now();
        let mut h = fields(&[("cookie", "a=1")]);
        signed(&mut h, 9, now);
        let check = |h: &HeaderMap| verify("s3cret", &Method::GET, "http://o/a", h, now);
        assert!(check(&h).is_ok());
        for (k, v) in [
            ("authorization", "Bearer x"),
            ("cookie", "b=2"),
            ("range", "bytes=0-1"),
            ("x-anything", "1"),
        ] {
            let mut t = h.clone();
            t.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            assert_eq!(check(&t), Err("bad peer credentials"), "{k} added");
        }
        let mut t = h.clone();
        t.insert("accept-encoding", HeaderValue::from_static("br"));
        assert!(check(&t).is_err(), "a changed field");
        let mut t = h.clone();
        t.remove("cookie");
        assert!(check(&t).is_err(), "a dropped field");
        // What each hop adds or the HTTP client writes is not covered.
        let mut t = h.clone();
        t.append("via", HeaderValue::from_static("1.1 peer1"));
        t.insert("host", HeaderValue::from_static("peer2:3128"));
        assert!(check(&t).is_ok());
    }

    /// Issue 8 (7): a signature could be replayed for about 5 minutes.
    #[test]
    fn replays_are_refused_and_memory_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut g = ReplayGuard::new(1000);
        let s = |t_off: u64, nonce| Signed {
            t: 1_700_000_000 - t_off,
            nonce,
        };
        assert_eq!(g.admit(b"p1", s(0, 1), now), Ok(()));
        assert_eq!(
            g.admit(b"p1", s(0, 1), now),
            Err("peer credentials replayed")
        );
        assert_eq!(
            g.admit(b"p2", s(0, 1), now),
            Ok(()),
            "another sender's nonce"
        );
        assert_eq!(
            g.admit(b"p1", s(5, 2), now),
            Ok(()),
            "out of order within the window"
        );
        assert!(g.admit(b"p1", s(WINDOW + 1, 3), now).is_err(), "too old");
        // Much later, old nonces are forgotten (and could not be admitted anyway).
        let later = now + Duration::from_secs(WINDOW * 3);
        assert!(g.admit(b"p1", s(0, 1), later).is_err());
        assert_eq!(
            g.admit(
                b"p1",
                Signed {
                    t: 1_700_000_000 + WINDOW * 3,
                    nonce: 1
                },
                later
            ),
            Ok(())
        );
        assert_eq!(g.len(), 1);
        // Full: the oldest second is dropped and becomes the floor; no replay gets through.
        let mut g = ReplayGuard::new(10);
        for i in 0..10 {
            assert_eq!(g.admit(b"p", s(2, i), now), Ok(()));
        }
        for i in 10..20 {
            assert_eq!(g.admit(b"p", s(1, i), now), Ok(()));
        }
        assert!(g.len() <= 10);
        for i in 0..10 {
            assert!(
                g.admit(b"p", s(2, i), now).is_err(),
                "replay of {i} after eviction"
            );
        }
        for i in 10..20 {
            assert_eq!(
                g.admit(b"p", s(1, i), now),
                Err("peer credentials replayed")
            );
        }
    }
}
