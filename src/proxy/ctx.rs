//! Per-request state shared by the proxy phases.

use crate::config::{Route, RuntimeConfig};
use crate::observe::metrics::InFlight;
use crate::observe::request::{self, Finished};
use crate::proxy::limit::Applied;
use crate::tenant::Caller;
use crate::upstream::attempts::Attempts;
use pingora_core::Error;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What one request carries from phase to phase.
pub struct RequestCtx {
    /// The config snapshot this request runs on, taken once in `new_ctx`: a reload never
    /// changes a request half way.
    pub config: Arc<RuntimeConfig>,
    /// The matched route, once `early_request_filter` has run (None: no route, 404).
    pub route: Option<Arc<Route>>,
    /// The request id sent upstream and back to the client.
    pub request_id: String,
    /// Who is calling (set on rate-limited routes).
    pub caller: Option<Caller>,
    /// The caller presented an API key no tenant owns (and config rejects those).
    pub unknown_key: bool,
    /// The rate-limit decision, for the response headers.
    pub limit: Option<Applied>,
    /// The upstream attempts: endpoints tried, the attempt under way, its timing.
    pub upstream: Attempts,
    /// When the request started (ctx creation, right after the request header was read).
    pub started: Instant,
    /// The same moment on the wall clock, for the access log.
    pub started_at: SystemTime,
    /// The coding negotiated for this response (compression routes only).
    pub compress: Option<pingora_core::protocols::http::compression::Algorithm>,
    /// Its level.
    pub compress_level: u32,
    /// tollgate's own brotli encoder for this response (brotli is not left to Pingora's module).
    /// Boxed: the encoder state is kilobytes, and the context lives inside every request's
    /// future, which Pingora moves (copies) into a box per request.
    pub brotli: Option<Box<crate::compress::BrotliStream>>,
    /// Compression happens before the cache (this request fills a cache entry on a route that
    /// compresses): the stored object is the encoded variant.
    pub compress_upstream: bool,
    /// The upstream response could be compressed for some client: its entry varies by coding.
    pub upstream_compressible: bool,
    /// The client's `Accept-Encoding`, when it was rewritten for the compression module: it is
    /// restored on the upstream request so the upstream sees what the client sent.
    pub client_accept_encoding: Option<Option<http::HeaderValue>>,
    /// The error code when tollgate answered with an error of its own (404, 400, 401, 429).
    pub own_error: Option<&'static str>,
    /// This is a background stale-while-revalidate refresh, not a client's request.
    pub background: bool,
    /// The route's `max_in_flight` slot this request holds (given back when the ctx drops).
    pub in_flight_slot: Option<super::shed::Slot>,
    /// With every circuit open (`fail_fast`): seconds until the first lets a probe through.
    pub circuit_retry_after: Option<u64>,
    /// Request body bytes read so far (counted on routes with `max_request_body`).
    pub body_bytes: u64,
    /// What this request's cache entry is (scope, host, path, query): set when the route
    /// caches and the request uses the cache.
    pub cache_tag: Option<crate::cache::storage::EntryTag>,
    /// The upstream response was found storable.
    pub cache_stored: bool,
    /// Why the cache was not used or the response not stored (`Cache-Status` detail).
    pub cache_detail: Option<&'static str>,
    /// The status of the upstream error that made a stale response be served (0: no status).
    pub cache_stale_error: Option<u16>,
    /// What the cache did, once the response started.
    pub cache_outcome: Option<crate::cache::status::Outcome>,
    /// Which tier the cache lookups found the entry in, and whether this request holds the
    /// fleet fill lock (shared with the cache key).
    pub cache_note: Option<std::sync::Arc<crate::cache::shared::LookupNote>>,
    /// The response came from the fleet's shared tier (a `shared_hit`).
    pub cache_shared_hit: bool,
    /// A POST's body digest, when the route keys its cache on bodies (boxed: rare).
    pub cache_body_digest: Option<Box<[u8; 32]>>,
    /// This request's order of the route's groups (`group_balance: round_robin`); `None`: the
    /// route's order.
    pub groups: Option<std::sync::Arc<[std::sync::Arc<crate::upstream::UpstreamGroup>]>>,
    /// An open SSE stream or WebSocket, counted until the request ends.
    pub stream: Option<super::streams::StreamGuard>,
    /// LLM token accounting (routes with `tokens:` only: boxed, so other requests do not
    /// carry its size).
    pub tokens: Option<Box<super::tokens::TokenCtx>>,
    /// Status of the last upstream response headers.
    pub upstream_status: Option<u16>,
    /// Counts this request in `tollgate_http_requests_in_flight` until dropped.
    _in_flight: InFlight,
}

