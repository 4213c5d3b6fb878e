//! The proxy's cache phases: turn the cache on for a request, key it, decide what is stored
//! (304 merges included), tell the client what happened, and invalidate after unsafe methods.
//! The decisions themselves live in [`crate::cache`]; this is the glue to Pingora's `Session`
//! and the request ctx.

use super::ctx::RequestCtx;
use super::routing::request_host;
use crate::cache::shared::Note;
use crate::cache::status::{self, Outcome, Report};
use crate::cache::storage::EntryTag;
use crate::cache::{key, policy};
use crate::observe::metrics;
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable,
};
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::cell::RefCell;
use std::time::SystemTime;

/// The caller's tenant, when identified.
fn tenant(ctx: &RequestCtx) -> Option<&str> {
    ctx.caller.as_ref().and_then(|c| c.tenant.as_deref())
}

/// Whether the route needs the caller identified for its cache (tenant-scoped keys, and
/// tenants to tell apart).
pub fn needs_caller(ctx: &RequestCtx) -> bool {
    ctx.config.identity.identifies_tenants()
        && ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .is_some_and(|c| c.scope == crate::cache::Scope::Tenant)
}

/// `request_cache_filter`: switch the cache on when the route caches this method.
pub fn enable(session: &mut Session, ctx: &mut RequestCtx) {
    let Some(route) = ctx.route.clone() else {
        return;
    };
    let (Some(policy), Some(cache)) = (route.cache.as_ref(), crate::cache::get()) else {
        return;
    };
    let req = session.req_header();
    if !policy.serves(&req.method) {
        ctx.cache_detail = Some("method");
        return;
    }
    if session.is_upgrade_req() {
        ctx.cache_detail = Some("upgrade");
        return;
    }
    if ctx.unknown_key {
        ctx.cache_detail = Some("unknown-key");
        return;
    }
    if req.method == http::Method::POST {
        // Cached completions: the body (read before the cache phase) is the key.
        let policy_body = policy
            .body_key
            .as_ref()
            .expect("serves POST only with a body key");
        let digest = match session.as_ref().get_retry_buffer() {
            Some(body) if !session.as_ref().retry_buffer_truncated() => policy_body.digest(&body),
            _ => Err(key::BodyKeyMiss::Unread),
        };
        match digest {
            Ok(d) => ctx.cache_body_digest = Some(Box::new(d)),
            Err(why) => {
                ctx.cache_detail = Some(why.detail());
                return;
            }
        }
    }
    let scope = key::scope_for(policy.scope, tenant(ctx));
    let req = session.req_header();
    if req.headers.contains_key(http::header::AUTHORIZATION)
        && &*scope == key::SHARED
        && !policy.store_authorized
    {
        // Credentials tollgate cannot tie to a tenant: the answer may depend on them, so such
        // requests neither read nor fill shared entries (as Varnish passes them by default).
        // With `store_authorized` they use the cache, and `keep_unshareable_out` keeps the
        // responses that do not allow it out of the store (RFC 9111 §3.5).
        ctx.cache_detail = Some(policy::AUTHORIZATION);
        return;
    }
    ctx.cache_tag = Some(EntryTag::new(
        scope,
        key::normalize_host(request_host(req)),
        req.uri.path(),
        key::normalize_query(req.uri.query(), policy.query),
    ));
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(cache.lock_timeout);
    session.cache.enable(
        cache.tiered,
        None,
        Some(cache.predictor),
        Some(cache.lock),
        Some(overrides),
    );
    session.cache.set_max_file_size_bytes(cache.max_object_size);
}

