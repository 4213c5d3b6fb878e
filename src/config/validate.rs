//! Semantic checks over a parsed [`Config`](super::model::Config): every problem is collected, none stops the others.
//!
//! [`validate`] is a table of contents: one function per section of the model, in model order
//! (`validate_listen`, `validate_admin`, `validate_server`, `validate_upstream`,
//! `validate_route`, `validate_identity`, `validate_tiers`, `validate_tenant`,
//! `validate_observability`, `validate_cache_store`, `validate_redis`), each split into small helpers for its
//! parts. A check that spans sections (a route naming an upstream, a tenant naming a tier) runs
//! with the referencing section and is handed what it needs as arguments.
//!
//! Errors are raised by YAML path; `config::load` gives them their lines and sorts them by line
//! (a stable sort), so errors on one line (a route written `- { ... }`) keep the order pushed.

use super::address::{check_hostname, parse_endpoint, parse_listen, route_name};
use super::error::ConfigError;
use super::model::{
    AdminConfig, CacheConfig, CircuitBreakerConfig, CompressionConfig, EndpointConfig,
    HealthCheckConfig, IdentityConfig, KeyStoreKind, LimitMode, LimitStore, ObservabilityConfig,
    RateLimitConfig, RedisConfig, RetryConfig, RouteCacheConfig, RouteConfig, RouteRateLimitConfig,
    ServerConfig, TenantConfig, TierConfig, TimeoutsConfig, TlsConfig, UpstreamConfig,
};
use super::parse::Parsed;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Check everything that serde cannot: addresses, references between sections, duplicates.
/// `from_env(path, value)` tells whether `value`, at a YAML path, came from a `${VAR}`.
pub fn validate(
    parsed: &Parsed,
    from_env: &dyn Fn(&str, &str) -> bool,
    errors: &mut Vec<ConfigError>,
) {
    let config = &parsed.config;
    let known = Known {
        upstreams: Names::new("upstream", &parsed.upstream_names),
        tiers: Names::new("tier", &parsed.tier_names),
        tier_limits: &config.tiers,
        tenants: &config.tenants,
    };
    validate_listen(&config.listen, errors);
    validate_admin(&config.admin, &config.listen, errors);
    validate_server(&config.server, errors);
    for (name, group) in &config.upstreams {
        validate_upstream(name, group, errors);
    }
    let mut seen = SeenRoutes::default();
    for (i, route) in config.routes.iter().enumerate() {
        // A route that did not parse was reported then; its placeholder only keeps indices.
        if !parsed.broken_routes.contains(&i) {
            validate_route(i, route, &known, &mut seen, errors);
        }
    }
    validate_identity(&config.identity, &known.tiers, errors);
    validate_tiers(&config.tiers, errors);
    let mut key_owners = HashMap::new();
    for (id, tenant) in &config.tenants {
        validate_tenant(id, tenant, &known.tiers, from_env, &mut key_owners, errors);
    }
    // The top-level `rate_limit:` has nothing serde does not already check; route policies are
    // checked with their route (`validate_rate_limit`).
    validate_observability(&config.observability, &config.tenants, errors);
    validate_cache_store(&config.cache, errors);
    validate_shared_cache(&config.cache, config.redis.is_some(), errors);
    for (model, price) in &config.llm.prices {
        for (key, v) in [("input", price.input), ("output", price.output)] {
            if !v.is_finite() || v < 0.0 {
                errors.push(ConfigError::at(
                    format!("llm.prices.{model}.{key}"),
                    format!("{v} is not a price: US dollars per million tokens, 0 or more"),
                ));
            }
        }
    }
    validate_redis(config.redis.as_ref(), &config.rate_limit, errors);
    if config.identity.key_store == KeyStoreKind::Redis && config.redis.is_none() {
        errors.push(ConfigError::at(
            "identity.key_store",
            "`redis` reads API keys from the `redis:` store: add a top-level `redis:` section",
        ));
    }
}

/// `redis:` (addresses, timeouts, prefix) and the `rate_limit.store` that needs it. Messages
/// never quote a URL: it may carry a password.
fn validate_redis(
    redis: Option<&RedisConfig>,
    rate_limit: &RateLimitConfig,
    errors: &mut Vec<ConfigError>,
) {
    if rate_limit.mode == LimitMode::Lease {
        if rate_limit.store != LimitStore::Redis {
            errors.push(ConfigError::at(
                "rate_limit.mode",
                "`lease` leases slices of a bucket shared in Redis: it needs `store: redis`",
            ));
        }
        if rate_limit.lease_slice < 2 {
            errors.push(ConfigError::at(
                "rate_limit.lease_slice",
                format!(
                    "must be at least 2 (found {}); 1 is `mode: exact`",
                    rate_limit.lease_slice
                ),
            ));
        }
        if rate_limit.lease_ttl.0.is_zero() {
            errors.push(ConfigError::at(
                "rate_limit.lease_ttl",
                "must be more than 0",
            ));
        }
    }
    let Some(r) = redis else {
        if rate_limit.store == LimitStore::Redis {
            errors.push(ConfigError::at(
                "rate_limit.store",
                "`redis` needs a top-level `redis:` section with `url` (or `cluster`) to share limits through",
            ));
        }
        return;
    };
    match (&r.url, r.cluster.is_empty()) {
        (None, true) => errors.push(ConfigError::at(
            "redis",
            "set `url` (one Redis: `redis://host:6379`) or `cluster` (seed nodes of a Redis Cluster)",
        )),
        (Some(_), false) => errors.push(ConfigError::at(
            "redis",
            "set either `url` or `cluster`, not both",
        )),
        (Some(url), true) => {
            if let Err(e) = crate::fleet::settings::check_url(url) {
                errors.push(ConfigError::at("redis.url", e));
            }
        }
        (None, false) => {
            for (i, url) in r.cluster.iter().enumerate() {
                if let Err(e) = crate::fleet::settings::check_url(url) {
                    errors.push(ConfigError::at(format!("redis.cluster[{i}]"), e));
                }
            }
        }
    }
    if let Some(ca) = &r.tls_ca_file {
        let tls = r
            .url
            .iter()
            .chain(&r.cluster)
            .any(|u| u.starts_with("rediss://"));
        if !tls {
            errors.push(ConfigError::at(
                "redis.tls_ca_file",
                "only used with TLS: write the URL(s) as `rediss://...`",
            ));
        }
        if !r.cluster.is_empty() {
            errors.push(ConfigError::at(
                "redis.tls_ca_file",
                "works with `url` only: a Redis Cluster over TLS is verified against the system's trust store",
            ));
        }
        if let Err(e) = std::fs::read(ca) {
            errors.push(ConfigError::at(
                "redis.tls_ca_file",
                format!("cannot read `{ca}`: {e}"),
            ));
        }
    }
    let durations = [
        ("connect_timeout", r.connect_timeout.0),
        ("command_timeout", r.command_timeout.0),
        ("heartbeat_interval", r.heartbeat_interval.0),
        ("backoff", r.backoff.0),
    ];
    for (key, d) in durations {
        if d.is_zero() {
            errors.push(ConfigError::at(
                format!("redis.{key}"),
                "must be more than 0",
            ));
        }
    }
    if r.command_timeout.0 > std::time::Duration::from_secs(5) {
        errors.push(ConfigError::at(
            "redis.command_timeout",
            "at most 5s: every rate-limited request may wait this long when Redis stalls (a few ms to tens of ms is usual)",
        ));
    }
    if !(1..=64).contains(&r.connections) {
        errors.push(ConfigError::at(
            "redis.connections",
            format!("must be 1 to 64, found {}", r.connections),
        ));
    }
    if r.failures_before_backoff == 0 {
        errors.push(ConfigError::at(
            "redis.failures_before_backoff",
            "must be at least 1",
        ));
    }
    if r.key_prefix.is_empty() || r.key_prefix.contains(['{', '}', ' ']) {
        errors.push(ConfigError::at(
            "redis.key_prefix",
            "must be non-empty, without spaces, `{` or `}` (braces would break the keys' Cluster hash tags)",
        ));
    }
}

