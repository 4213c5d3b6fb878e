//! Proxying end to end: the real tollgate binary between a real HTTP client and in-process
//! upstreams over loopback. Routing, keep-alive, headers, errors, streaming, WebSocket, TLS, h2c.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const REQUESTS: &str = "tollgate_http_requests_total";

/// Group `app` on `addr` behind one catch-all route `all`.
fn one_route(addr: SocketAddr) -> Config {
    Config::new()
        .upstream(Group::new("app", [addr]))
        .route(Route::prefix("/").name("all").to("app"))
}

/// The minimal file from the Foundation issue, as written (only listen/admin moved to free ports).
#[tokio::test]
async fn the_minimal_config_works_as_written() {
    let app = Upstream::start().await;
    let body = "upstreams:\n  app:\n    endpoints: [\"${APP_ADDR:-127.0.0.1:3000}\"]\nroutes:\n  - name: api\n    match: { path_prefix: /api/ }\n    upstream: app\n  - name: default\n    match: { path_prefix: / }\n    upstream: app\n";
    let addr = app.addr().to_string();
    let tg = Tollgate::start_with_env(body, &[("APP_ADDR", &addr)]).await;
    let r = tg.get("/api/users?id=7").await;
    r.assert_status(200);
    assert_eq!(r.text(), "hello from upstream");
    tg.get("/").await.assert_status(200);
    let seen = app.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].uri, "/api/users?id=7");
    assert_eq!(seen[1].uri, "/");
    for route in ["api", "default"] {
        let labels = [("route", route), ("method", "GET"), ("status_class", "2xx")];
        tg.expect_metric(REQUESTS, &labels, 1.0).await;
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_and_answers_404_json_otherwise() {
    let (a, b, c, d) = tokio::join!(
        Upstream::named("api"),
        Upstream::named("api-v2"),
        Upstream::named("wild"),
        Upstream::named("exact")
    );
    let tg = Config::new()
        .upstream(Group::new("a", [a.addr()]))
        .upstream(Group::new("b", [b.addr()]))
        .upstream(Group::new("c", [c.addr()]))
        .upstream(Group::new("d", [d.addr()]))
        .route(Route::prefix("/api/").name("api").to("a"))
        .route(Route::prefix("/api/v2/").name("v2").to("b"))
        .route(
            Route::prefix("/api/")
                .host("*.example.com")
                .name("wild")
                .to("c"),
        )
        .route(
            Route::prefix("/api/")
                .host("admin.example.com")
                .name("exact")
                .to("d"),
        )
        .start()
        .await;
    let who = |host: &'static str, path: &'static str| {
        let tg = &tg;
        async move {
            let r = tg.get_with(path, &[("host", host)]).await;
            (r.status, r.header_opt("x-upstream").map(str::to_string))
        }
    };
    assert_eq!(who("plain.test", "/api/x").await, (200, Some("api".into())));
    assert_eq!(
        who("plain.test", "/api/v2/x").await,
        (200, Some("api-v2".into()))
    );
    assert_eq!(
        who("a.example.com", "/api/x").await,
        (200, Some("wild".into()))
    );
    assert_eq!(
        who("deep.a.example.com:8080", "/api/x").await,
        (200, Some("wild".into()))
    );
    assert_eq!(
        who("ADMIN.example.com", "/api/x").await,
        (200, Some("exact".into()))
    );
    assert_eq!(
        who("example.com", "/api/x").await,
        (200, Some("api".into()))
    );
    // Longer prefix beats a more specific host.
    assert_eq!(
        who("admin.example.com", "/api/v2/x").await,
        (200, Some("api-v2".into()))
    );

    let r = tg
        .get_with("/nothing/here", &[("x-request-id", "rid-404")])
        .await;
    r.assert_status(404)
        .assert_header("content-type", "application/json")
        .assert_header("x-request-id", "rid-404");
    let body = r.json();
    assert_eq!(body["error"], "route_not_found");
    assert_eq!(body["status"], 404);
    assert_eq!(body["request_id"], "rid-404");
    let labels = [
        ("route", "none"),
        ("method", "GET"),
        ("status_class", "4xx"),
    ];
    tg.expect_metric(REQUESTS, &labels, 1.0).await;
}

#[tokio::test]
async fn upstream_connections_are_reused_and_endpoints_round_robin() {
    let (a, b) = tokio::join!(Upstream::named("a"), Upstream::named("b"));
    let tg = Config::new()
        .upstream(Group::new("app", [a.addr(), b.addr()]))
        .route(Route::prefix("/").to("app"))
        .start()
        .await;
    for _ in 0..20 {
        tg.get("/x").await.assert_status(200);
    }
    assert_eq!(
        a.count(),
        10,
        "round robin: half the requests on each endpoint"
    );
    assert_eq!(b.count(), 10);
    for up in [&a, &b] {
        let peers: HashSet<_> = up.requests().iter().map(|r| r.peer).collect();
        assert_eq!(
            peers.len(),
            1,
            "10 sequential requests should share one upstream connection, saw {peers:?}"
        );
    }
}

#[tokio::test]
async fn forwarding_headers_request_ids_and_hop_by_hop() {
    let app = Upstream::start().await;
    app.set_reply(Reply::ok("hello from upstream").headers(&[
        ("connection", "x-resp-hop"),
        ("x-resp-hop", "secret"),
        ("keep-alive", "timeout=5"),
        ("x-end-to-end", "kept"),
    ]));
    let tg = one_route(app.addr()).start().await;

    // A client id is kept and returned; forwarding headers are set; hop-by-hop fields dropped.
    let r = tg
        .get_with(
            "/h",
            &[
                ("host", "shop.example.com"),
                ("x-request-id", "client-id-1"),
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip"),
            ],
        )
        .await;
    r.assert_status(200)
        .assert_header("x-request-id", "client-id-1")
        .assert_header("x-end-to-end", "kept");
    assert!(
        !r.has("x-resp-hop"),
        "field named by upstream Connection must not reach the client"
    );
    r.assert_no_header("keep-alive");
    let seen = app.request(0);
    assert_eq!(seen.header("x-request-id"), "client-id-1");
    assert_eq!(seen.header("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), "shop.example.com");
    assert_eq!(
        seen.header("host"),
        "shop.example.com",
        "Host passes through unchanged"
    );
    for hop in ["x-hop", "proxy-connection", "te", "keep-alive"] {
        assert!(
            seen.headers.get(hop).is_none(),
            "{hop} must not be forwarded"
        );
    }

    // No id (or an unsafe one): a fresh id, the same upstream and back.
    for sent in [None, Some("bad id with spaces")] {
        let headers: Vec<_> = sent.map(|id| ("x-request-id", id)).into_iter().collect();
        let r = tg.get_with("/h", &headers).await;
        let id = r.header("x-request-id");
        assert_eq!(id.len(), 32, "generated id: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(app.requests().last().unwrap().header("x-request-id"), id);
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502_json_with_request_id() {
    let tg = one_route(closed_addr()).start().await;
    // The error answer announces that the connection closes after it.
    let raw_502 = raw(tg.addr, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(raw_502.starts_with("HTTP/1.1 502"), "{raw_502}");
    assert!(
        raw_502.to_ascii_lowercase().contains("connection: close"),
        "{raw_502}"
    );
    let r = tg.get("/x").await;
    r.assert_status(502);
    let body = r.json();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["status"], 502);
    assert!(r.has("x-request-id"));
    assert_eq!(body["request_id"], r.header("x-request-id"));
}

#[tokio::test]
async fn slow_upstream_is_504_after_the_groups_read_timeout() {
    let app = Upstream::start().await;
    app.set_reply(Reply::default().delay(Duration::from_secs(5)));
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]).timeouts("{ connect: 1s, read: 200ms }"))
        .route(Route::prefix("/").to("app"))
        .start()
        .await;
    let started = Instant::now();
    let r = tg.get_with("/slow", &[("x-request-id", "slow-1")]).await;
    r.assert_status(504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered by the 200ms read timeout, not the upstream"
    );
    let body = r.json();
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(body["request_id"], "slow-1");
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;
    let garbage = raw(tg.addr, b"GARBAGE\r\n\r\n").await;
    assert!(
        garbage.starts_with("HTTP/1.1 400"),
        "garbage request: {garbage:?}"
    );
    let bad_header = raw(
        tg.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    )
    .await;
    assert!(
        bad_header.starts_with("HTTP/1.1 400"),
        "invalid header name: {bad_header:?}"
    );
    let dots = raw(
        tg.addr,
        b"GET /api/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400"), "dot segments: {dots:?}");
    assert!(dots.contains("\"error\":\"bad_request\""), "{dots}");
    assert_eq!(app.count(), 0, "nothing malformed reached the upstream");
    // A complete request shorter than the 24-byte HTTP/2 preface is answered, not left waiting.
    let short = raw(tg.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        short.starts_with("HTTP/1.1 200") || short.starts_with("HTTP/1.0 200"),
        "short request: {short:?}"
    );
    tg.get("/fine").await.assert_status(200);
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_as_written() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;
    let tx = app.sse_sender();
    tx.send("event-0".into()).unwrap();
    let r = tg.get_raw("/sse", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    expect_events_one_by_one(r, &tx, 5).await;
}

#[tokio::test]
async fn websocket_upgrade_works_end_to_end() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", tg.addr))
        .await
        .expect("ws handshake through tollgate");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "second message"] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap(), format!("echo: {text}"));
    }
    ws.close(None).await.unwrap();
    assert_eq!(app.request(0).header("upgrade").to_lowercase(), "websocket");
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn one_gib_download_and_upload_stream_in_bounded_memory() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;

    let r = tg.get_raw(&format!("/bytes/{GIB}"), &[]).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len() as u64;
    }
    assert_eq!(got, GIB);

    const CHUNK: usize = 256 * 1024;
    let chunk = bytes::Bytes::from(vec![b'u'; CHUNK]);
    let body = futures_util::stream::iter(
        (0..GIB / CHUNK as u64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let upload = tg
        .req(reqwest::Method::POST, "/upload")
        .body(reqwest::Body::wrap_stream(body));
    let r = tg.send(upload).await;
    r.assert_status(200);
    assert_eq!(r.text(), GIB.to_string());

    let peak = tg.peak_rss_bytes();
    println!(
        "tollgate peak RSS after 1 GiB down + 1 GiB up: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 128 << 20,
        "peak RSS {} MiB: bodies must stream, not buffer",
        peak >> 20
    );
}

#[tokio::test]
async fn http2_cleartext_clients_are_served_when_h2c_is_on() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).server("h2c", true).start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let req = h2.get(tg.url("/over-h2")).header("x-request-id", "h2-id");
    let r = tg.send(req).await;
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    r.assert_status(200).assert_header("x-request-id", "h2-id");
    assert_eq!(r.text(), "hello from upstream");
    assert_eq!(app.request(0).uri, "/over-h2");
}

