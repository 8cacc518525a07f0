//! The clock of hyper's header-read timeout: it counts only time this process had to read.
//!
//! A process frozen (SIGSTOP, a VM paused) or starved for longer than [`STALL`] does not
//! see that time pass: otherwise the timer of a connection waiting for its next request can
//! fire on resume before the request that arrived meanwhile is read, and the client is reset.
//!
//! Deadlines are in real time, so arming, polling and resetting a timer cost what tokio's
//! do (this timer runs for every request). Only when a sleep fires does it look at the
//! stalls since it was armed, and if there were any, it moves its deadline on by them.

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

/// How long the process has not run, as seen by a ticking task.
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

    /// Stalls recorded so far (one load: what arming a timer costs).
    fn stalled_seen(&self) -> u64 {
        self.stalled.load(Ordering::Acquire)
    }

    /// Stalls so far, including one in progress that no tick has seen yet.
    fn stalled_now(&self) -> u64 {
        let since = nanos(self.base.elapsed());
        let gap = since.saturating_sub(self.last_tick.load(Ordering::Acquire));
        self.stalled_seen() + gap.saturating_sub(nanos(STALL))
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

/// A hyper timer whose sleeps do not count the time the process did not run.
#[derive(Clone)]
pub struct ActiveTimer(pub Arc<ActiveClock>);

pin_project_lite::pin_project! {
    struct ActiveSleep {
        clock: Arc<ActiveClock>,
        // Stalls already accounted for in the deadline.
        stalled: u64,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for ActiveSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let stalled = this.clock.stalled_now();
            let extra = stalled.saturating_sub(*this.stalled);
            if extra == 0 {
                return Poll::Ready(());
            }
            // The process did not run for `extra` of this sleep: it owes that much more.
            *this.stalled = stalled;
            let later = this.sleep.deadline() + Duration::from_nanos(extra);
            this.sleep.as_mut().reset(later);
        }
    }
}

impl hyper::rt::Sleep for ActiveSleep {}

impl hyper::rt::Timer for ActiveTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ActiveSleep {
            clock: self.0.clone(),
            stalled: self.0.stalled_seen(),
            sleep: tokio::time::sleep_until(deadline.into()),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ActiveSleep>() {
            Some(s) => {
                let this = s.project();
                *this.stalled = self.0.stalled_seen();
                this.sleep.reset(new_deadline.into());
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_counted_once_a_tick_or_a_sleep_sees_it() {
        // Last tick 3 s ago: 2 s of that (beyond STALL) did not run.
        let c = ActiveClock {
            base: Instant::now() - Duration::from_secs(3),
            last_tick: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        };
        assert_eq!(c.stalled_seen(), 0, "no tick has seen it yet");
        let now = c.stalled_now();
        assert!(now >= nanos(Duration::from_millis(1990)), "{now}");
        c.tick();
        assert!(c.stalled_seen() >= nanos(Duration::from_millis(1990)));
        // Running time is not a stall.
        std::thread::sleep(Duration::from_millis(200));
        assert!(c.stalled_now() - c.stalled_seen() == 0);
    }

    #[tokio::test]
    async fn a_sleep_owes_the_stall_that_happened_during_it() {
        let c = ActiveClock::new();
        let timer = ActiveTimer(c.clone());
        let mut s = hyper::rt::Timer::sleep(&timer, Duration::from_millis(50));
        // Pretend the process stalled for 300 ms while the sleep was armed.
        c.stalled
            .fetch_add(nanos(Duration::from_millis(300)), Ordering::AcqRel);
        let start = Instant::now();
        s.as_mut().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(330), "{took:?}");
        // And a reset re-arms in place, counting from the reset.
        let mut s = hyper::rt::Timer::sleep(&timer, Duration::from_secs(60));
        hyper::rt::Timer::reset(&timer, &mut s, Instant::now() + Duration::from_millis(20));
        tokio::time::timeout(Duration::from_secs(5), s.as_mut())
            .await
            .expect("the reset deadline holds");
    }
}
