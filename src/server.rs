//! Assemble the Pingora server: the proxy service, the admin service and the config reloader.

use crate::admin::AdminApp;
use crate::config::RuntimeConfig;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics;
use crate::proxy::Tollgate;
use crate::ratelimit::{Limiter, LocalLimiter};
use crate::reload::Reloader;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::background_service;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Drops idle rate-limiter entries every few seconds, so memory follows active callers, and
/// publishes how many are held.
struct LimiterSweeper {
    limiter: Arc<Limiter>,
}

#[async_trait]
impl BackgroundService for LimiterSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let local = self.limiter.local();
                    local.sweep(crate::ratelimit::unix_nanos_now());
                    metrics::RATELIMIT_TRACKED_KEYS.set(local.len() as i64);
                    self.limiter.sweep_leases();
                    self.limiter.tokens().sweep();
                }
            }
        }
    }
}

/// Runs the active health checks of every upstream group that has one, each at its own
/// interval, on the groups of the current config (a reload brings new groups, checked at once).
struct HealthChecker {
    config: Arc<ArcSwap<RuntimeConfig>>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use std::collections::HashMap;
        // Keyed by the group's address: groups of a replaced config are dropped from it.
        let mut next: HashMap<usize, std::time::Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let config = self.config.load_full();
            let now = std::time::Instant::now();
            let mut live = Vec::new();
            for group in config.upstreams.values() {
                let Some(hc) = group.health_check() else {
                    continue;
                };
                let id = Arc::as_ptr(group) as usize;
                live.push(id);
                if next.get(&id).is_some_and(|t| *t > now) {
                    continue;
                }
                next.insert(id, now + hc.interval);
                let group = group.clone();
                tokio::spawn(async move { group.run_health_checks().await });
            }
            next.retain(|id, _| live.contains(id));
        }
    }
}

/// Pingora takes whole seconds: round up, so `500ms` means "up to 1s", never "none".
fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Check that every listener address can be bound now, so a port conflict fails the start with
/// a clear message. (Pingora itself would retry the bind for 30 s and then stop only the
/// proxy service, leaving a process whose admin port still answers.)
pub fn check_listeners(config: &RuntimeConfig) -> Result<(), String> {
    let all = config
        .startup
        .listen
        .iter()
        .map(|a| ("listen", a))
        .chain([("admin.listen", &config.startup.admin_listen)]);
    for (key, addr) in all {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!("cannot listen on {addr} ({key}): {e}"));
        }
    }
    Ok(())
}

