//! Retry budget: retries may add at most a fraction of a group's requests (Envoy's retry
//! budgets, Finagle's `RetryBudget`), so a failing provider cannot multiply its own load.
//!
//! A token bucket in thousandths: each request deposits `ratio` tokens, each retry takes one;
//! `min_per_second` tokens also trickle in with time so a quiet group can still retry. The
//! bucket holds at most ten seconds' worth of the minimum plus 100 requests' deposits.

use std::sync::atomic::{AtomicU64, Ordering};

/// One group's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    deposit: u64,
    min_per_sec: u64,
    cap: u64,
    tokens: AtomicU64,
    last_refill: AtomicU64,
}

const ONE: u64 = 1000;

impl RetryBudget {
    /// Retries may add `ratio` (0..=1) of requests, and `min_per_second` per second anyway.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let deposit = (ratio.clamp(0.0, 1.0) * ONE as f64).round() as u64;
        let min_per_sec = u64::from(min_per_second) * ONE;
        let cap = (min_per_sec * 10 + deposit * 100).max(ONE);
        RetryBudget {
            deposit,
            min_per_sec,
            cap,
            // Start with the minimum's ten seconds, so the first failures can be retried.
            tokens: AtomicU64::new((min_per_sec * 10).min(cap)),
            last_refill: AtomicU64::new(0),
        }
    }

    fn add(&self, amount: u64) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + amount).min(self.cap))
            });
    }

    /// A request arrived for the group.
    pub fn deposit(&self) {
        if self.deposit > 0 {
            self.add(self.deposit);
        }
    }

    /// May a retry happen at `now` (monotonic nanoseconds)? Takes a token when it may.
    pub fn try_withdraw(&self, now: u64) -> bool {
        let last = self.last_refill.swap(now, Ordering::AcqRel);
        if last != 0 && now > last && self.min_per_sec > 0 {
            let earned = (now - last) as u128 * self.min_per_sec as u128 / 1_000_000_000;
            self.add(earned.min(self.cap as u128) as u64);
        }
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(ONE))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn retries_are_a_fraction_of_requests() {
        let b = RetryBudget::new(0.2, 0);
        let mut allowed = 0;
        for _ in 0..100 {
            b.deposit();
            if b.try_withdraw(S) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 20, "20% of 100 requests");
    }

    #[test]
    fn the_minimum_trickles_in_with_time() {
        let b = RetryBudget::new(0.0, 3);
        let first: usize = (0..100).filter(|_| b.try_withdraw(S)).count();
        assert_eq!(first, 30, "ten seconds of the minimum to start with");
        assert!(!b.try_withdraw(S));
        let later: usize = (0..100).filter(|_| b.try_withdraw(2 * S)).count();
        assert_eq!(later, 3, "three more after a second");
    }
}