/// What the checks of one section need from the others.
struct Known<'a> {
    /// Upstream groups a route may name.
    upstreams: Names<'a>,
    /// Tiers a tenant, the identity section or a route policy may name.
    tiers: Names<'a>,
    /// The tiers that parsed, whose bursts a route's cost must fit.
    tier_limits: &'a IndexMap<String, TierConfig>,
    /// The tenants that parsed, likewise.
    tenants: &'a IndexMap<String, TenantConfig>,
}

/// Names that references may use: every one written in the file, even where its body failed to
/// parse, so that a broken entry is not reported a second time as unknown where it is named.
struct Names<'a> {
    /// What they name (`upstream`, `tier`), for messages.
    kind: &'static str,
    names: &'a [String],
}

impl<'a> Names<'a> {
    fn new(kind: &'static str, names: &'a [String]) -> Self {
        Names { kind, names }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// `name`, at `path`, unless it is defined: then an error that lists what is.
    fn check(&self, name: &str, path: String, errors: &mut Vec<ConfigError>) {
        if !self.contains(name) {
            let defined = if self.names.is_empty() {
                "none".to_string()
            } else {
                self.names.join(", ")
            };
            let kind = self.kind;
            errors.push(ConfigError::at(
                path,
                format!("unknown {kind} `{name}` (defined {kind}s: {defined})"),
            ));
        }
    }
}

// ---- listen, admin, server ----

/// Every `listen:` address is `IP:port`, and there is at least one.
fn validate_listen(listen: &[String], errors: &mut Vec<ConfigError>) {
    for (i, l) in listen.iter().enumerate() {
        // One address is written `listen: x`, several as a list.
        let path = if listen.len() == 1 {
            "listen".to_string()
        } else {
            format!("listen[{i}]")
        };
        if let Err(e) = parse_listen(l) {
            errors.push(ConfigError::at(path, e));
        }
    }
    if listen.is_empty() {
        errors.push(ConfigError::at(
            "listen",
            "at least one listen address is required",
        ));
    }
}

/// The admin token is not empty; the admin address parses and does not overlap the proxy's.
fn validate_admin(admin: &AdminConfig, listen: &[String], errors: &mut Vec<ConfigError>) {
    // The token is checked first: the order these two have always been reported in when
    // `admin: { ... }` is written on one line.
    if let Some(t) = &admin.token {
        if t.trim().is_empty() {
            errors.push(ConfigError::at(
                "admin.token",
                "is empty: set the variable it names (e.g. TOLLGATE_ADMIN_TOKEN) or remove the key",
            ));
        }
    }
    let addr = match parse_listen(&admin.listen) {
        Ok(a) => a,
        Err(e) => return errors.push(ConfigError::at("admin.listen", e)),
    };
    // Same port on the same or a wildcard address: the two listeners cannot both bind.
    let clash = |l: &SocketAddr| {
        l.port() == addr.port()
            && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
    };
    if let Some(l) = listen
        .iter()
        .filter_map(|l| parse_listen(l).ok())
        .find(clash)
    {
        errors.push(ConfigError::at(
            "admin.listen",
            format!("`{addr}` overlaps the proxy listen address `{l}`: the admin listener needs its own port"),
        ));
    }
}

/// A sane thread count.
fn validate_server(server: &ServerConfig, errors: &mut Vec<ConfigError>) {
    if server.threads == 0 || server.threads > 1024 {
        errors.push(ConfigError::at(
            "server.threads",
            "must be between 1 and 1024",
        ));
    }
    let client = [
        ("keepalive_timeout", server.keepalive_timeout.0.is_zero()),
        (
            "client_body_timeout",
            server.client_body_timeout.0.is_zero(),
        ),
        ("max_uri_length", server.max_uri_length.0 == 0),
        ("max_header_size", server.max_header_size.0 == 0),
        ("max_headers", server.max_headers == 0),
        ("client_read_buffer", server.client_read_buffer.0 == 0),
        (
            "client_header_timeout",
            server.client_header_timeout.0.is_zero(),
        ),
        ("max_client_connections", server.max_client_connections == 0),
        (
            "max_connections_per_ip",
            server.max_connections_per_ip == Some(0),
        ),
    ];
    // A Unix socket path: not empty, and within the 107 bytes `sun_path` holds.
    if server.upgrade_sock.trim().is_empty() || server.upgrade_sock.len() > 107 {
        errors.push(ConfigError::at(
            "server.upgrade_sock",
            "must be a Unix socket path of 1 to 107 bytes, e.g. /tmp/tollgate_upgrade.sock",
        ));
    }
    if server.client_read_buffer.0 > 1024 * 1024 {
        errors.push(ConfigError::at(
            "server.client_read_buffer",
            "must be at most 1MiB (it is allocated for every client connection)",
        ));
    }
    for (key, zero) in client {
        if zero {
            errors.push(ConfigError::at(
                format!("server.{key}"),
                "must be more than 0",
            ));
        }
    }
}

// ---- upstreams ----

/// One upstream group, `upstreams.<name>`.
fn validate_upstream(name: &str, group: &UpstreamConfig, errors: &mut Vec<ConfigError>) {
    let base = format!("upstreams.{name}");
    if let Err(e) = check_name(name) {
        errors.push(ConfigError::at(
            &base,
            format!("bad upstream name `{name}`: {e}"),
        ));
    }
    validate_endpoints(name, &group.endpoints, &base, errors);
    validate_hash_on(&group.hash_on, &base, errors);
    validate_retry(&group.retry, &format!("{base}.retry"), errors);
    validate_circuit_breaker(
        &group.circuit_breaker,
        &format!("{base}.circuit_breaker"),
        errors,
    );
    if let Some(hc) = &group.health_check {
        validate_health_check(hc, &format!("{base}.health_check"), errors);
    }
    validate_rewrites(group, &base, errors);
    validate_timeouts(&group.timeouts, &format!("{base}.timeouts"), errors);
    if let Some(tls) = &group.tls {
        validate_tls(tls, &format!("{base}.tls"), errors);
    }
}

/// At least one endpoint; each a `host:port` with a weight in range, none listed twice.
fn validate_endpoints(
    group: &str,
    endpoints: &[EndpointConfig],
    base: &str,
    errors: &mut Vec<ConfigError>,
) {
    if endpoints.is_empty() {
        errors.push(ConfigError::at(
            format!("{base}.endpoints"),
            format!("upstream group `{group}` has no endpoints: list at least one `host:port`"),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let path = format!("{base}.endpoints[{i}]");
        if let Err(e) = parse_endpoint(ep.address()) {
            let path = match ep {
                EndpointConfig::Weighted(_) => format!("{path}.address"),
                EndpointConfig::Address(_) => path.clone(),
            };
            errors.push(ConfigError::at(&path, e));
        }
        if !(1..=1000).contains(&ep.weight()) {
            errors.push(ConfigError::at(
                format!("{path}.weight"),
                format!("weights go from 1 to 1000, got {}", ep.weight()),
            ));
        }
        if let Some(first) = seen.insert(ep.address(), i) {
            errors.push(ConfigError::at(
                &path,
                format!("duplicate endpoint `{ep}` (already at endpoints[{first}])"),
            ));
        }
    }
}

/// `tenant`, `client_ip` or `header:<valid header name>`.
fn validate_hash_on(hash_on: &str, base: &str, errors: &mut Vec<ConfigError>) {
    let header_ok = hash_on
        .strip_prefix("header:")
        .is_some_and(|h| http::header::HeaderName::from_bytes(h.trim().as_bytes()).is_ok());
    if hash_on != "tenant" && hash_on != "client_ip" && !header_ok {
        errors.push(ConfigError::at(
            format!("{base}.hash_on"),
            format!(
                "`{hash_on}` is not a hash key: write `tenant`, `client_ip` or `header:<name>`"
            ),
        ));
    }
}

/// Attempts, retryable statuses, the budget fraction and non-zero timeouts; `base` is the
/// `retry` path.
fn validate_retry(retry: &RetryConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if !(1..=10).contains(&retry.attempts) {
        errors.push(ConfigError::at(
            format!("{base}.attempts"),
            format!(
                "attempts go from 1 (no retry) to 10, got {}",
                retry.attempts
            ),
        ));
    }
    for (j, st) in retry.on.iter().enumerate() {
        if !(500..=599).contains(st) && *st != 429 && *st != 408 {
            errors.push(ConfigError::at(
                format!("{base}.on[{j}]"),
                format!("{st}: only 408, 429 and 5xx statuses can be retried"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&retry.budget) || retry.budget.is_nan() {
        errors.push(ConfigError::at(
            format!("{base}.budget"),
            format!(
                "{} is not a fraction: write 0.2 for \"retries add at most 20% of requests\"",
                retry.budget
            ),
        ));
    }
    for (key, d) in [
        ("per_try_timeout", retry.per_try_timeout),
        ("deadline", retry.deadline),
    ] {
        if d.is_some_and(|d| d.get().is_zero()) {
            errors.push(ConfigError::at(
                format!("{base}.{key}"),
                "must be more than 0s (remove it for none)",
            ));
        }
    }
}

/// An enabled breaker backs off for some time, at most `max_backoff`; `path` is the
/// `circuit_breaker` path (the error names the section: it is about two of its keys).
fn validate_circuit_breaker(cb: &CircuitBreakerConfig, path: &str, errors: &mut Vec<ConfigError>) {
    if cb.failures > 0 && (cb.backoff.get().is_zero() || cb.max_backoff < cb.backoff) {
        errors.push(ConfigError::at(
            path,
            format!(
                "backoff must be more than 0s and at most max_backoff (got {} and {})",
                cb.backoff, cb.max_backoff
            ),
        ));
    }
}

/// Path, expected status, interval, timeout and thresholds; `base` is the `health_check` path.
fn validate_health_check(hc: &HealthCheckConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if !hc.path.starts_with('/') {
        errors.push(ConfigError::at(
            format!("{base}.path"),
            format!("`{}` must start with `/`", hc.path),
        ));
    }
    if !(100..=599).contains(&hc.expect_status) {
        errors.push(ConfigError::at(
            format!("{base}.expect_status"),
            format!("{} is not an HTTP status", hc.expect_status),
        ));
    }
    if hc.interval.get() < std::time::Duration::from_millis(100) {
        errors.push(ConfigError::at(
            format!("{base}.interval"),
            "must be at least 100ms",
        ));
    }
    if hc.timeout.get().is_zero() || hc.timeout > hc.interval {
        errors.push(ConfigError::at(
            format!("{base}.timeout"),
            format!(
                "must be more than 0s and at most the interval ({})",
                hc.interval
            ),
        ));
    }
    for (key, v) in [
        ("healthy_threshold", hc.healthy_threshold),
        ("unhealthy_threshold", hc.unhealthy_threshold),
    ] {
        if !(1..=100).contains(&v) {
            errors.push(ConfigError::at(
                format!("{base}.{key}"),
                format!("goes from 1 to 100, got {v}"),
            ));
        }
    }
}

/// What the group changes in requests it forwards: `host`, `strip_prefix`/`add_prefix` and
/// `headers` must be things a request can carry.
fn validate_rewrites(group: &UpstreamConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if let Some(h) = &group.host {
        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
            errors.push(ConfigError::at(
                format!("{base}.host"),
                format!("`{h}` is not a valid Host header value"),
            ));
        }
    }
    for (key, p) in [
        ("strip_prefix", &group.strip_prefix),
        ("add_prefix", &group.add_prefix),
    ] {
        if let Some(p) = p {
            if !p.starts_with('/') || p.len() < 2 || p.contains(['?', '#', ' ']) {
                errors.push(ConfigError::at(
                    format!("{base}.{key}"),
                    format!("`{p}` must be a path like `/v1` (starting with `/`, no query)"),
                ));
            }
        }
    }
    for (h, v) in &group.headers {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errors.push(ConfigError::at(
                format!("{base}.headers.{h}"),
                format!("`{h}` is not a valid header name"),
            ));
        } else if http::HeaderValue::from_str(v).is_err() {
            errors.push(ConfigError::at(
                format!("{base}.headers.{h}"),
                "the value has characters a header cannot carry",
            ));
        }
    }
}

/// Every timeout above zero; `base` is the `timeouts` path.
fn validate_timeouts(t: &TimeoutsConfig, base: &str, errors: &mut Vec<ConfigError>) {
    for (key, d) in [
        ("connect", t.connect),
        ("read", t.read),
        ("write", t.write),
        ("idle", t.idle),
    ] {
        if d.get().is_zero() {
            errors.push(ConfigError::at(
                format!("{base}.{key}"),
                "must be greater than 0s",
            ));
        }
    }
}

/// An SNI, when given, is a host name; `base` is the `tls` path.
fn validate_tls(tls: &TlsConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if let Some(sni) = &tls.sni {
        if let Err(e) = check_hostname(sni) {
            errors.push(ConfigError::at(
                format!("{base}.sni"),
                format!("bad SNI `{sni}`: {e}"),
            ));
        }
    }
}

// ---- routes ----

/// Routes validated so far: for duplicate names and for matches an earlier route shadows.
#[derive(Default)]
struct SeenRoutes<'a> {
    names: HashMap<String, usize>,
    matches: HashMap<(Option<String>, &'a str), usize>,
}

/// One route, `routes[i]`.
fn validate_route<'a>(
    i: usize,
    r: &'a RouteConfig,
    known: &Known,
    seen: &mut SeenRoutes<'a>,
    errors: &mut Vec<ConfigError>,
) {
    let base = format!("routes[{i}]");
    // The optional parts come first, name, upstreams and match after: the order a route's
    // errors have always had when the route is written on one line (`- { ... }`).
    if let Some(rl) = &r.rate_limit {
        validate_rate_limit(rl, known, &format!("{base}.rate_limit"), errors);
    }
    if r.max_request_body.is_some_and(|b| b.0 == 0) {
        errors.push(ConfigError::at(
            format!("{base}.max_request_body"),
            "must be more than 0 (leave it out for no limit)",
        ));
    }
    if let Some(b) = r.request_buffering {
        if b.0 == 0 || b.0 > crate::config::MAX_REQUEST_BUFFERING {
            errors.push(ConfigError::at(
                format!("{base}.request_buffering"),
                format!(
                    "must be from 1 byte to 64KiB (Pingora keeps at most {} bytes of a request body); leave it out to stream bodies",
                    crate::config::MAX_REQUEST_BUFFERING
                ),
            ));
        }
    }
    if r.max_in_flight == Some(0) {
        errors.push(ConfigError::at(
            format!("{base}.max_in_flight"),
            "must be at least 1 (0 would refuse every request; leave it out for no cap)",
        ));
    }
    if let Some(c) = &r.compression {
        validate_compression(c, &format!("{base}.compression"), errors);
    }
    if let Some(c) = &r.cache {
        validate_route_cache(c, &format!("{base}.cache"), errors);
    }
    if let Some(t) = &r.tokens {
        validate_route_tokens(t, &format!("{base}.tokens"), errors);
    }
    let name = route_name(r.name.as_deref(), i);
    if let Err(e) = check_name(&name) {
        errors.push(ConfigError::at(
            format!("{base}.name"),
            format!("bad route name `{name}`: {e}"),
        ));
    }
    if let Some(first) = seen.names.insert(name.clone(), i) {
        errors.push(ConfigError::at(
            format!("{base}.name"),
            format!("duplicate route name `{name}` (already used by routes[{first}])"),
        ));
    }
    validate_route_upstreams(r, &known.upstreams, &base, errors);
    validate_match(i, r, seen, &base, errors);
}

/// Exactly one of `upstream` and `upstreams`, naming defined groups, none twice.
fn validate_route_upstreams(
    r: &RouteConfig,
    upstreams: &Names,
    base: &str,
    errors: &mut Vec<ConfigError>,
) {
    match (r.upstream.is_empty(), r.upstreams.is_empty()) {
        (false, true) => upstreams.check(&r.upstream, format!("{base}.upstream"), errors),
        (true, false) => {
            for (j, u) in r.upstreams.iter().enumerate() {
                upstreams.check(u, format!("{base}.upstreams[{j}]"), errors);
                if r.upstreams[..j].contains(u) {
                    errors.push(ConfigError::at(
                        format!("{base}.upstreams[{j}]"),
                        format!("`{u}` is listed twice"),
                    ));
                }
            }
        }
        (false, false) => errors.push(ConfigError::at(
            format!("{base}.upstreams"),
            "give `upstream` or `upstreams`, not both",
        )),
        (true, true) => errors.push(ConfigError::at(
            base,
            "a route needs `upstream: <group>` (or `upstreams: [primary, backup]`)",
        )),
    }
    validate_group_balance(r, base, errors);
}

/// `group_balance` spreads over two or more `upstreams`; `group_weights` name them, 1 to 100.
fn validate_group_balance(r: &RouteConfig, base: &str, errors: &mut Vec<ConfigError>) {
    use crate::config::model::GroupBalance;
    if r.group_balance == GroupBalance::RoundRobin && r.upstreams.len() < 2 {
        errors.push(ConfigError::at(
            format!("{base}.group_balance"),
            "`round_robin` spreads requests over the groups of `upstreams`: list two or more",
        ));
    }
    if !r.group_weights.is_empty() && r.group_balance != GroupBalance::RoundRobin {
        errors.push(ConfigError::at(
            format!("{base}.group_weights"),
            "weights apply with `group_balance: round_robin` (the failover order ignores them)",
        ));
    }
    for (name, w) in &r.group_weights {
        let path = format!("{base}.group_weights.{name}");
        if !r.upstreams.contains(name) {
            errors.push(ConfigError::at(
                &path,
                format!(
                    "`{name}` is not one of this route's `upstreams` ({})",
                    r.upstreams.join(", ")
                ),
            ));
        }
        if !(1..=100).contains(w) {
            errors.push(ConfigError::at(&path, "a weight is 1 to 100"));
        }
    }
}

/// `match:` has a `/` prefix and a valid host, and is not the same as an earlier route's.
fn validate_match<'a>(
    i: usize,
    r: &'a RouteConfig,
    seen: &mut SeenRoutes<'a>,
    base: &str,
    errors: &mut Vec<ConfigError>,
) {
    let prefix = r.matcher.path_prefix.as_str();
    if !prefix.starts_with('/') {
        errors.push(ConfigError::at(
            format!("{base}.match.path_prefix"),
            format!("path prefix `{prefix}` must start with `/`"),
        ));
    }
    // Hosts match case-insensitively: `API.example.com` and `api.example.com` are one match.
    let host = r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if let Err(e) = check_hostname(bare) {
            errors.push(ConfigError::at(
                format!("{base}.match.host"),
                format!("bad host `{h}`: {e} (write `api.example.com` or `*.example.com`)"),
            ));
        }
    }
    if let Some(first) = seen.matches.insert((host, prefix), i) {
        errors.push(ConfigError::at(
            format!("{base}.match"),
            format!(
                "same host and path_prefix as routes[{first}]: this route could never be chosen"
            ),
        ));
    }
}

/// A route's `rate_limit:` policy: its cost, its per-tier overrides, and a cost that every
/// tier's and tenant's bucket can hold.
fn validate_rate_limit(
    rl: &RouteRateLimitConfig,
    known: &Known,
    base: &str,
    errors: &mut Vec<ConfigError>,
) {
    if rl.cost == 0 {
        errors.push(ConfigError::at(
            format!("{base}.cost"),
            "cost must be at least 1",
        ));
    }
    for (tier, o) in &rl.tiers {
        let path = format!("{base}.tiers.{tier}");
        known.tiers.check(tier, path.clone(), errors);
        check_rate(o.rps.unwrap_or(1.0), o.burst.or(Some(1)), &path, errors);
    }
    if !rl.enabled || rl.cost <= 1 {
        return;
    }
    // A request costing more than a bucket holds can never pass: almost surely a mistake.
    let burst_on_route =
        |tier: &str, own: u32| rl.tiers.get(tier).and_then(|o| o.burst).unwrap_or(own);
    let too_small = known
        .tier_limits
        .iter()
        .map(|(name, t)| (format!("tier `{name}`"), burst_on_route(name, t.burst)))
        .chain(known.tenants.iter().filter_map(|(id, t)| {
            let tier = known.tier_limits.get(&t.tier)?;
            let own = t.burst.unwrap_or(tier.burst);
            Some((format!("tenant `{id}`"), burst_on_route(&t.tier, own)))
        }))
        .find(|(_, burst)| *burst < rl.cost);
    if let Some((who, burst)) = too_small {
        errors.push(ConfigError::at(
            format!("{base}.cost"),
            format!(
                "cost {} exceeds the burst of {who} ({burst}): its requests could never pass; \
                 raise that burst or give the tier a route policy under `tiers:`",
                rl.cost
            ),
        ));
    }
}

/// Levels in range, a valid opt-out header, some content types.
fn validate_compression(c: &CompressionConfig, base: &str, errors: &mut Vec<ConfigError>) {
    for (name, algo, max) in [
        ("gzip", &c.gzip, 9),
        ("brotli", &c.brotli, 11),
        ("zstd", &c.zstd, 22),
    ] {
        if let Some(level) = algo.as_ref().and_then(|a| a.level) {
            if !(1..=max).contains(&level) {
                errors.push(ConfigError::at(
                    format!("{base}.{name}.level"),
                    format!("{name} levels go from 1 to {max}, got {level}"),
                ));
            }
        }
    }
    if http::header::HeaderName::from_bytes(c.opt_out_header.as_bytes()).is_err() {
        errors.push(ConfigError::at(
            format!("{base}.opt_out_header"),
            format!("`{}` is not a valid header name", c.opt_out_header),
        ));
    }
    if c.content_types.is_empty() {
        errors.push(ConfigError::at(
            format!("{base}.content_types"),
            "list at least one content type",
        ));
    }
    for (i, t) in c.content_types.iter().enumerate() {
        if !is_content_type_pattern(t) {
            errors.push(ConfigError::at(
                format!("{base}.content_types[{i}]"),
                format!("`{t}` is not a content type: write `text/html`, `text/*` or `+json`"),
            ));
        }
    }
}

/// A media type `type/subtype` (parameters not allowed), `type/*`, or `+suffix`.
fn is_content_type_pattern(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.strip_prefix('+') {
        Some(suffix) => token(suffix),
        None => t
            .split_once('/')
            .is_some_and(|(a, b)| token(a) && (b == "*" || token(b))),
    }
}

/// Methods, statuses, durations and prefixes of a route's `cache:`.
/// A route's `tokens:`: both JSON paths or neither, each made of non-empty keys.
fn validate_route_tokens(
    t: &crate::config::model::RouteTokensConfig,
    base: &str,
    errors: &mut Vec<ConfigError>,
) {
    match (&t.input, &t.output) {
        (Some(_), None) => errors.push(ConfigError::at(
            format!("{base}.output"),
            "give `output` too (or neither, for the OpenAI and Anthropic shapes)",
        )),
        (None, Some(_)) => errors.push(ConfigError::at(
            format!("{base}.input"),
            "give `input` too (or neither, for the OpenAI and Anthropic shapes)",
        )),
        _ => {}
    }
    for (key, path) in [("input", &t.input), ("output", &t.output)] {
        if let Some(p) = path {
            if p.is_empty() || p.split('.').any(str::is_empty) {
                errors.push(ConfigError::at(
                    format!("{base}.{key}"),
                    format!("`{p}` is not a JSON path: write keys joined by dots, like `usage.prompt_tokens`"),
                ));
            }
        }
    }
}

fn validate_route_cache(c: &RouteCacheConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if c.ttl.is_some_and(|t| t.get().is_zero()) {
        errors.push(ConfigError::at(
            format!("{base}.ttl"),
            "must be more than 0s (remove it to use only the origin's freshness)",
        ));
    }
    for (key, d) in [
        ("stale_while_revalidate", c.stale_while_revalidate),
        ("stale_if_error", c.stale_if_error),
    ] {
        if d.get().subsec_nanos() != 0 {
            errors.push(ConfigError::at(
                format!("{base}.{key}"),
                format!("{d} is not whole seconds: stale windows count in seconds (RFC 5861)"),
            ));
        }
    }
    validate_cacheable(c, base, errors);
    if let Some(field) = &c.targeted_field {
        let why = match http::HeaderName::from_bytes(field.as_bytes()) {
            Err(_) => Some("is not a valid header name"),
            Ok(h) if h == http::header::CACHE_CONTROL => {
                Some("is the field a targeted field overrides (RFC 9213): name another one")
            }
            Ok(h) if h.as_str() == "cdn-cache-control" => {
                Some("is always honoured: remove `targeted_field`, or name another field")
            }
            Ok(_) => None,
        };
        if let Some(why) = why {
            errors.push(ConfigError::at(
                format!("{base}.targeted_field"),
                format!("`{field}` {why}"),
            ));
        }
    }
    for (i, h) in c.key.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errors.push(ConfigError::at(
                format!("{base}.key.headers[{i}]"),
                format!("`{h}` is not a valid header name"),
            ));
        } else if c.key.headers[..i].iter().any(|o| o.eq_ignore_ascii_case(h)) {
            errors.push(ConfigError::at(
                format!("{base}.key.headers[{i}]"),
                format!("`{h}` is listed twice"),
            ));
        }
    }
    if c.key.max_body.bytes() == 0 || c.key.max_body.bytes() > 64 * 1024 {
        errors.push(ConfigError::at(
            format!("{base}.key.max_body"),
            format!(
                "{} is out of range: 1 byte to 64KiB (the body is read before the cache is asked)",
                c.key.max_body
            ),
        ));
    }
    for (i, f) in c.key.ignore_fields.iter().enumerate() {
        if f.is_empty() {
            errors.push(ConfigError::at(
                format!("{base}.key.ignore_fields[{i}]"),
                "an empty field name",
            ));
        }
    }
    if c.key.body.is_some() && c.ttl.is_none() {
        errors.push(ConfigError::at(
            format!("{base}.ttl"),
            "a cache keyed on the body stores POST answers, which carry no freshness of their own: give `ttl`",
        ));
    }
    for (i, p) in c.invalidate_prefixes.iter().enumerate() {
        if !p.starts_with('/') {
            errors.push(ConfigError::at(
                format!("{base}.invalidate_prefixes[{i}]"),
                format!("`{p}` must start with `/`"),
            ));
        }
    }
}

