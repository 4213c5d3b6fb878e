//! `tollgate explain`: what limits a given caller gets on each route, from a config file, so an
//! operator can answer "why was this tenant throttled?" without reading the YAML by hand.
//! [`live_state`] adds what the store holds now (the admin `GET /ratelimit/state` and
//! `explain --live`).

use crate::config::RuntimeConfig;
use crate::ratelimit::store::Fallback;
use crate::ratelimit::{LimitKey, Limiter, Limits};
use crate::tenant::Tier;
use std::fmt::Write;
use std::sync::Arc;

/// Who to explain.
pub enum Subject<'a> {
    /// A plain API key (never printed back).
    Key(&'a str),
    /// A tenant id.
    Tenant(&'a str),
    /// A caller with no key.
    Anonymous,
}

/// Where this config counts limits, and what decides when that store fails.
fn store_text(config: &RuntimeConfig) -> String {
    let fallback = match config.limit_store.on_error {
        Fallback::Local => "this replica's share (limit / fleet size)",
        Fallback::Allow => "allow every request",
        Fallback::Deny => "refuse every request (429)",
    };
    match (&config.startup.redis, config.limit_store.shared) {
        (_, false) => "local (this process counts alone; each replica has the full limits)".into(),
        (Some(r), true) => format!(
            "redis {} (one limit for the whole fleet; when Redis fails: {fallback})",
            r.describe()
        ),
        (None, true) => {
            format!("redis, but no `redis:` section is connected (when Redis fails: {fallback})")
        }
    }
}

fn limits_text(l: &Limits) -> String {
    let daily = l.daily.map_or("unlimited".to_string(), |d| d.to_string());
    format!("rps {}, burst {}, daily {}", l.rps, l.burst, daily)
}

/// The report, or an error message when the subject is unknown.
pub fn explain(config: &RuntimeConfig, subject: Subject) -> Result<String, String> {
    let mut out = String::new();
    let (who, tier, limits, shadow): (String, Option<Arc<Tier>>, Option<Limits>, bool) =
        match subject {
            Subject::Key(k) => match config.identity.tenant_by_key(k) {
                Some(t) => (
                    format!(
                        "tenant `{}` (matched by API key sha256:{}…)",
                        t.id,
                        &crate::tenant::key_digest_hex(k)[..12]
                    ),
                    Some(t.tier.clone()),
                    Some(t.limits),
                    t.shadow,
                ),
                None => return Err("no tenant owns this API key".into()),
            },
            Subject::Tenant(id) => match config.identity.tenant(id) {
                Some(t) => (
                    format!("tenant `{}`", t.id),
                    Some(t.tier.clone()),
                    Some(t.limits),
                    t.shadow,
                ),
                None => return Err(format!("no tenant `{id}` in this config")),
            },
            Subject::Anonymous => {
                let t = config.identity.anonymous_tier().cloned();
                let l = t.as_ref().map(|t| t.limits);
                let s = t.as_ref().is_some_and(|t| t.shadow);
                ("anonymous caller (keyed by client IP)".to_string(), t, l, s)
            }
        };
    let _ = writeln!(out, "caller: {who}");
    let _ = writeln!(out, "store:  {}", store_text(config));
    match (&tier, &limits) {
        (Some(t), Some(l)) => {
            let _ = writeln!(
                out,
                "tier:   {}{}",
                t.name,
                if shadow {
                    " (shadow: counted, never refused)"
                } else {
                    ""
                }
            );
            let _ = writeln!(out, "limits: {}", limits_text(l));
            if *l != t.limits {
                let _ = writeln!(
                    out,
                    "        (tier default: {}; this tenant overrides it)",
                    limits_text(&t.limits)
                );
            }
        }
        _ => {
            let _ = writeln!(out, "tier:   none: this caller is not rate limited");
        }
    }
    let _ = writeln!(out, "routes:");
    for route in config.routes.iter() {
        let line = match (&route.limit, &tier, &limits) {
            (None, _, _) => "not rate limited".to_string(),
            (Some(_), None, _) | (Some(_), _, None) => {
                "not limited for this caller (no tier)".to_string()
            }
            (Some(p), Some(t), Some(l)) => {
                let shadow_note = if p.shadow { ", shadow" } else { "" };
                match p.tiers.get(&t.name) {
                    Some(rl) => format!(
                        "cost {}{shadow_note}; route policy `{}`: {}",
                        p.cost,
                        p.scope,
                        limits_text(rl)
                    ),
                    None => format!(
                        "cost {}{shadow_note}; shares the tier buckets: {}",
                        p.cost,
                        limits_text(l)
                    ),
                }
            }
        };
        let _ = writeln!(out, "  {:<16} {line}", route.name);
    }
    Ok(out)
}

/// What the store holds now for tenant `id`: for each of its policies (the tier's buckets and
/// each route-specific policy of its tier), the limits and what is left, read without
/// consuming anything. JSON, for the admin endpoint and `explain --live`.
pub async fn live_state(
    config: &RuntimeConfig,
    limiter: &Limiter,
    id: &str,
) -> Result<serde_json::Value, String> {
    let tenant = config
        .identity
        .tenant(id)
        .ok_or_else(|| format!("no tenant `{id}` in the running config"))?;
    // (scope, limits, routes using it), in route order.
    let mut policies: Vec<(Arc<str>, Limits, Vec<String>)> = Vec::new();
    for route in config.routes.iter() {
        let Some(p) = &route.limit else { continue };
        let (scope, limits) = match p.tiers.get(&tenant.tier.name) {
            Some(l) => (p.scope.clone(), *l),
            None => (config.tier_scope.clone(), tenant.limits),
        };
        match policies.iter_mut().find(|(s, _, _)| *s == scope) {
            Some((_, _, routes)) => routes.push(route.name.to_string()),
            None => policies.push((scope, limits, vec![route.name.to_string()])),
        }
    }
    let mut out = Vec::new();
    for (scope, limits, routes) in policies {
        let key = LimitKey::new(tenant.subject.clone(), scope.clone());
        let (d, store) = limiter.peek(&key, &limits, config.limit_store).await;
        out.push(serde_json::json!({
            "scope": &*scope,
            "routes": routes,
            "store": store.name(),
            "limits": {"rps": limits.rps, "burst": limits.burst, "daily": limits.daily},
            "burst_remaining": d.burst_remaining,
            "burst_full_in_secs": d.burst_reset_secs,
            "daily_remaining": d.daily_remaining,
            "daily_resets_in_secs": d.daily_reset_secs,
        }));
    }
    Ok(serde_json::json!({
        "tenant": &*tenant.id,
        "tier": &*tenant.tier.name,
        "store": store_text(config),
        "policies": out,
    }))
}

/// `explain --live`: the running proxy's `GET /ratelimit/state?tenant=ID` on its admin
/// listener, pretty-printed.
pub fn fetch_live(admin: std::net::SocketAddr, tenant: &str) -> Result<String, String> {
    let tenant: String = tenant
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    let answer = crate::admin_client::get(
        admin,
        &format!("/ratelimit/state?tenant={tenant}"),
        std::time::Duration::from_secs(5),
    )?;
    let addr = crate::admin_client::reachable(admin);
    let value: serde_json::Value = serde_json::from_str(&answer.body)
        .map_err(|_| format!("unexpected answer from {addr}: status {}", answer.status))?;
    if answer.status != 200 {
        return Err(value["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("status {}", answer.status)));
    }
    Ok(serde_json::to_string_pretty(&value).expect("json"))
}
