//! Hardening against abusive clients and careless operations (issue 12): what tollgate writes
//! in its logs, how it reloads a file being written, and how it answers malformed requests.

mod common;

use common::*;
use std::time::Duration;

/// A request with secrets in its query string that fails (the upstream refuses): neither
/// Pingora's error line nor tollgate's own lines nor the access log carry them.
#[tokio::test]
async fn secrets_in_the_query_string_never_reach_any_log() {
    let tg = Config::new()
        .upstream(Group::new("app", [closed_addr()]).retry("{ attempts: 1 }"))
        .route(Route::prefix("/").name("api").to("app"))
        .start()
        .await;
    let r = tg
        .get_with(
            "/v1/chat?api_key=sk-live-Q7x9&token=tok-Zz81",
            &[("authorization", "Bearer bearer-Kp42")],
        )
        .await;
    assert_eq!(r.status, 502);
    // The error line is written after the response: wait for it.
    let logged = eventually(Duration::from_secs(5), || async {
        tg.log().contains("<redacted>")
    })
    .await;
    let log = tg.log();
    assert!(logged, "no error line naming the request:\n{log}");
    for secret in ["sk-live-Q7x9", "tok-Zz81", "bearer-Kp42"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }
    assert!(log.contains("GET /v1/chat?<redacted>"), "{log}");
}

