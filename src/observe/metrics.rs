//! One Prometheus registry for the whole process; metrics are defined here and rendered by the
//! admin `/metrics` endpoint. Label values come from config names (routes, tiers, upstreams,
//! allowlisted tenants), never from raw request data, so cardinality is bounded by the config.
//!
//! Names follow Prometheus conventions: base units (`_seconds`, `_bytes`), `_total` counters.

use once_cell::sync::{Lazy, OnceCell};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry every tollgate metric is registered in.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

/// Default latency buckets, in seconds (defined beside the config key they default).
pub use crate::config::model::DEFAULT_LATENCY_BUCKETS as DEFAULT_BUCKETS;

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
}

/// `tollgate_build_info{version}` = 1: which build is running.
pub static BUILD_INFO: Lazy<IntGaugeVec> = Lazy::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "tollgate_build_info",
            "Build information of the running tollgate, always 1.",
        ),
        &["version"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    g
});

/// `tollgate_http_requests_total{route,method,status_class,tenant}` (plus `status` when
/// `observability.status_code_label` is on at start): requests answered. `tenant` is an
/// allowlisted tenant id, `other`, or `none` (no tenant identified).
static HTTP_REQUESTS_TOTAL: OnceCell<(IntCounterVec, bool)> = OnceCell::new();

fn http_requests_total() -> &'static (IntCounterVec, bool) {
    HTTP_REQUESTS_TOTAL.get_or_init(|| register_http_requests_total(false))
}

fn register_http_requests_total(status_label: bool) -> (IntCounterVec, bool) {
    let labels: &[&str] = match status_label {
        true => &["route", "method", "status_class", "status", "tenant"],
        false => &["route", "method", "status_class", "tenant"],
    };
    let c = counter_vec(
        "tollgate_http_requests_total",
        "HTTP requests answered by the proxy listener.",
        labels,
    );
    (c, status_label)
}

/// The exact `status` label values: `0` (no response sent) and 100-599 as text, built once
/// so counting a request allocates nothing; anything else is `other`.
static STATUS_LABELS: Lazy<Vec<String>> = Lazy::new(|| (0..600).map(|s| s.to_string()).collect());

fn status_label(status: u16) -> &'static str {
    match status {
        0 | 100..=599 => &STATUS_LABELS[usize::from(status)],
        _ => "other",
    }
}

/// Count one answered request in `tollgate_http_requests_total`; `class` is
/// [`status_class`] of `status`.
pub fn count_request(route: &str, method: &str, class: &str, status: u16, tenant: &str) {
    let (counter, exact) = http_requests_total();
    if *exact {
        counter
            .with_label_values(&[route, method, class, status_label(status), tenant])
            .inc();
    } else {
        counter
            .with_label_values(&[route, method, class, tenant])
            .inc();
    }
}

/// `tollgate_http_requests_in_flight`: requests being served now.
pub static HTTP_REQUESTS_IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "tollgate_http_requests_in_flight",
        "HTTP requests being served.",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// `tollgate_http_response_body_bytes_total{route}`: response body bytes sent to clients.
pub static HTTP_RESPONSE_BODY_BYTES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_http_response_body_bytes_total",
        "Response body bytes sent to clients.",
        &["route"],
    )
});

static HTTP_REQUEST_DURATION: OnceCell<HistogramVec> = OnceCell::new();
static UPSTREAM_DURATION: OnceCell<HistogramVec> = OnceCell::new();

/// `tollgate_http_request_duration_seconds{route,method,status_class,tier,cache}`: from the
/// request header read to the last response byte written.
pub fn http_request_duration() -> &'static HistogramVec {
    HTTP_REQUEST_DURATION.get_or_init(|| {
        histogram(
            "tollgate_http_request_duration_seconds",
            "Time from request received to response completed.",
            &["route", "method", "status_class", "tier", "cache"],
            DEFAULT_BUCKETS,
        )
    })
}

