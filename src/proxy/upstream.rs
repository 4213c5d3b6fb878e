//! The proxy's upstream steps: pick the endpoint for each attempt, decide after a failed
//! connection, an error or a retryable status whether to try again (and where), rewrite the
//! request for the chosen group, and close the books when the request ends. The policy lives
//! in [`crate::upstream::attempts::Attempts`]; this is the glue to Pingora's phases.

use super::ctx::RequestCtx;
use crate::clock;
use crate::config::RuntimeConfig;
use crate::tenant::Caller;
use crate::upstream::attempts::{self, AttemptError};
use crate::upstream::{Balance, HashOn, UpstreamGroup};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;

/// `upstream_peer`: the endpoint of the next attempt (the first, or a retry elsewhere).
pub fn peer(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
    if ctx.groups.is_none() {
        // A spreading route picks this request's first group once, at its first attempt.
        ctx.groups = route.spread.as_ref().map(|s| s.order());
    }
    let order = ctx.groups.clone();
    let groups: &[Arc<UpstreamGroup>] = order.as_deref().unwrap_or(&route.upstreams);
    let key = |g: &UpstreamGroup| balance_key(session, ctx.caller.as_ref(), &ctx.config, g);
    let now = clock::mono_nanos();
    if let Some(wait) = fail_fast(groups, now) {
        ctx.circuit_retry_after = Some(wait.div_ceil(1_000_000_000));
        return Err(Error::explain(
            ErrorType::Custom(super::errors::CIRCUIT_OPEN),
            "circuit_breaker.fail_fast",
        ));
    }
    let (group, i) = ctx.upstream.start_next(groups, key, clock::mono_nanos());
    Ok(group.endpoints[i].peer())
}

/// This request's groups in order: its own (a spreading route), else the route's.
fn request_groups(ctx: &RequestCtx) -> Arc<[Arc<UpstreamGroup>]> {
    match (&ctx.groups, &ctx.route) {
        (Some(order), _) => order.clone(),
        (None, Some(route)) => route.upstreams.as_slice().into(),
        (None, None) => Arc::from([]),
    }
}

/// With `circuit_breaker.fail_fast` on the route's last group: when no group has an endpoint
/// whose circuit would take a request, the time (ns) until the first one lets a probe through.
fn fail_fast(groups: &[Arc<UpstreamGroup>], now: u64) -> Option<u64> {
    let last = groups.last()?;
    if !last.fail_fast {
        return None;
    }
    groups
        .iter()
        .map(|g| g.all_open_for(now))
        .try_fold(u64::MAX, |soonest, open_for| Some(soonest.min(open_for?)))
}

/// `error_while_proxy`: replaces Pingora's default, keeping its safety: a request whose
/// method is not idempotent (unless the route allows it) or whose body no longer fits the
/// retry buffer is never retried. On top of it, the attempt policy retries an idempotent
/// request whose attempt failed before the response headers, while attempts and the retry
/// budget allow.
pub fn after_error(
    peer: &HttpPeer,
    session: &mut Session,
    e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if matches!(e.etype(), ErrorType::HTTPStatus(_)) && may_repeat(session, ctx) {
        // Ours (retry_on_status): already decided.
        return e;
    }
    let error = AttemptError {
        repeatable: may_repeat(session, ctx),
        upstream_side: *e.esource() == ErrorSource::Upstream,
        timed_out: matches!(e.etype(), ErrorType::ReadTimedout),
    };
    let Some(route) = ctx.route.clone() else {
        return e;
    };
    let order = ctx.groups.clone();
    let groups: &[Arc<UpstreamGroup>] = order.as_deref().unwrap_or(&route.upstreams);
    let key = |g: &UpstreamGroup| balance_key(session, ctx.caller.as_ref(), &ctx.config, g);
    match ctx
        .upstream
        .retry_after_error(groups, key, error, clock::mono_nanos())
    {
        Some(retry) => e.set_retry(retry),
        None => {
            // Pingora retries a failure on a reused (pooled) connection, which may just have
            // been closed by the upstream: that retry is an attempt too, so `retry.attempts`
            // bounds it (an origin closing every pooled connection would otherwise see one
            // request up to Pingora's max_retries times).
            e.retry.decide_reuse(client_reused);
            if e.retry() && !ctx.upstream.attempts_left(groups, clock::mono_nanos()) {
                e.set_retry(false);
            }
        }
    }
    e
}

