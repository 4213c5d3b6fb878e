//! The response cache's in-memory storage: a [`pingora_cache::storage::Storage`] bounded by a
//! byte budget, with least-recently-used eviction and purges by path, path prefix or any
//! predicate over what an entry is about.
//!
//! pingora-cache only ships a test `MemCache` (unbounded, no eviction); this is the production
//! backend the proxy's cache uses.
//!
//! # Design
//!
//! * **Objects** live in 16 `RwLock<HashMap<u64, Arc<Object>>>` maps. The map key is the
//!   low 64 bits of the entry's 128-bit combined hash ([`CacheKey::combined_bin`], primary key
//!   plus Vary variance); the object keeps the full hash and a lookup checks it, so a 64-bit
//!   collision is a miss, never a wrong body. Keying the map and the LRU by the same `u64` keeps
//!   them one to one: two hashes sharing 64 bits replace each other instead of leaving an object
//!   in the map that the LRU no longer weighs (which a map keyed by the full hash would allow).
//! * **Eviction order** is a [`pingora_lru::Lru`] (16 shards) keyed by the same `u64`, weighted by
//!   each object's accounted bytes (its weight, below) and limited to `max_bytes`. Inserting
//!   admits to the LRU and then evicts to the limit synchronously, so after every insert
//!   `used_bytes <= max_bytes`. A hit promotes. The LRU is strict within each of its shards and
//!   picks the shard to evict from by "power of two choices" on shard length, so the global
//!   order is least-recently-used only approximately.
//! * **Weight** is what an entry costs in memory: the allocations holding body, serialized meta
//!   and tag strings, at the allocator's size class (a 513-byte body occupies a 640-byte block),
//!   plus a measured fixed [`ENTRY_OVERHEAD`] for everything else (`Arc<Object>`, map slot, LRU
//!   node, index element). So the budget bounds RSS, not just payload bytes.
//! * **Invalidation index**: an ordered set of `(scope, host, path, key)` for every entry that
//!   carries an [`EntryTag`]. [`MemoryStorage::purge_path`] and [`MemoryStorage::purge_prefix`]
//!   are range scans, O(log n + k); they remove every query string and every Vary variant of a
//!   path. [`MemoryStorage::purge_where`] scans the objects (admin purges by tenant, across hosts,
//!   or by exact URL with query).
//!
//! # Locking
//!
//! Lock order is **index → shard → LRU** (the LRU's own shard locks are taken inside its
//! methods). The index mutex doubles as the *writer lock*: every mutation (insert, replace,
//! eviction, purge, expire, meta update) holds it for its whole duration, so the map, the LRU
//! and the index are never seen out of step by another writer. Lookups never take it: they
//! read-lock one shard, clone an `Arc`, release, then promote in the LRU without holding a shard
//! lock. No lock is ever held across an `.await` (all the work in the async methods is
//! synchronous). Writers are therefore serialized; a write is a few hash-map and B-tree
//! operations (microseconds), and writes are cache misses, which already paid an upstream
//! round trip.
//!
//! Bodies are stored whole: a miss handler buffers the body and the object appears at `finish`
//! (no streaming partial reads, [`Storage::support_streaming_partial_write`] is false). A fill in
//! progress is not counted against the budget (with pingora's cache lock on, one runs per key);
//! a body that alone outweighs the budget stops being buffered as soon as it does.

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use pingora_lru::Lru;
use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

/// Number of object-map shards (and LRU shards). A power of two; 16 keeps read-lock contention
/// low on a few cores without making `purge_where`'s per-shard scan fragmented.
const SHARDS: usize = 16;

/// Bytes charged per entry on top of the allocations holding its body, meta and tag strings
/// (see `weigh`): what an entry costs the process beyond its own data.
///
/// Measured, not guessed: `cargo bench --bench cache_storage` (mimalloc, as in the binary)
/// stores a million distinct small responses and reports RSS growth per entry minus the
/// charged allocations. What it covers, x86-64: the `Arc<Object>` (144 B, a 160 B block), the
/// object-map slot (16 B + 1 control byte at 44–88 % load: 19–39 B), the LRU's slot (the same),
/// boxed node (24 B, a 32 B block) and list node (16 B + growth slack), and the index element
/// (56 B in B-tree nodes 50–100 % full, plus inner nodes: ~65–130 B). Measured: 397 B per
/// entry with all 1M entries kept; 405–495 B per entry under eviction churn with tiny and JSON
/// bodies at 16–256 MiB budgets (the extra is mimalloc pages left partly free by random
/// evictions). 544 = the worst of those plus 10 %, so `used_bytes` bounds the RSS the entries
/// hold even when the objects are tiny.
pub const ENTRY_OVERHEAD: usize = 544;

/// What an entry is about, for invalidation. The proxy puts one in `CacheKey::extensions` before lookup;
/// a key without one is stored under an empty tag (purgeable only by `purge_where`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryTag {
    /// `"shared"` or `"tenant:<id>"`.
    pub scope: Arc<str>,
    /// Lower-case host as keyed.
    pub host: Arc<str>,
    /// Path without query.
    pub path: Arc<str>,
    /// Query as keyed (`""` if none).
    pub query: Arc<str>,
}

impl EntryTag {
    /// A tag from its four parts.
    pub fn new(
        scope: impl Into<Arc<str>>,
        host: impl Into<Arc<str>>,
        path: impl Into<Arc<str>>,
        query: impl Into<Arc<str>>,
    ) -> Self {
        EntryTag {
            scope: scope.into(),
            host: host.into(),
            path: path.into(),
            query: query.into(),
        }
    }

    /// What the four `Arc<str>` allocations occupy (16-byte header each), charged to the
    /// entry's weight. Counted per entry even when the proxy shares one `Arc` (say the scope)
    /// between entries: an over-estimate, never an under-estimate.
    fn allocated_bytes(&self) -> usize {
        [&self.scope, &self.host, &self.path, &self.query]
            .into_iter()
            .map(|s| allocated(ARC_HEADER + s.len()))
            .sum()
    }

