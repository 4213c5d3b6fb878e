//! The two-tier store: each replica's [`MemoryStorage`] in front of a tier every replica of the
//! fleet shares in Redis (`cache.shared: redis`), and the fleet-wide fill lock
//! (`cache.shared_fill_lock`).
//!
//! - **Lookup**: the local store first; on a local miss, one `GET` in Redis, bounded by
//!   `redis.command_timeout`. A shared entry that the purge bus cannot vouch for (a purge made
//!   after it was written names it, or it is older than the purges held) is refused and
//!   unlinked. An accepted one is copied into the local store, so the next hit is local.
//! - **Fill**: the local store stores the response as before; then a task (off the response
//!   path) copies it to Redis with `PX` = freshness left + the longest stale window, unless its
//!   body is over `cache.shared_max_object_size`.
//! - **Fill lock**: on a shared miss, `SET NX PX` a lock beside the entry. The replica that
//!   takes it fetches; the others poll Redis until its entry arrives (a shared hit), the lock
//!   goes (its answer was not stored: fetch) or `shared_lock_timeout` passes (fetch). Requests
//!   of one replica for one key wait behind one poller. The lock is released when the fill is
//!   written, or when the request ends without one.
//! - **Failures** of Redis are misses: never an error to the request, each call bounded by the
//!   command timeout, and none while the link backs off.
//!
//! Keys: `<prefix>:cache:<scope hash>:{<primary key hash>}:<full key hash>` for an entry and
//! `<prefix>:cache:<scope hash>:{<primary key hash>}:lock` for its lock. The hash tag keeps an
//! entry, its Vary variants and its lock in one Cluster slot; the scope hash (8 hex digits of
//! SHA-256 of `shared` or `tenant:<id>`) lets an operator find one tenant's keys with `SCAN`.

use super::bus::{Position, PurgeBus, Verdict};
use super::storage::{EntryTag, MemoryStorage};
use crate::fleet::{Link, StoreError};
use crate::observe::metrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;
use sha2::Digest;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a replica waiting on another's fetch looks for its entry.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Which tier answered a lookup, and whether the request holds the fleet fill lock: put in the
/// cache key's extensions by the proxy (one per request) and read back for `Cache-Status`,
/// metrics and releasing the lock.
#[derive(Debug, Default)]
pub struct LookupNote {
    tier: AtomicU8,
    lock: AtomicU8,
}

/// Values of [`LookupNote`]'s `tier`.
const TIER_NONE: u8 = 0;
const TIER_LOCAL: u8 = 1;
const TIER_SHARED: u8 = 2;
/// Values of [`LookupNote`]'s `lock`.
const LOCK_NONE: u8 = 0;
const LOCK_HELD: u8 = 1;
const LOCK_FILLING: u8 = 2;

impl LookupNote {
    /// Whether the last lookup's entry came from the shared tier.
    pub fn from_shared(&self) -> bool {
        self.tier.load(Ordering::Relaxed) == TIER_SHARED
    }

    fn set_tier(&self, tier: u8) {
        self.tier.store(tier, Ordering::Relaxed);
    }
}

/// A request's [`LookupNote`], as a cache key extension.
#[derive(Debug, Clone, Default)]
pub struct Note(pub Arc<LookupNote>);

fn note(key: &CacheKey) -> Option<&Arc<LookupNote>> {
    key.extensions.get::<Note>().map(|n| &n.0)
}

/// The shared tier's side: Redis, the purge bus that vouches for entries, the limits.
pub struct SharedTier {
    link: Arc<Link>,
    bus: &'static PurgeBus,
    prefix: String,
    max_object_size: usize,
    fill_lock: bool,
    lock_ttl: Duration,
    /// One poller per key per replica while another replica fetches it.
    waits: Mutex<HashMap<HashBinary, Arc<tokio::sync::Mutex<()>>>>,
}

