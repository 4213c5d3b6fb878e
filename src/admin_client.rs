//! A tiny blocking HTTP/1.1 client for tollgate's own admin listener, used by the commands that
//! talk to a running proxy: `tollgate probe` (a container HEALTHCHECK with no curl in the image)
//! and `tollgate explain --live`. Loopback only, one request per connection, no TLS: the admin
//! listener speaks plain HTTP on a private address.

use std::io::{Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// An answer of the admin listener.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Where to connect for a listener bound to `addr`: an unspecified address (`0.0.0.0`, `[::]`)
/// is reached on loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `GET path_and_query` on the admin listener at `addr`, the whole exchange bounded by
/// `timeout`. Errors say what failed, naming the address.
pub fn get(addr: SocketAddr, path_and_query: &str, timeout: Duration) -> Result<Answer, String> {
    let addr = reachable(addr);
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        format!("cannot reach the admin listener {addr} (is tollgate running?): {e}")
    })?;
    conn.set_write_timeout(Some(left())).ok();
    write!(
        conn,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    // Read until the body's Content-Length is in (the admin listener may keep the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        conn.set_read_timeout(Some(left())).ok();
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("no answer from {addr} within {timeout:?}: {e}"))?;
        raw.extend_from_slice(&buf[..n]);
        if n == 0 {
            break;
        }
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]);
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|len| raw.len() - end - 4 >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected answer from {addr}: {:?}", head.lines().next()))?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// `tollgate probe`: asks the admin listener at `admin` (`HOST:PORT`) for `path` and succeeds
/// on a 200 only. The message says what was seen either way.
pub fn probe(admin: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let addr = admin
        .to_socket_addrs()
        .map_err(|e| format!("--admin {admin:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--admin {admin:?}: no address"))?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let answer = get(addr, &path, timeout)?;
    // One line, whatever the listener's formatting.
    let body: String = answer
        .body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    if answer.status == 200 {
        Ok(format!("{admin}{path}: 200 {body}"))
    } else {
        Err(format!("{admin}{path}: {} {body}", answer.status))
    }
}
