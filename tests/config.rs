//! `tollgate check` on every shipped config and on broken ones (asserting the messages), `run`
//! refusing a bad file, and hot reload keeping the last good config.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[test]
fn every_shipped_config_passes_check() {
    let mut checked = 0;
    for dir in ["conf", "conf/examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let (code, out, err) = check_file(&p);
                assert_eq!(code, 0, "{} rejected:\n{err}", p.display());
                assert!(out.contains(": ok: "), "{out}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 1, "no config files found in conf/");
}

const GOOD_TAIL: &str = "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\nroutes:\n  - name: api\n    match: { path_prefix: /api/ }\n    upstream: app\n";

/// Each broken file yields exit 1 and a message that names the problem (and where).
#[test]
fn broken_configs_are_rejected_with_specific_messages() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "yaml syntax error",
            "listen: 127.0.0.1:8080\nupstreams:\n  app: { endpoints: [\"127.0.0.1:1\" }\n",
            &["broken.yaml:3:", "YAML syntax error"],
        ),
        (
            "unknown top-level key",
            &format!("listen: 127.0.0.1:8080\nlistne: x\n{GOOD_TAIL}"),
            &["broken.yaml:2: listne: unknown key `listne`", "did you mean `listen`?"],
        ),
        (
            "unknown nested key",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\n    timeout: { read: 1s }\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:4: upstreams.app.timeout: unknown key `timeout`", "did you mean `timeouts`?"],
        ),
        (
            "a client read buffer of nothing, or too large to give every connection",
            &format!("server: {{ client_read_buffer: 0 }}\n{GOOD_TAIL}"),
            &["server.client_read_buffer: must be more than 0"],
        ),
        (
            "an empty upgrade socket path",
            &format!("server: {{ upgrade_sock: \"\" }}\n{GOOD_TAIL}"),
            &["server.upgrade_sock: must be a Unix socket path of 1 to 107 bytes"],
        ),
        (
            "a client read buffer over 1MiB",
            &format!("server: {{ client_read_buffer: 2MiB }}\n{GOOD_TAIL}"),
            &["server.client_read_buffer: must be at most 1MiB"],
        ),
        (
            "route naming an unknown upstream",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\nroutes:\n  - match: { path_prefix: / }\n    upstream: ap\n",
            &["broken.yaml:6: routes[0].upstream: unknown upstream `ap` (defined upstreams: app)"],
        ),
        (
            "duplicate route names",
            &format!("{GOOD_TAIL}  - name: api\n    match: {{ path_prefix: /v2/ }}\n    upstream: app\n"),
            &["broken.yaml:8: routes[1].name: duplicate route name `api` (already used by routes[0])"],
        ),
        (
            "duplicate upstream names",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\n  app:\n    endpoints: [\"127.0.0.1:3001\"]\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:4: upstreams.app: duplicate upstream name `app` (first defined on line 2)"],
        ),
        (
            "bad listen address",
            &format!("listen: 127.0.0.1:99999\n{GOOD_TAIL}"),
            &["broken.yaml:1: listen: bad address `127.0.0.1:99999`: expected IP:port"],
        ),
        (
            "bad endpoint address",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1\"]\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:3: upstreams.app.endpoints[0]: bad address `127.0.0.1`: missing `:port`"],
        ),
        (
            "group without endpoints",
            "upstreams:\n  app:\n    endpoints: []\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:3: upstreams.app.endpoints: upstream group `app` has no endpoints"],
        ),
        (
            "bad duration",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\n    timeouts: { read: 30 }\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:4: upstreams.app.timeouts.read: invalid duration `30`: a unit is required"],
        ),
        (
            "unset variable without default",
            "upstreams:\n  app:\n    endpoints: [\"${TOLLGATE_TEST_SURELY_UNSET}\"]\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n",
            &["broken.yaml:3: environment variable `TOLLGATE_TEST_SURELY_UNSET` is not set"],
        ),
        (
            "path prefix without slash",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\nroutes:\n  - match: { path_prefix: api }\n    upstream: app\n",
            &["broken.yaml:5: routes[0].match.path_prefix: path prefix `api` must start with `/`"],
        ),
        (
            "missing routes",
            "upstreams:\n  app:\n    endpoints: [\"127.0.0.1:3000\"]\n",
            &["missing required key `routes`"],
        ),
        ("empty file", "", &["the file is empty"]),
        (
            "admin port overlapping the proxy listener",
            &format!("listen: 127.0.0.1:8080\nadmin: {{ listen: \"0.0.0.0:8080\" }}\n{GOOD_TAIL}"),
            &["broken.yaml:2: admin.listen: `0.0.0.0:8080` overlaps the proxy listen address `127.0.0.1:8080`"],
        ),
    ];
    for (what, yaml, expected) in cases {
        let (code, out, err) = check_yaml(yaml);
        assert_eq!(code, 1, "{what}: expected exit 1, stdout: {out}");
        for e in *expected {
            assert!(err.contains(e), "{what}: expected {e:?} in:\n{err}");
        }
        assert!(err.contains("configuration rejected"), "{what}: {err}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, err) = check_file(Path::new("/nonexistent/tollgate.yaml"));
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/tollgate.yaml: cannot read config file: no such file"),
        "{err}"
    );
}

