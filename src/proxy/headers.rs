//! Header rules of a well-behaved intermediary: X-Forwarded-*, and RFC 9110 §7.6.1 hop-by-hop
//! removal (Connection, the fields it names, Keep-Alive, Proxy-Connection, TE, Upgrade).
//!
//! Framing (`Transfer-Encoding`, `Content-Length`) is left to Pingora, which re-frames each hop
//! itself; removing it here would break body forwarding.

use pingora_http::{RequestHeader, ResponseHeader};

/// Hop-by-hop fields that are never forwarded (besides those the Connection header names).
const ALWAYS_HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection"];

/// Field names listed in a `Connection` header, lower-cased (`close`, `keep-alive` included).
fn connection_tokens(value: Option<&http::HeaderValue>) -> Vec<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Remove hop-by-hop fields from a request going upstream. An upgrade request (WebSocket) keeps
/// `Connection: upgrade` and `Upgrade`: they are the handshake itself.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader, is_upgrade: bool) {
    let tokens = connection_tokens(req.headers.get(http::header::CONNECTION));
    for t in &tokens {
        if is_upgrade && t == "upgrade" {
            continue;
        }
        if t != "close" && t != "keep-alive" && t != "upgrade" && !is_protected(t) {
            req.remove_header(t.as_str());
        }
    }
    for h in ALWAYS_HOP_BY_HOP {
        req.remove_header(*h);
    }
    if !is_upgrade {
        req.remove_header(&http::header::UPGRADE);
        req.remove_header(&http::header::CONNECTION);
    }
    // `TE: trailers` is meaningful end to end (gRPC); any other TE is hop-by-hop.
    if req
        .headers
        .get(http::header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        req.remove_header(&http::header::TE);
    }
}

/// Remove hop-by-hop fields from an upstream response. Pingora writes its own `Connection`
/// header downstream, so only the fields it names and the fixed list are removed here.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let tokens = connection_tokens(resp.headers.get(http::header::CONNECTION));
    for t in &tokens {
        if t != "close" && t != "keep-alive" && !is_protected(t) {
            resp.remove_header(t.as_str());
        }
    }
    for h in ALWAYS_HOP_BY_HOP {
        resp.remove_header(*h);
    }
    if resp.headers.contains_key(http::header::UPGRADE) {
        resp.remove_header(&http::header::UPGRADE);
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
        let value = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        let _ = req.insert_header("x-forwarded-for", value);
    }
    let _ = req.insert_header("x-forwarded-proto", "http");
    match host {
        Some(h) => {
            let _ = req.insert_header("x-forwarded-host", h);
        }
        None => {
            req.remove_header("x-forwarded-host");
        }
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
