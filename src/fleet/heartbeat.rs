//! The heartbeat: every `redis.heartbeat_interval` each replica writes its name with Redis'
//! time into one sorted set and counts the names seen in the last three intervals. That count
//! is the fleet size the local fallback divides limits by (held at its last value while Redis
//! is gone). The same call opens the first connection and probes a Redis the link backs off
//! from, so recovery is noticed within one interval. On shutdown the replica leaves the set.

use super::link::Link;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// `KEYS[1]`: the fleet set. `ARGV[1]`: this replica, `ARGV[2]`: how long (ms) a name counts.
/// Returns the number of replicas seen within that window, this one included.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window * 2)
return redis.call('ZCARD', KEYS[1])
";

/// `KEYS[1]`: the fleet set; `ARGV[1]`: the replica leaving it.
const LEAVE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// The fleet's heartbeat, run as a background service.
pub struct Heartbeat {
    link: Arc<Link>,
}

impl Heartbeat {
    /// Beat for `link`.
    pub fn new(link: Arc<Link>) -> Self {
        Heartbeat { link }
    }

    /// The sorted set of replica names.
    fn key(&self) -> String {
        format!("{}:fleet", self.link.settings().key_prefix)
    }

    /// One beat: announce this replica and read the fleet size.
    pub async fn beat(&self) -> Result<u32, super::StoreError> {
        let script = redis::Script::new(HEARTBEAT);
        let window = self.link.settings().heartbeat_interval.as_millis().max(1) as u64 * 3;
        let mut inv = script.prepare_invoke();
        inv.key(self.key()).arg(self.link.replica()).arg(window);
        let n: u32 = self.link.probe("heartbeat", &inv).await?;
        self.link.set_fleet_size(n);
        Ok(n)
    }

    async fn leave(&self) {
        let script = redis::Script::new(LEAVE);
        let mut inv = script.prepare_invoke();
        inv.key(self.key()).arg(self.link.replica());
        let _: Result<i64, _> = self.link.eval("heartbeat", &inv).await;
    }
}

#[async_trait]
impl BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let every = self
            .link
            .settings()
            .heartbeat_interval
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.leave().await;
                    return;
                }
                _ = tick.tick() => {
                    // Failures are counted and logged by the link.
                    let _ = self.beat().await;
                }
            }
        }
    }
}
