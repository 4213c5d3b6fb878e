//! Upstream groups through the real binary: round-robin, weighted and consistent-hash
//! balancing (pingora-load-balancing), connection failures retried on another endpoint, the
//! per-endpoint circuit breaker, and failover while an endpoint process is killed under load
//! and revived.

mod common;

use common::{closed_addr, metric_value, DemoUpstream, MockUpstream, Tollgate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn group(endpoints: &str, extra: &str) -> String {
    format!(
        r#"upstreams:
  app:
    endpoints: [{endpoints}]
{extra}routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
"#
    )
}

/// Which mock answered each of `n` GETs (by its `x-upstream` name).
async fn spread(tg: &Tollgate, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut req = tg.client.get(tg.url("/x"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let who = r.headers()["x-upstream"].to_str().unwrap().to_string();
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_ignores_weights_and_weighted_honours_them() {
    let a = MockUpstream::named("a").await;
    let b = MockUpstream::named("b").await;
    let endpoints = format!(
        "{{ address: \"{}\", weight: 3 }}, \"{}\"",
        a.addr(),
        b.addr()
    );
    let rr = Tollgate::start(&group(&endpoints, "")).await;
    let seen = spread(&rr, 40, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (20, 20), "{seen:?}");

    let weighted = Tollgate::start(&group(&endpoints, "    balance: weighted\n")).await;
    let seen = spread(&weighted, 40, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (30, 10), "{seen:?}");
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let a = MockUpstream::named("a").await;
    let b = MockUpstream::named("b").await;
    let c = MockUpstream::named("c").await;
    let endpoints = format!("\"{}\", \"{}\", \"{}\"", a.addr(), b.addr(), c.addr());
    let tg = Tollgate::start(&group(
        &endpoints,
        "    balance: consistent_hash\n    hash_on: \"header:x-user\"\n",
    ))
    .await;
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
    let alive = MockUpstream::named("alive").await;
    let dead = closed_addr();
    let endpoints = format!("\"{dead}\", \"{}\"", alive.addr());
    let extra = "    circuit_breaker: { failures: 3, backoff: 60s, max_backoff: 60s }\n";
    let tg = Tollgate::start(&group(&endpoints, extra)).await;
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
        metric_value(&m, "tollgate_upstream_requests_total", &failed),
        Some(3.0),
        "three failures open the circuit; the dead endpoint is not tried again"
    );
    assert_eq!(
        metric_value(
            &m,
            "tollgate_upstream_circuit_open",
            &[("endpoint", dead_label.as_str())]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "tollgate_upstream_retries_total",
            &[("upstream", "app")]
        ),
        Some(3.0)
    );

    // With one attempt and no breaker, the requests that land on the dead endpoint fail.
    let tg1 = Tollgate::start(&group(
        &endpoints,
        "    retry: { attempts: 1 }\n    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    let mut statuses = HashMap::new();
    for _ in 0..10 {
        *statuses
            .entry(tg1.get("/x").await.status().as_u16())
            .or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&502), Some(&5), "{statuses:?}");
}

/// Successful upstream requests `endpoint` answered, per the metrics text `m`.
fn successes(m: &str, endpoint: SocketAddr) -> f64 {
    let e = endpoint.to_string();
    metric_value(
        m,
        "tollgate_upstream_requests_total",
        &[("endpoint", e.as_str()), ("outcome", "success")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn killing_an_endpoint_under_load_loses_no_request_and_it_rejoins() {
    let (pa, pb) = (common::free_port(), common::free_port());
    let a: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();
    let mut demo_a = DemoUpstream::start(a).await;
    let _demo_b = DemoUpstream::start(b).await;
    let tg = Arc::new(
        Tollgate::start(&group(
            &format!("\"{a}\", \"{b}\""),
            "    circuit_breaker: { failures: 3, backoff: 300ms, max_backoff: 300ms }\n    health_check: { path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2 }\n",
        ))
        .await,
    );

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
    while successes(&tg.metrics().await, a) < 20.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    demo_a.kill();
    let killed = Instant::now();
    let a_label = a.to_string();
    let open = [("endpoint", a_label.as_str())];
    let opened = Tollgate::eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(2),
        || async {
            metric_value(&tg.metrics().await, "tollgate_upstream_circuit_open", &open) == Some(1.0)
        },
    )
    .await;
    assert!(opened, "circuit never opened");
    let to_open = killed.elapsed();
    // From here on, all traffic is on the survivor (the circuit is retried only after 300 ms).
    let m = tg.metrics().await;
    let (a_at_open, b_at_open) = (successes(&m, a), successes(&m, b));
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
    let rejoined = Tollgate::eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async {
            let m = tg.metrics().await;
            metric_value(&m, "tollgate_upstream_circuit_open", &open) == Some(0.0)
                && metric_value(&m, "tollgate_upstream_endpoint_healthy", &healthy) == Some(1.0)
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
    let (code, _, err) = common::check_yaml(
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
    let backup = MockUpstream::named("backup").await;
    let yaml = format!(
        r#"upstreams:
  primary:
    endpoints: ["{}", "{}"]
    retry: {{ attempts: 2 }}
  backup:
    endpoints: ["{}"]
routes:
  - name: chat
    match: {{ path_prefix: / }}
    upstreams: [primary, backup]
"#,
        closed_addr(),
        closed_addr(),
        backup.addr()
    );
    let tg = Tollgate::start(&yaml).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["backup"], 10, "{seen:?}");
    let m = tg.metrics().await;
    assert!(
        metric_value(
            &m,
            "tollgate_upstream_retries_total",
            &[("upstream", "backup")]
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn provider_adapter_rewrites_host_path_and_headers() {
    let provider = MockUpstream::named("provider").await;
    let yaml = format!(
        r#"upstreams:
  openai:
    endpoints: ["{}"]
    host: api.provider.test
    strip_prefix: /openai
    add_prefix: /v1
    headers:
      authorization: "Bearer ${{PROVIDER_KEY}}"
    health_check: {{ path: /v1/models, interval: 1h }}
routes:
  - name: llm
    match: {{ path_prefix: /openai/ }}
    upstream: openai
"#,
        provider.addr()
    );
    let tg = Tollgate::start_with_env(&yaml, &[("PROVIDER_KEY", "sk-test")]).await;
    let r = tg
        .client
        .get(tg.url("/openai/chat/completions?stream=false"))
        .header("authorization", "Bearer client-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let requests = provider.requests();
    let seen = requests
        .iter()
        .find(|r| r.path.starts_with("/v1/chat/"))
        .expect("the proxied request");
    assert_eq!(seen.path, "/v1/chat/completions?stream=false");
    assert_eq!(seen.header("host"), "api.provider.test");
    assert_eq!(seen.header("authorization"), "Bearer sk-test");
    // The health check (run at start) speaks to the provider the same way.
    let checked = Tollgate::eventually(Duration::from_secs(5), || async {
        provider.requests().iter().any(|r| r.path == "/v1/models")
    })
    .await;
    assert!(checked, "no health check reached the provider");
    let requests = provider.requests();
    let check = requests.iter().find(|r| r.path == "/v1/models").unwrap();
    assert_eq!(check.header("host"), "api.provider.test");
    assert_eq!(check.header("authorization"), "Bearer sk-test");
}

#[tokio::test]
async fn retry_after_on_429_cools_the_endpoint_down() {
    use common::origin::{Answer, Origin, Seen};
    let busy = Origin::start(|_s: &Seen, _| {
        Answer::ok(
            "slow down",
            &[("retry-after", "60"), ("x-upstream", "busy")],
        )
        .status(429)
    })
    .await;
    let calm = MockUpstream::named("calm").await;
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", busy.addr(), calm.addr()),
        "",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(tg.get("/x").await.status().as_u16());
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
    assert_eq!(
        metric_value(
            &tg.metrics().await,
            "tollgate_upstream_circuit_open",
            &[("endpoint", label.as_str())]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    use common::origin::{Answer, Origin, Seen};
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let a = Origin::start(move |s: &Seen, _| {
        if s.path == "/health" && !flag.load(Ordering::Relaxed) {
            Answer::ok("down", &[]).status(503)
        } else {
            Answer::ok("a", &[("x-upstream", "a")])
        }
    })
    .await;
    let b = MockUpstream::named("b").await;
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", a.addr(), b.addr()),
        "    health_check: { path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }\n",
    ))
    .await;
    let label = a.addr().to_string();
    let health = [("upstream", "app"), ("endpoint", label.as_str())];
    let wait_for = |want: f64| {
        let tg = &tg;
        let health = &health;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let m = tg.metrics().await;
                if metric_value(&m, "tollgate_upstream_endpoint_healthy", health) == Some(want) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "endpoint health never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1.0).await;
    healthy.store(false, Ordering::Relaxed);
    wait_for(0.0).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(
        seen.get("b"),
        Some(&10),
        "unhealthy endpoint skipped: {seen:?}"
    );
    healthy.store(true, Ordering::Relaxed);
    wait_for(1.0).await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5), "back in rotation: {seen:?}");
    let checks = a.seen().iter().filter(|s| s.path == "/health").count();
    assert!(checks >= 3, "checked periodically ({checks} checks)");
}

/// An endpoint that accepts connections and closes them at once (a reset before headers).
async fn slamming_door() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    addr
}

async fn statuses_of(tg: &Tollgate, method: reqwest::Method, n: usize) -> HashMap<u16, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = tg
            .client
            .request(method.clone(), tg.url("/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        *out.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    out
}

/// An origin that answers every request with `status`, a healthy mock named `good`, and a
/// tollgate balancing over both (failing first) with `extra` group keys.
async fn failing_and_good(
    status: u16,
    extra: &str,
) -> (common::origin::Origin, MockUpstream, Tollgate) {
    use common::origin::{Answer, Origin, Seen};
    let failing =
        Origin::start(move |_s: &Seen, _| Answer::ok("overloaded", &[]).status(status)).await;
    let good = MockUpstream::named("good").await;
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", failing.addr(), good.addr()),
        extra,
    ))
    .await;
    (failing, good, tg)
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_statuses_and_resets_but_writes_are_not() {
    let no_breaker = "    circuit_breaker: { failures: 0 }\n";
    let (failing, good, tg) = failing_and_good(503, no_breaker).await;
    assert_eq!(statuses_of(&tg, reqwest::Method::GET, 10).await[&200], 10);
    // Every GET that met the 503 was retried on the other endpoint.
    let retries = metric_value(
        &tg.metrics().await,
        "tollgate_upstream_retries_total",
        &[("upstream", "app")],
    )
    .unwrap();
    assert!(failing.count() >= 5, "{}", failing.count());
    assert_eq!(retries, failing.count() as f64);
    let post = statuses_of(&tg, reqwest::Method::POST, 10).await;
    assert_eq!(
        (post[&200], post[&503]),
        (5, 5),
        "POST is not retried: {post:?}"
    );

    // The same for a connection reset before the response headers.
    let door = slamming_door().await;
    let tg = Tollgate::start(&group(
        &format!("\"{door}\", \"{}\"", good.addr()),
        no_breaker,
    ))
    .await;
    assert_eq!(statuses_of(&tg, reqwest::Method::GET, 10).await[&200], 10);
    let post = statuses_of(&tg, reqwest::Method::POST, 10).await;
    assert_eq!(
        (post[&200], post[&502]),
        (5, 5),
        "POST is not retried: {post:?}"
    );

    // Unless the route says writes may be repeated.
    let yaml = group(
        &format!("\"{}\", \"{}\"", failing.addr(), good.addr()),
        no_breaker,
    )
    .replace(
        "    upstream: app\n",
        "    upstream: app\n    retry_non_idempotent: true\n",
    );
    let tg = Tollgate::start(&yaml).await;
    assert_eq!(statuses_of(&tg, reqwest::Method::POST, 10).await[&200], 10);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_and_the_last_answer_goes_through() {
    let (failing, _good, tg) = failing_and_good(
        503,
        "    retry: { budget: 0.0, min_retries_per_second: 0 }\n    circuit_breaker: { failures: 0 }\n",
    )
    .await;
    let got = statuses_of(&tg, reqwest::Method::GET, 10).await;
    assert_eq!(
        (got[&200], got[&503]),
        (5, 5),
        "no budget, no retry: {got:?}"
    );
    let retries = metric_value(
        &tg.metrics().await,
        "tollgate_upstream_retries_total",
        &[("upstream", "app")],
    );
    assert_eq!(retries.unwrap_or(0.0), 0.0);

    // One endpoint, three attempts: the third 503 is the client's answer.
    let tg = Tollgate::start(&group(
        &format!("\"{}\"", failing.addr()),
        "    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    let before = failing.count();
    let r = tg.get("/x").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "overloaded");
    assert_eq!(failing.count() - before, 3);
}

#[tokio::test]
async fn per_try_timeout_moves_on_and_the_deadline_stops_new_attempts() {
    use common::Reply;
    let slow = MockUpstream::named("slow").await;
    slow.set_reply(Reply {
        delay: Duration::from_secs(2),
        ..Reply::default()
    });
    let fast = MockUpstream::named("fast").await;
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", slow.addr(), fast.addr()),
        "    retry: { per_try_timeout: 150ms }\n    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    let seen = spread(&tg, 4, &[]).await;
    assert_eq!(
        seen["fast"], 4,
        "a slow attempt gives way to another endpoint"
    );
    assert!(
        slow.count() >= 2,
        "the slow endpoint was tried ({})",
        slow.count()
    );

    // Both slow, deadline shorter than one try: one attempt, then the timeout answer.
    let slow2 = MockUpstream::named("slow2").await;
    slow2.set_reply(Reply {
        delay: Duration::from_secs(2),
        ..Reply::default()
    });
    let (a, b) = (slow.count(), slow2.count());
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", slow.addr(), slow2.addr()),
        "    retry: { per_try_timeout: 150ms, deadline: 100ms }\n    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    assert_eq!(tg.get("/x").await.status(), 504);
    assert_eq!(
        (slow.count() - a) + (slow2.count() - b),
        1,
        "no attempt after the deadline"
    );
}

#[tokio::test]
async fn statuses_passed_on_still_count_against_the_endpoint() {
    let (failing, _good, tg) = failing_and_good(
        502,
        "    retry: { budget: 0.0, min_retries_per_second: 0 }\n    circuit_breaker: { failures: 2, backoff: 60s, max_backoff: 60s }\n",
    )
    .await;
    let got = statuses_of(&tg, reqwest::Method::GET, 12).await;
    assert_eq!(failing.count(), 2, "two 502s open its circuit: {got:?}");
    assert_eq!((got[&502], got[&200]), (2, 10), "{got:?}");
}

#[tokio::test]
async fn tcp_health_checks_take_a_closed_port_out() {
    let good = MockUpstream::named("good").await;
    let closed = closed_addr();
    let tg = Tollgate::start(&group(
        &format!("\"{closed}\", \"{}\"", good.addr()),
        "    health_check: { type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }\n    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    let label = closed.to_string();
    let health = [("upstream", "app"), ("endpoint", label.as_str())];
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &tg.metrics().await,
        "tollgate_upstream_endpoint_healthy",
        &health,
    ) != Some(0.0)
    {
        assert!(Instant::now() < deadline, "never marked unhealthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = [("endpoint", label.as_str()), ("outcome", "connect_error")];
    let before = metric_value(
        &tg.metrics().await,
        "tollgate_upstream_requests_total",
        &failed,
    );
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["good"], 10);
    let after = metric_value(
        &tg.metrics().await,
        "tollgate_upstream_requests_total",
        &failed,
    );
    assert_eq!(before, after, "no request tried the unhealthy endpoint");
}

#[tokio::test]
async fn a_retried_503_with_retry_after_cools_the_endpoint_down() {
    use common::origin::{Answer, Origin, Seen};
    let busy =
        Origin::start(|_s: &Seen, _| Answer::ok("busy", &[("retry-after", "60")]).status(503))
            .await;
    let calm = MockUpstream::named("calm").await;
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", busy.addr(), calm.addr()),
        "",
    ))
    .await;
    let seen = spread(&tg, 10, &[]).await;
    assert_eq!(seen["calm"], 10, "the 503 was retried elsewhere: {seen:?}");
    assert_eq!(busy.count(), 1, "then the busy endpoint was left alone");
}

/// Two groups, each with a dead endpoint beside a live one: `brk` finds it by its breaker,
/// `hc` by a TCP health check. `extra_route` lets a reload change something unrelated.
fn reload_config(
    dead: [SocketAddr; 2],
    alive: [SocketAddr; 2],
    failures: u32,
    extra_route: &str,
) -> String {
    format!(
        r#"upstreams:
  brk:
    endpoints: ["{}", "{}"]
    circuit_breaker: {{ failures: {failures}, backoff: 60s, max_backoff: 60s }}
  hc:
    endpoints: ["{}", "{}"]
    circuit_breaker: {{ failures: 0 }}
    health_check: {{ type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 3 }}
routes:
{extra_route}  - name: b
    match: {{ path_prefix: /b }}
    upstream: brk
  - name: h
    match: {{ path_prefix: /h }}
    upstream: hc
"#,
        dead[0], alive[0], dead[1], alive[1]
    )
}

#[tokio::test]
async fn a_reload_keeps_open_circuits_and_health_verdicts_of_unchanged_endpoints() {
    let (a0, a1) = (
        MockUpstream::named("a0").await,
        MockUpstream::named("a1").await,
    );
    let dead = [closed_addr(), closed_addr()];
    let alive = [a0.addr(), a1.addr()];
    let tg = Tollgate::start(&reload_config(dead, alive, 3, "")).await;
    let (d0, d1) = (dead[0].to_string(), dead[1].to_string());
    let connect_errors = |m: &str, group: &str, endpoint: &str| {
        metric_value(
            m,
            "tollgate_upstream_requests_total",
            &[
                ("upstream", group),
                ("endpoint", endpoint),
                ("outcome", "connect_error"),
            ],
        )
        .unwrap_or(0.0)
    };
    let get_all = |path: &'static str| {
        let tg = &tg;
        async move {
            for _ in 0..20 {
                assert_eq!(tg.get(path).await.status(), 200, "{path}");
            }
        }
    };

    // Before the reload: the breaker opened on three failures, the health check took the
    // other dead endpoint out.
    get_all("/b").await;
    let open = [("upstream", "brk"), ("endpoint", d0.as_str())];
    let unhealthy = [("upstream", "hc"), ("endpoint", d1.as_str())];
    assert_eq!(
        tg.metric_reaches("tollgate_upstream_circuit_open", &open, 1.0)
            .await,
        Some(1.0)
    );
    assert_eq!(
        tg.metric_reaches("tollgate_upstream_endpoint_healthy", &unhealthy, 0.0)
            .await,
        Some(0.0)
    );
    let before = tg.metrics().await;
    assert_eq!(connect_errors(&before, "brk", &d0), 3.0);

    // An unrelated edit: a new route.
    let extra = "  - name: extra\n    match: { path_prefix: /extra }\n    upstream: brk\n";
    tg.write_config(&reload_config(dead, alive, 3, extra));
    tg.signal(libc::SIGHUP);
    let ok = [("result", "success")];
    assert_eq!(
        tg.metric_reaches("tollgate_config_reloads_total", &ok, 1.0)
            .await,
        Some(1.0)
    );
    // At once, with no new failure or check needed: both verdicts survived.
    let m = tg.metrics().await;
    assert_eq!(
        metric_value(&m, "tollgate_upstream_circuit_open", &open),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "tollgate_upstream_endpoint_healthy", &unhealthy),
        Some(0.0)
    );
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
    tg.write_config(&reload_config(dead, alive, 2, extra));
    tg.signal(libc::SIGHUP);
    assert_eq!(
        tg.metric_reaches("tollgate_config_reloads_total", &ok, 2.0)
            .await,
        Some(2.0)
    );
    assert_eq!(
        metric_value(&tg.metrics().await, "tollgate_upstream_circuit_open", &open),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_timed_out_attempt_is_repeated_only_on_another_endpoint() {
    use common::Reply;
    let hang = || Reply {
        delay: Duration::from_secs(3),
        ..Reply::default()
    };
    // One endpoint that hangs: one attempt, then 504 (not one wait per attempt).
    let slow = MockUpstream::named("slow").await;
    slow.set_reply(hang());
    let tg = Tollgate::start(&group(
        &format!("\"{}\"", slow.addr()),
        "    retry: { attempts: 3, per_try_timeout: 200ms }\n",
    ))
    .await;
    assert_eq!(tg.get("/x").await.status(), 504);
    assert_eq!(slow.count(), 1, "a hanging endpoint is not asked again");

    // Two that hang, three attempts: each is tried once.
    let (a, b) = (
        MockUpstream::named("a").await,
        MockUpstream::named("b").await,
    );
    a.set_reply(hang());
    b.set_reply(hang());
    let tg = Tollgate::start(&group(
        &format!("\"{}\", \"{}\"", a.addr(), b.addr()),
        "    retry: { attempts: 3, per_try_timeout: 200ms }\n    circuit_breaker: { failures: 0 }\n",
    ))
    .await;
    assert_eq!(tg.get("/x").await.status(), 504);
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test]
async fn http_health_checks_use_the_groups_tls_settings() {
    // One self-signed TLS server behind two groups: `verify: false` accepts it, the default
    // (verify) refuses it, for the health check as for requests.
    let secure = MockUpstream::start_tls("tls").await;
    let yaml = format!(
        r#"upstreams:
  lenient:
    endpoints: ["{a}"]
    tls: {{ sni: localhost, verify: false }}
    health_check: {{ path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }}
  strict:
    endpoints: ["{a}"]
    tls: {{ sni: localhost }}
    health_check: {{ path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }}
routes:
  - {{ match: {{ path_prefix: /lenient/ }}, upstream: lenient }}
  - {{ match: {{ path_prefix: /strict/ }}, upstream: strict }}
"#,
        a = secure.addr()
    );
    let tg = Tollgate::start(&yaml).await;
    let label = secure.addr().to_string();
    let healthy = |group: &'static str| {
        let label = label.clone();
        let tg = &tg;
        async move {
            tg.metric_reaches(
                "tollgate_upstream_endpoint_healthy",
                &[("upstream", group), ("endpoint", label.as_str())],
                if group == "strict" { 0.0 } else { 1.0 },
            )
            .await
        }
    };
    assert_eq!(healthy("strict").await, Some(0.0), "certificate refused");
    // The lenient group's checks reached the server over TLS, with the configured SNI.
    let checked = Tollgate::eventually(Duration::from_secs(5), || async {
        secure
            .requests()
            .iter()
            .filter(|r| r.path == "/health")
            .count()
            >= 2
    })
    .await;
    assert!(checked, "no health check got through");
    assert_eq!(secure.last_sni().as_deref(), Some("localhost"));
    assert_eq!(healthy("lenient").await, Some(1.0));
}
