//! The in-process limiter: exact per-key GCRA buckets and daily counters in sharded hash maps.
//!
//! Each [`LimitKey`] owns its state outright (no counting sketch, no hashing of keys into shared
//! cells): one tenant can never be refused because of another. The hash of a key only picks a
//! shard and a slot; the key itself is stored and compared in full.
//!
//! Memory stays bounded in two ways, because anonymous callers are keyed by client IP and a
//! flood of distinct addresses must not grow the maps without end:
//! - idle entries expire: an entry whose bucket is full again and whose daily count is empty (or
//!   from an earlier UTC day) holds nothing a fresh entry would not, so sweeping drops it. A shard
//!   sweeps itself when a new key arrives and it has doubled since its last sweep, so no background
//!   task is required; [`LocalLimiter::sweep`] is there for a periodic one;
//! - an optional hard cap (`max_entries`): when a shard is full, the least recently active
//!   entries (oldest theoretical arrival time) are evicted first. An evicted caller starts again
//!   from a full bucket and an empty daily count: fail-open, because bounded memory wins over one
//!   anonymous client's daily quota.

use super::{ceil_secs, Decision, LimitKey, Limits, Policy, RateLimiter};
use super::{NANOS_PER_DAY, NANOS_PER_SEC};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Shards without a cap: enough that cores rarely meet on one lock.
const MAX_SHARDS: usize = 64;
/// With a small cap, fewer shards, so each shard's share of the cap stays usable.
const MIN_KEYS_PER_SHARD: usize = 64;
/// A shard smaller than this never sweeps itself: scanning it would cost more than it frees.
const MIN_SWEEP_AT: usize = 64;

/// Per-key state: 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct State {
    /// GCRA theoretical arrival time (ns since the epoch): the bucket is full again at `tat`.
    /// 0 for a key never seen, which reads as "full".
    pub(super) tat: u64,
    /// The UTC day (days since the epoch) that `used` counts.
    pub(super) day: u32,
    /// Daily units consumed on `day`. Not counted for policies without a daily quota, so their
    /// entries expire as soon as the bucket refills.
    pub(super) used: u64,
}

impl State {
    /// Holds nothing a fresh entry would not: safe to forget.
    fn is_idle(&self, now: u64, today: u32) -> bool {
        self.tat <= now && (self.used == 0 || self.day < today)
    }
}

/// A stored key with its hash computed once, when the request first looked it up.
struct StoredKey {
    hash: u64,
    key: LimitKey,
}

/// What a map lookup compares: lets a borrowed `&LimitKey` plus its precomputed hash probe the
/// map, so looking up an existing key neither clones the key's `Arc`s nor hashes the strings again.
trait KeyView {
    fn hash(&self) -> u64;
    fn key(&self) -> &LimitKey;
}

impl KeyView for StoredKey {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn key(&self) -> &LimitKey {
        &self.key
    }
}

/// A lookup probe: the caller's key, borrowed.
struct Probe<'a> {
    hash: u64,
    key: &'a LimitKey,
}

impl KeyView for Probe<'_> {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn key(&self) -> &LimitKey {
        self.key
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for StoredKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

// `Hash`/`Eq` for the stored key and for the probe must agree (the `Borrow` contract): both hash
// as the precomputed u64 and compare the full key.
impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(KeyView::hash(self));
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        KeyView::hash(self) == KeyView::hash(other) && self.key() == other.key()
    }
}

impl Eq for dyn KeyView + '_ {}

impl Hash for StoredKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Hash::hash(self as &dyn KeyView, state)
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyView) == (other as &dyn KeyView)
    }
}

impl Eq for StoredKey {}

/// The maps' hasher: passes the precomputed (keyed, SipHash) hash through.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (keys hash as one u64); a plain fold keeps it correct if it ever is.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

type Map = HashMap<StoredKey, State, BuildHasherDefault<PreHashed>>;

/// One shard, alone on its cache lines so that cores working on neighbouring shards do not
/// invalidate each other's lock word.
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

struct ShardState {
    map: Map,
    /// Sweep this shard when a new key arrives and it holds this many entries.
    sweep_at: usize,
}