impl SharedTier {
    /// The tier over `link`, vouched for by `bus`.
    pub fn new(
        link: Arc<Link>,
        bus: &'static PurgeBus,
        max_object_size: usize,
        fill_lock: bool,
        lock_ttl: Duration,
    ) -> SharedTier {
        for r in ["hit", "miss", "error", "rejected"] {
            metrics::CACHE_SHARED_LOOKUPS_TOTAL.with_label_values(&[r]);
        }
        for r in ["stored", "too_large", "expired", "unsynced", "error"] {
            metrics::CACHE_SHARED_WRITES_TOTAL.with_label_values(&[r]);
        }
        if fill_lock {
            for r in [
                "acquired",
                "waited_hit",
                "waited_released",
                "waited_timeout",
                "error",
            ] {
                metrics::CACHE_SHARED_FILL_LOCK_TOTAL.with_label_values(&[r]);
            }
        }
        SharedTier {
            prefix: link.settings().key_prefix.clone(),
            link,
            bus,
            max_object_size,
            fill_lock,
            lock_ttl,
            waits: Mutex::new(HashMap::new()),
        }
    }

    fn base(&self, scope: &str, primary: &HashBinary) -> String {
        let scope_hash = sha2::Sha256::digest(scope.as_bytes());
        format!(
            "{}:cache:{}:{{{}}}",
            self.prefix,
            hex::encode(&scope_hash[..4]),
            hex::encode(primary)
        )
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!(
            "{}:{}",
            self.base(key.user_tag(), &key.primary_bin()),
            hex::encode(key.combined_bin())
        )
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:lock", self.base(key.user_tag(), &key.primary_bin()))
    }

    /// One entry's blob, bounded by the command timeout.
    async fn get(&self, entry_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.link
            .query("cache_get", redis::cmd("GET").arg(entry_key))
            .await
    }

    /// Look `key` up in Redis; on a miss, take or wait on the fill lock.
    async fn lookup(&self, key: &CacheKey, local: &'static MemoryStorage) -> Option<Found> {
        if !self.link.available() {
            return None;
        }
        let entry_key = self.entry_key(key);
        match self.get(&entry_key).await {
            Ok(Some(blob)) => {
                if let Some(found) = self.accept(key, &entry_key, Blob::decode(&blob), local) {
                    metrics::CACHE_SHARED_LOOKUPS_TOTAL
                        .with_label_values(&["hit"])
                        .inc();
                    return Some(found);
                }
                metrics::CACHE_SHARED_LOOKUPS_TOTAL
                    .with_label_values(&["rejected"])
                    .inc();
            }
            Ok(None) => metrics::CACHE_SHARED_LOOKUPS_TOTAL
                .with_label_values(&["miss"])
                .inc(),
            Err(_) => {
                metrics::CACHE_SHARED_LOOKUPS_TOTAL
                    .with_label_values(&["error"])
                    .inc();
                return None;
            }
        }
        if self.fill_lock {
            return self.lock_or_wait(key, &entry_key, local).await;
        }
        None
    }

    /// Look `key` up in Redis for a fresh copy only (the local one is stale): no fill lock,
    /// and a stale shared copy is left alone.
    async fn lookup_fresh(&self, key: &CacheKey, local: &'static MemoryStorage) -> Option<Found> {
        if !self.link.available() {
            return None;
        }
        let entry_key = self.entry_key(key);
        let blob = Blob::decode(&self.get(&entry_key).await.ok()??);
        let fresh = blob.as_ref().is_some_and(|b| {
            super::storage::meta_from_parts(&b.meta, b.split)
                .is_ok_and(|m| m.is_fresh(SystemTime::now()))
        });
        if !fresh {
            return None;
        }
        let found = self.accept(key, &entry_key, blob, local);
        let label = if found.is_some() { "hit" } else { "rejected" };
        metrics::CACHE_SHARED_LOOKUPS_TOTAL
            .with_label_values(&[label])
            .inc();
        found
    }

