//! The fleet cache on Redis (issue 16): several real tollgate processes, one real
//! `redis-server`, one scripted origin that counts what it is asked.
//!
//! - the shared tier: a fill on one replica is a hit on another (`Cache-Status: ...;
//!   detail=redis`), then a local hit there; tenants stay apart; a body over
//!   `shared_max_object_size` stays local;
//! - the purge bus: an admin purge (by URL, prefix, tenant) or a mutation on one replica makes
//!   the others miss; purges missed while a replica's Redis connection was cut ([`Relay`]) are
//!   applied when it returns, or, when the stream no longer holds them, the replica drops its
//!   local store;
//! - Redis killed under load: no 5xx, hits keep coming, sharing resumes after the restart;
//! - the fleet-wide fill lock: 30 concurrent misses over 3 replicas, one origin request;
//! - the same on a three-master Redis Cluster (entries, locks and the stream in their slots);
//! - `tollgate check` of a shared tier without `redis:`.
//!
//! Every wait polls a condition against a deadline ([`eventually`], metric waits).

mod common;

use common::*;
use futures_util::future::join_all;
use reqwest::Method;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-token";
const ACME: [(&str, &str); 1] = [("authorization", "Bearer key-acme")];
const GLOBEX: [(&str, &str); 1] = [("authorization", "Bearer key-globex")];
/// How long a replica may take to stop serving an entry purged on another (a diagnostic
/// bound; the real one is measured by a bench).
const PURGE_BOUND: Duration = Duration::from_secs(2);

const STORED: [(&str, &str); 1] = [("result", "stored")];
const WRITES: &str = "tollgate_cache_shared_writes_total";
const CONNECTED: &str = "tollgate_cache_purge_bus_connected";
const APPLIED: &str = "tollgate_cache_purge_bus_applied_total";
const RESYNCS: &str = "tollgate_cache_purge_bus_resyncs_total";
/// The purge stream (`<key_prefix>:cache:{purges}`, docs/fleet.md).
const PURGE_STREAM: &str = "tollgate:cache:{purges}";

/// `redis:` for `url`, with short timeouts and a fast heartbeat.
fn redis_section(url: &str) -> String {
    format!(
        "redis:\n  url: {}\n  connect_timeout: 500ms\n  command_timeout: 200ms\n  heartbeat_interval: 200ms\n  backoff: 300ms\n",
        serde_json::to_string(url).unwrap()
    )
}

/// Group `app` on `origin`, a catch-all route `api` caching with `route_cache` (YAML text),
/// the shared tier in the Redis at `redis_url`, the admin token [`TOKEN`], tenants `acme` and
/// `globex` (keys `key-acme`, `key-globex`); anonymous callers allowed.
fn fleet_cache(origin: SocketAddr, redis_url: &str, route_cache: &str) -> Config {
    fleet_cache_on(origin, &redis_section(redis_url), route_cache)
}

/// [`fleet_cache`] with any `redis:` section (a Cluster's).
fn fleet_cache_on(origin: SocketAddr, redis_yaml: &str, route_cache: &str) -> Config {
    Config::new()
        .upstream(Group::new("app", [origin]))
        .route(Route::prefix("/").name("api").to("app").cache(route_cache))
        .cache("shared", "redis")
        .admin("token", "\"${TOLLGATE_ADMIN_TOKEN}\"")
        .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
        .identity("anonymous_tier", "free")
        .tier("free", "{ rps: 1000, burst: 1000 }")
        .tenant("acme", "free", ["${ACME_KEY}"])
        .tenant("globex", "free", ["${GLOBEX_KEY}"])
        .env("ACME_KEY", "key-acme")
        .env("GLOBEX_KEY", "key-globex")
        // Failures print the proxy's log: keep it to tollgate's own lines.
        .observability("access_log", "{ enabled: false }")
        .yaml(redis_yaml)
}

/// A 200 with `body`, fresh for a minute.
fn fresh(body: impl Into<axum::body::Bytes>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=60")
}

