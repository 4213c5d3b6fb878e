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
        }
    }

    /// Classify a Pingora error. `None`: the client is gone, nothing can be sent.
    pub fn from_pingora(e: &Error) -> Option<ProxyError> {
        use ErrorType::*;
        let from_upstream = matches!(e.esource(), ErrorSource::Upstream | ErrorSource::Unset);
        match e.etype() {
            HTTPStatus(400) => return Some(ProxyError::BadRequest),
            ConnectTimedout | ReadTimedout | WriteTimedout if from_upstream => {
                return Some(ProxyError::UpstreamTimeout);
            }
            _ => {}
        }
        match e.esource() {
            ErrorSource::Upstream => Some(ProxyError::UpstreamUnreachable),
            ErrorSource::Downstream => match e.etype() {
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
    crate::observe::timing::add_headers(&mut h, ctx)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    // tollgate's own small JSON answers go out as they are, whatever the route's compression.
    no_compression_on_the_way_out(session);
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// This response is not compressed by Pingora's downstream module (decompression stays as
/// configured). Only effective before the module has seen the response header.
pub fn no_compression_on_the_way_out(session: &mut Session) {
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<pingora_core::modules::http::compression::ResponseCompression>()
    {
        if m.is_header_phase() {
            m.adjust_level(0);
        }
    }
}
