//! Fuzzing drivers: one function per `cargo fuzz` target in `fuzz/`, each feeding arbitrary
//! bytes to the parsers that read what clients, upstreams and operators send.
//!
//! They live here, not in the fuzz crate, so that `tests/fuzz_regressions.rs` (stable
//! toolchain, plain `cargo test`) replays the committed seeds and every crash found through
//! exactly the same code. A driver never panics on its own account: any panic is a bug of the
//! function it drives (or an invariant assert here that names one). Not part of the API.
//!
//! Input formats (the seeds in `fuzz/corpus/<target>/` show each one):
//! - [`config`]: a whole config file (UTF-8).
//! - [`identity`]: lines: the TCP peer address, `X-API-Key`, `Authorization`, `X-Tenant-Id`,
//!   then one `X-Forwarded-For` field per further line.
//! - [`cache_control`]: a response (first line the status, then `Name: value` lines); after an
//!   empty line, optionally a `304` that revalidates it.
//! - [`retry_after`]: lines, each read as a `Retry-After` value, a `hash_on` value, a CIDR and
//!   an `Accept-Encoding` value; the raw bytes also fill the RateLimit header formatters.
//! - [`purge_body`]: an admin `POST /cache/purge` body.

use crate::cache::key::{self, QueryKey, Scope};
use crate::cache::policy;
use crate::cache::purge::PurgeRequest;
use crate::cache::storage::{EntryTag, MemoryStorage};
use crate::cache::RoutePolicy;
use crate::config::RuntimeConfig;
use crate::ratelimit::{headers as rl_headers, Decision, Limits, Policy as LimitPolicy};
use pingora_cache::cache_control::InterpretCacheControl;
use pingora_cache::{CacheMeta, RespCacheable};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// A target's driver: takes the fuzzer's bytes, returns only if the code under test did.
pub type Driver = fn(&[u8]);

/// The targets by name (the directory names under `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: &[(&str, Driver)] = &[
    ("config", config),
    ("identity", identity),
    ("cache_control", cache_control),
    ("retry_after", retry_after),
    ("purge_body", purge_body),
];

/// Run target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, drive)) => {
            drive(data);
            true
        }
        None => false,
    }
}

/// The wall clock every driver uses (2025-06-15T14:40:00Z): runs are reproducible.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

// ----- config -----------------------------------------------------------------------------

/// The whole loader on a file: interpolation (no variable is set, so only `${X:-default}`
/// resolves), YAML, validation, and compilation when that cannot reach the network.
///
/// Compilation resolves endpoint host names. A fuzzer would send each mutated name to the
/// system resolver, so a config with an endpoint that is neither an IP address nor
/// `localhost` stops after validation, exactly as [`crate::config::load_str`] does it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if endpoints_resolve_offline(text) {
        if let Ok(c) = crate::config::load_str(text, "fuzz.yaml", |_| None) {
            let _ = c.summary();
        }
    } else {
        validate_only(text);
    }
}

/// Whether every endpoint of the file (as far as it parses) is an IP address or `localhost`.
fn endpoints_resolve_offline(text: &str) -> bool {
    use crate::config::{address, interpolate, parse};
    let (text, mut errors, _) = interpolate::interpolate(text, |_| None);
    let Some(parsed) = parse::parse(&text, &mut errors) else {
        return true; // nothing to compile
    };
    parsed.config.upstreams.values().all(|group| {
        group.endpoints.iter().all(|ep| {
            address::parse_endpoint(ep.address()).map_or(true, |(host, _)| {
                host == "localhost" || host.parse::<IpAddr>().is_ok()
            })
        })
    })
}

/// [`crate::config::load_str`] up to and with validation, without the compile step.
fn validate_only(text: &str) {
    let _ = crate::config::validate_str(text, "fuzz.yaml", |_| None);
}

// ----- identity ---------------------------------------------------------------------------

/// Plain key of tenant `acme` (given through the environment, hashed at load).
pub const ACME_KEY: &str = "fuzz-acme-key";
/// Plain key of tenant `beta` (written as its `sha256:` digest).
pub const BETA_KEY: &str = "fuzz-beta-key";