    /// Remove from Redis, in a task, the shared entries an admin purge names: a whole scope
    /// (`tenant`, `shared`, `all`) by key name, a narrower one (`url`, `prefix`, `host`) by
    /// reading each entry's tag (`SCAN` of the scope's keys, `MGET`, `UNLINK`). A mutation's
    /// invalidation is not searched for (it comes with every write): its entries are refused by
    /// every replica that has read the purge, unlinked when read, and expire with their TTL.
    /// One Redis only: a Cluster's keys are spread over nodes that `SCAN` does not cross (the
    /// bus covers them the same way).
    pub fn delete_matching(&'static self, op: &super::purge::PurgeOp) {
        // Mutations are frequent: their entries are refused everywhere and unlinked when read.
        let Some(scope) = op.admin_scope() else {
            return;
        };
        if !matches!(
            self.link.settings().target,
            crate::fleet::settings::Target::Single(_)
        ) {
            return;
        }
        // A whole scope is found by key name alone; narrower purges read each entry's tag.
        let by_name = op.whole_scope().is_some();
        let op = op.clone();
        let hash = "[0-9a-f]".repeat(8);
        let pattern = match scope {
            Some(scope) => format!(
                "{}:cache:{}:{{*",
                glob_escape(&self.prefix),
                hex::encode(&sha2::Sha256::digest(scope.as_bytes())[..4])
            ),
            None => format!("{}:cache:{hash}:{{*", glob_escape(&self.prefix)),
        };
        tokio::spawn(async move {
            // A busy Redis may miss a call's deadline: each call is retried a few times (this
            // runs in the background), and what is left is said, not hidden.
            const TRIES: u32 = 5;
            let mut cursor: u64 = 0;
            let mut removed: i64 = 0;
            // The last call that failed every try.
            let mut failed = None;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let page: Result<(u64, Vec<String>), StoreError> =
                    self.retried(TRIES, "cache_scan", &cmd).await;
                let (next, keys) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                let mut keys: Vec<String> =
                    keys.into_iter().filter(|k| !k.ends_with(":lock")).collect();
                if !by_name && !keys.is_empty() {
                    let mut mget = redis::cmd("MGET");
                    mget.arg(&keys);
                    match self
                        .retried::<Vec<Option<Vec<u8>>>>(TRIES, "cache_get", &mget)
                        .await
                    {
                        Ok(blobs) => {
                            let named: Vec<bool> = blobs
                                .iter()
                                .map(|b| {
                                    b.as_deref()
                                        .and_then(Blob::decode)
                                        .is_some_and(|b| op.matches(&b.tag))
                                })
                                .collect();
                            let mut named = named.into_iter();
                            keys.retain(|_| named.next().unwrap_or(false));
                        }
                        Err(e) => {
                            failed = Some(e);
                            keys.clear();
                        }
                    }
                }
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    match self.retried::<i64>(TRIES, "cache_unlink", &unlink).await {
                        Ok(n) => removed += n,
                        Err(e) => failed = Some(e),
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            match failed {
                None => tracing::info!("cache purge: {removed} shared entries removed from Redis"),
                Some(e) => tracing::warn!(
                    "cache purge: {removed} shared entries removed from Redis, some not ({e}); \
                     the rest are refused by every replica and expire with their TTL"
                ),
            }
        });
    }

    /// One command, tried up to `tries` times (50 ms more between each): for background work
    /// that a busy Redis may push past one call's deadline.
    async fn retried<T: redis::FromRedisValue>(
        &self,
        tries: u32,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            match self.link.query(op, cmd).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= tries => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Check a blob read for `key`; an accepted one is stored locally.
    fn accept(
        &self,
        key: &CacheKey,
        entry_key: &str,
        blob: Option<Blob>,
        local: &'static MemoryStorage,
    ) -> Option<Found> {
        let hash = key.combined_bin();
        let verdict = match blob {
            Some(b) if b.hash == hash && *b.tag.scope == *key.user_tag() => {
                match self.bus.verdict(b.at, &b.tag) {
                    Verdict::Fresh => Ok(b),
                    v => Err(v),
                }
            }
            // Not ours to read (another version, or corrupt): nobody can use it.
            _ => Err(Verdict::Purged),
        };
        match verdict {
            Ok(b) => Some(b.into_found(local)),
            // Another replica, with a longer purge history, may still vouch for it.
            Err(Verdict::Unprovable) => None,
            Err(_) => {
                // Purged for every replica alike: remove it for all.
                let link = self.link.clone();
                let entry_key = entry_key.to_string();
                tokio::spawn(async move {
                    let _: Result<i64, _> = link
                        .query("cache_unlink", redis::cmd("UNLINK").arg(entry_key))
                        .await;
                });
                None
            }
        }
    }

    /// After a shared miss with the fill lock on: take the lock (this replica fetches), or
    /// wait for the replica that holds it.
    async fn lock_or_wait(
        &self,
        key: &CacheKey,
        entry_key: &str,
        local: &'static MemoryStorage,
    ) -> Option<Found> {
        let lock_key = self.lock_key(key);
        let replica = self.link.replica();
        // `{1, holder}` when this call took the lock, `{0, holder}` when someone holds it.
        let take = redis::Script::new(
            "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ARGV[1]} end \
             return {0, redis.call('GET', KEYS[1]) or ''}",
        );
        let mut inv = take.prepare_invoke();
        inv.key(&lock_key)
            .arg(replica)
            .arg(self.lock_ttl.as_millis() as u64);
        let (taken, holder): (u8, String) = match self.link.eval("cache_lock", &inv).await {
            Ok(h) => h,
            Err(_) => {
                metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                    .with_label_values(&["error"])
                    .inc();
                return None;
            }
        };
        if taken == 1 {
            // This request fetches; the lock goes with its fill, or when it ends.
            if let Some(n) = note(key) {
                n.lock.store(LOCK_HELD, Ordering::Relaxed);
            }
            metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                .with_label_values(&["acquired"])
                .inc();
            return None;
        }
        if holder == replica {
            // Another request of this replica fetches it: the local cache lock queues this
            // one behind it (and only that request releases the fleet lock).
            return None;
        }
        if holder.is_empty() {
            // Released between the two commands: fetch.
            return None;
        }
        self.wait(key, entry_key, &lock_key, local).await
    }

    /// Wait for another replica's fill of `key` (one poller per key per replica).
    async fn wait(
        &self,
        key: &CacheKey,
        entry_key: &str,
        lock_key: &str,
        local: &'static MemoryStorage,
    ) -> Option<Found> {
        let hash = key.combined_bin();
        let gate = self.waits.lock().entry(hash).or_default().clone();
        let _turn = gate.lock().await;
        let deadline = Instant::now() + self.lock_ttl;
        let poll = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) if v then return v end \
             return redis.call('EXISTS', KEYS[2])",
        );
        let result = loop {
            // A request that waited behind another poller may find the entry local already.
            if let Some(obj) = local.entry(&hash) {
                drop(obj);
                break Some(Found::Local);
            }
            let mut inv = poll.prepare_invoke();
            inv.key(entry_key).key(lock_key);
            match self
                .link
                .eval::<redis::Value>("cache_lock_wait", &inv)
                .await
            {
                Ok(redis::Value::BulkString(blob)) => {
                    let found = self.accept(key, entry_key, Blob::decode(&blob), local);
                    let label = if found.is_some() {
                        "waited_hit"
                    } else {
                        "waited_released"
                    };
                    metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                        .with_label_values(&[label])
                        .inc();
                    break found;
                }
                Ok(redis::Value::Int(0)) => {
                    metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                        .with_label_values(&["waited_released"])
                        .inc();
                    break None;
                }
                Ok(_) => {}
                Err(_) => {
                    metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                        .with_label_values(&["error"])
                        .inc();
                    break None;
                }
            }
            if Instant::now() >= deadline {
                metrics::CACHE_SHARED_FILL_LOCK_TOTAL
                    .with_label_values(&["waited_timeout"])
                    .inc();
                break None;
            }
            tokio::time::sleep(LOCK_POLL).await;
        };
        let mut waits = self.waits.lock();
        if Arc::strong_count(&gate) <= 2 {
            waits.remove(&hash);
        }
        result
    }

