//! Upstream groups through the real binary: round-robin, weighted and consistent-hash
//! balancing (pingora-load-balancing), connection failures retried on another endpoint, the
//! per-endpoint circuit breaker, and failover while an endpoint process is killed under load
//! and revived.

mod common;

use common::*;
use reqwest::Method;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUESTS: &str = "tollgate_upstream_requests_total";
const RETRIES: &str = "tollgate_upstream_retries_total";
const CIRCUIT_OPEN: &str = "tollgate_upstream_circuit_open";
const HEALTHY: &str = "tollgate_upstream_endpoint_healthy";

/// Group `app` (as `group` says) behind one catch-all route.
fn behind(group: Group) -> Config {
    Config::new()
        .upstream(group)
        .route(Route::prefix("/").name("api").to("app"))
}

/// Group `app` over `endpoints`.
fn pool<E: Into<Endpoint>>(endpoints: impl IntoIterator<Item = E>) -> Group {
    Group::new("app", endpoints)
}

/// Which upstream answered each of `n` GETs (by its `x-upstream` name); all must be 200.
async fn spread(tg: &Tollgate, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = tg.get_with("/x", headers).await;
        r.assert_status(200);
        *seen.entry(r.upstream().to_string()).or_insert(0) += 1;
    }
    seen
}

/// How many of `n` requests (`method` to /x, body "payload") got each status.
async fn statuses_of(tg: &Tollgate, method: Method, n: usize) -> HashMap<u16, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = tg.send(tg.req(method.clone(), "/x").body("payload")).await;
        *out.entry(r.status).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn round_robin_ignores_weights_and_weighted_honours_them() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let endpoints = [Endpoint::weighted(a.addr(), 3), b.addr().into()];
    let rr = behind(pool(endpoints.clone())).start().await;
    let seen = spread(&rr, 40, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (20, 20), "{seen:?}");

    let weighted = behind(pool(endpoints).balance("weighted")).start().await;
    let seen = spread(&weighted, 40, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (30, 10), "{seen:?}");
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let c = Upstream::named("c").await;
    let group = pool([a.addr(), b.addr(), c.addr()])
        .balance("consistent_hash")
        .hash_on("header:x-user");
    let tg = behind(group).start().await;
    let mut homes = HashMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        let seen = spread(&tg, 4, &[("x-user", &user)]).await;
        assert_eq!(seen.len(), 1, "{user} moved between endpoints: {seen:?}");
        homes.insert(user, seen.into_keys().next().unwrap());
    }
    let used: std::collections::HashSet<_> = homes.values().collect();
    assert_eq!(
        used.len(),
        3,
        "30 keys spread over all endpoints: {homes:?}"
    );
}

#[tokio::test]
async fn failed_connections_go_to_another_endpoint_and_open_the_circuit() {
    let alive = Upstream::named("alive").await;
    let dead = closed_addr();
    let breaker = "{ failures: 3, backoff: 60s, max_backoff: 60s }";
    let tg = behind(pool([dead, alive.addr()]).circuit_breaker(breaker))
        .start()
        .await;
    let seen = spread(&tg, 20, &[]).await;
    assert_eq!(seen["alive"], 20, "no client-visible error: {seen:?}");
    let m = tg.metrics().await;
    let dead_label = dead.to_string();
    let failed = [
        ("upstream", "app"),
        ("endpoint", dead_label.as_str()),
        ("outcome", "connect_error"),
    ];
    assert_eq!(
        metric_value(&m, REQUESTS, &failed),
        Some(3.0),
        "three failures open the circuit; the dead endpoint is not tried again"
    );
    let open = [("endpoint", dead_label.as_str())];
    assert_eq!(metric_value(&m, CIRCUIT_OPEN, &open), Some(1.0));
    assert_eq!(metric_value(&m, RETRIES, &[("upstream", "app")]), Some(3.0));

    // With one attempt and no breaker, the requests that land on the dead endpoint fail.
    let group = pool([dead, alive.addr()])
        .retry("{ attempts: 1 }")
        .no_circuit_breaker();
    let tg1 = behind(group).start().await;
    let mut statuses = HashMap::new();
    for _ in 0..10 {
        *statuses.entry(tg1.get("/x").await.status).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&502), Some(&5), "{statuses:?}");
}

