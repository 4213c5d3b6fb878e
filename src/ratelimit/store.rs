//! Where a decision is taken: the async seam between the proxy and the stores.
//!
//! [`Limiter::check`] decides in this process ([`LocalLimiter`]) or in Redis
//! ([`RedisLimiter`]) as the running config's [`StorePolicy`] says, and, when Redis fails,
//! falls back as `rate_limit.on_store_error` says. The local path stays what it was: a plain
//! call with no allocation and no await point; only the Redis path waits.

use super::redis::RedisLimiter;
use super::{Decision, LimitKey, Limits, LocalLimiter, Policy, RateLimiter};
use crate::config::model::{LimitStore, OnStoreError, RateLimitConfig};
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
        }
    }
}

/// Which store took a decision: the `store` label of
/// `tollgate_ratelimit_store_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// This process (`store: local`).
    Local,
    /// Redis, for the whole fleet.
    Redis,
    /// This process with this replica's share, because Redis failed.
    LocalFallback,
    /// Let through because Redis failed (`on_store_error: allow`).
    AllowFallback,
    /// Refused because Redis failed (`on_store_error: deny`).
    DenyFallback,
}

impl Store {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Store::Local => "local",
            Store::Redis => "redis",
            Store::LocalFallback => "local_fallback",
            Store::AllowFallback => "allow_fallback",
            Store::DenyFallback => "deny_fallback",
        }
    }
}

/// The process' limiter: the local store always, the Redis store when `redis:` is configured.
pub struct Limiter {
    local: Arc<LocalLimiter>,
    redis: Option<RedisLimiter>,
}

impl Limiter {
    /// A limiter over `local`, and over Redis through `link` when there is one.
    pub fn new(local: Arc<LocalLimiter>, link: Option<Arc<Link>>) -> Self {
        Limiter {
            local,
            redis: link.map(RedisLimiter::new),
        }
    }

    /// The in-process store.
    pub fn local(&self) -> &Arc<LocalLimiter> {
        &self.local
    }

    /// The Redis store, when `redis:` is configured.
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.redis.as_ref()
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
            self.check_shared(key, limits, cost, policy.on_error, "ratelimit")
                .await
        } else {
            let now = super::unix_nanos_now();
            (self.local.check(key, limits, cost, now), Store::Local)
        };
        metrics::RATELIMIT_STORE_DECISIONS_TOTAL
            .with_label_values(&[store.name()])
            .inc();
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
            self.check_shared(key, limits, 0, policy.on_error, "peek")
                .await
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
        on_error: Fallback,
        op: &'static str,
    ) -> (Decision, Store) {
        let Some(redis) = &self.redis else {
            // `store: redis` with no Redis at start (added by a reload): a restart connects it.
            return self.fallback(key, limits, cost, on_error, 1);
        };
        if redis.link().available() {
            if let Ok(d) = redis.check(key, limits, cost, op).await {
                return (d, Store::Redis);
            }
        }
        self.fallback(key, limits, cost, on_error, redis.link().fleet_size())
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