    /// Copy a stored entry to Redis (in a task), then release the lock if this request held
    /// it. `expires` is when the entry stops being servable (stale windows included).
    fn write(
        &'static self,
        key: &CacheKey,
        local: &MemoryStorage,
        expires: SystemTime,
        at: Option<Position>,
        release: bool,
    ) {
        let hash = key.combined_bin();
        let entry_key = self.entry_key(key);
        let lock_key = release.then(|| self.lock_key(key));
        let blob = match (local.entry(&hash), at) {
            (None, _) => None,
            (Some(e), _) if e.body().len() > self.max_object_size => {
                metrics::CACHE_SHARED_WRITES_TOTAL
                    .with_label_values(&["too_large"])
                    .inc();
                None
            }
            (Some(_), None) => {
                metrics::CACHE_SHARED_WRITES_TOTAL
                    .with_label_values(&["unsynced"])
                    .inc();
                None
            }
            (Some(e), Some(at)) => Some(Blob::encode(&e, hash, at)),
        };
        let ttl = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if blob.is_some() && ttl.as_millis() == 0 {
            metrics::CACHE_SHARED_WRITES_TOTAL
                .with_label_values(&["expired"])
                .inc();
        }
        let blob = blob.filter(|_| ttl.as_millis() > 0);
        if blob.is_none() && lock_key.is_none() {
            return;
        }
        tokio::spawn(async move {
            if let Some(blob) = blob {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&entry_key)
                    .arg(blob)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                let r: Result<(), _> = self.link.query("cache_set", &cmd).await;
                let label = if r.is_ok() { "stored" } else { "error" };
                metrics::CACHE_SHARED_WRITES_TOTAL
                    .with_label_values(&[label])
                    .inc();
            }
            if let Some(lock_key) = lock_key {
                self.release_key(lock_key).await;
            }
        });
    }

    async fn release_key(&self, lock_key: String) {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut inv = script.prepare_invoke();
        inv.key(lock_key).arg(self.link.replica());
        let _: Result<i64, _> = self.link.eval("cache_unlock", &inv).await;
    }

    /// Release the fill lock a request took, if it still holds it (its answer was not stored).
    pub fn release(&'static self, key: &CacheKey) {
        let Some(n) = note(key) else {
            return;
        };
        if n.lock
            .compare_exchange(LOCK_HELD, LOCK_NONE, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let lock_key = self.lock_key(key);
            tokio::spawn(async move { self.release_key(lock_key).await });
        }
    }
}

