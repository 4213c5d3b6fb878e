//! The drain on SIGTERM: Pingora stops accepting at once; requests in flight (streams
//! included) get up to `server.grace_period` + `server.shutdown_timeout` to complete; and the
//! process exits as soon as none is left, not after a fixed wait.
//!
//! Pingora's own timeline is a fixed sleep (its grace period) and then the runtimes are cut:
//! tollgate gives Pingora the whole deadline as its grace period, and this service ends the
//! process early once the in-flight count (`tollgate_http_requests_in_flight`) reaches zero
//! and no connection accepted before the shutdown is still waiting for its first request,
//! after a moment for the access log's writer and the fleet heartbeat's goodbye.

use crate::observe::metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::{Duration, Instant};

/// Watches the drain after SIGTERM.
pub struct Drain {
    /// How long in-flight requests may take in all.
    pub deadline: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let started = Instant::now();
        loop {
            let in_flight = metrics::HTTP_REQUESTS_IN_FLIGHT.get();
            // Connections accepted just before the shutdown, whose request has not come yet, are
            // waited for too (a second at most: `connections::FIRST_REQUEST_GRACE`).
            if in_flight <= 0 && crate::connections::awaiting_first_request() == 0 {
                // Let the access log's writer and the heartbeat's goodbye finish.
                tokio::time::sleep(Duration::from_millis(100)).await;
                tracing::info!(
                    "drained: nothing in flight {:.2}s after SIGTERM, exiting",
                    started.elapsed().as_secs_f64()
                );
                std::process::exit(0);
            }
            if started.elapsed() >= self.deadline {
                tracing::warn!(
                    "drain deadline ({:?}) passed with {in_flight} requests in flight: they are cut",
                    self.deadline
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
