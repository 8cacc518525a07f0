//! When each waiting follower gives up on its flight (quinn-proto's `connection/timer.rs`,
//! keyed by client): the earliest deadline in O(log n), so an adapter can re-arm its one
//! timer after every drain instead of polling.

use super::io::ClientId;
use hashbrown::HashMap;
use std::collections::BTreeSet;
use std::time::SystemTime;

#[derive(Debug, Default)]
pub(super) struct Deadlines {
    by_time: BTreeSet<(SystemTime, ClientId)>,
    of: HashMap<ClientId, SystemTime>,
}

impl Deadlines {
    /// `client` gives up at `at` (replacing an earlier deadline).
    pub fn set(&mut self, client: ClientId, at: SystemTime) {
        if let Some(old) = self.of.insert(client, at) {
            self.by_time.remove(&(old, client));
        }
        self.by_time.insert((at, client));
    }

    /// `client` waits no more (it streams, was answered or is gone).
    pub fn clear(&mut self, client: ClientId) {
        if let Some(old) = self.of.remove(&client) {
            self.by_time.remove(&(old, client));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<SystemTime> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Takes the clients whose deadline is at or before `now`, earliest first.
    pub fn expired(&mut self, now: SystemTime) -> Vec<ClientId> {
        let mut out = Vec::new();
        while let Some(&(t, c)) = self.by_time.first() {
            if t > now {
                break;
            }
            self.by_time.pop_first();
            self.of.remove(&c);
            out.push(c);
        }
        out
    }

    /// The clock went back: no deadline may lie further ahead than `latest` (the longest
    /// wait there is), or a wall-clock step back would keep followers waiting that long.
    pub fn cap(&mut self, latest: SystemTime) {
        let late: Vec<ClientId> = self
            .by_time
            .range((latest, ClientId(u64::MAX))..)
            .filter(|(t, _)| *t > latest)
            .map(|(_, c)| *c)
            .collect();
        for c in late {
            self.set(c, latest);
        }
    }

    pub fn len(&self) -> usize {
        self.of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn earliest_first_and_exact() {
        let mut d = Deadlines::default();
        d.set(ClientId(1), t(30));
        d.set(ClientId(2), t(10));
        d.set(ClientId(3), t(20));
        d.set(ClientId(2), t(40));
        assert_eq!(d.next(), Some(t(20)));
        d.clear(ClientId(3));
        assert_eq!(d.expired(t(35)), [ClientId(1)]);
        assert_eq!((d.next(), d.len()), (Some(t(40)), 1));
        d.cap(t(25));
        assert_eq!(d.next(), Some(t(25)));
        assert_eq!(d.expired(t(25)), [ClientId(2)]);
        assert_eq!((d.next(), d.len()), (None, 0));
    }
}
