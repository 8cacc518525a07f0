//! Saturating time arithmetic.
//!
//! Durations in the cache come from header values (`max-age`, `Age`, `Expires`, ...) and
//! `now` comes from the adapter; neither is trusted. `SystemTime + Duration` panics on
//! overflow, so every instant the core computes goes through here instead.

use std::time::{Duration, SystemTime};

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent, or a computation with one
/// that overflows, is taken as 2^31 seconds (about 68 years).
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// `t + d`, saturating: past what `SystemTime` can hold, `t` plus 2^31 s, or `t` itself when
/// even that overflows (a clock already at the end of time).
pub fn after(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(DELTA_SECONDS_MAX)))
        .unwrap_or(t)
}

/// The last instant the date arithmetic below the policy handles (9999-12-31T23:59:59Z,
/// the end of the four-digit years HTTP dates can write).
const LAST_INSTANT_SECS: u64 = 253_402_300_799;

/// `now` as the core uses it: an adapter's clock past year 9999 is taken as the end of
/// year 9999, where the date library stops (it panics beyond).
pub fn clamp(now: SystemTime) -> SystemTime {
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_INSTANT_SECS);
    now.min(last)
}

/// A delta-seconds field value (`1*DIGIT`) clamped to 2^31; `None` unless all digits.
pub fn delta_seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        v.parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_panics_and_clamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(after(t, Duration::from_secs(5)), t + Duration::from_secs(5));
        let far = after(t, Duration::from_secs(u64::MAX));
        assert_eq!(far, t + Duration::from_secs(DELTA_SECONDS_MAX));
        assert_eq!(
            after(far, Duration::MAX),
            far + Duration::from_secs(DELTA_SECONDS_MAX)
        );
        assert_eq!(delta_seconds("60"), Some(60));
        assert_eq!(
            delta_seconds("18446744073709551615"),
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            delta_seconds("99999999999999999999999"),
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(delta_seconds("-1"), None);
        assert_eq!(delta_seconds(""), None);
        assert_eq!(delta_seconds("1e3"), None);
    }
}
