//! Fleet rate limits: what a decision costs when it is taken in Redis (`rate_limit.store:
//! redis`), next to the same decision taken in this process (`store: local`).
//!
//! Run: `cargo bench --bench fleet` (needs `redis-server` on `PATH`, Redis 7; on Debian/Ubuntu
//! `apt-get install redis-server`). Once built it runs for about ten seconds and prints
//! markdown tables.
//!
//! The bench starts its own `redis-server` on a free loopback port, without persistence
//! (`--save '' --appendonly no`), and kills it when it ends (also on a panic). It talks to it as
//! a replica does: a [`Link`] from `redis:` defaults (except `command_timeout: 1s`, so that no
//! call is dropped on a busy box and every decision is a Redis decision) and a
//! [`RedisLimiter`], on a Tokio multi-thread runtime. It measures:
//!
//! - **(a) decision latency**: 20,000 sequential `RedisLimiter::check` calls for one
//!   never-throttled key (rps 1e6, burst 1e6, no daily quota), p50/p90/p99/max in µs, next to
//!   the peer `LocalLimiter::check` (with the clock read `Limiter::check` adds), and the
//!   redis/local ratios, next to two floors (`PING` through the same link, and from a blocking
//!   client); then decisions per second with 64 decisions in flight, both stores, and the CPU
//!   this process (the client side) spent per decision.
//! - **(c) Redis traffic per decision**, from `INFO stats commandstats cpu` read before and
//!   after each measured run (minus what reading INFO itself costs): round trips (EVALSHA,
//!   plus EVAL / SCRIPT LOAD if the script had to be loaded), the commands the Lua script runs,
//!   bytes in and out, and Redis' own CPU time.
//! - **(d) Redis memory per active tenant**: `used_memory` (`INFO memory`) before and after
//!   one decision for each of 10,000 tenants (`t:tenant-N`), with a daily quota (both keys of
//!   a tenant exist) and without one (the bucket key only).
//!
//! (b), end-to-end requests per second with `store: redis` vs `store: local`, is the
//! `tollgate-redis` target of `benches/load.sh`. See benches/README.md for what each number
//! means.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tollgate::config::model::RedisConfig;
use tollgate::config::units::ConfigDuration;
use tollgate::fleet::{Link, Settings};
use tollgate::ratelimit::redis::RedisLimiter;
use tollgate::ratelimit::{
    unix_nanos_now, LimitKey, Limits, LocalLimiter, RateLimiter, TIER_SCOPE,
};

// The allocator of the `tollgate` binary, so the local peer is timed as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sequential decisions measured per store.
const DECISIONS: usize = 20_000;
/// Unmeasured decisions first: they open the link's second connection and load the script.
const WARM_UP: usize = 2_000;
/// Decisions in flight at once in the throughput run.
const IN_FLIGHT: usize = 64;
/// Decisions each of them takes in turn.
const PER_TASK: usize = 1_600;
/// Decisions in the throughput run (per store).
const THROUGHPUT_DECISIONS: usize = IN_FLIGHT * PER_TASK;
/// Distinct tenants of the memory count.
const TENANTS: usize = 10_000;

/// A limit nothing on this machine reaches: every check runs the whole script (reads and
/// writes the bucket) and none is refused.
const NEVER_THROTTLED: Limits = Limits {
    rps: 1e6,
    burst: 1_000_000,
    daily: None,
};

/// An active tenant for the memory count. A bucket key expires when its bucket is full again;
/// at one request per minute one request keeps it for 60 s, far longer than the count takes,
/// so every tenant's keys are still there when `used_memory` is read.
const ACTIVE: Limits = Limits {
    rps: 1.0 / 60.0,
    burst: 60,
    daily: Some(100_000),
};

fn main() {
    let redis = RedisServer::start();
    let mut bench = Bench::connect(&redis);
    bench.warm_up();
    let sequential = bench.one_at_a_time();
    let concurrent = bench.in_flight();
    let with_daily = bench.memory_per_tenant(ACTIVE);
    let bucket_only = bench.memory_per_tenant(Limits {
        daily: None,
        ..ACTIVE
    });

    print_header(&mut bench, &redis);
    print_latency_table(&sequential);
    print_throughput_table(&concurrent);
    print_traffic_table(&[
        ("(a) sequential, one key", &sequential.traffic),
        ("(a) 64 in flight, one key", &concurrent.traffic),
        ("(d) 10,000 tenants, daily quota", &with_daily.traffic),
        ("(d) 10,000 tenants, no daily quota", &bucket_only.traffic),
    ]);
    print_memory_table(&[&with_daily, &bucket_only]);
}

