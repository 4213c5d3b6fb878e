//! Fleet rate limits: several real tollgate processes sharing one real `redis-server` (or a
//! real three-master Redis Cluster), hammered concurrently. One limit for the whole fleet:
//! exact bursts, the sustained rate, the daily quota; Redis with a password, killed and
//! restarted under load, unreachable at start, replicas with skewed clocks, a reload that
//! switches the store, the fallback share, and what `explain` and the admin endpoint show.

mod common;

use common::*;
use futures_util::future::join_all;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A trusted tenant header names the caller, so tests can make tenants freely.
fn fleet(app: SocketAddr, redis: &str, tier: &str, tenants: &[&str]) -> Config {
    let mut c = Config::new()
        .upstream(Group::new("app", [app]))
        .route(Route::prefix("/").name("api").to("app"))
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("fleet", tier)
        .rate_limit("store", "redis")
        // Failures print the proxy's log: keep it to tollgate's own lines.
        .observability("access_log", "{ enabled: false }")
        .yaml(redis);
    for t in tenants {
        c = c.set("tenants", t, "{ tier: fleet }");
    }
    c
}

/// `redis:` for one server, with short timeouts and a fast heartbeat.
fn single(url: &str) -> String {
    format!(
        "redis:\n  url: {}\n  command_timeout: 200ms\n  heartbeat_interval: 200ms\n  backoff: 300ms\n",
        quote(url)
    )
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn start_all(cfg: &Config, n: usize) -> Vec<Tollgate> {
    join_all((0..n).map(|_| cfg.start())).await
}

/// `n` requests for `tenant`, all at once, spread round-robin over `replicas`.
async fn burst_of(replicas: &[Tollgate], tenant: &str, n: usize) -> Vec<Got> {
    join_all((0..n).map(|i| {
        let tg = &replicas[i % replicas.len()];
        async move { tg.get_with("/x", &[("x-tenant-id", tenant)]).await }
    }))
    .await
}

fn count(got: &[Got], status: u16) -> usize {
    got.iter().filter(|g| g.status == status).count()
}

async fn store_decisions(tg: &Tollgate, store: &str) -> f64 {
    tg.metric(
        "tollgate_ratelimit_store_decisions_total",
        &[("store", store)],
    )
    .await
    .unwrap_or(0.0)
}

/// Wait until every replica's Redis calls work (connected, heartbeats answered).
async fn wait_redis_up(replicas: &[Tollgate]) {
    for tg in replicas {
        tg.expect_metric("tollgate_redis_up", &[], 1.0).await;
    }
}

#[tokio::test]
async fn from_idle_exactly_burst_pass_fleet_wide() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 30 }",
        &["acme"],
    );
    let replicas = start_all(&cfg, 3).await;
    wait_redis_up(&replicas).await;
    let got = burst_of(&replicas, "acme", 120).await;
    assert_eq!(count(&got, 200), 30, "fleet-wide burst");
    assert_eq!(count(&got, 429), 90);
    for g in got.iter().filter(|g| g.status == 429) {
        assert!(g.has("retry-after"), "429 without Retry-After");
        assert_eq!(g.json()["policy"], "burst");
    }
    let mut redis_decisions = 0.0;
    for tg in &replicas {
        redis_decisions += store_decisions(tg, "redis").await;
        assert_eq!(store_decisions(tg, "local_fallback").await, 0.0);
    }
    assert_eq!(redis_decisions, 120.0, "every decision taken in Redis");
    // The keys carry the subject's hash tag and expire by themselves.
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:*"]);
    assert!(keys.contains("tollgate:{t:acme}:tier:b"), "{keys}");
    let ttl: i64 = redis
        .cli(&["pttl", "tollgate:{t:acme}:tier:b"])
        .parse()
        .unwrap();
    assert!(ttl > 0, "the bucket key expires (pttl {ttl})");
}

#[tokio::test]
async fn sustained_rate_is_within_two_percent_fleet_wide() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let rps = 50.0;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        // A burst of 10 absorbs 200 ms of client jitter (a bucket of 1 would lose every slot
        // in which no request happened to arrive, which measures the client, not the limit).
        "{ rps: 50, burst: 10 }",
        &["acme"],
    );
    let replicas = start_all(&cfg, 3).await;
    wait_redis_up(&replicas).await;
    assert_sustained_rate(&replicas, "acme", rps, 10.0).await;
}

/// Hammer `tenant` through every replica for 10 s (four clients per replica, back to back: far
/// more than `rps`) and check the fleet-wide allowed rate is within 2% of `rps`.
async fn assert_sustained_rate(replicas: &[Tollgate], tenant: &str, rps: f64, burst: f64) {
    let started = Instant::now();
    let window = Duration::from_secs(10);
    let workers = (0..4 * replicas.len()).map(|i| {
        let tg = &replicas[i % replicas.len()];
        async move {
            let (mut ok, mut other) = (0u32, 0u32);
            while started.elapsed() < window {
                match tg.get_with("/x", &[("x-tenant-id", tenant)]).await.status {
                    200 => ok += 1,
                    429 => {}
                    _ => other += 1,
                }
            }
            (ok, other)
        }
    });
    let results = join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let allowed: u32 = results.iter().map(|r| r.0).sum();
    let errors: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(errors, 0, "only 200 and 429");
    // From idle: the burst plus one per emission interval.
    let expected = burst + rps * elapsed;
    let off = (f64::from(allowed) - expected).abs() / expected;
    assert!(
        off <= 0.02,
        "{tenant}: allowed {allowed} over {elapsed:.2}s, expected {expected:.0} (off by {:.1}%)",
        off * 100.0
    );
}

