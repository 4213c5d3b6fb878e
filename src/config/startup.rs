//! The settings a process reads once, at start: listeners, the Pingora server, the cache
//! store's size, the metrics' shape, the access log's output, the limiter's table size and the
//! fleet's Redis connection.
//!
//! They are one struct so that a reload can keep them whole: [`Startup::restart_only_changes`]
//! names what a new file changed among them (logged as a warning), and the reloaded config
//! carries the running values on, so what the process reports is what it runs.

use super::address::parse_listen;
use super::model::Config;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings that take effect only at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Startup {
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// How the Pingora server runs.
    pub server: Server,
    /// The cache store's limits.
    pub cache: crate::cache::StoreSettings,
    /// Latency histogram buckets, in seconds.
    pub latency_buckets: Vec<f64>,
    /// The exact `status` label on `tollgate_http_requests_total`.
    pub status_code_label: bool,
    /// Where access log lines go, when the log is on at start (`None`: off, and turning it on
    /// needs a restart).
    pub access_log: Option<AccessLogOutput>,
    /// Most limiter entries held.
    pub max_tracked_keys: usize,
    /// The fleet's Redis (`redis:`), when configured.
    pub redis: Option<crate::fleet::Settings>,
}

/// `server:`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Tokio work stealing between them.
    pub work_stealing: bool,
    /// HTTP/2 over cleartext on the proxy listener.
    pub h2c: bool,
    /// How long in-flight requests get after SIGTERM.
    pub grace_period: Duration,
    /// How long the runtimes get to stop after that.
    pub shutdown_timeout: Duration,
    /// Idle upstream connections kept.
    pub upstream_keepalive_pool: usize,
    /// Where `run --upgrade` receives the running process's listening sockets.
    pub upgrade_sock: String,
    /// How often the config file is checked for changes (zero: never).
    pub watch_interval: Duration,
    /// How long a changed file must stay unchanged before it is loaded.
    pub reload_settle: Duration,
    /// What a client may send and how slowly.
    pub client: ClientLimits,
    /// Read buffer of each client connection, in bytes.
    pub client_read_buffer: usize,
    /// Caps and deadlines on client connections, before any request.
    pub connections: ConnectionLimits,
}

/// `server:`'s limits on client connections, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte to the end of its header.
    pub header_timeout: Duration,
    /// Idle time allowed before a request (a new connection's first, or the next one).
    pub keepalive_timeout: Duration,
    /// Open client connections, all listeners.
    pub max: usize,
    /// Open client connections from one IP.
    pub max_per_ip: Option<usize>,
    /// The most one read of a request header takes from the socket (`client_read_buffer`).
    pub read_size: usize,
    /// The longest request head (request line and header fields, as sent) that the request
    /// limits could accept: a longer one gets `431` without being read further.
    pub max_header_bytes: usize,
}

/// Slack on [`ConnectionLimits::max_header_bytes`] for what the limits do not count: the
/// method, the version, spaces around values, line ends.
const HEAD_SLACK: usize = 8 * 1024;

/// `server:`'s client limits, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Idle time allowed between requests on one connection.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Slowest a body may arrive, bytes per second (0: no minimum).
    pub body_min_rate: u64,
    /// Longest request target.
    pub max_uri_length: usize,
    /// Most bytes of header names and values.
    pub max_header_size: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// Where the access log writes.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogOutput {
    /// `stdout`, `stderr` or a file path.
    pub output: String,
    /// Lines buffered before the writer thread.
    pub buffer_lines: usize,
}

