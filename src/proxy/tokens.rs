//! The LLM token step of a request on a route with `tokens:`: refuse a caller whose token
//! budget is spent (`429`, `policy: tokens`), read the model from the request body and the
//! usage from the answer as both stream past (a bounded window, nothing held back), then debit
//! the usage and count it in metrics once the answer has ended.

use super::ctx::RequestCtx;
use super::errors;
use crate::llm::model::{label_safe, model_from_prefix};
use crate::llm::usage::{body_kind, Usage, UsageReader};
pub use crate::llm::TokenRoute;
use crate::observe::metrics;
use crate::ratelimit::headers;
use crate::ratelimit::tokens::{TokenDecision, TokenLimits, TokenPolicy};
use crate::ratelimit::Limiter;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;

/// Bytes of a request body kept to find its `model`.
const MODEL_PREFIX: usize = 16 * 1024;

/// Bytes of an answer the usage reader may hold (a JSON answer's tail, one SSE line).
pub const USAGE_WINDOW: usize = 16 * 1024;

/// This request's token accounting, in the ctx.
#[derive(Default)]
pub struct TokenCtx {
    /// The budgets' answer before the request (for the headers), when budgets apply.
    pub decision: Option<(TokenDecision, TokenLimits)>,
    /// Debit in the fleet's store.
    pub shared: bool,
    /// The start of the request body, until the model is found (or it is long enough).
    prefix: Vec<u8>,
    /// The request's model, once read.
    pub model: Option<String>,
    /// Reads the usage from the answer.
    reader: Option<UsageReader>,
    /// The usage the answer reported.
    pub usage: Option<Usage>,
    /// The answer came from the cache (its tokens are counted as saved, not debited).
    pub cached: bool,
    /// When the answer's first body bytes arrived from the upstream.
    first_body: Option<std::time::Instant>,
}

/// `request_filter`, after the request limits: refuse a caller whose token budget is spent.
/// `Ok(true)`: answered (429).
pub async fn enforce(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limiter: &Limiter,
) -> pingora_core::Result<bool> {
    if ctx.route.as_ref().is_none_or(|r| r.tokens.is_none()) || ctx.background {
        return Ok(false);
    }
    let Some(caller) = ctx.caller.as_ref().filter(|c| c.tokens.any()) else {
        return Ok(false);
    };
    let shared = ctx.config.limit_store.shared;
    let limits = caller.tokens;
    let decision = limiter
        .tokens()
        .check(&caller.subject, &limits, shared)
        .await;
    let shadow = caller.shadow;
    let t = ctx.tokens.get_or_insert_with(Default::default);
    t.shared = shared;
    t.decision = Some((decision, limits));
    if decision.allowed {
        // Counted once per request, by the request limiter: only refusals are the budgets'.
        return Ok(false);
    }
    let tier = ctx
        .caller
        .as_ref()
        .and_then(|c| c.tier.as_ref())
        .map_or_else(|| Arc::from("none"), |t| t.name.clone());
    let outcome = if shadow { "shadow_limited" } else { "limited" };
    metrics::RATELIMIT_DECISIONS_TOTAL
        .with_label_values(&[&tier, "tokens", outcome])
        .inc();
    if shadow {
        return Ok(false);
    }
    ctx.own_error = Some("token_budget_exhausted");
    let mut h = ResponseHeader::build(429, Some(8))?;
    h.insert_header(headers::RETRY_AFTER, decision.retry_after_secs.to_string())?;
    super::limit::response_headers(&mut h, ctx)?;
    let body = serde_json::json!({
        "error": "token_budget_exhausted",
        "status": 429,
        "message": match decision.refused_by {
            Some(TokenPolicy::Day) => "the daily token budget of this tier is used up until 00:00 UTC",
            _ => "the token budget of this tier is spent: retry after `retry_after` seconds",
        },
        "tier": &*tier,
        "policy": "tokens",
        "budget": match decision.refused_by {
            Some(TokenPolicy::Day) => "day",
            _ => "minute",
        },
        "retry_after": decision.retry_after_secs,
        "request_id": ctx.request_id,
    });
    let body = serde_json::to_vec(&body).expect("json");
    errors::respond_with(session, ctx, h, body.into()).await?;
    Ok(true)
}

