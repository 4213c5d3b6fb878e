//! Header rules of a well-behaved intermediary: X-Forwarded-*, and RFC 9110 §7.6.1 hop-by-hop
//! removal (Connection, the fields it names, Keep-Alive, Proxy-Connection, TE, Upgrade).
//!
//! Framing (`Transfer-Encoding`, `Content-Length`) is left to Pingora, which re-frames each hop
//! itself; removing it here would break body forwarding.

use pingora_http::{RequestHeader, ResponseHeader};

use http::header::{HeaderName, CONNECTION, TE, UPGRADE};

/// `upstream_request_filter`: what every forwarded request carries: hop-by-hop fields removed,
/// `X-Forwarded-*`, and the request id.
pub fn forward(
    session: &pingora_proxy::Session,
    req: &mut RequestHeader,
    request_id: &str,
) -> pingora_core::Result<()> {
    strip_request_hop_by_hop(req, session.is_upgrade_req());
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let host = super::routing::request_host(session.req_header());
    set_forwarded(req, client_ip, host);
    req.insert_header(crate::observe::request_id::HEADER, request_id)?;
    Ok(())
}

/// Hop-by-hop fields that are never forwarded (besides those the Connection header names).
/// Static names: removing by `&str` would parse and lower-case the name on every request.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The field names a `Connection` header lists for removal, lower-cased: all but `close`,
/// `keep-alive`, `upgrade` when `keep_upgrade`, and the framing fields Pingora must keep. The
/// usual values (`keep-alive`, `close`) allocate nothing: this runs on most requests and
/// answers.
fn listed_fields(value: &http::HeaderValue, keep_upgrade: bool) -> Vec<String> {
    let Ok(value) = value.to_str() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in value.split(',').map(str::trim) {
        let kept = t.is_empty()
            || t.eq_ignore_ascii_case("close")
            || t.eq_ignore_ascii_case("keep-alive")
            || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"));
        if !kept {
            let t = t.to_ascii_lowercase();
            if !is_protected(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// Remove hop-by-hop fields from a request going upstream. An upgrade request (WebSocket) keeps
/// `Connection: upgrade` and `Upgrade`: they are the handshake itself.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader, is_upgrade: bool) {
    // Most requests carry none of these: look before touching (removal also updates
    // Pingora's case-preserving name map).
    if let Some(conn) = req.headers.get(CONNECTION) {
        for t in listed_fields(conn, true) {
            req.remove_header(t.as_str());
        }
        if !is_upgrade {
            req.remove_header(&CONNECTION);
        }
    }
    for h in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        if req.headers.contains_key(h) {
            req.remove_header(h);
        }
    }
    if !is_upgrade && req.headers.contains_key(UPGRADE) {
        req.remove_header(&UPGRADE);
    }
    // `TE: trailers` is meaningful end to end (gRPC); any other TE is hop-by-hop.
    if req
        .headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        req.remove_header(&TE);
    }
}

/// Remove hop-by-hop fields from an upstream response. Pingora writes its own `Connection`
/// header downstream, so only the fields it names and the fixed list are removed here.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if let Some(conn) = resp.headers.get(CONNECTION) {
        for t in listed_fields(conn, false) {
            resp.remove_header(t.as_str());
        }
    }
    for h in [&KEEP_ALIVE, &PROXY_CONNECTION, &UPGRADE] {
        if resp.headers.contains_key(h) {
            resp.remove_header(h);
        }
    }
}

/// Framing fields stay even if a peer lists them in `Connection`: Pingora owns framing.
fn is_protected(name: &str) -> bool {
    matches!(name, "transfer-encoding" | "content-length" | "host")
}

/// Set `X-Forwarded-For` (appending the client address to any existing list),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` on a request going upstream.
pub fn set_forwarded(
    req: &mut RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    host: Option<&str>,
) {
    if let Some(ip) = client_ip {
        let mut value = String::with_capacity(48);
        if let Some(prev) = req
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            if !prev.trim().is_empty() {
                value.push_str(prev);
                value.push_str(", ");
            }
        }
        crate::textfmt::push_ip(&mut value, ip);
        // Names as static text: Pingora copies a `HeaderName` it is given into its case map,
        // and only borrows a `&'static str`.
        let _ = req.insert_header("x-forwarded-for", value);
    }
    let _ = req.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"));
    match host {
        Some(h) => {
            let _ = req.insert_header("x-forwarded-host", h);
        }
        None if req.headers.contains_key(&X_FORWARDED_HOST) => {
            req.remove_header(&X_FORWARDED_HOST);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn strips_connection_listed_and_fixed_fields() {
        let mut r = req(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-end-to-end", "kept"),
        ]);
        strip_request_hop_by_hop(&mut r, false);
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "proxy-connection",
            "te",
        ] {
            assert!(r.headers.get(gone).is_none(), "{gone} should be gone");
        }
        assert_eq!(r.headers.get("x-end-to-end").unwrap(), "kept");
    }

    #[test]
    fn upgrade_handshake_survives_and_te_trailers_is_kept() {
        let mut r = req(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        strip_request_hop_by_hop(&mut r, true);
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(r.headers.get("connection").unwrap(), "Upgrade");
        assert_eq!(r.headers.get("te").unwrap(), "trailers");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut r = req(&[("x-forwarded-for", "10.0.0.1")]);
        set_forwarded(
            &mut r,
            Some("127.0.0.1".parse().unwrap()),
            Some("example.com"),
        );
        assert_eq!(
            r.headers.get("x-forwarded-for").unwrap(),
            "10.0.0.1, 127.0.0.1"
        );
        assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(r.headers.get("x-forwarded-host").unwrap(), "example.com");
    }
}
