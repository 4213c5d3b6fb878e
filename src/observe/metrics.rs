//! One Prometheus registry for the whole process; metrics are defined here and rendered by the
//! admin `/metrics` endpoint. Label values come from config names, never from raw request data,
//! so cardinality is bounded by the config.

use once_cell::sync::Lazy;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The registry every tollgate metric is registered in.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

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

/// `tollgate_http_requests_total{route,method,status_class}`: requests answered.
pub static HTTP_REQUESTS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "tollgate_http_requests_total",
            "HTTP requests answered by the proxy listener.",
        ),
        &["route", "method", "status_class"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// `tollgate_config_reloads_total{result}`: config reload attempts.
pub static CONFIG_RELOADS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "tollgate_config_reloads_total",
            "Config reload attempts, by result (success, failure).",
        ),
        &["result"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// `tollgate_ratelimit_decisions_total{tier,policy,decision}`: rate-limit decisions.
/// `policy` is the limit that refused (`burst`, `daily`) or `none` when allowed; `decision` is
/// `allowed`, `limited` or `shadow_limited` (refused in shadow mode: counted, not enforced).
pub static RATELIMIT_DECISIONS_TOTAL: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "tollgate_ratelimit_decisions_total",
            "Rate-limit decisions by tier, refusing policy and outcome.",
        ),
        &["tier", "policy", "decision"],
    )
    .expect("metric");
    REGISTRY.register(Box::new(c.clone())).expect("register");
    c
});

/// `tollgate_ratelimit_tracked_keys`: limiter entries in memory (callers x policies).
pub static RATELIMIT_TRACKED_KEYS: Lazy<prometheus::IntGauge> = Lazy::new(|| {
    let g = prometheus::IntGauge::new(
        "tollgate_ratelimit_tracked_keys",
        "Rate-limiter entries held in memory (one per caller and policy scope).",
    )
    .expect("metric");
    REGISTRY.register(Box::new(g.clone())).expect("register");
    g
});

/// Make sure every metric is registered (so `/metrics` lists them before their first use).
pub fn init() {
    Lazy::force(&BUILD_INFO);
    Lazy::force(&HTTP_REQUESTS_TOTAL);
    Lazy::force(&CONFIG_RELOADS_TOTAL);
    Lazy::force(&RATELIMIT_DECISIONS_TOTAL);
    Lazy::force(&RATELIMIT_TRACKED_KEYS);
    for r in ["success", "failure"] {
        CONFIG_RELOADS_TOTAL.with_label_values(&[r]);
    }
}

/// The Prometheus text exposition of the registry.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(4096);
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
