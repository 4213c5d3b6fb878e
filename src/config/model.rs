//! The YAML schema: serde structs that are tollgate's public config contract.
//!
//! Every struct denies unknown keys, so a typo (`path_prefx`) is an error instead of a silently
//! ignored setting. Values are kept close to what the operator wrote (addresses as strings,
//! durations as [`ConfigDuration`]); checking and indexing happen in `validate` and `compile`,
//! which is what the proxy runs on (the River split: external schema outside, runtime shape inside).

use super::units::{ByteSize, ConfigDuration};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};

/// The whole config file. Sections are deserialized one by one by `config::load`, so that one
/// broken upstream or route does not hide the problems of the others.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    /// Addresses the proxy listens on (`host:port`), one string or a list.
    pub listen: Vec<String>,
    /// The admin listener: health, readiness and metrics.
    pub admin: AdminConfig,
    /// Process-wide settings: threads, HTTP/2, shutdown.
    pub server: ServerConfig,
    /// Named upstream groups that routes forward to.
    pub upstreams: IndexMap<String, UpstreamConfig>,
    /// Routes, matched by host and longest path prefix.
    pub routes: Vec<RouteConfig>,
    /// How callers are identified (API keys, trusted tenant header, client IP).
    pub identity: IdentityConfig,
    /// Named rate-limit tiers.
    pub tiers: IndexMap<String, TierConfig>,
    /// Tenants: their tier, API keys and overrides.
    pub tenants: IndexMap<String, TenantConfig>,
    /// Process-wide rate-limit settings.
    pub rate_limit: RateLimitConfig,
    /// Metrics, timing headers and the access log.
    pub observability: ObservabilityConfig,
    /// The response cache's store (routes opt in with their own `cache:`).
    pub cache: CacheConfig,
    /// The Redis a fleet of replicas shares (`rate_limit.store: redis`). Absent: none.
    pub redis: Option<RedisConfig>,
    /// LLM-aware settings shared by the routes with `tokens:` (the price table).
    pub llm: LlmConfig,
}

/// `llm:` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// US dollars per million tokens, by model name (as the request body's `model` says):
    /// `tollgate_llm_cost_usd_total` and the cost the cache saved are counted for these.
    pub prices: IndexMap<String, ModelPrice>,
}

/// A model's price.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// US dollars per million input tokens.
    pub input: f64,
    /// US dollars per million output tokens.
    pub output: f64,
}

/// Top-level `cache:` section: the in-memory store shared by every caching route.
/// Restart-only: a reload keeps the running store (and warns).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Byte budget for stored responses (bodies, headers and per-entry bookkeeping).
    /// Least recently used entries are evicted beyond it.
    pub max_size: ByteSize,
    /// Responses larger than this are passed through, not stored.
    pub max_object_size: ByteSize,
    /// How long a request waits for another request already fetching the same key (request
    /// coalescing) before going to the upstream itself.
    pub lock_timeout: ConfigDuration,
    /// A second tier every replica shares: `redis` (needs `redis:`) or `none`. A local miss
    /// looks there before the origin; a fill is written there off the response path.
    pub shared: SharedTier,
    /// Responses larger than this stay in the local store only (large objects do not belong
    /// in Redis).
    pub shared_max_object_size: ByteSize,
    /// One origin fetch per key for the whole fleet: a replica that misses a key another
    /// replica is fetching waits for that replica's entry (at most `shared_lock_timeout`).
    pub shared_fill_lock: bool,
    /// The fleet-wide fill lock's life, and how long another replica waits on it.
    pub shared_lock_timeout: ConfigDuration,
    /// Send every purge and mutation invalidation to the other replicas through a Redis
    /// Stream, and apply theirs (only with `redis:`).
    pub purge_bus: bool,
    /// Purges the stream keeps; a replica away for more than this many drops its local store.
    pub purge_stream_length: u32,
}

/// A route's `group_balance`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupBalance {
    /// The groups are a failover chain.
    #[default]
    Failover,
    /// Each request starts at the next group (weighted), then fails over to the others.
    RoundRobin,
}

/// `tokens:` of a route: where an answer's token usage is.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteTokensConfig {
    /// Dot-separated JSON path of the input token count (e.g. `usage.in`). Absent (with
    /// `output`): the OpenAI and Anthropic shapes are recognised.
    pub input: Option<String>,
    /// Dot-separated JSON path of the output token count.
    pub output: Option<String>,
}