/// An operator's editor rewrites the config in place and pauses half way, the first half valid
/// YAML without the routes of the second. tollgate loads the file only once it has stayed the
/// same for `server.reload_settle`: the half file is never loaded, no route answers 404 in
/// between, and the whole file is loaded once.
#[tokio::test]
async fn a_file_rewritten_in_place_is_loaded_only_when_whole() {
    let app = Upstream::start().await;
    let cfg = |routes: &[&str]| {
        let mut c = Config::new()
            .upstream(Group::new("app", [app.addr()]))
            .server("watch_interval", "50ms")
            .server("reload_settle", "1s");
        for r in routes {
            c = c.route(Route::prefix(&format!("/{r}/")).name(r).to("app"));
        }
        c
    };
    let tg = cfg(&["one", "two"]).start().await;
    tg.get("/two/x").await.assert_status(200);

    // The new file: routes one, two, three. Its first half ends before route two.
    tg.write_config(&cfg(&["one", "two", "three"]));
    let whole = std::fs::read_to_string(&tg.config_path).unwrap();
    tg.write_config(&cfg(&["one", "two"])); // back to the running file (same content)
    let cut = whole.find("  - name: two").expect("route two in the file");
    let (first, rest) = whole.split_at(cut);

    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&tg.config_path)
        .unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    // The writer pauses (shorter than reload_settle); meanwhile route two keeps answering.
    let pause = std::time::Instant::now();
    while pause.elapsed() < Duration::from_millis(600) {
        tg.get("/two/x").await.assert_status(200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f.write_all(rest.as_bytes()).unwrap();
    f.flush().unwrap();
    drop(f);

    let ok = [("result", "success")];
    tg.expect_metric("tollgate_config_reloads_total", &ok, 1.0)
        .await;
    tg.get("/three/x").await.assert_status(200);
    tg.get("/two/x").await.assert_status(200);
    let failed = [("result", "failure")];
    assert_eq!(
        tg.metric("tollgate_config_reloads_total", &failed).await,
        Some(0.0),
        "the half file was never tried"
    );
    assert_eq!(
        tg.metric("tollgate_config_reloads_total", &ok).await,
        Some(1.0)
    );
}

/// The status code of a raw HTTP exchange ("" when the connection closed without an answer).
fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

/// Requests no proxy should forward get 400 and never reach the upstream; an HTTP/1.0 request
/// without Host is forwarded with the endpoint's name as Host.
#[tokio::test]
async fn malformed_requests_are_refused_before_the_upstream() {
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .start()
        .await;
    let long_method = "A".repeat(10_000);
    let cases: Vec<(String, &str)> = vec![
        (
            "GET / HTTP/1.1\r\nHost: a/../b\r\n\r\n".into(),
            "Host with a path",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(),
            "Host with a space",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n".into(),
            "Host with userinfo",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n".into(),
            "port out of range",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            "two Hosts",
        ),
        ("GET / HTTP/1.1\r\n\r\n".into(), "HTTP/1.1 without Host"),
        (
            format!("{long_method} / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "a 10,000-byte method",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
                .into(),
            "two equal Content-Length lines",
        ),
    ];
    for (request, what) in &cases {
        let answer = raw(tg.addr, request.as_bytes()).await;
        assert!(status_of(&answer).starts_with('4'), "{what}: {answer}");
    }
    assert_eq!(app.count(), 0, "nothing reached the upstream");

    // HTTP/1.0 without Host: the upstream gets the endpoint's name.
    let answer = raw(tg.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let seen = app.requests_to("/old");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), app.addr().to_string());
    // A valid Host is forwarded as X-Forwarded-Host.
    let answer = raw(
        tg.addr,
        b"GET /ok HTTP/1.1\r\nHost: api.example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(
        app.requests_to("/ok")[0].header("x-forwarded-host"),
        "api.example.com:8080"
    );
}

/// A route at its `max_in_flight` answers new requests 503 with `Retry-After` at once, and
/// takes them again as soon as a slot is free.
#[tokio::test]
async fn a_route_past_max_in_flight_sheds_load_with_503() {
    let app = Upstream::start().await;
    app.set_reply(Reply::ok("slow").held());
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(
            Route::prefix("/")
                .name("api")
                .to("app")
                .set("max_in_flight", 2),
        )
        .start()
        .await;
    let held = async { tokio::join!(tg.get("/1"), tg.get("/2")) };
    let probe = async {
        assert!(eventually(Duration::from_secs(5), || async { app.count() == 2 }).await);
        let shed = tg.get("/3").await;
        app.open_gate(2);
        shed
    };
    let ((first, second), shed) = tokio::join!(held, probe);
    first.assert_status(200);
    second.assert_status(200);
    shed.assert_status(503);
    assert_eq!(shed.header("retry-after"), "1");
    assert_eq!(shed.json()["error"], "overloaded");
    assert_eq!(
        app.count(),
        2,
        "the shed request never reached the upstream"
    );
    app.open_gate(1);
    tg.get("/4").await.assert_status(200);
    tg.expect_metric("tollgate_requests_shed_total", &[("route", "api")], 1.0)
        .await;
}

/// A listener that accepts and drops every connection, counting them.
async fn counting_door() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

/// With `circuit_breaker.fail_fast`, a pool whose every circuit is open answers 503 with the
/// wait until the first probe, and calls nobody; without it, the failing endpoint is called.
#[tokio::test]
async fn fail_fast_answers_503_without_calling_an_all_open_pool() {
    for fail_fast in [true, false] {
        let (door, connections) = counting_door().await;
        let tg = Config::new()
            .upstream(
                Group::new("api", [door])
                    .retry("{ attempts: 1 }")
                    .circuit_breaker(&format!(
                        "{{ failures: 1, backoff: 30s, fail_fast: {fail_fast} }}"
                    )),
            )
            .route(Route::prefix("/").name("api").to("api"))
            .start()
            .await;
        tg.get("/first").await.assert_status(502);
        let before = connections.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..10 {
            let r = tg.get("/again").await;
            if fail_fast {
                r.assert_status(503);
                assert_eq!(r.json()["error"], "upstream_circuit_open");
                let wait: u64 = r.header("retry-after").parse().unwrap();
                assert!((1..=30).contains(&wait), "Retry-After {wait}");
            } else {
                r.assert_status(502);
            }
        }
        let calls = connections.load(std::sync::atomic::Ordering::SeqCst) - before;
        match fail_fast {
            true => assert_eq!(calls, 0, "an open pool was called"),
            false => assert_eq!(calls, 10, "without fail_fast the endpoint is still called"),
        }
    }
}

/// Over-long targets get 414, too many or too large header fields 431, a declared body over
/// the route's `max_request_body` 413 at once (and a chunked one when it passes it): none
/// reaches the upstream.
#[tokio::test]
async fn oversized_requests_get_414_431_and_413() {
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(
            Route::prefix("/upload/")
                .name("upload")
                .to("app")
                .set("max_request_body", "1KiB"),
        )
        .route(Route::prefix("/").name("api").to("app"))
        .start()
        .await;
    let long_uri = format!("/x?q={}", "a".repeat(10_000));
    tg.get(&long_uri).await.assert_status(414);
    let big = "b".repeat(64 * 1024);
    tg.get_with("/x", &[("x-big", &big)])
        .await
        .assert_status(431);
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = tg.get_with("/x", &many).await;
    r.assert_status(431);
    assert_eq!(r.json()["error"], "request_headers_too_large");
    // Declared too large: refused before a byte of the body is read.
    let answer = raw(
        tg.addr,
        b"POST /upload/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "413", "{answer}");
    // Chunked, passing the limit half way.
    let mut chunked =
        b"POST /upload/b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'z'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(tg.addr, &chunked).await;
    assert_eq!(
        status_of(&answer),
        "413",
        "a chunked body over the limit: {answer}"
    );
    assert_eq!(app.requests_to("/x").len(), 0);
    assert_eq!(app.requests_to("/upload/a").len(), 0);
    tg.get("/x").await.assert_status(200);
    // Each refusal is counted under its code.
    // The 64 KiB field is refused as it arrives, before a request exists (more than the
    // limits could accept in any layout): counted per connection, not per route.
    tg.expect_metric(
        "tollgate_client_connections_refused_total",
        &[("reason", "request_headers_too_large")],
        1.0,
    )
    .await;
    for (route, reason, n) in [
        ("api", "uri_too_long", 1.0),
        ("api", "request_headers_too_large", 1.0),
        ("upload", "request_body_too_large", 2.0),
    ] {
        tg.expect_metric(
            "tollgate_requests_refused_total",
            &[("route", route), ("reason", reason)],
            n,
        )
        .await;
    }
}

/// An idle kept-alive connection is closed after `server.keepalive_timeout`.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .server("keepalive_timeout", "1s")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 10 s"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
}

/// POSTs that declare a body and stall get 408 (the client's fault): no endpoint's circuit
/// opens and later requests still reach the primary group.
#[tokio::test]
async fn stalled_bodies_get_408_and_blame_no_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let primary = Upstream::named("primary").await;
    let backup = Upstream::named("backup").await;
    let tg = Config::new()
        .upstream(
            Group::new("primary", [primary.addr()])
                .circuit_breaker("{ failures: 1, backoff: 30s }"),
        )
        .upstream(Group::new("backup", [backup.addr()]))
        .route(
            Route::prefix("/")
                .name("api")
                .failover(["primary", "backup"]),
        )
        .server("client_body_timeout", "300ms")
        .start()
        .await;
    let stalls = (0..6).map(|_| async {
        let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
        s.write_all(b"POST /chat HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await;
        answer
    });
    for answer in futures_util::future::join_all(stalls).await {
        assert_eq!(status_of(&answer), "408", "{answer}");
    }
    assert_eq!(
        tg.metric("tollgate_upstream_circuit_open", &[("upstream", "primary")])
            .await
            .unwrap_or(0.0),
        0.0,
        "a stalled client opened the upstream's circuit"
    );
    let before = backup.count();
    for _ in 0..5 {
        tg.get("/x").await.assert_status(200);
    }
    assert_eq!(backup.count(), before, "GETs moved to the backup group");
    tg.expect_metric(
        "tollgate_requests_refused_total",
        &[("route", "api"), ("reason", "client_timeout")],
        6.0,
    )
    .await;
}

/// A body that trickles in, each piece well inside `client_body_timeout`, is cut with 408 once
/// it falls behind `client_body_min_rate` (it may take the timeout plus a second per
/// `min_rate` bytes); a slow body that keeps the rate arrives whole.
#[tokio::test]
async fn a_body_below_the_minimum_rate_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .server("client_body_timeout", "500ms")
        .server("client_body_min_rate", "100")
        .start()
        .await;
    let s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // One byte every 100 ms: 10 bytes/s against 100, each gap a fifth of the read timeout.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_string(&mut answer)).await;
    trickle.abort();
    assert_eq!(status_of(&answer), "408", "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut after {:?}",
        started.elapsed()
    );
    assert!(answer.contains("client_body_min_rate"), "{answer}");
    tg.expect_metric(
        "tollgate_requests_refused_total",
        &[("route", "api"), ("reason", "client_timeout")],
        1.0,
    )
    .await;

    // 1,000 bytes in four pieces 200 ms apart: slow, but over the rate.
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(
        b"POST /steady HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&[b'y'; 250]).await.unwrap();
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(app
        .requests()
        .iter()
        .any(|r| r.path == "/steady" && r.body_len == 1000));
}

/// `request_buffering`: a body that fits is read before the upstream is contacted. A stalled
/// one gets 408 and the upstream is never even connected to (without buffering, it is
/// connected and sent the request); complete bodies, slow ones and ones too large to buffer
/// arrive whole.
#[tokio::test]
async fn buffered_bodies_stall_without_reaching_the_upstream() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    // An upstream that counts the connections made to it, reads and never answers.
    let door = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let door_addr = door.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = door.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .upstream(Group::new("door", [door_addr]))
        .route(
            Route::prefix("/stall/buffered/")
                .name("stall-buffered")
                .to("door")
                .set("request_buffering", "16KiB"),
        )
        .route(Route::prefix("/stall/").name("stall-streamed").to("door"))
        .route(
            Route::prefix("/buffered/")
                .name("buffered")
                .to("app")
                .set("request_buffering", "16KiB"),
        )
        .server("client_body_timeout", "300ms")
        .start()
        .await;
    let raw = |path: &'static str, parts: Vec<Vec<u8>>, declared: usize| async move {
        let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // Slow, but each gap well inside client_body_timeout.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.write_all(part).await.unwrap();
        }
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await;
        answer
    };

    // Stalled: 408 on both routes; only the streamed one connected to the upstream.
    let answer = raw("/stall/buffered/a", vec![b"0123456789".to_vec()], 1000).await;
    assert_eq!(status_of(&answer), "408", "{answer}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a buffered stalled body made an upstream connection"
    );
    let answer = raw("/stall/streamed", vec![b"0123456789".to_vec()], 1000).await;
    assert_eq!(status_of(&answer), "408", "{answer}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            connections.load(Ordering::SeqCst) == 1
        })
        .await,
        "without buffering the upstream is connected to"
    );

    // Whole bodies arrive whole: in one piece, in three slow pieces, and too large to buffer.
    let body = vec![b'x'; 12_000];
    let answer = raw("/buffered/b", vec![body.clone()], body.len()).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let parts = body.chunks(4_000).map(<[u8]>::to_vec).collect();
    let answer = raw("/buffered/c", parts, body.len()).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let large = vec![b'y'; 40_000];
    let answer = raw("/buffered/d", vec![large.clone()], large.len()).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let got: Vec<(String, usize)> = app
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.body_len))
        .collect();
    assert_eq!(
        got,
        [
            ("/buffered/b".to_string(), 12_000),
            ("/buffered/c".to_string(), 12_000),
            ("/buffered/d".to_string(), 40_000),
        ]
    );
    tg.expect_metric(
        "tollgate_requests_refused_total",
        &[("route", "stall-buffered"), ("reason", "client_timeout")],
        1.0,
    )
    .await;

    // The buffer is Pingora's retry buffer: 64 KiB at most.
    let (code, _, err) = check_yaml(
        "listen: 127.0.0.1:1\nadmin: { listen: 127.0.0.1:2 }\nupstreams: { app: { endpoints: [\"127.0.0.1:3\"] } }\nroutes:\n  - { name: a, match: { path_prefix: / }, upstream: app, request_buffering: 1MiB }\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[0].request_buffering: must be from 1 byte to 64KiB"),
        "{err}"
    );
}

