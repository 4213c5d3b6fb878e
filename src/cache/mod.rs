//! The response cache: Pingora's `HttpCache` state machine (lookup, coalescing lock,
//! stale-while-revalidate, stale-if-error, revalidation) over tollgate's own bounded store.
//!
//! - [`storage`]: the in-memory store, bounded in bytes with LRU eviction and an index for purges.
//! - [`key`]: cache keys (method, host, path, query as configured, scope) and `Vary` variance.
//! - [`policy`]: RFC 9111 storage and freshness decisions as pure functions over headers.
//! - [`status`]: the `Cache-Status` (RFC 9211) and `X-Cache-Status` answers.
//! - [`purge`]: admin purges, and invalidation by non-error answers to unsafe (or unknown)
//!   methods.
//!
//! The store and the cache lock are process-wide (`&'static`, as Pingora requires): they are
//! created once by [`init`] and survive config reloads, so a reload never empties the cache.

pub mod key;
pub mod policy;
pub mod purge;
pub mod status;
pub mod storage;

pub use key::{QueryKey, Scope};

use crate::config::model::{self, CacheConfig, RouteCacheConfig};
use once_cell::sync::OnceCell;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use std::sync::Arc;
use std::time::Duration;
use storage::MemoryStorage;

/// The process-wide cache: store, lock and the limits they were built with.
pub struct Cache {
    /// Where responses live.
    pub storage: &'static MemoryStorage,
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
}

impl StoreSettings {
    /// Compile a validated `cache:` section.
    pub fn new(c: &CacheConfig) -> Self {
        StoreSettings {
            max_size: c.max_size.bytes() as usize,
            max_object_size: c.max_object_size.bytes() as usize,
            lock_timeout: c.lock_timeout.get(),
        }
    }
}

/// Create the process-wide cache. Later calls keep the first one: the store's size is fixed
/// for the life of the process (a reload warns about changes).
pub fn init(settings: &StoreSettings) -> &'static Cache {
    CACHE.get_or_init(|| Cache {
        storage: Box::leak(Box::new(MemoryStorage::new(settings.max_size))),
        // A writer holding the lock longer than this lets readers compete again.
        lock: Box::leak(CacheLock::new_boxed(settings.lock_timeout)),
        // 16 x 4096 keys remembered as uncacheable (LRU: old ones are forgotten).
        predictor: Box::leak(Box::new(Predictor::<16>::new(4096, None))),
        max_object_size: settings.max_object_size,
        lock_timeout: settings.lock_timeout,
    })
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
        }
    }

    /// Does this request method use the cache?
    pub fn serves(&self, method: &http::Method) -> bool {
        match *method {
            http::Method::GET => self.get,
            http::Method::HEAD => self.head,
            _ => false,
        }
    }
}
