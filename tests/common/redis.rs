//! [`RedisServer`] and [`RedisCluster`]: real `redis-server` processes on ephemeral loopback
//! ports, for the tests of the fleet rate limiter on Redis.
//!
//! Every server gets its whole configuration on the command line (no config file), listens on
//! `127.0.0.1` only, saves nothing (`--save "" --appendonly no`, so a restart comes back
//! empty) and writes its log into its own temporary directory. It is ready when `redis-cli`
//! gets `PONG` *and* the process the harness started holds the listening socket (a `PONG` from
//! some other server that won the race for the port does not count). Waits poll every 20 ms
//! against a deadline, and a failed start panics with the tail of the server's log. Every
//! process is SIGKILLed and reaped on drop.
//!
//! The calls block (`std::process`): they are short, and async tests may call them directly.
//! Needs `redis-server` and `redis-cli` on `PATH` (`scripts/setup.sh redis-server redis-cli`).

use crate::common::net::{free_port, listening_socket_owned_by};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to report `cluster_state:ok` on every node after creation.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `redis-cli` call may take before it is killed and reported.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling interval of every wait.
const POLL: Duration = Duration::from_millis(20);
/// Starts tried on fresh ports when the port was taken between choosing and binding it.
const START_ATTEMPTS: usize = 5;
/// Number of hash slots in Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A `redis-server` process on `127.0.0.1:<ephemeral port>`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Cluster bus port (`--cluster-port`) when the server is a cluster node.
    bus_port: Option<u16>,
    password: Option<String>,
    dir: tempfile::TempDir,
}

/// Why a start failed: the port was taken (retry elsewhere), or anything else (panic).
enum StartError {
    PortTaken,
    Failed(String),
}