/// `tollgate_upstream_duration_seconds{upstream}`: from sending to an upstream to its response
/// headers (time to first byte of the upstream, per attempt).
pub fn upstream_duration() -> &'static HistogramVec {
    UPSTREAM_DURATION.get_or_init(|| {
        histogram(
            "tollgate_upstream_duration_seconds",
            "Time from upstream attempt start to upstream response headers.",
            &["upstream"],
            DEFAULT_BUCKETS,
        )
    })
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("metric");
    REGISTRY.register(Box::new(h.clone())).expect("register");
    h
}

/// `tollgate_upstream_requests_total{upstream,endpoint,outcome}`: upstream attempts by outcome
/// (`success` = response headers received, `connect_error`, `timeout`, `error`).
pub static UPSTREAM_REQUESTS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_upstream_requests_total",
        "Attempts to reach an upstream endpoint, by outcome.",
        &["upstream", "endpoint", "outcome"],
    )
});

/// `tollgate_compression_input_bytes_total{algorithm}`: body bytes fed to a coder (`gzip`,
/// `br`, `zstd`; `de-gzip` and the like when decompressing for a client).
pub static COMPRESSION_INPUT_BYTES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_compression_input_bytes_total",
        "Response body bytes before compression (or decompression), by algorithm.",
        &["algorithm"],
    )
});

/// `tollgate_compression_output_bytes_total{algorithm}`: body bytes the coder produced.
pub static COMPRESSION_OUTPUT_BYTES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_compression_output_bytes_total",
        "Response body bytes after compression (or decompression), by algorithm.",
        &["algorithm"],
    )
});

/// `tollgate_config_reloads_total{result}`: config reload attempts.
pub static CONFIG_RELOADS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_config_reloads_total",
        "Config reload attempts, by result (success, failure).",
        &["result"],
    )
});

/// `tollgate_ratelimit_decisions_total{tier,policy,decision}`: rate-limit decisions.
/// `policy` is the limit that refused (`burst`, `daily`) or `none` when allowed; `decision` is
/// `allowed`, `limited` or `shadow_limited` (refused in shadow mode: counted, not enforced).
pub static RATELIMIT_DECISIONS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_ratelimit_decisions_total",
        "Rate-limit decisions by tier, refusing policy and outcome.",
        &["tier", "policy", "decision"],
    )
});

/// `tollgate_ratelimit_tracked_keys`: limiter entries in memory (callers x policies).
pub static RATELIMIT_TRACKED_KEYS: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "tollgate_ratelimit_tracked_keys",
        "Rate-limiter entries held in memory (one per caller and policy scope).",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// `tollgate_ratelimit_store_decisions_total{store}`: rate-limit decisions by where they were
/// taken: `local` (store: local), `redis`, or, when Redis failed, `local_fallback`,
/// `allow_fallback`, `deny_fallback` (`rate_limit.on_store_error`).
pub static RATELIMIT_STORE_DECISIONS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_ratelimit_store_decisions_total",
        "Rate-limit decisions by the store that took them (redis, local, or a fallback).",
        &["store"],
    )
});

/// `tollgate_redis_up`: 1 while the shared Redis answers, 0 while it is failing or backed off.
pub static REDIS_UP: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "tollgate_redis_up",
        "Whether the shared Redis answers (1) or is failing and backed off (0).",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// `tollgate_redis_command_duration_seconds{op}`: time of one Redis call, failed ones included
/// (`op`: `ratelimit`, `peek`, `heartbeat`).
pub static REDIS_COMMAND_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "tollgate_redis_command_duration_seconds",
        "Time of one Redis call by operation, failed calls included.",
        &["op"],
        &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ],
    )
});

/// `tollgate_redis_errors_total{kind}`: failed Redis calls: `timeout`, `connection`, `auth`,
/// `not_connected`, `script`, `other`.
pub static REDIS_ERRORS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_redis_errors_total",
        "Failed Redis calls by kind of failure.",
        &["kind"],
    )
});

/// `tollgate_fleet_replicas`: replicas that announced themselves in Redis lately (held at its
/// last value while Redis is unreachable); the local fallback enforces `limit / this`.
pub static FLEET_REPLICAS: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "tollgate_fleet_replicas",
        "Replicas of this fleet seen in Redis heartbeats (last known value while Redis is down).",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// `tollgate_requests_refused_total{route,reason}`: requests tollgate answered itself with an
