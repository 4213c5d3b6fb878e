//! Token budgets: how many LLM tokens a caller may spend per minute and per UTC day
//! (`tokens_per_minute`, `tokens_per_day` of a tier or tenant), on routes with `tokens:`.
//!
//! Requests per second are the wrong unit for a model API (one request costs 50 tokens or
//! 50,000), and the cost is known only once the answer has been read. So budgets are
//! **post-paid**: a request passes while the caller has tokens left, and the usage its answer
//! reports is debited afterwards, in full, even past zero. A caller in debt is refused (`429`,
//! `policy: tokens`) until the minute bucket has refilled above zero, or until the next UTC
//! day for the daily budget.
//!
//! - The minute budget is a bucket of `tokens_per_minute` refilled continuously over a minute,
//!   kept as a theoretical arrival time (`tat`, the GCRA form of the request limiter): the
//!   bucket is empty `tat - now` ahead of "full".
//! - The daily budget counts the tokens of the current UTC day.
//! - Both stores keep the same [`State`] and decide with the same [`decide`]: the local one in
//!   a sharded map, the fleet's in Redis ([`SCRIPT`], Redis' clock), so every replica debits
//!   one budget.

use super::{ceil_secs, NANOS_PER_DAY, NANOS_PER_SEC};
use crate::fleet::{Link, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// A caller's token budgets (after tenant overrides); `None`: no such budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// Tokens per minute (bucket size, refilled over a minute).
    pub per_minute: Option<u64>,
    /// Tokens per UTC day.
    pub per_day: Option<u64>,
}

impl TokenLimits {
    /// Whether any budget applies.
    pub fn any(&self) -> bool {
        self.per_minute.is_some() || self.per_day.is_some()
    }

    /// Microseconds one token takes to refill (the minute bucket).
    fn interval_us(&self) -> Option<f64> {
        self.per_minute
            .filter(|q| *q > 0)
            .map(|q| 60_000_000.0 / q as f64)
    }
}

/// One caller's budget state, the same in both stores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct State {
    /// Microseconds since the epoch at which the minute bucket is full again (0: full).
    pub tat_us: f64,
    /// The UTC day (days since the epoch) `used` counts.
    pub day: u64,
    /// Tokens debited on `day`.
    pub used: u64,
}

/// Which budget refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// `tokens_per_minute`.
    Minute,
    /// `tokens_per_day`.
    Day,
}

/// What the budgets say of a caller now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenDecision {
    /// Whether a request may pass (it has tokens left in every budget).
    pub allowed: bool,
    /// Which budget is spent, when refused.
    pub refused_by: Option<TokenPolicy>,
    /// Tokens left in the minute bucket (0 in debt), when it applies.
    pub minute_remaining: Option<u64>,
    /// Seconds until the minute bucket is full.
    pub minute_reset_secs: u64,
    /// Tokens left today, when a daily budget applies.
    pub day_remaining: Option<u64>,
    /// Seconds until the next UTC midnight.
    pub day_reset_secs: u64,
    /// When refused: seconds until a request may pass again (>= 1).
    pub retry_after_secs: u64,
}

/// Refill (and roll the day over) to `now_us`, then debit `tokens`.
pub fn debit(state: &mut State, limits: &TokenLimits, tokens: u64, now_us: f64) {
    let today = (now_us / 86_400e6).floor() as u64;
    if state.day != today {
        state.day = today;
        state.used = 0;
    }
    if limits.per_day.is_some() {
        state.used = state.used.saturating_add(tokens);
    }
    if let Some(interval) = limits.interval_us() {
        state.tat_us = state.tat_us.max(now_us) + tokens as f64 * interval;
    }
}

/// What `state` allows at `now_us`.
pub fn decide(state: &State, limits: &TokenLimits, now_us: f64) -> TokenDecision {
    let now_ns = (now_us * 1000.0) as u64;
    let day_reset_secs = ceil_secs(u128::from(NANOS_PER_DAY - now_ns % NANOS_PER_DAY)).max(1);
    let today = now_ns / NANOS_PER_DAY;
    let used = if state.day == today { state.used } else { 0 };
    let mut d = TokenDecision {
        allowed: true,
        refused_by: None,
        minute_remaining: None,
        minute_reset_secs: 0,
        day_remaining: None,
        day_reset_secs,
        retry_after_secs: 0,
    };
    if let (Some(quota), Some(interval)) = (limits.per_minute, limits.interval_us()) {
        let ahead = (state.tat_us - now_us).max(0.0);
        let left = quota as f64 - ahead / interval;
        d.minute_remaining = Some(left.max(0.0).floor() as u64);
        d.minute_reset_secs = (ahead / 1e6).ceil() as u64;
        if left < 1.0 {
            // Until one whole token is back.
            let wait_us = ahead - (quota as f64 - 1.0) * interval;
            d.allowed = false;
            d.refused_by = Some(TokenPolicy::Minute);
            d.retry_after_secs = ((wait_us / 1e6).ceil() as u64).max(1);
        }
    } else if limits.per_minute == Some(0) {
        d.minute_remaining = Some(0);
        d.allowed = false;
        d.refused_by = Some(TokenPolicy::Minute);
        d.retry_after_secs = 60;
    }
    if let Some(quota) = limits.per_day {
        d.day_remaining = Some(quota.saturating_sub(used));
        if used >= quota {
            // The day's refusal outlasts the minute's: it is the one to report.
            d.allowed = false;
            d.refused_by = Some(TokenPolicy::Day);
            d.retry_after_secs = day_reset_secs;
        }
    }
    d
}