/// Two identities over the same tenants: A takes API keys first, rejects unknown ones and looks
/// keys the file lacks up in Redis; B trusts the tenant header first and treats unknown keys as
/// none.
pub fn identity_configs() -> &'static [RuntimeConfig; 2] {
    static CONFIGS: OnceLock<[RuntimeConfig; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let beta = crate::tenant::key_digest_hex(BETA_KEY);
        let env = |name: &str| (name == "ACME_KEY").then(|| ACME_KEY.to_string());
        let load = |identity: &str, redis: &str| {
            let text = format!(
                "listen: 127.0.0.1:8080\n\
                 upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\n\
                 routes:\n  - match: {{ path_prefix: / }}\n    upstream: app\n\
                 identity:\n{identity}\
                 tiers:\n  anonymous: {{ rps: 1, burst: 2 }}\n  free: {{ rps: 5, burst: 10 }}\n  \
                 pro: {{ rps: 50, burst: 100, daily: 1000 }}\n\
                 tenants:\n  acme:\n    tier: pro\n    api_keys: [\"${{ACME_KEY}}\"]\n  \
                 beta:\n    tier: free\n    api_keys: [\"sha256:{beta}\"]\n{redis}"
            );
            crate::config::load_str(&text, "fuzz-identity.yaml", env)
                .unwrap_or_else(|e| panic!("the identity target's config: {e}"))
        };
        [
            load(
                "  order: [api_key, tenant_header]\n  bearer: true\n  api_key_header: x-api-key\n  \
                 unknown_key: reject\n  anonymous_tier: anonymous\n  trust_tenant_header: true\n  \
                 tenant_header: x-tenant-id\n  header_tenant_tier: free\n  \
                 trusted_proxies: [\"10.0.0.0/8\", \"::1\", \"2001:db8::/32\"]\n  key_store: redis\n",
                "redis:\n  url: redis://127.0.0.1:6379\n",
            ),
            load(
                "  order: [tenant_header, api_key]\n  bearer: true\n  api_key_header: x-api-key\n  \
                 unknown_key: anonymous\n  anonymous_tier: anonymous\n  trust_tenant_header: true\n  \
                 tenant_header: x-tenant-id\n  trusted_proxies: [\"127.0.0.1\", \"192.168.0.0/16\"]\n",
                "",
            ),
        ]
    })
}

/// Caller identification on one request, by both identities.
pub fn identity(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let peer = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.trim().parse::<IpAddr>().ok());
    let mut req = RequestHeader::build("GET", b"/", None).expect("a GET of / is a request");
    let named = ["x-api-key", "authorization", "x-tenant-id"];
    for (i, line) in lines.enumerate() {
        let name = named.get(i).copied().unwrap_or("x-forwarded-for");
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            req.append_header(name, v).expect("a valid name and value");
        }
    }
    for c in identity_configs() {
        let id = &c.identity;
        let _ = id.identifies_tenants();
        let _ = id.client_ip(&req, peer);
        let caller = id.resolve(&req, peer, None);
        if let Ok(caller) = &caller {
            // The subject keys the limiter and the cache scope: it must make a header value.
            let _ = key::scope_for(Scope::Tenant, caller.tenant.as_deref());
            assert!(!caller.subject.is_empty(), "empty limiter subject");
        }
        if let Some((digest, _)) = id.key_to_look_up(&req) {
            // As if Redis knew the key: the tenant found there must then be the caller.
            let found = id.tenant("acme").cloned().expect("tenant acme");
            let extra = (digest, found);
            let caller = id.resolve(&req, peer, Some(&extra));
            if let Ok(c) = caller {
                let _ = c.tier;
            }
        }
    }
}

// ----- cache_control ----------------------------------------------------------------------

/// Route cache policies the responses are judged under: a targeted field and no default ttl;
/// a default ttl, cookies allowed and stale windows.
fn route_policies() -> &'static [RoutePolicy; 2] {
    static POLICIES: OnceLock<[RoutePolicy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let base = RoutePolicy {
            ttl: None,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            scope: Scope::Shared,
            get: true,
            head: true,
            statuses: vec![200, 203, 204, 206, 300, 301, 304, 308, 404, 410],
            query: QueryKey::Sort,
            store_set_cookie: false,
            invalidate_on_mutation: true,
            invalidate_prefixes: Vec::new(),
            targeted_field: Some(http::HeaderName::from_static("tollgate-cache-control")),
            store_authorized: false,
            key_headers: Vec::new(),
            body_key: None,
        };
        let second = RoutePolicy {
            ttl: Some(Duration::from_secs(60)),
            stale_while_revalidate: 30,
            stale_if_error: 300,
            scope: Scope::Tenant,
            store_set_cookie: true,
            targeted_field: None,
            store_authorized: true,
            ..base.clone()
        };
        [base, second]
    })
}

/// A response from `status` and `Name: value` lines; invalid lines are left out.
fn response(block: &[u8]) -> Option<ResponseHeader> {
    let mut lines = block.split(|&b| b == b'\n');
    let status = std::str::from_utf8(lines.next()?)
        .ok()?
        .trim()
        .parse::<u16>()
        .ok()?;
    let mut resp = ResponseHeader::build(status, None).ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        resp.append_header(name, value)
            .expect("a valid name and value");
    }
    Some(resp)
}

/// RFC 9111 storage and freshness decisions on a response, and on its revalidation by a `304`.
pub fn cache_control(data: &[u8]) {
    let (first, second) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], Some(&data[i + 2..])),
        None => (data, None),
    };
    let Some(stored) = response(first) else {
        return;
    };
    let not_modified = second.and_then(response);
    let now = now();
    for p in route_policies() {
        judge(p, &stored, now);
        if let Some(nm) = &not_modified {
            let merged = policy::merge_not_modified(&stored, nm, now);
            judge(p, &merged, now);
        }
    }
}

