//! tollgate's own error responses: small JSON bodies that carry the request id, and the mapping
//! from Pingora errors to 4xx/5xx statuses.

use super::ctx::RequestCtx;
use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The errors tollgate answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches the host and path: 404.
    RouteNotFound,
    /// The request is malformed or unsafe to route: 400.
    BadRequest,
    /// The upstream refused, reset or could not be reached: 502.
    UpstreamUnreachable,
    /// The upstream did not connect or answer in time: 504.
    UpstreamTimeout,
    /// An API key that no tenant owns: 401.
    UnknownApiKey,
    /// A bug or an unexpected condition inside tollgate: 500.
    Internal,
    /// The route has `max_in_flight` requests in flight already: 503.
    Overloaded,
    /// Every endpoint of the route is open-circuited and the last group fails fast: 503.
    CircuitOpen,
    /// The request target is longer than `server.max_uri_length`: 414.
    UriTooLong,
    /// The header fields pass `server.max_header_size` or `max_headers`: 431.
    HeadersTooLarge,
    /// The body passes the route's `max_request_body`: 413.
    BodyTooLarge,
    /// The client was too slow sending its request body: 408.
    ClientTimeout,
}

impl ProxyError {
    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ProxyError::RouteNotFound => 404,
            ProxyError::BadRequest => 400,
            ProxyError::UpstreamUnreachable => 502,
            ProxyError::UpstreamTimeout => 504,
            ProxyError::UnknownApiKey => 401,
            ProxyError::Internal => 500,
            ProxyError::Overloaded | ProxyError::CircuitOpen => 503,
            ProxyError::UriTooLong => 414,
            ProxyError::HeadersTooLarge => 431,
            ProxyError::BodyTooLarge => 413,
            ProxyError::ClientTimeout => 408,
        }
    }

    /// Machine-readable code in the body's `error` field.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::BadRequest => "bad_request",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UnknownApiKey => "unknown_api_key",
            ProxyError::Internal => "internal_error",
            ProxyError::Overloaded => "overloaded",
            ProxyError::CircuitOpen => "upstream_circuit_open",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "request_headers_too_large",
            ProxyError::BodyTooLarge => "request_body_too_large",
            ProxyError::ClientTimeout => "client_timeout",
        }
    }

    /// Classify a Pingora error. `None`: the client is gone, nothing can be sent.
    pub fn from_pingora(e: &Error) -> Option<ProxyError> {
        use ErrorType::*;
        let from_upstream = matches!(e.esource(), ErrorSource::Upstream | ErrorSource::Unset);
        match e.etype() {
            HTTPStatus(400) => return Some(ProxyError::BadRequest),
            Custom(CIRCUIT_OPEN) => return Some(ProxyError::CircuitOpen),
            Custom(super::client_limits::BODY_TOO_LARGE) => return Some(ProxyError::BodyTooLarge),
            Custom(super::client_limits::BODY_TOO_SLOW) => return Some(ProxyError::ClientTimeout),
            ConnectTimedout | ReadTimedout | WriteTimedout if from_upstream => {
                return Some(ProxyError::UpstreamTimeout);
            }
            _ => {}
        }
        match e.esource() {
            ErrorSource::Upstream => Some(ProxyError::UpstreamUnreachable),
            ErrorSource::Downstream => match e.etype() {
                ReadTimedout => Some(ProxyError::ClientTimeout),
                WriteError | ReadError | ConnectionClosed => None,
                _ => Some(ProxyError::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                ConnectTimedout => Some(ProxyError::UpstreamTimeout),
                ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure => {
                    Some(ProxyError::UpstreamUnreachable)
                }
                _ => Some(ProxyError::Internal),
            },
        }
    }
}

/// The Pingora error type of a request refused because every circuit is open.
pub const CIRCUIT_OPEN: &str = "circuit_open";

/// The JSON body: `{"error":..,"status":..,"message":..,"request_id":..}`.
pub fn body(err: ProxyError, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({
        "error": err.code(),
        "status": err.status(),
        "message": message,
        "request_id": request_id,
    });
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

/// Write an error response (header and body) to the client.
pub async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    err: ProxyError,
    message: &str,
) -> pingora_core::Result<()> {
    let body = body(err, message, &ctx.request_id);
    let h = ResponseHeader::build(err.status(), Some(6))?;
    respond_with(session, ctx, h, body).await
}