    /// Whether the tag names nothing (no scope, host or path), so the index skips it.
    fn is_untagged(&self) -> bool {
        self.scope.is_empty() && self.host.is_empty() && self.path.is_empty()
    }
}

/// A point-in-time view of the storage, cheap enough for every metrics scrape (atomic loads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Sum of the stored entries' weights (see [`ENTRY_OVERHEAD`]); at most `max_bytes` once an
    /// insert has returned.
    pub used_bytes: usize,
    /// Stored entries.
    pub entries: usize,
    /// Entries removed to stay within the budget (purges are not counted), since creation.
    pub evicted_entries: u64,
    /// Weight of those evicted entries.
    pub evicted_bytes: u64,
    /// The byte budget.
    pub max_bytes: usize,
}

/// One stored response.
struct Object {
    /// The full combined hash; the maps are keyed by its low 64 bits.
    hash: HashBinary,
    meta: StoredMeta,
    /// Exactly the body's bytes in one allocation, shared by the hits reading it (and kept when
    /// only the meta is replaced). Not a `Bytes`: that would add a shared header allocation per
    /// entry once read; a hit wraps a clone of this `Arc` instead.
    body: Arc<[u8]>,
    tag: EntryTag,
    /// Accounted bytes, as admitted to the LRU.
    weight: usize,
}

impl Object {
    fn new(hash: HashBinary, meta: StoredMeta, body: Arc<[u8]>, tag: EntryTag) -> Self {
        let weight = weigh(meta.bytes.len(), body.len(), &tag);
        Object {
            hash,
            meta,
            body,
            tag,
            weight,
        }
    }
}

/// An entry's weight: the allocations holding its body (`Arc<[u8]>`), serialized meta and tag
/// strings, at the size the allocator really reserves for them, plus [`ENTRY_OVERHEAD`].
fn weigh(meta_len: usize, body_len: usize, tag: &EntryTag) -> usize {
    allocated(ARC_HEADER.saturating_add(body_len))
        .saturating_add(allocated(meta_len))
        .saturating_add(tag.allocated_bytes())
        .saturating_add(ENTRY_OVERHEAD)
}

/// The two reference counts in front of an `Arc`'s data.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// The block the allocator reserves for an `n`-byte request: mimalloc's (v2, the `tollgate`
/// binary's global allocator) size classes, checked against `mi_usable_size`: multiples of 16
/// up to 128 B, then four classes per doubling up to 512 KiB. Past that mimalloc rounds to
/// 64 KiB–4 MiB steps that grow with the size; eight classes per doubling is at or above every
/// measured block. Charging this rather than `n` keeps the budget honest for sizes just past a
/// class boundary (a 513-byte body occupies 640). Other allocators round less coarsely, except
/// by a few bytes for tiny blocks, which [`ENTRY_OVERHEAD`]'s margin covers.
fn allocated(n: usize) -> usize {
    const LARGE: usize = 512 << 10;
    if n <= 128 {
        return n.max(1).next_multiple_of(if n <= 8 { 8 } else { 16 });
    }
    // 2^k < n <= 2^(k+1)
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    let classes_per_doubling = if n <= LARGE { 4 } else { 8 };
    n.checked_next_multiple_of((1 << k) / classes_per_doubling)
        .unwrap_or(usize::MAX)
}

/// `CacheMeta::serialize()` output, the internal meta and the compressed header concatenated
/// into one exact-size allocation (one allocation instead of two, and the serializers' spare
/// capacity is not kept: shrinking a `Vec` in place can keep its whole block).
struct StoredMeta {
    bytes: Box<[u8]>,
    /// Where the header starts.
    split: usize,
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<Self> {
        let (internal, header) = meta.serialize()?;
        let mut bytes = Vec::with_capacity(internal.len() + header.len());
        bytes.extend_from_slice(&internal);
        bytes.extend_from_slice(&header);
        Ok(StoredMeta {
            bytes: bytes.into_boxed_slice(),
            split: internal.len(),
        })
    }

    fn deserialize(&self) -> Result<CacheMeta> {
        meta_from_parts(&self.bytes, self.split)
    }
}

/// A meta from its stored form: `CacheMeta::serialize`'s two parts concatenated, the second
/// starting at `split` (as [`StoredEntry::meta`] gives them).
pub fn meta_from_parts(bytes: &[u8], split: usize) -> Result<CacheMeta> {
    let (internal, header) = bytes.split_at(split.min(bytes.len()));
    CacheMeta::deserialize(internal, header)
}

/// The map/LRU key: the low 64 bits of the combined hash.
fn short_key(hash: &HashBinary) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&hash[8..]);
    u64::from_le_bytes(low)
}

/// An element of the invalidation index: `(scope, host, path, key)`. Ordered, so one path and one
/// path prefix are contiguous ranges.
type IndexKey = (Arc<str>, Arc<str>, Arc<str>, u64);

fn index_key(tag: &EntryTag, key: u64) -> Option<IndexKey> {
    (!tag.is_untagged()).then(|| (tag.scope.clone(), tag.host.clone(), tag.path.clone(), key))
}

type Shard = RwLock<HashMap<u64, Arc<Object>>>;

/// A byte-bounded in-memory cache storage with LRU eviction and tag-based purges.
///
/// Storage methods take `&'static self`, as pingora requires: leak or `static` one instance.
pub struct MemoryStorage {
    shards: [Shard; SHARDS],
    /// Eviction order and weight accounting; the data is the key again, because an eviction
    /// returns only the data.
    lru: Lru<u64, SHARDS>,
    /// The invalidation index, and the writer lock (see the module doc for the lock order).
    index: Mutex<BTreeSet<IndexKey>>,
    max_bytes: usize,
}

impl MemoryStorage {
    /// A storage holding at most `max_bytes` of accounted weight (see [`ENTRY_OVERHEAD`]).
    /// An object heavier than `max_bytes` is never stored.
    pub fn new(max_bytes: usize) -> Self {
        MemoryStorage {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            lru: Lru::with_capacity(max_bytes, 0),
            index: Mutex::new(BTreeSet::new()),
            max_bytes,
        }
    }

