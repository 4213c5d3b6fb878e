//! The rate-limit step of a request: pick the policy (route-specific or the caller's tier), ask
//! the limiter, count the decision, and build the 401/429 answers and the RateLimit headers.

use super::ctx::RequestCtx;
use super::errors::{self, ProxyError};
use crate::config::{Route, RuntimeConfig};
use crate::observe::metrics;
use crate::ratelimit::tokens::{TokenDecision, TokenLimits};
use crate::ratelimit::{headers, Decision, LimitKey, Limiter, Limits, Store};
use crate::tenant::{Caller, Tier};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;

/// A decision taken for one request, kept in the ctx for the response headers.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What the limiter said.
    pub decision: Decision,
    /// The limits it applied.
    pub limits: Limits,
    /// The caller's tier.
    pub tier: Arc<Tier>,
    /// Shadow mode: counted and reported, never enforced.
    pub shadow: bool,
    /// Which store decided.
    pub store: Store,
}

impl Applied {
    /// Whether the request must be refused.
    pub fn refuses(&self) -> bool {
        !self.decision.allowed && !self.shadow
    }
}

/// `request_filter` on a rate-limited route: refuse an unknown API key (401) or a caller
/// over its limits (429), answering here. `Ok(true)`: answered.
pub async fn enforce(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limiter: &Limiter,
) -> pingora_core::Result<bool> {
    let Some(route) = ctx.route.clone().filter(|r| r.limit.is_some()) else {
        return Ok(false);
    };
    // Unknown keys are refused where limits apply; a route that only caches lets the
    // request through uncached (the cache cannot tell whose answer it would be).
    if ctx.unknown_key {
        let err = ProxyError::UnknownApiKey;
        let mut h = ResponseHeader::build(err.status(), Some(5))?;
        h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
        let body = errors::body(err, "the API key is not recognised", &ctx.request_id);
        ctx.own_error = Some(err.code());
        errors::respond_with(session, ctx, h, body).await?;
        return Ok(true);
    }
    // A background refresh is tollgate's own request: it costs the caller nothing.
    let Some(caller) = ctx.caller.as_ref().filter(|_| !ctx.background) else {
        return Ok(false);
    };
    ctx.limit = decide(limiter, &ctx.config, &route, caller).await;
    let Some(applied) = ctx.limit.as_ref().filter(|a| a.refuses()) else {
        return Ok(false);
    };
    ctx.own_error = Some(applied.error_code());
    let h = too_many_requests_header(applied, ctx.config.legacy_ratelimit_headers)?;
    let body = serde_json::to_vec(&too_many_requests_body(applied, &ctx.request_id)).expect("json");
    errors::respond_with(session, ctx, h, body.into()).await?;
    Ok(true)
}

/// `response_filter` (and a token budget's 429): the RateLimit fields of the request limits'
/// decision and of the token budgets' (`policy: tokens`) for this request.
pub fn response_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora_core::Result<()> {
    let tokens = ctx.tokens.as_ref().and_then(|t| t.decision.as_ref());
    insert_fields(
        resp,
        ctx.limit.as_ref(),
        tokens,
        ctx.config.legacy_ratelimit_headers,
    )
}

/// Decide for `caller` on `route`. `None`: this request is not rate limited.
pub async fn decide(
    limiter: &Limiter,
    config: &RuntimeConfig,
    route: &Route,
    caller: &Caller,
) -> Option<Applied> {
    let policy = route.limit.as_ref()?;
    let tier = caller.tier.as_ref()?;
    let (scope, limits) = match policy.tiers.get(&tier.name) {
        Some(l) => (policy.scope.clone(), *l),
        None => (config.tier_scope.clone(), caller.limits?),
    };
    let key = LimitKey {
        subject: caller.subject.clone(),
        scope,
    };
    let (decision, store) = limiter
        .check(&key, &limits, policy.cost, config.limit_store)
        .await;
    let shadow = caller.shadow || policy.shadow;
    let (policy_label, outcome) = match (decision.allowed, decision.refused_by) {
        (true, _) => ("none", "allowed"),
        (false, by) => (
            by.map_or("burst", |p| p.name()),
            if shadow { "shadow_limited" } else { "limited" },
        ),
    };
    metrics::RATELIMIT_DECISIONS_TOTAL
        .with_label_values(&[&tier.name, policy_label, outcome])
        .inc();
    Some(Applied {
        decision,
        limits,
        tier: tier.clone(),
        shadow,
        store,
    })
}