/// error, by its code (`bad_request`, `uri_too_long`, `request_headers_too_large`,
/// `request_body_too_large`, `client_timeout`, `overloaded`, `upstream_circuit_open`,
/// `rate_limited`, `unknown_api_key`, `route_not_found`, ...).
pub static REQUESTS_REFUSED_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_requests_refused_total",
        "Requests tollgate refused itself, by route and error code.",
        &["route", "reason"],
    )
});

/// `tollgate_client_connections`: client connections open on the proxy listeners.
pub static CLIENT_CONNECTIONS: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "tollgate_client_connections",
        "Client connections open on the proxy listeners.",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// `tollgate_client_connections_refused_total{reason}`: client connections tollgate closed
/// itself before a request: `max_client_connections`, `max_connections_per_ip` (503 at once),
/// `client_header_timeout` (408: a request header not complete in time),
/// `request_headers_too_large` (431: a request head longer than the request limits allow,
/// refused as it arrives).
pub static CLIENT_CONNECTIONS_REFUSED_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_client_connections_refused_total",
        "Client connections closed by tollgate before a request could be served, by reason.",
        &["reason"],
    )
});

/// `tollgate_requests_shed_total{route}`: requests answered 503 because their route had
/// `max_in_flight` requests in flight.
pub static REQUESTS_SHED_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_requests_shed_total",
        "Requests refused with 503 because their route had max_in_flight requests in flight.",
        &["route"],
    )
});

/// `tollgate_api_key_lookups_total{outcome}`: API keys looked up in Redis
/// (`identity.key_store: redis`): `found`, `unknown`, `error` (Redis failed), `over_budget`
/// (refused without a lookup: more new keys per second than `key_lookups_per_second`).
pub static KEY_LOOKUPS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_api_key_lookups_total",
        "API keys looked up in Redis, by outcome.",
        &["outcome"],
    )
});

/// `tollgate_access_log_lines_total{outcome}`: access log lines `written`, `dropped` (the
/// writer fell behind and its buffer was full) or `sampled_out`.
pub static ACCESS_LOG_LINES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_access_log_lines_total",
        "Access log lines by outcome (written, dropped, sampled_out).",
        &["outcome"],
    )
});

/// Handles for the access log outcomes (hot path: no label lookup).
pub static ACCESS_LOG_WRITTEN: Lazy<IntCounter> =
    Lazy::new(|| ACCESS_LOG_LINES_TOTAL.with_label_values(&["written"]));
/// See [`ACCESS_LOG_WRITTEN`].
pub static ACCESS_LOG_DROPPED: Lazy<IntCounter> =
    Lazy::new(|| ACCESS_LOG_LINES_TOTAL.with_label_values(&["dropped"]));
/// See [`ACCESS_LOG_WRITTEN`].
pub static ACCESS_LOG_SAMPLED_OUT: Lazy<IntCounter> =
    Lazy::new(|| ACCESS_LOG_LINES_TOTAL.with_label_values(&["sampled_out"]));

/// `tollgate_upstream_retries_total{upstream}`: attempts beyond the first (a failed
/// connection retried on another endpoint).
pub static UPSTREAM_RETRIES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_upstream_retries_total",
        "Upstream attempts beyond the first, by upstream group.",
        &["upstream"],
    )
});

/// `tollgate_upstream_circuit_open{upstream,endpoint}`: 1 while an endpoint's circuit breaker
/// is open (or half-open, waiting for its probe), 0 once a request succeeded again.
pub static UPSTREAM_CIRCUIT_OPEN: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "tollgate_upstream_circuit_open",
        "1 while the endpoint's circuit breaker is open or half-open, else 0.",
        &["upstream", "endpoint"],
    )
});

/// `tollgate_upstream_endpoint_healthy{upstream,endpoint}`: 1 while the endpoint passes its
/// group's active health check, 0 while it fails it (groups with `health_check` only).
pub static UPSTREAM_ENDPOINT_HEALTHY: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "tollgate_upstream_endpoint_healthy",
        "1 while the endpoint passes its active health check, else 0.",
        &["upstream", "endpoint"],
    )
});

