//! Test harness: the real tollgate binary, started on ephemeral loopback ports from a config
//! built in one line per group, route or tier, in front of in-process upstream doubles.
//!
//! ```ignore
//! use common::*;
//! let app = Upstream::start().await;
//! let tg = Config::new()
//!     .upstream(Group::new("app", [app.addr()]))
//!     .route(Route::prefix("/api/").name("api").to("app").cache("{ ttl: 60s }"))
//!     .start()
//!     .await;
//! tg.get_with("/api/x", &[("x-api-key", "k")]).await.assert_status(200);
//! assert_eq!(app.count(), 1);
//! tg.expect_metric("tollgate_http_requests_total", &[("route", "api")], 1.0).await;
//! ```
//!
//! - [`config`]: the typed config builder ([`Config`], [`Group`], [`Route`]);
//! - [`tollgate`]: the running proxy ([`Tollgate`]) and its request and metric helpers;
//! - [`response`]: [`Got`], a response read to the end, with assertions;
//! - [`upstream`]: the upstream double ([`Upstream`], [`Reply`]);
//! - [`demo`]: [`DemoUpstream`], an upstream in its own process (for tests that SIGKILL it);
//! - [`net`]: free ports, closed and misbehaving peers, raw sockets;
//! - [`redis`]: real `redis-server` processes and a three-master Redis Cluster.
//! - [`cli`]: tollgate's other commands (`check`, `explain`, ...).
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod config;
pub mod demo;
pub mod llm;
pub mod net;
pub mod redis;
pub mod relay;
pub mod response;
pub mod tollgate;
pub mod upstream;

pub use cli::{bin, check_file, check_yaml, check_yaml_with_env, run_cli};
pub use config::{Config, Endpoint, Group, Route};
pub use demo::DemoUpstream;
pub use llm::{LlmRequest, LlmUpstream, Tokens};
pub use net::{closed_addr, free_addr, free_port, raw, slamming_door, Blackhole};
pub use redis::{RedisCluster, RedisServer};
pub use relay::Relay;
pub use response::Got;
pub use tollgate::Tollgate;
pub use upstream::{Recorded, Reply, Upstream};

use std::time::{Duration, Instant};

/// Poll `cond` every 20 ms until it holds (true) or `limit` passes (false): a condition wait,
/// not a fixed sleep.
pub async fn eventually<F, Fut>(limit: Duration, cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_every(limit, Duration::from_millis(20), cond).await
}

/// [`eventually`], polling every `every` (finer, to time what it waits for).
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

/// Read `n` Server-Sent Events from `resp`, sending `event-i` on `tx` (the upstream's `/sse`
/// feed) only after `event-(i-1)` reached the client; `event-0` must already be sent. A proxy
/// that buffered the stream would never deliver the next event: the 10 s timeout fails the test.
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
