//! The replica's connection to the fleet's Redis, and its health.
//!
//! Every call is bounded by `redis.command_timeout`, whatever the client library does inside
//! (reconnects, cluster redirects), so a request never waits longer than that for Redis. After
//! `failures_before_backoff` consecutive failures the link stops asking for `redis.backoff`:
//! while Redis is down, requests pay nothing for it. The heartbeat keeps calling meanwhile (a
//! probe); the first success ends the backoff at once.
//!
//! Connections are opened lazily from a Tokio runtime (the heartbeat's, or a request's), never
//! at config compile time, so a replica starts and serves while Redis is still away.

use super::settings::{Settings, Target};
use crate::observe::metrics;
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, ScriptInvocation};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a Redis call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within `command_timeout` (or `connect_timeout` while connecting).
    Timeout,
    /// The connection failed, was refused or dropped.
    Connection(String),
    /// Redis refused our credentials (`WRONGPASS`, `NOAUTH`).
    Auth(String),
    /// Redis' ACL refuses a command to our user (`NOPERM`).
    Denied(String),
    /// Not connected yet (the first connection is still being opened).
    NotConnected,
    /// The link is backing off after consecutive failures: Redis was not asked.
    BackingOff,
    /// Redis answered with an error (a script error, a cluster without the slot, ...).
    Server(String),
    /// A Cluster is moving the keys' slot (`TRYAGAIN`, `MOVED`, `ASK` past the client's retries).
    Busy(String),
    /// An answer of an unexpected shape.
    Other(String),
}