/// A request header trickled in (one byte every 100 ms) is cut with 408 once
/// `client_header_timeout` has passed since its first byte; a slow but complete header, and a
/// kept-alive connection idle for longer than the timeout between requests, are served.
#[tokio::test]
async fn a_trickled_header_gets_408_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("all").to("app"))
        .server("client_header_timeout", "600ms")
        .start()
        .await;

    // Slowloris: never finishes its header.
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(900), trickle).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
    assert_eq!(status_of(&answer), "408", "{answer}");
    assert!(answer.contains("client_header_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.count(), 0);
    tg.expect_metric(
        "tollgate_client_connections_refused_total",
        &[("reason", "client_header_timeout")],
        1.0,
    )
    .await;

    // Slow but complete inside the deadline: served. Then idle longer than the deadline between
    // two requests on the same connection: the idle time is keep-alive's, not the header's.
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    for part in [&b"GET /slow HTTP/1.1\r\n"[..], b"Host: a\r\n", b"\r\n"] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), "200");
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(app.count(), 2);
}

/// A header that grows past what the request limits could ever accept gets 431 as soon as it
/// does, without waiting for its end (or for `client_header_timeout`): a slow client sending an
/// endless header holds at most that many bytes, not a megabyte.
#[tokio::test]
async fn an_endless_header_gets_431_once_it_passes_the_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("all").to("app"))
        .server("client_header_timeout", "60s")
        .server("max_header_size", "2KiB")
        .server("max_uri_length", "1KiB")
        .server("max_headers", "10")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        .await
        .unwrap();
    // 1 KiB pieces, never a line end: the limits allow 2 + 1 KiB plus 8 KiB of slack.
    let mut answer = Vec::new();
    for _ in 0..64 {
        if s.write_all(&[b'a'; 1024]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), "431", "{answer}");
    assert!(answer.contains("request_headers_too_large"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.count(), 0);
    tg.expect_metric(
        "tollgate_client_connections_refused_total",
        &[("reason", "request_headers_too_large")],
        1.0,
    )
    .await;
    // A request within the limits on a new connection is served.
    tg.get_with("/x", &[("x-fine", &"f".repeat(1500))])
        .await
        .assert_status(200);
}

