//! Validated [`Config`] -> [`RuntimeConfig`]: the indexed, ready-to-serve shape the proxy uses.

use super::error::ConfigError;
use super::model::Config;
use super::model::LimitsOverride;
use super::validate::{parse_endpoint, parse_listen, route_name};
use crate::ratelimit::Limits;
use crate::route::{HostMatch, RouteTable};
use crate::tenant::{key_digest, Identity, Tenant, Tier};
use crate::upstream::{Endpoint, Timeouts, Tls, UpstreamGroup};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name (config `name`, or `route-<index>`): the metrics label.
    pub name: Arc<str>,
    /// The group that serves it first (`upstreams[0]`).
    pub upstream: Arc<UpstreamGroup>,
    /// Groups in failover order (one for `upstream:`).
    pub upstreams: Vec<Arc<UpstreamGroup>>,
    /// Retry POST/PATCH on statuses and resets too.
    pub retry_non_idempotent: bool,
    /// Rate limiting on this route; `None`: not limited (no tiers, or `enabled: false`).
    pub limit: Option<RouteLimit>,
    /// Response compression; `None`: off on this route.
    pub compression: Option<crate::compress::Policy>,
    /// Response caching; `None`: off on this route.
    pub cache: Option<crate::cache::RoutePolicy>,
}

/// A route's rate-limit policy, compiled.
#[derive(Debug)]
pub struct RouteLimit {
    /// Units one request costs.
    pub cost: u32,
    /// Never refuse on this route.
    pub shadow: bool,
    /// Limiter scope for route-specific tier policies: `route:<name>`.
    pub scope: Arc<str>,
    /// Route-specific limits by tier name (tiers not listed use the caller's own limits).
    pub tiers: HashMap<Arc<str>, Limits>,
}

/// Limiter scope of a tier's own (shared by all routes) buckets.
pub const TIER_SCOPE: &str = "tier";

/// The config as the proxy runs it. Immutable; a reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct RuntimeConfig {
    /// The model it was compiled from.
    pub source: Config,
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Routes in match order.
    pub routes: RouteTable<Arc<Route>>,
    /// Upstream groups by name.
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    /// Tiers by name.
    pub tiers: HashMap<String, Arc<Tier>>,
    /// Caller identification and the tenant index.
    pub identity: Identity,
    /// Send legacy `X-RateLimit-*` headers too.
    pub legacy_ratelimit_headers: bool,
    /// Shared scope name of tier buckets (one allocation, cloned per request).
    pub tier_scope: Arc<str>,
    /// Tenants with their own `tenant` metric label.
    pub tenant_label_allowlist: std::collections::HashSet<String>,
}

/// Apply an override on top of limits.
fn overridden(base: Limits, o: &LimitsOverride) -> Limits {
    Limits {
        rps: o.rps.unwrap_or(base.rps),
        burst: o.burst.unwrap_or(base.burst),
        daily: o.daily.map_or(base.daily, |d| d.get()),
    }
}

