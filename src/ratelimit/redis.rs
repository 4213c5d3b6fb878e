//! The fleet's rate-limit store: the same GCRA burst bucket and UTC-day quota as
//! [`super::LocalLimiter`], decided atomically in Redis by one Lua script per request.
//!
//! - One round trip: `EVALSHA` of [`SCRIPT`] (the client loads it again on `NOSCRIPT`, e.g.
//!   after a Redis restart).
//! - Redis' clock (`TIME`), not the replicas': replicas whose clocks disagree still share one
//!   bucket exactly.
//! - Keys `<prefix>:{<subject>}:<scope>:b` (the bucket's theoretical arrival time, expiring
//!   when the bucket is full again) and `...:d` (the day and the units used on it, expiring after
//!   its day). The `{subject}` hash tag puts a caller's keys in one Cluster slot, which a script
//!   touching two keys needs.
//! - Times are whole microseconds (Lua numbers are doubles: exact up to 2^53, and epoch
//!   microseconds are about 2^51). The script returns the state it decided on, and the Rust side
//!   builds the [`Decision`] from it with the local limiter's own rule
//!   ([`super::local::decide_with_interval`]), so both stores answer the same headers.

use super::local::{decide_with_interval, emission_interval, utc_day, State};
use super::{Decision, LimitKey, Limits};
use crate::fleet::{Link, StoreError};
use std::sync::Arc;

/// The decision script. `KEYS[1]`: bucket, `KEYS[2]`: daily counter. `ARGV`: emission interval
/// (µs), burst, cost, daily quota (-1: none), `want` (units to take, >= cost: more than the cost
/// only for a lease), `giveback` (units of an expired lease returned first, 0 usually) and the
/// UTC day that lease was taken on (its units go back to the daily count only on that day: a
/// lease from before midnight must not add to the new day's quota).
///
/// Allowed when both limits have room for `cost`; then it takes `grant` units, as many of `want`
/// as both limits have room for (so a lease near the limit shrinks to the exact cost). Cost 0
/// only reads. Returns `{allowed, now_us, tat_us, day, used, grant}`, with the state *before*
/// this request (after the give-back).
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000000 + tonumber(t[2])
local today = math.floor(secs / 86400)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local giveback = tonumber(ARGV[6])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local used = 0
if quota >= 0 then
  local h = redis.call('HMGET', KEYS[2], 'd', 'u')
  if tonumber(h[1]) == today then used = tonumber(h[2]) or 0 end
end
if giveback > 0 then
  tat = math.max(now, tat - giveback * interval)
  if tonumber(ARGV[7]) == today then used = math.max(0, used - giveback) end
end
local base = math.max(tat, now)
local room = math.floor((burst * interval - (base - now)) / interval)
if quota >= 0 then room = math.min(room, quota - used) end
local allowed = cost <= room
local grant = 0
if allowed then grant = math.min(want, room) end
if grant > 0 or giveback > 0 then
  local new_tat = base + grant * interval
  if new_tat > now then
    redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  else
    redis.call('DEL', KEYS[1])
  end
  if quota >= 0 then
    redis.call('HSET', KEYS[2], 'd', today, 'u', string.format('%d', used + grant))
    redis.call('EXPIREAT', KEYS[2], (today + 1) * 86400 + 60)
  end
end
return {allowed and 1 or 0, now, tat, today, used, grant}
";

const MICROS: u64 = 1_000;

/// Units of an expired lease given back, and the UTC day (days since the epoch) it was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Giveback {
    /// Units not spent.
    pub units: u32,
    /// The day they were counted on.
    pub day: u32,
}

impl Giveback {
    /// Nothing to give back.
    pub const NONE: Giveback = Giveback { units: 0, day: 0 };
}

/// What one call took.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    /// The decision for the request (as if only its cost were taken).
    pub decision: Decision,
    /// Units taken (0 when refused; more than the cost for a lease).
    pub grant: u32,
    /// The UTC day Redis counted them on.
    pub day: u32,
}

/// Decisions in Redis, through the fleet's [`Link`].
pub struct RedisLimiter {
    link: Arc<Link>,
    script: redis::Script,
}

