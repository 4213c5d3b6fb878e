//! Hot reload: on SIGHUP, or when the file's content changes (polled, which also catches the
//! symlink swap Kubernetes does for ConfigMaps), load the file again and swap the config in.
//! A file that fails validation is logged with every problem and the last good config keeps
//! serving. What is read only at start ([`crate::config::Startup`]: listeners, `server:`, the
//! `cache:` store, metric shapes, the access log's output) needs a restart; a change there is
//! logged and the running values stay.

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
}

impl Reloader {
    /// Watch `path`, polling its content every `poll`.
    pub fn new(path: PathBuf, config: Arc<ArcSwap<RuntimeConfig>>, poll: Duration) -> Self {
        Reloader { path, config, poll }
    }

    /// Load the file and swap it in if valid. Returns whether the swap happened.
    pub fn reload(&self) -> bool {
        let old = self.config.load_full();
        match config::load_replacing(&self.path, Some(&old)) {
            Ok(mut new) => {
                // The running values of start-only settings are what the process runs with:
                // they stay, and stay visible (readiness probes the bound listeners).
                let waiting = old.startup.restart_only_changes(&new.startup);
                if !waiting.is_empty() {
                    tracing::warn!(
                        "config reload: {} take effect only after a restart; keeping the running values",
                        waiting.join(", ")
                    );
                }
                new.startup = old.startup.clone();
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
