//! The response cache: Pingora's `HttpCache` state machine (lookup, coalescing lock,
//! stale-while-revalidate, stale-if-error, revalidation) over tollgate's own bounded store.
//!
//! - [`storage`]: the in-memory store, bounded in bytes with LRU eviction and an index for purges.
//! - [`key`]: cache keys (method, host, path, query as configured, scope) and `Vary` variance.
//! - [`policy`]: RFC 9111 storage and freshness decisions as pure functions over headers.
//! - [`status`]: the `Cache-Status` (RFC 9211) and `X-Cache-Status` answers.
//! - [`purge`]: admin purges, and invalidation by non-error answers to unsafe (or unknown)
//!   methods.
//! - [`bus`]: the fleet's purge stream in Redis: every replica applies every replica's purges.
//! - [`shared`]: the fleet's second tier in Redis and its fill lock, behind the local store.
//!
//! The store and the cache lock are process-wide (`&'static`, as Pingora requires): they are
//! created once by [`init`] and survive config reloads, so a reload never empties the cache.

pub mod bus;
pub mod key;
pub mod policy;
pub mod purge;
pub mod shared;
pub mod status;
pub mod storage;

pub use key::{QueryKey, Scope};

use crate::config::model::{self, CacheConfig, RouteCacheConfig, SharedTier};
use crate::fleet::Link;
use once_cell::sync::OnceCell;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use std::sync::Arc;
use std::time::Duration;
use storage::MemoryStorage;

/// The process-wide cache: store, lock and the limits they were built with.
pub struct Cache {
    /// Where responses live, on this replica.
    pub storage: &'static MemoryStorage,
    /// What the proxy's cache uses: `storage`, and the fleet's shared tier when configured.
    pub tiered: &'static shared::TieredStorage,
    /// The fleet's purge stream, when `redis:` is set (and `cache.purge_bus`).
    pub bus: Option<&'static bus::PurgeBus>,
    /// Coalesces concurrent misses (and revalidations) of one key into one upstream request.
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers keys whose last response could not be stored, so their requests skip the
    /// lock instead of queueing behind each other (they go straight to the upstream).
    pub predictor: &'static (dyn CacheablePredictor + Sync),
    /// Largest body stored.
    pub max_object_size: usize,
    /// How long a request waits on another's fetch of the same key.
    pub lock_timeout: Duration,
}

static CACHE: OnceCell<Cache> = OnceCell::new();

/// The store's limits, compiled from the top-level `cache:` section (restart-only).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// Bytes the store may hold.
    pub max_size: usize,
    /// Largest body stored.
    pub max_object_size: usize,
    /// How long a request waits on another's fetch of the same key.
    pub lock_timeout: Duration,
    /// The fleet's second tier (`cache.shared: redis`).
    pub shared: bool,
    /// Largest body copied to the shared tier.
    pub shared_max_object_size: usize,
    /// One origin fetch per key fleet-wide.
    pub shared_fill_lock: bool,
    /// The fleet fill lock's life (and the longest wait on it).
    pub shared_lock_timeout: Duration,
    /// Purges travel to the other replicas (with `redis:`).
    pub purge_bus: bool,
    /// Purges the stream keeps.
    pub purge_stream_length: usize,
}

impl StoreSettings {
    /// Compile a validated `cache:` section.
    pub fn new(c: &CacheConfig) -> Self {
        StoreSettings {
            max_size: c.max_size.bytes() as usize,
            max_object_size: c.max_object_size.bytes() as usize,
            lock_timeout: c.lock_timeout.get(),
            shared: c.shared == SharedTier::Redis,
            shared_max_object_size: c.shared_max_object_size.bytes() as usize,
            shared_fill_lock: c.shared_fill_lock,
            shared_lock_timeout: c.shared_lock_timeout.get(),
            purge_bus: c.purge_bus,
            purge_stream_length: c.purge_stream_length as usize,
        }
    }
}

/// Create the process-wide cache; with `link` (the fleet's Redis), its purge bus and, if
/// configured, its shared tier. Later calls keep the first one: the store's size is fixed
/// for the life of the process (a reload warns about changes).
pub fn init(settings: &StoreSettings, link: Option<Arc<Link>>) -> &'static Cache {
    CACHE.get_or_init(|| {
        let storage: &'static MemoryStorage =
            Box::leak(Box::new(MemoryStorage::new(settings.max_size)));
        let bus: Option<&'static bus::PurgeBus> =
            link.clone().filter(|_| settings.purge_bus).map(|link| {
                &*Box::leak(Box::new(bus::PurgeBus::new(
                    link,
                    storage,
                    settings.purge_stream_length,
                )))
            });
        let shared = match (link, bus) {
            (Some(link), Some(bus)) if settings.shared => {
                Some(&*Box::leak(Box::new(shared::SharedTier::new(
                    link,
                    bus,
                    settings.shared_max_object_size,
                    settings.shared_fill_lock,
                    settings.shared_lock_timeout,
                ))))
            }
            _ => None,
        };
        Cache {
            storage,
            tiered: Box::leak(Box::new(shared::TieredStorage::new(storage, shared))),
            bus,
            // A writer holding the lock longer than this lets readers compete again.
            lock: Box::leak(CacheLock::new_boxed(settings.lock_timeout)),
            // 16 x 4096 keys remembered as uncacheable (LRU: old ones are forgotten).
            predictor: Box::leak(Box::new(Predictor::<16>::new(4096, None))),
            max_object_size: settings.max_object_size,
            lock_timeout: settings.lock_timeout,
        }
    })
}

