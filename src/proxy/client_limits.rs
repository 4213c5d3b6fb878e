//! What a client may send, and how slowly: the request target's length (`414`), the header
//! fields' size and count (`431`), a route's largest body (`413`, at once for a declared
//! `Content-Length`, when a chunked body passes it otherwise), the idle time between requests
//! on a kept-alive connection, and the wait for each piece of a body (`408`, the client's
//! fault: never counted against an upstream).

use super::ctx::RequestCtx;
use super::errors::{self, ProxyError};
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

pub use crate::config::ClientLimits;

/// The Pingora error type of a body cut for passing the route's `max_request_body`.
pub const BODY_TOO_LARGE: &str = "request_body_too_large";

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
    loop {
        match session.read_request_body().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(mut e) => {
                // A stall or a reset while reading: the client's doing, never an endpoint's.
                e.as_down();
                return Err(e);
            }
        }
    }
}

/// `request_body_filter`: count a body without a declared length against the route's limit.
pub fn count_body(ctx: &mut RequestCtx, chunk: Option<&bytes::Bytes>) -> pingora_core::Result<()> {
    let Some(max) = ctx.route.as_ref().and_then(|r| r.max_request_body) else {
        return Ok(());
    };
    ctx.body_bytes += chunk.map_or(0, |c| c.len() as u64);
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
    Ok(())
}