/// Write a JSON response built elsewhere: `h` carries the status and any extra headers; the
/// content type, length, `Cache-Control: no-store`, the request id and the timing headers
/// are added here.
pub async fn respond_with(
    session: &mut Session,
    ctx: &RequestCtx,
    mut h: ResponseHeader,
    body: Bytes,
) -> pingora_core::Result<()> {
    let request_id = ctx.request_id.as_str();
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if !request_id.is_empty() {
        h.insert_header(crate::observe::request_id::HEADER, request_id)?;
    }
    ctx.add_timing_headers(&mut h)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    // tollgate's own small JSON answers go out as they are, whatever the route's compression.
    super::compression::no_compression_on_the_way_out(session);
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `fail_to_proxy`: answer a request that failed before its response started with a JSON
/// error (502, 504, 400, 500); after that, nothing more can be said to the client.
pub async fn fail_to_proxy(
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> pingora_proxy::FailToProxy {
    let kind = ProxyError::from_pingora(e);
    // The connection is closed after an error answer (`can_reuse_downstream: false`):
    // say so in the response, or a client may reuse it and meet a reset.
    session.set_keepalive(None);
    let code = match kind {
        // The response has started (error mid-body): nothing more can be said to the client.
        Some(k) if session.response_written().is_some() => k.status(),
        Some(k) => {
            // Refusals of tollgate's own are logged under their code, like those it answers
            // itself (not under the Pingora error type that carried them here).
            if matches!(
                k,
                ProxyError::ClientTimeout | ProxyError::BodyTooLarge | ProxyError::CircuitOpen
            ) {
                ctx.own_error = Some(k.code());
            }
            if ctx.request_id.is_empty() {
                ctx.request_id = crate::observe::request_id::generate();
            }
            let endpoint = ctx.upstream.endpoint_label().map_or("-", |l| &**l);
            let msg = match k {
                ProxyError::UpstreamTimeout => {
                    format!("upstream {endpoint} did not answer in time")
                }
                ProxyError::UpstreamUnreachable => {
                    format!("upstream {endpoint} could not be reached or failed")
                }
                ProxyError::BadRequest => "malformed request".to_string(),
                ProxyError::ClientTimeout => {
                    "the request body did not arrive in time (server.client_body_timeout, client_body_min_rate)"
                        .to_string()
                }
                ProxyError::BodyTooLarge => {
                    "the request body is larger than this route's max_request_body".to_string()
                }
                ProxyError::CircuitOpen => format!(
                    "every endpoint of this route is failing (circuits open): {}",
                    e.context
                        .as_ref()
                        .map_or(String::new(), |c| c.as_str().to_string())
                ),
                _ => "internal error".to_string(),
            };
            let sent = match k {
                // Retry when the first circuit lets a probe through.
                ProxyError::CircuitOpen => {
                    let wait = ctx.circuit_retry_after.unwrap_or(1).max(1);
                    let mut h = match ResponseHeader::build(k.status(), Some(6)) {
                        Ok(h) => h,
                        Err(_) => {
                            return pingora_proxy::FailToProxy {
                                error_code: 503,
                                can_reuse_downstream: false,
                            }
                        }
                    };
                    let _ = h.insert_header(http::header::RETRY_AFTER, wait.to_string());
                    respond_with(session, ctx, h, body(k, &msg, &ctx.request_id)).await
                }
                _ => respond(session, ctx, k, &msg).await,
            };
            if let Err(err) = sent {
                tracing::debug!("could not send error response: {err}");
            }
            k.status()
        }
        None => 0,
    };
    pingora_proxy::FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

/// A request as error lines name it: `GET /path?<redacted>, Host: example.com`. The query is
/// never written (API keys, signatures and tokens travel there), nor is any header but Host.
pub fn request_summary(req: &pingora_http::RequestHeader) -> String {
    let query = if req.uri.query().is_some() {
        "?<redacted>"
    } else {
        ""
    };
    let host = super::routing::request_host(req).unwrap_or_default();
    format!("{} {}{query}, Host: {host}", req.method, req.uri.path())
}

#[cfg(test)]
mod summary_tests {
    use super::request_summary;

    #[test]
    fn the_query_string_is_never_in_a_summary() {
        let mut req =
            pingora_http::RequestHeader::build("GET", b"/v1/x?api_key=s3cret&sig=abc", None)
                .unwrap();
        req.insert_header("host", "api.example.com").unwrap();
        let s = request_summary(&req);
        assert_eq!(s, "GET /v1/x?<redacted>, Host: api.example.com");
        let plain = pingora_http::RequestHeader::build("POST", b"/v1/y", None).unwrap();
        assert_eq!(request_summary(&plain), "POST /v1/y, Host: ");
    }
}