/// `cache.shared`: where the fleet's second tier lives.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SharedTier {
    /// No second tier: every replica has its own store only.
    #[default]
    None,
    /// The fleet's Redis (`redis:`).
    Redis,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: ByteSize::mib(256),
            max_object_size: ByteSize::mib(8),
            lock_timeout: ConfigDuration::from_secs(5),
            shared: SharedTier::None,
            shared_max_object_size: ByteSize::kib(256),
            shared_fill_lock: false,
            shared_lock_timeout: ConfigDuration::from_secs(5),
            purge_bus: true,
            purge_stream_length: 10_000,
        }
    }
}

/// `cache:` of a route: when and how its responses are stored and served.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheConfig {
    /// Freshness lifetime for responses whose origin gives none (no `max-age`, `s-maxage` or
    /// `Expires`). Absent: only origin freshness counts, and a response with neither freshness
    /// nor a validator is not stored.
    pub ttl: Option<ConfigDuration>,
    /// Serve a stale response at once while one background request refreshes it, this long
    /// past expiry. The origin's `stale-while-revalidate` directive takes precedence.
    pub stale_while_revalidate: ConfigDuration,
    /// Serve a stale response when the upstream fails (down, timeout, 5xx), this long past
    /// expiry. The origin's `stale-if-error` directive takes precedence.
    pub stale_if_error: ConfigDuration,
    /// `tenant`: entries of identified callers are keyed by tenant; `shared`: one entry for all.
    pub scope: CacheScope,
    /// Request methods served from cache (`GET`, `HEAD`).
    pub methods: Vec<String>,
    /// Response statuses that may be stored.
    pub statuses: Vec<u16>,
    /// How the query string enters the key: `keep` (as sent), `sort` (parameters sorted),
    /// `ignore` (dropped).
    pub query: QueryKey,
    /// Store responses that carry `Set-Cookie` (the cookie is stored too and replayed to
    /// every caller of the key: only for cookies that are not per-user).
    pub store_set_cookie: bool,
    /// A successful (2xx) POST/PUT/PATCH/DELETE through this route removes the cached entries
    /// of the same path (tenant's scope and the shared scope).
    pub invalidate_on_mutation: bool,
    /// Path prefixes whose entries a successful mutation also removes (e.g. a list endpoint).
    pub invalidate_prefixes: Vec<String>,
    /// A response header that targets tollgate's cache (RFC 9213), e.g.
    /// `Tollgate-Cache-Control`: when the origin sends it (non-empty), its directives are used
    /// and `CDN-Cache-Control`, `Cache-Control` and `Expires` are ignored. `CDN-Cache-Control` is
    /// always honoured the same way, after this field. Absent: only `CDN-Cache-Control`.
    pub targeted_field: Option<String>,
    /// Requests with `Authorization` that use the shared entries are looked up and their
    /// responses stored when the response allows it (`public`, `s-maxage` or `must-revalidate`,
    /// RFC 9111 §3.5). `false`: such requests bypass the cache entirely.
    pub store_authorized: bool,
    /// What else makes two requests share an entry: named request headers, and for POSTs
    /// the JSON body (cached completions).
    pub key: CacheKeyConfig,
}

/// `cache.key` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheKeyConfig {
    /// Request headers whose values are part of the key (e.g. `x-user-id`, for a per-user
    /// cache in front of an app that sends no `Vary`). A missing header is its own value.
    pub headers: Vec<String>,
    /// `json`: POST requests use the cache too, keyed on their JSON body, canonicalised (key
    /// order and whitespace do not matter). Absent: POSTs are never cached.
    pub body: Option<BodyKey>,
    /// Top-level body fields left out of the key (e.g. `user`).
    pub ignore_fields: Vec<String>,
    /// Largest body keyed; larger ones (and bodies without a `Content-Length`) bypass the
    /// cache. At most 64KiB (the body is read before the cache is asked).
    pub max_body: ByteSize,
    /// Only requests whose body has these top-level values are stored and served from cache
    /// (deterministic requests). Default `{temperature: 0}`; `{}` caches every request.
    pub store_when: IndexMap<String, serde_json::Value>,
}

impl Default for CacheKeyConfig {
    fn default() -> Self {
        let mut store_when = IndexMap::new();
        store_when.insert("temperature".to_string(), serde_json::json!(0));
        CacheKeyConfig {
            headers: Vec::new(),
            body: None,
            ignore_fields: Vec::new(),
            max_body: ByteSize::kib(64),
            store_when,
        }
    }
}

/// `cache.key.body`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyKey {
    /// The body is JSON: keyed canonicalised.
    Json,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            ttl: None,
            stale_while_revalidate: ConfigDuration::from_secs(0),
            stale_if_error: ConfigDuration::from_secs(0),
            scope: CacheScope::Tenant,
            methods: vec!["GET".into(), "HEAD".into()],
            // RFC 9110 §15.1: statuses cacheable by default (206 aside: ranges are cut from
            // whole stored responses instead).
            statuses: vec![200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501],
            query: QueryKey::Keep,
            store_set_cookie: false,
            invalidate_on_mutation: true,
            invalidate_prefixes: Vec::new(),
            targeted_field: None,
            store_authorized: false,
            key: CacheKeyConfig::default(),
        }
    }
}

