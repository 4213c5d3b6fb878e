//! API keys provisioned in Redis (`identity.key_store: redis`), next to those in the file.
//!
//! A key is stored by its SHA-256 digest only, as a hash `<prefix>:key:<hex digest>` with the
//! fields `tenant`, `tier` and optional `rps`, `burst`, `daily`, `shadow` (the tenant's
//! overrides); the set `<prefix>:keys` indexes the digests for `tollgate keys list`.
//! `tollgate keys add|revoke|list` writes and reads them ([`add`], [`revoke`], [`list`]).
//!
//! Each replica keeps what it looked up: a found key for `identity.key_cache_ttl` (the bound on
//! how late a revocation takes effect on a replica), an unknown one for `key_negative_ttl`, at
//! most `key_cache_size` of them. Lookups of keys not remembered are limited to
//! `key_lookups_per_second`, so a flood of made-up keys costs Redis a bounded trickle, not a call
//! each. While Redis cannot answer, a key found before keeps working (its stale entry is used)
//! and a key never seen is refused like an unknown one.

use super::{Link, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What Redis holds for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// The tenant the key belongs to.
    pub tenant: String,
    /// Its tier (must exist in the running config).
    pub tier: String,
    /// Override of the tier's rps.
    pub rps: Option<f64>,
    /// Override of the tier's burst.
    pub burst: Option<u32>,
    /// Override of the tier's daily quota.
    pub daily: Option<u64>,
    /// Override of the tier's shadow mode.
    pub shadow: Option<bool>,
}

impl KeyRecord {
    fn from_fields(fields: HashMap<String, String>) -> Option<KeyRecord> {
        Some(KeyRecord {
            tenant: fields.get("tenant")?.clone(),
            tier: fields.get("tier")?.clone(),
            rps: fields.get("rps").and_then(|v| v.parse().ok()),
            burst: fields.get("burst").and_then(|v| v.parse().ok()),
            daily: fields.get("daily").and_then(|v| v.parse().ok()),
            shadow: fields.get("shadow").and_then(|v| v.parse().ok()),
        })
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("tenant", self.tenant.clone()), ("tier", self.tier.clone())];
        if let Some(v) = self.rps {
            f.push(("rps", v.to_string()));
        }
        if let Some(v) = self.burst {
            f.push(("burst", v.to_string()));
        }
        if let Some(v) = self.daily {
            f.push(("daily", v.to_string()));
        }
        if let Some(v) = self.shadow {
            f.push(("shadow", v.to_string()));
        }
        f
    }
}

/// `identity.key_*`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyCacheSettings {
    /// How long a found key is trusted.
    pub ttl: Duration,
    /// How long an unknown key is remembered.
    pub negative_ttl: Duration,
    /// Most entries.
    pub size: usize,
    /// Most lookups per second.
    pub lookups_per_second: u32,
}

#[derive(Clone)]
struct Entry {
    record: Option<KeyRecord>,
    until: Instant,
}

/// The lookup side, one per replica.
pub struct KeyStore {
    link: Arc<Link>,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
    /// Lookups allowed in the current second: (second start, count).
    budget: Mutex<(Instant, u32)>,
}

/// The hash of one digest.
fn key_name(prefix: &str, digest_hex: &str) -> String {
    format!("{prefix}:key:{digest_hex}")
}

/// The index set.
fn index_name(prefix: &str) -> String {
    format!("{prefix}:keys")
}

impl KeyStore {
    /// Look keys up through `link`.
    pub fn new(link: Arc<Link>) -> Self {
        for outcome in ["found", "unknown", "error", "over_budget"] {
            crate::observe::metrics::KEY_LOOKUPS_TOTAL.with_label_values(&[outcome]);
        }
        KeyStore {
            link,
            cache: Mutex::new(HashMap::new()),
            budget: Mutex::new((Instant::now(), 0)),
        }
    }