/// `tollgate_cache_requests_total{route,status}`: what the cache did per request on caching
/// routes (`hit`, `updating`, `stale`, `miss`, `expired`, `revalidated`, `bypass`).
pub static CACHE_REQUESTS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_requests_total",
        "Requests on caching routes by cache outcome.",
        &["route", "status"],
    )
});

/// `tollgate_cache_background_revalidations_total{route,outcome}`: stale-while-revalidate
/// refreshes run in the background (`refreshed`: new response stored, `revalidated`: 304,
/// `failed`: upstream error or uncacheable answer).
pub static CACHE_BACKGROUND_REVALIDATIONS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_background_revalidations_total",
        "Background (stale-while-revalidate) refreshes by outcome.",
        &["route", "outcome"],
    )
});

/// `tollgate_cache_purged_entries_total{reason}`: entries removed by `admin` purges and by
/// successful `mutation`s.
pub static CACHE_PURGED_ENTRIES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_purged_entries_total",
        "Cache entries removed by admin purges and by mutations.",
        &["reason"],
    )
});

/// `tollgate_cache_shared_lookups_total{result}`: lookups in the fleet's shared tier after a
/// local miss: `hit`, `miss`, `error` (Redis did not answer in time), `rejected` (an entry a
/// later purge matches, older than the purge history held, or undecodable).
pub static CACHE_SHARED_LOOKUPS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_shared_lookups_total",
        "Lookups in the shared (Redis) cache tier after a local miss, by result.",
        &["result"],
    )
});

/// `tollgate_cache_shared_writes_total{result}`: fills written to the shared tier: `stored`,
/// `too_large` (over `cache.shared_max_object_size`), `expired` (no life left to share),
/// `unsynced` (the purge bus has not read the stream yet), `error`.
pub static CACHE_SHARED_WRITES_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_shared_writes_total",
        "Responses written to the shared (Redis) cache tier, by result.",
        &["result"],
    )
});

/// `tollgate_cache_shared_fill_lock_total{result}`: the fleet-wide fill lock: `acquired` (this
/// replica fetches), `waited_hit` (another replica's entry arrived), `waited_released` (its
/// fetch stored nothing), `waited_timeout`, `error`.
pub static CACHE_SHARED_FILL_LOCK_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_shared_fill_lock_total",
        "Fleet-wide fill lock outcomes on shared-tier misses.",
        &["result"],
    )
});

/// `tollgate_cache_purge_bus_published_total`: this replica's purges written to the stream.
pub static PURGE_BUS_PUBLISHED_TOTAL: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "tollgate_cache_purge_bus_published_total",
        "Purges and invalidations this replica published to the fleet's purge stream.",
    )
});

/// `tollgate_cache_purge_bus_applied_total`: other replicas' purges applied here.
pub static PURGE_BUS_APPLIED_TOTAL: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "tollgate_cache_purge_bus_applied_total",
        "Purges and invalidations of other replicas applied to this replica's store.",
    )
});

/// `tollgate_cache_purge_bus_pending`: own purges waiting for Redis to be published.
pub static PURGE_BUS_PENDING: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "tollgate_cache_purge_bus_pending",
        "Purges made here while Redis was away, waiting to be published.",
    )
});

/// `tollgate_cache_purge_bus_connected`: 1 while the purge stream is being read.
pub static PURGE_BUS_CONNECTED: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "tollgate_cache_purge_bus_connected",
        "1 while this replica reads the fleet's purge stream, else 0.",
    )
});

/// `tollgate_cache_purge_bus_lag_seconds`: from a purge's entry in the stream (its id's time,
/// Redis' clock) to its application here.
pub static PURGE_BUS_LAG_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "tollgate_cache_purge_bus_lag_seconds",
            "Time from a purge entering the fleet's stream to its application on this replica.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
        ]),
    )
    .expect("metric");
    REGISTRY.register(Box::new(h.clone())).expect("register");
    h
});

/// `tollgate_cache_purge_bus_resyncs_total{reason}`: times this replica dropped its local store
/// because it could not prove what it missed: `trimmed` (the stream no longer holds them),
/// `stream_lost` (Redis lost the stream), `undecodable` (an entry it cannot read).
pub static PURGE_BUS_RESYNCS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_cache_purge_bus_resyncs_total",
        "Local cache stores dropped because missed purges could not be proven, by reason.",
        &["reason"],
    )
});