/// Both stores, connected as a replica's are, and a side connection to read Redis' counters.
struct Bench {
    rt: Runtime,
    link: Arc<Link>,
    redis: Arc<RedisLimiter>,
    local: Arc<LocalLimiter>,
    /// The never-throttled key of (a).
    hot: LimitKey,
    admin: redis::Connection,
    /// What reading INFO costs Redis, subtracted from every measured window.
    overhead: Counters,
}

/// (a) one decision at a time, and (c) around the Redis run.
struct Sequential {
    redis: Latencies,
    local: Latencies,
    link_ping: Latencies,
    raw_ping: Latencies,
    traffic: Traffic,
}

/// (a) decisions in flight at once, and (c) around the Redis run.
struct Concurrent {
    redis: Run,
    local: Run,
    traffic: Traffic,
}

/// A throughput run: its wall time and the CPU time this process (client side) spent in it.
struct Run {
    wall: Duration,
    cpu: Duration,
}

impl Bench {
    fn connect(server: &RedisServer) -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Defaults but for the timeout: on a busy box a slow call must count, not be dropped.
        let link = Arc::new(Link::new(Settings::new(&RedisConfig {
            url: Some(server.url()),
            command_timeout: ConfigDuration::from_secs(1),
            ..RedisConfig::default()
        })));
        rt.block_on(link.connect())
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server.url()));
        let mut admin = server.admin();
        let overhead = Counters::read(&mut admin).window_to(&Counters::read(&mut admin));
        Bench {
            redis: Arc::new(RedisLimiter::new(link.clone())),
            local: Arc::new(LocalLimiter::new(100_000)),
            hot: LimitKey::new("t:bench", TIER_SCOPE),
            rt,
            link,
            admin,
            overhead,
        }
    }

    /// Both connections open, the script cached, the key's state in both stores.
    fn warm_up(&self) {
        on_worker(
            &self.rt,
            redis_latencies(self.redis.clone(), self.hot.clone(), WARM_UP),
        );
        on_worker(
            &self.rt,
            local_latencies(self.local.clone(), self.hot.clone(), WARM_UP),
        );
    }

    fn one_at_a_time(&mut self) -> Sequential {
        let c0 = Counters::read(&mut self.admin);
        let redis = on_worker(
            &self.rt,
            redis_latencies(self.redis.clone(), self.hot.clone(), DECISIONS),
        );
        let c1 = Counters::read(&mut self.admin);
        let local = on_worker(
            &self.rt,
            local_latencies(self.local.clone(), self.hot.clone(), DECISIONS),
        );
        // Floors, to tell the script's share of a decision from the round trip's: the same
        // link without the script, and a blocking client without Tokio.
        let link_ping = on_worker(&self.rt, link_pings(self.link.clone(), DECISIONS));
        let raw_ping = blocking_pings(&mut self.admin, DECISIONS);
        Sequential {
            redis: Latencies::new(redis),
            local: Latencies::new(local),
            link_ping: Latencies::new(link_ping),
            raw_ping: Latencies::new(raw_ping),
            traffic: Traffic::new(&c0, &c1, &self.overhead, DECISIONS),
        }
    }

    fn in_flight(&mut self) -> Concurrent {
        let c0 = Counters::read(&mut self.admin);
        let redis = self.timed(redis_throughput(self.redis.clone(), self.hot.clone()));
        let c1 = Counters::read(&mut self.admin);
        let local = self.timed(local_throughput(self.local.clone(), self.hot.clone()));
        Concurrent {
            redis,
            local,
            traffic: Traffic::new(&c0, &c1, &self.overhead, THROUGHPUT_DECISIONS),
        }
    }
}

impl Bench {
    /// Run `f` on a worker, with the CPU time the whole process spent meanwhile: the client
    /// side of the decisions (limiter, Redis client, runtime), all threads.
    fn timed<F>(&self, f: F) -> Run
    where
        F: Future<Output = Duration> + Send + 'static,
    {
        let cpu0 = process_cpu();
        let wall = on_worker(&self.rt, f);
        Run {
            wall,
            cpu: process_cpu() - cpu0,
        }
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Run `f` as a task of the runtime's worker pool (where a proxy's request runs), not on the
/// calling thread, and wait for it.
fn on_worker<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(rt.spawn(f)).expect("bench task panicked")
}

// ---------------------------------------------------------------- (a) latency and throughput

/// Each decision's duration in ns.
async fn redis_latencies(limiter: Arc<RedisLimiter>, key: LimitKey, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let decision = limiter.check(&key, &NEVER_THROTTLED, 1, "ratelimit").await;
        out.push(started.elapsed().as_nanos() as u64);
        assert!(
            decision.expect("a Redis decision").allowed,
            "never-throttled key refused"
        );
    }
    out
}