/// Successful upstream requests `endpoint` answered, per the metrics text `m`.
fn successes(m: &str, endpoint: SocketAddr) -> f64 {
    let e = endpoint.to_string();
    let labels = [("endpoint", e.as_str()), ("outcome", "success")];
    metric_value(m, REQUESTS, &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn killing_an_endpoint_under_load_loses_no_request_and_it_rejoins() {
    let (a, b) = (free_addr(), free_addr());
    let mut demo_a = DemoUpstream::start(a).await;
    let _demo_b = DemoUpstream::start(b).await;
    let group = pool([a, b])
        .circuit_breaker("{ failures: 3, backoff: 300ms, max_backoff: 300ms }")
        .health_check("{ path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2 }");
    let tg = Arc::new(behind(group).start().await);

    // Continuous GET load from four clients.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (tg, stop, ok, failed) = (tg.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tg.client.get(tg.url("/api/hello")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let warmed = eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async { successes(&tg.metrics().await, a) >= 20.0 },
    )
    .await;
    assert!(warmed, "the first endpoint never took 20 requests");

    demo_a.kill();
    let killed = Instant::now();
    let a_label = a.to_string();
    let open = [("endpoint", a_label.as_str())];
    let opened = eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(2),
        || async { tg.metric(CIRCUIT_OPEN, &open).await == Some(1.0) },
    )
    .await;
    assert!(opened, "circuit never opened");
    let to_open = killed.elapsed();
    // From here on, all traffic is on the survivor (the circuit is retried only after 300 ms).
    let m = tg.metrics().await;
    let (a_at_open, b_at_open) = (successes(&m, a), successes(&m, b));
    // An observation window well inside the 300 ms open period, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = tg.metrics().await;
    assert_eq!(
        successes(&m, a),
        a_at_open,
        "no request reached the dead endpoint"
    );
    assert!(
        successes(&m, b) > b_at_open,
        "the survivor took the traffic"
    );

    // Revive it: its health check passes again and, after the open period, a probe request
    // succeeds and closes the circuit.
    let _demo_a2 = DemoUpstream::start(a).await;
    let revived = Instant::now();
    let healthy = [("upstream", "app"), ("endpoint", a_label.as_str())];
    let rejoined = eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async {
            let m = tg.metrics().await;
            metric_value(&m, CIRCUIT_OPEN, &open) == Some(0.0)
                && metric_value(&m, HEALTHY, &healthy) == Some(1.0)
                && successes(&m, a) > a_at_open
        },
    )
    .await;
    assert!(rejoined, "never rejoined");
    let to_rejoin = revived.elapsed();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "failover: {ok} requests ok, {failed} failed; circuit open {to_open:?} after the kill; \
         rejoined {to_rejoin:?} after the restart"
    );
    assert_eq!(failed, 0, "client-visible errors during failover");
}