impl StoreError {
    /// The `kind` label of `tollgate_redis_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Connection(_) => "connection",
            StoreError::Auth(_) | StoreError::Denied(_) => "auth",
            StoreError::NotConnected => "not_connected",
            StoreError::BackingOff => "backing_off",
            StoreError::Server(_) => "script",
            StoreError::Busy(_) => "cluster_busy",
            StoreError::Other(_) => "other",
        }
    }

    fn from_redis(e: &redis::RedisError) -> StoreError {
        use redis::{ErrorKind, ServerErrorKind};
        if e.is_timeout() {
            return StoreError::Timeout;
        }
        // Messages of the client library name the server, not the URL, so they hold no password.
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        match e.kind() {
            ErrorKind::AuthenticationFailed => StoreError::Auth(text),
            _ if lower.contains("noauth") || lower.contains("wrongpass") => StoreError::Auth(text),
            // The login worked but the ACL refuses a command ("... can't run this command or
            // subcommand" inside a script).
            ErrorKind::Server(ServerErrorKind::NoPerm) => StoreError::Denied(text),
            _ if lower.contains("noperm") || lower.contains("can't run this command") => {
                StoreError::Denied(text)
            }
            // A Cluster moving slots: a passing state of some keys, not of Redis.
            ErrorKind::Server(
                ServerErrorKind::TryAgain | ServerErrorKind::Moved | ServerErrorKind::Ask,
            ) => StoreError::Busy(text),
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => StoreError::Connection(text),
            _ if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() => {
                StoreError::Connection(text)
            }
            ErrorKind::Server(_) | ErrorKind::Extension => StoreError::Server(text),
            _ => StoreError::Other(text),
        }
    }

    /// Whether this failure says something about Redis as a whole (and so counts towards the
    /// backoff), rather than about some keys for a moment.
    fn counts_against_redis(&self) -> bool {
        // A slot in motion is a moment of some keys; a command the ACL refuses is a
        // configuration fault of one feature (fast to fail, and other calls still work).
        !matches!(self, StoreError::Busy(_) | StoreError::Denied(_))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("timed out"),
            StoreError::Connection(e) => write!(f, "connection failed: {e}"),
            StoreError::Auth(e) => write!(f, "authentication failed: {e}"),
            StoreError::Denied(e) => write!(f, "command refused by the ACL: {e}"),
            StoreError::NotConnected => f.write_str("not connected yet"),
            StoreError::BackingOff => f.write_str("backing off after consecutive failures"),
            StoreError::Server(e) => write!(f, "error answer: {e}"),
            StoreError::Busy(e) => write!(f, "cluster slot in motion: {e}"),
            StoreError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// What one call sends.
enum Call<'a> {
    Script(&'a ScriptInvocation<'a>),
    Cmd(&'a redis::Cmd),
}

/// One multiplexed connection: cheap to clone, every clone shares the socket.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The link to the fleet's Redis: connections, the timeout of every call, the failure count
/// and backoff, the fleet size last seen.
pub struct Link {
    settings: Settings,
    conns: ArcSwapOption<Vec<Conn>>,
    /// Round-robin over `conns`.
    next: AtomicUsize,
    /// Failures since the last success.
    failures: AtomicU32,
    /// While backing off: until when, in ms since `epoch`; 0 otherwise.
    retry_at_ms: AtomicU64,
    /// Whether the last call worked (for the `up` gauge and the log on each change).
    up: AtomicBool,
    epoch: Instant,
    /// Replicas seen by the last heartbeat (at least 1: this one).
    fleet_size: AtomicU32,
    /// This replica's name in the heartbeat set.
    replica: String,
    /// Serialises connection opening (one attempt at a time).
    connecting: tokio::sync::Mutex<()>,
    /// A failure was logged since start (so a Redis that never answered is said once).
    told_down: AtomicBool,
    /// When (s since `epoch`, + 1) a refused command or slot move was last logged; 0: never.
    last_fault_log: AtomicU64,
}

impl Link {
    /// A link that has not connected yet.
    pub fn new(settings: Settings) -> Link {
        metrics::REDIS_UP.set(0);
        metrics::FLEET_REPLICAS.set(1);
        for kind in [
            "timeout",
            "connection",
            "auth",
            "not_connected",
            "script",
            "cluster_busy",
            "other",
        ] {
            metrics::REDIS_ERRORS_TOTAL.with_label_values(&[kind]);
        }
        Link {
            settings,
            conns: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            up: AtomicBool::new(false),
            epoch: Instant::now(),
            fleet_size: AtomicU32::new(1),
            replica: replica_name(),
            connecting: tokio::sync::Mutex::new(()),
            told_down: AtomicBool::new(false),
            last_fault_log: AtomicU64::new(0),
        }
    }

    /// The settings it runs on.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This replica's name in the fleet (host, pid and a random suffix).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether a call now would go to Redis (connected, not backing off).
    pub fn available(&self) -> bool {
        self.conns.load().is_some() && !self.backing_off()
    }

    /// Whether the last call to Redis worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Replicas of the fleet, as last seen (at least 1).
    pub fn fleet_size(&self) -> u32 {
        self.fleet_size.load(Ordering::Relaxed).max(1)
    }

    /// Record the fleet size a heartbeat saw.
    pub fn set_fleet_size(&self, n: u32) {
        let n = n.max(1);
        self.fleet_size.store(n, Ordering::Relaxed);
        metrics::FLEET_REPLICAS.set(i64::from(n));
    }

    fn backing_off(&self) -> bool {
        let until = self.retry_at_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Open the connections if they are not open, and check that Redis answers `PING`.
    /// Must run inside a Tokio runtime. Bounded by `connect_timeout` + `command_timeout`.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let limit = self.settings.connect_timeout + self.settings.command_timeout;
        let result = match tokio::time::timeout(limit, self.open_and_ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(()) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    async fn open_and_ping(&self) -> Result<(), StoreError> {
        if self.conns.load().is_none() {
            let _one_at_a_time = self.connecting.lock().await;
            if self.conns.load().is_none() {
                let conns = self.open().await?;
                self.conns.store(Some(Arc::new(conns)));
            }
        }
        let mut conn = self.pick().ok_or(StoreError::NotConnected)?;
        let pong: String = match &mut conn {
            Conn::Single(c) => redis::cmd("PING").query_async(c).await,
            Conn::Cluster(c) => redis::cmd("PING").query_async(c).await,
        }
        .map_err(|e| StoreError::from_redis(&e))?;
        if pong != "PONG" {
            return Err(StoreError::Other(format!("PING answered `{pong}`")));
        }
        Ok(())
    }

    /// Open a connection of its own, for a blocking read (`XREAD BLOCK`) that would hold up
    /// every call multiplexed behind it on the shared connections. Its calls wait up to
    /// `response_timeout`; its failures do not count towards the link's backoff (the reader
    /// owning it retries on its own schedule).
    pub async fn dedicated(&self, response_timeout: Duration) -> Result<Dedicated, StoreError> {
        let s = &self.settings;
        let redis_err = |e: redis::RedisError| StoreError::from_redis(&e);
        let open = async {
            match &s.target {
                Target::Single(url) => {
                    let client = self.single_client(url)?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(s.connect_timeout))
                        .set_response_timeout(Some(response_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(DedicatedConn::Single)
                        .map_err(redis_err)
                }
                Target::Cluster(seeds) => self
                    .cluster_client(seeds, response_timeout)?
                    .get_async_connection()
                    .await
                    .map(DedicatedConn::Cluster)
                    .map_err(redis_err),
            }
        };
        let conn = match tokio::time::timeout(s.connect_timeout + s.command_timeout, open).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout),
        };
        Ok(Dedicated {
            conn,
            timeout: response_timeout,
        })
    }

    /// A client for a Redis Cluster whose calls wait up to `response_timeout`. (Validation
    /// refuses `tls_ca_file` with `cluster`: the client takes a CA for a Cluster only with
    /// rustls; a Cluster over TLS trusts the system store.)
    fn cluster_client(
        &self,
        seeds: &[String],
        response_timeout: Duration,
    ) -> Result<redis::cluster::ClusterClient, StoreError> {
        redis::cluster::ClusterClient::builder(seeds.to_vec())
            .connection_timeout(self.settings.connect_timeout)
            .response_timeout(response_timeout)
            .retries(1)
            .build()
            .map_err(|e| StoreError::from_redis(&e))
    }

    /// A client for one Redis, trusting `tls_ca_file` when set (read at each (re)connection,
    /// so a rotated file is picked up).
    fn single_client(&self, url: &str) -> Result<redis::Client, StoreError> {
        let s = &self.settings;
        let certs = match s.tls_ca_file.as_ref() {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    StoreError::Other(format!("cannot read tls_ca_file `{}`: {e}", path.display()))
                })?),
            }),
            None => None,
        };
        match certs {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
        .map_err(|e| StoreError::from_redis(&e))
    }

    async fn open(&self) -> Result<Vec<Conn>, StoreError> {
        let s = &self.settings;
        let redis_err = |e: redis::RedisError| StoreError::from_redis(&e);
        match &s.target {
            Target::Single(url) => {
                let client = self.single_client(url)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.command_timeout))
                    // Reconnect quickly and give up soon: the heartbeat and the backoff
                    // decide when to try again, not the client library.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(s.backoff);
                (0..s.connections)
                    .map(|_| {
                        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                            .map(Conn::Single)
                            .map_err(redis_err)
                    })
                    .collect()
            }
            Target::Cluster(seeds) => {
                let client = self.cluster_client(seeds, s.command_timeout)?;
                let conn = client.get_async_connection().await.map_err(redis_err)?;
                Ok(vec![Conn::Cluster(conn)])
            }
        }
    }

    fn pick(&self) -> Option<Conn> {
        let conns = self.conns.load();
        let conns = conns.as_ref()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Some(conns[i].clone())
    }

    /// Run a script, bounded by `command_timeout`; refused at once while backing off.
    /// `op` labels the duration histogram.
    pub async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.backing_off() {
            return Err(StoreError::BackingOff);
        }
        self.call(op, Call::Script(script)).await
    }

    /// Run one command, like [`Link::eval`].
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        if self.backing_off() {
            return Err(StoreError::BackingOff);
        }
        self.call(op, Call::Cmd(cmd)).await
    }

    /// Run a script even while backing off (the heartbeat's probe), connecting first if needed.
    pub async fn probe<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.conns.load().is_none() {
            self.connect().await?;
        }
        self.call(op, Call::Script(script)).await
    }

    async fn call<T: FromRedisValue>(
        &self,
        op: &'static str,
        what: Call<'_>,
    ) -> Result<T, StoreError> {
        let Some(mut conn) = self.pick() else {
            let e = StoreError::NotConnected;
            self.failed(&e);
            return Err(e);
        };
        let started = Instant::now();
        let call = async {
            match (&mut conn, what) {
                (Conn::Single(c), Call::Script(s)) => s.invoke_async(c).await,
                (Conn::Cluster(c), Call::Script(s)) => s.invoke_async(c).await,
                (Conn::Single(c), Call::Cmd(cmd)) => cmd.query_async(c).await,
                (Conn::Cluster(c), Call::Cmd(cmd)) => cmd.query_async(c).await,
            }
        };
        let result = match tokio::time::timeout(self.settings.command_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::from_redis(&e)),
            Err(_) => Err(StoreError::Timeout),
        };
        metrics::REDIS_COMMAND_DURATION
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.retry_at_ms.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics::REDIS_UP.set(1);
            tracing::info!(
                "redis {} answers: the fleet shares its limits (and cache) through it",
                self.settings.describe()
            );
        }
    }

    fn failed(&self, e: &StoreError) {
        metrics::REDIS_ERRORS_TOTAL
            .with_label_values(&[e.kind()])
            .inc();
        if !e.counts_against_redis() {
            // Redis itself is fine: say what is wrong, once a minute at most.
            let now = self.now_ms() / 1000 + 1;
            let last = self.last_fault_log.load(Ordering::Relaxed);
            if last == 0 || now >= last + 60 {
                self.last_fault_log.store(now, Ordering::Relaxed);
                tracing::warn!(
                    "redis {}: {e} (this call falls back; see docs/fleet.md, An ACL user)",
                    self.settings.describe()
                );
            }
            return;
        }
        // A refused login is not retried by the client library (it reconnects on I/O errors
        // only): drop the connections, so the next heartbeat logs in afresh, and a password or
        // ACL fixed on the Redis side is picked up without a restart.
        if matches!(e, StoreError::Auth(_)) {
            self.conns.store(None);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.settings.failures_before_backoff {
            let until = self.now_ms() + self.settings.backoff.as_millis() as u64;
            self.retry_at_ms.store(until.max(1), Ordering::Relaxed);
        }
        // One line per change of state, not one per failed request.
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let first = !self.told_down.swap(true, Ordering::Relaxed);
        if was_up || first {
            metrics::REDIS_UP.set(0);
            tracing::warn!(
                "redis {} failed ({e}): deciding without it (rate_limit.on_store_error) until it answers again",
                self.settings.describe()
            );
        }
    }
}

/// A connection of its own (see [`Link::dedicated`]).
enum DedicatedConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A connection of its own for blocking reads, from [`Link::dedicated`].
pub struct Dedicated {
    conn: DedicatedConn,
    timeout: Duration,
}

impl Dedicated {
    /// Run one command, bounded by the connection's response timeout.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let call = async {
            match &mut self.conn {
                DedicatedConn::Single(c) => cmd.query_async(c).await,
                DedicatedConn::Cluster(c) => cmd.query_async(c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::from_redis(&e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

/// `host-pid-random`: unique per process, readable in `ZRANGE <prefix>:fleet`.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "tollgate".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Whether Redis answers now: connect and `PING` once, within `connect_timeout` +
/// `command_timeout`, on a runtime of its own (before the server's runtimes exist). The
/// connection is then dropped; the server opens its own.
pub fn check_at_start(settings: &Settings) -> Result<(), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Other(format!("cannot start a runtime: {e}")))?;
    let link = Link::new(settings.clone());
    link.told_down.store(true, Ordering::Relaxed);
    rt.block_on(link.connect())
}
