//! Hot reload: on SIGHUP, or when the file's content changes (polled, which also catches the
//! symlink swap Kubernetes does for ConfigMaps), load the file again and swap the config in.
//! A file that fails validation is logged with every problem and the last good config keeps
//! serving. Listener addresses, `server:` settings and the `cache:` store need a restart; a
//! change there is logged.

use crate::config::{self, RuntimeConfig};
use crate::observe::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Watches the config file and swaps in each new valid version.
pub struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<RuntimeConfig>>,
    poll: Duration,
    /// The config the process started with: what restart-only settings really are.
    boot: Arc<RuntimeConfig>,
}

impl Reloader {
    /// Watch `path`, polling its content every `poll`.
    pub fn new(path: PathBuf, config: Arc<ArcSwap<RuntimeConfig>>, poll: Duration) -> Self {
        let boot = config.load_full();
        Reloader {
            path,
            config,
            poll,
            boot,
        }
    }

    /// Load the file and swap it in if valid. Returns whether the swap happened.
    pub fn reload(&self) -> bool {
        let old = self.config.load_full();
        match config::load_replacing(&self.path, Some(&old)) {
            Ok(mut new) => {
                // Compared with the values the process started with, which are what it runs.
                let (o, n) = (&self.boot.source.observability, &new.source.observability);
                if o.latency_buckets != n.latency_buckets
                    || o.access_log.output != n.access_log.output
                    || o.access_log.buffer_lines != n.access_log.buffer_lines
                    || (n.access_log.enabled && !o.access_log.enabled)
                {
                    tracing::warn!(
                        "config reload: `observability.latency_buckets`, `access_log.output`, \
                         `access_log.buffer_lines` and turning on an access log that was off at \
                         start take effect only after a restart"
                    );
                }
                if new.source.rate_limit.max_tracked_keys != old.source.rate_limit.max_tracked_keys
                {
                    tracing::warn!(
                        "config reload: `rate_limit.max_tracked_keys` takes effect only after a restart"
                    );
                    new.source.rate_limit.max_tracked_keys = old.source.rate_limit.max_tracked_keys;
                }
                if new.source.cache != self.boot.source.cache {
                    tracing::warn!(
                        "config reload: the `cache` section (max_size, max_object_size, \
                         lock_timeout) takes effect only after a restart; the running cache is kept"
                    );
                    new.source.cache = self.boot.source.cache.clone();
                }
                if new.listen != old.listen
                    || new.admin_listen != old.admin_listen
                    || new.source.server != old.source.server
                {
                    tracing::warn!(
                        "config reload: `listen`, `admin` and `server` changes take effect only after a restart; \
                         keeping the running values"
                    );
                    // What the process really runs with stays visible (readiness probes the
                    // bound listeners, logs show the real addresses).
                    new.listen = old.listen.clone();
                    new.admin_listen = old.admin_listen;
                    new.source.listen = old.source.listen.clone();
                    // The admin token is not restart-only: rotating it takes effect at once.
                    new.source.admin.listen = old.source.admin.listen.clone();
                    new.source.server = old.source.server.clone();
                }
                tracing::info!("config reloaded: {}", new.summary());
                self.config.store(Arc::new(new));
                metrics::CONFIG_RELOADS_TOTAL
                    .with_label_values(&["success"])
                    .inc();
                true
            }
            Err(errors) => {
                tracing::error!(
                    "config reload failed, still serving the previous config:\n{errors}"
                );
                metrics::CONFIG_RELOADS_TOTAL
                    .with_label_values(&["failure"])
                    .inc();
                false
            }
        }
    }
}

fn fingerprint(path: &PathBuf) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload by signal disabled: {e}");
                return;
            }
        };
        let mut last = fingerprint(&self.path);
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.path.display());
                    last = fingerprint(&self.path);
                    self.reload();
                }
                _ = tick.tick() => {
                    let now = fingerprint(&self.path);
                    if now.is_some() && now != last {
                        last = now;
                        tracing::info!("{} changed: reloading", self.path.display());
                        self.reload();
                    }
                }
            }
        }
    }
}