/// `cache_key_callback`. The key carries the request's lookup note, so the store can say
/// which tier answered and whether this request took the fleet fill lock.
pub fn cache_key(session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
    let tag = ctx.cache_tag.clone().ok_or_else(|| {
        Error::explain(
            ErrorType::InternalError,
            "cache enabled without an entry tag",
        )
    })?;
    let req = session.req_header();
    let key_headers = ctx
        .route
        .as_ref()
        .and_then(|r| r.cache.as_ref())
        .map_or(&[][..], |c| &c.key_headers[..]);
    let body = ctx.cache_body_digest.as_deref().map(|d| &d[..]);
    let mut key = key::build_with(
        &req.method,
        tag,
        key_headers
            .iter()
            .map(|h| req.headers.get(h).map(|v| v.as_bytes()))
            .chain(body.map(Some)),
    );
    if crate::cache::get().is_some_and(|c| c.tiered.shared().is_some()) {
        let note = ctx.cache_note.get_or_insert_with(Default::default).clone();
        key.extensions.insert(Note(note));
    }
    Ok(key)
}

/// `logging`: a fleet fill lock this request took and did not hand to a stored fill (its
/// answer was not stored) is released, so other replicas stop waiting at once.
pub fn release_fill_lock(session: &Session, ctx: &RequestCtx) {
    if ctx.cache_note.is_none() {
        return;
    }
    let Some(shared) = crate::cache::get().and_then(|c| c.tiered.shared()) else {
        return;
    };
    if let Some(key) = session.cache.maybe_cache_key() {
        shared.release(key);
    }
}

/// `cache_vary_filter`: the variant this request wants. On a route that compresses, the
/// coding tollgate negotiated stands for `Accept-Encoding` (and the opt-out header), so each
/// URL has at most one entry per coding instead of one per distinct header string. Elsewhere
/// `Accept-Encoding` is taken as the client sent it (the compression module may rewrite it).
pub fn variance(
    meta: &CacheMeta,
    ctx: &RequestCtx,
    req: &RequestHeader,
) -> Option<pingora_cache::key::HashBinary> {
    let policy = ctx.route.as_ref().and_then(|r| r.compression.as_ref());
    let coding: &[u8] = match ctx.compress {
        Some(alg) => crate::compress::token(alg).as_bytes(),
        None => b"identity",
    };
    key::variance(meta, |name| {
        if let Some(p) = policy {
            if name == "accept-encoding" {
                return Some(coding);
            }
            if name == p.opt_out_header.as_str() {
                // Already part of the negotiated coding.
                return Some(b"");
            }
        }
        if name == "accept-encoding" {
            if let Some(original) = &ctx.client_accept_encoding {
                return original.as_ref().map(|v| v.as_bytes());
            }
        }
        req.headers.get(name).map(|v| v.as_bytes())
    })
}

/// `response_cache_filter`.
pub fn decide(resp: &ResponseHeader, ctx: &mut RequestCtx) -> RespCacheable {
    let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    // Known too large from its length: say so now (Pingora would stop storing it mid-body).
    let too_large = crate::cache::get().is_some_and(|c| {
        resp.headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len > c.max_object_size)
    });
    let now = SystemTime::now();
    let verdict = if too_large {
        RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge)
    } else if let Some(not_modified) = take_not_modified(ctx) {
        // A revalidation: `resp` is Pingora's merge of the 304 into the stored header, which
        // takes five fields of the 304 only. RFC 9111 §4.3.4 wants all of them (but framing).
        policy::decide(
            policy,
            &policy::merge_not_modified(resp, &not_modified, now),
            now,
        )
    } else if ctx.cache_body_digest.is_some() {
        policy::decide_completion(policy, resp, now)
    } else {
        policy::decide(policy, resp, now)
    };
    match &verdict {
        RespCacheable::Cacheable(_) => ctx.cache_stored = true,
        RespCacheable::Uncacheable(why) => ctx.cache_detail = Some(policy::reason_label(why)),
    }
    verdict
}

/// `should_serve_stale`: during revalidation (`None`) always, within the stored response's
/// stale-while-revalidate window (Pingora checks the window); on an upstream failure (no
/// answer, or a 5xx) within its stale-if-error window.
pub fn serve_stale(ctx: &mut RequestCtx, error: Option<&Error>) -> bool {
    let Some(e) = error else {
        return true;
    };
    let status = match e.etype() {
        ErrorType::HTTPStatus(code) if *code >= 500 => Some(*code),
        ErrorType::HTTPStatus(_) => return false,
        _ if *e.esource() == ErrorSource::Upstream => Some(0),
        _ => None,
    };
    ctx.cache_stale_error = status;
    status.is_some()
}

