//! Where a decision is taken: the async seam between the proxy and the stores.
//!
//! [`Limiter::check`] decides in this process ([`LocalLimiter`]) or in Redis
//! ([`RedisLimiter`]) as the running config's [`StorePolicy`] says, and, when Redis fails,
//! falls back as `rate_limit.on_store_error` says. The local path stays what it was: a plain
//! call with no allocation and no await point; only the Redis path waits.

use super::lease::{LeaseSettings, Leases, Spent};
use super::redis::RedisLimiter;
use super::{Decision, LimitKey, Limits, LocalLimiter, Policy, RateLimiter};
use crate::config::model::{LimitMode, LimitStore, OnStoreError, RateLimitConfig};
use crate::fleet::Link;
use crate::observe::metrics;
use std::sync::Arc;

/// `rate_limit.store` and `rate_limit.on_store_error`, compiled (reloadable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorePolicy {
    /// Decide in Redis (`true`) or in this process.
    pub shared: bool,
    /// What decides when Redis cannot.
    pub on_error: Fallback,
    /// `mode: lease`: slices of shared buckets spent locally.
    pub lease: Option<LeaseSettings>,
}

/// What decides when Redis cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// This process, with this replica's share of each limit (`limit / fleet size`).
    Local,
    /// Nobody: the request passes.
    Allow,
    /// Nobody: the request is refused (429).
    Deny,
}

impl StorePolicy {
    /// Compile `rate_limit:`.
    pub fn new(c: &RateLimitConfig) -> StorePolicy {
        StorePolicy {
            shared: c.store == LimitStore::Redis,
            on_error: match c.on_store_error {
                OnStoreError::Local => Fallback::Local,
                OnStoreError::Allow => Fallback::Allow,
                OnStoreError::Deny => Fallback::Deny,
            },
            lease: (c.mode == LimitMode::Lease).then_some(LeaseSettings {
                slice: c.lease_slice,
                ttl: c.lease_ttl.0,
            }),
        }
    }
}

/// Which store took a decision: the `store` label of
/// `tollgate_ratelimit_store_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Store {
    /// This process (`store: local`).
    Local,
    /// Redis, for the whole fleet.
    Redis,
    /// A slice leased from Redis, spent in this process (`mode: lease`).
    RedisLease,
    /// This process with this replica's share, because Redis failed.
    LocalFallback,
    /// Let through because Redis failed (`on_store_error: allow`).
    AllowFallback,
    /// Refused because Redis failed (`on_store_error: deny`).
    DenyFallback,
}

/// The decision counters, one per store, looked up once: counting a decision is then one
/// atomic add, not a label lookup (the local path stays as cheap as before the seam).
static DECISIONS: once_cell::sync::Lazy<[prometheus::IntCounter; 6]> =
    once_cell::sync::Lazy::new(|| {
        Store::ALL.map(|s| metrics::RATELIMIT_STORE_DECISIONS_TOTAL.with_label_values(&[s.name()]))
    });

impl Store {
    /// Every store, in discriminant order.
    pub const ALL: [Store; 6] = [
        Store::Local,
        Store::Redis,
        Store::RedisLease,
        Store::LocalFallback,
        Store::AllowFallback,
        Store::DenyFallback,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Store::Local => "local",
            Store::Redis => "redis",
            Store::RedisLease => "redis_lease",
            Store::LocalFallback => "local_fallback",
            Store::AllowFallback => "allow_fallback",
            Store::DenyFallback => "deny_fallback",
        }
    }
}

/// The process' limiter: the local store always, the Redis store when `redis:` is configured.
pub struct Limiter {
    local: Arc<LocalLimiter>,
    redis: Option<Arc<RedisLimiter>>,
    leases: Arc<Leases>,
    tokens: super::tokens::TokenBudgets,
}

