//! Validated [`Config`] -> [`RuntimeConfig`]: the indexed, ready-to-serve shape the proxy uses.
//!
//! The model is the file's shape; the runtime config is the proxy's, and it keeps nothing of
//! the model. Each feature compiles its own section ([`crate::upstream::compile::group`],
//! [`crate::tenant::compile`], [`crate::ratelimit::RouteLimit::new`],
//! [`crate::compress::Policy::new`], [`crate::cache::RoutePolicy::new`],
//! [`crate::observe::request::Settings::new`]); this module only puts the pieces together.

use super::error::ConfigError;
use super::model::Config;
use super::startup::Startup;
use crate::observe::request::Settings as ObserveSettings;
use crate::ratelimit::{RouteLimit, StorePolicy, TIER_SCOPE};
use crate::route::{HostMatch, RouteTable};
use crate::tenant::{Identity, Tier};
use crate::upstream::UpstreamGroup;
use std::collections::HashMap;
use std::sync::Arc;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name (config `name`, or `route-<index>`): the metrics label.
    pub name: Arc<str>,
    /// Groups in failover order (one for `upstream:`).
    pub upstreams: Vec<Arc<UpstreamGroup>>,
    /// `group_balance: round_robin`: each request's group order; `None`: `upstreams` as is.
    pub spread: Option<crate::upstream::spread::Spread>,
    /// Retry POST/PATCH on statuses and resets too.
    pub retry_non_idempotent: bool,
    /// Rate limiting on this route; `None`: not limited (no tiers, or `enabled: false`).
    pub limit: Option<RouteLimit>,
    /// Response compression; `None`: off on this route.
    pub compression: Option<crate::compress::Policy>,
    /// Response caching; `None`: off on this route.
    pub cache: Option<crate::cache::RoutePolicy>,
    /// LLM token accounting (`tokens:`); `None`: off on this route.
    pub tokens: Option<crate::llm::TokenRoute>,
    /// A group of this route balances by the caller's tenant (`consistent_hash` on `tenant`).
    pub hashes_tenant: bool,
    /// Most requests in flight on this route (`max_in_flight`); `None`: no cap.
    pub max_in_flight: Option<u32>,
    /// Largest request body (`max_request_body`); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Bodies declared this size or smaller are read before the upstream is contacted
    /// (`request_buffering`); `None`: bodies stream.
    pub request_buffering: Option<u64>,
}

/// The config as the proxy runs it. Immutable; a reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct RuntimeConfig {
    /// What is read once at start (listeners, server, cache store, metric shapes); a reload
    /// carries the running values on.
    pub startup: Startup,
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
    /// Where limits are counted (this process or Redis) and what decides when Redis fails.
    pub limit_store: StorePolicy,
    /// Shared scope name of tier buckets (one allocation, cloned per request).
    pub tier_scope: Arc<str>,
    /// Per-request observability switches (metrics, timing headers, access log sampling).
    pub observe: ObserveSettings,
    /// Bearer token of admin actions (`POST /cache/purge`); `None`: they are refused.
    pub admin_token: Option<String>,
    /// US dollars per million tokens by model (`llm.prices`).
    pub llm_prices: HashMap<String, crate::config::model::ModelPrice>,
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
        match crate::upstream::compile::group(name, group, previous) {
            Ok(g) => {
                upstreams.insert(name.clone(), Arc::new(g));
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (tiers, identity) =
        crate::tenant::compile(&config.identity, &config.tiers, &config.tenants);
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = super::address::route_name(r.name.as_deref(), i);
            let limit = match tiers.is_empty() {
                true => None,
                false => RouteLimit::new(&name, r.rate_limit.as_ref(), |t| tiers[t].limits),
            };
            let groups: Vec<Arc<UpstreamGroup>> = if r.upstreams.is_empty() {
                vec![upstreams[&r.upstream].clone()]
            } else {
                r.upstreams.iter().map(|u| upstreams[u].clone()).collect()
            };
            let hashes_tenant = groups.iter().any(|g| g.hashes_by_tenant());
            let spread = (r.group_balance == crate::config::model::GroupBalance::RoundRobin
                && groups.len() > 1)
                .then(|| {
                    let weights: Vec<u32> = groups
                        .iter()
                        .map(|g| r.group_weights.get(&g.name).copied().unwrap_or(1))
                        .collect();
                    crate::upstream::spread::Spread::new(&groups, &weights)
                });
            let route = Arc::new(Route {
                name: name.into(),
                upstreams: groups,
                spread,
                retry_non_idempotent: r.retry_non_idempotent,
                limit,
                compression: r.compression.as_ref().map(crate::compress::Policy::new),
                cache: r.cache.as_ref().map(crate::cache::RoutePolicy::new),
                tokens: r.tokens.as_ref().map(crate::llm::TokenRoute::new),
                hashes_tenant,
                max_in_flight: r.max_in_flight,
                max_request_body: r.max_request_body.map(|b| b.0),
                // A cache keyed on POST bodies reads them before the cache is asked.
                request_buffering: r.request_buffering.map(|b| b.0).or_else(|| {
                    r.cache
                        .as_ref()
                        .filter(|c| c.key.body.is_some())
                        .map(|c| c.key.max_body.0)
                }),
            });
            (
                HostMatch::parse(r.matcher.host.as_deref()),
                r.matcher.path_prefix.clone(),
                route,
            )
        })
        .collect();
    Ok(RuntimeConfig {
        llm_prices: config
            .llm
            .prices
            .iter()
            .map(|(m, p)| (m.clone(), *p))
            .collect(),
        startup: Startup::new(&config),
        routes: RouteTable::new(routes),
        upstreams,
        tiers,
        identity,
        legacy_ratelimit_headers: config.rate_limit.legacy_headers,
        limit_store: StorePolicy::new(&config.rate_limit),
        tier_scope: TIER_SCOPE.into(),
        observe: ObserveSettings::new(&config.observability),
        admin_token: config.admin.token,
    })
}
