//! The rate-limit decision: may this caller spend `cost` more units now, and if not, which limit
//! refused and for how long.
//!
//! Two limits apply to every policy: a burst bucket (GCRA: capacity `burst`, refilled at `rps`)
//! and an optional daily quota counted per UTC day. The decision sits behind [`RateLimiter`] so
//! the in-process [`LocalLimiter`] and a fleet-wide Redis limiter are interchangeable; both key
//! their state by [`LimitKey`] strings, never by config objects, so a reload keeps the counts.
//! [`headers`] turns a [`Decision`] into the IETF `RateLimit-Policy` / `RateLimit` fields.
//!
//! The clock is a parameter (`now_unix_nanos`): the proxy passes [`unix_nanos_now`], tests pass a
//! virtual time.

pub mod headers;
pub mod lease;
pub mod local;
pub mod redis;
pub mod store;
pub mod tokens;

pub use local::LocalLimiter;
pub use store::{Limiter, Store, StorePolicy};

use crate::config::model::{LimitsOverride, RouteRateLimitConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// Nanoseconds in one second.
pub(crate) const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Nanoseconds in one UTC day (Unix time has no leap seconds).
pub(crate) const NANOS_PER_DAY: u64 = 86_400 * NANOS_PER_SEC;

/// Limits of one policy (already resolved from tier + tenant overrides + route policy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Sustained rate: burst tokens refilled per second. `<= 0` (or NaN) refuses everything.
    pub rps: f64,
    /// Bucket capacity: requests of cost 1 that pass at once from idle. `0` refuses everything.
    pub burst: u32,
    /// Units per UTC day; `None` = unlimited.
    pub daily: Option<u64>,
}

impl Limits {
    /// These limits with an override's values put in (a tenant's or a route's).
    pub fn overridden(self, o: &LimitsOverride) -> Limits {
        Limits {
            rps: o.rps.unwrap_or(self.rps),
            burst: o.burst.unwrap_or(self.burst),
            daily: o.daily.map_or(self.daily, |d| d.get()),
        }
    }
}

impl Limits {
    /// One replica's share of these limits in a fleet of `n`: each limit divided by `n`
    /// (rounded down, so the fleet never admits more than the limit), at least 1 of each.
    pub fn share(self, n: u32) -> Limits {
        if n <= 1 {
            return self;
        }
        Limits {
            rps: self.rps / f64::from(n),
            burst: (self.burst / n).max(1.min(self.burst)),
            daily: self.daily.map(|d| (d / u64::from(n)).max(1.min(d))),
        }
    }
}

/// A route's rate-limit policy, compiled from its `rate_limit:`.
#[derive(Debug)]
pub struct RouteLimit {
    /// Units one request costs.
    pub cost: u32,
    /// Never refuse on this route.
    pub shadow: bool,
    /// Limiter scope for route-specific tier policies: `route:<name>`.
    pub scope: Arc<str>,
    /// Route-specific limits by tier name (tiers not listed use the caller's own limits).
    pub tiers: HashMap<Arc<str>, Limits>,
}

impl RouteLimit {
    /// Compile route `name`'s validated `rate_limit:` (absent: the defaults); `tier_limits`
    /// gives a tier's own limits by name. `None`: the route is not limited.
    pub fn new(
        name: &str,
        c: Option<&RouteRateLimitConfig>,
        tier_limits: impl Fn(&str) -> Limits,
    ) -> Option<RouteLimit> {
        if c.is_some_and(|c| !c.enabled) {
            return None;
        }
        Some(RouteLimit {
            cost: c.map_or(1, |c| c.cost),
            shadow: c.is_some_and(|c| c.shadow),
            scope: format!("route:{name}").into(),
            tiers: c
                .map(|c| {
                    c.tiers
                        .iter()
                        .map(|(t, o)| (Arc::from(t.as_str()), tier_limits(t).overridden(o)))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Limiter scope of a tier's own buckets (shared by all routes).
pub const TIER_SCOPE: &str = "tier";

/// Which limit decided a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The burst bucket (short-term rate).
    Burst,
    /// The daily quota.
    Daily,
}

impl Policy {
    /// The policy name used in headers, logs and metric labels: `"burst"` or `"daily"`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Burst => "burst",
            Policy::Daily => "daily",
        }
    }
}

/// State key: who (tenant id, or `ip:1.2.3.4` for anonymous callers) and which policy scope
/// (e.g. "tier" for the tier's own buckets, "route:chat" for a route-specific policy).
/// Keyed by these strings, never by a config object, so a reload keeps counts and a future Redis
/// limiter can use the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// Who is calling: tenant id, or `ip:<addr>` for anonymous callers.
    pub subject: Arc<str>,
    /// Which policy's buckets: `tier`, `route:<name>`, ...
    pub scope: Arc<str>,
}

impl LimitKey {
    /// A key from its two parts. Pass shared `Arc`s (a tenant's id, a compiled scope name) to
    /// keep the per-request cost at two reference-count increments.
    pub fn new(subject: impl Into<Arc<str>>, scope: impl Into<Arc<str>>) -> Self {
        LimitKey {
            subject: subject.into(),
            scope: scope.into(),
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed (its cost has then been consumed).
    pub allowed: bool,
    /// Set when refused: which limit refused.
    pub refused_by: Option<Policy>,
    /// Whole requests (of cost 1) still available in the burst bucket after this decision.
    pub burst_remaining: u64,
    /// Seconds until the burst bucket is full again (0 if full), rounded up.
    pub burst_reset_secs: u64,
    /// Daily quota left after this decision (None when unlimited).
    pub daily_remaining: Option<u64>,
    /// Seconds until the next UTC midnight (when the daily quota resets), >= 1.
    pub daily_reset_secs: u64,
    /// When refused: seconds the client should wait before retrying (>= 1). Burst: time until
    /// `cost` tokens are available, rounded up. Daily: seconds to the next UTC midnight.
    /// 0 when allowed.
    pub retry_after_secs: u64,
}

/// The decision, behind one small trait so a Redis-backed limiter can replace the local one.
pub trait RateLimiter: Send + Sync {
    /// Check-and-consume `cost` units for `key` under `limits` at wall-clock time `now_unix_nanos`
    /// (nanoseconds since the Unix epoch; callers pass the clock, tests control it).
    /// A request refused by either limit consumes nothing from either.
    fn check(&self, key: &LimitKey, limits: &Limits, cost: u32, now_unix_nanos: u64) -> Decision;
}

/// The wall clock as the limiter wants it: nanoseconds since the Unix epoch (0 if the system
/// clock reads before 1970).
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// Whole seconds in `nanos`, rounded up: a client told to wait "1" must not arrive early.
pub(crate) fn ceil_secs(nanos: u128) -> u64 {
    // The u64 path divides by a constant (a multiply); a u128 division is a slow library call.
    match u64::try_from(nanos) {
        Ok(n) => n.div_ceil(NANOS_PER_SEC),
        Err(_) => u64::try_from(nanos.div_ceil(u128::from(NANOS_PER_SEC))).unwrap_or(u64::MAX),
    }
}
