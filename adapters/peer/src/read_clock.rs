//! The clock of hyper's header-read timeout: it counts only time this process had to read.
//!
//! A process frozen (SIGSTOP, a VM paused) or starved for longer than [`STALL`] does not
//! see that time pass: otherwise the timer of a connection waiting for its next request can
//! fire on resume before the request that arrived meanwhile is read, and the client is reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often the clock checks that the process runs.
const TICK: Duration = Duration::from_millis(100);
/// A gap between ticks longer than this is time the process did not run.
const STALL: Duration = Duration::from_secs(1);

/// Monotonic time minus the stalls seen.
pub struct ActiveClock {
    base: Instant,
    /// Nanoseconds from `base` to the last tick.
    last_tick: AtomicU64,
    /// Nanoseconds of stalls recorded by ticks.
    stalled: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ActiveClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ActiveClock {
            base: Instant::now(),
            last_tick: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        })
    }

    /// Now, less every stall (including one in progress that no tick has seen yet).
    pub fn now(&self) -> Instant {
        let real = Instant::now();
        let since = nanos(real - self.base);
        let gap = since.saturating_sub(self.last_tick.load(Ordering::Acquire));
        let stalled = self.stalled.load(Ordering::Acquire) + gap.saturating_sub(nanos(STALL));
        real.checked_sub(Duration::from_nanos(stalled))
            .unwrap_or(self.base)
    }

    fn tick(&self) {
        let since = nanos(self.base.elapsed());
        let last = self.last_tick.load(Ordering::Acquire);
        let stall = since.saturating_sub(last).saturating_sub(nanos(STALL));
        self.stalled.fetch_add(stall, Ordering::AcqRel);
        self.last_tick.store(since, Ordering::Release);
    }

    /// Ticks until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(TICK).await;
            self.tick();
        }
    }
}

/// A hyper timer whose deadlines are on the active clock.
#[derive(Clone)]
pub struct ActiveTimer(pub Arc<ActiveClock>);

struct ActiveSleep {
    clock: Arc<ActiveClock>,
    deadline: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for ActiveSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let now = self.clock.now();
            let Some(left) = self
                .deadline
                .checked_duration_since(now)
                .filter(|l| !l.is_zero())
            else {
                return Poll::Ready(());
            };
            // Not yet in active time: wait (at least) the rest in real time, then look again.
            let at = tokio::time::Instant::now() + left;
            if self.sleep.deadline() < at {
                self.sleep.as_mut().reset(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl hyper::rt::Sleep for ActiveSleep {}

impl hyper::rt::Timer for ActiveTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.0.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let left = deadline.saturating_duration_since(self.0.now());
        Box::pin(ActiveSleep {
            clock: self.0.clone(),
            deadline,
            sleep: Box::pin(tokio::time::sleep(left)),
        })
    }

    fn now(&self) -> Instant {
        self.0.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_does_not_count() {
        // Last tick 3 s ago: 2 s of that (beyond STALL) did not run.
        let c = ActiveClock {
            base: Instant::now() - Duration::from_secs(3),
            last_tick: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        };
        let lag = Instant::now().saturating_duration_since(c.now());
        assert!(lag >= Duration::from_millis(1990), "{lag:?}");
        // Once a tick has seen it, the stall stays out of the clock.
        c.tick();
        let lag = Instant::now().saturating_duration_since(c.now());
        assert!(lag >= Duration::from_millis(1990), "{lag:?}");
        // Running time counts.
        std::thread::sleep(Duration::from_millis(200));
        let lag2 = Instant::now().saturating_duration_since(c.now());
        assert!(lag2 < lag + Duration::from_millis(100), "{lag2:?}");
    }
}