    /// Counters for `/metrics`. Lock-free; under concurrent writes the fields are each current
    /// but not taken at one instant.
    pub fn stats(&self) -> StorageStats {
        StorageStats {
            used_bytes: self.lru.weight(),
            entries: self.lru.len(),
            evicted_entries: self.lru.evicted_len() as u64,
            evicted_bytes: self.lru.evicted_weight() as u64,
            max_bytes: self.max_bytes,
        }
    }

    /// Remove every entry (all query strings, all Vary variants) whose tag has exactly this
    /// scope, host and path. Returns how many were removed. O(log n + k).
    pub fn purge_path(&self, scope: &str, host: &str, path: &str) -> usize {
        if scope.is_empty() && host.is_empty() && path.is_empty() {
            return 0; // untagged entries are not indexed
        }
        let (scope, host, path): (Arc<str>, Arc<str>, Arc<str>) =
            (scope.into(), host.into(), path.into());
        let from = (scope.clone(), host.clone(), path.clone(), 0);
        let to = (scope, host, path, u64::MAX);
        let mut index = self.index.lock();
        let keys: Vec<u64> = index.range(from..=to).map(|k| k.3).collect();
        let removed = self.remove_keys(&mut index, &keys);
        drop(index);
        removed.len()
    }

    /// Remove every entry with this scope and host whose path starts with `prefix` (a string
    /// prefix: `/api` also matches `/api2`; pass `/api/` for a directory). Returns how many were
    /// removed. O(log n + k).
    pub fn purge_prefix(&self, scope: &str, host: &str, prefix: &str) -> usize {
        if scope.is_empty() && host.is_empty() && prefix.is_empty() {
            return 0;
        }
        // Strings starting with `prefix` sort at or after it and are contiguous.
        let from: IndexKey = (scope.into(), host.into(), prefix.into(), 0);
        let mut index = self.index.lock();
        let keys: Vec<u64> = index
            .range((Bound::Included(from), Bound::Unbounded))
            .take_while(|(s, h, p, _)| {
                &**s == scope && &**h == host && p.as_bytes().starts_with(prefix.as_bytes())
            })
            .map(|k| k.3)
            .collect();
        let removed = self.remove_keys(&mut index, &keys);
        drop(index);
        removed.len()
    }

    /// Remove every entry whose tag satisfies `pred` (untagged entries are offered with an empty
    /// tag). A full scan, for admin purges: by tenant, by path across hosts, by exact URL with
    /// query. Returns how many were removed.
    ///
    /// `pred` runs with no storage lock held (shard by shard, over a snapshot), so it may do
    /// anything; an entry inserted while the scan runs may be missed, like any insert that
    /// races a purge.
    pub fn purge_where(&self, pred: impl Fn(&EntryTag) -> bool) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            // Snapshot the shard (one refcount each), then test without holding its lock.
            let snapshot: Vec<(u64, Arc<Object>)> =
                shard.read().iter().map(|(k, o)| (*k, o.clone())).collect();
            let doomed: Vec<(u64, Arc<Object>)> =
                snapshot.into_iter().filter(|(_, o)| pred(&o.tag)).collect();
            if doomed.is_empty() {
                continue;
            }
            let mut index = self.index.lock();
            let mut graveyard = Vec::with_capacity(doomed.len());
            for (key, obj) in &doomed {
                // Only the object that was tested: a replacement may have another tag.
                if let Some(gone) = self.remove_locked(&mut index, *key, |o| Arc::ptr_eq(o, obj)) {
                    graveyard.push(gone);
                }
            }
            drop(index);
            removed += graveyard.len();
        }
        removed
    }

    fn shard(&self, key: u64) -> &Shard {
        // Bits 32.. pick the shard: the map's hasher and the LRU's shard choice use others.
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    /// The object stored for this full hash, if any.
    fn get(&self, hash: &HashBinary) -> Option<Arc<Object>> {
        let key = short_key(hash);
        let obj = self.shard(key).read().get(&key).cloned()?;
        (obj.hash == *hash).then_some(obj)
    }

    /// Remove `key` from map, LRU and index if its object passes `check`. The caller holds the
    /// index lock (the writer lock). Returns the removed object so the caller can drop it after
    /// releasing the lock.
    fn remove_locked(
        &self,
        index: &mut BTreeSet<IndexKey>,
        key: u64,
        check: impl FnOnce(&Arc<Object>) -> bool,
    ) -> Option<Arc<Object>> {
        let obj = {
            let mut shard = self.shard(key).write();
            if !shard.get(&key).is_some_and(check) {
                return None;
            }
            let obj = shard.remove(&key)?;
            self.lru.remove(key);
            obj
        };
        if let Some(ik) = index_key(&obj.tag, key) {
            index.remove(&ik);
        }
        Some(obj)
    }

    fn remove_keys(&self, index: &mut BTreeSet<IndexKey>, keys: &[u64]) -> Vec<Arc<Object>> {
        keys.iter()
            .filter_map(|k| self.remove_locked(index, *k, |_| true))
            .collect()
    }

    /// Remove the object stored for this full hash. Returns it (to drop outside the lock).
    fn remove_hash(&self, hash: &HashBinary) -> Option<Arc<Object>> {
        let mut index = self.index.lock();
        self.remove_locked(&mut index, short_key(hash), |o| o.hash == *hash)
    }

    /// Store `obj`, replacing whatever had its key, then evict down to the budget. The caller
    /// checked `obj.weight <= max_bytes`.
    fn insert(&self, obj: Object) {
        let key = short_key(&obj.hash);
        let weight = obj.weight;
        let obj = Arc::new(obj);
        let mut graveyard = Vec::new();
        let mut index = self.index.lock();
        let replaced = {
            let mut shard = self.shard(key).write();
            let old = shard.insert(key, obj.clone());
            // Under the shard lock so no reader sees the object without an LRU node to promote
            // (a promote of a missing key is harmless anyway). Replacing adjusts the weight.
            self.lru.admit(key, key, weight);
            old
        };
        if let Some(old) = replaced {
            if let Some(ik) = index_key(&old.tag, key) {
                index.remove(&ik);
            }
            graveyard.push(old);
        }
        if let Some(ik) = index_key(&obj.tag, key) {
            index.insert(ik);
        }
        self.evict_locked(&mut index, &mut graveyard);
        drop(index);
        drop(graveyard); // free bodies outside the lock
    }

    /// Evict least-recently-used entries until the LRU weight is within the budget. The LRU has
    /// already dropped them; take them out of the map and the index too.
    fn evict_locked(&self, index: &mut BTreeSet<IndexKey>, graveyard: &mut Vec<Arc<Object>>) {
        for (key, _weight) in self.lru.evict_to_limit() {
            let obj = self.shard(key).write().remove(&key);
            // Every LRU node has its object: both change only under the writer lock.
            debug_assert!(obj.is_some(), "evicted key {key:x} missing from the map");
            if let Some(obj) = obj {
                if let Some(ik) = index_key(&obj.tag, key) {
                    index.remove(&ik);
                }
                graveyard.push(obj);
            }
        }
    }

    /// Swap the meta of the object stored for `hash` for `f(old meta)`, re-weighing it (the
    /// body is shared, not copied). `promote` moves it to the LRU head (a revalidation is an
    /// access; an expiry is not).
    fn replace_meta(
        &self,
        hash: &HashBinary,
        promote: bool,
        f: impl FnOnce(&Object) -> Result<StoredMeta>,
    ) -> Result<MetaSwap> {
        let key = short_key(hash);
        let mut graveyard = Vec::new();
        let mut index = self.index.lock();
        // Holding the writer lock: nothing else can replace or remove the object meanwhile.
        let Some(old) = self.get(hash) else {
            return Ok(MetaSwap::Missing);
        };
        let meta = f(&old)?;
        let new = Object::new(old.hash, meta, old.body.clone(), old.tag.clone());
        if new.weight > self.max_bytes {
            // The grown entry no longer fits at all.
            graveyard.extend(self.remove_locked(&mut index, key, |_| true));
            drop(index);
            return Ok(MetaSwap::Removed);
        }
        let weight = new.weight;
        {
            let mut shard = self.shard(key).write();
            graveyard.extend(shard.insert(key, Arc::new(new)));
            if promote {
                self.lru.admit(key, key, weight);
            } else {
                self.lru.set_weight(key, weight);
            }
        }
        self.evict_locked(&mut index, &mut graveyard);
        drop(index);
        Ok(MetaSwap::Swapped)
    }
}