#[test]
fn pool_config_errors_name_the_key() {
    let (code, _, err) = check_yaml(
        r#"upstreams:
  app:
    endpoints: ["127.0.0.1:1", { adress: "127.0.0.1:2" }]
  b:
    endpoints: [{ address: "127.0.0.1:3", weight: 0 }]
    balance: consistent_hash
    hash_on: cookie
    retry: { attempts: 11 }
    circuit_breaker: { failures: 2, backoff: 10s, max_backoff: 5s }
  c:
    endpoints: ["127.0.0.1:4"]
    balance: random
routes:
  - match: { path_prefix: / }
    upstream: app
"#,
    );
    assert_eq!(code, 1);
    for want in [
        "upstreams.b.endpoints[0].weight: weights go from 1 to 1000, got 0",
        "upstreams.app.endpoints[1].adress: unknown key `adress` (did you mean `address`?)",
        "upstreams.b.hash_on: `cookie` is not a hash key",
        "upstreams.b.retry.attempts: attempts go from 1 (no retry) to 10, got 11",
        "upstreams.b.circuit_breaker: backoff must be more than 0s and at most max_backoff",
        "upstreams.c.balance: unknown variant `random`",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

#[tokio::test]
async fn a_route_fails_over_to_its_backup_group() {
    let backup = Upstream::named("backup").await;
    let tg = Config::new()
        .upstream(Group::new("primary", [closed_addr(), closed_addr()]).retry("{ attempts: 2 }"))
        .upstream(Group::new("backup", [backup.addr()]))
        .route(
            Route::prefix("/")
                .name("chat")
                .failover(["primary", "backup"]),
        )
        .start()
        .await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["backup"], 10, "{seen:?}");
    let retries = tg.metric(RETRIES, &[("upstream", "backup")]).await;
    assert!(retries.unwrap() >= 1.0, "{retries:?}");
}

#[tokio::test]
async fn provider_adapter_rewrites_host_path_and_headers() {
    let provider = Upstream::named("provider").await;
    let openai = Group::new("openai", [provider.addr()])
        .host("api.provider.test")
        .strip_prefix("/openai")
        .add_prefix("/v1")
        .header("authorization", "Bearer ${PROVIDER_KEY}")
        .health_check("{ path: /v1/models, interval: 1h }");
    let tg = Config::new()
        .upstream(openai)
        .route(Route::prefix("/openai/").name("llm").to("openai"))
        .env("PROVIDER_KEY", "sk-test")
        .start()
        .await;
    let r = tg
        .get_with(
            "/openai/chat/completions?stream=false",
            &[("authorization", "Bearer client-token")],
        )
        .await;
    r.assert_status(200);
    let requests = provider.requests();
    let seen = requests
        .iter()
        .find(|r| r.path.starts_with("/v1/chat/"))
        .expect("the proxied request");
    assert_eq!(seen.uri, "/v1/chat/completions?stream=false");
    assert_eq!(seen.header("host"), "api.provider.test");
    assert_eq!(seen.header("authorization"), "Bearer sk-test");
    // The health check (run at start) speaks to the provider the same way.
    let checked = eventually(Duration::from_secs(5), || async {
        !provider.requests_to("/v1/models").is_empty()
    })
    .await;
    assert!(checked, "no health check reached the provider");
    let check = &provider.requests_to("/v1/models")[0];
    assert_eq!(check.header("host"), "api.provider.test");
    assert_eq!(check.header("authorization"), "Bearer sk-test");
}

#[tokio::test]
async fn retry_after_on_429_cools_the_endpoint_down() {
    let busy = Upstream::named("busy").await;
    busy.set_reply(
        Reply::ok("slow down")
            .status(429)
            .header("retry-after", "60"),
    );
    let calm = Upstream::named("calm").await;
    let tg = behind(pool([busy.addr(), calm.addr()])).start().await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(tg.get("/x").await.status);
    }
    assert_eq!(
        busy.count(),
        1,
        "one 429 with Retry-After, then left alone: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    let label = busy.addr().to_string();
    let open = [("endpoint", label.as_str())];
    assert_eq!(tg.metric(CIRCUIT_OPEN, &open).await, Some(1.0));
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let a = Upstream::named("a").await;
    a.set_script(move |r, _| {
        if r.path == "/health" && !flag.load(Ordering::Relaxed) {
            Reply::ok("down").status(503)
        } else {
            Reply::ok("a")
        }
    });
    let b = Upstream::named("b").await;
    let group = pool([a.addr(), b.addr()])
        .health_check("{ path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }");
    let tg = behind(group).start().await;
    let label = a.addr().to_string();
    let health = [("upstream", "app"), ("endpoint", label.as_str())];
    tg.expect_metric(HEALTHY, &health, 1.0).await;
    healthy.store(false, Ordering::Relaxed);
    tg.expect_metric(HEALTHY, &health, 0.0).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(
        seen.get("b"),
        Some(&10),
        "unhealthy endpoint skipped: {seen:?}"
    );
    healthy.store(true, Ordering::Relaxed);
    tg.expect_metric(HEALTHY, &health, 1.0).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5), "back in rotation: {seen:?}");
    let checks = a.requests_to("/health").len();
    assert!(checks >= 3, "checked periodically ({checks} checks)");
}