    /// The record of the key with this digest, if Redis has one (or had one lately).
    pub async fn lookup(&self, digest: &[u8; 32], s: &KeyCacheSettings) -> Option<KeyRecord> {
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock();
            match cache.get(digest) {
                Some(e) if e.until > now => return e.record.clone(),
                Some(e) => e.record.clone(),
                None => None,
            }
        };
        if stale.is_none() && !self.take_budget(now, s.lookups_per_second) {
            crate::observe::metrics::KEY_LOOKUPS_TOTAL
                .with_label_values(&["over_budget"])
                .inc();
            return None;
        }
        let prefix = &self.link.settings().key_prefix;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key_name(prefix, &hex::encode(digest)));
        let found: Result<HashMap<String, String>, StoreError> =
            self.link.query("keys", &cmd).await;
        let (record, outcome) = match found {
            Ok(fields) => {
                let r = KeyRecord::from_fields(fields);
                let outcome = if r.is_some() { "found" } else { "unknown" };
                (r, outcome)
            }
            // Redis cannot say: a key known before stays known, briefly.
            Err(_) => {
                crate::observe::metrics::KEY_LOOKUPS_TOTAL
                    .with_label_values(&["error"])
                    .inc();
                return stale;
            }
        };
        crate::observe::metrics::KEY_LOOKUPS_TOTAL
            .with_label_values(&[outcome])
            .inc();
        let until = now
            + if record.is_some() {
                s.ttl
            } else {
                s.negative_ttl
            };
        let mut cache = self.cache.lock();
        if cache.len() >= s.size && !cache.contains_key(digest) {
            // Drop the expired first; if none are, any one (bounded memory beats a hit rate).
            cache.retain(|_, e| e.until > now);
            if cache.len() >= s.size {
                if let Some(k) = cache.keys().next().copied() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            *digest,
            Entry {
                record: record.clone(),
                until,
            },
        );
        record
    }

    fn take_budget(&self, now: Instant, per_second: u32) -> bool {
        let mut b = self.budget.lock();
        if now.duration_since(b.0) >= Duration::from_secs(1) {
            *b = (now, 0);
        }
        if b.1 >= per_second {
            return false;
        }
        b.1 += 1;
        true
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.cache.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Replace one key's record in one step (a failed `add` keeps the old record; no replica can
/// read it half written). `KEYS[1]`: the record; `ARGV`: field, value, field, value, ...
const PUT_RECORD: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// `tollgate keys add`: store `record` for the key with this digest (replacing any). The index
/// entry is written first, so a key that works is always listed.
pub async fn add(link: &Link, digest_hex: &str, record: &KeyRecord) -> Result<(), StoreError> {
    let prefix = &link.settings().key_prefix;
    let mut index = redis::cmd("SADD");
    index.arg(index_name(prefix)).arg(digest_hex);
    let _: i64 = link.query("keys", &index).await?;
    let script = redis::Script::new(PUT_RECORD);
    let mut put = script.prepare_invoke();
    put.key(key_name(prefix, digest_hex));
    for (k, v) in record.to_fields() {
        put.arg(k).arg(v);
    }
    let _: i64 = link.eval("keys", &put).await?;
    Ok(())
}

/// `tollgate keys revoke`: delete the key with this digest. Whether it existed.
pub async fn revoke(link: &Link, digest_hex: &str) -> Result<bool, StoreError> {
    let prefix = &link.settings().key_prefix;
    let mut del = redis::cmd("DEL");
    del.arg(key_name(prefix, digest_hex));
    let n: i64 = link.query("keys", &del).await?;
    let mut index = redis::cmd("SREM");
    index.arg(index_name(prefix)).arg(digest_hex);
    let _: i64 = link.query("keys", &index).await?;
    Ok(n > 0)
}

/// `tollgate keys list`: every provisioned key, by digest, sorted by tenant.
pub async fn list(link: &Link) -> Result<Vec<(String, KeyRecord)>, StoreError> {
    let prefix = &link.settings().key_prefix;
    let mut members = redis::cmd("SMEMBERS");
    members.arg(index_name(prefix));
    let digests: Vec<String> = link.query("keys", &members).await?;
    let mut out = Vec::new();
    for d in digests {
        let mut get = redis::cmd("HGETALL");
        get.arg(key_name(prefix, &d));
        let fields: HashMap<String, String> = link.query("keys", &get).await?;
        if let Some(r) = KeyRecord::from_fields(fields) {
            out.push((d, r));
        }
    }
    out.sort_by(|a, b| (&a.1.tenant, &a.0).cmp(&(&b.1.tenant, &b.0)));
    Ok(out)
}