/// Every decision the proxy takes on one response under one route policy.
fn judge(p: &RoutePolicy, resp: &ResponseHeader, now: SystemTime) {
    let d = policy::directives(p, resp);
    if let Some(cc) = &d.cc {
        let _ = cc.fresh_duration();
        let _ = cc.serve_stale_while_revalidate_duration();
        let _ = cc.serve_stale_if_error_duration();
    }
    let _ = policy::shareable_when_authorized(p, resp);
    if let Some(age) = policy::age_value(resp) {
        assert!(age.as_secs() < 1 << 31, "Age beyond 2^31 - 1 s: {age:?}");
    }
    let age = policy::initial_age(resp, now);
    assert!(
        age.as_secs() < 1 << 31,
        "initial age beyond 2^31 - 1 s: {age:?}"
    );
    match policy::decide(p, resp, now) {
        RespCacheable::Cacheable(meta) => stored(&meta, resp, now),
        RespCacheable::Uncacheable(reason) => {
            let _ = policy::reason_label(&reason);
        }
    }
}

/// What the store and a later hit do with a cacheable response's meta.
fn stored(meta: &CacheMeta, resp: &ResponseHeader, now: SystemTime) {
    let _ = meta.is_fresh(now);
    let _ = meta.serve_stale_while_revalidate(now);
    let _ = meta.serve_stale_if_error(now);
    // The storage keeps the serialized meta; a hit reads it back.
    if let Ok((internal, header)) = meta.serialize() {
        let _ = CacheMeta::deserialize(&internal, &header);
    }
    // The variant a request with the same fields as the response asks for.
    let _ = key::variance(meta, |name| resp.headers.get(name).map(|v| v.as_bytes()));
}

// ----- retry_after ------------------------------------------------------------------------

/// `Retry-After` from an upstream, `hash_on` and CIDR values, `Accept-Encoding`, and the
/// RateLimit header formatters (tollgate writes those fields and parses none).
pub fn retry_after(data: &[u8]) {
    let now = now();
    for line in data.split(|&b| b == b'\n') {
        let Ok(s) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(wait) = crate::upstream::attempts::retry_after(Some(s), now) {
            assert!(
                !wait.is_zero() && wait <= Duration::from_secs(3600),
                "Retry-After {s:?} read as {wait:?}"
            );
        }
        let _ = crate::upstream::HashOn::parse(s);
        if let Some(net) = crate::tenant::parse_cidr(s) {
            let _ = net.contains(&net.network());
        }
        for (coding, q) in crate::compress::parse_accept_encoding(s) {
            assert!((0.0..=1.0).contains(&q), "q={q} for {coding:?} in {s:?}");
        }
    }
    ratelimit_headers(data);
}

/// The RateLimit fields for limits and a decision taken from the input's bytes: each must be a
/// valid header value.
fn ratelimit_headers(data: &[u8]) {
    let mut words = data.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    });
    let mut next = || words.next().unwrap_or(0);
    let flags = next();
    let limits = Limits {
        rps: f64::from(next() as u32) / 16.0,
        burst: next() as u32,
        daily: (flags & 1 != 0).then(&mut next),
    };
    let d = Decision {
        allowed: flags & 2 != 0,
        refused_by: match flags & 12 {
            4 => Some(LimitPolicy::Burst),
            8 => Some(LimitPolicy::Daily),
            _ => None,
        },
        burst_remaining: next(),
        burst_reset_secs: next(),
        daily_remaining: (flags & 16 != 0).then(&mut next),
        daily_reset_secs: next(),
        retry_after_secs: next(),
    };
    let mut values = vec![
        rl_headers::policy_header(&limits),
        rl_headers::ratelimit_header(&d),
    ];
    values.extend(rl_headers::retry_after(&d));
    values.extend(rl_headers::x_ratelimit(&d, &limits).map(|(_, v)| v));
    for v in values {
        assert!(
            http::HeaderValue::from_str(&v).is_ok(),
            "not a header value: {v:?}"
        );
    }
}

// ----- purge_body -------------------------------------------------------------------------

/// An admin purge body, read as `POST /cache/purge` reads it, then matched against a few
/// entry tags and applied to an (empty) store.
pub fn purge_body(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<PurgeRequest>(data) else {
        return;
    };
    let Ok(selector) = req.into_selector() else {
        return;
    };
    let tags = [
        EntryTag::new("shared", "api.example", "/api/models", "id=1"),
        EntryTag::new("tenant:acme", "api.example", "/api/models", "a=1&b=2"),
        EntryTag::new("shared", "", "/", ""),
        EntryTag::new("", "", "", ""),
    ];
    for tag in &tags {
        let _ = selector.matches(tag);
    }
    static STORE: OnceLock<MemoryStorage> = OnceLock::new();
    let _ = selector.apply(STORE.get_or_init(|| MemoryStorage::new(1 << 20)));
    let _ = format!("{selector:?}");
}
