//! Test harness: start tollgate (the real binary) from a YAML string on ephemeral ports, start
//! in-process upstreams, wait for readiness, kill everything on drop.
//!
//! ```ignore
//! let app = MockUpstream::start().await;
//! let tg = Tollgate::start(&format!("upstreams: {{ app: {{ endpoints: [\"{}\"] }} }}\nroutes: [...]", app.addr())).await;
//! let res = tg.get("/api/x").await;
//! ```
#![allow(dead_code)]

pub mod origin;
pub mod upstream;

#[allow(unused_imports)]
pub use upstream::{MockUpstream, Recorded, Reply};

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the tollgate binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A port that was free a moment ago (the OS picked it for `127.0.0.1:0`).
/// tollgate binds its own listeners, so there is a tiny window in which another process could
/// take the port; [`Tollgate::start`] notices the bind failure and retries with new ports.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address nothing listens on (bound, then closed): connecting to it is refused.
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A running tollgate process, killed when dropped.
pub struct Tollgate {
    child: Child,
    /// Proxy listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The config file it runs on (tests rewrite it to exercise reload).
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    /// A client that keeps connections alive.
    pub client: reqwest::Client,
}

/// Fill in `listen`, `admin` and (unless the YAML has its own) a test-friendly `server` section.
fn full_config(body: &str, admin_extra: &str, addr: SocketAddr, admin: SocketAddr) -> String {
    let mut out = format!("listen: {addr}\nadmin:\n  listen: {admin}\n{admin_extra}");
    if !body.lines().any(|l| l.starts_with("server:")) {
        out.push_str("server:\n  threads: 1\n  grace_period: 0s\n  shutdown_timeout: 1s\n  watch_interval: 0s\n");
    }
    out.push_str(body);
    out
}

impl Tollgate {
    /// Start tollgate on `body` (a config without `listen`/`admin`), wait until `/readyz` says ready.
    pub async fn start(body: &str) -> Tollgate {
        Self::start_with_env(body, &[]).await
    }

    /// Like [`Tollgate::start`], with extra environment variables for `${VAR}` interpolation.
    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> Tollgate {
        Self::start_with_env_admin(body, "", env).await
    }