/// A route's `cache.methods` and `cache.statuses`: some, and only ones whose responses can be
/// stored.
fn validate_cacheable(c: &RouteCacheConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if c.methods.is_empty() {
        errors.push(ConfigError::at(
            format!("{base}.methods"),
            "list at least one method (GET, HEAD)",
        ));
    }
    for (i, m) in c.methods.iter().enumerate() {
        if !m.eq_ignore_ascii_case("GET") && !m.eq_ignore_ascii_case("HEAD") {
            errors.push(ConfigError::at(
                format!("{base}.methods[{i}]"),
                format!(
                    "`{m}` responses cannot be cached: only GET and HEAD are (RFC 9110 §9.2.3)"
                ),
            ));
        }
    }
    if c.statuses.is_empty() {
        errors.push(ConfigError::at(
            format!("{base}.statuses"),
            "list at least one status (e.g. 200)",
        ));
    }
    for (i, st) in c.statuses.iter().enumerate() {
        if let Some(why) = uncacheable_status(*st) {
            errors.push(ConfigError::at(
                format!("{base}.statuses[{i}]"),
                format!("{st} {why}"),
            ));
        }
    }
}

/// Why a status cannot be listed in a route's `cache.statuses`, if it cannot.
fn uncacheable_status(st: u16) -> Option<&'static str> {
    match st {
        s if !(200..=599).contains(&s) => Some("is not a final response status (200-599)"),
        206 => Some("partial responses are not stored: ranges are cut from whole stored responses"),
        304 => Some("(Not Modified) refreshes a stored response; it is never stored itself"),
        _ => None,
    }
}