fn ttl_secs(meta: &CacheMeta) -> i64 {
    match meta.fresh_until().duration_since(SystemTime::now()) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs_f64().ceil() as i64),
    }
}

/// `response_filter` on a caching route: `Cache-Status` and `X-Cache-Status`.
pub fn add_status_headers(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if ctx.route.as_ref().is_none_or(|r| r.cache.is_none()) {
        return Ok(());
    }
    let enabled = ctx.cache_tag.is_some();
    let (outcome, why) = match session.cache.predicted_uncacheable_reason() {
        // Skipped lookup and lock: the key's last response could not be stored either.
        Some(reason) if enabled => (Outcome::Bypass, Some(policy::reason_label(&reason))),
        _ => status::classify(session.cache.phase(), enabled),
    };
    let from_cache = matches!(
        outcome,
        Outcome::Hit | Outcome::Updating | Outcome::Stale | Outcome::Revalidated
    );
    let ttl = if from_cache {
        session.cache.maybe_cache_meta().map(ttl_secs)
    } else {
        None
    };
    let fwd_status = match outcome {
        Outcome::Stale => ctx.cache_stale_error.filter(|s| *s != 0),
        Outcome::Miss | Outcome::Expired | Outcome::Revalidated | Outcome::Bypass => {
            ctx.upstream_status
        }
        _ => None,
    };
    // A hit the fleet's shared tier answered says so (and is labelled `shared_hit`).
    ctx.cache_shared_hit =
        outcome == Outcome::Hit && ctx.cache_note.as_ref().is_some_and(|n| n.from_shared());
    let report = Report {
        ttl,
        fwd_status,
        stored: ctx.cache_stored && matches!(outcome, Outcome::Miss | Outcome::Expired),
        detail: if ctx.cache_shared_hit {
            Some(status::SHARED_DETAIL)
        } else {
            why.or(ctx.cache_detail).filter(|_| {
                // A stored miss needs no explanation.
                !(ctx.cache_stored && matches!(outcome, Outcome::Miss | Outcome::Expired))
            })
        },
    };
    // RFC 9211: each cache adds its member after those of caches nearer the origin.
    let ours = status::cache_status(outcome, &report);
    let value = match resp
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
    {
        Some(upstream) if !upstream.trim().is_empty() => format!("{upstream}, {ours}"),
        _ => ours,
    };
    resp.insert_header("cache-status", value)?;
    resp.insert_header("x-cache-status", outcome.x_cache_status())?;
    ctx.cache_outcome = Some(outcome);
    Ok(())
}

/// `upstream_response_filter` on a caching route (its name is older than its other jobs):
///
/// - a non-error response to a method that is not known to be safe removes the path's cached
///   entries (the caller's scope and the shared one) and the route's related prefixes (RFC 9111
///   §4.4);
/// - a response to a request with `Authorization` in the shared scope (a `store_authorized`
///   route) that does not allow a shared cache to store it is not stored (§3.5);
/// - a `304` that revalidates a stored response is handed to `response_cache_filter`.
pub fn invalidate_after_mutation(session: &mut Session, resp: &ResponseHeader, ctx: &RequestCtx) {
    let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
        return;
    };
    invalidate_after_unsafe_method(session, resp, ctx, policy);
    keep_unshareable_out(session, resp, ctx, policy);
    hand_over_not_modified(session, resp, ctx);
}

fn invalidate_after_unsafe_method(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &RequestCtx,
    policy: &crate::cache::RoutePolicy,
) {
    let req = session.req_header();
    if !policy.invalidate_on_mutation || !crate::cache::purge::invalidates(&req.method, resp.status)
    {
        return;
    }
    if req.method == http::Method::POST && policy.body_key.is_some() {
        // On a route keyed on POST bodies, a POST is a read (a completion), not a write.
        return;
    }
    let Some(cache) = crate::cache::get() else {
        return;
    };
    let scope = key::scope_for(policy.scope, tenant(ctx));
    let host = key::normalize_host(request_host(req));
    let op = crate::cache::purge::PurgeOp::mutation(policy, &scope, &host, req.uri.path());
    let (n, _fleet) = cache.purge(&op);
    if n > 0 {
        metrics::CACHE_PURGED_ENTRIES_TOTAL
            .with_label_values(&["mutation"])
            .inc_by(n as u64);
    }
}

