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
    let req = session.req_header();
    let path = req.uri.path();
    let (err, msg) = if let Some(problem) = malformed(req) {
        (ProxyError::BadRequest, problem)
    } else if has_dot_segment(path) {
        let msg = "the request path contains `.` or `..` segments".to_string();
        (ProxyError::BadRequest, msg)
    } else if ctx.route.is_none() {
        let msg = format!("no route matches host and path `{path}`");
        (ProxyError::RouteNotFound, msg)
    } else {
        return Ok(false);
    };
    ctx.own_error = Some(err.code());
    if err == ProxyError::BadRequest {
        // What else this client sends on the connection cannot be trusted to be framed as it
        // says: answer, then close (as nginx and HAProxy do after a 400).
        session.set_keepalive(None);
    }
    errors::respond(session, ctx, err, &msg).await?;
    Ok(true)
}

/// Longest method accepted: the registered ones are at most 7 letters (`OPTIONS`, `CONNECT`),
/// WebDAV's at most 16; anything longer is garbage or an attack.
const MAX_METHOD_LEN: usize = 32;

/// What makes a request unsafe to route or forward, checked before anything reads it: a
/// missing, repeated or invalid Host, an invalid absolute-form authority, an over-long method,
/// repeated `Content-Length` lines. `None`: nothing.
fn malformed(req: &RequestHeader) -> Option<String> {
    if req.method.as_str().len() > MAX_METHOD_LEN {
        return Some(format!(
            "the method is longer than {MAX_METHOD_LEN} characters"
        ));
    }
    let hosts = req.headers.get_all(http::header::HOST);
    let mut hosts = hosts.iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("the request has more than one Host header".into());
    }
    match host {
        Some(h) => {
            let h = std::str::from_utf8(h.as_bytes()).unwrap_or("\u{fffd}");
            if let Some(why) = host_problem(h) {
                return Some(format!("invalid Host header: {why}"));
            }
        }
        // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/2 carries `:authority` in the URI;
        // HTTP/1.0 has none and is sent with the upstream's.
        None if req.version == http::Version::HTTP_11 && req.uri.authority().is_none() => {
            return Some("an HTTP/1.1 request needs a Host header".into());
        }
        None => {}
    }
    if let Some(a) = req.uri.authority() {
        if a.as_str().contains('@') {
            return Some("the request target's authority carries user information".into());
        }
        if let Some(why) = host_problem(a.as_str()) {
            return Some(format!("invalid authority in the request target: {why}"));
        }
    }
    if req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count()
        > 1
    {
        return Some("the request has more than one Content-Length header".into());
    }
    None
}

/// Why `v` is not `host [":" port]` as RFC 3986 writes them (a reg-name of unreserved,
/// percent-encoded and sub-delim characters, an IPv4 address, or an IPv6 literal in brackets).
fn host_problem(v: &str) -> Option<&'static str> {
    if v.is_empty() {
        return Some("it is empty");
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return Some("an IPv6 literal without its closing `]`");
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("not an IPv6 address between `[` and `]`");
        }
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return Some("text after the IPv6 literal"),
            },
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    };
    if let Some(p) = port {
        if !p.is_empty()
            && (p.len() > 5
                || !p.bytes().all(|b| b.is_ascii_digit())
                || p.parse::<u32>().map_or(true, |n| n > 65535))
        {
            return Some("the port is not a number from 0 to 65535");
        }
    }
    let reg_name_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
    if !host.bytes().all(reg_name_char) {
        return Some("characters a host name cannot have (spaces, `/`, `@`, ...)");
    }
    None
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
    use super::{has_dot_segment, host_problem};

    #[test]
    fn hosts_as_rfc_3986_writes_them() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a_b.internal",
        ] {
            assert_eq!(host_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a/../b",
            "a b",
            "a@b",
            "example.com:99999",
            "example.com:8o",
            "[::1",
            "[zz]",
            "[::1]x",
            "a\tb",
        ] {
            assert!(host_problem(bad).is_some(), "{bad:?}");
        }
    }

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