#[tokio::test]
async fn tls_upstream_with_sni_and_verification_switch() {
    let secure = Upstream::start_tls("tls").await;
    let tg = Config::new()
        .upstream(Group::new("insecure", [secure.addr()]).tls("{ sni: localhost, verify: false }"))
        .upstream(Group::new("strict", [secure.addr()]).tls("{ sni: localhost }"))
        .route(Route::prefix("/insecure/").to("insecure"))
        .route(Route::prefix("/strict/").to("strict"))
        .start()
        .await;
    let r = tg.get("/insecure/x").await;
    assert_eq!(
        r.status, 200,
        "verify: false accepts the self-signed certificate"
    );
    assert_eq!(r.text(), "hello from upstream");
    assert_eq!(
        secure.last_sni().as_deref(),
        Some("localhost"),
        "SNI sent as configured"
    );
    assert_eq!(secure.count(), 1);
    // verify defaults to true: a self-signed certificate is refused, nothing reaches the app.
    tg.get("/strict/x").await.assert_status(502);
    assert_eq!(secure.count(), 1);
}

/// With `SSL_CERT_FILE` unset, tollgate trusts the hashed CA directories (`SSL_CERT_DIR`'s, then
/// the system's), looked up as a handshake needs it (src/trust_store.rs): a CA there under its
/// subject hash verifies the upstream; the same CA under another name does not.
#[tokio::test]
async fn tls_trust_comes_from_the_hashed_directory_when_no_file_is_named() {
    let secure = Upstream::start_tls("tls").await;
    let cert = secure.tls_certificate();
    let pem = cert.to_pem().unwrap();
    let hashed = tempfile::tempdir().unwrap();
    let name = format!("{:08x}.0", cert.subject_name_hash());
    std::fs::write(hashed.path().join(&name), &pem).unwrap();
    let unhashed = tempfile::tempdir().unwrap();
    std::fs::write(unhashed.path().join("upstream.pem"), &pem).unwrap();
    let config = |dir: &std::path::Path| {
        Config::new()
            .upstream(Group::new("strict", [secure.addr()]).tls("{ sni: localhost }"))
            .route(Route::prefix("/").to("strict"))
            .env("SSL_CERT_FILE", "")
            .env("SSL_CERT_DIR", dir.to_str().unwrap())
    };

    let tg = config(hashed.path()).start().await;
    let r = tg.get("/x").await;
    assert_eq!(
        r.status,
        200,
        "the CA under its hash name is trusted: {}",
        tg.log()
    );
    assert!(
        tg.log().contains(&format!(
            "TLS trust: CA certificates looked up in {}",
            hashed.path().display()
        )),
        "{}",
        tg.log()
    );
    drop(tg);

    // Under another name: not found, whatever else the directories hold.
    let tg = config(unhashed.path()).start().await;
    tg.get("/x").await.assert_status(502);
    assert_eq!(secure.count(), 1);
}

