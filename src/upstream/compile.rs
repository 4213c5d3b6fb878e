//! An upstream group's compile step: a validated `upstreams.<name>` section becomes an
//! [`UpstreamGroup`] with resolved endpoints, prepared peers, its retry policy, adapter and
//! health check. Run on every load; on a reload `previous` (the running group of the same
//! name) hands on the live state of what stays the same.

use super::breaker::Breaker;
use super::budget::RetryBudget;
use super::{Adapter, Endpoint, HashOn, HealthCheck, Timeouts, Tls, UpstreamGroup};
use crate::config::address::parse_endpoint;
use crate::config::error::ConfigError;
use crate::config::model::UpstreamConfig;
use std::net::ToSocketAddrs;
use std::sync::Arc;

/// Compile group `name`. Fails only on what validation cannot know: DNS resolution, and two
/// endpoints that resolve to one address. Endpoints found again in `previous` (same address,
/// same breaker policy) share its circuit breaker; an unchanged health check keeps its
/// verdicts.
pub fn group(
    name: &str,
    c: &UpstreamConfig,
    previous: Option<&UpstreamGroup>,
) -> Result<UpstreamGroup, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let t = &c.timeouts;
    let timeouts = Timeouts {
        connect: t.connect.get(),
        // A per-try timeout bounds each read of an attempt.
        read: c.retry.per_try_timeout.map_or(t.read.get(), |p| p.get()),
        write: t.write.get(),
        idle: t.idle.get(),
    };
    let tls = c.tls.as_ref().map(|t| Tls {
        sni: t.sni.clone(),
        verify: t.verify,
    });
    let cb = &c.circuit_breaker;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, ep) in c.endpoints.iter().enumerate() {
        let Ok((host, port)) = parse_endpoint(ep.address()) else {
            continue;
        };
        let path = || format!("upstreams.{name}.endpoints[{i}]");
        let addr = match (host.as_str(), port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                errors.push(ConfigError::at(
                    path(),
                    format!("`{host}` resolved to no address"),
                ));
                continue;
            }
            Err(e) => {
                errors.push(ConfigError::at(
                    path(),
                    format!("cannot resolve `{host}`: {e}"),
                ));
                continue;
            }
        };
        if let Some(other) = endpoints.iter().find(|e| e.addr == addr) {
            errors.push(ConfigError::at(
                path(),
                format!(
                    "`{}` resolves to {addr}, like `{}`: an address can be listed once",
                    ep.address(),
                    other.label
                ),
            ));
            continue;
        }
        let breaker = Breaker::new(cb.failures, cb.backoff.get(), cb.max_backoff.get());
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
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(UpstreamGroup::new(
        name.to_string(),
        endpoints,
        c.balance.into(),
        HashOn::parse(&c.hash_on),
        c.retry.attempts,
    )
    .with_adapter(Adapter::new(c))
    .with_fail_fast(cb.fail_fast)
    .with_retry(
        c.retry.deadline.map(|d| d.get()),
        c.retry.on.clone(),
        RetryBudget::new(c.retry.budget, c.retry.min_retries_per_second),
    )
    .with_health_check(
        c.health_check.as_ref().map(HealthCheck::new),
        tls.as_ref(),
        previous,
    ))
}