/// `max_client_connections` and `max_connections_per_ip`: past either, a new connection gets
/// 503 with `Retry-After` at once and is closed; the open ones are still served, and a closed
/// one frees its place.
#[tokio::test]
async fn connection_caps_refuse_new_connections_and_serve_the_open_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start().await;
    for (key, reason) in [
        ("max_client_connections", "max_client_connections"),
        ("max_connections_per_ip", "max_connections_per_ip"),
    ] {
        let tg = Config::new()
            .upstream(Group::new("app", [app.addr()]))
            .route(Route::prefix("/").name("all").to("app"))
            .server(key, 3)
            .start()
            .await;
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(tokio::net::TcpStream::connect(tg.addr).await.unwrap());
        }
        assert!(
            eventually(Duration::from_secs(5), || async {
                tg.metric("tollgate_client_connections", &[]).await == Some(3.0)
            })
            .await,
            "{key}: three connections not counted"
        );
        let mut extra = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), extra.read_to_string(&mut answer)).await;
        assert_eq!(status_of(&answer), "503", "{key}: {answer}");
        assert!(answer.contains("Retry-After: 1"), "{answer}");
        assert!(answer.contains(reason), "{answer}");
        tg.expect_metric(
            "tollgate_client_connections_refused_total",
            &[("reason", reason)],
            1.0,
        )
        .await;
        // The open ones are served.
        let mut first = open.remove(0);
        first
            .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), first.read_to_string(&mut answer)).await;
        assert_eq!(status_of(&answer), "200", "{key}: {answer}");
        // That one closed: a new connection gets its place.
        drop(first);
        assert!(
            eventually(Duration::from_secs(5), || async {
                tg.metric("tollgate_client_connections", &[]).await == Some(2.0)
            })
            .await
        );
        tg.get("/after").await.assert_status(200);
    }
}