impl Startup {
    /// Compile the start-only parts of a validated config.
    pub fn new(c: &Config) -> Self {
        let s = &c.server;
        let log = &c.observability.access_log;
        Startup {
            listen: c
                .listen
                .iter()
                .map(|l| parse_listen(l).expect("validated"))
                .collect(),
            admin_listen: parse_listen(&c.admin.listen).expect("validated"),
            server: Server {
                threads: s.threads,
                work_stealing: s.work_stealing,
                h2c: s.h2c,
                grace_period: s.grace_period.get(),
                shutdown_timeout: s.shutdown_timeout.get(),
                upstream_keepalive_pool: s.upstream_keepalive_pool,
                upgrade_sock: s.upgrade_sock.clone(),
                watch_interval: s.watch_interval.get(),
                reload_settle: s.reload_settle.get(),
                client: ClientLimits {
                    keepalive_timeout: s.keepalive_timeout.get(),
                    body_timeout: s.client_body_timeout.get(),
                    body_min_rate: s.client_body_min_rate.0,
                    max_uri_length: s.max_uri_length.0 as usize,
                    max_header_size: s.max_header_size.0 as usize,
                    max_headers: s.max_headers,
                },
                client_read_buffer: s.client_read_buffer.0 as usize,
                connections: ConnectionLimits {
                    header_timeout: s.client_header_timeout.get(),
                    keepalive_timeout: s.keepalive_timeout.get(),
                    max: s.max_client_connections,
                    max_per_ip: s.max_connections_per_ip,
                    read_size: s.client_read_buffer.0 as usize,
                    // Each field adds `: ` and a line end to its name and value.
                    max_header_bytes: (s.max_uri_length.0 as usize)
                        .saturating_add(s.max_header_size.0 as usize)
                        .saturating_add(s.max_headers.saturating_mul(4))
                        .saturating_add(HEAD_SLACK),
                },
            },
            cache: crate::cache::StoreSettings::new(&c.cache),
            latency_buckets: c.observability.latency_buckets.clone(),
            status_code_label: c.observability.status_code_label,
            access_log: log.enabled.then(|| AccessLogOutput {
                output: log.output.clone(),
                buffer_lines: log.buffer_lines,
            }),
            max_tracked_keys: c.rate_limit.max_tracked_keys,
            redis: c.redis.as_ref().map(crate::fleet::Settings::new),
        }
    }

    /// The config keys whose new values (in `new`) differ from these running ones and so wait
    /// for a restart. Switching the access log off is not among them: that takes effect at
    /// once (`observability.access_log.enabled` is also read per request).
    pub fn restart_only_changes(&self, new: &Startup) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, keys: &'static str| {
            if differs {
                changed.push(keys);
            }
        };
        check(new.listen != self.listen, "listen");
        check(new.admin_listen != self.admin_listen, "admin.listen");
        check(new.server != self.server, "server");
        check(
            new.cache != self.cache,
            "cache (max_size, max_object_size, lock_timeout, shared*, purge_*)",
        );
        check(
            new.latency_buckets != self.latency_buckets,
            "observability.latency_buckets",
        );
        check(
            new.status_code_label != self.status_code_label,
            "observability.status_code_label",
        );
        check(
            new.access_log.is_some() && new.access_log != self.access_log,
            "observability.access_log (output, buffer_lines, or turning it on)",
        );
        check(
            new.max_tracked_keys != self.max_tracked_keys,
            "rate_limit.max_tracked_keys",
        );
        check(new.redis != self.redis, "redis");
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(yaml: &str) -> Startup {
        let base = "upstreams: { app: { endpoints: [127.0.0.1:3000] } }\nroutes: [{ match: { path_prefix: / }, upstream: app }]\n";
        crate::config::load_str(&format!("{base}{yaml}"), "test.yaml", |_| None)
            .unwrap()
            .startup
    }

    #[test]
    fn restart_only_changes_name_each_changed_key() {
        let running = startup("listen: [127.0.0.1:8080]\n");
        assert!(running.restart_only_changes(&running.clone()).is_empty());
        let new = startup(
            "listen: [127.0.0.1:8081]\nserver: { threads: 2 }\nrate_limit: { max_tracked_keys: 10 }\n",
        );
        assert_eq!(
            running.restart_only_changes(&new),
            ["listen", "server", "rate_limit.max_tracked_keys"]
        );
    }

    #[test]
    fn switching_the_access_log_off_is_not_a_restart_change() {
        let on = startup("listen: [127.0.0.1:8080]\n");
        let off = startup(
            "listen: [127.0.0.1:8080]\nobservability: { access_log: { enabled: false } }\n",
        );
        assert!(on.restart_only_changes(&off).is_empty());
        assert_eq!(
            off.restart_only_changes(&on),
            ["observability.access_log (output, buffer_lines, or turning it on)"]
        );
    }
}