/// `fail_to_connect`: count the failure against the endpoint; retry elsewhere if allowed.
pub fn connect_failed(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let timed_out = matches!(e.etype(), ErrorType::ConnectTimedout);
    let order = request_groups(ctx);
    let groups: &[Arc<UpstreamGroup>] = &order;
    let retry = ctx
        .upstream
        .connect_failed(groups, timed_out, clock::mono_nanos());
    e.set_retry(retry);
    e
}

/// `upstream_request_filter`: rewrite the request for the group of this attempt (provider
/// adapter: `Host`, path prefix, headers).
pub fn request(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    // An HTTP/1.0 client may send no Host; the upstream is spoken to in HTTP/1.1, which needs
    // one: the endpoint's own name (`host:port` as configured), unless the group sets its own.
    if !upstream_request.headers.contains_key(http::header::HOST) {
        if let Some(endpoint) = ctx.upstream.endpoint_label() {
            upstream_request.insert_header(http::header::HOST, &**endpoint)?;
        }
    }
    match ctx.upstream.group() {
        Some(group) => group.adapter.apply(upstream_request),
        None => Ok(()),
    }
}

/// `upstream_response_filter`: book the answer (breaker, Retry-After hold, timing), or turn a
/// retryable status into an error that Pingora retries on another endpoint.
pub fn response(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let status = resp.status.as_u16();
    ctx.upstream_status = Some(status);
    let retry_after = attempts::retry_after(
        resp.headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        std::time::SystemTime::now(),
    );
    let now = clock::mono_nanos();
    let repeatable = may_repeat(session, ctx);
    let order = request_groups(ctx);
    let groups: &[Arc<UpstreamGroup>] = &order;
    if ctx
        .upstream
        .retry_on_status(groups, status, retry_after, repeatable, now)
    {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            format!("upstream answered {status}: retrying on another endpoint"),
        );
        e.set_retry(true);
        return Err(e.into_up());
    }
    ctx.upstream.answered(status, retry_after, now);
    Ok(())
}

/// `logging`: an attempt still open when the request ended (the upstream never answered)
/// counts against its endpoint unless the client caused the end.
pub fn ended(ctx: &mut RequestCtx, e: Option<&Error>) {
    let client_fault = e.is_none_or(|e| *e.esource() == ErrorSource::Downstream);
    let timed_out = e.is_some_and(|e| {
        matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        )
    });
    ctx.upstream
        .ended_unanswered(client_fault, timed_out, clock::mono_nanos());
}

/// The key a `consistent_hash` group hashes for this request (empty for other balances).
fn balance_key(
    session: &Session,
    caller: Option<&Caller>,
    config: &RuntimeConfig,
    group: &UpstreamGroup,
) -> Vec<u8> {
    if group.balance != Balance::ConsistentHash {
        return Vec::new();
    }
    let client_ip = || {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        config
            .identity
            .client_ip(session.req_header(), peer)
            .map(|ip| crate::textfmt::ip(ip).into_bytes())
            .unwrap_or_default()
    };
    match &group.hash_on {
        HashOn::Tenant => match caller.and_then(|c| c.tenant.as_deref()) {
            Some(t) => t.as_bytes().to_vec(),
            None => client_ip(),
        },
        HashOn::ClientIp => client_ip(),
        HashOn::Header(h) => session
            .req_header()
            .headers
            .get(h)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// Whether this request may be sent again after (part of) it reached an upstream: an
/// idempotent method, or a route that allows repeating writes, and a body still held in
/// Pingora's retry buffer (the safety of Pingora's own `error_while_proxy`).
fn may_repeat(session: &Session, ctx: &RequestCtx) -> bool {
    (session.req_header().method.is_idempotent()
        || ctx.route.as_ref().is_some_and(|r| r.retry_non_idempotent))
        && !session.as_ref().retry_buffer_truncated()
}