/// Whose entry a cached response is.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Identified tenants get their own entries; anonymous callers share one.
    Tenant,
    /// One entry per URL for everybody.
    Shared,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryKey {
    /// As the client sent it.
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry.
    Sort,
    /// Dropped: every query string shares the path's entry.
    Ignore,
}

/// Default latency buckets, in seconds: 0.5 ms (cache hits) to 10 min (long LLM calls), about
/// 2.5x apart, like Envoy's.
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];

/// `observability:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Per-request metrics: `tollgate_http_requests_total`, the request latency histogram and
    /// response bytes (upstream, rate-limit and reload metrics stay on). Off only to measure
    /// their cost: dashboards and alerts need them.
    pub request_metrics: bool,
    /// Latency histogram buckets, in seconds, increasing (read at start only).
    pub latency_buckets: Vec<f64>,
    /// Tenants that get their own `tenant` label value; all others count as `other`. (Callers are
    /// identified on rate-limited routes only: elsewhere the label is `none`.)
    pub tenant_label_allowlist: Vec<String>,
    /// Add `X-Response-Time: <ms>ms` (time to response headers) to responses.
    pub response_time_header: bool,
    /// Add `Server-Timing` (`upstream`, `total`) to responses.
    pub server_timing_header: bool,
    /// The JSON access log.
    pub access_log: AccessLogConfig,
    /// Add the exact status code as a `status` label to `tollgate_http_requests_total`, next to
    /// `status_class` (read at start only). Off by default: it multiplies that counter's series
    /// by the number of distinct statuses answered (a handful in practice, at most 501).
    pub status_code_label: bool,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            request_metrics: true,
            latency_buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            tenant_label_allowlist: Vec::new(),
            response_time_header: true,
            server_timing_header: false,
            access_log: AccessLogConfig::default(),
            status_code_label: false,
        }
    }
}

/// `observability.access_log:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write one JSON line per request.
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path (appended to). Read at start only.
    pub output: String,
    /// Fraction of requests logged, 0.0 to 1.0 (requests slower than `slow_threshold` and
    /// responses with status >= 500 are always logged).
    pub sample_rate: f64,
    /// Requests at least this slow are always logged.
    pub slow_threshold: ConfigDuration,
    /// Lines buffered between the proxy and the writer thread; when full (the output is slower
    /// than the traffic) lines are dropped and counted, requests never wait. Read at start only.
    pub buffer_lines: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            output: "stdout".into(),
            sample_rate: 1.0,
            slow_threshold: ConfigDuration::from_secs(1),
            buffer_lines: 16_384,
        }
    }
}

/// `admin:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener. Keep it on loopback or a private interface.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token required by admin actions (`POST /cache/purge`); write it as
    /// `${TOLLGATE_ADMIN_TOKEN}`. Absent: admin actions are refused.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