#[tokio::test]
async fn admin_endpoints_health_ready_metrics() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;
    let h = tg.admin_get("/healthz").await;
    h.assert_status(200);
    assert_eq!(h.json()["status"], "ok");
    tg.admin_get("/readyz").await.assert_status(200);
    tg.admin_get("/nope").await.assert_status(404);
    for _ in 0..3 {
        tg.get("/a").await;
    }
    tg.post("/b", "x").await;
    let get_labels = [("route", "all"), ("method", "GET"), ("status_class", "2xx")];
    tg.expect_metric(REQUESTS, &get_labels, 3.0).await;
    let post_labels = [
        ("route", "all"),
        ("method", "POST"),
        ("status_class", "2xx"),
    ];
    tg.expect_metric(REQUESTS, &post_labels, 1.0).await;
    let m = tg.admin_get("/metrics").await;
    assert!(m.header("content-type").starts_with("text/plain"));
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        metric_value(m.text(), "tollgate_build_info", &version),
        Some(1.0)
    );
}

/// `tollgate probe` (the container HEALTHCHECK): 0 on a 200, 1 with the reason otherwise,
/// within its timeout when the listener never answers.
#[tokio::test]
async fn probe_command_passes_only_on_200_and_keeps_its_timeout() {
    let app = Upstream::start().await;
    let tg = one_route(app.addr()).start().await;
    let admin = tg.admin.to_string();
    let (code, out, err) = run_cli(["probe", "--admin", &admin], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/readyz: 200"), "{out}");
    let (code, _, err) = run_cli(["probe", "--admin", &admin, "--path", "/nope"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("/nope: 404"), "{err}");
    let closed = closed_addr().to_string();
    let (code, _, err) = run_cli(["probe", "--admin", &closed], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin listener"), "{err}");
    // Connected (the kernel's backlog accepts), never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let (code, _, err) = run_cli(
        ["probe", "--admin", &silent_addr, "--timeout", "300ms"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no answer from"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn upstream_that_never_accepts_is_504_after_the_connect_timeout() {
    let hole = Blackhole::new();
    let tg = Config::new()
        .upstream(Group::new("app", [hole.addr]).timeouts("{ connect: 200ms }"))
        .route(Route::prefix("/").to("app"))
        .start()
        .await;
    let started = Instant::now();
    let r = tg.get("/x").await;
    r.assert_status(504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.json()["error"], "upstream_timeout");
}
