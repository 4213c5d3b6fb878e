//! `tollgate explain`: what limits a given caller gets on each route, from a config file, so an
//! operator can answer "why was this tenant throttled?" without reading the YAML by hand.

use crate::config::RuntimeConfig;
use crate::ratelimit::Limits;
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