// ---- identity, tiers, tenants ----

/// Tiers it names exist, header names are valid, trusted proxies are networks.
fn validate_identity(id: &IdentityConfig, tiers: &Names, errors: &mut Vec<ConfigError>) {
    for (key, tier) in [
        ("anonymous_tier", &id.anonymous_tier),
        ("header_tenant_tier", &id.header_tenant_tier),
    ] {
        if let Some(t) = tier {
            tiers.check(t, format!("identity.{key}"), errors);
        }
    }
    for (key, h) in [
        ("api_key_header", id.api_key_header.as_deref()),
        ("tenant_header", Some(id.tenant_header.as_str())),
    ] {
        if let Some(h) = h {
            if http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(ConfigError::at(
                    format!("identity.{key}"),
                    format!("`{h}` is not a valid header name"),
                ));
            }
        }
    }
    for (key, d) in [
        ("key_cache_ttl", id.key_cache_ttl.0),
        ("key_negative_ttl", id.key_negative_ttl.0),
    ] {
        if d.is_zero() {
            errors.push(ConfigError::at(
                format!("identity.{key}"),
                "must be more than 0",
            ));
        }
    }
    if id.key_lookups_per_second == 0 {
        errors.push(ConfigError::at(
            "identity.key_lookups_per_second",
            "must be at least 1 (0 would refuse every key not yet cached)",
        ));
    }
    if id.key_cache_size == 0 {
        errors.push(ConfigError::at(
            "identity.key_cache_size",
            "must be at least 1",
        ));
    }
    for (i, cidr) in id.trusted_proxies.iter().enumerate() {
        if crate::tenant::parse_cidr(cidr).is_none() {
            errors.push(ConfigError::at(
                format!("identity.trusted_proxies[{i}]"),
                format!("bad network `{cidr}`: write an IP or a CIDR like `10.0.0.0/8`"),
            ));
        }
    }
}