#[tokio::test]
async fn the_daily_quota_counts_fleet_wide() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 1000, burst: 1000, daily: 25 }",
        &["acme"],
    );
    let replicas = start_all(&cfg, 3).await;
    wait_redis_up(&replicas).await;
    let got = burst_of(&replicas, "acme", 60).await;
    assert_eq!(count(&got, 200), 25, "fleet-wide daily quota");
    for g in got.iter().filter(|g| g.status == 429) {
        assert_eq!(g.json()["policy"], "daily");
        assert_eq!(g.json()["error"], "daily_quota_exhausted");
    }
    // The day key expires after its UTC day.
    let ttl: i64 = redis
        .cli(&["ttl", "tollgate:{t:acme}:tier:d"])
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 86_400 + 60, "day key ttl {ttl}");
}

#[tokio::test]
async fn a_redis_cluster_shares_exact_limits_for_tenants_on_every_master() {
    let cluster = RedisCluster::start();
    let app = Upstream::start().await;
    // One tenant whose keys live on each master (the subject is `t:<id>`).
    let subjects = cluster.tag_on_each_master("t:tenant-");
    let tenants: Vec<String> = subjects
        .iter()
        .map(|s| s.strip_prefix("t:").unwrap().to_string())
        .collect();
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| quote(s)).collect();
    let redis = format!(
        "redis:\n  cluster: [{}]\n  command_timeout: 500ms\n  heartbeat_interval: 200ms\n",
        seeds.join(", ")
    );
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let cfg = fleet(
        app.addr(),
        &redis,
        "{ rps: 0.01, burst: 10, daily: 1000 }",
        &names,
    )
    .set(
        "tenants",
        "steady",
        "{ tier: fleet, rps: 50, burst: 10, daily: 100000 }",
    )
    .set(
        "tenants",
        "quota",
        "{ tier: fleet, rps: 1000, burst: 1000, daily: 25 }",
    );
    let replicas = start_all(&cfg, 3).await;
    wait_redis_up(&replicas).await;
    for tenant in &tenants {
        let got = burst_of(&replicas, tenant, 40).await;
        assert_eq!(count(&got, 200), 10, "tenant {tenant}: fleet-wide burst");
        assert_eq!(count(&got, 429), 30, "tenant {tenant}");
    }
    // The daily quota and the sustained rate hold on the Cluster too.
    let got = burst_of(&replicas, "quota", 60).await;
    assert_eq!(
        count(&got, 200),
        25,
        "fleet-wide daily quota on the Cluster"
    );
    assert_sustained_rate(&replicas, "steady", 50.0, 10.0).await;
    for tg in &replicas {
        assert_eq!(store_decisions(tg, "local_fallback").await, 0.0);
    }
    // Each master holds the keys of its tenant: the two keys of a subject share its slot.
    for (subject, port) in subjects.iter().zip(cluster.ports()) {
        let bucket = format!("tollgate:{{{subject}}}:tier:b");
        let daily = format!("tollgate:{{{subject}}}:tier:d");
        let slot = cluster.slot_of(&bucket);
        assert_eq!(slot, cluster.slot_of(&daily));
        let owner = cluster.master_for_slot(slot);
        assert_eq!(cluster.cli(owner, &["exists", &bucket, &daily]), "2");
        let _ = port;
    }
}