impl RedisServer {
    /// Start a server without a password and wait until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::launch(None, false)
    }

    /// Start a server that requires `password` (`--requirepass`; keep it free of spaces and
    /// quotes, and URL-safe: [`RedisServer::url`] embeds it as is) and wait until it answers.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::launch(Some(password), false)
    }

    /// Spawn on fresh ports until the bind succeeds (up to [`START_ATTEMPTS`] times).
    fn launch(password: Option<&str>, cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            bus_port: None,
            password: password.map(str::to_owned),
            dir: tempfile::tempdir().expect("temporary directory for redis-server"),
        };
        for attempt in 1..=START_ATTEMPTS {
            server.port = free_port();
            if cluster {
                let mut bus = free_port();
                while bus == server.port {
                    bus = free_port();
                }
                server.bus_port = Some(bus);
            }
            match server.boot() {
                Ok(()) => return server,
                Err(StartError::PortTaken) if attempt < START_ATTEMPTS => continue,
                Err(StartError::PortTaken) => server.fail(&format!(
                    "redis-server found its port taken {START_ATTEMPTS} times in a row"
                )),
                Err(StartError::Failed(why)) => server.fail(&why),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawn the process on `self.port` (and bus port) and wait until it is ready. On an error
    /// the process may still run (a timeout): dropping `self` kills it.
    fn boot(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the redis-server log");
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn redis-server (install it: scripts/setup.sh redis-server): {e}")
            });
        let pid = child.id();
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if let Some(status) = exited {
                self.child = None;
                let log = std::fs::read(&log_path).unwrap_or_default();
                let this_run = String::from_utf8_lossy(log.get(log_start..).unwrap_or_default());
                if this_run.contains("Address already in use") {
                    return Err(StartError::PortTaken);
                }
                return Err(StartError::Failed(format!(
                    "redis-server on port {} exited with {status} before it was ready",
                    self.port
                )));
            }
            if listening_socket_owned_by(pid, addr)
                && self.try_cli(&["PING"]).is_ok_and(|r| r == "PONG")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "redis-server on port {} did not answer PING with PONG within {READY_TIMEOUT:?} \
                     (last answer: {:?})",
                    self.port,
                    self.try_cli(&["PING"])
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The command line: everything configured by arguments, nothing persisted.
    fn args(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--protected-mode",
            "no",
        ]
        .map(str::to_owned)
        .into();
        if let Some(pw) = &self.password {
            args.extend(["--requirepass".to_owned(), pw.clone()]);
        }
        if let Some(bus) = self.bus_port {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-config-file",
                    &format!("{dir}/nodes-{}.conf", self.port),
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(str::to_owned),
            );
        }
        args
    }

    /// The port it listens on (on `127.0.0.1`); the same across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT` with a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Run `redis-cli` against it (authenticated when it has a password) and return its
    /// trimmed output; panics with redis-cli's error and the server log if the command fails
    /// (including an error reply: redis-cli runs with `-e`).
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| {
            panic!(
                "redis-cli -p {} {}: {e}\n{}",
                self.port,
                args.join(" "),
                self.log_tail()
            )
        })
    }

    /// [`RedisServer::cli`] that returns the failure (stderr, or why it could not run)
    /// instead of panicking: for tests that expect an error reply or a dead server.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        redis_cli(self.port, self.password.as_deref(), args)
    }

    /// SIGKILL the process and reap it: its port refuses connections from now on. Does
    /// nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it (if running) and start it again on the same port with the same password, and
    /// wait until it is ready. Nothing was saved, so it comes back without keys. Panics with
    /// the log if it cannot start (for instance when another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        match self.boot() {
            Ok(()) => {}
            Err(StartError::PortTaken) => self.fail(&format!(
                "redis-server could not restart: port {} was taken meanwhile",
                self.port
            )),
            Err(StartError::Failed(why)) => self.fail(&why),
        }
    }

    /// Whether the process is alive (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.kill();
                false
            }
            None => false,
        }
    }

    /// The last lines of the server's log (every run of it), for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- redis-server log, port {} ({}), last lines ---\n{tail}\n--- end of log ---",
            self.port,
            self.log_path().display()
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Kill the process and panic with `why` and the log.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!("{why}\n{}", self.log_tail())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT -e [-a PASSWORD --no-auth-warning] ARGS...`: its trimmed
/// stdout on success, otherwise its trimmed stderr (or stdout) and exit status. Killed after
/// [`CLI_TIMEOUT`].
fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-e"]);
    if let Some(pw) = password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    cmd.args(args);
    let out = run_with_timeout(cmd, CLI_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let said = if stderr.is_empty() { stdout } else { stderr };
        Err(format!("{} ({})", said, out.status))
    }
}

/// Run `cmd` to completion with its output captured; SIGKILL it and report if it runs longer
/// than `limit`.
fn run_with_timeout(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("spawn {cmd:?} failed (redis-cli ships in redis-tools: scripts/setup.sh redis-cli): {e}")
        })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("wait for {cmd:?}: {e}")),
        Err(_) => {
            // The waiting thread has not reaped it yet, so the pid is still this child's.
            // SAFETY: kill(2) on the id of a process this function spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(format!("{cmd:?} did not finish within {limit:?} (killed)"))
        }
    }
}

/// Hash slot of `key` as Redis Cluster computes it: CRC16/XMODEM of the key, or of its hash
/// tag (the bytes between the first `{` and the next `}`, when there are any), modulo 16384.
pub fn hash_slot(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection): Redis Cluster's key hash.
pub fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A Redis Cluster of three masters (no replicas) on ephemeral loopback ports, every slot
/// assigned and every node reporting `cluster_state:ok`. Each node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three cluster-enabled servers, join them with `redis-cli --cluster create`
    /// (16384 slots split across the three), and wait until every node reports
    /// `cluster_state:ok`, `cluster_slots_assigned:16384` and three known nodes.
    pub fn start() -> RedisCluster {
        let cluster = RedisCluster {
            nodes: (0..3).map(|_| RedisServer::launch(None, true)).collect(),
        };
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_with_timeout(cmd, CLUSTER_TIMEOUT).unwrap_or_else(|e| cluster.fail(&e));
        if !out.status.success() {
            cluster.fail(&format!(
                "redis-cli --cluster create failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let infos: Vec<Result<String, String>> = cluster
                .nodes
                .iter()
                .map(|n| n.try_cli(&["CLUSTER", "INFO"]))
                .collect();
            let ok = |info: &Result<String, String>| {
                info.as_ref().is_ok_and(|i| {
                    let has = |line: &str| i.lines().any(|l| l.trim() == line);
                    has("cluster_state:ok")
                        && has("cluster_slots_assigned:16384")
                        && has("cluster_known_nodes:3")
                })
            };
            if infos.iter().all(ok) {
                return cluster;
            }
            if Instant::now() > deadline {
                cluster.fail(&format!(
                    "the cluster on ports {:?} was not ok within {CLUSTER_TIMEOUT:?}; \
                     CLUSTER INFO per node: {infos:#?}",
                    cluster.ports()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `redis://127.0.0.1:PORT` for each master: the seed list a cluster client starts from.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The masters' ports, in start order (the order of [`RedisCluster::tag_on_each_master`]).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// [`RedisServer::cli`] on the node listening on `port` (not following redirections).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.node(port).cli(args)
    }

    /// The hash slot of `key`, as the cluster itself computes it (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let out = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        out.parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} answered {out:?}"))
    }

    /// The port of the master serving `slot`, per the first node's `CLUSTER NODES`.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        let map = self.slot_map();
        lookup(&map, slot).unwrap_or_else(|| panic!("no master serves slot {slot}: {map:?}"))
    }

    /// One key per master, in [`RedisCluster::ports`] order: the first `{prefix}{i}`
    /// (i = 0, 1, 2, ...) whose hash slot that master serves. Gives a test one tenant (or key)
    /// on each node. The slot is computed in Rust ([`hash_slot`]); keep `prefix` free of `{`
    /// so that the whole string is hashed.
    pub fn tag_on_each_master(&self, prefix: &str) -> Vec<String> {
        let map = self.slot_map();
        self.ports()
            .into_iter()
            .map(|port| {
                (0..100_000)
                    .map(|i| format!("{prefix}{i}"))
                    .find(|key| lookup(&map, hash_slot(key)) == Some(port))
                    .unwrap_or_else(|| panic!("no {prefix}N hashes to master {port}: {map:?}"))
            })
            .collect()
    }

    /// Slot ranges `(first, last, master port)` from the first node's `CLUSTER NODES`.
    fn slot_map(&self) -> Vec<(u16, u16, u16)> {
        let text = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        let map = parse_cluster_nodes(&text);
        assert!(!map.is_empty(), "no slot ranges in CLUSTER NODES:\n{text}");
        map
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {:?})", self.ports()))
    }

    /// Panic with `why` and every node's log (the nodes are killed as the cluster drops).
    fn fail(&self, why: &str) -> ! {
        let logs: Vec<String> = self.nodes.iter().map(RedisServer::log_tail).collect();
        panic!("{why}\n{}", logs.join("\n"))
    }
}

/// The master port serving `slot` in a slot map.
fn lookup(map: &[(u16, u16, u16)], slot: u16) -> Option<u16> {
    map.iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, port)| *port)
}

/// Slot ranges of the masters in `CLUSTER NODES` output, whose lines read
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
/// with each slot `N` or `A-B` (`[N->-id]` / `[N-<-id]` migration entries are skipped).
fn parse_cluster_nodes(text: &str) -> Vec<(u16, u16, u16)> {
    let mut map = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].split(',').any(|flag| flag == "master") {
            continue;
        }
        let Some(port) = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        for range in &f[8..] {
            if range.starts_with('[') {
                continue;
            }
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                map.push((first, last, port));
            }
        }
    }
    map.sort_unstable();
    map
}