/// Every tier of `tiers:`.
fn validate_tiers(tiers: &IndexMap<String, TierConfig>, errors: &mut Vec<ConfigError>) {
    for (name, tier) in tiers {
        validate_tier(name, tier, errors);
    }
}

/// One tier, `tiers.<name>`: a plain name and a usable rate.
fn validate_tier(name: &str, tier: &TierConfig, errors: &mut Vec<ConfigError>) {
    let base = format!("tiers.{name}");
    if let Err(e) = check_name(name) {
        errors.push(ConfigError::at(
            &base,
            format!("bad tier name `{name}`: {e}"),
        ));
    }
    check_rate(tier.rps, Some(tier.burst), &base, errors);
}

/// One tenant, `tenants.<id>`: a plain id, a defined tier, usable overrides, and API keys that
/// are digests (or come from the environment) and belong to no other tenant. `key_owners` maps
/// the digests of the tenants validated so far to their ids.
fn validate_tenant(
    id: &str,
    tenant: &TenantConfig,
    tiers: &Names,
    from_env: &dyn Fn(&str, &str) -> bool,
    key_owners: &mut HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    let base = format!("tenants.{id}");
    if let Err(e) = check_name(id) {
        errors.push(ConfigError::at(&base, format!("bad tenant id `{id}`: {e}")));
    }
    tiers.check(&tenant.tier, format!("{base}.tier"), errors);
    if let Some(rps) = tenant.rps {
        check_rate(rps, tenant.burst, &base, errors);
    } else if let Some(b) = tenant.burst {
        check_rate(1.0, Some(b), &base, errors);
    }
    for (i, key) in tenant.api_keys.iter().enumerate() {
        let path = format!("{base}.api_keys[{i}]");
        let Some(digest) = api_key_digest(key, &path, from_env, errors) else {
            continue;
        };
        match key_owners.insert(digest, id.to_string()) {
            Some(other) if other == id => errors.push(ConfigError::at(
                &path,
                "this API key is listed twice for this tenant",
            )),
            Some(other) => errors.push(ConfigError::at(
                &path,
                format!("the same API key is also given to tenant `{other}`"),
            )),
            None => {}
        }
    }
}