/// Validation collects every problem of the file in one run, in file order.
#[test]
fn all_problems_are_reported_at_once() {
    let yaml = "listen: nowhere\nupstreams:\n  a:\n    endpoints: []\n  b:\n    endpoints: [\"x\"]\n    tls: { verfy: true }\nroutes:\n  - match: { path_prefix: / }\n    upstream: zz\n  - match: { path_prefix: / }\n    upstream: a\n";
    let (code, _, err) = check_yaml(yaml);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].contains(":1: listen: bad address `nowhere`"),
        "{err}"
    );
    assert!(
        lines[1].contains(":4: upstreams.a.endpoints: upstream group `a` has no endpoints"),
        "{err}"
    );
    assert!(
        lines[2].contains(":7: upstreams.b.tls.verfy: unknown key `verfy`"),
        "{err}"
    );
    assert!(
        lines[3].contains(":10: routes[0].upstream: unknown upstream `zz`"),
        "{err}"
    );
    assert!(
        lines[4].contains(":11: routes[1].match: same host and path_prefix as routes[0]"),
        "{err}"
    );
    assert_eq!(
        lines[5],
        format!(
            "{}: 5 problems found, configuration rejected",
            lines[5].split(": ").next().unwrap()
        )
    );
}

#[test]
fn run_refuses_a_bad_config_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "upstreams: {}\nroutes: []\n").unwrap();
    let (code, _, err) = run_cli(["run", "-c", p.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no routes: define at least one route"),
        "{err}"
    );
}

/// Group `app` on `addr` behind one catch-all route, the config file watched every `watch`
/// (`0s`: not watched).
fn routed_to(addr: SocketAddr, watch: &str) -> Config {
    Config::new()
        .server("watch_interval", watch)
        .upstream(Group::new("app", [addr]))
        .route(Route::prefix("/").name("all").to("app"))
}

/// Which upstream served a GET (its `x-upstream` name), `None` if none did.
async fn served_by(tg: &Tollgate) -> Option<String> {
    let r = tg.client.get(tg.url("/who")).send().await.ok()?;
    Got::read(r)
        .await
        .header_opt("x-upstream")
        .map(str::to_string)
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_last_good_config() {
    let (a, b) = tokio::join!(Upstream::named("a"), Upstream::named("b"));
    let tg = routed_to(a.addr(), "0s").start().await;
    assert_eq!(served_by(&tg).await.as_deref(), Some("a"));

    tg.write_config(&routed_to(b.addr(), "0s"));
    tg.signal(libc::SIGHUP);
    let switched = eventually(Duration::from_secs(10), || async {
        served_by(&tg).await.as_deref() == Some("b")
    })
    .await;
    assert!(
        switched,
        "SIGHUP did not load the new config:\n{}",
        tg.log()
    );
    let reloads = "tollgate_config_reloads_total";
    tg.expect_metric(reloads, &[("result", "success")], 1.0)
        .await;

    // A broken file is refused: the error is logged, the last good config keeps serving.
    std::fs::write(
        &tg.config_path,
        "upstreams:\n  app: { endpoints: [] }\nroutes: nope\n",
    )
    .unwrap();
    tg.signal(libc::SIGHUP);
    tg.expect_metric(reloads, &[("result", "failure")], 1.0)
        .await;
    for _ in 0..5 {
        assert_eq!(served_by(&tg).await.as_deref(), Some("b"));
    }
    let log = tg.log();
    assert!(
        log.contains("config reload failed, still serving the previous config"),
        "{log}"
    );
    assert!(
        log.contains("upstreams.app.endpoints: upstream group `app` has no endpoints"),
        "{log}"
    );
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let (a, b) = tokio::join!(Upstream::named("a"), Upstream::named("b"));
    let tg = routed_to(a.addr(), "100ms").start().await;
    assert_eq!(served_by(&tg).await.as_deref(), Some("a"));
    tg.write_config(&routed_to(b.addr(), "100ms"));
    let switched = eventually(Duration::from_secs(10), || async {
        served_by(&tg).await.as_deref() == Some("b")
    })
    .await;
    assert!(switched, "file change not picked up:\n{}", tg.log());
}

#[tokio::test]
async fn sigterm_drains_and_exits_within_the_configured_timeouts() {
    let app = Upstream::start().await;
    let mut tg = routed_to(app.addr(), "0s").start().await;
    assert_eq!(served_by(&tg).await.as_deref(), Some("upstream"));
    tg.signal(libc::SIGTERM);
    // grace_period 0s + shutdown_timeout 1s: gone well within 10 s.
    let status = tg.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some(),
        "still running 10 s after SIGTERM:\n{}",
        tg.log()
    );
}

#[test]
fn run_refuses_a_port_in_use_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.yaml");
    let admin = free_port();
    std::fs::write(
        &p,
        format!("listen: {addr}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n{GOOD_TAIL}"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) = run_cli(["run", "-c", p.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on {addr} (listen)")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no 30 s bind retry loop"
    );
}