/// An origin that answers while `answer` is set (keeping connections alive, so tollgate pools
/// them) and otherwise reads a request, counts it and closes the connection unanswered.
async fn closing_origin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, d) = (answer.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (a, d) = (a.clone(), d.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if !a.load(SeqCst) {
                        d.fetch_add(1, SeqCst);
                        return;
                    }
                    let ok =
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, answer, dropped)
}

/// `retry: { attempts: 1 }` is the true bound: against an origin that closes its pooled
/// keep-alive connections, one GET reaches it once (Pingora would retry every failure on a
/// reused connection, up to its own max_retries).
#[tokio::test]
async fn the_retry_count_bounds_reused_connection_retries_too() {
    use std::sync::atomic::Ordering::SeqCst;
    let (origin, answer, dropped) = closing_origin().await;
    let tg = Config::new()
        .upstream(
            Group::new("app", [origin])
                .retry("{ attempts: 1 }")
                .no_circuit_breaker(),
        )
        .route(Route::prefix("/").name("api").to("app"))
        .start()
        .await;
    // Fill the pool with several kept-alive connections.
    let warm = futures_util::future::join_all((0..8).map(|_| tg.get("/warm"))).await;
    assert!(warm.iter().all(|r| r.status == 200));
    answer.store(false, SeqCst);
    let r = tg.get("/once").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        dropped.load(SeqCst),
        1,
        "the GET was sent more often than attempts: 1 allows"
    );
}