/// `server:` section: how the Pingora server runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads of the proxy service. Default: 1 (a sidecar shares the pod's CPU).
    pub threads: usize,
    /// Tokio work stealing between worker threads. Off by default: measured ~10% faster on
    /// pass-through, and a sidecar usually runs one or two threads anyway.
    pub work_stealing: bool,
    /// Accept HTTP/2 over cleartext (prior knowledge) next to HTTP/1.1 on the proxy listener.
    /// Off by default: to tell the protocols apart Pingora waits for the first 24 bytes of each
    /// new connection with no timeout, so a client that sends a shorter request and then waits
    /// (e.g. a bare `GET / HTTP/1.0` with no headers) would hang. Turn it on when the clients
    /// are HTTP/2 (gRPC, service meshes) and known to send full requests.
    pub h2c: bool,
    /// On SIGTERM tollgate stops accepting new connections at once, then waits this long (in
    /// full, rounded up to whole seconds) while in-flight requests finish. For Kubernetes, add a
    /// preStop sleep so endpoints are updated before SIGTERM arrives (see deploy/README.md).
    pub grace_period: ConfigDuration,
    /// After the grace period, how long the worker runtimes get to stop before the process
    /// exits (rounded up to whole seconds).
    pub shutdown_timeout: ConfigDuration,
    /// Size of the upstream keep-alive connection pool (connections kept idle, all groups).
    pub upstream_keepalive_pool: usize,
    /// How often the config file is checked for changes (reloaded when its content changes;
    /// SIGHUP reloads at once). `0s` turns the polling off.
    pub watch_interval: ConfigDuration,
    /// A changed file is loaded only once its content has stayed the same this long, so a
    /// writer that pauses half way never gets half a file loaded. Replace files by rename to
    /// load them at the next poll.
    pub reload_settle: ConfigDuration,
    /// How long an idle client connection is kept open between requests (keep-alive).
    pub keepalive_timeout: ConfigDuration,
    /// Longest wait for the next piece of a request body; past it the client gets `408`.
    pub client_body_timeout: ConfigDuration,
    /// Slowest a request body may arrive, in bytes per second (`0`: no minimum). A body may
    /// take `client_body_timeout` plus one second per this many bytes received (Apache's
    /// `RequestReadTimeout body=..,MinRate=..`); past that, `408`. Checked as each piece
    /// arrives.
    pub client_body_min_rate: ByteSize,
    /// Longest request target (path and query); longer gets `414`.
    pub max_uri_length: ByteSize,
    /// Most bytes of request header fields (names and values); more gets `431`.
    pub max_header_size: ByteSize,
    /// Most request header fields; more gets `431`.
    pub max_headers: usize,
    /// Read buffer of each client connection. Pingora's default, 64 KiB, is allocated (and
    /// zeroed, so resident) for every connection, idle or not; reads larger than the buffer
    /// bypass it, so a small one costs little.
    pub client_read_buffer: ByteSize,
    /// Longest time from the first byte of a request to the end of its header; past it the
    /// client gets `408` and the connection is closed (nginx's `client_header_timeout`).
    pub client_header_timeout: ConfigDuration,
    /// Most client connections open at once on the proxy listeners; past it a new connection
    /// gets `503` at once and is closed, and the open ones carry on.
    pub max_client_connections: usize,
    /// Most client connections open at once from one IP address (the TCP peer); absent: no cap.
    pub max_connections_per_ip: Option<usize>,
    /// The Unix socket through which a process started with `tollgate run --upgrade` receives
    /// the listening sockets of the running one (on its SIGQUIT): a binary swap without a
    /// refused connection. Both processes must be given the same path.
    pub upgrade_sock: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 1,
            work_stealing: false,
            h2c: false,
            grace_period: ConfigDuration::from_secs(5),
            shutdown_timeout: ConfigDuration::from_secs(10),
            upstream_keepalive_pool: 128,
            watch_interval: ConfigDuration::from_secs(2),
            reload_settle: ConfigDuration::from_secs(1),
            keepalive_timeout: ConfigDuration::from_secs(60),
            client_body_timeout: ConfigDuration::from_secs(30),
            client_body_min_rate: ByteSize(500),
            max_uri_length: ByteSize(8 * 1024),
            max_header_size: ByteSize(32 * 1024),
            max_headers: 100,
            client_read_buffer: ByteSize(DEFAULT_CLIENT_READ_BUFFER),
            client_header_timeout: ConfigDuration::from_secs(30),
            max_client_connections: 10_000,
            max_connections_per_ip: None,
            upgrade_sock: "/tmp/tollgate_upgrade.sock".into(),
        }
    }
}

/// `server.client_read_buffer`'s default.
pub const DEFAULT_CLIENT_READ_BUFFER: u64 = 4 * 1024;

/// One upstream group under `upstreams:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints as `host:port`, or `{ address: host:port, weight: N }`. Hostnames are resolved
    /// when the config is loaded.
    pub endpoints: Vec<EndpointConfig>,
    /// How an endpoint is picked: `round_robin` (default), `weighted` or `consistent_hash`.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `tenant` (default; the client IP for anonymous callers),
    /// `client_ip`, or `header:<name>`.
    #[serde(default = "default_hash_on")]
    pub hash_on: String,
    /// Attempts per request: a connection failure is retried on another endpoint.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Passive health: endpoints that keep failing are taken out for a while.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Active health checks: endpoints failing them are skipped until they pass again.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Provider adapter: the `Host` header sent to this group (default: the client's).
    #[serde(default)]
    pub host: Option<String>,
    /// Provider adapter: removed from the start of the request path (when present).
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Provider adapter: put in front of the (stripped) path.
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// Provider adapter: request headers set on requests to this group (e.g.
    /// `Authorization: "Bearer ${PROVIDER_KEY}"`).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// TLS towards the endpoints. Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Connect, read, write and idle timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
}

fn default_hash_on() -> String {
    "tenant".into()
}

/// One endpoint: `host:port`, or a mapping with a weight.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// `host:port`, weight 1.
    Address(String),
    /// `{ address: host:port, weight: N }`.
    Weighted(WeightedEndpoint),
}