impl ShardState {
    /// Insert a key not yet present, sweeping (and, at the cap, evicting) first when due.
    fn insert_new(&mut self, key: StoredKey, state: State, now: u64, today: u32, cap: usize) {
        if self.map.len() >= self.sweep_at {
            sweep_idle(&mut self.map, now, today);
            if self.map.len() >= cap {
                // Evict an eighth at once, so the O(n) scan is paid once per cap/8 new keys.
                evict_oldest(&mut self.map, cap - (cap / 8).max(1));
            }
            self.sweep_at = next_sweep_at(self.map.len(), cap);
        }
        self.map.insert(key, state);
    }
}

/// Sweep again when the shard has doubled (amortised O(1) per insert), never later than the cap.
fn next_sweep_at(len: usize, cap: usize) -> usize {
    len.saturating_mul(2).max(MIN_SWEEP_AT).min(cap)
}

/// Remove idle entries; returns how many.
fn sweep_idle(map: &mut Map, now: u64, today: u32) -> usize {
    let before = map.len();
    map.retain(|_, s| !s.is_idle(now, today));
    before - map.len()
}

/// Remove the entries with the oldest `tat` (least recently active) until `target` remain;
/// returns how many were removed.
fn evict_oldest(map: &mut Map, target: usize) -> usize {
    let excess = map.len().saturating_sub(target);
    if excess == 0 {
        return 0;
    }
    let mut tats: Vec<u64> = map.values().map(|s| s.tat).collect();
    let threshold = *tats.select_nth_unstable(excess - 1).1;
    let below = tats.iter().filter(|&&t| t < threshold).count();
    drop(tats);
    // Everything older than the threshold goes, then just enough of the ties.
    let mut ties_to_drop = excess - below;
    map.retain(|_, s| {
        if s.tat < threshold {
            false
        } else if s.tat == threshold && ties_to_drop > 0 {
            ties_to_drop -= 1;
            false
        } else {
            true
        }
    });
    excess
}

/// The in-process [`RateLimiter`]: exact GCRA + daily quota per [`LimitKey`].
///
/// GCRA keeps one "theoretical arrival time" (`tat`) per key. With emission interval
/// `T = 1 s / rps` and tolerance `burst * T`, a request of cost `c` at `now` is allowed iff
/// `max(tat, now) + c*T - now <= burst*T`, and then `tat = max(tat, now) + c*T`. From idle exactly
/// `burst` requests of cost 1 pass at one instant; sustained, one passes per `T`. All arithmetic is
/// in integer nanoseconds, so nothing drifts.
pub struct LocalLimiter {
    shards: Box<[Shard]>,
    hasher: RandomState,
    max_entries: usize,
    /// Entries one shard may hold: `max_entries / shards` (so the total never exceeds the cap),
    /// `usize::MAX` without a cap.
    shard_cap: usize,
}