/// Where a purge went besides this replica's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetReach {
    /// Written to the fleet's purge stream (or about to be: Redis answers).
    Published,
    /// Queued: Redis is away; it goes out when Redis returns.
    Queued,
    /// No fleet (no `redis:`, or `cache.purge_bus: false`).
    Off,
}

impl FleetReach {
    /// As the admin answer says it.
    pub fn label(self) -> &'static str {
        match self {
            FleetReach::Published => "published",
            FleetReach::Queued => "queued",
            FleetReach::Off => "off",
        }
    }
}

impl Cache {
    /// Apply a purge to this replica's store now, and send it to the rest of the fleet.
    /// Returns how many local entries went, and where the purge is going.
    pub fn purge(&self, op: &purge::PurgeOp) -> (usize, FleetReach) {
        let removed = op.apply(self.storage);
        if let Some(shared) = self.tiered.shared() {
            shared.delete_matching(op);
        }
        let reach = match self.bus {
            Some(bus) if bus.publish(op) => FleetReach::Published,
            Some(_) => FleetReach::Queued,
            None => FleetReach::Off,
        };
        (removed, reach)
    }
}

/// Copy the store's figures into their metrics (called at each scrape: the store keeps them in
/// atomics, so the hot path pays nothing for them).
pub fn publish_stats() {
    use crate::observe::metrics;
    let Some(cache) = get() else {
        return;
    };
    let s = cache.storage.stats();
    metrics::CACHE_USED_BYTES.set(s.used_bytes as i64);
    metrics::CACHE_MAX_BYTES.set(s.max_bytes as i64);
    metrics::CACHE_ENTRIES.set(s.entries as i64);
    let seen = metrics::CACHE_EVICTIONS_TOTAL.get();
    if s.evicted_entries > seen {
        metrics::CACHE_EVICTIONS_TOTAL.inc_by(s.evicted_entries - seen);
    }
}

/// The process-wide cache, if [`init`] ran.
pub fn get() -> Option<&'static Cache> {
    CACHE.get()
}

/// A route's cache policy, compiled from its `cache:`.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Freshness when the origin gives none; `None`: origin freshness only.
    pub ttl: Option<Duration>,
    /// Default stale-while-revalidate window (seconds) when the origin names none.
    pub stale_while_revalidate: u32,
    /// Default stale-if-error window (seconds) when the origin names none.
    pub stale_if_error: u32,
    /// Per-tenant or shared entries.
    pub scope: Scope,
    /// GET requests use the cache.
    pub get: bool,
    /// HEAD requests use the cache (served from the GET entry).
    pub head: bool,
    /// Statuses that may be stored.
    pub statuses: Vec<u16>,
    /// Query string handling in the key.
    pub query: QueryKey,
    /// Store responses carrying `Set-Cookie`.
    pub store_set_cookie: bool,
    /// Non-error answers to unsafe (or unknown) methods invalidate the path's entries.
    pub invalidate_on_mutation: bool,
    /// Extra prefixes a successful mutation invalidates.
    pub invalidate_prefixes: Vec<Arc<str>>,
    /// The route's own targeted cache-control field (RFC 9213), ahead of `CDN-Cache-Control`.
    pub targeted_field: Option<http::HeaderName>,
    /// Requests with `Authorization` in the shared scope use the cache, and their responses are
    /// stored when the response allows it (RFC 9111 §3.5).
    pub store_authorized: bool,
    /// Request headers whose values are part of the key.
    pub key_headers: Vec<http::HeaderName>,
    /// POSTs keyed on their JSON body (cached completions); `None`: POSTs are not cached.
    pub body_key: Option<key::BodyKeyPolicy>,
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl RoutePolicy {
    /// Compile a validated route `cache:` section.
    pub fn new(c: &RouteCacheConfig) -> Self {
        RoutePolicy {
            ttl: c.ttl.map(|t| t.get()),
            stale_while_revalidate: secs_u32(c.stale_while_revalidate.get()),
            stale_if_error: secs_u32(c.stale_if_error.get()),
            scope: match c.scope {
                model::CacheScope::Tenant => Scope::Tenant,
                model::CacheScope::Shared => Scope::Shared,
            },
            get: c.methods.iter().any(|m| m.eq_ignore_ascii_case("GET")),
            head: c.methods.iter().any(|m| m.eq_ignore_ascii_case("HEAD")),
            statuses: c.statuses.clone(),
            query: match c.query {
                model::QueryKey::Keep => QueryKey::Keep,
                model::QueryKey::Sort => QueryKey::Sort,
                model::QueryKey::Ignore => QueryKey::Ignore,
            },
            store_set_cookie: c.store_set_cookie,
            invalidate_on_mutation: c.invalidate_on_mutation,
            invalidate_prefixes: c
                .invalidate_prefixes
                .iter()
                .map(|p| Arc::from(p.as_str()))
                .collect(),
            // Validated as a header name; an invalid one (never, after validation) is ignored.
            targeted_field: c
                .targeted_field
                .as_deref()
                .and_then(|f| http::HeaderName::from_bytes(f.as_bytes()).ok()),
            store_authorized: c.store_authorized,
            // Validated as header names.
            key_headers: c
                .key
                .headers
                .iter()
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            body_key: c.key.body.map(|_| key::BodyKeyPolicy {
                ignore_fields: c.key.ignore_fields.clone(),
                max_body: c.key.max_body.bytes() as usize,
                store_when: c
                    .key
                    .store_when
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
        }
    }

    /// Does this request method use the cache?
    pub fn serves(&self, method: &http::Method) -> bool {
        match *method {
            http::Method::GET => self.get,
            http::Method::HEAD => self.head,
            http::Method::POST => self.body_key.is_some(),
            _ => false,
        }
    }
}