/// The mapping form of an endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    /// `host:port`.
    pub address: String,
    /// Relative share of requests under `balance: weighted` or `consistent_hash` (1-1000).
    #[serde(default = "one")]
    pub weight: u32,
}

impl EndpointConfig {
    /// The `host:port` written.
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(a) => a,
            EndpointConfig::Weighted(w) => &w.address,
        }
    }

    /// Its weight (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted(w) => w.weight,
        }
    }
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`host:port` or `{ address: host:port, weight: N }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EndpointConfig::Address(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<Self::Value, A::Error> {
                WeightedEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(EndpointConfig::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.address())
    }
}

/// How an upstream group picks an endpoint.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, weights ignored.
    #[default]
    RoundRobin,
    /// In turn, in proportion to the endpoints' weights.
    Weighted,
    /// The same key (tenant, client IP or a header) goes to the same endpoint while it is up
    /// (Ketama consistent hashing, weighted), for cache locality.
    ConsistentHash,
}

/// `retry:` of an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Most attempts per request, the first included (1 = no retry). A failed connection is
    /// retried on another endpoint of the group (nothing has reached the upstream yet, so this
    /// is safe for every method).
    pub attempts: u32,
    /// Response statuses that make an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS,
    /// TRACE) try another endpoint, as does a connection reset before the response headers.
    /// The last attempt's answer goes to the client as it is.
    pub on: Vec<u16>,
    /// Retry budget: retries (beyond connection failures' first retry) may add at most this
    /// fraction of the group's requests, so a failing provider cannot turn into a retry storm.
    pub budget: f64,
    /// Retries always allowed per second, whatever the budget (so a quiet group can retry).
    pub min_retries_per_second: u32,
    /// Longest wait for each read from the upstream during one attempt (the response headers
    /// included): exceeded before the headers, the attempt is retried like a reset. Absent:
    /// `timeouts.read`.
    pub per_try_timeout: Option<ConfigDuration>,
    /// No new attempt starts once the request is this old. Absent: no deadline.
    pub deadline: Option<ConfigDuration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            on: vec![502, 503, 504],
            budget: 0.2,
            min_retries_per_second: 3,
            per_try_timeout: None,
            deadline: None,
        }
    }
}

/// `circuit_breaker:` of an upstream group (passive health, per endpoint).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures (connection errors, timeouts) that open an endpoint's circuit.
    /// 0 turns the breaker off.
    pub failures: u32,
    /// How long an open circuit stays open the first time; doubled each time it opens again
    /// without a success in between, up to `max_backoff`.
    pub backoff: ConfigDuration,
    /// Longest open period.
    pub max_backoff: ConfigDuration,
    /// When every endpoint of this group is open-circuited and it is the route's last group,
    /// answer `503` at once instead of calling a failing endpoint anyway.
    pub fail_fast: bool,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failures: 3,
            backoff: ConfigDuration::from_secs(1),
            max_backoff: ConfigDuration::from_secs(30),
            fail_fast: false,
        }
    }
}

/// `health_check:` of an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (GET `path`, expect `expect_status`) or `tcp` (a connection is enough).
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Path of the HTTP check.
    pub path: String,
    /// Status the HTTP check expects.
    pub expect_status: u16,
    /// Time between checks of each endpoint.
    pub interval: ConfigDuration,
    /// Connect and response timeout of one check.
    pub timeout: ConfigDuration,
    /// Consecutive passed checks that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take an endpoint out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: "/".into(),
            expect_status: 200,
            interval: ConfigDuration::from_secs(1),
            timeout: ConfigDuration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP GET.
    Http,
    /// A TCP connect.
    Tcp,
}

/// `tls:` of an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server name sent in SNI and checked against the certificate. Default: the endpoint's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the upstream certificate chain and hostname. Default: true.
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

/// `timeouts:` of an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connect timeout. Exceeded: 504.
    pub connect: ConfigDuration,
    /// Longest wait for the next bytes of the upstream response. Exceeded: 504 (or a cut stream
    /// when the response has begun).
    pub read: ConfigDuration,
    /// Longest wait for the upstream to accept request bytes.
    pub write: ConfigDuration,
    /// How long an idle keep-alive connection to this group is kept in the pool.
    pub idle: ConfigDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: ConfigDuration::from_secs(5),
            read: ConfigDuration::from_secs(60),
            write: ConfigDuration::from_secs(60),
            idle: ConfigDuration::from_secs(60),
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name: used in metrics labels and logs. Default: `route-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream group that serves it (or use `upstreams`).
    #[serde(default)]
    pub upstream: String,
    /// Groups in failover order: the next serves when the previous has no usable endpoint
    /// (all failed, open-circuited or unhealthy) or ran out of attempts.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// How requests are shared between `upstreams`: `failover` (the first serves while it
    /// can) or `round_robin` (each request starts at the next group, weighted by
    /// `group_weights`, and fails over to the others).
    #[serde(default)]
    pub group_balance: GroupBalance,
    /// Weights of `upstreams` under `round_robin` (default 1 each).
    #[serde(default)]
    pub group_weights: IndexMap<String, u32>,
    /// Rate limiting on this route. Absent: the caller's tier limits apply (when tiers exist).
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimitConfig>,
    /// Response compression on this route. Absent: responses pass as the upstream sent them.
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// Retry non-idempotent requests (POST, PATCH) on statuses and resets too, even after
    /// their body was sent: only for upstreams where repeating a write is harmless.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Response caching on this route. Absent: nothing is cached.
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
    /// LLM token accounting on this route: the usage each answer reports is read as it
    /// streams past, counted in metrics and debited from the caller's token budget
    /// (`tokens_per_minute`, `tokens_per_day`). Absent: none.
    #[serde(default)]
    pub tokens: Option<RouteTokensConfig>,
    /// Most requests of this route in flight at once in this process; past it, new ones get
    /// `503` with `Retry-After: 1` (load shedding). Absent: no cap.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Largest request body accepted: a declared larger `Content-Length` gets `413` at once,
    /// a chunked body is cut with `413` when it passes it. Absent: no limit.
    #[serde(default)]
    pub max_request_body: Option<ByteSize>,
    /// Read a request body whose declared `Content-Length` is at most this size in full before
    /// the upstream is contacted (like nginx's `proxy_request_buffering`), so that a client
    /// slow to send it holds no upstream connection. At most 64 KiB. Absent: bodies stream.
    #[serde(default)]
    pub request_buffering: Option<ByteSize>,
}