/// `request_body_filter`: keep the start of the body until its `model` is found.
pub fn request_body(ctx: &mut RequestCtx, chunk: Option<&Bytes>) {
    if ctx.route.as_ref().is_none_or(|r| r.tokens.is_none()) {
        return;
    }
    let t = ctx.tokens.get_or_insert_with(Default::default);
    if t.model.is_some() || (chunk.is_none() && t.prefix.is_empty()) {
        // Found, or a request without a body.
        return;
    }
    if let Some(chunk) = chunk {
        let room = MODEL_PREFIX.saturating_sub(t.prefix.len());
        t.prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    if let Some(model) = model_from_prefix(&t.prefix) {
        t.model = Some(model);
        t.prefix = Vec::new();
    } else if t.prefix.len() >= MODEL_PREFIX {
        t.prefix = Vec::new();
    }
}

/// `upstream_request_filter`, last: a token route asks its upstream for an identity answer,
/// whatever the client accepts (SDKs send `Accept-Encoding: gzip`), so the usage can be read;
/// the route's own `compression` still encodes for the client. A request that names no
/// coding is left as it is: servers (and every LLM provider) answer it uncompressed, and not
/// adding a header keeps the token step cheap.
pub fn upstream_request(
    upstream_request: &mut pingora_http::RequestHeader,
    ctx: &RequestCtx,
) -> pingora_core::Result<()> {
    if ctx.route.as_ref().is_some_and(|r| r.tokens.is_some())
        && upstream_request
            .headers
            .get(http::header::ACCEPT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        upstream_request.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    }
    Ok(())
}

/// `upstream_response_filter`: start reading the usage of a JSON or SSE answer that comes
/// uncompressed (a compressed one is passed on unread: its tokens are neither counted nor
/// debited).
pub fn upstream_response(resp: &ResponseHeader, ctx: &mut RequestCtx) {
    let Some(route) = ctx.route.as_ref().and_then(|r| r.tokens.as_ref()) else {
        return;
    };
    let reader = reader_for(resp, &route.shape);
    ctx.tokens.get_or_insert_with(Default::default).reader = reader;
}

/// `upstream_response_body_filter`: feed the usage reader (the chunk passes on unchanged).
pub fn upstream_body(ctx: &mut RequestCtx, body: Option<&Bytes>, end: bool) {
    let Some(t) = ctx.tokens.as_mut() else {
        return;
    };
    if t.first_body.is_none() && body.is_some_and(|b| !b.is_empty()) {
        t.first_body = Some(std::time::Instant::now());
    }
    let Some(reader) = t.reader.as_mut() else {
        return;
    };
    if let Some(b) = body {
        reader.feed(b);
    }
    if end {
        t.usage = reader.finish();
        t.reader = None;
    }
}

/// `response_filter`: an answer served from the cache on a token route is read too (its
/// tokens count as served from cache, and its cost as saved), unless it is stored encoded.
pub fn from_cache(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
    use crate::cache::status::Outcome;
    let Some(route) = ctx.route.as_ref().and_then(|r| r.tokens.as_ref()) else {
        return;
    };
    if !matches!(
        ctx.cache_outcome,
        Some(Outcome::Hit | Outcome::Updating | Outcome::Stale | Outcome::Revalidated)
    ) {
        return;
    }
    let t = ctx.tokens.get_or_insert_with(Default::default);
    t.cached = true;
    if t.model.is_none() {
        // A hit never forwards the body, so it never passed the body filter: read the model
        // from the body read for the cache key.
        if let Some(body) = session.as_ref().get_retry_buffer() {
            t.model = model_from_prefix(&body[..body.len().min(MODEL_PREFIX)]);
        }
    }
    t.reader = reader_for(resp, &route.shape);
}

/// A usage reader for an answer that is JSON or SSE and not encoded (an encoded one is passed
/// on unread).
fn reader_for(resp: &ResponseHeader, shape: &crate::llm::usage::UsageShape) -> Option<UsageReader> {
    let coded = resp
        .headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.as_bytes().trim_ascii())
        .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case(b"identity"));
    let kind = body_kind(
        resp.headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    )?;
    (!coded).then(|| UsageReader::new(kind, shape.clone(), USAGE_WINDOW))
}