/// The peer: each local decision's duration in ns. Async only to run where the Redis one runs.
async fn local_latencies(limiter: Arc<LocalLimiter>, key: LimitKey, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let decision = limiter.check(&key, &NEVER_THROTTLED, 1, unix_nanos_now());
        out.push(started.elapsed().as_nanos() as u64);
        assert!(black_box(decision).allowed, "never-throttled key refused");
    }
    out
}

/// A floor: each `PING` through the link (its `connect` only pings once connected), in ns.
async fn link_pings(link: Arc<Link>, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        link.connect().await.expect("PING through the link");
        out.push(started.elapsed().as_nanos() as u64);
    }
    out
}

/// The lowest floor: each `PING` of a blocking client (no runtime, no multiplexing), in ns.
fn blocking_pings(admin: &mut redis::Connection, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query(admin).expect("PING");
        out.push(started.elapsed().as_nanos() as u64);
    }
    out
}

/// Wall time of [`THROUGHPUT_DECISIONS`] Redis decisions by [`IN_FLIGHT`] tasks: the link
/// multiplexes them over its connections, as it does a proxy's concurrent requests.
async fn redis_throughput(limiter: Arc<RedisLimiter>, key: LimitKey) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..PER_TASK {
                    let d = limiter.check(&key, &NEVER_THROTTLED, 1, "ratelimit").await;
                    assert!(d.expect("a Redis decision").allowed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("decision task panicked");
    }
    started.elapsed()
}

/// The same for the local store. A local decision has no await point, so "in flight" here means
/// the runtime's workers deciding at once on one key (one shard lock).
async fn local_throughput(limiter: Arc<LocalLimiter>, key: LimitKey) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..PER_TASK {
                    let d = limiter.check(&key, &NEVER_THROTTLED, 1, unix_nanos_now());
                    assert!(black_box(d).allowed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("decision task panicked");
    }
    started.elapsed()
}

/// Sorted durations (ns).
struct Latencies(Vec<u64>);

impl Latencies {
    fn new(mut ns: Vec<u64>) -> Latencies {
        ns.sort_unstable();
        Latencies(ns)
    }

    /// The `p`th percentile (nearest rank), in µs.
    fn percentile_us(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1] as f64 / 1000.0
    }

    fn max_us(&self) -> f64 {
        self.0.last().copied().unwrap_or(0) as f64 / 1000.0
    }

    fn mean_us(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64 / 1000.0
    }
}

// ---------------------------------------------------------------- (c) Redis traffic

/// The counters of `INFO stats commandstats cpu` a run moves.
#[derive(Default)]
struct Counters {
    /// Calls per command (`cmdstat_<name>`), including the commands scripts run.
    calls: HashMap<String, u64>,
    net_in: u64,
    net_out: u64,
    /// `used_cpu_user` + `used_cpu_sys`, in seconds.
    cpu_secs: f64,
}

impl Counters {
    fn read(admin: &mut redis::Connection) -> Counters {
        let info = info(admin, &["stats", "commandstats", "cpu"]);
        let mut c = Counters::default();
        for (field, value) in info_fields(&info) {
            if let Some(command) = field.strip_prefix("cmdstat_") {
                let calls = value
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                c.calls.insert(command.to_string(), calls);
            }
            match field {
                "total_net_input_bytes" => c.net_in = value.parse().unwrap_or(0),
                "total_net_output_bytes" => c.net_out = value.parse().unwrap_or(0),
                "used_cpu_user" | "used_cpu_sys" => {
                    c.cpu_secs += value.parse::<f64>().unwrap_or(0.0)
                }
                _ => {}
            }
        }
        c
    }

    /// What moved from `self` to `later`.
    fn window_to(&self, later: &Counters) -> Counters {
        let calls = later
            .calls
            .iter()
            .map(|(k, v)| (k.clone(), v - self.calls.get(k).copied().unwrap_or(0)))
            .collect();
        Counters {
            calls,
            net_in: later.net_in - self.net_in,
            net_out: later.net_out - self.net_out,
            cpu_secs: later.cpu_secs - self.cpu_secs,
        }
    }

    fn calls_of(&self, command: &str) -> u64 {
        self.calls.get(command).copied().unwrap_or(0)
    }
}