/// The lowercase hex SHA-256 of an API key written at `path`: given as `sha256:<hex>`, or
/// computed from a key substituted from the environment. A plain key written in the file is
/// refused (the file would hold a secret), as is an empty one.
fn api_key_digest(
    key: &str,
    path: &str,
    from_env: &dyn Fn(&str, &str) -> bool,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let problem = match key.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Some(hex.to_ascii_lowercase());
        }
        Some(_) => "a `sha256:` key needs exactly 64 hex digits",
        None if from_env(path, key) && !key.trim().is_empty() => {
            return Some(crate::tenant::key_digest_hex(key.trim()));
        }
        None if from_env(path, key) => "this API key comes from an empty environment variable",
        None => {
            "plain API keys must not be written in the config file: write \
             `sha256:<hex digest>` (`tollgate hash-key` prints it) or `${ENV_VAR}`"
        }
    };
    errors.push(ConfigError::at(path, problem));
    None
}

/// A rate limit's `rps` above 0 and `burst` at least 1, under `base`.
fn check_rate(rps: f64, burst: Option<u32>, base: &str, errors: &mut Vec<ConfigError>) {
    if !(rps.is_finite() && rps > 0.0) {
        errors.push(ConfigError::at(
            format!("{base}.rps"),
            format!("rps must be a number above 0, got `{rps}`"),
        ));
    }
    if burst == Some(0) {
        errors.push(ConfigError::at(
            format!("{base}.burst"),
            "burst must be at least 1",
        ));
    }
}