/// One stored entry, as the shared tier copies it to Redis: its serialized meta, body and tag
/// (shared with the store, not copied).
pub struct StoredEntry(Arc<Object>);

impl StoredEntry {
    /// The serialized meta (`CacheMeta::serialize`'s two parts, concatenated) and where the
    /// second part starts.
    pub fn meta(&self) -> (&[u8], usize) {
        (&self.0.meta.bytes, self.0.meta.split)
    }

    /// The body.
    pub fn body(&self) -> &Arc<[u8]> {
        &self.0.body
    }

    /// What the entry is about.
    pub fn tag(&self) -> &EntryTag {
        &self.0.tag
    }
}

impl MemoryStorage {
    /// The entry stored for this full hash, if any (no LRU promotion: this is not a hit).
    pub fn entry(&self, hash: &HashBinary) -> Option<StoredEntry> {
        self.get(hash).map(StoredEntry)
    }

    /// Store an entry read from elsewhere (the shared tier): serialized meta (`split` as in
    /// [`StoredEntry::meta`]), body and tag. Returns false when it alone outweighs the budget
    /// (it is not stored).
    pub fn insert_parts(
        &self,
        hash: HashBinary,
        meta: Box<[u8]>,
        split: usize,
        body: Arc<[u8]>,
        tag: EntryTag,
    ) -> bool {
        let obj = Object::new(hash, StoredMeta { bytes: meta, split }, body, tag);
        if obj.weight > self.max_bytes {
            return false;
        }
        self.insert(obj);
        true
    }

    /// A hit over parts that are not stored here (an entry of the shared tier too heavy for
    /// this store's budget).
    pub fn detached_hit(
        meta: Box<[u8]>,
        split: usize,
        body: Arc<[u8]>,
    ) -> Result<(CacheMeta, HitHandler)> {
        let meta = StoredMeta { bytes: meta, split }.deserialize()?;
        let len = body.len();
        let hit = Hit {
            body: Bytes::from_owner(body),
            weight: 0,
            done: false,
            range_start: 0,
            range_end: len,
        };
        Ok((meta, Box::new(hit)))
    }
}