/// `response_body_filter`, before compression: feed the reader of an answer from the cache.
pub fn cached_body(ctx: &mut RequestCtx, body: Option<&Bytes>, end: bool) {
    match ctx.tokens.as_mut() {
        Some(t) if t.cached => upstream_body(ctx, body, end),
        _ => {}
    }
}

/// `logging`: debit the usage the answer reported and count it.
pub async fn settle(ctx: &mut RequestCtx, limiter: &Limiter, ended: std::time::Instant) {
    let Some(route) = ctx.route.clone().filter(|r| r.tokens.is_some()) else {
        return;
    };
    let Some(t) = ctx.tokens.as_mut() else {
        return;
    };
    if let Some(reader) = t.reader.as_mut() {
        // The answer ended without its end being seen (an error): what was read counts.
        t.usage = reader.finish();
        t.reader = None;
    }
    if t.model.is_none() && !t.prefix.is_empty() {
        t.model = model_from_prefix(&t.prefix);
    }
    let (usage, model, shared, cached, first_body) =
        (t.usage, t.model.clone(), t.shared, t.cached, t.first_body);
    let price = model
        .as_deref()
        .and_then(|m| ctx.config.llm_prices.get(m))
        .copied();
    // No model: `none`; a name unfit for a label: `other`.
    let model = match model.as_deref() {
        None => "none",
        Some(m) => label_safe(m).map_or("other", |m| metrics::model_label(Some(m))),
    };
    let group_arc = ctx.upstream.group().cloned();
    let group = group_arc.as_ref().map_or("none", |g| g.name.as_str());
    let tenant = ctx.caller.as_ref().and_then(|c| c.tenant.as_deref());
    let tenant = ctx.config.observe.tenant_label(tenant);
    let cost = usage.zip(price).map(|(usage, p)| {
        (usage.input as f64 * p.input + usage.output as f64 * p.output) / 1_000_000.0
    });
    if !cached && (ctx.upstream_status.is_some() || usage.is_some()) {
        metrics::with_llm_handles(&route.name, tenant, group, model, |h| {
            if ctx.upstream_status.is_some() {
                // Every answer of a provider is timed, whether or not it reported its usage.
                h.duration
                    .observe(ended.saturating_duration_since(ctx.started).as_secs_f64());
                if let Some(first) = first_body {
                    h.first_token
                        .observe(first.duration_since(ctx.started).as_secs_f64());
                }
            }
            if let Some(usage) = usage {
                let [input, output] = h.tokens();
                input.inc_by(usage.input);
                output.inc_by(usage.output);
            }
        });
    }
    let Some(usage) = usage else {
        return;
    };
    if cached {
        for (kind, n) in [("input", usage.input), ("output", usage.output)] {
            metrics::LLM_CACHED_TOKENS_TOTAL
                .with_label_values(&[&route.name, model, kind])
                .inc_by(n);
        }
        if let Some(cost) = cost {
            metrics::LLM_COST_SAVED_USD_TOTAL
                .with_label_values(&[&route.name, model])
                .inc_by(cost);
        }
        // Served from cache: no provider was paid, nothing is debited.
        return;
    }
    if let Some(cost) = cost {
        metrics::LLM_COST_USD_TOTAL
            .with_label_values(&[&route.name, tenant, group, model])
            .inc_by(cost);
    }
    let Some(caller) = ctx.caller.as_ref().filter(|c| c.tokens.any()) else {
        return;
    };
    limiter
        .tokens()
        .debit(&caller.subject, &caller.tokens, usage.total(), shared)
        .await;
}