/// The wall clock in microseconds since the epoch.
fn now_us() -> f64 {
    super::unix_nanos_now() as f64 / (NANOS_PER_SEC / 1_000_000) as f64
}

/// Number of shards of the local store.
const SHARDS: usize = 16;

/// The in-process token budgets.
#[derive(Default)]
pub struct LocalTokens {
    /// foldhash (seeded per process), not SipHash: looked up twice per request.
    shards: [Mutex<HashMap<Arc<str>, State, foldhash::fast::RandomState>>; SHARDS],
}

impl LocalTokens {
    fn shard(
        &self,
        subject: &str,
    ) -> &Mutex<HashMap<Arc<str>, State, foldhash::fast::RandomState>> {
        let h = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h as usize) % SHARDS]
    }

    /// What `subject`'s budgets allow now.
    pub fn check(&self, subject: &Arc<str>, limits: &TokenLimits, now_us: f64) -> TokenDecision {
        let state = self
            .shard(subject)
            .lock()
            .get(subject)
            .copied()
            .unwrap_or_default();
        decide(&state, limits, now_us)
    }

    /// Debit `tokens` from `subject`'s budgets.
    pub fn debit(&self, subject: &Arc<str>, limits: &TokenLimits, tokens: u64, now_us: f64) {
        let mut shard = self.shard(subject).lock();
        let state = shard.entry(subject.clone()).or_default();
        debit(state, limits, tokens, now_us);
    }

    /// Forget callers whose budgets are whole again (full bucket, a past day).
    pub fn sweep(&self, now_us: f64) {
        let today = (now_us / 86_400e6).floor() as u64;
        for shard in &self.shards {
            shard
                .lock()
                .retain(|_, s| s.tat_us > now_us || (s.day == today && s.used > 0));
        }
    }

    /// Callers tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no caller is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fleet's token script. `KEYS[1]`: the caller's budget hash. `ARGV[1]`: microseconds per
/// token of the minute bucket (0: no minute budget), `ARGV[2]`: tokens to debit (0: only
/// read). Returns `{now_us, tat_us, day, used}` after the debit, as strings (Lua numbers
/// would be truncated to integers by the reply conversion).
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000000 + tonumber(t[2])
local today = math.floor(secs / 86400)
local interval = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 't', 'd', 'u')
local tat = tonumber(h[1]) or 0
local day = tonumber(h[2]) or today
local used = tonumber(h[3]) or 0
if day ~= today then day = today; used = 0 end
if tokens > 0 then
  used = used + tokens
  if interval > 0 then tat = math.max(tat, now) + tokens * interval end
  redis.call('HSET', KEYS[1], 't', string.format('%.3f', tat), 'd', day, 'u', string.format('%d', used))
  local full_at = math.ceil(tat / 1000000)
  redis.call('EXPIREAT', KEYS[1], math.max(full_at, (today + 1) * 86400) + 60)
end
return {string.format('%d', now), string.format('%.3f', tat), tostring(day), string.format('%d', used)}
";

/// Token budgets in Redis, through the fleet's [`Link`].
pub struct RedisTokens {
    link: Arc<Link>,
    script: redis::Script,
}

impl RedisTokens {
    /// Budgets through `link`.
    pub fn new(link: Arc<Link>) -> Self {
        RedisTokens {
            link,
            script: redis::Script::new(SCRIPT),
        }
    }

    fn key(&self, subject: &str) -> String {
        format!("{}:{{{subject}}}:tokens", self.link.settings().key_prefix)
    }

    async fn call(
        &self,
        subject: &str,
        limits: &TokenLimits,
        tokens: u64,
    ) -> Result<(f64, State), StoreError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.key(subject))
            .arg(limits.interval_us().unwrap_or(0.0))
            .arg(tokens);
        let op = if tokens > 0 {
            "tokens_debit"
        } else {
            "tokens_check"
        };
        let (now, tat, day, used): (String, String, String, String) =
            self.link.eval(op, &inv).await?;
        let num = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| StoreError::Other(format!("token script answered `{s}`")))
        };
        Ok((
            num(&now)?,
            State {
                tat_us: num(&tat)?,
                day: num(&day)? as u64,
                used: num(&used)? as u64,
            },
        ))
    }

    /// What `subject`'s budgets allow now (Redis' clock).
    pub async fn check(
        &self,
        subject: &str,
        limits: &TokenLimits,
    ) -> Result<TokenDecision, StoreError> {
        let (now, state) = self.call(subject, limits, 0).await?;
        Ok(decide(&state, limits, now))
    }

    /// Debit `tokens` from `subject`'s budgets.
    pub async fn debit(
        &self,
        subject: &str,
        limits: &TokenLimits,
        tokens: u64,
    ) -> Result<(), StoreError> {
        self.call(subject, limits, tokens).await.map(|_| ())
    }
}

