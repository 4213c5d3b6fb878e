//! The Pingora `ProxyHttp` implementation, kept thin: each phase calls one function per
//! feature, in the order the features act. Features never call each other; they meet in
//! [`RequestCtx`] and the compiled config. Where each feature's request-time code lives:
//!
//! | module | job |
//! |---|---|
//! | [`routing`] | route match; 400 for dot segments, 404 for no route |
//! | [`caller`] | who is calling (when a route needs it) |
//! | [`limit`] | 401 for unknown keys, 429 over limits, RateLimit headers |
//! | [`streams`] | SSE streams and WebSockets: open count and duration |
//! | [`tokens`] | LLM token budgets (429 `policy: tokens`), usage read from answers, token metrics |
//! | [`caching`] | cache on/off, key, variance, store or not, stale, Cache-Status, invalidation |
//! | [`upstream`] | endpoint per attempt, retries and failover, provider adapter |
//! | [`headers`] | forwarding headers and hop-by-hop rules |
//! | [`compression`] | coding negotiation, compress or not, brotli, bytes reported |
//! | [`errors`] | tollgate's own JSON answers |
//! | [`crate::observe::request`] | timing headers, request metrics, access log |
//!
//! Phase order for one request (see Pingora's `proxy_trait.rs`): `new_ctx` (config snapshot)
//! -> `early_request_filter` -> `request_filter` (tollgate's own answers) -> the cache phases
//! (hits, stale and coalesced requests are served from there) -> `upstream_peer` ->
//! `upstream_request_filter` -> `upstream_response_filter` -> `response_cache_filter` ->
//! `response_filter` -> `response_body_filter` -> `logging`. Stale-while-revalidate refreshes
//! run the same phases as a background subrequest (`ctx.background`).

pub mod caching;
pub mod caller;
pub mod client_limits;
pub mod compression;
pub mod ctx;
pub mod errors;
pub mod headers;
pub mod limit;
pub mod routing;
pub mod shed;
pub mod streams;
pub mod tokens;
pub mod upstream;

use crate::config::RuntimeConfig;
use crate::fleet::keys::KeyStore;
use crate::observe::access_log::AccessLog;
use crate::observe::{request, request_id};
use crate::ratelimit::Limiter;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// The proxy. Cheap to share: state lives in the swappable config, the limiter (which outlives
/// reloads, so counts survive them) and the per-request ctx.
pub struct Tollgate {
    config: Arc<ArcSwap<RuntimeConfig>>,
    limiter: Arc<Limiter>,
    access_log: Option<AccessLog>,
    /// API keys provisioned in Redis (`identity.key_store: redis`), when `redis:` is set.
    keys: Option<Arc<KeyStore>>,
}

impl Tollgate {
    /// A proxy serving whatever config is current in `config` (reloads swap it). With
    /// `access_log`, requests are logged as the current config's sampling says.
    pub fn new(
        config: Arc<ArcSwap<RuntimeConfig>>,
        limiter: Arc<Limiter>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Tollgate {
            config,
            limiter,
            access_log,
            keys: None,
        }
    }

    /// Also look up API keys the file does not hold in `keys` (when the config says
    /// `identity.key_store: redis`).
    pub fn with_key_store(mut self, keys: Arc<KeyStore>) -> Self {
        self.keys = Some(keys);
        self
    }
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
        ctx.request_id = request_id::accept_or_generate(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        routing::route(session, ctx);
        client_limits::apply_timeouts(session, ctx);
        compression::on_request(session, ctx)?;
        caller::identify(session, ctx, self.keys.as_deref()).await;
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let answered = client_limits::refuse_oversized(session, ctx).await?
            || routing::refuse_unroutable(session, ctx).await?
            || limit::enforce(session, ctx, self.limiter.as_ref()).await?
            || tokens::enforce(session, ctx, self.limiter.as_ref()).await?
            || shed::admit(session, ctx).await?;
        if !answered {
            client_limits::buffer_body(session, ctx).await?;
        }
        Ok(answered)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        tokens::request_body(ctx, body.as_ref());
        client_limits::count_body(ctx, body.as_ref())
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
        upstream::peer(session, ctx)
    }

    /// Replaces Pingora's default, keeping its safety (see [`upstream::after_error`]).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        upstream::after_error(peer, session, e, ctx, client_reused)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::forward(session, upstream_request, &ctx.request_id)?;
        compression::restore_client_coding(upstream_request, ctx)?;
        upstream::request(upstream_request, ctx)?;
        compression::fill_coding(session, upstream_request, ctx)?;
        tokens::upstream_request(upstream_request, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::response(session, upstream_response, ctx)?;
        compression::upstream_response(upstream_response, ctx)?;
        caching::invalidate_after_mutation(session, upstream_response, ctx);
        tokens::upstream_response(upstream_response, ctx);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        tokens::upstream_body(ctx, body.as_ref(), end_of_stream);
        Ok(None)
    }

    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        compression::before_upstream_modules(session, upstream_response, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        compression::response(session, upstream_response, ctx)?;
        headers::strip_response_hop_by_hop(upstream_response);
        if session.is_process_shutting_down() {
            // Draining: this answer is the connection's last, and says so (`Connection: close`).
            session.set_keepalive(None);
        }
        caching::add_status_headers(session, upstream_response, ctx)?;
        // The answer keeps the `Date` it came with (a hit's stored one, the origin's).
        if let Some(date) = crate::origin_date::date_to_keep(upstream_response) {
            crate::connections::keep_date(session.as_downstream(), date);
        }
        streams::on_response(upstream_response, ctx);
        tokens::from_cache(session, upstream_response, ctx);
        upstream_response.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        ctx.add_timing_headers(upstream_response)?;
        limit::response_headers(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        tokens::cached_body(ctx, body.as_ref(), end_of_stream);
        compression::body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        errors::fail_to_proxy(session, e, ctx).await
    }

    /// What Pingora's own error lines say about the request: method, path and host, with the
    /// query string left out (it carries tokens and keys often enough).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        errors::request_summary(session.req_header())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        caching::release_fill_lock(session, ctx);
        if ctx.background {
            caching::log_background(session, ctx);
            return;
        }
        upstream::ended(ctx, e);
        // One clock read times the request for the token metrics and the request's own.
        let ended = std::time::Instant::now();
        tokens::settle(ctx, self.limiter.as_ref(), ended).await;
        request::record(self.access_log.as_ref(), ctx.finished(session, e, ended));
    }
}
