//! The Pingora `ProxyHttp` implementation, kept thin: each phase calls into one feature module.
//! Features never call each other; they meet in [`RequestCtx`] and the compiled config.
//!
//! Phase order for one request (see Pingora's `proxy_trait.rs`):
//! `new_ctx` (config snapshot) -> `early_request_filter` (request id, route) -> `request_filter`
//! (404 / 400 / 401 / 429 answered here) -> `request_cache_filter`, `cache_key_callback`, cache
//! lookup (hits, stale and coalesced requests are served from here) -> `upstream_peer`
//! (endpoint) -> `upstream_request_filter` (forwarding headers) -> `upstream_response_filter`
//! -> `response_cache_filter` (store or not) -> `response_filter` (request id back,
//! hop-by-hop, Cache-Status) -> `logging` (metrics). Stale-while-revalidate refreshes run the
//! same phases as a background subrequest (`ctx.background`).

pub mod caching;
pub mod ctx;
pub mod errors;
pub mod headers;
pub mod limit;

use crate::clock;
use crate::compress;
use crate::config::RuntimeConfig;
use crate::observe::access_log::{AccessLog, Entry};
use crate::observe::{metrics, request_id, timing};
use crate::ratelimit::RateLimiter;
use crate::upstream::attempts::{self, AttemptError};
use crate::upstream::UpstreamGroup;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
use errors::ProxyError;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_core::protocols::http::compression::Algorithm;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// The proxy. Cheap to share: state lives in the swappable config, the limiter (which outlives
/// reloads, so counts survive them) and the per-request ctx.
pub struct Tollgate {
    config: Arc<ArcSwap<RuntimeConfig>>,
    limiter: Arc<dyn RateLimiter>,
    access_log: Option<AccessLog>,
}

