//! Leases (`rate_limit.mode: lease`): fewer Redis round trips for hot callers, bending
//! exactness in one direction only.
//!
//! A replica takes a slice of a caller's bucket (and daily quota) from Redis in the call that
//! decides a request, then spends the rest of the slice locally, request by request, with no
//! further call until it is spent or `lease_ttl` has passed. What is left of an expired slice is
//! given back to Redis in the next call for that caller.
//!
//! One slice is taken at a time per caller: concurrent requests that find no units wait for it
//! (at most one Redis call's time). When a lease runs below half a slice, the request
//! that notices takes the next slice in the background, so steady traffic waits for nothing.
//!
//! The bound, documented in docs/fleet.md and tested in tests/fleet.rs: every unit admitted was
//! first taken from the shared bucket, so the fleet never admits more than exact mode would
//! (no over-admission). What bends is fairness: a replica can be refused while others still hold
//! unspent units, at most a slice and a half per other replica and caller; a slice is only
//! taken where the bucket has room for it (near the limit the grant shrinks to the exact cost).

use super::redis::Giveback;
use super::{Decision, LimitKey, Limits};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `rate_limit.mode: lease`, compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Units taken per call (`rate_limit.lease_slice`).
    pub slice: u32,
    /// How long a replica may spend a slice (`rate_limit.lease_ttl`).
    pub ttl: Duration,
}

impl LeaseSettings {
    /// Whether limits are large enough for leases: a bucket of at least four slices, so that
    /// slices held by other replicas cannot strand most of it.
    pub fn applies_to(&self, limits: &Limits) -> bool {
        limits.burst >= self.slice.saturating_mul(4)
            && limits.daily.is_none_or(|d| d >= u64::from(self.slice) * 4)
    }
}

/// A slice held by this replica.
struct Lease {
    /// Units left to spend.
    units: u32,
    /// Spend no more after this.
    expires: Instant,
    /// The limits it was taken under (a reload that changes them ends it).
    limits: Limits,
    /// The shared bucket as the taking call left it (for the headers).
    shared: Decision,
    /// The UTC day its units were counted on.
    day: u32,
}

/// This replica's leases, by caller and policy.
#[derive(Default)]
pub struct Leases {
    map: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    leases: HashMap<LimitKey, Lease>,
    /// Keys with a slice being taken right now, and how to wake the requests that wait for
    /// it: one slice at a time per key, so that a burst of concurrent requests for one caller
    /// cannot take many slices (and strand them); the others wait for it (briefly) and spend
    /// from it.
    taking: HashMap<LimitKey, std::sync::Arc<tokio::sync::Notify>>,
}

/// What spending from a lease found.
pub enum Spent {
    /// Allowed from the lease: the decision to answer with; `top_up`: the lease runs low and
    /// this request should take the next slice in the background (call [`Leases::taken`]
    /// after), so that the requests after it find units and wait for nobody.
    Allowed(Decision, bool),
    /// No usable lease: ask Redis, giving back these units first (of an expired or short one).
    AskRedis {
        /// What the old lease had left.
        giveback: Giveback,
        /// Take a slice in this call (no other request of this replica is taking one for the
        /// key): call [`Leases::taken`] after it. `false`: decide this request exactly.
        take_slice: bool,
    },
    /// Another request of this replica is taking a slice for the key: wait for it, then spend
    /// again.
    Wait(std::sync::Arc<tokio::sync::Notify>),
}

impl Leases {
    /// Spend `cost` units of `key`'s lease, if it has them and is still valid.
    pub fn spend(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        slice: u32,
        now: Instant,
    ) -> Spent {
        let mut table = self.map.lock();
        let table = &mut *table;
        let Some(lease) = table.leases.get_mut(key) else {
            return wait_or_take(&mut table.taking, key);
        };
        let valid = lease.expires > now && lease.limits == *limits;
        if valid && lease.units >= cost {
            lease.units -= cost;
            let mut d = lease.shared;
            d.burst_remaining += u64::from(lease.units);
            d.daily_remaining = d.daily_remaining.map(|r| r + u64::from(lease.units));
            // Below half a slice, one request takes the next slice meanwhile (early enough that
            // the requests in flight rarely find the lease empty and have to wait).
            let top_up = lease.units < slice / 2 && !table.taking.contains_key(key);
            if top_up {
                table.taking.insert(key.clone(), Default::default());
            }
            return Spent::Allowed(d, top_up);
        }
        if valid {
            // Short of units: what is left stays in the lease, the grant is added to it.
            return wait_or_take(&mut table.taking, key);
        }
        // Expired, or taken under other limits (a reload): what is left goes back.
        let giveback = Giveback {
            units: lease.units,
            day: lease.day,
        };
        table.leases.remove(key);
        let take_slice = !table.taking.contains_key(key);
        if take_slice {
            table.taking.insert(key.clone(), Default::default());
        }
        Spent::AskRedis {
            giveback,
            take_slice,
        }
    }

    /// The slice call for `key` is over (granted or not): wake the requests waiting for it.
    pub fn taken(&self, key: &LimitKey) {
        if let Some(n) = self.map.lock().taking.remove(key) {
            n.notify_waiters();
        }
    }

