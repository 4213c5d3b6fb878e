//! Names and addresses as the config writes them: a route's name, listen addresses and
//! upstream endpoints. Shared by validation (which reports what is wrong) and the compile
//! steps (which take what validation accepted).

use std::net::SocketAddr;

/// The name a route is known by: its `name:`, or `route-<index>`.
pub fn route_name(name: Option<&str>, index: usize) -> String {
    name.map(str::to_owned)
        .unwrap_or_else(|| format!("route-{index}"))
}

/// A listen address: `IP:port` (`0.0.0.0:8080`, `[::]:8080`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("bad address `{s}`: expected IP:port, like `0.0.0.0:8080` or `[::]:8080`")
    })
}

/// An upstream endpoint: `host:port` where host is an IP, `[v6]` or a DNS name.
pub fn parse_endpoint(s: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| {
        format!("bad address `{s}`: {why}; expected `host:port`, like `127.0.0.1:3000` or `api.example.com:443`")
    };
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad("port 0 is not a valid upstream port"));
        }
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(bad("missing `:port`"));
    };
    let port: u16 = match port.parse() {
        Ok(0) | Err(_) => return Err(bad(&format!("`{port}` is not a port (1-65535)"))),
        Ok(p) => p,
    };
    if host.contains(':') || host.starts_with('[') {
        return Err(bad("IPv6 addresses go in brackets, like `[::1]:3000`"));
    }
    check_hostname(host).map_err(|e| bad(&e))?;
    Ok((host.to_string(), port))
}

/// RFC 1123 host names (letters, digits, `-`, dots), as used in endpoints, SNI and route hosts.
pub(super) fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err("a host name is 1 to 253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("`{label}` is not a valid host name label"));
        }
    }
    Ok(())
}
