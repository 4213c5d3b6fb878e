//! Upstream groups: their endpoints, how one is picked, and the Pingora peer that reaches it.
//!
//! Everything expensive (DNS resolution, timeout and TLS options) is done once when the config
//! is compiled; per request a group hands out a clone of a prepared [`HttpPeer`].

use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Timeouts of a group, resolved from config.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Between reads of the upstream response.
    pub read: Duration,
    /// Between writes of the request.
    pub write: Duration,
    /// Idle keep-alive connection lifetime in the pool.
    pub idle: Duration,
}

/// TLS settings of a group.
#[derive(Debug, Clone)]
pub struct Tls {
    /// SNI override; `None` uses each endpoint's host.
    pub sni: Option<String>,
    /// Verify certificate chain and host name.
    pub verify: bool,
}

/// One endpoint of a group.
#[derive(Debug)]
pub struct Endpoint {
    /// As written in the config (`host:port`): the label in logs and metrics.
    pub label: Arc<str>,
    peer: HttpPeer,
}

impl Endpoint {
    /// Prepare an endpoint: `host` is what was written (used for SNI), `addr` its resolved address.
    pub fn new(
        label: String,
        host: &str,
        addr: SocketAddr,
        tls: Option<&Tls>,
        t: &Timeouts,
    ) -> Self {
        let sni = tls
            .map(|t| t.sni.clone().unwrap_or_else(|| host.to_string()))
            .unwrap_or_default();
        let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect * 2);
        o.read_timeout = Some(t.read);
        o.write_timeout = Some(t.write);
        o.idle_timeout = Some(t.idle);
        if let Some(tls) = tls {
            o.verify_cert = tls.verify;
            o.verify_hostname = tls.verify;
        }
        Endpoint {
            label: label.into(),
            peer,
        }
    }

    /// A peer for one request (a clone: Pingora takes ownership per attempt).
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// A named group of endpoints, balanced round-robin.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// Group name from the config.
    pub name: String,
    /// Its endpoints, never empty.
    pub endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl UpstreamGroup {
    /// A group over `endpoints` (must not be empty: validation guarantees it).
    pub fn new(name: String, endpoints: Vec<Endpoint>) -> Self {
        assert!(!endpoints.is_empty(), "upstream group without endpoints");
        UpstreamGroup {
            name,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Next endpoint in round-robin order.
    pub fn select(&self) -> &Endpoint {
        if self.endpoints.len() == 1 {
            return &self.endpoints[0];
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.endpoints[i % self.endpoints.len()]
    }
}