impl Tollgate {
    /// A proxy serving whatever config is current in `config` (reloads swap it). With
    /// `access_log`, requests are logged as the current config's sampling says.
    pub fn new(
        config: Arc<ArcSwap<RuntimeConfig>>,
        limiter: Arc<dyn RateLimiter>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Tollgate {
            config,
            limiter,
            access_log,
        }
    }
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Microsecond precision is plenty in a log line.
fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The host the client asked for: `Host` (HTTP/1.1) or the URI authority (HTTP/2, absolute-form).
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Paths with dot segments would let `/api/../admin` match the `/api/` route while the upstream
/// serves `/admin`: such requests are refused rather than guessed at. Percent-encoded dots
/// (`%2e`) count too, since many upstreams decode before resolving.
fn has_dot_segment(path: &str) -> bool {
    const DOTS: [&str; 6] = [".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"];
    path.split('/')
        .any(|seg| seg.len() <= 6 && DOTS.iter().any(|d| seg.eq_ignore_ascii_case(d)))
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.config.load_full())
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.background = session.subrequest_ctx.is_some();
        let req = session.req_header();
        ctx.request_id = request_id::accept_or_generate(
            req.headers.get(request_id::HEADER).map(|v| v.as_bytes()),
        );
        ctx.route = ctx
            .config
            .routes
            .find(request_host(req), req.uri.path())
            .cloned();
        if let Some(route) = ctx.route.clone() {
            if let Some(policy) = &route.compression {
                prepare_compression(session, ctx, policy)?;
            }
        }
        let req = session.req_header();
        let hashes_tenant = ctx.route.as_ref().is_some_and(|r| {
            r.upstreams.iter().any(|g| {
                g.balance == crate::config::model::Balance::ConsistentHash
                    && g.hash_on == crate::upstream::HashOn::Tenant
            })
        });
        if ctx.route.as_ref().is_some_and(|r| r.limit.is_some())
            || caching::needs_caller(ctx)
            || hashes_tenant
        {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            match ctx.config.identity.resolve(req, peer) {
                Ok(caller) => ctx.caller = Some(caller),
                Err(_) => ctx.unknown_key = true,
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let path = session.req_header().uri.path();
        if has_dot_segment(path) {
            let msg = "the request path contains `.` or `..` segments";
            ctx.own_error = Some(ProxyError::BadRequest.code());
            errors::respond(session, ctx, ProxyError::BadRequest, msg).await?;
            return Ok(true);
        }
        let Some(route) = ctx.route.clone() else {
            let msg = format!("no route matches host and path `{path}`");
            ctx.own_error = Some(ProxyError::RouteNotFound.code());
            errors::respond(session, ctx, ProxyError::RouteNotFound, &msg).await?;
            return Ok(true);
        };
        // Unknown keys are refused where limits apply; a route that only caches lets the
        // request through uncached (the cache cannot tell whose answer it would be).
        if ctx.unknown_key && route.limit.is_some() {
            let msg = "the API key is not recognised";
            let mut h = ResponseHeader::build(401, Some(5))?;
            h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
            let body = errors::body(ProxyError::UnknownApiKey, msg, &ctx.request_id);
            ctx.own_error = Some(ProxyError::UnknownApiKey.code());
            errors::respond_with(session, ctx, h, body).await?;
            return Ok(true);
        }
        // A background refresh is tollgate's own request: it costs the caller nothing.
        if let Some(caller) = ctx
            .caller
            .as_ref()
            .filter(|_| !ctx.background && route.limit.is_some())
        {
            let now = crate::ratelimit::unix_nanos_now();
            ctx.limit = limit::decide(self.limiter.as_ref(), &ctx.config, &route, caller, now);
            if let Some(applied) = ctx.limit.as_ref().filter(|a| a.refuses()) {
                ctx.own_error = Some(applied.error_code());
                let h =
                    limit::too_many_requests_header(applied, ctx.config.legacy_ratelimit_headers)?;
                let body =
                    serde_json::to_vec(&limit::too_many_requests_body(applied, &ctx.request_id))
                        .expect("json");
                errors::respond_with(session, ctx, h, body.into()).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        caching::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        caching::cache_key(session, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        caching::variance(meta, ctx, req)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(caching::decide(resp, ctx))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::serve_stale(ctx, error)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(pingora_core::ErrorType::InternalError, "no route"))?;
        let key = |g: &UpstreamGroup| balance_key(session, ctx.caller.as_ref(), &ctx.config, g);
        let (group, i) = ctx
            .upstream
            .start_next(&route.upstreams, key, clock::mono_nanos());
        Ok(group.endpoints[i].peer())
    }

    /// Replaces Pingora's default, keeping its safety: a request whose method is not
    /// idempotent (unless the route allows it) or whose body no longer fits the retry buffer
    /// is never retried. On top of it, the upstream attempt policy
    /// ([`crate::upstream::attempts`]) retries an idempotent request whose attempt failed
    /// before the response headers, while attempts and the retry budget allow.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.etype(), pingora_core::ErrorType::HTTPStatus(_)) && may_repeat(session, ctx) {
            // Ours (retry_on_status): already decided.
            return e;
        }
        let error = AttemptError {
            repeatable: may_repeat(session, ctx),
            upstream_side: *e.esource() == pingora_core::ErrorSource::Upstream,
            timed_out: matches!(e.etype(), pingora_core::ErrorType::ReadTimedout),
        };
        let Some(route) = ctx.route.clone() else {
            return e;
        };
        let key = |g: &UpstreamGroup| balance_key(session, ctx.caller.as_ref(), &ctx.config, g);
        match ctx
            .upstream
            .retry_after_error(&route.upstreams, key, error, clock::mono_nanos())
        {
            Some(retry) => e.set_retry(retry),
            None => e.retry.decide_reuse(client_reused),
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let timed_out = matches!(e.etype(), pingora_core::ErrorType::ConnectTimedout);
        let groups = ctx.route.as_ref().map_or(&[][..], |r| &r.upstreams[..]);
        let retry = ctx
            .upstream
            .connect_failed(groups, timed_out, clock::mono_nanos());
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        let retry_after = attempts::retry_after(
            upstream_response
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            std::time::SystemTime::now(),
        );
        let now = clock::mono_nanos();
        let repeatable = may_repeat(session, ctx);
        let groups = ctx.route.as_ref().map_or(&[][..], |r| &r.upstreams[..]);
        if ctx
            .upstream
            .retry_on_status(groups, status, retry_after, repeatable, now)
        {
            let mut e = Error::explain(
                pingora_core::ErrorType::HTTPStatus(status),
                format!("upstream answered {status}: retrying on another endpoint"),
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        caching::vary_by_coding(upstream_response, ctx)?;
        caching::invalidate_after_mutation(session, upstream_response, ctx);
        ctx.upstream.answered(status, retry_after, now);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let is_upgrade = session.is_upgrade_req();
        headers::strip_request_hop_by_hop(upstream_request, is_upgrade);
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let host = request_host(session.req_header()).map(str::to_owned);
        headers::set_forwarded(upstream_request, client_ip, host.as_deref());
        upstream_request.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        match &ctx.client_accept_encoding {
            Some(Some(original)) => {
                upstream_request.insert_header(http::header::ACCEPT_ENCODING, original.clone())?
            }
            Some(None) => {
                upstream_request.remove_header(&http::header::ACCEPT_ENCODING);
            }
            None => {}
        }
        if let Some(group) = ctx.upstream.group() {
            let a = &group.adapter;
            if let Some(h) = &a.host {
                upstream_request.insert_header(http::header::HOST, h.clone())?;
            }
            let original = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            if let Some(p) = a.rewrite_path(&original) {
                let uri: http::Uri = p.parse().map_err(|e| {
                    Error::because(pingora_core::ErrorType::InternalError, "rewritten path", e)
                })?;
                upstream_request.set_uri(uri);
            }
            for (k, v) in &a.headers {
                upstream_request.insert_header(k.clone(), v.clone())?;
            }
        }
        caching::compress_before_storing(session, upstream_request, ctx)?;
        Ok(())
    }

    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        caching::decide_upstream_compression(session, upstream_response, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(policy) = ctx.route.as_ref().and_then(|r| r.compression.as_ref()) {
            let verdict =
                compress::should_compress(policy, session.req_header(), upstream_response);
            // Compressible but for this request's headers: the representation depends on them.
            let varies = verdict.is_ok() || verdict == Err("opt_out");
            if ctx.compress.is_some() && verdict.is_err() {
                errors::no_compression_on_the_way_out(session);
            }
            if verdict.is_ok() && ctx.compress == Some(Algorithm::Brotli) && ctx.brotli.is_none() {
                compress::set_encoded_headers(upstream_response, "br")?;
                ctx.brotli = Some(Box::new(compress::BrotliStream::new(ctx.compress_level)));
            }
            if varies {
                // A shared cache must not hand an uncompressed copy to clients that asked for
                // compression, nor a compressed one to a client that opted out.
                compress::add_vary(upstream_response, "accept-encoding")?;
                compress::add_vary(upstream_response, policy.opt_out_header.as_str())?;
            }
        }
        headers::strip_response_hop_by_hop(upstream_response);
        if ctx.route.as_ref().is_some_and(|r| r.cache.is_some()) {
            caching::add_status_headers(session, upstream_response, ctx)?;
        }
        upstream_response.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        timing::add_headers(upstream_response, ctx)?;
        if let Some(applied) = &ctx.limit {
            limit::add_headers(
                upstream_response,
                applied,
                ctx.config.legacy_ratelimit_headers,
            )?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(enc) = ctx.brotli.as_mut() {
            let input = body.take().unwrap_or_default();
            let out = enc.encode(&input, end_of_stream).map_err(|e| {
                Error::because(pingora_core::ErrorType::InternalError, "brotli encoding", e)
            })?;
            // An empty chunk would read as the end of a chunked body: send nothing instead.
            *body = (!out.is_empty() || end_of_stream).then_some(out);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let kind = ProxyError::from_pingora(e);
        // The connection is closed after an error answer (`can_reuse_downstream: false`):
        // say so in the response, or a client may reuse it and meet a reset.
        session.set_keepalive(None);
        let code = match kind {
            // The response has started (error mid-body): nothing more can be said to the client.
            Some(k) if session.response_written().is_some() => k.status(),
            Some(k) => {
                if ctx.request_id.is_empty() {
                    ctx.request_id = request_id::generate();
                }
                let msg = match k {
                    ProxyError::UpstreamTimeout => format!(
                        "upstream {} did not answer in time",
                        ctx.upstream.endpoint_label().map_or("-", |l| &**l)
                    ),
                    ProxyError::UpstreamUnreachable => format!(
                        "upstream {} could not be reached or failed",
                        ctx.upstream.endpoint_label().map_or("-", |l| &**l)
                    ),
                    ProxyError::BadRequest => "malformed request".to_string(),
                    _ => "internal error".to_string(),
                };
                if let Err(err) = errors::respond(session, ctx, k, &msg).await {
                    tracing::debug!("could not send error response: {err}");
                }
                k.status()
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.background {
            caching::log_background(session, ctx);
            return;
        }
        let elapsed = ctx.started.elapsed();
        let client_fault = e.is_none_or(|e| *e.esource() == pingora_core::ErrorSource::Downstream);
        let timed_out = e.is_some_and(|e| {
            matches!(
                e.etype(),
                pingora_core::ErrorType::ReadTimedout | pingora_core::ErrorType::WriteTimedout
            )
        });
        ctx.upstream
            .ended_unanswered(client_fault, timed_out, clock::mono_nanos());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let method = metrics::method_label(&req.method);
        let class = metrics::status_class(status);
        let route = ctx.route_name();
        let caller = ctx.caller.as_ref();
        let tier = caller
            .and_then(|c| c.tier.as_ref())
            .map_or("none", |t| &t.name);
        let tenant = match caller.and_then(|c| c.tenant.as_deref()) {
            None => "none",
            Some(t) if ctx.config.tenant_label_allowlist.contains(t) => t,
            Some(_) => "other",
        };
        let bytes = session.body_bytes_sent();
        let cache = ctx.cache_outcome.map_or("none", |o| o.label());
        if let Some(outcome) = ctx.cache_outcome {
            metrics::CACHE_REQUESTS_TOTAL
                .with_label_values(&[route, outcome.label()])
                .inc();
        }
        if ctx.config.source.observability.request_metrics {
            metrics::http_request_duration()
                .with_label_values(&[route, method, class, tier, cache])
                .observe(elapsed.as_secs_f64());
            metrics::HTTP_REQUESTS_TOTAL
                .with_label_values(&[route, method, class, tenant])
                .inc();
            if bytes > 0 {
                metrics::HTTP_RESPONSE_BODY_BYTES_TOTAL
                    .with_label_values(&[route])
                    .inc_by(bytes as u64);
            }
        }

        // Compressed before the cache (a fill) or on the way out (everything else).
        let info = session.upstream_compression.get_info().or_else(|| {
            session
                .downstream_modules_ctx
                .get::<ResponseCompression>()
                .and_then(|m| m.get_info())
        });
        let info = info.or_else(|| {
            ctx.brotli
                .as_ref()
                .map(|b| ("br", b.bytes_in, b.bytes_out, std::time::Duration::ZERO))
        });
        if let Some((algorithm, bytes_in, bytes_out, _)) = info {
            metrics::COMPRESSION_INPUT_BYTES_TOTAL
                .with_label_values(&[algorithm])
                .inc_by(bytes_in as u64);
            metrics::COMPRESSION_OUTPUT_BYTES_TOTAL
                .with_label_values(&[algorithm])
                .inc_by(bytes_out as u64);
        }

        let Some(log) = &self.access_log else { return };
        let cfg = &ctx.config.source.observability.access_log;
        if !cfg.enabled
            || !AccessLog::wanted(status, elapsed, cfg.sample_rate, cfg.slow_threshold.get())
        {
            return;
        }
        let req = session.req_header();
        log.log(Entry {
            time: ctx.started_at,
            request_id: std::mem::take(&mut ctx.request_id),
            tenant: caller.and_then(|c| c.tenant.clone()),
            tier: caller.and_then(|c| c.tier.as_ref()).map(|t| t.name.clone()),
            route: ctx
                .route
                .as_ref()
                .map_or_else(|| Arc::from("none"), |r| r.name.clone()),
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            status,
            bytes,
            duration_ms: round3(millis(elapsed)),
            upstream_ms: ctx.upstream.ttfb().map(|d| round3(millis(d))),
            upstream: ctx.upstream.endpoint_label().cloned(),
            attempts: ctx.upstream.count(),
            cache,
            ratelimit: match &ctx.limit {
                None => "none",
                Some(a) if a.decision.allowed => "allowed",
                Some(a) if a.shadow => "shadow_limited",
                Some(_) => "limited",
            },
            error: e
                .map(|e| format!("{:?}", e.etype()))
                .or_else(|| ctx.own_error.map(str::to_owned)),
            slow: elapsed >= cfg.slow_threshold.get(),
        });
    }
}

/// Set up Pingora's compression module for this request (before the module reads the request):
/// the negotiated coding at its level, decompression as configured, and an `Accept-Encoding`
/// the module understands (chosen coding first; the client's header is restored upstream).
fn prepare_compression(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &compress::Policy,
) -> Result<()> {
    let req = session.req_header();
    let opted_out = req.headers.contains_key(&policy.opt_out_header);
    let original = req.headers.get(http::header::ACCEPT_ENCODING).cloned();
    // Opting out means "no compression", not "no decompression".
    let chosen = match opted_out {
        true => None,
        false => compress::negotiate(policy, original.as_ref().and_then(|v| v.to_str().ok())),
    };
    let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    else {
        return Ok(());
    };
    m.adjust_level(0);
    m.adjust_decompression(policy.decompress);
    if let Some((alg, level)) = chosen {
        // brotli is tollgate's own encoder (see compress::BrotliStream); the module only
        // decompresses for it.
        if alg != Algorithm::Brotli {
            m.adjust_algorithm_level(alg, level);
        }
        ctx.compress = Some(alg);
        ctx.compress_level = level;
    }
    let for_module = compress::module_accept_encoding(
        chosen.map(|(a, _)| a),
        original.as_ref().and_then(|v| v.to_str().ok()),
    );
    if chosen.is_some() || policy.decompress {
        let req = session.req_header_mut();
        if for_module.is_empty() {
            req.remove_header(&http::header::ACCEPT_ENCODING);
        } else {
            req.insert_header(http::header::ACCEPT_ENCODING, for_module)?;
        }
        ctx.client_accept_encoding = Some(original);
    }
    Ok(())
}

/// The key a `consistent_hash` group hashes for this request (empty for other balances).
fn balance_key(
    session: &Session,
    caller: Option<&crate::tenant::Caller>,
    config: &RuntimeConfig,
    group: &UpstreamGroup,
) -> Vec<u8> {
    use crate::config::model::Balance;
    use crate::upstream::HashOn;
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
            .map(|ip| ip.to_string().into_bytes())
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

#[cfg(test)]
mod tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_plain_and_encoded() {
        for bad in [
            "/api/../admin",
            "/./x",
            "/a/..",
            "/api/%2e%2e/admin",
            "/api/%2E./x",
            "/x/.%2E",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/",
            "/api/v1",
            "/a..b/",
            "/.well-known/x",
            "/file.txt",
            "/%2ex",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
