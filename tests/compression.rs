//! Response compression through the real binary: each algorithm decoded and compared byte for
//! byte, negotiation with q-values, the size threshold at 1023/1024/1025, opt-out, already
//! encoded bodies (passed through, or decompressed for clients that do not accept them),
//! content types, HEAD, 304, Range/206, ETag weakening, event streams on time, and metrics.

mod common;

use common::*;
use reqwest::Method;
use std::io::Read;
use std::net::SocketAddr;

/// Group `app` on `app`, one catch-all route `api` compressing with `compression` (YAML text).
fn compressing(app: SocketAddr, compression: &str) -> Config {
    Config::new().upstream(Group::new("app", [app])).route(
        Route::prefix("/")
            .name("api")
            .to("app")
            .compression(compression),
    )
}

/// Every algorithm, from 1 KiB up.
const ALL: &str =
    "{ gzip: { level: 6 }, zstd: { level: 3 }, brotli: { level: 5 }, min_size: 1024 }";

const GZIP: [(&str, &str); 1] = [("accept-encoding", "gzip")];

/// A JSON body of exactly `n` bytes (n >= 20).
fn json_body(n: usize) -> Vec<u8> {
    let mut b = b"{\"items\":\"".to_vec();
    while b.len() < n - 2 {
        b.extend_from_slice(b"tollgate ");
    }
    b.truncate(n - 2);
    b.extend_from_slice(b"\"}");
    assert_eq!(b.len(), n);
    b
}

/// A 200 `application/json` reply with `body`.
fn json(body: Vec<u8>) -> Reply {
    Reply::ok(body).header("content-type", "application/json")
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(data).unwrap(),
        // Strict: a stream without its final meta-block is an error, not a short body.
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("a complete brotli stream");
        }
        other => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test]
async fn each_algorithm_round_trips_and_sets_the_headers() {
    let app = Upstream::start().await;
    let body = json_body(10_000);
    app.set_reply(json(body.clone()).header("etag", "\"v1\""));
    let tg = compressing(app.addr(), ALL).start().await;
    for enc in ["gzip", "zstd", "br"] {
        let r = tg.get_with("/x", &[("accept-encoding", enc)]).await;
        r.assert_status(200).assert_header("content-encoding", enc);
        assert!(r
            .header("vary")
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        assert!(
            !r.has("content-length"),
            "length changed: no stale Content-Length"
        );
        assert_eq!(
            r.header_opt("etag"),
            Some("W/\"v1\""),
            "a strong ETag is weakened when the bytes change"
        );
        assert!(
            r.body.len() < body.len() / 4,
            "{enc}: {} bytes is not compressed",
            r.body.len()
        );
        assert_eq!(
            decode(enc, &r.body),
            body,
            "{enc} decodes to the upstream body"
        );
    }
    // The upstream is asked as the client asked.
    assert_eq!(app.request(0).header("accept-encoding"), "gzip");
    for alg in ["zstd", "br", "gzip"] {
        let labels = [("algorithm", alg)];
        tg.expect_metric("tollgate_compression_input_bytes_total", &labels, 10_000.0)
            .await;
    }
    let out = tg
        .metric(
            "tollgate_compression_output_bytes_total",
            &[("algorithm", "gzip")],
        )
        .await
        .unwrap();
    assert!(out > 0.0 && out < 2_500.0, "gzip output bytes {out}");

    // A body far larger than what tollgate holds back before encoding (64 KiB), read from the
    // upstream in many pieces, still decodes to the same bytes.
    let big = json_body(300_000);
    app.set_reply(json(big.clone()));
    for enc in ["gzip", "zstd", "br"] {
        let r = tg.get_with("/big", &[("accept-encoding", enc)]).await;
        r.assert_header("content-encoding", enc);
        assert_eq!(decode(enc, &r.body), big, "{enc}: 300 kB round trip");
    }
}

#[tokio::test]
async fn negotiation_follows_q_values() {
    let app = Upstream::start().await;
    app.set_reply(json(json_body(5000)));
    let tg = compressing(app.addr(), ALL).start().await;
    let enc = |ae: &'static str| {
        let tg = &tg;
        async move {
            let r = tg.get_with("/x", &[("accept-encoding", ae)]).await;
            r.header_opt("content-encoding").map(str::to_string)
        }
    };
    assert_eq!(enc("gzip;q=0.5, zstd;q=1").await.as_deref(), Some("zstd"));
    assert_eq!(enc("gzip, zstd;q=0").await.as_deref(), Some("gzip"));
    let br_first = enc("br;q=1, zstd;q=0.9, gzip;q=0.5").await;
    assert_eq!(br_first.as_deref(), Some("br"), "highest q");
    assert_eq!(enc("br;q=0, zstd").await.as_deref(), Some("zstd"));
    assert_eq!(
        enc("gzip, zstd").await.as_deref(),
        Some("zstd"),
        "equal q: server order"
    );
    assert_eq!(enc("identity").await, None);
    assert_eq!(enc("gzip;q=0").await, None);
    assert_eq!(
        enc("*").await.as_deref(),
        Some("br"),
        "any coding: server order (br, zstd, gzip)"
    );
    let plain = tg.get("/x").await;
    assert!(!plain.has("content-encoding"), "no Accept-Encoding");
    let vary = plain.header("vary").to_ascii_lowercase();
    assert!(
        vary.contains("accept-encoding"),
        "an uncompressed copy of a compressible response varies too: {vary}"
    );
}