#[tokio::test]
async fn killing_and_restarting_redis_under_load_never_gives_5xx_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let app = Upstream::start().await;
    let mut cfg = fleet(
        app.addr(),
        // A connect that blocked requests would show as 2 s; the calls give up after 100 ms.
        &format!(
            "redis:\n  url: {}\n  connect_timeout: 2s\n  command_timeout: 100ms\n  heartbeat_interval: 100ms\n  backoff: 200ms\n",
            quote(&redis.url())
        ),
        "{ rps: 100000, burst: 100000 }",
        &["busy"],
    );
    cfg = cfg.set("tenants", "small", "{ tier: fleet, rps: 0.01, burst: 5 }");
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let workers = (0..4).map(|i| {
            let tg = &replicas[i % 2];
            let stop = &stop;
            async move {
                let (mut n, mut bad, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let status = tg.get_with("/x", &[("x-tenant-id", "busy")]).await.status;
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                    if status != 200 {
                        bad.push(status);
                    }
                }
                (n, bad, slowest)
            }
        });
        join_all(workers).await
    };
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.kill();
        // Both replicas notice and decide locally meanwhile.
        for tg in &replicas {
            tg.expect_metric("tollgate_redis_up", &[], 0.0).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.restart();
        for tg in &replicas {
            tg.expect_metric("tollgate_redis_up", &[], 1.0).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(load, chaos);
    let total: u32 = results.iter().map(|r| r.0).sum();
    let bad: Vec<u16> = results.iter().flat_map(|r| r.1.clone()).collect();
    let slowest = results.iter().map(|r| r.2).max().unwrap();
    assert!(total > 100, "the load ran ({total} requests)");
    assert!(
        bad.is_empty(),
        "non-200 answers under Redis failure: {bad:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?}: longer than the command timeout allows"
    );
    for tg in &replicas {
        assert!(store_decisions(tg, "local_fallback").await > 0.0);
        // Every Redis call ended within its 100 ms timeout (none in the buckets above 250 ms).
        let op = [("op", "ratelimit")];
        let all = tg
            .metric("tollgate_redis_command_duration_seconds_count", &op)
            .await
            .unwrap();
        let quick = tg
            .metric(
                "tollgate_redis_command_duration_seconds_bucket",
                &[("op", "ratelimit"), ("le", "0.25")],
            )
            .await
            .unwrap();
        assert_eq!(quick, all, "a Redis call outlived its timeout");
        let errors = tg
            .metric("tollgate_redis_errors_total", &[("kind", "connection")])
            .await
            .unwrap_or(0.0)
            + tg.metric("tollgate_redis_errors_total", &[("kind", "timeout")])
                .await
                .unwrap_or(0.0);
        assert!(errors > 0.0, "the failures are counted");
    }
    // Shared limiting is back: the restarted (empty) Redis holds one bucket for the fleet.
    let before: f64 = store_decisions(&replicas[0], "redis").await;
    let got = burst_of(&replicas, "small", 20).await;
    assert_eq!(count(&got, 200), 5, "fleet-wide burst after Redis returned");
    assert!(store_decisions(&replicas[0], "redis").await >= before + 10.0);
}

#[tokio::test]
async fn without_redis_each_replica_enforces_its_share_of_the_limit() {
    let mut redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 20 }",
        &["acme"],
    );
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;
    // The heartbeats tell each replica the fleet is two strong.
    for tg in &replicas {
        tg.expect_metric("tollgate_fleet_replicas", &[], 2.0).await;
    }
    redis.kill();
    for tg in &replicas {
        tg.expect_metric("tollgate_redis_up", &[], 0.0).await;
        // Held at its last value while Redis is gone.
        assert_eq!(tg.metric("tollgate_fleet_replicas", &[]).await, Some(2.0));
    }
    let got = burst_of(&replicas[..1], "acme", 20).await;
    assert_eq!(
        count(&got, 200),
        10,
        "half of the burst on one of two replicas"
    );
    let got = burst_of(&replicas[1..], "acme", 20).await;
    assert_eq!(count(&got, 200), 10);
    assert_eq!(store_decisions(&replicas[0], "local_fallback").await, 20.0);
}

#[tokio::test]
async fn on_store_error_allow_and_deny() {
    let app = Upstream::start().await;
    // Nothing listens there: every call fails at once.
    let nowhere = format!("redis://{}", closed_addr());
    for (mode, want, store) in [
        ("allow", 200, "allow_fallback"),
        ("deny", 429, "deny_fallback"),
    ] {
        let cfg = fleet(
            app.addr(),
            &single(&nowhere),
            "{ rps: 0.01, burst: 2 }",
            &["acme"],
        )
        .rate_limit("on_store_error", mode);
        let tg = cfg.start().await;
        let got = burst_of(std::slice::from_ref(&tg), "acme", 5).await;
        assert_eq!(count(&got, want), 5, "on_store_error: {mode}");
        assert_eq!(store_decisions(&tg, store).await, 5.0);
    }
}

#[tokio::test]
async fn redis_required_at_start_fails_fast_without_printing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let yaml = format!(
        "listen: {}\nadmin: {{ listen: {} }}\nupstreams: {{ app: {{ endpoints: [127.0.0.1:9] }} }}\nroutes: [{{ match: {{ path_prefix: / }}, upstream: app }}]\ntiers: {{ free: {{ rps: 1, burst: 1 }} }}\nrate_limit: {{ store: redis }}\nredis:\n  url: redis://:${{REDIS_PASSWORD}}@{}\n  required: true\n  connect_timeout: 300ms\n",
        free_addr(),
        free_addr(),
        closed_addr()
    );
    std::fs::write(&path, yaml).unwrap();
    let started = Instant::now();
    let (code, out, err) = run_cli(
        [
            std::ffi::OsStr::new("run"),
            std::ffi::OsStr::new("-c"),
            path.as_os_str(),
        ],
        &[("REDIS_PASSWORD", "hunter2-secret")],
    );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("cannot be reached") && err.contains("redis.required"),
        "{err}"
    );
    assert!(
        err.contains("redis://:***@"),
        "the URL is shown masked: {err}"
    );
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "password printed: {err}"
    );
}

