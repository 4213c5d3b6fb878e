//! Proxying end to end: the real tollgate binary between a real HTTP client and in-process
//! upstreams over loopback. Routing, keep-alive, headers, errors, streaming, WebSocket, TLS, h2c.

#[path = "common_old/mod.rs"]
mod common;

use common::{closed_addr, metric_value, MockUpstream, Reply, Tollgate};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn one_route(addr: std::net::SocketAddr) -> String {
    format!(
        "upstreams:\n  app:\n    endpoints: [\"{addr}\"]\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n"
    )
}

/// The minimal file from the Foundation issue, as written (only listen/admin moved to free ports).
#[tokio::test]
async fn the_minimal_config_works_as_written() {
    let app = MockUpstream::start().await;
    let body = "upstreams:\n  app:\n    endpoints: [\"${APP_ADDR:-127.0.0.1:3000}\"]\nroutes:\n  - name: api\n    match: { path_prefix: /api/ }\n    upstream: app\n  - name: default\n    match: { path_prefix: / }\n    upstream: app\n";
    let addr = app.addr().to_string();
    let tg = Tollgate::start_with_env(body, &[("APP_ADDR", &addr)]).await;
    let r = tg.get("/api/users?id=7").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from upstream");
    assert_eq!(tg.get("/").await.status(), 200);
    let seen = app.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/api/users?id=7");
    assert_eq!(seen[1].path, "/");
    for route in ["api", "default"] {
        let labels = [("route", route), ("method", "GET"), ("status_class", "2xx")];
        assert_eq!(
            tg.metric_reaches("tollgate_http_requests_total", &labels, 1.0)
                .await,
            Some(1.0)
        );
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_and_answers_404_json_otherwise() {
    let (a, b, c, d) = tokio::join!(
        MockUpstream::named("api"),
        MockUpstream::named("api-v2"),
        MockUpstream::named("wild"),
        MockUpstream::named("exact")
    );
    let cfg = format!(
        "upstreams:\n  a: {{ endpoints: [\"{}\"] }}\n  b: {{ endpoints: [\"{}\"] }}\n  c: {{ endpoints: [\"{}\"] }}\n  d: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api/ }}, upstream: a }}\n  - {{ name: v2, match: {{ path_prefix: /api/v2/ }}, upstream: b }}\n  - {{ name: wild, match: {{ host: \"*.example.com\", path_prefix: /api/ }}, upstream: c }}\n  - {{ name: exact, match: {{ host: admin.example.com, path_prefix: /api/ }}, upstream: d }}\n",
        a.addr(), b.addr(), c.addr(), d.addr()
    );
    let tg = Tollgate::start(&cfg).await;
    let who = |host: &'static str, path: &'static str| {
        let tg = &tg;
        async move {
            let r = tg
                .client
                .get(tg.url(path))
                .header("host", host)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("x-upstream")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
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
        .client
        .get(tg.url("/nothing/here"))
        .header("x-request-id", "rid-404")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["x-request-id"], "rid-404");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "route_not_found");
    assert_eq!(body["status"], 404);
    assert_eq!(body["request_id"], "rid-404");
    let labels = [
        ("route", "none"),
        ("method", "GET"),
        ("status_class", "4xx"),
    ];
    assert_eq!(
        tg.metric_reaches("tollgate_http_requests_total", &labels, 1.0)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_and_endpoints_round_robin() {
    let (a, b) = tokio::join!(MockUpstream::named("a"), MockUpstream::named("b"));
    let cfg = format!(
        "upstreams:\n  app:\n    endpoints: [\"{}\", \"{}\"]\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n",
        a.addr(),
        b.addr()
    );
    let tg = Tollgate::start(&cfg).await;
    for _ in 0..20 {
        let r = tg.get("/x").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
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
    let app = MockUpstream::start().await;
    app.set_reply(Reply {
        headers: vec![
            ("connection".into(), "x-resp-hop".into()),
            ("x-resp-hop".into(), "secret".into()),
            ("keep-alive".into(), "timeout=5".into()),
            ("x-end-to-end".into(), "kept".into()),
        ],
        ..Reply::default()
    });
    let tg = Tollgate::start(&one_route(app.addr())).await;

    // A client id is kept and returned; forwarding headers are set; hop-by-hop fields dropped.
    let r = tg
        .client
        .get(tg.url("/h"))
        .header("host", "shop.example.com")
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    assert_eq!(r.headers()["x-end-to-end"], "kept");
    assert!(
        r.headers().get("x-resp-hop").is_none(),
        "field named by upstream Connection must not reach the client"
    );
    assert!(r.headers().get("keep-alive").is_none());
    let seen = &app.requests()[0];
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
        let mut req = tg.client.get(tg.url("/h"));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let r = req.send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "generated id: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(app.requests().last().unwrap().header("x-request-id"), id);
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502_json_with_request_id() {
    let dead = closed_addr();
    let tg = Tollgate::start(&one_route(dead)).await;
    // The error answer announces that the connection closes after it.
    let raw_502 = raw(tg.addr, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(raw_502.starts_with("HTTP/1.1 502"), "{raw_502}");
    assert!(
        raw_502.to_ascii_lowercase().contains("connection: close"),
        "{raw_502}"
    );
    let r = tg.get("/x").await;
    assert_eq!(r.status(), 502);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["status"], 502);
    assert_eq!(body["request_id"], id.as_str());
}

#[tokio::test]
async fn slow_upstream_is_504_after_the_groups_read_timeout() {
    let app = MockUpstream::start().await;
    app.set_reply(Reply {
        delay: Duration::from_secs(5),
        ..Reply::default()
    });
    let cfg = format!(
        "upstreams:\n  app:\n    endpoints: [\"{}\"]\n    timeouts: {{ connect: 1s, read: 200ms }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n",
        app.addr()
    );
    let tg = Tollgate::start(&cfg).await;
    let started = std::time::Instant::now();
    let r = tg
        .client
        .get(tg.url("/slow"))
        .header("x-request-id", "slow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered by the 200ms read timeout, not the upstream"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(body["request_id"], "slow-1");
}

/// Send raw bytes, return what comes back until the server closes or 5 s pass.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&one_route(app.addr())).await;
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
    assert_eq!(tg.get("/fine").await.status(), 200);
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_as_written() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&one_route(app.addr())).await;
    let tx = app.sse_sender();
    tx.send("event-0".into()).unwrap();
    let r = tg.get("/sse").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    common::expect_events_one_by_one(r, &tx, 5).await;
}

#[tokio::test]
async fn websocket_upgrade_works_end_to_end() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&one_route(app.addr())).await;
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
    assert_eq!(
        app.requests()[0].header("upgrade").to_lowercase(),
        "websocket"
    );
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn one_gib_download_and_upload_stream_in_bounded_memory() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&one_route(app.addr())).await;

    let r = tg.get(&format!("/bytes/{GIB}")).await;
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
    let r = tg
        .client
        .post(tg.url("/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), GIB.to_string());

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
    let app = MockUpstream::start().await;
    let cfg = format!(
        "server:\n  threads: 1\n  h2c: true\n  grace_period: 0s\n  shutdown_timeout: 1s\n{}",
        one_route(app.addr())
    );
    let tg = Tollgate::start(&cfg).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(tg.url("/over-h2"))
        .header("x-request-id", "h2-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "h2-id");
    assert_eq!(r.text().await.unwrap(), "hello from upstream");
    assert_eq!(app.requests()[0].path, "/over-h2");
}

#[tokio::test]
async fn tls_upstream_with_sni_and_verification_switch() {
    let secure = MockUpstream::start_tls("tls").await;
    let cfg = format!(
        "upstreams:\n  insecure:\n    endpoints: [\"{a}\"]\n    tls: {{ sni: localhost, verify: false }}\n  strict:\n    endpoints: [\"{a}\"]\n    tls: {{ sni: localhost }}\nroutes:\n  - {{ match: {{ path_prefix: /insecure/ }}, upstream: insecure }}\n  - {{ match: {{ path_prefix: /strict/ }}, upstream: strict }}\n",
        a = secure.addr()
    );
    let tg = Tollgate::start(&cfg).await;
    let r = tg.get("/insecure/x").await;
    assert_eq!(
        r.status(),
        200,
        "verify: false accepts the self-signed certificate"
    );
    assert_eq!(r.text().await.unwrap(), "hello from upstream");
    assert_eq!(
        secure.last_sni().as_deref(),
        Some("localhost"),
        "SNI sent as configured"
    );
    assert_eq!(secure.count(), 1);
    // verify defaults to true: a self-signed certificate is refused, nothing reaches the app.
    assert_eq!(tg.get("/strict/x").await.status(), 502);
    assert_eq!(secure.count(), 1);
}

#[tokio::test]
async fn admin_endpoints_health_ready_metrics() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&one_route(app.addr())).await;
    let get = |p: &'static str| tg.client.get(tg.admin_url(p)).send();
    let h = get("/healthz").await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/nope").await.unwrap().status(), 404);
    for _ in 0..3 {
        tg.get("/a").await.bytes().await.unwrap();
    }
    tg.client
        .post(tg.url("/b"))
        .body("x")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let get_labels = [("route", "all"), ("method", "GET"), ("status_class", "2xx")];
    assert_eq!(
        tg.metric_reaches("tollgate_http_requests_total", &get_labels, 3.0)
            .await,
        Some(3.0)
    );
    let post_labels = [
        ("route", "all"),
        ("method", "POST"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        tg.metric_reaches("tollgate_http_requests_total", &post_labels, 1.0)
            .await,
        Some(1.0)
    );
    let m = get("/metrics").await.unwrap();
    assert!(m.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = m.text().await.unwrap();
    assert_eq!(
        metric_value(
            &m,
            "tollgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

/// A listener whose accept queue is full drops new SYNs, so connecting to it times out: the
/// loopback way to get an upstream that never completes a connect.
fn blackhole_listener() -> (
    socket2::Socket,
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted); further connection attempts hang in SYN_SENT.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(c) => fillers.push(c),
            Err(_) => break,
        }
    }
    (s, addr, fillers)
}

#[tokio::test]
async fn upstream_that_never_accepts_is_504_after_the_connect_timeout() {
    let (_listener, addr, _fillers) = blackhole_listener();
    let cfg = format!(
        "upstreams:\n  app:\n    endpoints: [\"{addr}\"]\n    timeouts: {{ connect: 200ms }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n"
    );
    let tg = Tollgate::start(&cfg).await;
    let started = std::time::Instant::now();
    let r = tg.get("/x").await;
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
}