/// An origin answering every GET with `<path>?<query> #<n>` fresh for a minute, and anything
/// else with a 201.
async fn counting_origin() -> Upstream {
    Upstream::scripted(|r, n| {
        if r.method == "GET" {
            fresh(format!(
                "{}?{} {} #{n}",
                r.path,
                r.query,
                r.header("authorization")
            ))
        } else {
            Reply::ok("done").status(201)
        }
    })
    .await
}

/// Start `n` replicas of `cfg` and wait until each one's purge bus is connected.
async fn start_fleet(cfg: &Config, n: usize) -> Vec<Tollgate> {
    let replicas = join_all((0..n).map(|_| cfg.start())).await;
    for tg in &replicas {
        tg.expect_metric(CONNECTED, &[], 1.0).await;
    }
    replicas
}

/// A served-from-Redis hit: `X-Cache-Status: HIT`, `Cache-Status` with `hit` and
/// `detail=redis`.
fn is_shared_hit(r: &Got) -> bool {
    r.cache() == "HIT"
        && r.cache_status().contains("hit")
        && r.cache_status().contains("detail=redis")
}

/// A hit from the replica's own store: `HIT`, `Cache-Status` with `hit`, no `detail=redis`.
fn is_local_hit(r: &Got) -> bool {
    r.cache() == "HIT"
        && r.cache_status().contains("hit")
        && !r.cache_status().contains("detail=redis")
}

/// A sample of `/metrics`, 0 when absent.
async fn metric(tg: &Tollgate, name: &str, labels: &[(&str, &str)]) -> f64 {
    tg.metric(name, labels).await.unwrap_or(0.0)
}

/// Wait up to 10 s until a sample is at least `min`; panics with the last value otherwise.
async fn wait_at_least(tg: &Tollgate, name: &str, labels: &[(&str, &str)], min: f64) {
    let ok = eventually(Duration::from_secs(10), || async {
        metric(tg, name, labels).await >= min
    })
    .await;
    assert!(
        ok,
        "{name}{labels:?} never reached {min} (last {})",
        metric(tg, name, labels).await
    );
}

/// Fill `path` through `a` and make `b` hold it too: `a` misses and writes the entry to Redis,
/// `b`'s first answer is a shared hit, its second a local hit.
async fn fill_a_then_b(a: &Tollgate, b: &Tollgate, path: &str, headers: &[(&str, &str)]) {
    let stored = metric(a, WRITES, &STORED).await;
    let r = a.get_with(path, headers).await;
    assert_eq!(r.cache(), "MISS", "{path} first through A: {r:?}");
    wait_at_least(a, WRITES, &STORED, stored + 1.0).await;
    let r = b.get_with(path, headers).await;
    assert!(is_shared_hit(&r), "{path} on B after A's fill: {r:?}");
    let r = b.get_with(path, headers).await;
    assert!(is_local_hit(&r), "{path} on B again: {r:?}");
}

/// The shared entries in Redis (`tollgate:cache:<scope hash>:{<key>}:<variant>`, docs/fleet.md):
/// every `tollgate:cache:` key but fill locks and the purge stream.
fn shared_entries(redis: &RedisServer) -> Vec<String> {
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:cache:*"]);
    keys.lines()
        .filter(|k| !k.ends_with(":lock") && !k.starts_with(PURGE_STREAM))
        .map(str::to_owned)
        .collect()
}

/// `POST /cache/purge` with `body` on `tg`'s admin listener, with the token: the answer.
async fn purge(tg: &Tollgate, body: &str) -> serde_json::Value {
    let req = tg
        .client
        .post(tg.admin_url("/cache/purge"))
        .bearer_auth(TOKEN)
        .body(body.to_string());
    let r = Got::read(req.send().await.unwrap()).await;
    r.assert_status(200);
    r.json()
}