impl LocalLimiter {
    /// A limiter holding at most `max_entries` keys (0 = no cap; idle keys still expire).
    ///
    /// The cap is enforced per shard (`max_entries / shards` each), so eviction is oldest-first
    /// within a shard, which approximates oldest-first overall as keys spread evenly. Small caps
    /// use fewer shards (at least 64 keys each), so that share stays useful.
    pub fn new(max_entries: usize) -> Self {
        let shards = if max_entries == 0 {
            MAX_SHARDS
        } else {
            prev_power_of_two(max_entries / MIN_KEYS_PER_SHARD).min(MAX_SHARDS)
        };
        let shard_cap = if max_entries == 0 {
            usize::MAX
        } else {
            max_entries / shards
        };
        LocalLimiter {
            shards: (0..shards)
                .map(|_| {
                    Shard(Mutex::new(ShardState {
                        map: Map::default(),
                        sweep_at: next_sweep_at(0, shard_cap),
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            max_entries,
            shard_cap,
        }
    }

    /// The cap given to [`LocalLimiter::new`] (0 = none).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Keys currently held (locks each shard in turn: for metrics and tests, not per request).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop idle entries (bucket full again, daily count empty or from an earlier UTC day), then
    /// evict oldest-first any shard still over its share of the cap; returns how many entries
    /// were removed. Meant for a periodic background task; `check` also sweeps a shard when due.
    pub fn sweep(&self, now_unix_nanos: u64) -> usize {
        let today = utc_day(now_unix_nanos);
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let s = &mut *shard;
            removed += sweep_idle(&mut s.map, now_unix_nanos, today);
            removed += evict_oldest(&mut s.map, self.shard_cap);
            // Give back the table after a flood has drained (retain never shrinks it).
            let len = s.map.len();
            if s.map.capacity() > 4 * len.max(MIN_SWEEP_AT) {
                s.map.shrink_to(2 * len);
            }
            s.sweep_at = next_sweep_at(len, self.shard_cap);
        }
        removed
    }

    fn shard(&self, hash: u64) -> &Shard {
        // Bits 40.. pick the shard: the maps use the low bits for the slot and the top 7 as the
        // tag, which must stay varied within a shard.
        &self.shards[(hash >> 40) as usize & (self.shards.len() - 1)]
    }

    #[cfg(test)]
    fn contains(&self, key: &LimitKey) -> bool {
        let hash = self.hasher.hash_one(key);
        let probe = Probe { hash, key };
        lock(self.shard(hash))
            .map
            .contains_key(&probe as &dyn KeyView)
    }
}

impl RateLimiter for LocalLimiter {
    fn check(&self, key: &LimitKey, limits: &Limits, cost: u32, now_unix_nanos: u64) -> Decision {
        let now = now_unix_nanos;
        let today = utc_day(now);
        let hash = self.hasher.hash_one(key);
        let probe = Probe { hash, key };
        let mut shard = lock(self.shard(hash));
        let shard = &mut *shard;
        match shard.map.get_mut(&probe as &dyn KeyView) {
            Some(state) => {
                let (decision, next) = decide(*state, limits, cost, now, today);
                if let Some(next) = next {
                    *state = next;
                }
                decision
            }
            None => {
                let (decision, next) = decide(State::default(), limits, cost, now, today);
                // Only a request that consumed something creates state: refusals (and cost-0
                // peeks) of unknown keys cost no memory.
                if let Some(next) = next.filter(|_| cost > 0) {
                    let stored = StoredKey {
                        hash,
                        key: key.clone(),
                    };
                    shard.insert_new(stored, next, now, today, self.shard_cap);
                }
                decision
            }
        }
    }
}

/// The decision for one key, and its next state when the request is allowed.
///
/// Edge cases, all refusals that consume nothing:
/// - `rps <= 0` (or NaN) or `burst == 0`: every request is refused by `Burst`, retry after 1 s
///   (validation should have rejected such limits; this keeps a bad policy closed, not open);
/// - `cost > burst`: can never pass; refused by `Burst` with `retry_after = ceil(cost * T)`, the
///   time a full refill of that many tokens would take, a sane back-off rather than "never";
/// - `cost > daily`: can never pass; refused by `Daily` with the time to the next UTC midnight.
///
/// When both limits refuse, `Daily` is reported: retrying after the burst wait would only be
/// refused again.
fn decide(
    prev: State,
    limits: &Limits,
    cost: u32,
    now: u64,
    today: u32,
) -> (Decision, Option<State>) {
    decide_with_interval(prev, limits, cost, now, today, emission_interval(limits))
}

/// [`decide`] with the emission interval given (`None`: nothing may pass). The Redis store
/// decides in whole microseconds and passes its interval, so that both stores apply one rule.
pub(super) fn decide_with_interval(
    prev: State,
    limits: &Limits,
    cost: u32,
    now: u64,
    today: u32,
    interval: Option<u64>,
) -> (Decision, Option<State>) {
    let daily_reset_secs = ceil_secs(u128::from(today + 1) * NANOS_PER_DAY as u128 - now as u128);
    let used = if prev.day == today { prev.used } else { 0 };
    let daily_ok = limits
        .daily
        .is_none_or(|quota| used.saturating_add(u64::from(cost)) <= quota);

    let Some(interval) = interval else {
        let decision = Decision {
            allowed: false,
            refused_by: Some(if daily_ok {
                Policy::Burst
            } else {
                Policy::Daily
            }),
            burst_remaining: 0,
            burst_reset_secs: 0,
            daily_remaining: limits.daily.map(|q| q.saturating_sub(used)),
            daily_reset_secs,
            retry_after_secs: if daily_ok { 1 } else { daily_reset_secs },
        };
        return (decision, None);
    };

    let t = u128::from(interval);
    let now_wide = u128::from(now);
    let tolerance = u128::from(limits.burst) * t;
    let cost_ns = u128::from(cost) * t;
    let base = u128::from(prev.tat.max(now));
    let new_tat = base + cost_ns;
    let burst_ok = new_tat - now_wide <= tolerance;
    let allowed = burst_ok && daily_ok;

    let (tat_after, used_after) = if allowed {
        let used_after = match limits.daily {
            Some(_) => used + u64::from(cost),
            None => used,
        };
        (new_tat, used_after)
    } else {
        (base, used)
    };
    // Time until the bucket is full again; `tat_after >= now` since `base >= now`.
    let backlog = tat_after - now_wide;
    let daily_remaining = limits.daily.map(|q| q.saturating_sub(used_after));

    let (refused_by, retry_after_secs) = if allowed {
        (None, 0)
    } else if !daily_ok {
        (Some(Policy::Daily), daily_reset_secs)
    } else {
        let wait = if cost_ns > tolerance {
            cost_ns
        } else {
            new_tat - tolerance - now_wide
        };
        (Some(Policy::Burst), ceil_secs(wait).max(1))
    };

    let decision = Decision {
        allowed,
        refused_by,
        burst_remaining: div_wide(tolerance.saturating_sub(backlog), interval),
        burst_reset_secs: ceil_secs(backlog),
        daily_remaining,
        daily_reset_secs,
        retry_after_secs,
    };
    let next = allowed.then(|| State {
        tat: u64::try_from(tat_after).unwrap_or(u64::MAX),
        day: today,
        used: used_after,
    });
    (decision, next)
}

/// `n / d`, saturated to u64, dividing in 64 bits whenever `n` fits (a u128 division is a slow
/// library call, and this runs on every check).
fn div_wide(n: u128, d: u64) -> u64 {
    match u64::try_from(n) {
        Ok(n) => n / d,
        Err(_) => u64::try_from(n / u128::from(d)).unwrap_or(u64::MAX),
    }
}

/// `T = 1 s / rps` in whole nanoseconds (at least 1), or `None` when nothing may pass.
pub(super) fn emission_interval(limits: &Limits) -> Option<u64> {
    // Written so that NaN is refused too.
    if limits.rps.is_nan() || limits.rps <= 0.0 || limits.burst == 0 {
        return None;
    }
    // `+ 0.5` then truncate rounds to nearest (`f64::round` is a libm call on the hot path);
    // `as` saturates, so a tiny rps gives a huge (not wrapped) interval.
    Some(((NANOS_PER_SEC as f64 / limits.rps + 0.5) as u64).max(1))
}

/// Days since the epoch, in UTC.
pub(super) fn utc_day(now: u64) -> u32 {
    (now / NANOS_PER_DAY) as u32
}

fn prev_power_of_two(n: usize) -> usize {
    if n <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// A shard's lock. A panic while holding it cannot leave a half-written entry (every update is a
/// single store of a `Copy` state or a map insert/remove), so a poisoned lock is still usable.
fn lock(shard: &Shard) -> MutexGuard<'_, ShardState> {
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = NANOS_PER_SEC;
    /// 2025-01-01T12:00:00Z.
    const NOON: u64 = 1_735_732_800 * SEC;
    const MIDNIGHT_AFTER_NOON: u64 = NOON + 12 * 3600 * SEC;

    fn key(subject: &str) -> LimitKey {
        LimitKey::new(subject, "tier")
    }

    fn limits(rps: f64, burst: u32, daily: Option<u64>) -> Limits {
        Limits { rps, burst, daily }
    }

    /// Requests of cost 1 allowed, out of `n` offered at one instant.
    fn allowed_at(l: &LocalLimiter, k: &LimitKey, lim: &Limits, n: u32, now: u64) -> u32 {
        (0..n).filter(|_| l.check(k, lim, 1, now).allowed).count() as u32
    }

    #[test]
    fn from_idle_exactly_burst_pass_at_once() {
        for burst in [1, 20, 5000] {
            let l = LocalLimiter::new(0);
            let k = key("acme");
            let lim = limits(10.0, burst, None);
            for i in 0..burst {
                let d = l.check(&k, &lim, 1, NOON);
                assert!(d.allowed, "request {i} of burst {burst} refused");
                assert_eq!(d.burst_remaining, u64::from(burst - i - 1));
            }
            let d = l.check(&k, &lim, 1, NOON);
            assert!(!d.allowed);
            assert_eq!(d.refused_by, Some(Policy::Burst));
        }
    }

    /// A client offering 3x `rps` at uniform spacing for 10 s of virtual time. Asserted:
    /// `(allowed - burst) / 10 s` is within 5% of `rps` (the burst is the one-off credit from
    /// idle), and so is the rate over the last 5 s alone (bucket drained: pure steady state).
    #[test]
    fn sustained_rate_converges_to_rps() {
        for (rps, burst) in [(10.0, 20u32), (100.0, 200), (2000.0, 5000)] {
            let l = LocalLimiter::new(0);
            let k = key("acme");
            let lim = limits(rps, burst, None);
            let offered = (3.0 * rps * 10.0) as u64;
            let spacing = SEC as f64 / (3.0 * rps);
            let (mut allowed, mut allowed_last_5s) = (0u64, 0u64);
            for i in 0..offered {
                let offset = (i as f64 * spacing) as u64;
                if l.check(&k, &lim, 1, NOON + offset).allowed {
                    allowed += 1;
                    if offset >= 5 * SEC {
                        allowed_last_5s += 1;
                    }
                }
            }
            let rate = (allowed - u64::from(burst)) as f64 / 10.0;
            assert!(
                (rate - rps).abs() <= 0.05 * rps,
                "rps {rps} burst {burst}: {allowed} allowed in 10 s, rate {rate}"
            );
            let steady = allowed_last_5s as f64 / 5.0;
            assert!(
                (steady - rps).abs() <= 0.05 * rps,
                "rps {rps} burst {burst}: steady rate {steady}"
            );
        }
    }

    #[test]
    fn daily_quota_refuses_until_next_utc_midnight() {
        let l = LocalLimiter::new(0);
        let k = key("free-user");
        let lim = limits(1e6, 1_000_000, Some(1000));
        for i in 0..1000u64 {
            let d = l.check(&k, &lim, 1, NOON);
            assert!(d.allowed);
            assert_eq!(d.daily_remaining, Some(999 - i));
        }
        let d = l.check(&k, &lim, 1, NOON);
        assert!(!d.allowed);
        assert_eq!(d.refused_by, Some(Policy::Daily));
        assert_eq!(d.retry_after_secs, 12 * 3600);
        assert_eq!(d.daily_reset_secs, 12 * 3600);
        assert_eq!(d.daily_remaining, Some(0));

        // Half a second before midnight: wait rounds up to 1 s, never 0.
        let d = l.check(&k, &lim, 1, MIDNIGHT_AFTER_NOON - SEC / 2);
        assert_eq!((d.allowed, d.retry_after_secs), (false, 1));

        let d = l.check(&k, &lim, 1, MIDNIGHT_AFTER_NOON);
        assert!(d.allowed);
        assert_eq!(d.daily_remaining, Some(999));
        assert_eq!(d.daily_reset_secs, 86_400);
    }

    #[test]
    fn burst_refusal_does_not_consume_daily() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(10.0, 5, Some(100));
        assert_eq!(allowed_at(&l, &k, &lim, 5, NOON), 5);
        for _ in 0..50 {
            let d = l.check(&k, &lim, 1, NOON);
            assert_eq!(d.refused_by, Some(Policy::Burst));
            assert_eq!(d.daily_remaining, Some(95));
        }
        let d = l.check(&k, &lim, 1, NOON + SEC);
        assert!(d.allowed);
        assert_eq!(d.daily_remaining, Some(94));
    }

    #[test]
    fn daily_refusal_does_not_consume_burst() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(10.0, 10, Some(3));
        assert_eq!(allowed_at(&l, &k, &lim, 3, NOON), 3);
        for _ in 0..20 {
            let d = l.check(&k, &lim, 1, NOON);
            assert_eq!(d.refused_by, Some(Policy::Daily));
            assert_eq!(d.burst_remaining, 7);
        }
        // Next day, the untouched burst credit is all there.
        let next_day = MIDNIGHT_AFTER_NOON;
        assert_eq!(allowed_at(&l, &k, &lim, 3, next_day), 3);
    }

    #[test]
    fn cost_is_a_weight_on_both_limits() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(2.0, 20, Some(100));
        let d1 = l.check(&k, &lim, 10, NOON);
        let d2 = l.check(&k, &lim, 10, NOON);
        let d3 = l.check(&k, &lim, 10, NOON);
        assert!(d1.allowed && d2.allowed && !d3.allowed);
        assert_eq!(d1.burst_remaining, 10);
        assert_eq!(d2.daily_remaining, Some(80));
        assert_eq!(d3.refused_by, Some(Policy::Burst));
        // 10 tokens at 2/s.
        assert_eq!(d3.retry_after_secs, 5);
        assert!(l.check(&k, &lim, 10, NOON + 5 * SEC).allowed);
    }

    #[test]
    fn cost_above_burst_is_refused_without_consuming() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(2.0, 20, Some(100));
        let d = l.check(&k, &lim, 25, NOON);
        assert_eq!(d.refused_by, Some(Policy::Burst));
        // ceil(25 tokens / 2 per s) = 13 s: a back-off hint, it will never pass.
        assert_eq!(d.retry_after_secs, 13);
        assert_eq!(d.burst_remaining, 20);
        assert_eq!(d.daily_remaining, Some(100));
        assert!(l.is_empty());
        assert_eq!(allowed_at(&l, &k, &lim, 21, NOON), 20);
    }