// ---- observability, cache ----

/// Histogram buckets, the tenant allowlist (tenants that exist) and the access log.
fn validate_observability(
    o: &ObservabilityConfig,
    tenants: &IndexMap<String, TenantConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let b = &o.latency_buckets;
    if b.is_empty()
        || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
        || b.windows(2).any(|w| w[0] >= w[1])
    {
        errors.push(ConfigError::at(
            "observability.latency_buckets",
            "buckets must be positive numbers of seconds in increasing order, e.g. [0.005, 0.05, 0.5, 5]",
        ));
    }
    for (i, t) in o.tenant_label_allowlist.iter().enumerate() {
        if !tenants.contains_key(t) {
            errors.push(ConfigError::at(
                format!("observability.tenant_label_allowlist[{i}]"),
                format!("unknown tenant `{t}`"),
            ));
        }
    }
    let a = &o.access_log;
    if !(0.0..=1.0).contains(&a.sample_rate) {
        errors.push(ConfigError::at(
            "observability.access_log.sample_rate",
            "must be between 0.0 and 1.0",
        ));
    }
    if a.buffer_lines == 0 {
        errors.push(ConfigError::at(
            "observability.access_log.buffer_lines",
            "must be at least 1",
        ));
    }
    if a.output.trim().is_empty() {
        errors.push(ConfigError::at(
            "observability.access_log.output",
            "write `stdout`, `stderr` or a file path",
        ));
    }
}