/// RFC 9111 §3.5 on a `store_authorized` route: the response to a request with `Authorization`
/// in the shared scope is stored only if it says `public`, `s-maxage` or `must-revalidate`.
/// Otherwise the cache is switched off for this request here, before `response_cache_filter`:
/// that hook is not given the request, and switching off (rather than answering
/// `Uncacheable`) keeps the key out of the predictor, so anonymous requests for it still use
/// the cache. A 304 is left alone: Pingora merges it into the stored response, which is
/// already shareable (and must not be switched off in the middle of that merge).
fn keep_unshareable_out(
    session: &mut Session,
    resp: &ResponseHeader,
    ctx: &RequestCtx,
    policy: &crate::cache::RoutePolicy,
) {
    if !policy.store_authorized
        || ctx
            .cache_tag
            .as_ref()
            .is_none_or(|t| &*t.scope != key::SHARED)
        || !session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION)
        || resp.status == http::StatusCode::NOT_MODIFIED
        || !matches!(
            session.cache.phase(),
            CachePhase::Miss | CachePhase::Stale | CachePhase::Bypass
        )
        || policy::shareable_when_authorized(policy, resp)
    {
        return;
    }
    session
        .cache
        .disable(NoCacheReason::Custom(policy::AUTHORIZATION));
}

thread_local! {
    /// The 304 that revalidates a stored response, from `upstream_response_filter` to
    /// `response_cache_filter`, tagged with the request's ctx address.
    ///
    /// Pingora (pingora-proxy `proxy_cache.rs`, `revalidate_or_stale`) runs the two back to back
    /// without yielding, so the hand-over stays on one thread; but `response_cache_filter` is
    /// given only Pingora's merged header, and the request ctx has no field for the 304 (the
    /// ctx belongs to `proxy/ctx.rs`: a `not_modified` field there would replace this). A
    /// hand-over that does not arrive (the ctx address differs) falls back to Pingora's merge.
    static NOT_MODIFIED: RefCell<Option<(usize, ResponseHeader)>> = const { RefCell::new(None) };
}

fn ctx_id(ctx: &RequestCtx) -> usize {
    std::ptr::from_ref(ctx) as usize
}

fn hand_over_not_modified(session: &Session, resp: &ResponseHeader, ctx: &RequestCtx) {
    if resp.status == http::StatusCode::NOT_MODIFIED
        && session.cache.phase() == CachePhase::Stale
        && session.cache.maybe_cache_meta().is_some()
    {
        NOT_MODIFIED.with(|slot| *slot.borrow_mut() = Some((ctx_id(ctx), resp.clone())));
    }
}

/// The 304 handed over for this request, if any. Taken, so a later response never sees it
/// (and one left by another request is dropped).
fn take_not_modified(ctx: &RequestCtx) -> Option<ResponseHeader> {
    if ctx.upstream_status != Some(304) {
        return None;
    }
    NOT_MODIFIED
        .with(|slot| slot.borrow_mut().take())
        .filter(|(id, _)| *id == ctx_id(ctx))
        .map(|(_, header)| header)
}

/// `logging` of a background refresh: count it by what it achieved.
pub fn log_background(session: &Session, ctx: &RequestCtx) {
    let outcome = match session.cache.phase() {
        CachePhase::Expired | CachePhase::Miss => "refreshed",
        CachePhase::Revalidated => "revalidated",
        _ => "failed",
    };
    metrics::CACHE_BACKGROUND_REVALIDATIONS_TOTAL
        .with_label_values(&[ctx.route_name(), outcome])
        .inc();
}