/// Compile a validated config. Fails only on what validation cannot know (DNS resolution).
/// `running` is the config this one replaces, if any: endpoints found again (same group, same
/// address, same policy) share its circuit breakers and active health state.
pub fn compile(
    config: Config,
    running: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut upstreams = HashMap::new();
    for (name, group) in &config.upstreams {
        let previous = running.and_then(|r| r.upstreams.get(name)).map(|g| &**g);
        let t = &group.timeouts;
        let timeouts = Timeouts {
            connect: t.connect.get(),
            // A per-try timeout bounds each read of an attempt.
            read: group
                .retry
                .per_try_timeout
                .map_or(t.read.get(), |p| p.get()),
            write: t.write.get(),
            idle: t.idle.get(),
        };
        let tls = group.tls.as_ref().map(|t| Tls {
            sni: t.sni.clone(),
            verify: t.verify,
        });
        let cb = &group.circuit_breaker;
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (i, ep) in group.endpoints.iter().enumerate() {
            let Ok((host, port)) = parse_endpoint(ep.address()) else {
                continue;
            };
            match (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => {
                    if let Some(other) = endpoints.iter().find(|e| e.addr == addr) {
                        errors.push(ConfigError::at(
                            format!("upstreams.{name}.endpoints[{i}]"),
                            format!(
                                "`{}` resolves to {addr}, like `{}`: an address can be listed once",
                                ep.address(),
                                other.label
                            ),
                        ));
                        continue;
                    }
                    let breaker = crate::upstream::breaker::Breaker::new(
                        cb.failures,
                        cb.backoff.get(),
                        cb.max_backoff.get(),
                    );
                    // Same endpoint, same policy: keep counting where the running config is.
                    let breaker = previous
                        .and_then(|g| g.endpoint_at(addr))
                        .map(|e| &e.breaker)
                        .filter(|b| b.same_policy(&breaker))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(breaker));
                    endpoints.push(
                        Endpoint::new(
                            ep.address().to_string(),
                            &host,
                            addr,
                            tls.as_ref(),
                            &timeouts,
                        )
                        .with(ep.weight(), breaker),
                    )
                }
                Ok(None) => errors.push(ConfigError::at(
                    format!("upstreams.{name}.endpoints[{i}]"),
                    format!("`{host}` resolved to no address"),
                )),
                Err(e) => errors.push(ConfigError::at(
                    format!("upstreams.{name}.endpoints[{i}]"),
                    format!("cannot resolve `{host}`: {e}"),
                )),
            }
        }
        if !endpoints.is_empty() {
            upstreams.insert(
                name.clone(),
                Arc::new(
                    UpstreamGroup::new(
                        name.clone(),
                        endpoints,
                        group.balance,
                        crate::upstream::HashOn::parse(&group.hash_on),
                        group.retry.attempts,
                    )
                    .with_adapter(crate::upstream::Adapter::new(group))
                    .with_retry(
                        group.retry.deadline.map(|d| d.get()),
                        group.retry.on.clone(),
                        crate::upstream::budget::RetryBudget::new(
                            group.retry.budget,
                            group.retry.min_retries_per_second,
                        ),
                    )
                    .with_health_check(
                        group.health_check.clone(),
                        tls.as_ref(),
                        previous,
                    ),
                ),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let tiers: HashMap<String, Arc<Tier>> = config
        .tiers
        .iter()
        .map(|(name, t)| {
            let tier = Tier {
                name: name.as_str().into(),
                limits: Limits {
                    rps: t.rps,
                    burst: t.burst,
                    daily: t.daily.get(),
                },
                shadow: t.shadow,
            };
            (name.clone(), Arc::new(tier))
        })
        .collect();
    let tenants = config
        .tenants
        .iter()
        .map(|(id, t)| {
            let tier = tiers[&t.tier].clone();
            let over = LimitsOverride {
                rps: t.rps,
                burst: t.burst,
                daily: t.daily,
            };
            let tenant = Arc::new(Tenant {
                id: id.as_str().into(),
                subject: format!("t:{id}").into(),
                limits: overridden(tier.limits, &over),
                shadow: t.shadow.unwrap_or(tier.shadow),
                tier,
            });
            let keys = t
                .api_keys
                .iter()
                .map(|k| match k.strip_prefix("sha256:") {
                    Some(h) => {
                        let mut d = [0u8; 32];
                        hex::decode_to_slice(h, &mut d).expect("validated");
                        d
                    }
                    None => key_digest(k.trim()),
                })
                .collect();
            (tenant, keys)
        })
        .collect();
    let identity = Identity::new(&config.identity, &tiers, tenants);
    let limited = !tiers.is_empty();
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = route_name(r.name.as_deref(), i);
            let limit = match r.rate_limit.as_ref() {
                _ if !limited => None,
                Some(rl) if !rl.enabled => None,
                rl => Some(RouteLimit {
                    cost: rl.map_or(1, |r| r.cost),
                    shadow: rl.is_some_and(|r| r.shadow),
                    scope: format!("route:{name}").into(),
                    tiers: rl
                        .map(|r| {
                            r.tiers
                                .iter()
                                .map(|(t, o)| {
                                    (Arc::from(t.as_str()), overridden(tiers[t].limits, o))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            };
            let groups: Vec<Arc<UpstreamGroup>> = if r.upstreams.is_empty() {
                vec![upstreams[&r.upstream].clone()]
            } else {
                r.upstreams.iter().map(|u| upstreams[u].clone()).collect()
            };
            let route = Arc::new(Route {
                name: name.into(),
                upstream: groups[0].clone(),
                upstreams: groups,
                retry_non_idempotent: r.retry_non_idempotent,
                limit,
                compression: r.compression.as_ref().map(crate::compress::Policy::new),
                cache: r.cache.as_ref().map(crate::cache::RoutePolicy::new),
            });
            (
                HostMatch::parse(r.matcher.host.as_deref()),
                r.matcher.path_prefix.clone(),
                route,
            )
        })
        .collect();
    Ok(RuntimeConfig {
        listen: config
            .listen
            .iter()
            .map(|l| parse_listen(l).expect("validated"))
            .collect(),
        admin_listen: parse_listen(&config.admin.listen).expect("validated"),
        routes: RouteTable::new(routes),
        upstreams,
        tiers,
        identity,
        legacy_ratelimit_headers: config.rate_limit.legacy_headers,
        tier_scope: TIER_SCOPE.into(),
        tenant_label_allowlist: config
            .observability
            .tenant_label_allowlist
            .iter()
            .cloned()
            .collect(),
        source: config,
    })
}