/// What a shared lookup found.
enum Found {
    /// Stored locally (copied there, or by another request meanwhile): look it up there.
    Local,
    /// Too heavy for the local store's budget: served from these parts.
    Detached(Box<[u8]>, usize, Arc<[u8]>),
}

/// A shared entry as stored in Redis.
///
/// `TGC1`, epoch (u64), purge `n` (u64), the full key hash (16 bytes), the tag's four strings
/// (u32 length + bytes each), the meta's split (u32) and length (u32), the body's length (u32),
/// the meta, the body. All integers big-endian; a blob whose length does not add up is refused.
struct Blob {
    at: Position,
    hash: HashBinary,
    tag: EntryTag,
    meta: Box<[u8]>,
    split: usize,
    body: Arc<[u8]>,
}

const MAGIC: &[u8; 4] = b"TGC1";

impl Blob {
    fn encode(e: &super::storage::StoredEntry, hash: HashBinary, at: Position) -> Vec<u8> {
        let (meta, split) = e.meta();
        let tag = e.tag();
        let strings = [&tag.scope, &tag.host, &tag.path, &tag.query];
        let mut out = Vec::with_capacity(
            64 + meta.len() + e.body().len() + strings.iter().map(|s| s.len()).sum::<usize>(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&at.epoch.to_be_bytes());
        out.extend_from_slice(&at.n.to_be_bytes());
        out.extend_from_slice(&hash);
        for s in strings {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&(split as u32).to_be_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&(e.body().len() as u32).to_be_bytes());
        out.extend_from_slice(meta);
        out.extend_from_slice(e.body());
        out
    }

    /// `None` for anything that is not a whole blob of this version.
    fn decode(b: &[u8]) -> Option<Blob> {
        let mut r = Cursor(b);
        if r.take(4)? != MAGIC {
            return None;
        }
        let epoch = r.u64()?;
        let n = r.u64()?;
        let hash: HashBinary = r.take(16)?.try_into().ok()?;
        let mut strings: [Arc<str>; 4] = Default::default();
        for s in &mut strings {
            let len = r.u32()? as usize;
            *s = Arc::from(std::str::from_utf8(r.take(len)?).ok()?);
        }
        let split = r.u32()? as usize;
        let meta_len = r.u32()? as usize;
        let body_len = r.u32()? as usize;
        if split > meta_len {
            return None;
        }
        let meta: Box<[u8]> = r.take(meta_len)?.into();
        if r.0.len() != body_len {
            return None;
        }
        let body: Arc<[u8]> = Arc::from(r.0);
        let [scope, host, path, query] = strings;
        Some(Blob {
            at: Position { epoch, n },
            hash,
            tag: EntryTag::new(scope, host, path, query),
            meta,
            split,
            body,
        })
    }

    fn into_found(self, local: &MemoryStorage) -> Found {
        if local.insert_parts(
            self.hash,
            self.meta.clone(),
            self.split,
            self.body.clone(),
            self.tag,
        ) {
            Found::Local
        } else {
            Found::Detached(self.meta, self.split, self.body)
        }
    }
}

/// `text` with Redis glob characters escaped, for a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reads a blob front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// When a response stops being servable from cache: its freshness plus the longer of its
/// stale windows.
fn servable_until(meta: &CacheMeta) -> SystemTime {
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    meta.fresh_until() + Duration::from_secs(u64::from(stale))
}

/// The store the proxy's cache uses: the local store, and the shared tier when configured.
pub struct TieredStorage {
    local: &'static MemoryStorage,
    shared: Option<&'static SharedTier>,
}

impl TieredStorage {
    /// Over `local`, with `shared` as the second tier if given.
    pub fn new(local: &'static MemoryStorage, shared: Option<&'static SharedTier>) -> Self {
        TieredStorage { local, shared }
    }