/// Commands a client sends to run a script: a decision's round trips.
const SCRIPT_CALLS: [&str; 3] = ["evalsha", "eval", "script|load"];
/// Not part of any decision: the bench's own commands on its admin connection, and what a
/// client sends when a connection opens.
const ADMIN_CALLS: [&str; 8] = [
    "info",
    "flushall",
    "memory|usage",
    "dbsize",
    "ping",
    "hello",
    "select",
    "client|setinfo",
];

/// Redis' work per decision in one measured window.
struct Traffic {
    round_trips: f64,
    script_commands: f64,
    bytes_in: f64,
    bytes_out: f64,
    cpu_us: f64,
}

impl Traffic {
    /// Per decision, between `before` and `after`, minus `overhead` (reading INFO once).
    fn new(before: &Counters, after: &Counters, overhead: &Counters, decisions: usize) -> Traffic {
        let w = before.window_to(after);
        let per = |x: f64| x / decisions as f64;
        let round_trips: u64 = SCRIPT_CALLS.iter().map(|c| w.calls_of(c)).sum();
        let script_commands: u64 = w
            .calls
            .iter()
            .filter(|(c, _)| {
                !SCRIPT_CALLS.contains(&c.as_str()) && !ADMIN_CALLS.contains(&c.as_str())
            })
            .map(|(_, n)| n)
            .sum();
        assert!(
            round_trips >= decisions as u64,
            "{round_trips} script calls for {decisions} decisions: some decisions were not taken in Redis"
        );
        Traffic {
            round_trips: per(round_trips as f64),
            script_commands: per(script_commands as f64),
            bytes_in: per(w.net_in.saturating_sub(overhead.net_in) as f64),
            bytes_out: per(w.net_out.saturating_sub(overhead.net_out) as f64),
            cpu_us: per((w.cpu_secs - overhead.cpu_secs).max(0.0) * 1e6),
        }
    }
}

// ---------------------------------------------------------------- (d) memory

/// Redis memory and traffic for one decision of each of [`TENANTS`] tenants.
struct MemoryRow {
    limits: Limits,
    keys: u64,
    before: u64,
    after: u64,
    /// `MEMORY USAGE` of tenant 0's bucket and daily keys.
    usage: (Option<u64>, Option<u64>),
    traffic: Traffic,
}

impl Bench {
    /// One decision for each of [`TENANTS`] tenants under `limits`, from an empty keyspace.
    fn memory_per_tenant(&mut self, limits: Limits) -> MemoryRow {
        let admin = &mut self.admin;
        // Only these tenants' keys are counted (the script cache stays).
        let _: () = redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query(admin)
            .expect("FLUSHALL");
        let before = used_memory(admin);
        let c0 = Counters::read(admin);
        let limiter = self.redis.clone();
        on_worker(&self.rt, async move {
            for i in 0..TENANTS {
                let key = LimitKey::new(format!("t:tenant-{i}"), TIER_SCOPE);
                let d = limiter.check(&key, &limits, 1, "ratelimit").await;
                assert!(d.expect("a Redis decision").allowed);
            }
        });
        let c1 = Counters::read(admin);
        let after = used_memory(admin);
        let keys: u64 = redis::cmd("DBSIZE").query(admin).expect("DBSIZE");
        let (bucket, daily) = self.redis.keys(&LimitKey::new("t:tenant-0", TIER_SCOPE));
        let mut usage = |key: String| -> Option<u64> {
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query(admin)
                .expect("MEMORY USAGE")
        };
        let usage = (usage(bucket), usage(daily));
        MemoryRow {
            limits,
            keys,
            before,
            after,
            usage,
            traffic: Traffic::new(&c0, &c1, &self.overhead, TENANTS),
        }
    }
}

// ---------------------------------------------------------------- report

fn print_header(bench: &mut Bench, server: &RedisServer) {
    let settings = bench.link.settings();
    let (bucket_key, _) = bench.redis.keys(&bench.hot);
    println!("## tollgate fleet rate-limit benchmark (`cargo bench --bench fleet`)\n");
    println!(
        "- redis-server {} on 127.0.0.1:{} (`--save '' --appendonly no`), nproc={}, tokio multi-thread runtime ({} workers)",
        redis_version(&mut bench.admin),
        server.port,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.rt.metrics().num_workers(),
    );
    println!(
        "- link: `redis:` defaults ({} multiplexed connections) but command_timeout {:?}; hot key `{bucket_key}`, limits rps 1e6, burst 1e6, no daily quota (never refused)",
        settings.connections, settings.command_timeout,
    );
    println!(
        "- latencies: {DECISIONS} sequential decisions after {WARM_UP} warm-up ones, each timed alone; local = `LocalLimiter::check` + the clock read (as `Limiter::check` calls it)\n"
    );
}