    /// Keep `units` (granted beyond the request's cost, counted on UTC `day`) to spend until
    /// `now + ttl`. Units already held for `key` (another request's concurrent grant) are kept
    /// too.
    #[allow(clippy::too_many_arguments)]
    pub fn keep(
        &self,
        key: &LimitKey,
        limits: &Limits,
        units: u32,
        shared: Decision,
        day: u32,
        now: Instant,
        ttl: Duration,
    ) {
        if units == 0 {
            return;
        }
        let mut table = self.map.lock();
        let lease = table.leases.entry(key.clone()).or_insert(Lease {
            units: 0,
            expires: now + ttl,
            limits: *limits,
            shared,
            day,
        });
        // Units of another day are given up rather than mixed in (they would go back to the
        // wrong day's count).
        if lease.day != day {
            lease.units = 0;
            lease.day = day;
        }
        lease.units += units;
        lease.expires = now + ttl;
        lease.limits = *limits;
        lease.shared = shared;
    }

    /// Forget leases expired for longer than `grace` (their units are not returned: a caller
    /// that went quiet lost at most one slice per replica). Returns how many were dropped.
    pub fn sweep(&self, now: Instant, grace: Duration) -> usize {
        let mut table = self.map.lock();
        let before = table.leases.len();
        table.leases.retain(|_, l| l.expires + grace > now);
        before - table.leases.len()
    }

    /// Leases held.
    pub fn len(&self) -> usize {
        self.map.lock().leases.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// No usable units for `key`: wait for the slice another request is taking, or take one.
fn wait_or_take(
    taking: &mut HashMap<LimitKey, std::sync::Arc<tokio::sync::Notify>>,
    key: &LimitKey,
) -> Spent {
    if let Some(n) = taking.get(key) {
        return Spent::Wait(n.clone());
    }
    taking.insert(key.clone(), Default::default());
    Spent::AskRedis {
        giveback: Giveback::NONE,
        take_slice: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = 20_429;

    fn decision() -> Decision {
        Decision {
            allowed: true,
            refused_by: None,
            burst_remaining: 100,
            burst_reset_secs: 1,
            daily_remaining: None,
            daily_reset_secs: 10,
            retry_after_secs: 0,
        }
    }

    #[test]
    fn a_lease_is_spent_then_given_back_when_it_runs_short_or_expires() {
        let leases = Leases::default();
        let key = LimitKey::new("t:acme", "tier");
        let limits = Limits {
            rps: 100.0,
            burst: 400,
            daily: None,
        };
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let asks = |spent: Spent| match spent {
            Spent::AskRedis {
                giveback,
                take_slice,
            } => {
                // One slice at a time per key: a second request meanwhile waits, or decides
                // exactly when a remainder is being given back.
                assert!(take_slice);
                assert!(matches!(
                    leases.spend(&key, &limits, 1, 0, t0),
                    Spent::Wait(_)
                        | Spent::AskRedis {
                            take_slice: false,
                            ..
                        }
                ));
                leases.taken(&key);
                giveback
            }
            Spent::Allowed(..) | Spent::Wait(_) => panic!("expected a call to Redis"),
        };
        assert_eq!(asks(leases.spend(&key, &limits, 1, 0, t0)), Giveback::NONE);
        leases.keep(&key, &limits, 3, decision(), DAY, t0, ttl);
        for left in [2, 1, 0] {
            match leases.spend(&key, &limits, 1, 0, t0) {
                Spent::Allowed(d, _) => assert_eq!(d.burst_remaining, 100 + left),
                Spent::AskRedis { .. } | Spent::Wait(_) => panic!("the lease had units"),
            }
        }
        // Spent but still valid: a new slice is taken, nothing to give back.
        assert_eq!(asks(leases.spend(&key, &limits, 1, 0, t0)), Giveback::NONE);
        // Expired with units left: they go back, with the day they were counted on.
        let five = Giveback { units: 5, day: DAY };
        leases.keep(&key, &limits, 5, decision(), DAY, t0, ttl);
        assert_eq!(asks(leases.spend(&key, &limits, 1, 0, t0 + ttl)), five);
        // New limits (a reload) end a lease too.
        leases.keep(&key, &limits, 5, decision(), DAY, t0, ttl);
        let other = Limits {
            burst: 800,
            ..limits
        };
        assert_eq!(asks(leases.spend(&key, &other, 1, 0, t0)), five);
        // A grant of another day replaces what is left of the old one.
        leases.keep(&key, &limits, 5, decision(), DAY, t0, ttl);
        leases.keep(&key, &limits, 2, decision(), DAY + 1, t0, ttl);
        let mut spent = 0;
        while let Spent::Allowed(..) = leases.spend(&key, &limits, 1, 0, t0) {
            spent += 1;
        }
        assert_eq!(spent, 2);

        // Below half the slice, one request (only one) is asked to top up.
        leases.taken(&key); // (the loop's last spend asked for a slice)
        leases.keep(&key, &limits, 55, decision(), DAY, t0, ttl);
        let mut top_ups = Vec::new();
        for _ in 0..55 {
            if let Spent::Allowed(_, top_up) = leases.spend(&key, &limits, 1, 100, t0) {
                top_ups.push(top_up);
            }
        }
        assert_eq!(top_ups.len(), 55);
        assert_eq!(top_ups.iter().filter(|t| **t).count(), 1);
        assert!(
            top_ups[5],
            "the spend that left 49 (< 50) units asks for the top-up"
        );
    }

    #[test]
    fn leases_apply_to_buckets_of_four_slices_or_more() {
        let s = LeaseSettings {
            slice: 50,
            ttl: Duration::from_secs(1),
        };
        assert!(s.applies_to(&Limits {
            rps: 100.0,
            burst: 200,
            daily: None
        }));
        assert!(!s.applies_to(&Limits {
            rps: 100.0,
            burst: 199,
            daily: None
        }));
        assert!(!s.applies_to(&Limits {
            rps: 100.0,
            burst: 1000,
            daily: Some(100)
        }));
    }
}