impl Limiter {
    /// A limiter over `local`, and over Redis through `link` when there is one.
    pub fn new(local: Arc<LocalLimiter>, link: Option<Arc<Link>>) -> Self {
        // Every store's series exists from the start (at 0), so a rule on a ratio never sees
        // a missing series.
        once_cell::sync::Lazy::force(&DECISIONS);
        Limiter {
            local,
            tokens: super::tokens::TokenBudgets::new(link.clone()),
            redis: link.map(|l| Arc::new(RedisLimiter::new(l))),
            leases: Arc::default(),
        }
    }

    /// The LLM token budgets (kept where the request limits are: locally, or in Redis).
    pub fn tokens(&self) -> &super::tokens::TokenBudgets {
        &self.tokens
    }

    /// The in-process store.
    pub fn local(&self) -> &Arc<LocalLimiter> {
        &self.local
    }

    /// The Redis store, when `redis:` is configured.
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.redis.as_deref()
    }

    /// Check-and-consume `cost` units for `key` under `limits`, in the store `policy` names.
    pub async fn check(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        policy: StorePolicy,
    ) -> (Decision, Store) {
        let (decision, store) = if policy.shared {
            self.check_shared(key, limits, cost, policy, "ratelimit")
                .await
        } else {
            let now = super::unix_nanos_now();
            (self.local.check(key, limits, cost, now), Store::Local)
        };
        DECISIONS[store as usize].inc();
        (decision, store)
    }

    /// The state of `key` without consuming anything (cost 0), for `explain --live` and the
    /// admin endpoint. Not counted in the decision metrics.
    pub async fn peek(
        &self,
        key: &LimitKey,
        limits: &Limits,
        policy: StorePolicy,
    ) -> (Decision, Store) {
        if policy.shared {
            // Cost 0 never leases: it reads the shared bucket itself.
            self.check_shared(key, limits, 0, policy, "peek").await
        } else {
            let now = super::unix_nanos_now();
            (self.local.check(key, limits, 0, now), Store::Local)
        }
    }

    async fn check_shared(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        policy: StorePolicy,
        op: &'static str,
    ) -> (Decision, Store) {
        let Some(redis) = &self.redis else {
            // `store: redis` with no Redis at start (added by a reload): a restart connects it.
            return self.fallback(key, limits, cost, policy.on_error, 1);
        };
        let lease = policy.lease.filter(|l| l.applies_to(limits) && cost > 0);
        if redis.link().available() {
            let result = match lease {
                None => redis
                    .check(key, limits, cost, op)
                    .await
                    .map(|d| (d, Store::Redis)),
                Some(lease) => self.check_leased(redis, key, limits, cost, lease).await,
            };
            if let Ok(answer) = result {
                return answer;
            }
        }
        self.fallback(
            key,
            limits,
            cost,
            policy.on_error,
            redis.link().fleet_size(),
        )
    }

    /// `mode: lease`: spend from this replica's slice, or take a new slice in the call that
    /// decides this request (giving back what an expired one left).
    async fn check_leased(
        &self,
        redis: &Arc<RedisLimiter>,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        lease: LeaseSettings,
    ) -> Result<(Decision, Store), crate::fleet::StoreError> {
        let now = std::time::Instant::now();
        // Wait (at most one Redis call's time in all) while another request of this replica
        // takes a slice for the key, then spend from it; a herd larger than the slice waits
        // for the next one. `enable` registers before the re-check, so no wake is lost.
        let deadline = now + redis.link().settings().command_timeout;
        let spent = loop {
            let taking =
                match self
                    .leases
                    .spend(key, limits, cost, lease.slice, std::time::Instant::now())
                {
                    Spent::Wait(taking) => taking,
                    other => break other,
                };
            let notified = taking.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .leases
                .spend(key, limits, cost, lease.slice, std::time::Instant::now())
            {
                Spent::Wait(_) => {}
                other => break other,
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                break Spent::Wait(taking.clone());
            }
        };
        let (giveback, take_slice) = match spent {
            Spent::Allowed(d, top_up) => {
                if top_up {
                    self.top_up(redis, key, limits, lease);
                }
                return Ok((d, Store::RedisLease));
            }
            Spent::AskRedis {
                giveback,
                take_slice,
            } => (giveback, take_slice),
            // Still being taken after a call's time: decide this one exactly.
            Spent::Wait(_) => (super::redis::Giveback::NONE, false),
        };
        let want = if take_slice {
            lease.slice.max(cost)
        } else {
            cost
        };
        let taken = redis
            .take(key, limits, cost, want, giveback, "ratelimit")
            .await;
        if take_slice {
            self.leases.taken(key);
        }
        let taken = taken?;
        let decision = taken.decision;
        if decision.allowed {
            let extra = taken.grant.saturating_sub(cost);
            self.leases
                .keep(key, limits, extra, decision, taken.day, now, lease.ttl);
        }
        Ok((decision, Store::Redis))
    }

    /// Take the next slice for `key` in the background (cost 0: only the grant), adding it
    /// to the lease that runs low; the request that asked is answered meanwhile.
    fn top_up(
        &self,
        redis: &Arc<RedisLimiter>,
        key: &LimitKey,
        limits: &Limits,
        lease: LeaseSettings,
    ) {
        let (redis, leases, key, limits) =
            (redis.clone(), self.leases.clone(), key.clone(), *limits);
        tokio::spawn(async move {
            let now = std::time::Instant::now();
            let taken = redis
                .take(
                    &key,
                    &limits,
                    0,
                    lease.slice,
                    super::redis::Giveback::NONE,
                    "ratelimit",
                )
                .await;
            if let Ok(t) = taken {
                leases.keep(&key, &limits, t.grant, t.decision, t.day, now, lease.ttl);
            }
            leases.taken(&key);
        });
    }

    /// Drop leases expired long ago (called by the periodic sweeper).
    pub fn sweep_leases(&self) -> usize {
        self.leases.sweep(
            std::time::Instant::now(),
            std::time::Duration::from_secs(10),
        )
    }

    fn fallback(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        on_error: Fallback,
        fleet_size: u32,
    ) -> (Decision, Store) {
        let now = super::unix_nanos_now();
        match on_error {
            Fallback::Local => {
                let share = limits.share(fleet_size);
                (
                    self.local.check(key, &share, cost, now),
                    Store::LocalFallback,
                )
            }
            Fallback::Allow => (unlimited(limits), Store::AllowFallback),
            Fallback::Deny => (refused(limits), Store::DenyFallback),
        }
    }
}

