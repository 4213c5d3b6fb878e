//! The floor for the load benchmark: a bare Pingora pass-through proxy (one upstream, no
//! routing, no headers, no metrics) built with the same crates and profile as tollgate.
//! `benches/load.sh` runs it as the `pingora` target, so the report shows how much of the gap
//! to nginx is Pingora's own and how much is tollgate's.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM THREADS`, e.g. `bare_pingora 127.0.0.1:8090 127.0.0.1:3000 1`.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _c: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (&args[1], &args[2]);
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let upstream: std::net::SocketAddr = upstream.parse().expect("upstream IP:port");
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    let bare = Bare {
        peer: HttpPeer::new(upstream, false, String::new()),
    };
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, bare);
    svc.add_tcp(listen);
    server.add_service(svc);
    server.bootstrap();
    server.run_forever();
}