#[tokio::test]
async fn chunked_responses_are_compressed_only_when_the_route_opts_in() {
    let app = Upstream::start().await;
    let body = json_body(5000);
    app.set_reply(json(body.clone()).chunked());
    // Default: a response of unknown length goes out as it came.
    let tg = compressing(app.addr(), "{ gzip: { level: 6 } }")
        .start()
        .await;
    let r = tg.get_with("/x", &GZIP).await;
    r.assert_no_header("content-encoding");
    assert!(!r.has("content-length"), "chunked upstream");
    assert_eq!(r.body, body);
    // `chunked: true`: compressed, and it decodes to the same bytes.
    let tg = compressing(app.addr(), "{ gzip: { level: 6 }, chunked: true }")
        .start()
        .await;
    let r = tg.get_with("/x", &GZIP).await;
    r.assert_header("content-encoding", "gzip");
    assert_eq!(decode("gzip", &r.body), body);
    // An event stream stays uncompressed even then.
    let sse = Reply::ok(body.clone())
        .header("content-type", "text/event-stream")
        .chunked();
    app.set_reply(sse);
    let r = tg.get_with("/x", &GZIP).await;
    r.assert_no_header("content-encoding");
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn size_threshold_opt_out_and_content_types() {
    let app = Upstream::start().await;
    let tg = compressing(app.addr(), "{ gzip: { level: 6 }, min_size: 1024 }")
        .start()
        .await;
    for (len, compressed) in [(1023, false), (1024, true), (1025, true)] {
        app.set_reply(json(json_body(len)));
        let r = tg.get_with("/x", &GZIP).await;
        assert_eq!(r.has("content-encoding"), compressed, "{len} bytes");
        let plain = if compressed {
            decode("gzip", &r.body)
        } else {
            r.body.to_vec()
        };
        assert_eq!(plain, json_body(len));
    }
    app.set_reply(json(json_body(5000)));
    let r = tg
        .get_with(
            "/x",
            &[("accept-encoding", "gzip"), ("x-no-compression", "1")],
        )
        .await;
    assert!(!r.has("content-encoding"), "opt-out header");
    assert_eq!(r.body.len(), 5000);

    app.set_reply(Reply::ok(vec![0u8; 5000]).header("content-type", "image/png"));
    let r = tg.get_with("/x", &GZIP).await;
    assert!(
        !r.has("content-encoding"),
        "image/png is not in the allowlist"
    );
}

#[tokio::test]
async fn encoded_upstream_bodies_pass_or_are_decompressed() {
    let app = Upstream::start().await;
    let body = json_body(4000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &body).unwrap();
    let gzipped = gz.finish().unwrap();
    app.set_reply(json(gzipped.clone()).header("content-encoding", "gzip"));
    let tg = compressing(app.addr(), ALL).start().await;

    // A client that takes gzip gets the upstream's bytes untouched (never compressed twice).
    let r = tg.get_with("/x", &[("accept-encoding", "br, gzip")]).await;
    r.assert_header("content-encoding", "gzip");
    assert_eq!(r.body, gzipped);
    // A client that does not gets it decompressed, opt-out header or not ("no compression"
    // is not "no decompression").
    for extra in [None, Some(("x-no-compression", "1"))] {
        let mut h = vec![("accept-encoding", "identity")];
        h.extend(extra);
        let r = tg.get_with("/x", &h).await;
        r.assert_no_header("content-encoding");
        assert_eq!(r.body, body);
    }
}

#[tokio::test]
async fn head_304_and_range_responses_are_left_alone() {
    let app = Upstream::start().await;
    let tg = compressing(app.addr(), ALL).start().await;
    app.set_reply(json(json_body(5000)));
    let head = tg.req(Method::HEAD, "/x").header("accept-encoding", "gzip");
    tg.send(head)
        .await
        .assert_status(200)
        .assert_no_header("content-encoding")
        .assert_header("content-length", "5000");

    app.set_reply(Reply::ok("").status(304).header("etag", "\"v1\""));
    tg.get_with(
        "/x",
        &[("accept-encoding", "gzip"), ("if-none-match", "\"v1\"")],
    )
    .await
    .assert_status(304)
    .assert_no_header("content-encoding")
    .assert_header("etag", "\"v1\"");

    let part = json_body(100);
    app.set_reply(
        json(part.clone())
            .status(206)
            .header("content-range", "bytes 0-99/5000"),
    );
    let r = tg
        .get_with(
            "/x",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
        )
        .await;
    r.assert_status(206).assert_no_header("content-encoding");
    assert_eq!(r.body, part);
}

#[tokio::test]
async fn event_streams_are_left_alone_and_arrive_on_time() {
    let app = Upstream::start().await;
    let tg = compressing(app.addr(), ALL).start().await;
    let tx = app.sse_sender();
    tx.send("event-0".into()).unwrap();
    let r = tg.get_raw("/sse", &[("accept-encoding", "gzip, br")]).await;
    assert!(r.headers().get("content-encoding").is_none());
    expect_events_one_by_one(r, &tx, 3).await;
}

#[tokio::test]
async fn tollgates_own_error_answers_are_never_compressed() {
    let tg = compressing(closed_addr(), "{ gzip: { level: 6 }, min_size: 10 }")
        .start()
        .await;
    let r = tg.get_with("/x", &GZIP).await;
    r.assert_status(502).assert_no_header("content-encoding");
    assert_eq!(r.json()["error"], "upstream_unreachable");
}

#[test]
fn compression_config_errors_name_the_key() {
    let (code, _, err) = check_yaml(
        "upstreams:\n  app: { endpoints: [\"127.0.0.1:1\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n    compression:\n      brotli: { level: 4 }\n      gzip: { level: 12 }\n",
    );
    assert_eq!(code, 1);
    assert!(
        !err.contains("brotli"),
        "brotli is available (tollgate's own encoder): {err}"
    );
    assert!(
        err.contains(":8: routes[0].compression.gzip.level: gzip levels go from 1 to 9, got 12"),
        "{err}"
    );
    let (code, _, err) = check_yaml(
        "upstreams:\n  app: { endpoints: [\"127.0.0.1:1\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n    compression: { content_types: [\"*/*\", \"text/html; charset=utf-8\", \"+\", \"text/*\"] }\n",
    );
    assert_eq!(code, 1);
    for bad in ["`*/*`", "`text/html; charset=utf-8`", "`+`"] {
        assert!(
            err.contains(&format!("{bad} is not a content type")),
            "{bad}: {err}"
        );
    }
    assert!(!err.contains("`text/*` is not"), "{err}");
}

#[tokio::test]
async fn routes_without_compression_pass_bodies_through() {
    let app = Upstream::start().await;
    app.set_reply(json(json_body(5000)));
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").to("app"))
        .start()
        .await;
    tg.get_with("/x", &GZIP)
        .await
        .assert_no_header("content-encoding")
        .assert_header("content-length", "5000");
}