/// The store's budget, object cap and lock timeout.
fn validate_cache_store(c: &CacheConfig, errors: &mut Vec<ConfigError>) {
    if c.max_size.bytes() < 1024 * 1024 {
        errors.push(ConfigError::at(
            "cache.max_size",
            format!(
                "{} is too small for a cache: give at least 1MiB",
                c.max_size
            ),
        ));
    }
    if c.max_object_size.bytes() == 0 {
        errors.push(ConfigError::at(
            "cache.max_object_size",
            "must be more than 0 bytes",
        ));
    } else if c.max_object_size.bytes() > c.max_size.bytes() / 2 {
        errors.push(ConfigError::at(
            "cache.max_object_size",
            format!(
                "{} is more than half of cache.max_size ({}): one object would evict most of the cache",
                c.max_object_size, c.max_size
            ),
        ));
    }
    if c.lock_timeout.get().is_zero() {
        errors.push(ConfigError::at(
            "cache.lock_timeout",
            "must be more than 0 (requests for a key being fetched wait at most this long)",
        ));
    }
}

/// The fleet's cache settings: the shared tier needs `redis:`, and its limits must make sense.
fn validate_shared_cache(c: &CacheConfig, has_redis: bool, errors: &mut Vec<ConfigError>) {
    use crate::config::model::SharedTier;
    if c.shared == SharedTier::Redis && !has_redis {
        errors.push(ConfigError::at(
            "cache.shared",
            "`redis` keeps the second tier in the fleet's Redis: add a top-level `redis:` section (or write `shared: none`)",
        ));
    }
    if c.shared == SharedTier::Redis && !c.purge_bus {
        errors.push(ConfigError::at(
            "cache.purge_bus",
            "the shared tier needs the purge bus: it is how a replica knows a shared entry was purged (set `purge_bus: true`, or `shared: none`)",
        ));
    }
    if c.shared_fill_lock && c.shared != SharedTier::Redis {
        errors.push(ConfigError::at(
            "cache.shared_fill_lock",
            "the fleet-wide fill lock waits for another replica's entry in the shared tier: set `shared: redis` too",
        ));
    }
    if c.shared_max_object_size.bytes() == 0 {
        errors.push(ConfigError::at(
            "cache.shared_max_object_size",
            "must be more than 0 bytes (use `shared: none` to keep everything local)",
        ));
    } else if c.shared_max_object_size.bytes() > 512 * 1024 * 1024 {
        errors.push(ConfigError::at(
            "cache.shared_max_object_size",
            format!(
                "{} is more than a Redis string can hold (512MiB); keep shared objects small (the default is 256KiB)",
                c.shared_max_object_size
            ),
        ));
    }
    if c.shared_lock_timeout.get().is_zero() {
        errors.push(ConfigError::at(
            "cache.shared_lock_timeout",
            "must be more than 0 (replicas wait at most this long for another's fetch)",
        ));
    }
    if c.purge_stream_length < 10 {
        errors.push(ConfigError::at(
            "cache.purge_stream_length",
            format!(
                "{} purges is too short a history: a replica away for a moment would drop its store; give at least 10",
                c.purge_stream_length
            ),
        ));
    }
}

/// Names end up in metrics labels and log fields: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("names must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err("use letters, digits, `-`, `_` and `.` only".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("127.0.0.1:3000").unwrap(),
            ("127.0.0.1".into(), 3000)
        );
        assert_eq!(parse_endpoint("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(
            parse_endpoint("api.example.com:443").unwrap(),
            ("api.example.com".into(), 443)
        );
        assert!(parse_endpoint("127.0.0.1")
            .unwrap_err()
            .contains("missing `:port`"));
        assert!(parse_endpoint("host:99999")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_endpoint("bad host:80")
            .unwrap_err()
            .contains("bad address"));
        assert!(parse_endpoint("::1:80").unwrap_err().contains("brackets"));
    }

    /// Errors of a config text, as `path: message`.
    fn problems(yaml: &str) -> Vec<String> {
        match crate::config::load_str(yaml, "t.yaml", |_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    const UPSTREAMS: &str = "upstreams:\n  app: { endpoints: [\"127.0.0.1:3000\"] }\n";

    #[test]
    fn a_route_with_an_empty_prefix_is_checked_like_any_other() {
        // Once mistaken for the placeholder of a route that did not parse: nothing was checked
        // and compiling it panicked.
        let yaml = format!(
            "{UPSTREAMS}routes:\n  - {{ match: {{ path_prefix: \"\" }}, upstreams: [app, zz] }}\n"
        );
        assert_eq!(
            problems(&yaml),
            [
                "routes[0].upstreams[1]: unknown upstream `zz` (defined upstreams: app)",
                "routes[0].match.path_prefix: path prefix `` must start with `/`",
            ]
        );
    }

    #[test]
    fn a_route_that_does_not_parse_is_reported_once() {
        let yaml = format!(
            "{UPSTREAMS}routes:\n  - {{ match: {{ path_prefix: / }}, upstream: zz, bogus: 1 }}\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n"
        );
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("routes[0].bogus: unknown key `bogus`"),
            "{found:#?}"
        );
    }

    #[test]
    fn listen_addresses_need_an_ip() {
        assert!(parse_listen("0.0.0.0:8080").is_ok());
        assert!(parse_listen("localhost:8080")
            .unwrap_err()
            .contains("expected IP:port"));
    }
}