/// `tollgate_llm_tokens_total{route,tenant,group,model,type}`: LLM tokens the answers of
/// routes with `tokens:` reported (`type`: `input` or `output`; `tenant` as allowlisted;
/// `model` from the request body, capped at [`MODEL_LABELS`] names, then `other`).
pub static LLM_TOKENS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_llm_tokens_total",
        "LLM tokens reported by answers on routes with `tokens:`, by type (input, output).",
        &["route", "tenant", "group", "model", "type"],
    )
});

/// `tollgate_llm_cost_usd_total{route,tenant,group,model}`: what the tokens of answers cost,
/// for models in the `llm.prices` table.
pub static LLM_COST_USD_TOTAL: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    let c = prometheus::CounterVec::new(
        Opts::new(
            "tollgate_llm_cost_usd_total",
            "Cost in US dollars of the tokens answers reported (models in llm.prices).",
        ),
        &["route", "tenant", "group", "model"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// `tollgate_llm_cached_tokens_total{route,model,type}`: tokens of answers served from the
/// cache (no provider call: nothing debited).
pub static LLM_CACHED_TOKENS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "tollgate_llm_cached_tokens_total",
        "LLM tokens of answers served from cache on routes with `tokens:` (not debited).",
        &["route", "model", "type"],
    )
});

/// `tollgate_llm_cost_saved_usd_total{route,model}`: what the answers served from cache would
/// have cost (models in `llm.prices`).
pub static LLM_COST_SAVED_USD_TOTAL: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    let c = prometheus::CounterVec::new(
        Opts::new(
            "tollgate_llm_cost_saved_usd_total",
            "Cost in US dollars of the tokens of answers served from cache (models in llm.prices).",
        ),
        &["route", "model"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// LLM answer timings by provider group and model: `tollgate_llm_request_duration_seconds`
/// (request start to the answer's end) and `tollgate_llm_time_to_first_token_seconds`
/// (request start to the answer's first body bytes, the first token of a stream).
pub struct LlmTimings {
    /// Whole answers.
    pub duration: HistogramVec,
    /// To the first body bytes.
    pub first_token: HistogramVec,
}

/// See [`LlmTimings`]; buckets are the request latency buckets.
pub static LLM_TIMINGS: Lazy<LlmTimings> = Lazy::new(|| {
    let buckets = crate::config::model::DEFAULT_LATENCY_BUCKETS;
    LlmTimings {
        duration: histogram(
            "tollgate_llm_request_duration_seconds",
            "LLM answers on routes with `tokens:`: request start to the answer's end.",
            &["group", "model"],
            buckets,
        ),
        first_token: histogram(
            "tollgate_llm_time_to_first_token_seconds",
            "LLM answers on routes with `tokens:`: request start to the first body bytes.",
            &["group", "model"],
            buckets,
        ),
    }
});

/// The children of the per-answer LLM metrics for one route, tenant label, group and model:
/// the two timings, and the two token counters once an answer of that key reports usage
/// (created then, so a key without usage shows no token series).
pub struct LlmHandles {
    /// `tollgate_llm_request_duration_seconds{group,model}`.
    pub duration: prometheus::Histogram,
    /// `tollgate_llm_time_to_first_token_seconds{group,model}`.
    pub first_token: prometheus::Histogram,
    tokens: Option<[prometheus::IntCounter; 2]>,
    key: [Box<str>; 4],
}

impl LlmHandles {
    /// `tollgate_llm_tokens_total{...,type="input"}` and `{...,type="output"}`.
    pub fn tokens(&mut self) -> &[prometheus::IntCounter; 2] {
        let [route, tenant, group, model] = &self.key;
        self.tokens.get_or_insert_with(|| {
            ["input", "output"].map(|kind| {
                LLM_TOKENS_TOTAL.with_label_values(&[route, tenant, group, model, kind])
            })
        })
    }
}

/// Keys whose handles a worker thread keeps; past them, handles are looked up each time.
const LLM_HANDLES_PER_THREAD: usize = 64;

/// Runs `f` with the LLM metric children of `(route, tenant, group, model)`, kept per worker
/// thread: looking four children up by their labels (hashing every label, a read lock, a map
/// lookup) on every answer of a token route cost more than the rest of its accounting. A
/// linear search suits the few keys a thread sees (routes x tenants x models in use).
pub fn with_llm_handles<R>(
    route: &str,
    tenant: &str,
    group: &str,
    model: &str,
    f: impl FnOnce(&mut LlmHandles) -> R,
) -> R {
    thread_local! {
        static HANDLES: std::cell::RefCell<Vec<LlmHandles>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let labels = [route, tenant, group, model];
    let build = || LlmHandles {
        duration: LLM_TIMINGS.duration.with_label_values(&[group, model]),
        first_token: LLM_TIMINGS.first_token.with_label_values(&[group, model]),
        tokens: None,
        key: labels.map(Box::from),
    };
    HANDLES.with(|cell| {
        let Ok(mut handles) = cell.try_borrow_mut() else {
            return f(&mut build());
        };
        let found = handles
            .iter()
            .position(|h| h.key.iter().map(|k| &**k).eq(labels.iter().copied()));
        match found {
            Some(i) => f(&mut handles[i]),
            None if handles.len() < LLM_HANDLES_PER_THREAD => {
                handles.push(build());
                let last = handles.len() - 1;
                f(&mut handles[last])
            }
            None => f(&mut build()),
        }
    })
}

/// `tollgate_streams_active{kind}`: SSE streams and WebSocket connections open now.
pub static STREAMS_ACTIVE: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "tollgate_streams_active",
        "Server-sent event streams (kind=sse) and WebSocket connections (kind=websocket) open now.",
        &["kind"],
    )
});