impl RequestCtx {
    /// A fresh context on a config snapshot.
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        RequestCtx {
            config,
            route: None,
            request_id: String::new(),
            caller: None,
            unknown_key: false,
            limit: None,
            upstream: Attempts::new(crate::clock::mono_nanos()),
            started: Instant::now(),
            started_at: SystemTime::now(),
            own_error: None,
            in_flight_slot: None,
            circuit_retry_after: None,
            body_bytes: 0,
            compress: None,
            compress_level: 0,
            brotli: None,
            compress_upstream: false,
            upstream_compressible: false,
            client_accept_encoding: None,
            background: false,
            cache_tag: None,
            cache_stored: false,
            cache_detail: None,
            cache_stale_error: None,
            cache_outcome: None,
            cache_note: None,
            cache_shared_hit: false,
            cache_body_digest: None,
            tokens: None,
            stream: None,
            groups: None,
            upstream_status: None,
            _in_flight: InFlight::start(),
        }
    }

    /// The route name for labels and logs (`none` when no route matched).
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.name)
    }

    /// Add the timing headers the config asks for to an answer, proxied or tollgate's own.
    pub fn add_timing_headers(&self, h: &mut ResponseHeader) -> pingora_core::Result<()> {
        request::add_timing_headers(h, &self.config.observe, self.started, self.upstream.ttfb())
    }

    /// What the request's metrics and log line say, now that it has ended with error `e`
    /// (if any). Moves the request id out.
    pub fn finished<'a>(
        &'a mut self,
        session: &'a Session,
        e: Option<&'a Error>,
        ended: std::time::Instant,
    ) -> Finished<'a> {
        let request_id = std::mem::take(&mut self.request_id);
        let ctx = &*self;
        let req = session.req_header();
        let caller = ctx.caller.as_ref();
        Finished {
            settings: &ctx.config.observe,
            started: ctx.started,
            ended,
            started_at: ctx.started_at,
            request_id,
            route: ctx.route.as_ref().map(|r| &r.name),
            method: &req.method,
            path: req.uri.path(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            bytes: session.body_bytes_sent(),
            tenant: caller.and_then(|c| c.tenant.as_ref()),
            tier: caller.and_then(|c| c.tier.as_ref()).map(|t| &t.name),
            cache: ctx.cache_outcome.map(|o| {
                if ctx.cache_shared_hit {
                    crate::cache::status::SHARED_HIT
                } else {
                    o.label()
                }
            }),
            ratelimit: match &ctx.limit {
                None => "none",
                Some(a) if a.decision.allowed => "allowed",
                Some(a) if a.shadow => "shadow_limited",
                Some(_) => "limited",
            },
            upstream: ctx.upstream.endpoint_label(),
            attempts: ctx.upstream.count(),
            upstream_ttfb: ctx.upstream.ttfb(),
            error: e,
            own_error: ctx.own_error,
            compression: super::compression::report(session, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context is part of every request's future, which Pingora copies into a box when
    /// the request starts: a large member (an encoder state inline) costs every request.
    #[test]
    fn the_request_context_stays_small() {
        let size = std::mem::size_of::<RequestCtx>();
        assert!(size <= 768, "RequestCtx is {size} bytes");
    }
}