impl RedisLimiter {
    /// A limiter deciding through `link`.
    pub fn new(link: Arc<Link>) -> Self {
        RedisLimiter {
            link,
            script: redis::Script::new(SCRIPT),
        }
    }

    /// The link it calls Redis through.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The two keys of `key`.
    pub fn keys(&self, key: &LimitKey) -> (String, String) {
        let base = format!(
            "{}:{{{}}}:{}",
            self.link.settings().key_prefix,
            escape_tag(&key.subject),
            key.scope
        );
        (format!("{base}:b"), format!("{base}:d"))
    }

    /// Check-and-consume `cost` units in Redis (cost 0: read only). Limits that let nothing
    /// through are refused here, without a call.
    pub async fn check(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        op: &'static str,
    ) -> Result<Decision, StoreError> {
        Ok(self
            .take(key, limits, cost, cost, Giveback::NONE, op)
            .await?
            .decision)
    }

    /// Check `cost` units and, when allowed, take up to `want` (>= `cost`) as both limits have
    /// room for, after giving back `giveback` units of an expired lease. Returns the decision for
    /// this request (as if `cost` were taken) and the units granted (0 when refused).
    pub async fn take(
        &self,
        key: &LimitKey,
        limits: &Limits,
        cost: u32,
        want: u32,
        giveback: Giveback,
        op: &'static str,
    ) -> Result<Taken, StoreError> {
        // The script works in whole µs: the interval rounded to them.
        let interval_us = emission_interval(limits).map(|ns| (ns + MICROS / 2) / MICROS);
        let Some(interval_us) = interval_us.map(|us| us.max(1)) else {
            let now = super::unix_nanos_now();
            let today = utc_day(now);
            let (decision, _) =
                decide_with_interval(State::default(), limits, cost, now, today, None);
            return Ok(Taken {
                decision,
                grant: 0,
                day: today,
            });
        };
        let (bucket, daily) = self.keys(key);
        let quota: i64 = limits
            .daily
            .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX));
        let mut inv = self.script.prepare_invoke();
        inv.key(bucket)
            .key(daily)
            .arg(interval_us)
            .arg(limits.burst)
            .arg(cost)
            .arg(quota)
            .arg(want.max(cost))
            .arg(giveback.units)
            .arg(giveback.day);
        let (allowed, now_us, tat_us, day, used, grant): (i64, u64, u64, u32, u64, u32) =
            self.link.eval(op, &inv).await?;
        let now = now_us.saturating_mul(MICROS);
        let prev = State {
            tat: tat_us.saturating_mul(MICROS),
            day,
            used,
        };
        let (mut decision, _) = decide_with_interval(
            prev,
            limits,
            cost,
            now,
            utc_day(now),
            Some(interval_us * MICROS),
        );
        // Both sides apply one rule to one state, so they agree; should they ever not, what
        // Redis did (consumed or not) is the truth.
        if decision.allowed != (allowed == 1) {
            tracing::debug!("redis and local rule disagree for {:?}", key);
            decision.allowed = allowed == 1;
        }
        // Units taken beyond the cost are gone from the shared bucket too.
        let extra = u64::from(grant.saturating_sub(cost));
        decision.burst_remaining = decision.burst_remaining.saturating_sub(extra);
        decision.daily_remaining = decision.daily_remaining.map(|d| d.saturating_sub(extra));
        Ok(Taken {
            decision,
            grant,
            day,
        })
    }
}

/// A subject inside a `{hash tag}`: `{`, `}` and `%` percent-encoded, so that no subject (a
/// trusted tenant header can carry anything) can end the tag early or collide with another.
fn escape_tag(subject: &str) -> std::borrow::Cow<'_, str> {
    if !subject.contains(['{', '}', '%']) {
        return subject.into();
    }
    let mut out = String::with_capacity(subject.len() + 6);
    for c in subject.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cannot_break_out_of_their_hash_tag() {
        assert_eq!(escape_tag("acme"), "acme");
        assert_eq!(escape_tag("ip:::1"), "ip:::1");
        assert_eq!(escape_tag("a}:x{b%"), "a%7D:x%7Bb%25");
    }
}