/// `tollgate_stream_duration_seconds{kind}`: how long SSE streams and WebSockets lasted.
pub static STREAM_DURATION_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "tollgate_stream_duration_seconds",
        "How long server-sent event streams and WebSocket connections stayed open.",
        &["kind"],
        &[
            0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
        ],
    )
});

/// Distinct `model` label values before the rest count as `other`.
pub const MODEL_LABELS: usize = 50;

/// The `model` label of a model name: itself for the first [`MODEL_LABELS`] names seen,
/// `other` for the rest (a client choosing model names cannot grow the series without bound),
/// `none` when the request named none.
pub fn model_label(model: Option<&str>) -> &str {
    static SEEN: Lazy<parking_lot::RwLock<std::collections::HashSet<String>>> =
        Lazy::new(Default::default);
    let Some(model) = model else {
        return "none";
    };
    // Every answer of a token route asks: a shared read lock, the write lock only for a new name.
    if SEEN.read().contains(model) {
        return model;
    }
    let mut seen = SEEN.write();
    if seen.contains(model) {
        return model;
    }
    if seen.len() < MODEL_LABELS {
        seen.insert(model.to_string());
        return model;
    }
    "other"
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
}

/// `tollgate_cache_used_bytes`: bytes the cache store accounts for (bodies, headers, bookkeeping).
pub static CACHE_USED_BYTES: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "tollgate_cache_used_bytes",
        "Bytes held by the response cache (bodies, headers and per-entry bookkeeping).",
    )
});

/// `tollgate_cache_max_bytes`: the store's budget (`cache.max_size`).
pub static CACHE_MAX_BYTES: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "tollgate_cache_max_bytes",
        "Byte budget of the response cache (cache.max_size).",
    )
});

/// `tollgate_cache_entries`: responses stored (each Vary variant counts).
pub static CACHE_ENTRIES: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "tollgate_cache_entries",
        "Responses held by the response cache (each Vary variant counts).",
    )
});