/// The token budgets of the process: local, and the fleet's when the rate limiter shares its
/// state in Redis. A Redis failure falls back to the local store for that call.
pub struct TokenBudgets {
    local: LocalTokens,
    redis: Option<RedisTokens>,
}

impl TokenBudgets {
    /// Budgets kept locally, and in Redis through `link` when given.
    pub fn new(link: Option<Arc<Link>>) -> Self {
        TokenBudgets {
            local: LocalTokens::default(),
            redis: link.map(RedisTokens::new),
        }
    }

    /// The local store.
    pub fn local(&self) -> &LocalTokens {
        &self.local
    }

    /// What `subject`'s budgets allow now; `shared`: in the fleet's store.
    pub async fn check(
        &self,
        subject: &Arc<str>,
        limits: &TokenLimits,
        shared: bool,
    ) -> TokenDecision {
        if let (true, Some(redis)) = (shared, &self.redis) {
            if let Ok(d) = redis.check(subject, limits).await {
                return d;
            }
        }
        self.local.check(subject, limits, now_us())
    }

    /// Debit `tokens` from `subject`'s budgets; `shared`: in the fleet's store.
    pub async fn debit(&self, subject: &Arc<str>, limits: &TokenLimits, tokens: u64, shared: bool) {
        if let (true, Some(redis)) = (shared, &self.redis) {
            if redis.debit(subject, limits, tokens).await.is_ok() {
                return;
            }
        }
        self.local.debit(subject, limits, tokens, now_us());
    }

    /// Forget local callers whose budgets are whole again.
    pub fn sweep(&self) {
        self.local.sweep(now_us());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: TokenLimits = TokenLimits {
        per_minute: Some(600),
        per_day: None,
    };

    #[test]
    fn a_fresh_caller_has_the_whole_minute_budget() {
        let d = decide(&State::default(), &MIN, 1e15);
        assert!(d.allowed);
        assert_eq!(d.minute_remaining, Some(600));
        assert_eq!(d.minute_reset_secs, 0);
    }

    #[test]
    fn debits_are_post_paid_and_refuse_until_the_bucket_refills() {
        let now = 1e15;
        let mut s = State::default();
        debit(&mut s, &MIN, 500, now);
        let d = decide(&s, &MIN, now);
        assert!(d.allowed);
        assert_eq!(d.minute_remaining, Some(100));
        // One answer past the rest: in debt by 300 tokens.
        debit(&mut s, &MIN, 400, now);
        let d = decide(&s, &MIN, now);
        assert!(!d.allowed);
        assert_eq!(d.refused_by, Some(TokenPolicy::Minute));
        assert_eq!(d.minute_remaining, Some(0));
        // 600 tokens/min = 10/s: 301 tokens to be back at 1 token: 30.1 s, told 31.
        assert_eq!(d.retry_after_secs, 31);
        assert_eq!(d.minute_reset_secs, 90);
        let later = decide(&s, &MIN, now + 30.15e6);
        assert!(later.allowed, "{later:?}");
        assert_eq!(later.minute_remaining, Some(1));
    }

    #[test]
    fn the_daily_budget_refuses_until_midnight_and_rolls_over() {
        let limits = TokenLimits {
            per_minute: None,
            per_day: Some(1000),
        };
        let day = 86_400e6;
        let now = 20_000.0 * day + 3_600e6; // 01:00 UTC
        let mut s = State::default();
        debit(&mut s, &limits, 999, now);
        assert!(decide(&s, &limits, now).allowed);
        debit(&mut s, &limits, 5, now);
        let d = decide(&s, &limits, now);
        assert_eq!(
            (d.allowed, d.refused_by, d.day_remaining),
            (false, Some(TokenPolicy::Day), Some(0))
        );
        assert_eq!(d.retry_after_secs, 23 * 3600);
        let tomorrow = decide(&s, &limits, now + day);
        assert_eq!(
            (tomorrow.allowed, tomorrow.day_remaining),
            (true, Some(1000))
        );
        debit(&mut s, &limits, 10, now + day);
        assert_eq!(s.used, 10, "a new day starts from zero");
    }

    #[test]
    fn the_local_store_tracks_callers_apart_and_sweeps_whole_ones() {
        let store = LocalTokens::default();
        let (a, b): (Arc<str>, Arc<str>) = ("t:a".into(), "t:b".into());
        let now = 1e15;
        store.debit(&a, &MIN, 700, now);
        assert!(!store.check(&a, &MIN, now).allowed);
        assert!(store.check(&b, &MIN, now).allowed);
        assert_eq!(store.len(), 1);
        store.sweep(now + 120e6);
        assert!(store.is_empty(), "full again after two minutes");
    }
}