/// `compression:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// gzip (level 1-9, default 6). When no algorithm is listed, gzip at level 6 is used.
    pub gzip: Option<AlgorithmConfig>,
    /// brotli (level 1-11, default 4).
    pub brotli: Option<AlgorithmConfig>,
    /// zstd (level 1-22, default 3).
    pub zstd: Option<AlgorithmConfig>,
    /// Responses with a `Content-Length` below this many bytes pass untouched.
    pub min_size: u64,
    /// Compress responses without `Content-Length` (chunked) too. Off by default: an encoder
    /// holds data until it has enough to emit, so a streamed body (NDJSON, long polls) would be
    /// held back. `text/event-stream` is never compressed either way.
    pub chunked: bool,
    /// Content types compressed: `type/subtype`, `type/*`, or `+suffix` (`+json`).
    pub content_types: Vec<String>,
    /// A request carrying this header is answered uncompressed.
    pub opt_out_header: String,
    /// Decompress an upstream's encoded response for a client that does not accept its coding.
    pub decompress: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            gzip: None,
            brotli: None,
            zstd: None,
            min_size: 1024,
            chunked: false,
            content_types: [
                "text/*",
                "application/json",
                "application/javascript",
                "+json",
                "+xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            opt_out_header: "x-no-compression".into(),
            decompress: true,
        }
    }
}

/// One algorithm under `compression:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmConfig {
    /// Compression level; absent: the algorithm's default.
    #[serde(default)]
    pub level: Option<u32>,
}

/// `rate_limit:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimitConfig {
    /// `false` exempts the route from rate limiting (health checks, static assets).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Units one request costs against the tier's limits: a costly endpoint at a tenth of the
    /// tier rate is `cost: 10`.
    #[serde(default = "one")]
    pub cost: u32,
    /// Decide, count and add headers, but never refuse (roll out new limits safely).
    #[serde(default)]
    pub shadow: bool,
    /// Route-specific limits per tier name: such a tier gets its own buckets on this route
    /// instead of sharing the tier's. Fields left out take the tier's value.
    #[serde(default)]
    pub tiers: IndexMap<String, LimitsOverride>,
}

fn one() -> u32 {
    1
}