#[tokio::test]
async fn not_required_it_starts_in_fallback_and_says_so() {
    let app = Upstream::start().await;
    let nowhere = format!("redis://:hunter2-secret@{}", closed_addr());
    let cfg = fleet(
        app.addr(),
        &single(&nowhere),
        "{ rps: 0.01, burst: 2 }",
        &["acme"],
    );
    let tg = cfg.start().await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(
        count(&got, 200),
        2,
        "the local fallback limits (fleet of one)"
    );
    let log = tg.log();
    assert!(log.contains("starting in fallback"), "{log}");
    assert!(!log.contains("hunter2"), "password in the log:\n{log}");
    assert_eq!(tg.metric("tollgate_redis_up", &[]).await, Some(0.0));
}

#[tokio::test]
async fn a_redis_with_a_password_is_used_and_the_password_is_never_shown() {
    let redis = RedisServer::start_with_password("pw-Zx81-secret");
    let app = Upstream::start().await;
    let url = format!("redis://:${{REDIS_PASSWORD}}@127.0.0.1:{}", redis.port());
    let cfg = fleet(
        app.addr(),
        &single(&url),
        "{ rps: 0.01, burst: 3 }",
        &["acme"],
    )
    .env("REDIS_PASSWORD", "pw-Zx81-secret");
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;
    let got = burst_of(&replicas, "acme", 10).await;
    assert_eq!(count(&got, 200), 3);
    for tg in &replicas {
        assert_eq!(store_decisions(tg, "redis").await, 5.0);
        assert!(!tg.log().contains("pw-Zx81"), "password in the log");
        assert!(!tg.metrics().await.contains("pw-Zx81"));
    }
    // `check` validates the block and prints no password either.
    let (code, out, err) = run_cli(
        [
            std::ffi::OsStr::new("check"),
            replicas[0].config_path.as_os_str(),
        ],
        &[("REDIS_PASSWORD", "pw-Zx81-secret")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rate limits shared in redis redis://:***@"),
        "{out}"
    );
    assert!(!out.contains("pw-Zx81") && !err.contains("pw-Zx81"));

    // A wrong password: refused by Redis, counted as `auth`, decided locally, never printed.
    let wrong = fleet(
        app.addr(),
        &single(&url),
        "{ rps: 0.01, burst: 3 }",
        &["acme"],
    )
    .env("REDIS_PASSWORD", "wrong-Qq77");
    let tg = wrong.start().await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(count(&got, 200), 3);
    assert_eq!(count(&got, 500) + count(&got, 502) + count(&got, 503), 0);
    let auth_counted = eventually(Duration::from_secs(10), || async {
        tg.metric("tollgate_redis_errors_total", &[("kind", "auth")])
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(auth_counted, "auth errors counted");
    assert!(!tg.log().contains("wrong-Qq77"));
    // Fixed on the Redis side (the password it has becomes the right one): the replica logs in
    // again by itself, no restart.
    redis.cli(&["config", "set", "requirepass", "wrong-Qq77"]);
    let fixed = Instant::now();
    tg.expect_metric("tollgate_redis_up", &[], 1.0).await;
    eprintln!("logged in again {:?} after the fix", fixed.elapsed());
    let got = burst_of(std::slice::from_ref(&tg), "acme", 1).await;
    // The bucket the other replicas emptied: shared again.
    assert_eq!(count(&got, 429), 1, "decided on the fleet's bucket");
    assert_eq!(store_decisions(&tg, "redis").await, 1.0);
}

#[tokio::test]
async fn a_restarted_redis_that_lost_its_keys_starts_limits_fresh_without_errors() {
    let mut redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 3 }",
        &["acme"],
    );
    let tg = cfg.start().await;
    wait_redis_up(std::slice::from_ref(&tg)).await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(count(&got, 200), 3);
    redis.kill();
    tg.expect_metric("tollgate_redis_up", &[], 0.0).await;
    redis.restart();
    tg.expect_metric("tollgate_redis_up", &[], 1.0).await;
    let before = store_decisions(&tg, "redis").await;
    // The script cache is empty too: EVALSHA gets NOSCRIPT and the script is loaded again.
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(count(&got, 200), 3, "a fresh bucket");
    assert_eq!(count(&got, 429), 1);
    assert_eq!(store_decisions(&tg, "redis").await, before + 4.0);
}

/// libfaketime moves one replica's wall clock 30 hours ahead (another UTC day); decisions
/// use Redis' clock, so the two replicas still share one bucket and one daily count.
#[tokio::test]
async fn replicas_with_skewed_clocks_share_one_bucket_and_one_day() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "libfaketime is missing: scripts/setup.sh installs the `faketime` package"
    );
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 6, daily: 10 }",
        &["acme"],
    )
    .set(
        "tenants",
        "other",
        "{ tier: fleet, rps: 1000, burst: 1000 }",
    );
    let normal = cfg.start().await;
    let skewed = Tollgate::start_with_env(
        &cfg.render(),
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME", "+30h"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    let replicas = [normal, skewed];
    wait_redis_up(&replicas).await;
    // The skew is real: the skewed replica's log lines carry another date.
    let day_of_first_line = |tg: &Tollgate| {
        tg.log()
            .lines()
            .next()
            .unwrap_or("")
            .get(..10)
            .map(str::to_string)
    };
    let (today, other_day) = (
        day_of_first_line(&replicas[0]),
        day_of_first_line(&replicas[1]),
    );
    assert_ne!(today, other_day, "faketime did not move the clock");

    let got = burst_of(&replicas, "acme", 20).await;
    assert_eq!(count(&got, 200), 6, "one burst across skewed replicas");
    // `other` has room in its bucket: only the daily quota (10 for the fleet, whatever day each
    // replica thinks it is) refuses.
    let got = burst_of(&replicas, "other", 30).await;
    assert_eq!(
        count(&got, 200),
        10,
        "one daily count across skewed replicas"
    );
    for g in got.iter().filter(|g| g.status == 429) {
        assert_eq!(g.json()["policy"], "daily");
    }
}

