//! The peer protocol's hop marker and its authentication, shared by every runtime (native
//! peers, the Spin component, the client library).
//!
//! A request forwarded by a peer carries `larder-hop: <sender id>`; the receiver serves it
//! itself, never forwarding it again (one hop at most, whatever the peer lists say). With a
//! shared secret, `larder-peer-auth` carries an HMAC-SHA256 over time, method and URL,
//! checked in constant time; the time is the caller's `now` (this crate reads no clock).

use hmac::{Hmac, Mac};
use http::{HeaderValue, Method};
use std::time::{SystemTime, UNIX_EPOCH};

/// Marks a request as sent by a peer (value: the sender's id). A marked request is served
/// where it lands, never forwarded again: one hop at most, whatever the peer lists say.
pub const HOP: &str = "larder-hop";
/// `t=<unix seconds>,sig=<hex HMAC-SHA256(secret, "t\nMETHOD\nURL")>`.
pub const AUTH: &str = "larder-peer-auth";
/// How far a signature's timestamp may be from our clock.
const SKEW: u64 = 300;

type HmacSha256 = Hmac<sha2::Sha256>;

fn mac(secret: &str, t: u64, method: &Method, url: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(format!("{t}\n{method}\n{url}").as_bytes());
    m
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The AUTH header value for a request.
pub fn sign(secret: &str, method: &Method, url: &str, now: SystemTime) -> String {
    let t = unix(now);
    let sig = mac(secret, t, method, url).finalize().into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},sig={hex}")
}

/// Checks an AUTH header value in constant time.
pub fn verify(
    secret: &str,
    method: &Method,
    url: &str,
    value: Option<&HeaderValue>,
    now: SystemTime,
) -> Result<(), &'static str> {
    let v = value
        .and_then(|v| v.to_str().ok())
        .ok_or("missing peer credentials")?;
    let mut t = None;
    let mut sig = None;
    for part in v.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("sig", x)) => sig = decode_hex(x),
            _ => {}
        }
    }
    let (t, sig) = (
        t.ok_or("malformed peer credentials")?,
        sig.ok_or("malformed peer credentials")?,
    );
    if unix(now).abs_diff(t) > SKEW {
        return Err("peer credentials expired (check clocks)");
    }
    mac(secret, t, method, url)
        .verify_slice(&sig)
        .map_err(|_| "bad peer credentials")
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

    #[test]
    fn hmac_round_trip_and_rejections() {
        let now = SystemTime::now();
        let v = sign("s3cret", &Method::GET, "http://o/a", now);
        let hv = HeaderValue::from_str(&v).unwrap();
        assert_eq!(
            verify("s3cret", &Method::GET, "http://o/a", Some(&hv), now),
            Ok(())
        );
        assert!(verify("other", &Method::GET, "http://o/a", Some(&hv), now).is_err());
        assert!(verify("s3cret", &Method::GET, "http://o/b", Some(&hv), now).is_err());
        assert!(verify("s3cret", &Method::POST, "http://o/a", Some(&hv), now).is_err());
        assert!(
            verify(
                "s3cret",
                &Method::GET,
                "http://o/a",
                Some(&hv),
                now + Duration::from_secs(600)
            )
            .is_err()
        );
        assert!(verify("s3cret", &Method::GET, "http://o/a", None, now).is_err());
        let bad = HeaderValue::from_static("t=1,sig=zz");
        assert!(verify("s3cret", &Method::GET, "http://o/a", Some(&bad), now).is_err());
    }
}
