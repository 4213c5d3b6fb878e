//! Passive health per endpoint: a circuit breaker.
//!
//! `failures` consecutive failures (connection errors, timeouts) open the circuit for
//! `backoff`; while open, selection skips the endpoint. When the period ends, exactly one
//! request is let through as a probe (half-open): its success closes the circuit, its failure
//! opens it again for twice as long (up to `max_backoff`). Any success resets the count.
//! Lock-free (atomics), with time passed in so tests can drive it with a virtual clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The state of one endpoint's circuit, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// Skipped until the open period ends.
    Open,
    /// The open period ended; one probe request decides.
    HalfOpen,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    backoff: Duration,
    max_backoff: Duration,
    consecutive: AtomicU32,
    /// Times opened since the last success (the backoff doubles with each).
    opened: AtomicU32,
    /// Unix nanoseconds until which the circuit is open (0: closed).
    open_until: AtomicU64,
    /// When the half-open probe in flight started (monotonic nanoseconds, [`crate::clock`]; 0: none). A probe whose
    /// result never came back (the client went away first) stops counting after `backoff`.
    probing: AtomicU64,
}

impl Default for Breaker {
    /// A breaker that never opens.
    fn default() -> Self {
        Breaker::new(0, Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Breaker {
    /// Open after `failures` consecutive failures (0: never) for `backoff`, doubling up to
    /// `max_backoff`.
    pub fn new(failures: u32, backoff: Duration, max_backoff: Duration) -> Self {
        Breaker {
            failures_to_open: failures,
            backoff,
            max_backoff,
            consecutive: AtomicU32::new(0),
            opened: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicU64::new(0),
        }
    }

    /// Whether `other` opens and backs off exactly like this one (a reload may then keep the
    /// running breaker and its state).
    pub fn same_policy(&self, other: &Breaker) -> bool {
        self.failures_to_open == other.failures_to_open
            && self.backoff == other.backoff
            && self.max_backoff == other.max_backoff
    }

    /// The circuit's state at `now` (monotonic nanoseconds, [`crate::clock`]).
    pub fn state(&self, now: u64) -> State {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            State::Closed
        } else if now < until {
            State::Open
        } else {
            State::HalfOpen
        }
    }

    /// Whether a request may go to this endpoint at `now`. In half-open state only the first
    /// caller gets `true` (it becomes the probe) until the probe's result is recorded.
    pub fn allows(&self, now: u64) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                let started = self.probing.load(Ordering::Acquire);
                self.probe_free(started, now)
                    && self
                        .probing
                        .compare_exchange(started, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            }
        }
    }

    /// Whether [`Breaker::allows`] would say yes at `now`, without taking the probe.
    /// How long (ns) until an open circuit lets a probe through; 0 when it is not open (a
    /// half-open one being probed: as soon as the probe reports).
    pub fn open_for(&self, now: u64) -> u64 {
        self.open_until.load(Ordering::Acquire).saturating_sub(now)
    }

    pub fn would_allow(&self, now: u64) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.probe_free(self.probing.load(Ordering::Acquire), now),
        }
    }

    /// No probe in flight (`started` = 0), or the one in flight stopped counting.
    fn probe_free(&self, started: u64, now: u64) -> bool {
        started == 0 || now.saturating_sub(started) > self.backoff.as_nanos() as u64
    }

    /// A request succeeded: close the circuit and forget past failures.
    ///
    /// Called on every response: it only writes when there is something to reset, so the
    /// common case stays a few shared loads (no cache-line ping-pong between worker threads).
    /// Returns true when this closed an open (or half-open, or held) circuit.
    pub fn success(&self) -> bool {
        if self.consecutive.load(Ordering::Acquire) != 0 {
            self.consecutive.store(0, Ordering::Release);
        }
        if self.probing.load(Ordering::Acquire) != 0 {
            self.probing.store(0, Ordering::Release);
        }
        if self.open_until.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.opened.store(0, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Keep the circuit open until `until` (monotonic nanoseconds), without counting a failure:
    /// the endpoint asked for it (`Retry-After` on a 429 or 503).
    pub fn hold(&self, until: u64) {
        self.open_until.fetch_max(until, Ordering::AcqRel);
        self.probing.store(0, Ordering::Release);
    }

    /// A request failed at `now`. Returns true when this failure opened the circuit.
    pub fn failure(&self, now: u64) -> bool {
        if self.failures_to_open == 0 {
            return false;
        }
        let was_probe = self.probing.swap(0, Ordering::AcqRel) != 0;
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if was_probe || n >= self.failures_to_open {
            let times = self.opened.fetch_add(1, Ordering::AcqRel);
            let factor = 1u32.checked_shl(times.min(20)).unwrap_or(u32::MAX);
            let period = self.backoff.saturating_mul(factor).min(self.max_backoff);
            self.open_until
                .store(now + period.as_nanos() as u64, Ordering::Release);
            self.consecutive.store(0, Ordering::Release);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(4));
        assert!(!b.failure(0));
        b.success();
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        assert!(b.failure(0), "third consecutive failure opens");
        assert_eq!(b.state(S / 2), State::Open);
        assert!(!b.allows(S / 2));
        assert_eq!(b.state(S), State::HalfOpen);
        assert!(
            b.would_allow(S) && b.would_allow(S),
            "asking takes no probe"
        );
        assert!(b.allows(S), "one probe");
        assert!(!b.allows(S), "only one probe at a time");
        assert!(!b.would_allow(S));
        // The probe fails: open again, twice as long.
        assert!(b.failure(S));
        assert_eq!(b.state(2 * S + S / 2), State::Open);
        assert_eq!(b.state(3 * S), State::HalfOpen);
        assert!(b.allows(3 * S));
        assert!(b.failure(3 * S));
        // Capped at max_backoff (4 s).
        assert_eq!(b.state(3 * S + 4 * S - 1), State::Open);
        assert!(b.allows(7 * S));
        b.success();
        assert_eq!(b.state(7 * S), State::Closed);
        assert!(b.allows(7 * S) && b.allows(7 * S));
        // After a success the backoff starts over.
        for _ in 0..3 {
            b.failure(8 * S);
        }
        assert_eq!(b.state(9 * S), State::HalfOpen);
    }

    #[test]
    fn a_probe_that_never_reports_back_expires() {
        let b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(1));
        assert!(b.failure(0));
        assert!(b.allows(S), "probe");
        assert!(!b.allows(S + S / 2), "probe in flight");
        assert!(
            b.allows(2 * S + 1),
            "the lost probe stops counting after the backoff"
        );
    }

    #[test]
    fn zero_failures_never_opens() {
        let b = Breaker::default();
        for _ in 0..100 {
            assert!(!b.failure(0));
        }
        assert!(b.allows(0));
    }
}