/// What [`MemoryStorage::replace_meta`] did.
#[derive(Debug, PartialEq, Eq)]
enum MetaSwap {
    Swapped,
    /// Nothing is stored for the key.
    Missing,
    /// The entry with its new meta would outweigh the whole budget, so it was removed.
    Removed,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Hit handler over a whole stored body. Seekable, so Range requests are served from cache.
/// The seek logic follows pingora-cache's `memory.rs` `CompleteHit` (Apache-2.0), except that
/// bodies are handed out as zero-copy `Bytes` slices, a seek without an end reads to the end
/// even after a bounded seek, and an empty range is rejected instead of panicking.
struct Hit {
    /// A `Bytes` owning a clone of the object's body `Arc` (one small allocation per hit).
    body: Bytes,
    weight: usize,
    done: bool,
    range_start: usize,
    range_end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range_start..self.range_end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive; an `end` past the body is clamped to it.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        let end = end.map_or(len, |e| e.min(len));
        if end <= start {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek range empty: {start}..{end}"),
            );
        }
        self.range_start = start;
        self.range_end = end;
        // Seeking resets the read, so one handler serves each part of a multipart range.
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Buffers one response body; the object is stored at `finish`. Dropped without `finish` (an
/// upstream error, a client abort), it stores nothing.
struct Miss {
    storage: &'static MemoryStorage,
    hash: HashBinary,
    tag: EntryTag,
    meta: StoredMeta,
    chunks: Vec<Bytes>,
    body_len: usize,
    /// The body already makes the object heavier than the whole budget: stop buffering.
    too_big: bool,
}

impl Miss {
    fn weight(&self) -> usize {
        weigh(self.meta.bytes.len(), self.body_len, &self.tag)
    }
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_big {
            return Ok(());
        }
        self.body_len += data.len();
        if self.weight() > self.storage.max_bytes {
            // It will not be stored: do not hold a huge body until the fill ends.
            self.too_big = true;
            self.chunks = Vec::new();
        } else if !data.is_empty() {
            self.chunks.push(data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_big || self.weight() > self.storage.max_bytes {
            // The newest response for this key cannot be kept; do not keep serving an older one.
            drop(self.storage.remove_hash(&self.hash));
            return Ok(MissFinishType::Created(0));
        }
        // Copy into one exact-size allocation: the chunks may be slices of larger read buffers
        // that would otherwise stay alive, unaccounted, as long as the entry. (Collecting a
        // `repeat_n` allocates the `Arc` once, at its final size; filling it is one copy.)
        let mut body: Arc<[u8]> = std::iter::repeat_n(0, self.body_len).collect();
        let dst = Arc::get_mut(&mut body).expect("just allocated, unshared");
        let mut at = 0;
        for chunk in &self.chunks {
            dst[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        }
        let Miss {
            storage,
            hash,
            tag,
            meta,
            ..
        } = *self;
        let obj = Object::new(hash, meta, body, tag);
        let weight = obj.weight;
        storage.insert(obj);
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let Some(obj) = self.get(&hash) else {
            return Ok(None);
        };
        let meta = obj.meta.deserialize()?;
        self.lru.promote(short_key(&hash));
        let hit = Hit {
            body: Bytes::from_owner(obj.body.clone()),
            weight: obj.weight,
            done: false,
            range_start: 0,
            range_end: obj.body.len(),
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let tag = key
            .extensions
            .get::<EntryTag>()
            .cloned()
            .unwrap_or_default();
        let mut miss = Miss {
            storage: self,
            hash: key.combined_bin(),
            tag,
            meta: StoredMeta::new(meta)?,
            chunks: Vec::new(),
            body_len: 0,
            too_big: false,
        };
        miss.too_big = miss.weight() > self.max_bytes;
        Ok(Box::new(miss))
    }

    /// Removes the entry for `target.key().combined_bin()`. Entry ids are never handed out
    /// (no `entry_id()` on hits or misses), so an exact target with an id cannot name an entry
    /// stored here and is `NotFound`, as the trait's contract requires (and as pingora's
    /// `MemCache` does). Like `MemCache`, a purge through pingora usually carries only the
    /// primary key: Vary variants are reached by [`MemoryStorage::purge_path`].
    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let PurgeTarget::Exact(entry) = target {
            if entry.entry_id().is_some() {
                return Ok(PurgeOutcome::NotFound);
            }
        }
        Ok(match self.remove_hash(&target.key().combined_bin()) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    /// Marks the entry stale by rewriting its meta with `expire_at(now)` (serve-stale windows
    /// untouched); the body stays for a 304 revalidation.
    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let PurgeTarget::Exact(entry) = target {
            if entry.entry_id().is_some() {
                return Ok(PurgeOutcome::NotFound);
            }
        }
        let swap = self.replace_meta(&target.key().combined_bin(), false, |obj| {
            let mut meta = obj.meta.deserialize()?;
            meta.expire_at(SystemTime::now());
            StoredMeta::new(&meta)
        })?;
        Ok(match swap {
            MetaSwap::Swapped => PurgeOutcome::Expired,
            MetaSwap::Missing => PurgeOutcome::NotFound,
            MetaSwap::Removed => PurgeOutcome::Purged(None),
        })
    }

    /// Replaces the stored meta (after a 304 revalidation). `Ok(false)` when the entry is gone
    /// (evicted or purged meanwhile), never a panic.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = StoredMeta::new(meta)?;
        let swap = self.replace_meta(&key.combined_bin(), true, |_| Ok(meta))?;
        Ok(swap == MetaSwap::Swapped)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::eviction::{CacheEntryId, CacheEntryKey};
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn leak(max_bytes: usize) -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(max_bytes)))
    }

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    fn meta() -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .append_header("content-type", "application/json")
            .unwrap();
        header.append_header("etag", "\"abc\"").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(300), now, 30, 30, header)
    }

    fn tag(scope: &str, host: &str, path: &str, query: &str) -> EntryTag {
        EntryTag {
            scope: scope.into(),
            host: host.into(),
            path: path.into(),
            query: query.into(),
        }
    }

    /// A key for `scope host path?query`, tagged like the proxy would tag it.
    fn key(t: &EntryTag) -> CacheKey {
        let mut k = CacheKey::new(format!("{}|{}|{}?{}", t.scope, t.host, t.path, t.query), "");
        k.extensions.insert(t.clone());
        k
    }

    fn n_key(i: usize) -> CacheKey {
        key(&tag("shared", "h", &format!("/k/{i}"), ""))
    }

    async fn store(s: &'static MemoryStorage, k: &CacheKey, m: &CacheMeta, body: &[u8]) -> usize {
        let mut miss = s.get_miss_handler(k, m, &span()).await.unwrap();
        // Two chunks, as a response usually arrives.
        let mid = body.len() / 2;
        miss.write_body(Bytes::copy_from_slice(&body[..mid]), false)
            .await
            .unwrap();
        miss.write_body(Bytes::copy_from_slice(&body[mid..]), true)
            .await
            .unwrap();
        match miss.finish().await.unwrap() {
            MissFinishType::Created(w) => w,
            MissFinishType::Appended(..) => panic!("whole bodies are created"),
        }
    }

    async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    async fn body_of(s: &'static MemoryStorage, k: &CacheKey) -> Option<Vec<u8>> {
        let (_, mut hit) = s.lookup(k, &span()).await.unwrap()?;
        Some(read_all(&mut hit).await)
    }