    /// The shared tier, if configured.
    pub fn shared(&self) -> Option<&'static SharedTier> {
        self.shared
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(shared) = self.shared else {
            return self.local.lookup(key, trace).await;
        };
        let note = note(key);
        let set_tier = |tier| {
            if let Some(n) = note {
                n.set_tier(tier);
            }
        };
        let local_hit = self.local.lookup(key, trace).await?;
        let found = match &local_hit {
            Some((meta, _)) if meta.is_fresh(SystemTime::now()) => {
                set_tier(TIER_LOCAL);
                return Ok(local_hit);
            }
            // Stale here: another replica may have refreshed it already, and a fresh shared
            // copy saves the origin a request; otherwise the stale local one goes on (to
            // revalidation, stale-while-revalidate or stale-if-error, as before).
            Some(_) => shared.lookup_fresh(key, self.local).await,
            None => shared.lookup(key, self.local).await,
        };
        let hit = match found {
            Some(Found::Local) => self.local.lookup(key, trace).await?,
            Some(Found::Detached(meta, split, body)) => {
                Some(MemoryStorage::detached_hit(meta, split, body)?)
            }
            None => None,
        };
        match hit {
            Some(hit) => {
                set_tier(TIER_SHARED);
                Ok(Some(hit))
            }
            None => {
                set_tier(if local_hit.is_some() {
                    TIER_LOCAL
                } else {
                    TIER_NONE
                });
                Ok(local_hit)
            }
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let inner = self.local.get_miss_handler(key, meta, trace).await?;
        let Some(shared) = self.shared else {
            return Ok(inner);
        };
        let holds_lock = note(key).is_some_and(|n| {
            n.lock
                .compare_exchange(
                    LOCK_HELD,
                    LOCK_FILLING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        });
        Ok(Box::new(TieredMiss {
            inner: Some(inner),
            shared,
            local: self.local,
            key: key.clone(),
            expires: servable_until(meta),
            at: shared.bus.position(),
            holds_lock,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        self.local.purge(target, purge_type, trace).await
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        self.local.expire(target, trace).await
    }

    /// After a 304: the local entry's new meta, and (in a task) the shared copy's.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let updated = self.local.update_meta(key, meta, trace).await?;
        if let (true, Some(shared)) = (updated, self.shared) {
            shared.write(
                key,
                self.local,
                servable_until(meta),
                shared.bus.position(),
                false,
            );
        }
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A fill: the local store's miss handler, then the copy to the shared tier.
struct TieredMiss {
    inner: Option<MissHandler>,
    shared: &'static SharedTier,
    local: &'static MemoryStorage,
    key: CacheKey,
    expires: SystemTime,
    /// The purge position when the fill began: purges after it may not be reflected.
    at: Option<Position>,
    holds_lock: bool,
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: bytes::Bytes, eof: bool) -> Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.write_body(data, eof).await,
            None => Ok(()),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let inner = self.inner.take().expect("finish runs once");
        let done = inner.finish().await;
        let holds_lock = std::mem::take(&mut self.holds_lock);
        if done.is_ok() {
            self.shared
                .write(&self.key, self.local, self.expires, self.at, holds_lock);
        } else if holds_lock {
            let lock_key = self.shared.lock_key(&self.key);
            let shared = self.shared;
            tokio::spawn(async move { shared.release_key(lock_key).await });
        }
        done
    }
}

impl Drop for TieredMiss {
    /// A fill abandoned (upstream error, client gone) releases the lock it held.
    fn drop(&mut self) {
        if self.holds_lock {
            let lock_key = self.shared.lock_key(&self.key);
            let shared = self.shared;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { shared.release_key(lock_key).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_refuse_garbage() {
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20)));
        let tag = EntryTag::new("tenant:acme", "api.example", "/a", "x=1");
        let hash = [7u8; 16];
        let header = pingora_http::ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, header);
        let (internal, header) = meta.serialize().unwrap();
        let mut bytes = internal.clone();
        bytes.extend_from_slice(&header);
        assert!(storage.insert_parts(
            hash,
            bytes.into_boxed_slice(),
            internal.len(),
            Arc::from(&b"hello"[..]),
            tag.clone()
        ));
        let entry = storage.entry(&hash).unwrap();
        let at = Position { epoch: 9, n: 42 };
        let blob = Blob::encode(&entry, hash, at);
        let back = Blob::decode(&blob).unwrap();
        assert_eq!(
            (back.at, back.hash, &back.tag, &*back.body),
            (at, hash, &tag, &b"hello"[..])
        );
        assert_eq!(&*back.meta, entry.meta().0);
        assert_eq!(
            servable_until(&meta),
            meta.fresh_until() + Duration::from_secs(10)
        );
        for cut in [0, 3, 10, 40, blob.len() - 1] {
            assert!(Blob::decode(&blob[..cut]).is_none(), "cut at {cut}");
        }
        assert!(Blob::decode(b"XXXX").is_none());
    }
}