/// An upstream that answers every request with `status` ("overloaded"), a healthy one named
/// `good`, and a tollgate balancing over both (failing first) with `group`'s settings.
async fn failing_and_good(
    status: u16,
    group: fn(Group) -> Group,
) -> (Upstream, Upstream, Tollgate) {
    let failing = Upstream::named("failing").await;
    failing.set_reply(Reply::ok("overloaded").status(status));
    let good = Upstream::named("good").await;
    let tg = behind(group(pool([failing.addr(), good.addr()])))
        .start()
        .await;
    (failing, good, tg)
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_statuses_and_resets_but_writes_are_not() {
    let (failing, good, tg) = failing_and_good(503, Group::no_circuit_breaker).await;
    assert_eq!(statuses_of(&tg, Method::GET, 10).await[&200], 10);
    // Every GET that met the 503 was retried on the other endpoint.
    let retries = tg.metric(RETRIES, &[("upstream", "app")]).await.unwrap();
    assert!(failing.count() >= 5, "{}", failing.count());
    assert_eq!(retries, failing.count() as f64);
    let post = statuses_of(&tg, Method::POST, 10).await;
    assert_eq!(
        (post[&200], post[&503]),
        (5, 5),
        "POST is not retried: {post:?}"
    );

    // The same for a connection reset before the response headers.
    let door = slamming_door().await;
    let tg = behind(pool([door, good.addr()]).no_circuit_breaker())
        .start()
        .await;
    assert_eq!(statuses_of(&tg, Method::GET, 10).await[&200], 10);
    let post = statuses_of(&tg, Method::POST, 10).await;
    assert_eq!(
        (post[&200], post[&502]),
        (5, 5),
        "POST is not retried: {post:?}"
    );

    // Unless the route says writes may be repeated.
    let tg = Config::new()
        .upstream(pool([failing.addr(), good.addr()]).no_circuit_breaker())
        .route(
            Route::prefix("/")
                .name("api")
                .to("app")
                .retry_non_idempotent(),
        )
        .start()
        .await;
    assert_eq!(statuses_of(&tg, Method::POST, 10).await[&200], 10);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_and_the_last_answer_goes_through() {
    let (failing, _good, tg) = failing_and_good(503, |g| {
        g.retry("{ budget: 0.0, min_retries_per_second: 0 }")
            .no_circuit_breaker()
    })
    .await;
    let got = statuses_of(&tg, Method::GET, 10).await;
    assert_eq!(
        (got[&200], got[&503]),
        (5, 5),
        "no budget, no retry: {got:?}"
    );
    let retries = tg.metric(RETRIES, &[("upstream", "app")]).await;
    assert_eq!(retries.unwrap_or(0.0), 0.0);

    // One endpoint, three attempts: the third 503 is the client's answer.
    let tg = behind(pool([failing.addr()]).no_circuit_breaker())
        .start()
        .await;
    let before = failing.count();
    let r = tg.get("/x").await;
    r.assert_status(503);
    assert_eq!(r.text(), "overloaded");
    assert_eq!(failing.count() - before, 3);
}

/// An upstream named `name` that answers after 2 s.
async fn slow(name: &str) -> Upstream {
    let up = Upstream::named(name).await;
    up.set_reply(Reply::default().delay(Duration::from_secs(2)));
    up
}

#[tokio::test]
async fn per_try_timeout_moves_on_and_the_deadline_stops_new_attempts() {
    let slow1 = slow("slow").await;
    let fast = Upstream::named("fast").await;
    let group = pool([slow1.addr(), fast.addr()])
        .retry("{ per_try_timeout: 150ms }")
        .no_circuit_breaker();
    let tg = behind(group).start().await;
    let seen = spread(&tg, 4, &[]).await;
    assert_eq!(
        seen["fast"], 4,
        "a slow attempt gives way to another endpoint"
    );
    assert!(
        slow1.count() >= 2,
        "the slow endpoint was tried ({})",
        slow1.count()
    );

    // Both slow, deadline shorter than one try: one attempt, then the timeout answer.
    let slow2 = slow("slow2").await;
    let (a, b) = (slow1.count(), slow2.count());
    let group = pool([slow1.addr(), slow2.addr()])
        .retry("{ per_try_timeout: 150ms, deadline: 100ms }")
        .no_circuit_breaker();
    let tg = behind(group).start().await;
    tg.get("/x").await.assert_status(504);
    assert_eq!(
        (slow1.count() - a) + (slow2.count() - b),
        1,
        "no attempt after the deadline"
    );
}

#[tokio::test]
async fn statuses_passed_on_still_count_against_the_endpoint() {
    let (failing, _good, tg) = failing_and_good(502, |g| {
        g.retry("{ budget: 0.0, min_retries_per_second: 0 }")
            .circuit_breaker("{ failures: 2, backoff: 60s, max_backoff: 60s }")
    })
    .await;
    let got = statuses_of(&tg, Method::GET, 12).await;
    assert_eq!(failing.count(), 2, "two 502s open its circuit: {got:?}");
    assert_eq!((got[&502], got[&200]), (2, 10), "{got:?}");
}

#[tokio::test]
async fn tcp_health_checks_take_a_closed_port_out() {
    let good = Upstream::named("good").await;
    let closed = closed_addr();
    let group = pool([closed, good.addr()])
        .health_check("{ type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }")
        .no_circuit_breaker();
    let tg = behind(group).start().await;
    let label = closed.to_string();
    let health = [("upstream", "app"), ("endpoint", label.as_str())];
    tg.expect_metric(HEALTHY, &health, 0.0).await;
    let failed = [("endpoint", label.as_str()), ("outcome", "connect_error")];
    let before = tg.metric(REQUESTS, &failed).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["good"], 10);
    let after = tg.metric(REQUESTS, &failed).await;
    assert_eq!(before, after, "no request tried the unhealthy endpoint");
}

#[tokio::test]
async fn a_retried_503_with_retry_after_cools_the_endpoint_down() {
    let busy = Upstream::named("busy").await;
    busy.set_reply(Reply::ok("busy").status(503).header("retry-after", "60"));
    let calm = Upstream::named("calm").await;
    let tg = behind(pool([busy.addr(), calm.addr()])).start().await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["calm"], 10, "the 503 was retried elsewhere: {seen:?}");
    assert_eq!(busy.count(), 1, "then the busy endpoint was left alone");
}

