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
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Watches the config file and swaps in each new valid version.
pub struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<RuntimeConfig>>,
    poll: Duration,
    settle: Duration,
}

impl Reloader {
    /// Watch `path`, polling its content every `poll`; a change is loaded once the content has
    /// stayed the same for `settle`.
    pub fn new(
        path: PathBuf,
        config: Arc<ArcSwap<RuntimeConfig>>,
        poll: Duration,
        settle: Duration,
    ) -> Self {
        Reloader {
            path,
            config,
            poll,
            settle,
        }
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
        // A change seen but not loaded yet: its content and since when it has not changed.
        let mut pending: Option<(Option<Vec<u8>>, Instant)> = None;
        // Poll often enough to see a change settle soon after `settle`.
        let every = self
            .poll
            .min(self.settle / 4)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_poll = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.path.display());
                    last = fingerprint(&self.path);
                    pending = None;
                    self.reload();
                }
                _ = tick.tick() => {
                    // Between polls, only a pending change is looked at (to see it settle).
                    if pending.is_none() && Instant::now() < next_poll {
                        continue;
                    }
                    next_poll = Instant::now() + self.poll;
                    let now = fingerprint(&self.path);
                    if now.is_none() || now == last {
                        pending = None;
                        continue;
                    }
                    match &pending {
                        Some((seen, since)) if *seen == now => {
                            if since.elapsed() >= self.settle {
                                last = now;
                                pending = None;
                                tracing::info!("{} changed: reloading", self.path.display());
                                self.reload();
                            }
                        }
                        // New content (or still being written): wait for it to settle.
                        _ => pending = Some((now, Instant::now())),
                    }
                }
            }
        }
    }
}