/// `identity:` section: who is calling.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Sources tried in order; the first that yields a caller wins. Callers no source names are
    /// anonymous, keyed by client IP.
    pub order: Vec<IdentitySource>,
    /// Read an API key from `Authorization: Bearer <key>`.
    pub bearer: bool,
    /// Also read an API key from this header. `null` turns it off.
    pub api_key_header: Option<String>,
    /// Header that names the tenant directly (set by an authenticating gateway in front).
    pub tenant_header: String,
    /// Honour `tenant_header`. Only true when every request passes an authenticating gateway
    /// that sets (and strips client copies of) that header.
    pub trust_tenant_header: bool,
    /// An API key that no tenant owns: `reject` (401) or `anonymous`.
    pub unknown_key: UnknownKey,
    /// Tier of anonymous callers (no key), keyed by client IP. Absent: not limited.
    pub anonymous_tier: Option<String>,
    /// Tier of tenants named by the trusted header but not listed under `tenants`.
    /// Absent: the anonymous tier.
    pub header_tenant_tier: Option<String>,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed when finding the client IP.
    pub trusted_proxies: Vec<String>,
    /// Where API keys live besides `tenants.*.api_keys`: `file` (only there) or `redis` (also
    /// keys provisioned in the `redis:` store with `tollgate keys add`).
    pub key_store: KeyStoreKind,
    /// How long a key found in Redis is trusted before it is looked up again: the bound on how
    /// late a revocation reaches a replica.
    pub key_cache_ttl: ConfigDuration,
    /// How long a key that Redis does not know is remembered as unknown.
    pub key_negative_ttl: ConfigDuration,
    /// Most keys remembered (found or unknown) per replica.
    pub key_cache_size: usize,
    /// Most Redis key lookups per second per replica; a flood of new keys past it is refused
    /// without a lookup.
    pub key_lookups_per_second: u32,
}

/// `identity.key_store`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyStoreKind {
    /// Only the keys of `tenants.*.api_keys`.
    #[default]
    File,
    /// Those, and keys provisioned in Redis (`tollgate keys add`).
    Redis,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            order: vec![IdentitySource::ApiKey, IdentitySource::TenantHeader],
            bearer: true,
            api_key_header: Some("x-api-key".into()),
            tenant_header: "x-tenant-id".into(),
            trust_tenant_header: false,
            unknown_key: UnknownKey::Reject,
            anonymous_tier: None,
            header_tenant_tier: None,
            trusted_proxies: Vec::new(),
            key_store: KeyStoreKind::File,
            key_cache_ttl: ConfigDuration::from_secs(10),
            key_negative_ttl: ConfigDuration::from_secs(5),
            key_cache_size: 10_000,
            key_lookups_per_second: 100,
        }
    }
}

/// An identity source in `identity.order`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// `Authorization: Bearer` and `api_key_header`.
    ApiKey,
    /// `tenant_header`, when trusted.
    TenantHeader,
}

/// What an unknown API key gets.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKey {
    /// 401 with a JSON body.
    Reject,
    /// Treated as no key: the anonymous tier.
    Anonymous,
}

/// One tier under `tiers:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Sustained requests per second.
    pub rps: f64,
    /// Requests allowed at once from idle (bucket size).
    pub burst: u32,
    /// Requests per UTC day, or `unlimited`.
    #[serde(default)]
    pub daily: Daily,
    /// Decide, count and add headers, but never refuse.
    #[serde(default)]
    pub shadow: bool,
    /// LLM tokens (input + output) per minute, on routes with `tokens:`: a bucket of this
    /// size refilled over a minute, debited after each answer by the usage it reports.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// LLM tokens per UTC day, on routes with `tokens:`.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
}

/// Fields that override a tier's limits (tenant overrides, route policies).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// Sustained requests per second.
    #[serde(default)]
    pub rps: Option<f64>,
    /// Bucket size.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Daily quota.
    #[serde(default)]
    pub daily: Option<Daily>,
}

/// One tenant under `tenants:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its tier.
    pub tier: String,
    /// API keys as `sha256:<64 hex digits>`, or a plain key only through `${ENV_VAR}`.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Override the tier's rps.
    #[serde(default)]
    pub rps: Option<f64>,
    /// Override the tier's burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Override the tier's daily quota.
    #[serde(default)]
    pub daily: Option<Daily>,
    /// Override the tier's shadow mode.
    #[serde(default)]
    pub shadow: Option<bool>,
    /// Override the tier's `tokens_per_minute`.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Override the tier's `tokens_per_day`.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
}

/// A daily quota: a number of requests, or `unlimited`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Daily {
    /// No daily quota.
    #[default]
    Unlimited,
    /// At most this many requests (cost units) per UTC day.
    Limit(u64),
}

impl Daily {
    /// As the limiter wants it.
    pub fn get(self) -> Option<u64> {
        match self {
            Daily::Unlimited => None,
            Daily::Limit(n) => Some(n),
        }
    }
}

