//! What a client may send, and how slowly: the request target's length (`414`), the header
//! fields' size and count (`431`), a route's largest body (`413`, at once for a declared
//! `Content-Length`, when a chunked body passes it otherwise), the idle time between requests
//! on a kept-alive connection, the wait for each piece of a body and the slowest rate a body
//! may arrive at (`408`, the client's fault: never counted against an upstream).

use super::ctx::RequestCtx;
use super::errors::{self, ProxyError};
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

pub use crate::config::ClientLimits;

/// The Pingora error type of a body cut for passing the route's `max_request_body`.
pub const BODY_TOO_LARGE: &str = "request_body_too_large";

/// The Pingora error type of a body cut for arriving slower than `client_body_min_rate`.
pub const BODY_TOO_SLOW: &str = "request_body_too_slow";

/// `early_request_filter`: the connection's keep-alive idle time and body read timeout.
pub fn apply_timeouts(session: &mut Session, ctx: &RequestCtx) {
    let limits = &ctx.config.startup.server.client;
    session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
    session.set_read_timeout(Some(limits.body_timeout));
}

/// The request's declared body length (`Content-Length`), when it has a valid one.
fn declared_length(req: &pingora_http::RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `request_filter`: refuse an over-long target (414), too many or too large header fields
/// (431), a declared body over the route's limit (413). `Ok(true)`: answered.
pub async fn refuse_oversized(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora_core::Result<bool> {
    let limits = ctx.config.startup.server.client;
    let req = session.req_header();
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let declared = declared_length(req);
    let max_body = ctx.route.as_ref().and_then(|r| r.max_request_body);
    let (err, msg) = if target > limits.max_uri_length {
        let msg = format!(
            "the request target is {target} bytes, more than the {} allowed",
            limits.max_uri_length
        );
        (ProxyError::UriTooLong, msg)
    } else if req.headers.len() > limits.max_headers {
        let msg = format!(
            "the request has {} header fields, more than the {} allowed",
            req.headers.len(),
            limits.max_headers
        );
        (ProxyError::HeadersTooLarge, msg)
    } else if header_bytes > limits.max_header_size {
        let msg = format!(
            "the request header fields are {header_bytes} bytes, more than the {} allowed",
            limits.max_header_size
        );
        (ProxyError::HeadersTooLarge, msg)
    } else if let (Some(len), Some(max)) = (declared, max_body) {
        if len <= max {
            return Ok(false);
        }
        let msg = format!("the request body is {len} bytes, more than this route's {max}");
        (ProxyError::BodyTooLarge, msg)
    } else {
        return Ok(false);
    };
    ctx.own_error = Some(err.code());
    // The rest of what this client sends is not read: close after answering.
    session.set_keepalive(None);
    errors::respond(session, ctx, err, &msg).await?;
    Ok(true)
}

/// `request_filter`, last: on a route with `request_buffering`, read a body whose declared
/// `Content-Length` fits in full before any upstream is chosen, so that a slow client holds no
/// upstream connection and its stall is answered `408` with nothing sent upstream. The body
/// waits in Pingora's retry buffer, which the first attempt sends (and a retry sends again).
/// Not done for a body without a declared length (its size is known only at its end, and the
/// part read could not be sent if it outgrew the buffer) nor for `Expect: 100-continue` (the
/// client waits for the upstream's `100` before sending it).
pub async fn buffer_body(session: &mut Session, ctx: &mut RequestCtx) -> pingora_core::Result<()> {
    let Some(max) = ctx.route.as_ref().and_then(|r| r.request_buffering) else {
        return Ok(());
    };
    let req = session.req_header();
    if req.headers.contains_key(http::header::EXPECT) {
        return Ok(());
    }
    let declared = declared_length(req);
    match declared {
        Some(len) if len > 0 && len <= max => {}
        _ => return Ok(()),
    }
    session.as_mut().enable_retry_buffering();
    // Counted apart: the body filter counts these bytes again when they are sent on.
    let mut read = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                read += chunk.len() as u64;
                check_rate(ctx, read)?;
            }
            Ok(None) => return Ok(()),
            Err(mut e) => {
                // A stall or a reset while reading: the client's doing, never an endpoint's.
                e.as_down();
                return Err(e);
            }
        }
    }
}

/// `request_body_filter`: count the body against the route's limit (a body without a declared
/// length is only known too large as it passes it) and against the minimum rate.
pub fn count_body(ctx: &mut RequestCtx, chunk: Option<&bytes::Bytes>) -> pingora_core::Result<()> {
    let Some(n) = chunk.map(|c| c.len() as u64).filter(|&n| n > 0) else {
        return Ok(());
    };
    ctx.body_bytes += n;
    if let Some(max) = ctx.route.as_ref().and_then(|r| r.max_request_body) {
        if ctx.body_bytes > max {
            ctx.own_error = Some(ProxyError::BodyTooLarge.code());
            // The client's fault: marked as from downstream, so no endpoint is blamed for it.
            return Err(Error::create(
                ErrorType::Custom(BODY_TOO_LARGE),
                ErrorSource::Downstream,
                Some(
                    format!("the request body passed this route's max_request_body ({max} bytes)")
                        .into(),
                ),
                None,
            ));
        }
    }
    check_rate(ctx, ctx.body_bytes)
}

/// `received` body bytes against `server.client_body_min_rate`: the body may take `client_body_timeout`
/// plus a second per `min_rate` bytes received, from the start of the request. A body that
/// trickles in just inside `client_body_timeout` per piece is cut here (the client's fault:
/// `408`, no endpoint blamed).
fn check_rate(ctx: &RequestCtx, received: u64) -> pingora_core::Result<()> {
    let limits = &ctx.config.startup.server.client;
    if limits.body_min_rate == 0 {
        return Ok(());
    }
    let allowed = limits.body_timeout.as_secs_f64() + received as f64 / limits.body_min_rate as f64;
    let took = ctx.started.elapsed().as_secs_f64();
    if took <= allowed {
        return Ok(());
    }
    Err(Error::create(
        ErrorType::Custom(BODY_TOO_SLOW),
        ErrorSource::Downstream,
        Some(
            format!(
                "{received} body bytes in {took:.1}s: slower than server.client_body_min_rate ({} bytes/s)",
                limits.body_min_rate
            )
            .into(),
        ),
        None,
    ))
}