#[tokio::test]
async fn a_reload_switches_the_store_between_local_and_redis() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let redis_cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 3 }",
        &["acme"],
    );
    let local_cfg = redis_cfg.clone().rate_limit("store", "local");
    let tg = local_cfg.start().await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(count(&got, 200), 3);
    assert_eq!(store_decisions(&tg, "local").await, 4.0);
    // (The heartbeat's `tollgate:fleet` set is there whatever the store.)
    let limit_keys = |redis: &RedisServer| redis.cli(&["--scan", "--pattern", "tollgate:{*"]);
    assert_eq!(
        limit_keys(&redis),
        "",
        "store: local writes no limit keys to Redis"
    );

    tg.reload(&redis_cfg, 1).await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 4).await;
    assert_eq!(count(&got, 200), 3, "Redis holds its own (fresh) bucket");
    assert_eq!(store_decisions(&tg, "redis").await, 4.0);
    assert!(limit_keys(&redis).contains("tollgate:{t:acme}:tier:b"));

    tg.reload(&local_cfg, 2).await;
    let got = burst_of(std::slice::from_ref(&tg), "acme", 1).await;
    assert_eq!(count(&got, 429), 1, "back on the local bucket, still empty");
    assert_eq!(store_decisions(&tg, "local").await, 5.0);
}