impl<'de> Deserialize<'de> for Daily {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Daily;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of requests per day or `unlimited`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Daily, E> {
                Ok(Daily::Limit(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Daily, E> {
                u64::try_from(v).map(Daily::Limit).map_err(|_| {
                    E::custom(format!(
                        "invalid daily quota `{v}`: must be 0 or more, or `unlimited`"
                    ))
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Daily, E> {
                match v {
                    "unlimited" => Ok(Daily::Unlimited),
                    _ => Err(E::custom(format!(
                        "invalid daily quota `{v}`: write a number (e.g. `1000`) or `unlimited`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Daily {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Daily::Unlimited => s.serialize_str("unlimited"),
            Daily::Limit(n) => s.serialize_u64(*n),
        }
    }
}

/// `rate_limit:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Also send `X-RateLimit-Limit`, `-Remaining`, `-Reset` (for clients written against them).
    pub legacy_headers: bool,
    /// Most limiter entries kept in memory (one per caller and policy). Past it, the least
    /// recently active are dropped first; an anonymous caller dropped this way loses its counts.
    pub max_tracked_keys: usize,
    /// Where limits are counted: `local` (this process) or `redis` (shared by the fleet).
    pub store: LimitStore,
    /// When Redis fails or is slow: `local` (this replica's share), `allow` or `deny`.
    pub on_store_error: OnStoreError,
    /// With `store: redis`: `exact` (one Redis call per decision) or `lease` (a replica takes
    /// `lease_slice` units per call and spends them locally: fewer calls, never more admitted).
    pub mode: LimitMode,
    /// Units a replica takes per Redis call in `mode: lease`.
    pub lease_slice: u32,
    /// How long a replica may spend a slice before giving back what is left.
    pub lease_ttl: ConfigDuration,
}

/// `rate_limit.mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Every decision in Redis.
    #[default]
    Exact,
    /// Slices of the bucket leased to replicas (for callers whose bucket holds >= 4 slices).
    Lease,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            legacy_headers: false,
            max_tracked_keys: 100_000,
            store: LimitStore::Local,
            on_store_error: OnStoreError::Local,
            mode: LimitMode::Exact,
            lease_slice: 20,
            lease_ttl: ConfigDuration::from_secs(1),
        }
    }
}

/// `rate_limit.store`: where the buckets and daily counts live.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// In this process: each replica counts alone.
    #[default]
    Local,
    /// In the `redis:` store, shared by every replica: one limit across the fleet.
    Redis,
}

/// `rate_limit.on_store_error`: what a decision does when Redis fails or is too slow.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Decide in this process with this replica's share of each limit (`limit / fleet size`).
    #[default]
    Local,
    /// Let the request through, unlimited.
    Allow,
    /// Refuse it with 429.
    Deny,
}

/// Top-level `redis:`: the Redis (standalone or Cluster) a fleet of replicas shares.
/// Restart-only: a reload that changes it keeps the running connection (and warns).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One Redis: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Write the
    /// password as `${VAR}`.
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes' URLs (the rest are discovered).
    pub cluster: Vec<String>,
    /// With `rediss://`: a PEM file of the CA that signed Redis' certificate (a private CA).
    /// Absent: the system's trust store.
    pub tls_ca_file: Option<String>,
    /// How long connecting to a node may take.
    pub connect_timeout: ConfigDuration,
    /// How long one decision may wait for Redis before `on_store_error` decides instead.
    pub command_timeout: ConfigDuration,
    /// Multiplexed connections per replica (each pipelines every request's commands).
    pub connections: usize,
    /// Refuse to start when Redis cannot be reached. `false`: start in fallback and say so.
    pub required: bool,
    /// First part of every key tollgate writes (`<prefix>:{subject}:...`).
    pub key_prefix: String,
    /// How often a replica announces itself (the fleet size) and probes a Redis that failed.
    pub heartbeat_interval: ConfigDuration,
    /// Consecutive failures after which Redis is not asked for `backoff`.
    pub failures_before_backoff: u32,
    /// How long Redis is left alone after those failures (the heartbeat probes it meanwhile).
    pub backoff: ConfigDuration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: Vec::new(),
            tls_ca_file: None,
            connect_timeout: ConfigDuration::from_secs(1),
            command_timeout: ConfigDuration::from_millis(20),
            connections: 2,
            required: false,
            key_prefix: "tollgate".into(),
            heartbeat_interval: ConfigDuration::from_secs(1),
            failures_before_backoff: 3,
            backoff: ConfigDuration::from_secs(2),
        }
    }
}

/// `match:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`). Absent: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, starting with `/`. The longest matching prefix wins.
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
}

fn root_prefix() -> String {
    "/".into()
}

/// `listen:` accepts one address or a list of them.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address `host:port` or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = a.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Wrapper so `listen` can be deserialized on its own with [`one_or_many`].
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct ListenField(#[serde(deserialize_with = "one_or_many")] pub Vec<String>);