    /// Map, LRU and index agree, and the weights add up.
    fn assert_consistent(s: &MemoryStorage) {
        let index = s.index.lock();
        let mut entries = 0;
        let mut weight = 0;
        let mut tagged = 0;
        for shard in &s.shards {
            for (k, o) in shard.read().iter() {
                assert_eq!(*k, short_key(&o.hash));
                assert_eq!(s.lru.peek_weight(*k), Some(o.weight), "LRU weight of {k:x}");
                if let Some(ik) = index_key(&o.tag, *k) {
                    assert!(index.contains(&ik), "index misses {k:x}");
                    tagged += 1;
                }
                entries += 1;
                weight += o.weight;
            }
        }
        assert_eq!(index.len(), tagged, "stale index elements");
        let stats = s.stats();
        assert_eq!(stats.entries, entries);
        assert_eq!(stats.used_bytes, weight);
        assert!(stats.used_bytes <= stats.max_bytes);
    }

    #[test]
    fn allocated_follows_mimalloc_size_classes() {
        // (request, mi_usable_size) pairs measured with mimalloc 2.3 (libmimalloc-sys 0.1.49).
        let measured = [
            (1, 8),
            (9, 16),
            (17, 32),
            (100, 112),
            (128, 128),
            (129, 160),
            (168, 192),
            (257, 320),
            (513, 640),
            (4104, 5120),
            (10255, 12288),
            (131_141, 163_840),
            (459_215, 524_288),
            (524_339, 589_824),
        ];
        for (n, usable) in measured {
            assert_eq!(allocated(n), usable, "{n}");
        }
        // Past 512 KiB the model may round up more than mimalloc, never less.
        let large = [
            (1_049_994, 1_114_112),
            (2_228_240, 2_359_296),
            (4_195_315, 4_456_448),
            (8_402_850, 9_437_184),
            (16_797_668, 17_825_792),
            (33_579_492, 37_748_736),
        ];
        for (n, usable) in large {
            assert!(allocated(n) >= usable, "{n}");
            assert!(allocated(n) <= n + n / 8, "{n}");
        }
        for n in (1..1_000_000).chain([usize::MAX / 2, usize::MAX]) {
            assert!(allocated(n) >= n);
        }
    }

    #[tokio::test]
    async fn store_then_lookup_round_trips_meta_and_body() {
        let s = leak(1 << 20);
        let k = n_key(1);
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        let m = meta();
        let w = store(s, &k, &m, b"hello world").await;
        let (got, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(got.created(), m.created());
        assert_eq!(got.response_header().status, 200);
        assert_eq!(
            got.headers().get("etag").unwrap().as_bytes(),
            &b"\"abc\""[..]
        );
        assert!(got.is_fresh(SystemTime::now()));
        assert_eq!(hit.get_eviction_weight(), w);
        assert_eq!(read_all(&mut hit).await, b"hello world");
        let (internal, header) = m.serialize().unwrap();
        let t = k.extensions.get::<EntryTag>().unwrap();
        assert_eq!(
            w,
            allocated(16 + 11)
                + allocated(internal.len() + header.len())
                + t.allocated_bytes()
                + ENTRY_OVERHEAD
        );
        assert_eq!(
            s.stats(),
            StorageStats {
                used_bytes: w,
                entries: 1,
                evicted_entries: 0,
                evicted_bytes: 0,
                max_bytes: 1 << 20
            }
        );
        assert_consistent(s);
    }

    #[tokio::test]
    async fn hit_handler_seeks_like_ranges_need() {
        let s = leak(1 << 20);
        let k = n_key(1);
        store(s, &k, &meta(), b"test1test2").await;
        let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek());
        assert!(hit.seek(10, None).is_err());
        assert!(hit.seek(3, Some(3)).is_err());
        hit.seek(5, None).unwrap();
        assert_eq!(read_all(&mut hit).await, b"test2");
        hit.seek(4, Some(5)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"1");
        // An open end after a bounded seek reads to the end again.
        hit.seek(8, None).unwrap();
        assert_eq!(read_all(&mut hit).await, b"t2");
        hit.seek(0, Some(1000)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"test1test2");
    }