/// What `on_store_error: allow` answers: allowed, the limits shown as untouched.
fn unlimited(limits: &Limits) -> Decision {
    Decision {
        allowed: true,
        refused_by: None,
        burst_remaining: u64::from(limits.burst),
        burst_reset_secs: 0,
        daily_remaining: limits.daily,
        daily_reset_secs: 1,
        retry_after_secs: 0,
    }
}

/// What `on_store_error: deny` answers: refused by the burst limit, retry in a second.
fn refused(limits: &Limits) -> Decision {
    Decision {
        allowed: false,
        refused_by: Some(Policy::Burst),
        burst_remaining: 0,
        burst_reset_secs: 1,
        daily_remaining: limits.daily,
        daily_reset_secs: 1,
        retry_after_secs: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_counts_under_its_own_label() {
        for (i, s) in Store::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
        }
    }

    /// The seam on the local store: an `async fn` that never waits, so polling it once
    /// completes it (no executor round trip on the local path).
    #[test]
    fn the_local_path_completes_without_waiting() {
        use futures_util::FutureExt;
        let limiter = Limiter::new(Arc::new(LocalLimiter::new(0)), None);
        let policy = StorePolicy {
            shared: false,
            on_error: Fallback::Local,
            lease: None,
        };
        let key = LimitKey::new("t:acme", "tier");
        let limits = Limits {
            rps: 10.0,
            burst: 2,
            daily: None,
        };
        for allowed in [true, true, false] {
            let (d, store) = limiter
                .check(&key, &limits, 1, policy)
                .now_or_never()
                .expect("ready at once");
            assert_eq!((d.allowed, store), (allowed, Store::Local));
        }
    }
}
