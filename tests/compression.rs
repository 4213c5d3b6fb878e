//! Response compression through the real binary: each algorithm decoded and compared byte for
//! byte, negotiation with q-values, the size threshold at 1023/1024/1025, opt-out, already
//! encoded bodies (passed through, or decompressed for clients that do not accept them),
//! content types, HEAD, 304, Range/206, ETag weakening, event streams on time, and metrics.

#[path = "common_old/mod.rs"]
mod common;

use common::{metric_value, MockUpstream, Reply, Tollgate};
use std::io::Read;

fn config(app: std::net::SocketAddr, compression: &str) -> String {
    format!(
        "upstreams:\n  app:\n    endpoints: [\"{app}\"]\nroutes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: app\n    compression:\n{compression}"
    )
}

const ALL: &str =
    "      gzip: { level: 6 }\n      zstd: { level: 3 }\n      brotli: { level: 5 }\n      min_size: 1024\n";

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

fn reply(body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Reply {
        headers: h,
        body: body.into(),
        ..Reply::default()
    }
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

async fn get(tg: &Tollgate, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = tg.client.get(tg.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn each_algorithm_round_trips_and_sets_the_headers() {
    let app = MockUpstream::start().await;
    let body = json_body(10_000);
    app.set_reply(reply(body.clone(), &[("etag", "\"v1\"")]));
    let tg = Tollgate::start(&config(app.addr(), ALL)).await;
    for enc in ["gzip", "zstd", "br"] {
        let r = get(&tg, "/x", &[("accept-encoding", enc)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], enc);
        assert!(r.headers()["vary"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        assert!(
            r.headers().get("content-length").is_none(),
            "length changed: no stale Content-Length"
        );
        assert_eq!(
            r.headers()["etag"],
            "W/\"v1\"",
            "a strong ETag is weakened when the bytes change"
        );
        let raw = r.bytes().await.unwrap();
        assert!(
            raw.len() < body.len() / 4,
            "{enc}: {} bytes is not compressed",
            raw.len()
        );
        assert_eq!(
            decode(enc, &raw),
            body,
            "{enc} decodes to the upstream body"
        );
    }
    // The upstream is asked as the client asked.
    assert_eq!(app.requests()[0].header("accept-encoding"), "gzip");
    for alg in ["zstd", "br"] {
        let labels = [("algorithm", alg)];
        assert_eq!(
            tg.metric_reaches("tollgate_compression_input_bytes_total", &labels, 10_000.0)
                .await,
            Some(10_000.0),
            "{alg}"
        );
    }
    let labels = [("algorithm", "gzip")];
    assert_eq!(
        tg.metric_reaches("tollgate_compression_input_bytes_total", &labels, 10_000.0)
            .await,
        Some(10_000.0)
    );
    let out = metric_value(
        &tg.metrics().await,
        "tollgate_compression_output_bytes_total",
        &labels,
    )
    .unwrap();
    assert!(out > 0.0 && out < 2_500.0, "gzip output bytes {out}");

    // A body far larger than what tollgate holds back before encoding (64 KiB), read from the
    // upstream in many pieces, still decodes to the same bytes.
    let big = json_body(300_000);
    app.set_reply(reply(big.clone(), &[]));
    for enc in ["gzip", "zstd", "br"] {
        let r = get(&tg, "/big", &[("accept-encoding", enc)]).await;
        assert_eq!(r.headers()["content-encoding"], enc);
        let raw = r.bytes().await.unwrap();
        assert_eq!(decode(enc, &raw), big, "{enc}: 300 kB round trip");
    }
}

#[tokio::test]
async fn negotiation_follows_q_values() {
    let app = MockUpstream::start().await;
    app.set_reply(reply(json_body(5000), &[]));
    let tg = Tollgate::start(&config(app.addr(), ALL)).await;
    let enc = |ae: &'static str| {
        let tg = &tg;
        async move {
            let r = get(tg, "/x", &[("accept-encoding", ae)]).await;
            r.headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string())
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
    let plain = get(&tg, "/x", &[]).await;
    assert_eq!(
        plain.headers().get("content-encoding"),
        None,
        "no Accept-Encoding"
    );
    let vary = plain.headers()["vary"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        vary.contains("accept-encoding"),
        "an uncompressed copy of a compressible response varies too: {vary}"
    );
}

#[tokio::test]
async fn chunked_responses_are_compressed_only_when_the_route_opts_in() {
    let app = MockUpstream::start().await;
    let body = json_body(5000);
    app.set_reply(Reply {
        chunked: true,
        ..reply(body.clone(), &[])
    });
    let gzip = [("accept-encoding", "gzip")];
    // Default: a response of unknown length goes out as it came.
    let tg = Tollgate::start(&config(app.addr(), "      gzip: { level: 6 }\n")).await;
    let r = get(&tg, "/x", &gzip).await;
    assert!(r.headers().get("content-encoding").is_none());
    assert!(
        r.headers().get("content-length").is_none(),
        "chunked upstream"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
    // `chunked: true`: compressed, and it decodes to the same bytes.
    let tg = Tollgate::start(&config(
        app.addr(),
        "      gzip: { level: 6 }\n      chunked: true\n",
    ))
    .await;
    let r = get(&tg, "/x", &gzip).await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &r.bytes().await.unwrap()), body);
    // An event stream stays uncompressed even then.
    let mut sse = reply(body.clone(), &[]);
    sse.chunked = true;
    sse.headers = vec![("content-type".into(), "text/event-stream".into())];
    app.set_reply(sse);
    let r = get(&tg, "/x", &gzip).await;
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test]
async fn size_threshold_opt_out_and_content_types() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&config(
        app.addr(),
        "      gzip: { level: 6 }\n      min_size: 1024\n",
    ))
    .await;
    for (len, compressed) in [(1023, false), (1024, true), (1025, true)] {
        app.set_reply(reply(json_body(len), &[]));
        let r = get(&tg, "/x", &[("accept-encoding", "gzip")]).await;
        assert_eq!(
            r.headers().get("content-encoding").is_some(),
            compressed,
            "{len} bytes"
        );
        let raw = r.bytes().await.unwrap();
        let plain = if compressed {
            decode("gzip", &raw)
        } else {
            raw.to_vec()
        };
        assert_eq!(plain, json_body(len));
    }
    app.set_reply(reply(json_body(5000), &[]));
    let r = get(
        &tg,
        "/x",
        &[("accept-encoding", "gzip"), ("x-no-compression", "1")],
    )
    .await;
    assert!(
        r.headers().get("content-encoding").is_none(),
        "opt-out header"
    );
    assert_eq!(r.bytes().await.unwrap().len(), 5000);

    let png = Reply {
        headers: vec![("content-type".into(), "image/png".into())],
        body: vec![0u8; 5000].into(),
        ..Reply::default()
    };
    app.set_reply(png);
    let r = get(&tg, "/x", &[("accept-encoding", "gzip")]).await;
    assert!(
        r.headers().get("content-encoding").is_none(),
        "image/png is not in the allowlist"
    );
}

#[tokio::test]
async fn encoded_upstream_bodies_pass_or_are_decompressed() {
    let app = MockUpstream::start().await;
    let body = json_body(4000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &body).unwrap();
    let gzipped = gz.finish().unwrap();
    app.set_reply(reply(gzipped.clone(), &[("content-encoding", "gzip")]));
    let tg = Tollgate::start(&config(app.addr(), ALL)).await;

    // A client that takes gzip gets the upstream's bytes untouched (never compressed twice).
    let r = get(&tg, "/x", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap().to_vec(), gzipped);
    // A client that does not gets it decompressed, opt-out header or not ("no compression"
    // is not "no decompression").
    for extra in [None, Some(("x-no-compression", "1"))] {
        let mut h = vec![("accept-encoding", "identity")];
        h.extend(extra);
        let r = get(&tg, "/x", &h).await;
        assert!(r.headers().get("content-encoding").is_none());
        assert_eq!(r.bytes().await.unwrap().to_vec(), body);
    }
}

#[tokio::test]
async fn head_304_and_range_responses_are_left_alone() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&config(app.addr(), ALL)).await;
    app.set_reply(reply(json_body(5000), &[]));
    let r = tg
        .client
        .head(tg.url("/x"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["content-length"], "5000");

    app.set_reply(Reply {
        status: 304,
        headers: vec![("etag".into(), "\"v1\"".into())],
        body: Default::default(),
        ..Reply::default()
    });
    let r = get(
        &tg,
        "/x",
        &[("accept-encoding", "gzip"), ("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(r.status(), 304);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["etag"], "\"v1\"");

    let part = json_body(100);
    app.set_reply(Reply {
        status: 206,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-range".into(), "bytes 0-99/5000".into()),
        ],
        body: part.clone().into(),
        ..Reply::default()
    });
    let r = get(
        &tg,
        "/x",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.bytes().await.unwrap().to_vec(), part);
}

#[tokio::test]
async fn event_streams_are_left_alone_and_arrive_on_time() {
    let app = MockUpstream::start().await;
    let tg = Tollgate::start(&config(app.addr(), ALL)).await;
    let tx = app.sse_sender();
    tx.send("event-0".into()).unwrap();
    let r = get(&tg, "/sse", &[("accept-encoding", "gzip, br")]).await;
    assert!(r.headers().get("content-encoding").is_none());
    common::expect_events_one_by_one(r, &tx, 3).await;
}

#[tokio::test]
async fn tollgates_own_error_answers_are_never_compressed() {
    let dead = common::closed_addr();
    let tg = Tollgate::start(&config(
        dead,
        "      gzip: { level: 6 }\n      min_size: 10\n",
    ))
    .await;
    let r = get(&tg, "/x", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("content-encoding").is_none());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
}

#[test]
fn compression_config_errors_name_the_key() {
    let (code, _, err) = common::check_yaml(
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
    let (code, _, err) = common::check_yaml(
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
    let app = MockUpstream::start().await;
    app.set_reply(reply(json_body(5000), &[]));
    let cfg = format!("upstreams:\n  app:\n    endpoints: [\"{}\"]\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n", app.addr());
    let tg = Tollgate::start(&cfg).await;
    let r = get(&tg, "/x", &[("accept-encoding", "gzip")]).await;
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["content-length"], "5000");
}