/// Build a ready-to-run server for `config`. With `watch = Some(path)`, the file is reloaded on
/// SIGHUP and when its content changes. With `upgrade`, the listening sockets are taken over
/// from the running process (Pingora's graceful upgrade, through `server.upgrade_sock`) instead
/// of bound: the operator then sends that process SIGQUIT.
pub fn build_server(
    config: RuntimeConfig,
    watch: Option<PathBuf>,
    upgrade: bool,
) -> std::io::Result<Server> {
    let start = &config.startup;
    crate::observe::metrics::init(&start.latency_buckets, start.status_code_label);
    let access_log = start
        .access_log
        .as_ref()
        .map(|log| {
            AccessLog::start(&log.output, log.buffer_lines).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open access log `{}`: {e}", log.output),
                )
            })
        })
        .transpose()?;
    let s = &start.server;
    let mut conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        // In-flight requests get grace_period + shutdown_timeout in all: Pingora waits that
        // long, and `drain::Drain` ends the process as soon as none is left.
        grace_period_seconds: Some(ceil_secs(s.grace_period + s.shutdown_timeout)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool,
        upgrade_sock: s.upgrade_sock.clone(),
        // Every Pingora timeout of a second or more (the upstream read and the pool's idle
        // watch, armed on every request) on tokio's timer, not Pingora's coarse wheel. A
        // cancelled timer of the wheel stays in its shared map until its deadline (60 s on
        // the defaults), and the ones left by a burst of connections pinned 4.5 MB of freed
        // memory for that long (benches/conn_memory.py: +20.6% over idle a minute after
        // 10,000 kept-alive connections closed; +5.7% with tokio's). Instructions per request
        // did not move (benches/pingora_profile.py).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    // The groups' `retry.attempts` (at most 10) decide retries; Pingora's own cap stays as
    // the backstop.
    conf.max_retries = 9;
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    let listen = start.listen.clone();
    let admin_listen = start.admin_listen;
    let h2c = s.h2c;
    let client_read_buffer = s.client_read_buffer;
    let connection_limits = s.connections;
    let watch_interval = s.watch_interval;
    let drain_deadline = s.grace_period + s.shutdown_timeout;
    let reload_settle = s.reload_settle;
    let local = Arc::new(LocalLimiter::new(start.max_tracked_keys));
    let link = start
        .redis
        .clone()
        .map(|settings| Arc::new(crate::fleet::Link::new(settings)));
    let cache = crate::cache::init(&start.cache, link.clone());
    let limiter = Arc::new(Limiter::new(local.clone(), link.clone()));
    let shared = Arc::new(ArcSwap::from_pointee(config));

    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    let mut app = pingora_proxy::http_proxy(
        &server.configuration,
        match &link {
            Some(link) => Tollgate::new(shared.clone(), limiter.clone(), access_log)
                .with_key_store(Arc::new(crate::fleet::keys::KeyStore::new(link.clone()))),
            None => Tollgate::new(shared.clone(), limiter.clone(), access_log),
        },
    );
    app.server_options = Some(options);
    // The connection caps and the header deadline sit in front of Pingora's HTTP handling.
    let mut proxy = Service::new(
        "tollgate proxy".to_string(),
        crate::connections::ConnectionGate::new(app, connection_limits),
    );
    // A smaller read buffer than Pingora's 64 KiB default: it is allocated and zeroed for every
    // client connection, idle or not (docs/limits.md, memory per connection).
    let read_buffer = pingora_core::listeners::L4BufferSettings::default().read(client_read_buffer);
    for addr in &listen {
        proxy.add_listener(
            pingora_core::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(read_buffer),
        );
    }

    let mut admin = Service::new(
        "tollgate admin".to_string(),
        AdminApp::new(shared.clone(), limiter.clone()),
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    let mut drain = background_service(
        "tollgate drain",
        crate::drain::Drain {
            deadline: drain_deadline,
        },
    );
    drain.threads = Some(1);
    server.add_service(drain);
    let mut checker = background_service(
        "tollgate health checker",
        HealthChecker {
            config: shared.clone(),
        },
    );
    checker.threads = Some(1);
    server.add_service(checker);
    let mut sweeper = background_service(
        "tollgate rate-limit sweeper",
        LimiterSweeper {
            limiter: limiter.clone(),
        },
    );
    sweeper.threads = Some(1);
    server.add_service(sweeper);
    if let Some(bus) = cache.bus {
        // Reads the fleet's purges on a connection of its own; its runtime drives it.
        let mut purges = background_service(
            "tollgate purge bus",
            crate::cache::bus::PurgeBusService(bus),
        );
        purges.threads = Some(1);
        server.add_service(purges);
    }
    if let Some(link) = link {
        // Its runtime also drives the Redis connections' I/O.
        let mut heartbeat = background_service(
            "tollgate fleet heartbeat",
            crate::fleet::Heartbeat::new(link),
        );
        heartbeat.threads = Some(1);
        server.add_service(heartbeat);
    }
    if let Some(path) = watch {
        let interval = if watch_interval.is_zero() {
            std::time::Duration::from_secs(86400 * 365)
        } else {
            watch_interval
        };
        let mut reloader = background_service(
            "tollgate config reloader",
            Reloader::new(path, shared, interval, reload_settle),
        );
        reloader.threads = Some(1);
        server.add_service(reloader);
    }
    Ok(server)
}
