//! Monotonic time for state that measures intervals (circuit breakers, Retry-After holds, retry
//! budgets): nanoseconds on a clock that never steps, so an NTP correction or an operator's
//! `date -s` cannot lengthen or cut short an open circuit.
//!
//! The values are process-local (nanoseconds since a point fixed at first use, plus one second
//! so that 0 stays free as "never" in atomics). Wall-clock time is still used where the meaning
//! is a calendar one: the rate limiter's UTC day, HTTP dates, log timestamps.

use once_cell::sync::Lazy;
use std::time::{Duration, Instant};

static ANCHOR: Lazy<Instant> = Lazy::new(Instant::now);

/// Offset so the first reading is not 0 (0 means "unset" in the breakers' atomics).
const START: u64 = 1_000_000_000;

/// Monotonic nanoseconds: only differences between two readings mean anything.
pub fn mono_nanos() -> u64 {
    START + ANCHOR.elapsed().as_nanos() as u64
}

/// `d` in nanoseconds, saturating (a `Duration` of centuries does not wrap).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_never_go_back_and_are_never_zero() {
        let a = mono_nanos();
        let b = mono_nanos();
        assert!(a >= START && b >= a);
    }
}