    #[tokio::test]
    async fn storing_again_replaces_and_reweighs() {
        let s = leak(1 << 20);
        let k = n_key(1);
        let w1 = store(s, &k, &meta(), &[b'a'; 100]).await;
        let w2 = store(s, &k, &meta(), &[b'b'; 300]).await;
        assert_eq!(w2 - w1, allocated(16 + 300) - allocated(16 + 100));
        assert_eq!(body_of(s, &k).await.unwrap(), vec![b'b'; 300]);
        let stats = s.stats();
        assert_eq!((stats.entries, stats.used_bytes), (1, w2));
        // Replaced under another tag: the index follows.
        let mut moved = k.clone();
        moved
            .extensions
            .insert(tag("shared", "h", "/elsewhere", ""));
        store(s, &moved, &meta(), b"x").await;
        assert_eq!(s.purge_path("shared", "h", "/k/1"), 0);
        assert_eq!(s.purge_path("shared", "h", "/elsewhere"), 1);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn eviction_keeps_within_budget_and_drops_least_recently_used() {
        let body = [b'x'; 100];
        let w = weigh(
            {
                let (a, b) = meta().serialize().unwrap();
                a.len() + b.len()
            },
            body.len(),
            n_key(1000).extensions.get::<EntryTag>().unwrap(),
        );
        // Room for 1600 entries (100 per LRU shard); keys of the same length weigh the same.
        let s = leak(1600 * w + w / 2);
        let m = meta();
        for i in 1000..2600 {
            store(s, &n_key(i), &m, &body).await;
            assert!(s.stats().used_bytes <= s.stats().max_bytes);
        }
        assert_eq!(s.stats().entries, 1600);
        assert_eq!(s.stats().evicted_entries, 0);
        // Touch ten of the oldest.
        for i in 1000..1010 {
            assert!(body_of(s, &n_key(i)).await.is_some());
        }
        for i in 2600..3000 {
            store(s, &n_key(i), &m, &body).await;
            let stats = s.stats();
            assert!(stats.used_bytes <= stats.max_bytes);
        }
        let stats = s.stats();
        assert_eq!((stats.entries, stats.evicted_entries), (1600, 400));
        assert_eq!(stats.evicted_bytes, 400 * w as u64);
        for i in 1000..1010 {
            assert!(s.get(&n_key(i).combined_bin()).is_some(), "promoted {i}");
        }
        for i in 2600..3000 {
            assert!(s.get(&n_key(i).combined_bin()).is_some(), "newest {i}");
        }
        // Strict per LRU shard, approximate across them: most of the oldest untouched are gone.
        let old_left = (1010..1210)
            .filter(|i| s.get(&n_key(*i).combined_bin()).is_some())
            .count();
        assert!(old_left < 40, "{old_left} of the 200 oldest survived");
        assert_consistent(s);
    }

    #[tokio::test]
    async fn many_inserts_never_exceed_the_budget() {
        let s = leak(200_000);
        let m = meta();
        for i in 0..3000 {
            let len = (i * 37) % 4000;
            store(s, &n_key(i), &m, &vec![b'y'; len]).await;
            assert!(s.stats().used_bytes <= 200_000);
        }
        let stats = s.stats();
        assert!(stats.evicted_entries > 2000);
        assert!(stats.used_bytes > 150_000, "{stats:?}");
        assert_consistent(s);
    }

    #[tokio::test]
    async fn an_object_heavier_than_the_budget_is_not_stored() {
        let s = leak(10_000);
        let small = n_key(1);
        store(s, &small, &meta(), b"small").await;
        let big = n_key(2);
        assert_eq!(store(s, &big, &meta(), &[0; 20_000]).await, 0);
        assert!(s.lookup(&big, &span()).await.unwrap().is_none());
        assert!(body_of(s, &small).await.is_some(), "nothing evicted for it");
        // A too-big response replacing a stored one removes the stale one.
        assert_eq!(store(s, &small, &meta(), &[0; 20_000]).await, 0);
        assert!(s.lookup(&small, &span()).await.unwrap().is_none());
        assert_eq!(s.stats().entries, 0);
        assert_eq!(s.stats().used_bytes, 0);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn a_miss_dropped_without_finish_stores_nothing() {
        let s = leak(1 << 20);
        let k = n_key(1);
        let mut miss = s.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(s.stats().entries, 0);
    }

    #[tokio::test]
    async fn purge_removes_the_entry() {
        let s = leak(1 << 20);
        let k = n_key(1);
        store(s, &k, &meta(), b"body").await;
        let compact = k.to_compact();
        let out = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(out, PurgeOutcome::Purged(None));
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        let again = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(again, PurgeOutcome::NotFound);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn exact_purge_matches_key_only_entries() {
        let s = leak(1 << 20);
        let k = n_key(1);
        store(s, &k, &meta(), b"body").await;
        let identified = CacheEntryKey::identified(k.to_compact(), CacheEntryId::new(1));
        let out = s
            .purge(
                PurgeTarget::Exact(&identified),
                PurgeType::Eviction,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(out, PurgeOutcome::NotFound);
        assert!(s.lookup(&k, &span()).await.unwrap().is_some());
        let key_only = CacheEntryKey::key_only(k.to_compact());
        let out = s
            .purge(PurgeTarget::Exact(&key_only), PurgeType::Eviction, &span())
            .await
            .unwrap();
        assert_eq!(out, PurgeOutcome::Purged(None));
        assert_eq!(s.stats().entries, 0);
    }

    #[tokio::test]
    async fn expire_keeps_the_body_but_makes_it_stale() {
        let s = leak(1 << 20);
        let k = n_key(1);
        store(s, &k, &meta(), b"body").await;
        let compact = k.to_compact();
        let out = s.expire(PurgeTarget::Active(&compact), &span()).await;
        assert_eq!(out.unwrap(), PurgeOutcome::Expired);
        let (m, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(!m.is_fresh(SystemTime::now() + Duration::from_secs(1)));
        assert!(m.serve_stale_while_revalidate(SystemTime::now()));
        assert_eq!(read_all(&mut hit).await, b"body");
        let missing = n_key(2).to_compact();
        let out = s.expire(PurgeTarget::Active(&missing), &span()).await;
        assert_eq!(out.unwrap(), PurgeOutcome::NotFound);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn update_meta_replaces_meta_and_reports_a_missing_entry() {
        let s = leak(1 << 20);
        let k = n_key(1);
        let w = store(s, &k, &meta(), b"body").await;
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("etag", "\"def\"").unwrap();
        // Incompressible, so the (zstd-compressed) header surely grows.
        let noise: String = (0..500u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        header.append_header("x-long", noise.as_str()).unwrap();
        let now = SystemTime::now();
        let fresh = CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, header);
        assert!(s.update_meta(&k, &fresh, &span()).await.unwrap());
        let (m, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(m.headers().get("etag").unwrap().as_bytes(), b"\"def\"");
        assert_eq!(read_all(&mut hit).await, b"body");
        assert!(s.stats().used_bytes > w, "re-weighed");
        assert_consistent(s);
        assert!(!s.update_meta(&n_key(2), &fresh, &span()).await.unwrap());

        // Grown past the whole budget: removed, and reported as not updated.
        let tight = leak(w + 64);
        store(tight, &k, &meta(), b"body").await;
        assert!(!tight.update_meta(&k, &fresh, &span()).await.unwrap());
        assert!(tight.lookup(&k, &span()).await.unwrap().is_none());
        assert_consistent(tight);
    }

    #[tokio::test]
    async fn hashes_sharing_64_bits_never_serve_each_other() {
        let s = leak(1 << 20);
        let t = tag("shared", "h", "/c", "");
        let (mut a, mut b) = (key(&t), key(&t));
        let (mut ha, mut hb) = ([7u8; 16], [7u8; 16]);
        ha[0] = 1;
        hb[0] = 2; // same low 64 bits (bytes 8..16), different hash
        a.set_primary_bin_override(ha);
        b.set_primary_bin_override(hb);
        store(s, &a, &meta(), b"a").await;
        assert!(s.lookup(&b, &span()).await.unwrap().is_none());
        let compact = b.to_compact();
        let out = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await;
        assert_eq!(out.unwrap(), PurgeOutcome::NotFound);
        assert!(!s.update_meta(&b, &meta(), &span()).await.unwrap());
        // Storing b takes the slot: one entry, a's body never served for b.
        store(s, &b, &meta(), b"b").await;
        assert_eq!(body_of(s, &b).await.unwrap(), b"b");
        assert!(s.lookup(&a, &span()).await.unwrap().is_none());
        assert_eq!(s.stats().entries, 1);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn purge_path_removes_every_query_and_variant() {
        let s = leak(1 << 20);
        let m = meta();
        let t = tag("shared", "api.example", "/v1/items", "");
        let mut plain = key(&t);
        let mut gzip = plain.clone();
        plain.set_variance_key([1; 16]);
        gzip.set_variance_key([2; 16]);
        store(s, &plain, &m, b"plain").await;
        store(s, &gzip, &m, b"gzip").await;
        let q = key(&tag("shared", "api.example", "/v1/items", "page=2"));
        store(s, &q, &m, b"page 2").await;
        let other_path = key(&tag("shared", "api.example", "/v1/items/7", ""));
        let other_scope = key(&tag("tenant:acme", "api.example", "/v1/items", ""));
        let other_host = key(&tag("shared", "www.example", "/v1/items", ""));
        for k in [&other_path, &other_scope, &other_host] {
            store(s, k, &m, b"keep").await;
        }
        assert_eq!(s.stats().entries, 6);
        assert_eq!(s.purge_path("shared", "api.example", "/v1/items"), 3);
        for k in [&plain, &gzip, &q] {
            assert!(s.lookup(k, &span()).await.unwrap().is_none());
        }
        for k in [&other_path, &other_scope, &other_host] {
            assert!(s.lookup(k, &span()).await.unwrap().is_some());
        }
        assert_eq!(s.purge_path("shared", "api.example", "/v1/items"), 0);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn purge_prefix_removes_a_subtree_of_one_host() {
        let s = leak(1 << 20);
        let m = meta();
        let paths = ["/a", "/a/1", "/a/2/x", "/ab", "/b", "/"];
        for p in paths {
            store(s, &key(&tag("shared", "h", p, "")), &m, b"x").await;
            store(s, &key(&tag("shared", "other", p, "")), &m, b"x").await;
        }
        store(s, &key(&tag("shared", "h", "/a/1", "q=1")), &m, b"x").await;
        assert_eq!(s.purge_prefix("shared", "h", "/a/"), 3);
        assert_eq!(s.purge_prefix("shared", "h", "/a"), 2); // "/a" and "/ab"
        assert!(s
            .lookup(&key(&tag("shared", "h", "/a/1", "")), &span())
            .await
            .unwrap()
            .is_none());
        assert!(s
            .lookup(&key(&tag("shared", "other", "/a/1", "")), &span())
            .await
            .unwrap()
            .is_some());
        assert_eq!(s.purge_prefix("shared", "h", "/"), 2);
        assert_eq!(s.stats().entries, 6);
        assert_eq!(s.purge_prefix("shared", "h", "/"), 0);
        assert_consistent(s);
    }

    #[tokio::test]
    async fn purge_where_scans_everything_including_untagged() {
        let s = leak(1 << 20);
        let m = meta();
        for i in 0..10 {
            let scope = if i % 2 == 0 { "tenant:a" } else { "tenant:b" };
            let q = format!("n={i}");
            store(s, &key(&tag(scope, "h", "/x", &q)), &m, b"x").await;
        }
        let untagged = CacheKey::new("no tag", "");
        store(s, &untagged, &m, b"u").await;
        assert_eq!(s.purge_path("", "", ""), 0);
        assert_eq!(s.purge_prefix("", "", ""), 0);
        assert_eq!(s.purge_where(|t| &*t.scope == "tenant:a"), 5);
        assert_eq!(s.purge_where(|t| &*t.query == "n=3"), 1);
        assert_eq!(s.stats().entries, 5);
        assert!(body_of(s, &untagged).await.is_some());
        assert_eq!(s.purge_where(|t| t == &EntryTag::default()), 1);
        assert!(s.lookup(&untagged, &span()).await.unwrap().is_none());
        // The predicate may call back into the storage: no lock is held while it runs.
        assert_eq!(s.purge_where(|_| s.stats().entries > 0), 4);
        assert_eq!(s.stats().entries, 0);
        assert_consistent(s);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_keep_accounting_consistent() {
        let s = leak(400_000);
        // Each body starts with its key's number, so a reader can tell a wrong body.
        let body_for = |n: usize, len: usize| {
            let mut b = format!("{n}:").into_bytes();
            b.resize(b.len() + len, b'c');
            b
        };
        let writers = (0..8).map(|t| {
            tokio::spawn(async move {
                let m = meta();
                for i in 0..600 {
                    // Overlapping keys across tasks, so replacements race too.
                    let n = (t * 300 + i) % 2000;
                    let k = n_key(n);
                    store(s, &k, &m, &body_for(n, (t * 131 + i * 17) % 1500)).await;
                    if i % 50 == 0 {
                        s.purge_prefix("shared", "h", &format!("/k/{t}"));
                    }
                    if i % 97 == 0 {
                        s.purge_where(|tag| tag.path.ends_with('7'));
                    }
                    if i % 3 == 0 {
                        let _ = s.update_meta(&k, &m, &span()).await.unwrap();
                        let compact = k.to_compact();
                        let _ = s.expire(PurgeTarget::Active(&compact), &span()).await;
                    }
                    tokio::task::yield_now().await;
                }
            })
        });
        let readers = (0..2).map(|r| {
            tokio::spawn(async move {
                for i in 0..3000 {
                    let n = (i * 7 + r) % 2000;
                    if let Some(body) = body_of(s, &n_key(n)).await {
                        assert!(body.starts_with(format!("{n}:").as_bytes()), "key {n}");
                    }
                    tokio::task::yield_now().await;
                }
            })
        });
        let tasks: Vec<_> = writers.chain(readers).collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(s.stats().evicted_entries > 0);
        assert_consistent(s);
    }
}