fn print_latency_table(s: &Sequential) {
    println!("### (a) decision latency, one at a time (µs)\n");
    println!("| store | p50 | p90 | p99 | max | mean |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, l) in [
        ("redis (`RedisLimiter::check`)", &s.redis),
        ("local (`LocalLimiter::check`)", &s.local),
        ("floor: PING through the link (no script)", &s.link_ping),
        ("floor: PING, blocking client (no Tokio)", &s.raw_ping),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            l.percentile_us(50.0),
            l.percentile_us(90.0),
            l.percentile_us(99.0),
            l.max_us(),
            l.mean_us()
        );
    }
    println!(
        "\nredis/local latency ratio: p50 {:.0}x, p99 {:.0}x\n",
        s.redis.percentile_us(50.0) / s.local.percentile_us(50.0),
        s.redis.percentile_us(99.0) / s.local.percentile_us(99.0)
    );
}

fn print_throughput_table(c: &Concurrent) {
    let rate = |run: &Run| THROUGHPUT_DECISIONS as f64 / run.wall.as_secs_f64();
    println!("### (a) throughput, {IN_FLIGHT} decisions in flight, one key\n");
    println!("| store | decisions | wall (s) | decisions/s | client CPU per decision (µs) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, run) in [("redis", &c.redis), ("local", &c.local)] {
        println!(
            "| {name} | {THROUGHPUT_DECISIONS} | {:.3} | {:.0} | {:.2} |",
            run.wall.as_secs_f64(),
            rate(run),
            run.cpu.as_secs_f64() * 1e6 / THROUGHPUT_DECISIONS as f64,
        );
    }
    println!(
        "\nredis/local decisions/s ratio: {:.4}\n",
        rate(&c.redis) / rate(&c.local)
    );
}

fn print_traffic_table(rows: &[(&str, &Traffic)]) {
    println!("### (c) Redis traffic per decision\n");
    println!("| run | round trips (EVALSHA) | commands run by the script | bytes in | bytes out | redis CPU (µs) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, t) in rows {
        println!(
            "| {name} | {:.3} | {:.2} | {:.1} | {:.1} | {:.2} |",
            t.round_trips, t.script_commands, t.bytes_in, t.bytes_out, t.cpu_us
        );
    }
    println!();
}

fn print_memory_table(rows: &[&MemoryRow]) {
    println!("### (d) Redis memory per active tenant ({TENANTS} tenants, one decision each)\n");
    println!("| limits | keys | used_memory before | used_memory after | bytes per tenant | MEMORY USAGE bucket / daily key |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in rows {
        let daily = r.limits.daily.map_or("none".to_string(), |d| d.to_string());
        let usage = |u: Option<u64>| u.map_or("-".to_string(), |n| n.to_string());
        println!(
            "| rps {:.4}, burst {}, daily {daily} | {} | {} | {} | {:.1} | {} / {} |",
            r.limits.rps,
            r.limits.burst,
            r.keys,
            r.before,
            r.after,
            (r.after as f64 - r.before as f64) / TENANTS as f64,
            usage(r.usage.0),
            usage(r.usage.1),
        );
    }
    println!();
}

// ---------------------------------------------------------------- the Redis server

/// A private `redis-server` on a free loopback port, killed when dropped (a panic too).
struct RedisServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir();
        let log = dir.join(format!("tollgate-fleet-bench-redis-{port}.log"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install Redis 7 (apt-get install redis-server)"
                )
            });
        let mut server = RedisServer { child, port, log };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for INFO and the like, apart from the link's.
    fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("admin connection to redis-server")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "redis-server exited ({status}); its log:\n{}",
                    self.log_text()
                );
            }
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not answering on port {} after 10 s; its log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port nothing listens on now (the OS picks it; released before Redis binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn info(admin: &mut redis::Connection, sections: &[&str]) -> String {
    redis::cmd("INFO").arg(sections).query(admin).expect("INFO")
}

/// `field:value` lines of an INFO answer.
fn info_fields(info: &str) -> impl Iterator<Item = (&str, &str)> {
    info.lines().filter_map(|l| l.trim_end().split_once(':'))
}

fn info_field(admin: &mut redis::Connection, section: &str, field: &str) -> String {
    let text = info(admin, &[section]);
    let value = info_fields(&text)
        .find(|(f, _)| *f == field)
        .map(|(_, v)| v.to_string());
    value.unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

fn used_memory(admin: &mut redis::Connection) -> u64 {
    info_field(admin, "memory", "used_memory")
        .parse()
        .expect("used_memory")
}

fn redis_version(admin: &mut redis::Connection) -> String {
    info_field(admin, "server", "redis_version")
}