/// Two groups, each with a dead endpoint beside a live one: `brk` finds it by its breaker
/// (opening after `failures`), `hc` by a TCP health check; routes /b and /h, and before them
/// a route /extra when `extra_route` (for a reload to change something unrelated).
fn reload_config(
    dead: [SocketAddr; 2],
    alive: [SocketAddr; 2],
    failures: u32,
    extra_route: bool,
) -> Config {
    let breaker = format!("{{ failures: {failures}, backoff: 60s, max_backoff: 60s }}");
    let mut cfg = Config::new()
        .upstream(Group::new("brk", [dead[0], alive[0]]).circuit_breaker(&breaker))
        .upstream(
            Group::new("hc", [dead[1], alive[1]])
                .no_circuit_breaker()
                .health_check(
                    "{ type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 3 }",
                ),
        );
    if extra_route {
        cfg = cfg.route(Route::prefix("/extra").name("extra").to("brk"));
    }
    cfg.route(Route::prefix("/b").name("b").to("brk"))
        .route(Route::prefix("/h").name("h").to("hc"))
}

#[tokio::test]
async fn a_reload_keeps_open_circuits_and_health_verdicts_of_unchanged_endpoints() {
    let (a0, a1) = (Upstream::named("a0").await, Upstream::named("a1").await);
    let dead = [closed_addr(), closed_addr()];
    let alive = [a0.addr(), a1.addr()];
    let tg = reload_config(dead, alive, 3, false).start().await;
    let (d0, d1) = (dead[0].to_string(), dead[1].to_string());
    let connect_errors = |m: &str, group: &str, endpoint: &str| {
        let labels = [
            ("upstream", group),
            ("endpoint", endpoint),
            ("outcome", "connect_error"),
        ];
        metric_value(m, REQUESTS, &labels).unwrap_or(0.0)
    };
    let get_all = |path: &'static str| {
        let tg = &tg;
        async move {
            for _ in 0..20 {
                assert_eq!(tg.get(path).await.status, 200, "{path}");
            }
        }
    };

    // Before the reload: the breaker opened on three failures, the health check took the
    // other dead endpoint out.
    get_all("/b").await;
    let open = [("upstream", "brk"), ("endpoint", d0.as_str())];
    let unhealthy = [("upstream", "hc"), ("endpoint", d1.as_str())];
    tg.expect_metric(CIRCUIT_OPEN, &open, 1.0).await;
    tg.expect_metric(HEALTHY, &unhealthy, 0.0).await;
    let before = tg.metrics().await;
    assert_eq!(connect_errors(&before, "brk", &d0), 3.0);

    // An unrelated edit: a new route.
    tg.reload(&reload_config(dead, alive, 3, true), 1).await;
    // At once, with no new failure or check needed: both verdicts survived.
    let m = tg.metrics().await;
    assert_eq!(metric_value(&m, CIRCUIT_OPEN, &open), Some(1.0));
    assert_eq!(metric_value(&m, HEALTHY, &unhealthy), Some(0.0));
    get_all("/b").await;
    get_all("/h").await;
    let after = tg.metrics().await;
    assert_eq!(
        connect_errors(&after, "brk", &d0),
        3.0,
        "the open circuit kept traffic off the dead endpoint"
    );
    assert_eq!(
        connect_errors(&after, "hc", &d1),
        connect_errors(&before, "hc", &d1),
        "the health verdict kept traffic off the dead endpoint"
    );

    // A changed breaker policy is a new breaker: it starts closed.
    tg.reload(&reload_config(dead, alive, 2, true), 2).await;
    assert_eq!(tg.metric(CIRCUIT_OPEN, &open).await, Some(0.0));
}