    /// Like [`Tollgate::start_with_env`], with more keys for the `admin:` section the harness
    /// writes (indented lines, e.g. `"  token: x\n"`).
    pub async fn start_with_env_admin(
        body: &str,
        admin_extra: &str,
        env: &[(&str, &str)],
    ) -> Tollgate {
        for attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let config_path = dir.path().join("tollgate.yaml");
            std::fs::write(&config_path, full_config(body, admin_extra, addr, admin)).unwrap();
            let log_path = dir.path().join("tollgate.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(bin())
                .args(["run", "-c"])
                .arg(&config_path)
                .envs(env.iter().copied())
                .env("TOLLGATE_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn tollgate");
            let mut tg = Tollgate {
                child,
                addr,
                admin,
                config_path,
                log_path,
                _dir: dir,
                client: reqwest::Client::builder().no_proxy().build().unwrap(),
            };
            match tg.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return tg,
                // Another process took a port between free_port() and tollgate's bind: Pingora
                // would retry the bind for 30 s; start over on new ports instead.
                Err(log) if log.contains("in use") && attempt < 4 => continue,
                Err(log) => panic!("tollgate did not become ready:\n{log}"),
            }
        }
        unreachable!()
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("tollgate exited with {status}:\n{}", self.log()));
            }
            let log = self.log();
            if log.contains("is in use, will try again") {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(log);
            }
            if let Ok(r) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                // `/readyz` only proves that *something* accepts on the proxy port. If another
                // test's server took the port between free_port() and tollgate's bind, tollgate
                // is still retrying its bind and the test would talk to a stranger (or, once
                // that server is gone, get "connection refused"). Ready means tollgate itself
                // holds the listening socket.
                if r.status() == 200 && listening_socket_owned_by(self.child.id(), self.addr) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {limit:?}:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything tollgate wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `http://127.0.0.1:PORT{path}` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET through the proxy.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request through tollgate")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Wait until a counter in `/metrics` reaches `want` (the `logging` phase runs after the
    /// response is sent, so a client can see its response before the count moves), and return
    /// the value seen last.
    pub async fn metric_reaches(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
    ) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let last = metric_value(&self.metrics().await, name, labels);
            if last == Some(want) || Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Wait up to `limit` for the process to exit by itself; its exit status if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the process so far, in bytes (VmHWM).
    pub fn peak_rss_bytes(&self) -> u64 {
        read_status_kib(self.child.id(), "VmHWM:") * 1024
    }

    /// Current resident memory, in bytes (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        read_status_kib(self.child.id(), "VmRSS:") * 1024
    }

    /// Overwrite the config file with a new body (same listen/admin), as an operator would.
    pub fn write_config(&self, body: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, full_config(body, "", self.addr, self.admin)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Poll `cond` until it holds or `limit` passes (a condition wait, not a fixed sleep).
    pub async fn eventually<F, Fut>(limit: Duration, cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        Self::eventually_every(limit, Duration::from_millis(20), cond).await
    }

    /// [`Tollgate::eventually`], polling every `every` (finer, to time what it waits for).
    pub async fn eventually_every<F, Fut>(limit: Duration, every: Duration, mut cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if cond().await {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn read_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test is much easier to diagnose (in CI above all) with the proxy's own log.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- last {} lines of tollgate's log ({}) ---",
                tail.len(),
                self.addr
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A `tollgate demo-upstream` process (the bundled demo app) on a fixed address, so that a test
/// can kill it and start it again where the proxy expects it. Killed on drop.
pub struct DemoUpstream {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DemoUpstream {
    /// Spawn it on `addr` and wait until it (not some other process) listens there.
    pub async fn start(addr: SocketAddr) -> DemoUpstream {
        let mut child = Command::new(bin())
            .args(["demo-upstream", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tollgate demo-upstream");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening_socket_owned_by(child.id(), addr) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("demo upstream on {addr} exited with {status} (port taken?)");
            }
            assert!(
                Instant::now() < deadline,
                "demo upstream on {addr} did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        DemoUpstream { child, addr }
    }

    /// Kill it (SIGKILL) and reap it: its port refuses connections from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether process `pid` holds the TCP socket listening on `addr` (Linux `/proc`): the inode
/// of the LISTEN entry for `addr` in `/proc/net/tcp{,6}` must be one of the process's fds.
pub fn listening_socket_owned_by(pid: u32, addr: SocketAddr) -> bool {
    let inodes = listening_inodes(addr);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Inodes of the sockets in LISTEN state (`0A`) on `addr`'s port, per `/proc/net/tcp{,6}`.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let port = format!(":{:04X}", addr.port());
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    out.push(inode);
                }
            }
        }
    }
    out
}

/// Value of one sample line in Prometheus text (`name{labels} value`), matching all `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Read `n` Server-Sent Events from `resp`, sending `event-i` on `tx` (the mock's `/sse` feed)
/// only after `event-(i-1)` reached the client; `event-0` must already be sent. A proxy that
/// buffered the stream would never deliver the next event: the 10 s timeout fails the test.
pub async fn expect_events_one_by_one(
    resp: reqwest::Response,
    tx: &tokio::sync::mpsc::UnboundedSender<String>,
    n: usize,
) {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    for i in 0..n {
        if i > 0 {
            tx.send(format!("event-{i}")).unwrap();
        }
        let want = format!("data: event-{i}\n\n");
        tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.contains(&want) {
                let chunk = body.next().await.expect("stream ended early").unwrap();
                seen.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("event {i} did not arrive while the stream was open; got {seen:?}")
        });
    }
}

/// Run `tollgate check FILE`: (exit code, stdout, stderr).
pub fn check_file(path: &Path) -> (i32, String, String) {
    // The secrets the shipped examples ask the operator to provide.
    let out = Command::new(bin())
        .arg("check")
        .arg(path)
        .env("TOLLGATE_ADMIN_TOKEN", "example-token")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write `yaml` to a temp file and run `tollgate check` on it.
pub fn check_yaml(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.yaml");
    std::fs::write(&p, yaml).unwrap();
    check_file(&p)
}