#[tokio::test]
async fn explain_and_the_admin_endpoint_show_the_store_and_live_counts() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 0.01, burst: 10, daily: 100 }",
        &["acme"],
    );
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;
    let got = burst_of(&replicas[..1], "acme", 4).await;
    assert_eq!(count(&got, 200), 4);
    // The other replica reads the fleet's counts.
    let state = replicas[1]
        .admin_get("/ratelimit/state?tenant=acme")
        .await
        .assert_status(200)
        .json();
    let p = &state["policies"][0];
    assert_eq!(p["store"], "redis", "{state}");
    assert_eq!(p["burst_remaining"], 6, "{state}");
    assert_eq!(p["daily_remaining"], 96, "{state}");
    // Reading consumed nothing.
    let again = replicas[0]
        .admin_get("/ratelimit/state?tenant=acme")
        .await
        .json();
    assert_eq!(again["policies"][0]["burst_remaining"], 6);
    replicas[0]
        .admin_get("/ratelimit/state?tenant=nobody")
        .await
        .assert_status(404);

    let (code, out, err) = run_cli(
        [
            std::ffi::OsStr::new("explain"),
            std::ffi::OsStr::new("-c"),
            replicas[0].config_path.as_os_str(),
            std::ffi::OsStr::new("--tenant"),
            std::ffi::OsStr::new("acme"),
            std::ffi::OsStr::new("--live"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("store:  redis redis://127.0.0.1:"), "{out}");
    assert!(out.contains("\"burst_remaining\": 6"), "{out}");
}

#[test]
fn check_rejects_bad_redis_sections_with_their_paths() {
    let base = "upstreams: { app: { endpoints: [127.0.0.1:3000] } }\nroutes: [{ match: { path_prefix: / }, upstream: app }]\ntiers: { free: { rps: 1, burst: 1 } }\n";
    let (code, _, err) = check_yaml(&format!("{base}rate_limit: {{ store: redis }}\n"));
    assert_eq!(code, 1);
    assert!(
        err.contains("rate_limit.store") && err.contains("`redis:` section"),
        "{err}"
    );

    let (code, _, err) = check_yaml(&format!(
        "{base}redis:\n  url: http://:topsecret@h:1\n  command_timeout: 0s\n  connections: 0\n  key_prefix: 'a{{b}}'\n"
    ));
    assert_eq!(code, 1);
    for want in [
        "redis.url",
        "unsupported scheme `http`",
        "redis.command_timeout",
        "redis.connections",
        "redis.key_prefix",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(!err.contains("topsecret"), "password in the error:\n{err}");

    let (code, _, err) = check_yaml(&format!(
        "{base}redis:\n  url: redis://a:1\n  cluster: [redis://b:1]\n"
    ));
    assert_eq!(code, 1);
    assert!(err.contains("either `url` or `cluster`"), "{err}");
    let (code, _, err) = check_yaml(&format!("{base}redis: {{ required: true }}\n"));
    assert_eq!(code, 1);
    assert!(err.contains("set `url`"), "{err}");
}

/// Calls to Redis for rate-limit decisions, summed over `replicas`.
async fn ratelimit_calls(replicas: &[Tollgate]) -> f64 {
    let mut n = 0.0;
    for tg in replicas {
        n += tg
            .metric(
                "tollgate_redis_command_duration_seconds_count",
                &[("op", "ratelimit")],
            )
            .await
            .unwrap_or(0.0);
    }
    n
}

#[tokio::test]
async fn lease_mode_calls_redis_once_per_slice_and_never_admits_more_than_exact() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = fleet(
        app.addr(),
        &single(&redis.url()),
        "{ rps: 100000, burst: 100000 }",
        &["hot"],
    )
    .rate_limit("mode", "lease")
    .rate_limit("lease_slice", "50")
    .rate_limit("lease_ttl", "5s")
    .set("tenants", "capped", "{ tier: fleet, rps: 20, burst: 200 }");
    let replicas = start_all(&cfg, 3).await;
    wait_redis_up(&replicas).await;

    // A hot tenant within its limits: one call per slice of 50.
    let requests = 3000;
    let workers = (0..12).map(|i| {
        let tg = &replicas[i % 3];
        async move {
            let mut ok = 0;
            for _ in 0..requests / 12 {
                ok += usize::from(tg.get_with("/x", &[("x-tenant-id", "hot")]).await.status == 200);
            }
            ok
        }
    });
    let ok: usize = join_all(workers).await.into_iter().sum();
    assert_eq!(ok, requests);
    let calls = ratelimit_calls(&replicas).await;
    let per_request = calls / requests as f64;
    assert!(
        per_request <= 0.05,
        "{calls} Redis calls for {requests} requests"
    );
    let (mut leased, mut in_redis) = (0.0, 0.0);
    for tg in &replicas {
        leased += store_decisions(tg, "redis_lease").await;
        in_redis += store_decisions(tg, "redis").await;
    }
    assert_eq!(
        leased + in_redis,
        requests as f64,
        "every decision was taken in Redis or spent a lease"
    );
    assert!(
        leased >= 0.9 * requests as f64,
        "{leased} of {requests} from leases"
    );

    // A tenant at its limit: never more than exact mode admits (burst + refill), and at most
    // one slice per other replica stranded.
    let started = Instant::now();
    let got = burst_of(&replicas, "capped", 600).await;
    let ceiling = 200.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
    let allowed = count(&got, 200) as f64;
    assert!(
        allowed <= ceiling,
        "admitted {allowed}, exact mode admits at most {ceiling:.0}"
    );
    // Each other replica may hold its slice and a top-up taken below half of it.
    assert!(
        allowed >= 200.0 - 2.0 * 1.5 * 50.0,
        "admitted {allowed}: more than a slice and a half stranded per other replica"
    );
    assert_eq!(count(&got, 200) + count(&got, 429), 600);
    eprintln!(
        "lease: {calls} Redis calls for {requests} requests ({per_request:.4} per request); \
         at the limit {allowed} admitted, exact ceiling {ceiling:.1}"
    );
}

async fn key_lookups(tg: &Tollgate, outcome: &str) -> f64 {
    tg.metric("tollgate_api_key_lookups_total", &[("outcome", outcome)])
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn api_keys_provisioned_in_redis_work_fleet_wide_and_revocations_reach_every_replica() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let cfg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .tier("pro", "{ rps: 0.01, burst: 4 }")
        .rate_limit("store", "redis")
        .identity("key_store", "redis")
        .identity("key_cache_ttl", "300ms")
        .identity("key_negative_ttl", "10s")
        .identity("key_lookups_per_second", "50")
        .observability("access_log", "{ enabled: false }")
        .yaml(&single(&redis.url()));
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;
    let keys = |args: &[&str]| {
        let mut all = vec![
            std::ffi::OsStr::new("keys"),
            std::ffi::OsStr::new("-c"),
            replicas[0].config_path.as_os_str(),
        ];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        run_cli(all, &[])
    };

    let (code, out, err) = keys(&[
        "add",
        "--tenant",
        "newco",
        "--tier",
        "pro",
        "--key",
        "k-newco-1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("added sha256:") && !out.contains("k-newco-1"),
        "{out}"
    );
    let dump = redis.cli(&["--scan", "--pattern", "tollgate:key*"]);
    assert!(dump.contains("tollgate:keys"), "{dump}");
    let record = redis.cli(&[
        "hgetall",
        &format!("tollgate:key:{}", sha256_hex("k-newco-1")),
    ]);
    assert!(
        record.contains("newco") && !record.contains("k-newco-1"),
        "digest only: {record}"
    );

    // The tenant's tier applies fleet-wide.
    let got = join_all((0..8).map(|i| {
        let tg = &replicas[i % 2];
        async move { tg.get_with("/x", &[("x-api-key", "k-newco-1")]).await }
    }))
    .await;
    assert_eq!(count(&got, 200), 4, "burst of tier pro across the fleet");
    assert_eq!(count(&got, 429), 4);

    let (code, out, _) = keys(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("tenant=newco tier=pro") && out.contains("1 key(s)"),
        "{out}"
    );
    let (code, _, err) = keys(&["add", "--tenant", "x", "--tier", "gold"]);
    assert_eq!(code, 1);
    assert!(err.contains("tier `gold` is not in this config"), "{err}");
    let (code, _, err) = keys(&["add", "--tenant", "x", "--tier", "pro", "--burst", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--burst must be at least 1"), "{err}");

    // Revoked: every replica refuses it within key_cache_ttl.
    let (code, _, err) = keys(&["revoke", "k-newco-1"]);
    assert_eq!(code, 0, "{err}");
    let revoked = Instant::now();
    for tg in &replicas {
        let refused = eventually(Duration::from_secs(5), || async {
            tg.get_with("/x", &[("x-api-key", "k-newco-1")])
                .await
                .status
                == 401
        })
        .await;
        assert!(refused, "replica still accepts a revoked key");
    }
    assert!(
        revoked.elapsed() < Duration::from_secs(2),
        "took {:?}",
        revoked.elapsed()
    );

    // One unknown key asked again and again: looked up once (negative cache).
    let tg = &replicas[1];
    let before = key_lookups(tg, "unknown").await;
    for _ in 0..30 {
        tg.get_with("/x", &[("x-api-key", "never-issued")])
            .await
            .assert_status(401);
    }
    assert_eq!(key_lookups(tg, "unknown").await, before + 1.0);

    // A flood of made-up keys: refused, with Redis asked at most 50 times a second.
    let started = Instant::now();
    let flood = join_all((0..400).map(|i| async move {
        tg.get_with("/x", &[("x-api-key", &format!("made-up-{i}"))])
            .await
            .status
    }))
    .await;
    assert!(flood.iter().all(|s| *s == 401));
    let looked_up = key_lookups(tg, "unknown").await - before - 1.0;
    let budget = 50.0 * (started.elapsed().as_secs_f64().ceil() + 1.0);
    assert!(
        looked_up <= budget,
        "{looked_up} lookups for 400 made-up keys"
    );
    assert!(key_lookups(tg, "over_budget").await > 0.0);
}

fn sha256_hex(key: &str) -> String {
    let (_, out, _) = run_cli(["hash-key", key], &[]);
    out.trim().strip_prefix("sha256:").unwrap().to_string()
}

/// `RateLimit` without the daily item's reset (seconds to midnight, read from two clocks).
fn without_daily_reset(v: &str) -> String {
    v.split(", ")
        .map(|item| match item.starts_with("\"daily\"") {
            true => item.split(";t=").next().unwrap().to_string(),
            false => item.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same requests, one by one, to a `store: local` and a `store: redis` tollgate: the same
/// statuses, RateLimit headers, Retry-After and 429 bodies, through costs, a route policy,
/// tenant overrides, shadow mode, an unlimited route and the daily quota.
#[tokio::test]
async fn the_redis_store_answers_exactly_like_the_local_one() {
    let redis = RedisServer::start();
    let app = Upstream::start().await;
    let base = |store: &str| {
        Config::new()
            .upstream(Group::new("app", [app.addr()]))
            .route(
                Route::prefix("/costly/")
                    .name("costly")
                    .to("app")
                    .rate_limit("{ cost: 2 }"),
            )
            .route(
                Route::prefix("/special/")
                    .name("special")
                    .to("app")
                    .rate_limit("{ tiers: { free: { burst: 1 } } }"),
            )
            .route(
                Route::prefix("/health")
                    .name("health")
                    .to("app")
                    .rate_limit("{ enabled: false }"),
            )
            .route(Route::prefix("/").name("api").to("app"))
            .identity("order", "[tenant_header]")
            .identity("trust_tenant_header", "true")
            .tier("free", "{ rps: 0.01, burst: 5, daily: 9 }")
            .set("tenants", "acme", "{ tier: free }")
            .set("tenants", "override-co", "{ tier: free, burst: 2 }")
            .set("tenants", "shadow-co", "{ tier: free, shadow: true }")
            .rate_limit("store", store)
            .rate_limit("legacy_headers", "true")
            .observability("access_log", "{ enabled: false }")
            .yaml(&single(&redis.url()))
    };
    let local = base("local").start().await;
    let shared = base("redis").start().await;
    wait_redis_up(std::slice::from_ref(&shared)).await;
    let mut steps = Vec::new();
    for tenant in ["acme", "override-co", "shadow-co"] {
        for path in [
            "/special/a",
            "/special/b",
            "/costly/a",
            "/health",
            "/a",
            "/costly/b",
            "/a",
            "/a",
            "/a",
            "/a",
        ] {
            steps.push((tenant, path));
        }
    }
    let mut refused = 0;
    for (i, (tenant, path)) in steps.iter().enumerate() {
        let h = [("x-tenant-id", *tenant)];
        let (a, b) = (
            local.get_with(path, &h).await,
            shared.get_with(path, &h).await,
        );
        let what = format!("step {i}: {tenant} {path}");
        assert_eq!(a.status, b.status, "{what}");
        for name in [
            "ratelimit-policy",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert_eq!(a.header(name), b.header(name), "{what}: {name}");
        }
        assert_eq!(
            without_daily_reset(a.header("ratelimit")),
            without_daily_reset(b.header("ratelimit")),
            "{what}"
        );
        if a.status == 429 {
            refused += 1;
            let (mut ja, mut jb) = (a.json(), b.json());
            if ja["policy"] == "daily" {
                ja["retry_after"] = 0.into();
                jb["retry_after"] = 0.into();
            } else {
                assert_eq!(a.header("retry-after"), b.header("retry-after"), "{what}");
            }
            ja["request_id"] = "".into();
            jb["request_id"] = "".into();
            assert_eq!(ja, jb, "{what}");
        }
    }
    assert!(
        refused >= 5,
        "the sequence reaches the limits ({refused} refusals)"
    );
    assert_eq!(
        store_decisions(&shared, "redis").await,
        27.0,
        "every limited step in Redis"
    );
}

/// A `redis-server` speaking only TLS, with a certificate of a CA made for the test; killed on
/// drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let sh = |cmd: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", cmd])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "`{cmd}` failed");
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=tollgate-test-ca");
        sh("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost");
        sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 -extfile ext");
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key"])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let tls = TlsRedis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tls.cli(&["ping"]) != "PONG" {
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        tls
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", "ca.crt", "-p", &self.port.to_string()])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ca(&self) -> String {
        self.dir.path().join("ca.crt").display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_shares_limits_and_an_untrusted_certificate_is_refused() {
    let redis = TlsRedis::start();
    let app = Upstream::start().await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // A generous command timeout: on a loaded machine a TLS round trip may pass 200 ms, and a
    // timed-out check is decided locally (fail open), which would let a fourth request through.
    let with_ca = format!(
        "{}  tls_ca_file: {}\n",
        single(&url).replace("command_timeout: 200ms", "command_timeout: 2s"),
        quote(&redis.ca())
    );
    let cfg = fleet(app.addr(), &with_ca, "{ rps: 0.01, burst: 3 }", &["acme"]);
    let replicas = start_all(&cfg, 2).await;
    wait_redis_up(&replicas).await;
    let got = burst_of(&replicas, "acme", 8).await;
    assert_eq!(count(&got, 200), 3, "one bucket over TLS");
    assert_eq!(
        store_decisions(&replicas[0], "redis").await + store_decisions(&replicas[1], "redis").await,
        8.0
    );
    assert!(redis
        .cli(&["--scan", "--pattern", "tollgate:{*"])
        .contains("tollgate:{t:acme}:tier:b"));

    // Without the CA, the certificate is not trusted: no connection, the local fallback decides.
    let untrusted = fleet(
        app.addr(),
        &single(&url),
        "{ rps: 0.01, burst: 3 }",
        &["other"],
    );
    let tg = untrusted.start().await;
    let got = burst_of(std::slice::from_ref(&tg), "other", 5).await;
    assert_eq!(count(&got, 200), 3);
    assert_eq!(count(&got, 429), 2);
    assert_eq!(tg.metric("tollgate_redis_up", &[]).await, Some(0.0));
    assert_eq!(store_decisions(&tg, "redis").await, 0.0);
}

/// The decision script itself, run with `redis-cli EVAL`: units of a lease given back return to
/// the daily count of the day they were taken on only, never to the next day's (a lease taken
/// before midnight and given back after it must not raise the new day's quota).
#[test]
fn a_lease_given_back_after_midnight_does_not_refill_the_new_day() {
    let redis = RedisServer::start();
    let secs: u64 = redis
        .cli(&["time"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let today = secs / 86_400;
    let (bucket, daily) = ("tollgate:{t:x}:tier:b", "tollgate:{t:x}:tier:d");
    let script = ::tollgate::ratelimit::redis::SCRIPT;
    // interval 1000 µs, burst 1000, cost 0 (read), quota 100, want 0, giveback 5 of `day`.
    let give_back = |day: u64| {
        redis.cli(&["hset", daily, "d", &today.to_string(), "u", "40"]);
        let day = day.to_string();
        let args = [
            "eval", script, "2", bucket, daily, "1000", "1000", "0", "100", "0", "5", &day,
        ];
        redis.cli(&args);
        redis.cli(&["hget", daily, "u"])
    };
    assert_eq!(give_back(today), "35", "same day: the units go back");
    assert_eq!(
        give_back(today - 1),
        "40",
        "taken yesterday: today's count is untouched"
    );
}