/// `tollgate_cache_evictions_total`: entries evicted to stay within the byte budget.
pub static CACHE_EVICTIONS_TOTAL: Lazy<IntCounter> = Lazy::new(|| {
    let c = IntCounter::new(
        "tollgate_cache_evictions_total",
        "Cache entries evicted (least recently used) to stay within the byte budget.",
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// Register every metric. Metrics without labels (and the pre-created series: build info,
/// reload results, access log outcomes) show on `/metrics` at once; labelled ones appear with
/// their first series (the prometheus crate exposes no empty families). `buckets` sets the
/// latency histograms' buckets; only the first call's buckets count (fixed at run time).
///
/// `status_label` adds the exact `status` label to `tollgate_http_requests_total` (also
/// fixed by the first call).
pub fn init(buckets: &[f64], status_label: bool) {
    let _ = HTTP_REQUESTS_TOTAL.set(register_http_requests_total(status_label));
    let _ = HTTP_REQUEST_DURATION.set(histogram(
        "tollgate_http_request_duration_seconds",
        "Time from request received to response completed.",
        &["route", "method", "status_class", "tier", "cache"],
        buckets,
    ));
    let _ = UPSTREAM_DURATION.set(histogram(
        "tollgate_upstream_duration_seconds",
        "Time from upstream attempt start to upstream response headers.",
        &["upstream"],
        buckets,
    ));
    Lazy::force(&BUILD_INFO);
    Lazy::force(&HTTP_REQUESTS_IN_FLIGHT);
    Lazy::force(&HTTP_RESPONSE_BODY_BYTES_TOTAL);
    Lazy::force(&UPSTREAM_REQUESTS_TOTAL);
    Lazy::force(&CONFIG_RELOADS_TOTAL);
    Lazy::force(&COMPRESSION_INPUT_BYTES_TOTAL);
    Lazy::force(&COMPRESSION_OUTPUT_BYTES_TOTAL);
    Lazy::force(&RATELIMIT_DECISIONS_TOTAL);
    Lazy::force(&RATELIMIT_TRACKED_KEYS);
    Lazy::force(&RATELIMIT_STORE_DECISIONS_TOTAL);
    Lazy::force(&REQUESTS_SHED_TOTAL);
    Lazy::force(&REQUESTS_REFUSED_TOTAL);
    Lazy::force(&CLIENT_CONNECTIONS);
    Lazy::force(&CLIENT_CONNECTIONS_REFUSED_TOTAL);
    Lazy::force(&ACCESS_LOG_WRITTEN);
    Lazy::force(&ACCESS_LOG_DROPPED);
    Lazy::force(&ACCESS_LOG_SAMPLED_OUT);
    Lazy::force(&CACHE_REQUESTS_TOTAL);
    Lazy::force(&UPSTREAM_RETRIES_TOTAL);
    Lazy::force(&UPSTREAM_CIRCUIT_OPEN);
    Lazy::force(&UPSTREAM_ENDPOINT_HEALTHY);
    Lazy::force(&CACHE_BACKGROUND_REVALIDATIONS_TOTAL);
    Lazy::force(&CACHE_PURGED_ENTRIES_TOTAL);
    Lazy::force(&CACHE_USED_BYTES);
    Lazy::force(&CACHE_MAX_BYTES);
    Lazy::force(&CACHE_ENTRIES);
    Lazy::force(&CACHE_EVICTIONS_TOTAL);
    for r in ["success", "failure"] {
        CONFIG_RELOADS_TOTAL.with_label_values(&[r]);
    }
    for kind in ["sse", "websocket"] {
        STREAMS_ACTIVE.with_label_values(&[kind]);
    }
    register_process_collector();
}

/// The standard `process_*` series (CPU seconds, resident and virtual memory, open and max
/// fds, start time), read from `/proc` at each scrape by the prometheus crate's collector.
/// Registered once; a second `init` (tests) finds it there already.
fn register_process_collector() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = REGISTRY.register(Box::new(pc)) {
            tracing::warn!("process metrics unavailable: {e}");
        }
    });
}

/// The Prometheus text exposition of the registry.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding cannot fail");
    buf
}

/// `2xx`-style class of a status code; `0` (no response was sent) maps to `none`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Method label: the standard methods by name, anything else as `OTHER` (bounded cardinality).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// RAII in-flight counter: +1 when created, -1 when dropped, whatever path the request took.
pub struct InFlight(());

impl InFlight {
    /// Count one more request in flight.
    pub fn start() -> Self {
        HTTP_REQUESTS_IN_FLIGHT.inc();
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        HTTP_REQUESTS_IN_FLIGHT.dec();
    }
}
