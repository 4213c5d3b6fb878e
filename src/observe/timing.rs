//! Timing headers (`X-Response-Time`, `Server-Timing`) on every answer: proxied ones in
//! `response_filter` and tollgate's own (401, 404, 429, 502, 504, ...) where they are written,
//! so a client sees the same header whoever answered.

use crate::proxy::ctx::RequestCtx;
use pingora_http::ResponseHeader;

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Add the timing headers the config asks for, measured from the request's start.
pub fn add_headers(h: &mut ResponseHeader, ctx: &RequestCtx) -> pingora_core::Result<()> {
    let obs = &ctx.config.source.observability;
    if !(obs.response_time_header || obs.server_timing_header) {
        return Ok(());
    }
    let total = millis(ctx.started.elapsed());
    if obs.response_time_header {
        h.insert_header("x-response-time", format!("{total:.3}ms"))?;
    }
    if obs.server_timing_header {
        let value = match ctx.upstream.ttfb() {
            Some(u) => format!("upstream;dur={:.3}, total;dur={total:.3}", millis(u)),
            None => format!("total;dur={total:.3}"),
        };
        h.insert_header("server-timing", value)?;
    }
    Ok(())
}
