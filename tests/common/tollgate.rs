//! [`Tollgate`]: the real binary as a child process on ephemeral ports, ready when its admin
//! `/readyz` answers *and* the process itself holds the proxy's listening socket; killed on
//! drop, its log printed when the test panics. Request helpers read responses into [`Got`];
//! metric helpers read `/metrics`.

use crate::common::config::{ConfigSource, TEST_SERVER};
use crate::common::net::{free_addr, listening_socket_owned_by};
use crate::common::{bin, metric_value, Got};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Fill in `listen`, `admin` (with `admin_lines`) and, unless the body has its own, the
/// test-friendly `server` section ([`TEST_SERVER`]).
fn full_config(body: &str, admin_lines: &str, addr: SocketAddr, admin: SocketAddr) -> String {
    let mut out = format!("listen: {addr}\nadmin:\n  listen: {admin}\n{admin_lines}");
    if !body.lines().any(|l| l.starts_with("server:")) {
        out.push_str("server:\n");
        for (k, v) in TEST_SERVER {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    out.push_str(body);
    out
}

/// `tollgate run -c config_path` (plus `args`), its stdout and stderr to `log_path`.
fn spawn(config_path: &Path, log_path: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(log_path).unwrap();
    Command::new(bin())
        .args(["run", "-c"])
        .arg(config_path)
        .args(args)
        .envs(env.iter().copied())
        .env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn tollgate")
}

impl Tollgate {
    /// Start tollgate on `cfg` (a [`crate::common::Config`], or YAML text without
    /// `listen`/`admin`), and wait until it is ready.
    pub async fn start<C: ConfigSource + ?Sized>(cfg: &C) -> Tollgate {
        let env = cfg.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&**k, &**v)).collect();
        Self::launch(&cfg.body(), &cfg.admin_lines(), &env).await
    }

    /// Start tollgate on YAML text, with environment variables for `${VAR}` interpolation.
    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> Tollgate {
        Self::launch(body, "", env).await
    }

    async fn launch(body: &str, admin_lines: &str, env: &[(&str, &str)]) -> Tollgate {
        for attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let (addr, admin) = (free_addr(), free_addr());
            let config_path = dir.path().join("tollgate.yaml");
            std::fs::write(&config_path, full_config(body, admin_lines, addr, admin)).unwrap();
            let log_path = dir.path().join("tollgate.log");
            let child = spawn(&config_path, &log_path, &[], env);
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
                // Another process took a port between free_addr() and tollgate's bind: Pingora
                // would retry the bind for 30 s; start over on new ports instead.
                Err(log) if log.contains("in use") && attempt < 4 => continue,
                Err(log) => panic!("tollgate did not become ready:\n{log}"),
            }
        }
        unreachable!()
    }

    /// A graceful upgrade: start a second tollgate on this one's config with `run --upgrade`,
    /// send this one SIGQUIT once the new one waits on `sock` (the config's
    /// `server.upgrade_sock`), and return the new one when it holds the proxy's listening
    /// socket.
    pub async fn upgrade(&self, sock: &Path) -> Tollgate {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::copy(&self.config_path, &config_path).unwrap();
        let log_path = dir.path().join("tollgate.log");
        let child = spawn(&config_path, &log_path, &["--upgrade"], &[]);
        let mut new = Tollgate {
            child,
            addr: self.addr,
            admin: self.admin,
            config_path,
            log_path,
            _dir: dir,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        // The new process listens on the upgrade socket, then waits for the old one to send.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            if let Ok(Some(status)) = new.child.try_wait() {
                panic!("tollgate --upgrade exited with {status}:\n{}", new.log());
            }
            assert!(Instant::now() < deadline, "no {sock:?}:\n{}", new.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal(libc::SIGQUIT);
        if let Err(log) = new.wait_ready(Duration::from_secs(30)).await {
            panic!(
                "tollgate --upgrade did not take over:\n{log}\nold:\n{}",
                self.log()
            );
        }
        new
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
                // test's server took the port between free_addr() and tollgate's bind, tollgate
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

    /// A request to `path` through the proxy, to finish and [`Tollgate::send`].
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Send `req` and read the response to the end.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Got {
        Got::read(req.send().await.expect("request through tollgate")).await
    }

    /// GET `path` through the proxy.
    pub async fn get(&self, path: &str) -> Got {
        self.get_with(path, &[]).await
    }

    /// GET `path` through the proxy with request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        Got::read(self.get_raw(path, headers).await).await
    }

    /// GET `path` with request headers, the body left unread (to stream it).
    pub async fn get_raw(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.req(reqwest::Method::GET, path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request through tollgate")
    }

    /// POST `body` to `path` through the proxy.
    pub async fn post(&self, path: &str, body: &'static str) -> Got {
        self.send(self.req(reqwest::Method::POST, path).body(body))
            .await
    }

    /// GET `path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Got {
        let r = self.client.get(self.admin_url(path)).send().await;
        Got::read(r.expect("admin request")).await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().to_string()
    }

    /// One sample of `/metrics` now ([`metric_value`]).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Wait up to 10 s until a sample in `/metrics` is `want` (counters move in the `logging`
    /// phase, after the response is sent, and health verdicts on the checker's schedule), and
    /// return the value seen last.
    pub async fn metric_reaches(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
    ) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = self.metric(name, labels).await;
            if last == Some(want) || Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Tollgate::metric_reaches`], panicking (with the value seen last) if it does not.
    pub async fn expect_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let last = self.metric_reaches(name, labels, want).await;
        assert_eq!(
            last,
            Some(want),
            "{name}{labels:?} never became {want} (last {last:?})"
        );
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

    /// Overwrite the config file (same listen/admin) atomically, as an operator would.
    pub fn write_config<C: ConfigSource + ?Sized>(&self, cfg: &C) {
        let tmp = self.config_path.with_extension("tmp");
        let text = full_config(&cfg.body(), &cfg.admin_lines(), self.addr, self.admin);
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// [`Tollgate::write_config`], then SIGHUP, then wait until the `n`-th successful reload
    /// is counted.
    pub async fn reload<C: ConfigSource + ?Sized>(&self, cfg: &C, n: u32) {
        self.write_config(cfg);
        self.signal(libc::SIGHUP);
        let ok = [("result", "success")];
        self.expect_metric("tollgate_config_reloads_total", &ok, n as f64)
            .await;
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