#[tokio::test]
async fn a_timed_out_attempt_is_repeated_only_on_another_endpoint() {
    let hang = || Reply::default().delay(Duration::from_secs(3));
    // One endpoint that hangs: one attempt, then 504 (not one wait per attempt).
    let slow = Upstream::named("slow").await;
    slow.set_reply(hang());
    let group = pool([slow.addr()]).retry("{ attempts: 3, per_try_timeout: 200ms }");
    let tg = behind(group).start().await;
    tg.get("/x").await.assert_status(504);
    assert_eq!(slow.count(), 1, "a hanging endpoint is not asked again");

    // Two that hang, three attempts: each is tried once.
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    a.set_reply(hang());
    b.set_reply(hang());
    let group = pool([a.addr(), b.addr()])
        .retry("{ attempts: 3, per_try_timeout: 200ms }")
        .no_circuit_breaker();
    let tg = behind(group).start().await;
    tg.get("/x").await.assert_status(504);
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test]
async fn http_health_checks_use_the_groups_tls_settings() {
    // One self-signed TLS server behind two groups: `verify: false` accepts it, the default
    // (verify) refuses it, for the health check as for requests.
    let secure = Upstream::start_tls("tls").await;
    let check = "{ path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }";
    let tg = Config::new()
        .upstream(
            Group::new("lenient", [secure.addr()])
                .tls("{ sni: localhost, verify: false }")
                .health_check(check),
        )
        .upstream(
            Group::new("strict", [secure.addr()])
                .tls("{ sni: localhost }")
                .health_check(check),
        )
        .route(Route::prefix("/lenient/").to("lenient"))
        .route(Route::prefix("/strict/").to("strict"))
        .start()
        .await;
    let label = secure.addr().to_string();
    let health = |group: &'static str| [("upstream", group), ("endpoint", label.as_str())];
    // Certificate refused.
    tg.expect_metric(HEALTHY, &health("strict"), 0.0).await;
    // The lenient group's checks reached the server over TLS, with the configured SNI.
    let checked = eventually(Duration::from_secs(5), || async {
        secure.requests_to("/health").len() >= 2
    })
    .await;
    assert!(checked, "no health check got through");
    assert_eq!(secure.last_sni().as_deref(), Some("localhost"));
    tg.expect_metric(HEALTHY, &health("lenient"), 1.0).await;
}