/// SIGTERM with 50 requests of 3 s in flight, `grace_period: 1s`, `shutdown_timeout: 30s`: all
/// 50 complete (the deadline is the sum), and the process exits as soon as they have, not after
/// a fixed wait.
#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_then_exits_at_once() {
    let app = Upstream::start().await;
    app.set_reply(Reply::ok("done").delay(Duration::from_secs(3)));
    let mut tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .server("grace_period", "1s")
        .server("shutdown_timeout", "30s")
        .start()
        .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = tg.url("/slow");
    let requests = futures_util::future::join_all((0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    }));
    let term = async {
        assert!(eventually(Duration::from_secs(10), || async { app.count() == 50 }).await);
        tg.signal(libc::SIGTERM);
        std::time::Instant::now()
    };
    let (answers, sent) = tokio::join!(requests, term);
    let ok = answers.iter().filter(|r| matches!(r, Ok(200))).count();
    assert_eq!(ok, 50, "answers: {answers:?}");
    let status = tg.wait_exit(Duration::from_secs(20)).await;
    let took = sent.elapsed();
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM, not as soon as drained"
    );
}

/// `tollgate run --upgrade` takes the listening sockets over from the running process on its
/// SIGQUIT (Pingora's graceful upgrade): a client opening a new connection for every request
/// all through the swap has none refused or failed, the old process drains and exits, and the
/// new one answers afterwards.
#[tokio::test]
async fn a_binary_swap_with_run_upgrade_fails_no_request() {
    let app = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let mut old = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .server(
            "upgrade_sock",
            common::config::quote(sock.to_str().unwrap()),
        )
        .start()
        .await;
    let url = old.url("/swap");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A new connection for every request: each one is accepted by whichever process holds
    // the listening socket at that moment.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let load = tokio::spawn({
        let (stop, url) = (stop.clone(), url.clone());
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        }
    });
    assert!(eventually(Duration::from_secs(10), || async { app.count() >= 20 }).await);
    let new = old.upgrade(&sock).await;
    // The old process sends its sockets, serves on for Pingora's 5 s, then drains and exits.
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "old exit: {status:?}\n{}",
        old.log()
    );
    let after_exit = app.count();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.count() >= after_exit + 20
        })
        .await,
        "the new process does not answer:\n{}",
        new.log()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 40, "only {ok} requests");
    assert_eq!(new.get("/after").await.status, 200);
}

/// On SIGTERM, a kept-alive connection with nothing in flight is closed at once, and one whose
/// request is in flight gets its answer with `Connection: close` and is then closed (not kept
/// for another request), while the process waits for it.
#[tokio::test]
async fn sigterm_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fast = Upstream::named("fast").await;
    let slow = Upstream::named("slow").await;
    slow.set_reply(Reply::ok("done").delay(Duration::from_secs(2)));
    let mut tg = Config::new()
        .upstream(Group::new("fast", [fast.addr()]))
        .upstream(Group::new("slow", [slow.addr()]))
        .route(Route::prefix("/slow").name("slow").to("slow"))
        .route(Route::prefix("/").name("fast").to("fast"))
        .server("grace_period", "5s")
        .server("shutdown_timeout", "5s")
        .start()
        .await;
    // Reads one answer (headers and a Content-Length body) and returns its head.
    async fn answer(s: &mut tokio::net::TcpStream) -> String {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the answer: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return head.to_string();
                }
            }
        }
    }
    let mut idle = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = answer(&mut idle).await;
    assert!(
        head.to_ascii_lowercase().contains("connection: keep-alive"),
        "{head}"
    );
    let mut busy = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || async { slow.count() == 1 }).await);

    tg.signal(libc::SIGTERM);
    let sent = std::time::Instant::now();
    // The idle one: closed (EOF), well before the slow answer is due.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf))
        .await
        .expect("the idle connection was not closed within 1s of SIGTERM")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    // The busy one: its answer, marked as the last, then EOF.
    let head = answer(&mut busy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let n = tokio::time::timeout(Duration::from_secs(2), busy.read(&mut buf))
        .await
        .expect("the busy connection stayed open after its answer")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let status = tg.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}