/// Poll `path` on `b` until it is no longer a hit (at most 5 s), and check it then missed:
/// how long that took, printed, and asserted under [`PURGE_BOUND`].
async fn time_until_miss(b: &Tollgate, path: &str, headers: &[(&str, &str)]) -> Duration {
    let started = Instant::now();
    let last = Mutex::new(None);
    let stopped = eventually_every(Duration::from_secs(5), Duration::from_millis(5), || async {
        let r = b.get_with(path, headers).await;
        let hit = r.cache() == "HIT";
        *last.lock().unwrap() = Some(r);
        !hit
    })
    .await;
    let took = started.elapsed();
    let last = last.into_inner().unwrap().unwrap();
    assert!(stopped, "B still serves purged {path} after 5 s: {last:?}");
    assert_eq!(
        last.cache(),
        "MISS",
        "{path} on B after the purge: {last:?}"
    );
    eprintln!("B stopped serving purged {path} after {took:?}");
    assert!(took < PURGE_BOUND, "B served purged {path} for {took:?}");
    took
}

#[tokio::test]
async fn a_fill_on_one_replica_is_a_shared_hit_on_another_then_a_local_hit() {
    let redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = fleet_cache(
        origin.addr(),
        &redis.url(),
        "{ scope: shared, stale_while_revalidate: 30s }",
    );
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    let first = a.get("/api/item").await;
    first.assert_status(200);
    assert_eq!(first.cache(), "MISS");
    a.expect_metric(WRITES, &STORED, 1.0).await;

    let shared = b.get("/api/item").await;
    shared.assert_status(200);
    assert!(is_shared_hit(&shared), "{shared:?}");
    assert_eq!(shared.body, first.body, "the body A stored");
    assert_eq!(origin.count(), 1, "one origin request for the fleet");

    let local = b.get("/api/item").await;
    assert!(is_local_hit(&local), "{local:?}");
    assert_eq!(local.body, first.body);
    assert_eq!(origin.count(), 1);

    // One entry in Redis, under the scope hash of `shared`, expiring with its freshness plus
    // the stale window (60 s + 30 s).
    let entries = shared_entries(&redis);
    assert_eq!(entries.len(), 1, "one entry in Redis: {entries:?}");
    assert!(
        entries[0].starts_with("tollgate:cache:a4d26868:{"),
        "{entries:?}"
    );
    let pttl: i64 = redis.cli(&["pttl", &entries[0]]).parse().unwrap();
    assert!((80_000..=90_000).contains(&pttl), "entry PTTL {pttl} ms");

    let shared_hit = [("route", "api"), ("status", "shared_hit")];
    b.expect_metric("tollgate_cache_requests_total", &shared_hit, 1.0)
        .await;
    let hit = [("route", "api"), ("status", "hit")];
    b.expect_metric("tollgate_cache_requests_total", &hit, 1.0)
        .await;
    b.expect_metric(
        "tollgate_http_request_duration_seconds_count",
        &[("route", "api"), ("cache", "shared_hit")],
        1.0,
    )
    .await;
    b.expect_metric(
        "tollgate_cache_shared_lookups_total",
        &[("result", "hit")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn purges_by_url_prefix_and_tenant_on_one_replica_make_another_miss() {
    let redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: tenant }");
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    // By URL.
    fill_a_then_b(a, b, "/api/u", &[]).await;
    let answer = purge(a, r#"{"url": "/api/u"}"#).await;
    assert_eq!(answer["fleet"], "published", "{answer}");
    assert_eq!(answer["purged"], 1, "{answer}");
    time_until_miss(b, "/api/u", &[]).await;
    assert_eq!(
        origin.requests_to("/api/u").len(),
        2,
        "B asked the origin again"
    );

    // By prefix: paths outside it stay.
    fill_a_then_b(a, b, "/api/p/1", &[]).await;
    fill_a_then_b(a, b, "/keep", &[]).await;
    let answer = purge(a, r#"{"prefix": "/api/p/"}"#).await;
    assert_eq!(answer["fleet"], "published", "{answer}");
    time_until_miss(b, "/api/p/1", &[]).await;
    assert_eq!(origin.requests_to("/api/p/1").len(), 2);
    assert!(is_local_hit(&b.get("/keep").await), "outside the prefix");

    // By tenant: acme's entry goes, globex's (filled on B itself) stays.
    fill_a_then_b(a, b, "/api/t", &ACME).await;
    assert_eq!(b.get_with("/api/t", &GLOBEX).await.cache(), "MISS");
    assert!(is_local_hit(&b.get_with("/api/t", &GLOBEX).await));
    let answer = purge(a, r#"{"tenant": "acme"}"#).await;
    assert_eq!(answer["fleet"], "published", "{answer}");
    time_until_miss(b, "/api/t", &ACME).await;
    let acme_fetches = origin
        .requests_to("/api/t")
        .iter()
        .filter(|r| r.header("authorization") == "Bearer key-acme")
        .count();
    assert_eq!(acme_fetches, 2, "B asked the origin again for acme");
    let g = b.get_with("/api/t", &GLOBEX).await;
    assert!(is_local_hit(&g), "globex's entry stays: {g:?}");
    assert!(g.text().contains("key-globex"), "{g:?}");

    assert!(metric(a, "tollgate_cache_purge_bus_published_total", &[]).await >= 3.0);
    assert!(metric(b, APPLIED, &[]).await >= 3.0);
    assert!(
        metric(
            b,
            "tollgate_cache_purged_entries_total",
            &[("reason", "fleet")]
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_mutation_through_one_replica_makes_another_miss_the_path() {
    let redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: shared }");
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    fill_a_then_b(a, b, "/api/items/1", &[]).await;
    fill_a_then_b(a, b, "/api/items/2", &[]).await;
    a.send(a.req(Method::POST, "/api/items/1").body("x"))
        .await
        .assert_status(201);
    time_until_miss(b, "/api/items/1", &[]).await;
    let gets = |p: &str| {
        origin
            .requests_to(p)
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    assert_eq!(gets("/api/items/1"), 2, "B asked the origin again");
    assert!(
        is_local_hit(&b.get("/api/items/2").await),
        "other paths kept"
    );
    assert_eq!(gets("/api/items/2"), 1);
}

#[tokio::test]
async fn one_tenants_entry_is_never_served_to_another_tenant_by_another_replica() {
    let redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: tenant }");
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    assert_eq!(a.get_with("/api/me", &ACME).await.cache(), "MISS");
    a.expect_metric(WRITES, &STORED, 1.0).await;
    let g = b.get_with("/api/me", &GLOBEX).await;
    assert_eq!(g.cache(), "MISS", "globex must not get acme's entry: {g:?}");
    assert!(g.text().contains("key-globex"), "{g:?}");
    assert_eq!(origin.count(), 2, "globex got its own origin fetch");
    b.expect_metric(WRITES, &STORED, 1.0).await;

    // Each tenant's entry is shared with that tenant only, on either replica.
    let r = b.get_with("/api/me", &ACME).await;
    assert!(is_shared_hit(&r) && r.text().contains("key-acme"), "{r:?}");
    let r = a.get_with("/api/me", &GLOBEX).await;
    assert!(
        is_shared_hit(&r) && r.text().contains("key-globex"),
        "{r:?}"
    );
    for tg in [a, b] {
        for _ in 0..3 {
            let r = tg.get_with("/api/me", &ACME).await;
            assert!(r.cache() == "HIT" && r.text().contains("key-acme"), "{r:?}");
            let r = tg.get_with("/api/me", &GLOBEX).await;
            assert!(
                r.cache() == "HIT" && r.text().contains("key-globex"),
                "{r:?}"
            );
        }
    }
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn killing_redis_under_load_gives_no_5xx_hits_keep_coming_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = Config::new()
        .upstream(Group::new("app", [origin.addr()]))
        .route(Route::prefix("/u/").name("raw").to("app"))
        .route(Route::prefix("/").name("api").to("app").cache("{ scope: shared }"))
        .cache("shared", "redis")
        .observability("access_log", "{ enabled: false }")
        // A call blocked on a dead Redis would show as seconds; the calls give up after 100 ms.
        .yaml(&format!(
            "redis:\n  url: {}\n  connect_timeout: 2s\n  command_timeout: 100ms\n  heartbeat_interval: 100ms\n  backoff: 200ms\n",
            serde_json::to_string(&redis.url()).unwrap()
        ));
    let fleet = start_fleet(&cfg, 2).await;

    let stop = AtomicBool::new(false);
    let (hits, total) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let load = async {
        let workers = (0..4).map(|w| {
            let (stop, hits, total) = (&stop, &hits, &total);
            let fleet = &fleet;
            async move {
                let (mut bad, mut slowest, mut i) = (Vec::new(), Duration::ZERO, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let tg = &fleet[(w + i) % 2];
                    let path = if i % 2 == 0 {
                        format!("/c/{}", i % 5)
                    } else {
                        format!("/u/{}", i % 5)
                    };
                    let t = Instant::now();
                    let r = tg.get(&path).await;
                    slowest = slowest.max(t.elapsed());
                    total.fetch_add(1, Ordering::Relaxed);
                    if r.cache() == "HIT" {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if r.status != 200 {
                        bad.push((path, r.status));
                    }
                }
                (bad, slowest)
            }
        });
        join_all(workers).await
    };
    let hits_reach = |n: usize| {
        let hits = &hits;
        async move {
            let ok = eventually(Duration::from_secs(10), || async {
                hits.load(Ordering::Relaxed) >= n
            })
            .await;
            assert!(
                ok,
                "hits stopped at {} (wanted {n})",
                hits.load(Ordering::Relaxed)
            );
        }
    };
    let chaos = async {
        hits_reach(50).await;
        redis.kill();
        for tg in &fleet {
            tg.expect_metric(CONNECTED, &[], 0.0).await;
        }
        // The caches keep answering without Redis.
        hits_reach(hits.load(Ordering::Relaxed) + 50).await;
        redis.restart();
        // It came back empty: the purge history is gone, so each replica drops its store.
        for tg in &fleet {
            tg.expect_metric(CONNECTED, &[], 1.0).await;
            tg.expect_metric(RESYNCS, &[("reason", "stream_lost")], 1.0)
                .await;
        }
        hits_reach(hits.load(Ordering::Relaxed) + 50).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(load, chaos);
    let bad: Vec<_> = results.iter().flat_map(|r| r.0.clone()).collect();
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    assert!(total.load(Ordering::Relaxed) > 150, "the load ran");
    assert!(bad.is_empty(), "non-200 answers while Redis died: {bad:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?}: longer than the command timeout allows"
    );

    // Sharing resumes: a new fill on one replica becomes a shared hit on the other (the
    // shared tier may reconnect a moment after the purge bus: try fresh paths until it does).
    let (a, b) = (&fleet[0], &fleet[1]);
    let attempt = AtomicUsize::new(0);
    let resumed = eventually(Duration::from_secs(10), || async {
        let path = format!("/after/{}", attempt.fetch_add(1, Ordering::Relaxed));
        let stored = metric(a, WRITES, &STORED).await;
        a.get(&path).await.assert_status(200);
        let written = eventually(Duration::from_secs(1), || async {
            metric(a, WRITES, &STORED).await > stored
        })
        .await;
        written && is_shared_hit(&b.get(&path).await)
    })
    .await;
    assert!(resumed, "no shared hit after Redis came back");
}

/// Two replicas on one Redis with their routes caching locally only (the purge bus needs no
/// shared tier): `a` talks to Redis directly, `b` through `relay`.
async fn a_and_b_through_relay(
    origin: &Upstream,
    redis: &RedisServer,
    relay: &Relay,
    stream_length: u32,
) -> (Tollgate, Tollgate) {
    let cfg = |url: &str| {
        fleet_cache(origin.addr(), url, "{ scope: shared }")
            .cache("shared", "none")
            .cache("purge_stream_length", stream_length)
    };
    let (cfg_a, cfg_b) = (cfg(&redis.url()), cfg(&relay.redis_url()));
    let (a, b) = tokio::join!(cfg_a.start(), cfg_b.start());
    for tg in [&a, &b] {
        tg.expect_metric(CONNECTED, &[], 1.0).await;
    }
    (a, b)
}

/// Fill `path` on `tg` (a miss), then check it is a local hit.
async fn fill_locally(tg: &Tollgate, path: &str) {
    assert_eq!(tg.get(path).await.cache(), "MISS", "{path}");
    assert!(is_local_hit(&tg.get(path).await), "{path}");
}

/// One purge on `a` that `b` applies: `b` has seen a position in the stream before it is cut.
async fn b_sees_one_purge(a: &Tollgate, b: &Tollgate) {
    let answer = purge(a, r#"{"url": "/warm-up"}"#).await;
    assert_eq!(answer["fleet"], "published", "{answer}");
    b.expect_metric(APPLIED, &[], 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_made_while_a_replica_was_cut_off_are_applied_when_it_returns() {
    let redis = RedisServer::start();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let origin = counting_origin().await;
    let (a, b) = a_and_b_through_relay(&origin, &redis, &relay, 10_000).await;
    fill_locally(&b, "/api/p").await;
    fill_locally(&b, "/api/kept").await;
    b_sees_one_purge(&a, &b).await;

    relay.cut();
    b.expect_metric(CONNECTED, &[], 0.0).await;
    for body in [r#"{"url": "/api/p"}"#, r#"{"prefix": "/nothing/"}"#] {
        let answer = purge(&a, body).await;
        assert_eq!(answer["fleet"], "published", "{answer}");
    }
    assert!(
        is_local_hit(&b.get("/api/p").await),
        "B cannot have heard of the purge while cut off"
    );

    relay.restore();
    b.expect_metric(CONNECTED, &[], 1.0).await;
    b.expect_metric(APPLIED, &[], 3.0).await;
    let r = b.get("/api/p").await;
    assert_eq!(r.cache(), "MISS", "the purge reached B: {r:?}");
    assert_eq!(origin.requests_to("/api/p").len(), 2);
    assert!(
        is_local_hit(&b.get("/api/kept").await),
        "only the purged path went"
    );
    assert_eq!(metric(&b, RESYNCS, &[]).await, 0.0, "caught up, no resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_longer_than_the_stream_holds_drops_its_local_cache() {
    let redis = RedisServer::start();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let origin = counting_origin().await;
    let (a, b) = a_and_b_through_relay(&origin, &redis, &relay, 10).await;
    fill_locally(&b, "/api/unrelated").await;
    b_sees_one_purge(&a, &b).await;

    relay.cut();
    b.expect_metric(CONNECTED, &[], 0.0).await;
    for i in 0..15 {
        let answer = purge(&a, &format!(r#"{{"url": "/gone/{i}"}}"#)).await;
        assert_eq!(answer["fleet"], "published", "{answer}");
    }
    let len: u64 = redis.cli(&["xlen", PURGE_STREAM]).parse().unwrap();
    assert_eq!(len, 10, "the stream keeps purge_stream_length purges");

    relay.restore();
    b.expect_metric(CONNECTED, &[], 1.0).await;
    b.expect_metric(RESYNCS, &[("reason", "trimmed")], 1.0)
        .await;
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("purge bus") && l.contains("dropping the local cache")),
        "no WARN line about dropping the local cache in B's log:\n{log}"
    );
    let r = b.get("/api/unrelated").await;
    assert_eq!(r.cache(), "MISS", "B dropped its store: {r:?}");
    assert_eq!(origin.requests_to("/api/unrelated").len(), 2);
    assert!(
        metric(
            &b,
            "tollgate_cache_purged_entries_total",
            &[("reason", "resync")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn an_entry_over_shared_max_object_size_stays_local() {
    let redis = RedisServer::start();
    let origin = Upstream::scripted(|_, n| fresh(format!("{n:<4096}"))).await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: shared }")
        .cache("shared_max_object_size", "1KiB");
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    let r = a.get("/big").await;
    assert_eq!((r.cache(), r.body.len()), ("MISS", 4096));
    assert!(is_local_hit(&a.get("/big").await));
    wait_at_least(a, WRITES, &[("result", "too_large")], 1.0).await;
    assert_eq!(metric(a, WRITES, &STORED).await, 0.0);

    let r = b.get("/big").await;
    assert_eq!((r.cache(), r.body.len()), ("MISS", 4096), "{r:?}");
    assert_eq!(origin.count(), 2, "B asked the origin itself");
    assert_eq!(
        shared_entries(&redis),
        Vec::<String>::new(),
        "nothing in Redis"
    );
}

#[tokio::test]
async fn with_the_fleet_fill_lock_thirty_misses_over_three_replicas_make_one_origin_request() {
    let redis = RedisServer::start();
    // Held at a gate until every request is inside a replica: they all overlap.
    let origin = Upstream::scripted(|_, n| fresh(format!("only #{n}")).held()).await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: shared }")
        .cache("shared_fill_lock", "true")
        .cache("shared_lock_timeout", "10s");
    let fleet = start_fleet(&cfg, 3).await;

    let requests = join_all((0..30).map(|i| {
        let tg = &fleet[i % 3];
        async move { tg.get("/hot").await }
    }));
    let release = async {
        let in_flight = "tollgate_http_requests_in_flight";
        let all_in = eventually(Duration::from_secs(10), || async {
            let mut n = 0.0;
            for tg in &fleet {
                n += metric(tg, in_flight, &[]).await;
            }
            n == 30.0 && origin.count() >= 1
        })
        .await;
        assert!(all_in, "30 requests never were in flight at once");
        origin.open_gate(30);
    };
    let (got, ()) = tokio::join!(requests, release);

    for r in &got {
        assert_eq!((r.status, r.text()), (200, "only #0"), "{r:?}");
    }
    assert_eq!(origin.count(), 1, "one origin request for the fleet");
    // One replica took the lock, once; each of the two others waited for its entry.
    let lock = "tollgate_cache_shared_fill_lock_total";
    let (mut acquired, mut waited_hit) = (Vec::new(), Vec::new());
    for tg in &fleet {
        acquired.push(metric(tg, lock, &[("result", "acquired")]).await);
        waited_hit.push(metric(tg, lock, &[("result", "waited_hit")]).await);
    }
    assert_eq!(
        acquired.iter().sum::<f64>(),
        1.0,
        "locks taken, per replica: {acquired:?}"
    );
    let waited = waited_hit.iter().filter(|&&w| w >= 1.0).count();
    assert_eq!(
        waited, 2,
        "waited for its entry, per replica: {waited_hit:?}"
    );
}

#[tokio::test]
async fn on_a_redis_cluster_fills_purges_and_the_fill_lock_work_across_slots() {
    let cluster = RedisCluster::start();
    let origin = counting_origin().await;
    let seeds: Vec<String> = cluster
        .seeds()
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    let redis = format!(
        "redis:\n  cluster: [{}]\n  command_timeout: 500ms\n  heartbeat_interval: 200ms\n",
        seeds.join(", ")
    );
    let cfg = fleet_cache_on(origin.addr(), &redis, "{ scope: tenant }")
        .cache("shared_fill_lock", "true");
    let fleet = start_fleet(&cfg, 2).await;
    let (a, b) = (&fleet[0], &fleet[1]);

    // Enough paths that their entries land on every master.
    let paths: Vec<String> = (0..12).map(|i| format!("/c/{i}")).collect();
    for path in &paths {
        fill_a_then_b(a, b, path, &ACME).await;
    }
    assert_eq!(origin.count(), paths.len(), "one origin request per path");
    // A took the fill lock of each path (in the path's slot) and released it with its fill.
    let acquired = [("result", "acquired")];
    a.expect_metric("tollgate_cache_shared_fill_lock_total", &acquired, 12.0)
        .await;
    let masters: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|port| {
            !cluster
                .cli(*port, &["--scan", "--pattern", "tollgate:cache:*:{*"])
                .trim()
                .is_empty()
        })
        .collect();
    assert!(masters.len() >= 2, "entries on {masters:?}");

    let answer = purge(a, r#"{"prefix": "/c/1"}"#).await;
    assert_eq!(answer["fleet"], "published", "{answer}");
    time_until_miss(b, "/c/1", &ACME).await;
    time_until_miss(b, "/c/10", &ACME).await;
    let kept = b.get_with("/c/2", &ACME).await;
    assert!(is_local_hit(&kept), "{kept:?}");

    let r = a
        .send(
            a.req(Method::POST, "/c/3")
                .header(ACME[0].0, ACME[0].1)
                .body("x"),
        )
        .await;
    r.assert_status(201);
    time_until_miss(b, "/c/3", &ACME).await;
}

#[tokio::test]
async fn check_names_the_shared_cache_keys_that_are_wrong() {
    let base = "upstreams: { app: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ match: { path_prefix: / }, upstream: app, cache: {} }]\n";
    let (code, _, err) = check_yaml(&format!("{base}cache: {{ shared: redis }}\n"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cache.shared"), "{err}");

    let (code, _, err) = check_yaml(&format!(
        "{base}cache: {{ shared_fill_lock: true, shared_max_object_size: 0, shared_lock_timeout: 0s, purge_stream_length: 9 }}\n"
    ));
    assert_eq!(code, 1, "{err}");
    for key in [
        "cache.shared_fill_lock",
        "cache.shared_max_object_size",
        "cache.shared_lock_timeout",
        "cache.purge_stream_length",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }

    let ok = format!("{base}redis: {{ url: \"redis://127.0.0.1:6379\" }}\ncache: {{ shared: redis, shared_fill_lock: true }}\n");
    let (code, out, err) = check_yaml(&ok);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_cuts_and_restores_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server as the target.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let relay = Relay::start(target).await;
    let ping = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 4];
        s.write_all(b"ping").await.ok()?;
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer or EOF")
            .ok()?;
        (n == 4).then_some(s)
    };
    let connect = || tokio::net::TcpStream::connect(relay.addr());

    let open = ping(connect().await.unwrap()).await.expect("relayed");
    assert!(eventually(Duration::from_secs(5), || async { relay.active() == 1 }).await);
    relay.cut();
    let mut buf = [0u8; 1];
    let mut open = open;
    let eof = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "cut closes: {eof:?}");
    assert!(
        ping(connect().await.unwrap()).await.is_none(),
        "closed while cut"
    );
    assert!(eventually(Duration::from_secs(5), || async { relay.active() == 0 }).await);

    relay.restore();
    assert!(
        ping(connect().await.unwrap()).await.is_some(),
        "relayed again"
    );
    let addr = relay.addr();
    drop(relay);
    let after = eventually(Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(s) => ping(s).await.is_none(),
        }
    })
    .await;
    assert!(after, "a dropped relay relays nothing");
}

/// Admin purges delete their entries from Redis too, not only from the replicas: by URL and
/// by prefix (each entry's tag is read), by tenant (by key name).
#[tokio::test]
async fn admin_purges_delete_the_shared_entries_from_redis() {
    let redis = RedisServer::start();
    let origin = counting_origin().await;
    let cfg = fleet_cache(origin.addr(), &redis.url(), "{ scope: tenant }");
    let fleet = start_fleet(&cfg, 1).await;
    let a = &fleet[0];
    for path in ["/d/1", "/d/2", "/keep"] {
        let stored = metric(a, WRITES, &STORED).await;
        assert_eq!(a.get(path).await.cache(), "MISS");
        wait_at_least(a, WRITES, &STORED, stored + 1.0).await;
    }
    let stored = metric(a, WRITES, &STORED).await;
    assert_eq!(a.get_with("/t", &ACME).await.cache(), "MISS");
    wait_at_least(a, WRITES, &STORED, stored + 1.0).await;
    assert_eq!(shared_entries(&redis).len(), 4);

    let left = |n: usize| {
        let redis = &redis;
        async move {
            eventually(Duration::from_secs(5), || async {
                shared_entries(redis).len() == n
            })
            .await
        }
    };
    purge(a, r#"{"prefix": "/d/"}"#).await;
    assert!(left(2).await, "{:?}", shared_entries(&redis));
    purge(a, r#"{"url": "/keep"}"#).await;
    assert!(left(1).await, "{:?}", shared_entries(&redis));
    purge(a, r#"{"tenant": "acme"}"#).await;
    assert!(left(0).await, "{:?}", shared_entries(&redis));
}
