//! Long-lived answers: server-sent event streams and WebSocket connections, counted while
//! open (`tollgate_streams_active{kind}`) and timed when they end
//! (`tollgate_stream_duration_seconds{kind}`). An LLM app's chat streams and agent sockets
//! live here, not in the request latency histogram's short buckets.

use super::ctx::RequestCtx;
use crate::observe::metrics;
use pingora_http::ResponseHeader;
use std::time::Instant;

/// Counts one open stream; dropping it (the request's ctx going away, however the request
/// ended) closes the count and observes the duration.
#[derive(Debug)]
pub struct StreamGuard {
    kind: &'static str,
    opened: Instant,
}

impl StreamGuard {
    fn open(kind: &'static str) -> StreamGuard {
        metrics::STREAMS_ACTIVE.with_label_values(&[kind]).inc();
        StreamGuard {
            kind,
            opened: Instant::now(),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::STREAMS_ACTIVE
            .with_label_values(&[self.kind])
            .dec();
        metrics::STREAM_DURATION_SECONDS
            .with_label_values(&[self.kind])
            .observe(self.opened.elapsed().as_secs_f64());
    }
}

/// `response_filter`: a `101 Switching Protocols` to a WebSocket upgrade, or a
/// `text/event-stream` answer, opens a stream.
pub fn on_response(resp: &ResponseHeader, ctx: &mut RequestCtx) {
    if ctx.stream.is_some() {
        return;
    }
    let kind = if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        "websocket"
    } else if resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
    {
        "sse"
    } else {
        return;
    };
    ctx.stream = Some(StreamGuard::open(kind));
}