    #[test]
    fn cost_zero_peeks() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(10.0, 20, Some(100));
        let d = l.check(&k, &lim, 0, NOON);
        assert!(d.allowed);
        assert_eq!((d.burst_remaining, d.daily_remaining), (20, Some(100)));
        assert!(l.is_empty());
    }

    #[test]
    fn tenants_do_not_share_state() {
        let l = LocalLimiter::new(0);
        let lim = limits(10.0, 20, Some(1000));
        assert_eq!(allowed_at(&l, &key("a"), &lim, 25, NOON), 20);
        assert_eq!(allowed_at(&l, &key("b"), &lim, 25, NOON), 20);
        // Same subject, another scope: its own bucket too.
        let route = LimitKey::new("a", "route:chat");
        assert_eq!(allowed_at(&l, &route, &lim, 25, NOON), 20);
    }

    #[test]
    fn ten_thousand_tenants_within_limits_are_never_refused() {
        let l = LocalLimiter::new(0);
        let lim = limits(10.0, 20, Some(1000));
        let scope: Arc<str> = Arc::from("tier");
        let keys: Vec<LimitKey> = (0..10_000)
            .map(|i| LimitKey {
                subject: Arc::from(format!("tenant-{i}")),
                scope: scope.clone(),
            })
            .collect();
        // 20 rounds: each key uses exactly its burst, interleaved with every other key.
        for _ in 0..20 {
            for k in &keys {
                assert!(l.check(k, &lim, 1, NOON).allowed, "{k:?} refused");
            }
        }
        assert_eq!(l.len(), 10_000);
    }

    #[test]
    fn remaining_and_reset_values() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        let lim = limits(10.0, 20, None);
        let d = l.check(&k, &lim, 1, NOON);
        assert_eq!(
            d,
            Decision {
                allowed: true,
                refused_by: None,
                burst_remaining: 19,
                burst_reset_secs: 1, // 0.1 s, rounded up
                daily_remaining: None,
                daily_reset_secs: 12 * 3600,
                retry_after_secs: 0,
            }
        );
        assert_eq!(allowed_at(&l, &k, &lim, 19, NOON), 19);
        let d = l.check(&k, &lim, 1, NOON);
        assert_eq!(d.refused_by, Some(Policy::Burst));
        assert_eq!((d.burst_remaining, d.burst_reset_secs), (0, 2));
        assert_eq!(d.retry_after_secs, 1); // one token in 0.1 s, rounded up
                                           // 0.25 s later: 2.5 tokens back, 2 whole; the request takes one.
        let d = l.check(&k, &lim, 1, NOON + SEC / 4);
        assert!(d.allowed);
        assert_eq!(d.burst_remaining, 1);
        // Full after another ~1.85 s.
        assert_eq!(d.burst_reset_secs, 2);
        let d = l.check(&k, &lim, 0, NOON + 10 * SEC);
        assert_eq!((d.burst_remaining, d.burst_reset_secs), (20, 0));
    }

    #[test]
    fn bad_limits_refuse_everything_and_store_nothing() {
        let l = LocalLimiter::new(0);
        let k = key("acme");
        for lim in [
            limits(0.0, 20, None),
            limits(-1.0, 20, None),
            limits(f64::NAN, 20, None),
            limits(10.0, 0, None),
        ] {
            let d = l.check(&k, &lim, 1, NOON);
            assert_eq!(d.refused_by, Some(Policy::Burst), "{lim:?}");
            assert_eq!(d.retry_after_secs, 1);
        }
        let d = l.check(&k, &limits(10.0, 20, Some(0)), 1, NOON);
        assert_eq!(d.refused_by, Some(Policy::Daily));
        assert!(l.is_empty());
    }

    #[test]
    fn counts_survive_a_change_of_limits() {
        // A reload hands new `Limits` for the same key: the bucket carries over.
        let l = LocalLimiter::new(0);
        let k = key("acme");
        assert_eq!(allowed_at(&l, &k, &limits(10.0, 20, None), 30, NOON), 20);
        assert_eq!(allowed_at(&l, &k, &limits(10.0, 40, None), 30, NOON), 20);
    }

    #[test]
    fn sweep_removes_idle_keys_and_keeps_active_ones() {
        let l = LocalLimiter::new(0);
        let lim = limits(10.0, 20, None);
        let with_daily = limits(10.0, 20, Some(1000));
        let (idle, busy, counted) = (key("idle"), key("busy"), key("counted"));
        assert!(l.check(&idle, &lim, 1, NOON).allowed); // full again at NOON + 0.1 s
        assert!(l.check(&counted, &with_daily, 1, NOON).allowed);
        assert_eq!(allowed_at(&l, &busy, &lim, 20, NOON + SEC), 20); // full at NOON + 3 s
        assert_eq!(l.sweep(NOON + SEC), 1);
        assert!(!l.contains(&idle));
        assert!(l.contains(&busy) && l.contains(&counted));
        // Bucket refilled, but today's daily count must survive.
        assert_eq!(l.sweep(NOON + 3 * SEC), 1);
        assert!(l.contains(&counted) && !l.contains(&busy));
        assert_eq!(l.sweep(MIDNIGHT_AFTER_NOON), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn idle_keys_expire_without_a_background_sweep() {
        // A flood of one-off clients, 1 ms apart, each idle again 1 ms later: shards sweep
        // themselves when they double, so the map stays near MIN_SWEEP_AT per shard.
        let l = LocalLimiter::new(0);
        let lim = limits(1000.0, 1, None);
        for i in 0..100_000u64 {
            let k = key(&format!("ip:10.0.{}.{}", i / 256, i % 256));
            assert!(l.check(&k, &lim, 1, NOON + i * 1_000_000).allowed);
        }
        assert!(l.len() <= MAX_SHARDS * MIN_SWEEP_AT, "{} keys", l.len());
    }

    #[test]
    fn the_cap_evicts_least_recently_active_first() {
        let cap = 128;
        let l = LocalLimiter::new(cap);
        // Each key stays busy (bucket not full) for 100 s, longer than the test: only eviction
        // removes it.
        let lim = limits(0.01, 10, None);
        let keys: Vec<LimitKey> = (0..1000).map(|i| key(&format!("ip:10.1.0.{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(l.check(k, &lim, 1, NOON + i as u64 * SEC / 10).allowed);
            assert!(l.len() <= cap);
        }
        assert!(l.len() >= cap / 2, "{} keys", l.len());
        assert!(keys[..500].iter().all(|k| !l.contains(k)));
        assert!(keys[950..].iter().all(|k| l.contains(k)));
    }

    #[test]
    fn evict_oldest_removes_exactly_the_oldest_ties_included() {
        let mut map = Map::default();
        for (i, tat) in [5u64, 1, 3, 3, 3, 9, 7].into_iter().enumerate() {
            let key = StoredKey {
                hash: i as u64,
                key: key(&i.to_string()),
            };
            map.insert(
                key,
                State {
                    tat,
                    day: 0,
                    used: 0,
                },
            );
        }
        assert_eq!(evict_oldest(&mut map, 4), 3);
        let mut left: Vec<u64> = map.values().map(|s| s.tat).collect();
        left.sort();
        assert_eq!(left, [3, 5, 7, 9]);
        assert_eq!(evict_oldest(&mut map, 10), 0);
    }

    #[test]
    fn concurrent_callers_share_one_exact_bucket() {
        let l = Arc::new(LocalLimiter::new(0));
        let lim = limits(1.0, 500, None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || allowed_at(&l, &key("acme"), &lim, 1000, NOON))
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 500);
    }

    #[test]
    fn shard_count_follows_the_cap() {
        assert_eq!(LocalLimiter::new(0).shards.len(), 64);
        assert_eq!(LocalLimiter::new(100_000).shards.len(), 64);
        assert_eq!(LocalLimiter::new(1000).shards.len(), 8);
        assert_eq!(LocalLimiter::new(10).shards.len(), 1);
        let l = LocalLimiter::new(1000);
        assert!(l.shard_cap * l.shards.len() <= 1000);
    }
}
