//! Semantic checks over a parsed [`Config`]: every problem is collected, none stops the others.

use super::error::ConfigError;
use super::model::Config;
use super::parse::is_placeholder;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Check everything that serde cannot: addresses, references between sections, duplicates.
pub fn validate(config: &Config, upstream_names: &[String], errors: &mut Vec<ConfigError>) {
    for (i, l) in config.listen.iter().enumerate() {
        let path = if config.listen.len() == 1 {
            "listen".to_string()
        } else {
            format!("listen[{i}]")
        };
        if let Err(e) = parse_listen(l) {
            errors.push(ConfigError::at(path, e));
        }
    }
    if config.listen.is_empty() {
        errors.push(ConfigError::at(
            "listen",
            "at least one listen address is required",
        ));
    }
    match parse_listen(&config.admin.listen) {
        Err(e) => errors.push(ConfigError::at("admin.listen", e)),
        Ok(admin) => {
            // Same port on the same or a wildcard address: the two listeners cannot both bind.
            let clash = |l: &SocketAddr| {
                l.port() == admin.port()
                    && (l.ip() == admin.ip()
                        || l.ip().is_unspecified()
                        || admin.ip().is_unspecified())
            };
            if let Some(l) = config
                .listen
                .iter()
                .filter_map(|l| parse_listen(l).ok())
                .find(clash)
            {
                errors.push(ConfigError::at(
                    "admin.listen",
                    format!("`{admin}` overlaps the proxy listen address `{l}`: the admin listener needs its own port"),
                ));
            }
        }
    }
    if config.server.threads == 0 || config.server.threads > 1024 {
        errors.push(ConfigError::at(
            "server.threads",
            "must be between 1 and 1024",
        ));
    }

    for (name, group) in &config.upstreams {
        let base = format!("upstreams.{name}");
        if let Err(e) = check_name(name) {
            errors.push(ConfigError::at(
                &base,
                format!("bad upstream name `{name}`: {e}"),
            ));
        }
        if group.endpoints.is_empty() {
            errors.push(ConfigError::at(
                format!("{base}.endpoints"),
                format!("upstream group `{name}` has no endpoints: list at least one `host:port`"),
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, ep) in group.endpoints.iter().enumerate() {
            let path = format!("{base}.endpoints[{i}]");
            if let Err(e) = parse_endpoint(ep) {
                errors.push(ConfigError::at(&path, e));
            }
            if let Some(first) = seen.insert(ep.as_str(), i) {
                errors.push(ConfigError::at(
                    &path,
                    format!("duplicate endpoint `{ep}` (already at endpoints[{first}])"),
                ));
            }
        }
        let t = &group.timeouts;
        for (key, d) in [
            ("connect", t.connect),
            ("read", t.read),
            ("write", t.write),
            ("idle", t.idle),
        ] {
            if d.get().is_zero() {
                errors.push(ConfigError::at(
                    format!("{base}.timeouts.{key}"),
                    "must be greater than 0s",
                ));
            }
        }
        if let Some(tls) = &group.tls {
            if let Some(sni) = &tls.sni {
                if let Err(e) = check_hostname(sni) {
                    errors.push(ConfigError::at(
                        format!("{base}.tls.sni"),
                        format!("bad SNI `{sni}`: {e}"),
                    ));
                }
            }
        }
    }
    let mut names_seen: HashMap<&str, usize> = HashMap::new();
    for name in upstream_names {
        *names_seen.entry(name).or_default() += 1;
    }

    let mut route_names: HashMap<String, usize> = HashMap::new();
    let mut matches: HashMap<(Option<String>, &str), usize> = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        if is_placeholder(r) {
            continue;
        }
        let base = format!("routes[{i}]");
        let name = route_name(r.name.as_deref(), i);
        if let Err(e) = check_name(&name) {
            errors.push(ConfigError::at(
                format!("{base}.name"),
                format!("bad route name `{name}`: {e}"),
            ));
        }
        if let Some(first) = route_names.insert(name.clone(), i) {
            errors.push(ConfigError::at(
                format!("{base}.name"),
                format!("duplicate route name `{name}` (already used by routes[{first}])"),
            ));
        }
        if !upstream_names.iter().any(|u| u == &r.upstream) {
            let known: Vec<&str> = upstream_names.iter().map(String::as_str).collect();
            errors.push(ConfigError::at(
                format!("{base}.upstream"),
                format!(
                    "unknown upstream `{}` (defined upstreams: {})",
                    r.upstream,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let prefix = r.matcher.path_prefix.as_str();
        if !prefix.starts_with('/') {
            errors.push(ConfigError::at(
                format!("{base}.match.path_prefix"),
                format!("path prefix `{prefix}` must start with `/`"),
            ));
        }
        let host = r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if let Err(e) = check_hostname(bare) {
                errors.push(ConfigError::at(
                    format!("{base}.match.host"),
                    format!("bad host `{h}`: {e} (write `api.example.com` or `*.example.com`)"),
                ));
            }
        }
        if let Some(first) = matches.insert((host, prefix), i) {
            errors.push(ConfigError::at(
                format!("{base}.match"),
                format!("same host and path_prefix as routes[{first}]: this route could never be chosen"),
            ));
        }
    }
}

/// The name a route is known by: its `name:`, or `route-<index>`.
pub fn route_name(name: Option<&str>, index: usize) -> String {
    name.map(str::to_owned)
        .unwrap_or_else(|| format!("route-{index}"))
}

/// Names end up in metrics labels and log fields: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("names must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err("use letters, digits, `-`, `_` and `.` only".into());
    }
    Ok(())
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
fn check_hostname(h: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("127.0.0.1:3000").unwrap(),
            ("127.0.0.1".into(), 3000)
        );
        assert_eq!(parse_endpoint("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(
            parse_endpoint("api.example.com:443").unwrap(),
            ("api.example.com".into(), 443)
        );
        assert!(parse_endpoint("127.0.0.1")
            .unwrap_err()
            .contains("missing `:port`"));
        assert!(parse_endpoint("host:99999")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_endpoint("bad host:80")
            .unwrap_err()
            .contains("bad address"));
        assert!(parse_endpoint("::1:80").unwrap_err().contains("brackets"));
    }

    #[test]
    fn listen_addresses_need_an_ip() {
        assert!(parse_listen("0.0.0.0:8080").is_ok());
        assert!(parse_listen("localhost:8080")
            .unwrap_err()
            .contains("expected IP:port"));
    }
}
