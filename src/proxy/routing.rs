//! Which route serves a request, and the requests no route may serve: paths with dot
//! segments (400) and paths no route matches (404). The matching rules live in
//! [`crate::route`].

use super::ctx::RequestCtx;
use super::errors::{self, ProxyError};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// The host the client asked for: `Host` (HTTP/1.1) or the URI authority (HTTP/2, absolute-form).
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// `early_request_filter`: match the route (kept in the ctx for every later phase).
pub fn route(session: &Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    ctx.route = ctx
        .config
        .routes
        .find(request_host(req), req.uri.path())
        .cloned();
}

/// `request_filter`: answer 400 for a path with dot segments and 404 when no route matched.
/// `Ok(true)`: answered.
pub async fn refuse_unroutable(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora_core::Result<bool> {
    let path = session.req_header().uri.path();
    let (err, msg) = if has_dot_segment(path) {
        let msg = "the request path contains `.` or `..` segments".to_string();
        (ProxyError::BadRequest, msg)
    } else if ctx.route.is_none() {
        let msg = format!("no route matches host and path `{path}`");
        (ProxyError::RouteNotFound, msg)
    } else {
        return Ok(false);
    };
    ctx.own_error = Some(err.code());
    errors::respond(session, ctx, err, &msg).await?;
    Ok(true)
}

/// Paths with dot segments would let `/api/../admin` match the `/api/` route while the upstream
/// serves `/admin`: such requests are refused rather than guessed at. Percent-encoded dots
/// (`%2e`) count too, since many upstreams decode before resolving.
fn has_dot_segment(path: &str) -> bool {
    const DOTS: [&str; 6] = [".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"];
    path.split('/')
        .any(|seg| seg.len() <= 6 && DOTS.iter().any(|d| seg.eq_ignore_ascii_case(d)))
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