/// Add `RateLimit-Policy`, `RateLimit` (and the legacy `X-RateLimit-*` when configured).
pub fn add_headers(
    resp: &mut ResponseHeader,
    applied: &Applied,
    legacy: bool,
) -> pingora_core::Result<()> {
    insert_fields(resp, Some(applied), None, legacy)
}

/// The RateLimit fields of a request limits' decision and of the token budgets' (either may
/// be absent): one value per field, request limits first, built once and inserted once.
fn insert_fields(
    resp: &mut ResponseHeader,
    applied: Option<&Applied>,
    tokens: Option<&(TokenDecision, TokenLimits)>,
    legacy: bool,
) -> pingora_core::Result<()> {
    if applied.is_none() && tokens.is_none() {
        return Ok(());
    }
    let mut policy = String::with_capacity(128);
    let mut state = String::with_capacity(128);
    if let Some(applied) = applied {
        headers::push_policy(&mut policy, &applied.limits);
        headers::push_ratelimit(&mut state, &applied.decision);
    }
    if let Some((decision, limits)) = tokens {
        headers::push_token_policy(&mut policy, limits);
        headers::push_token_items(&mut state, decision);
    }
    if !policy.is_empty() {
        resp.insert_header(headers::RATELIMIT_POLICY, policy)?;
    }
    if !state.is_empty() {
        resp.insert_header(headers::RATELIMIT, state)?;
    }
    match applied {
        Some(applied) if legacy => add_legacy(resp, applied),
        _ => Ok(()),
    }
}

/// The legacy `X-RateLimit-*` trio.
fn add_legacy(resp: &mut ResponseHeader, applied: &Applied) -> pingora_core::Result<()> {
    for (name, value) in headers::x_ratelimit(&applied.decision, &applied.limits) {
        resp.insert_header(name, value)?;
    }
    Ok(())
}

impl Applied {
    /// The limit that refused: `burst` or `daily`.
    pub fn refusing_policy(&self) -> &'static str {
        self.decision.refused_by.map_or("burst", |p| p.name())
    }

    /// The error code of a refusal (429 body `error`, access log `error`).
    pub fn error_code(&self) -> &'static str {
        match self.refusing_policy() {
            "daily" => "daily_quota_exhausted",
            _ => "rate_limited",
        }
    }
}

/// The 429 header: status, `Retry-After` and the RateLimit fields.
pub fn too_many_requests_header(
    applied: &Applied,
    legacy: bool,
) -> pingora_core::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(429, Some(8))?;
    if let Some(secs) = headers::retry_after(&applied.decision) {
        h.insert_header(headers::RETRY_AFTER, secs)?;
    }
    add_headers(&mut h, applied, legacy)?;
    Ok(h)
}

/// The 429 body: `{error, status, message, tier, policy, retry_after, request_id}`.
pub fn too_many_requests_body(applied: &Applied, request_id: &str) -> serde_json::Value {
    let policy = applied.refusing_policy();
    let message = if policy == "daily" {
        "the daily quota of this tier is used up until 00:00 UTC"
    } else {
        "too many requests: slow down and retry after `retry_after` seconds"
    };
    serde_json::json!({
        "error": applied.error_code(),
        "status": 429,
        "message": message,
        "tier": &*applied.tier.name,
        "policy": policy,
        "retry_after": applied.decision.retry_after_secs,
        "request_id": request_id,
    })
}
