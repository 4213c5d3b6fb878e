//! Per-route response compression policy on top of Pingora's `ResponseCompression` module.
//!
//! Pingora's module does the encoding (gzip, brotli, zstd), the `Vary`, `Content-Length` and
//! `ETag` (weakened) rewrites and the decompression for clients that do not accept an upstream's
//! coding; but it ignores `q`-values, takes the client's first coding, and has its own fixed
//! size and type rules. So tollgate decides:
//! - at request time ([`negotiate`]): which coding, honouring `q`, `identity` and `*` among the
//!   route's algorithms; the module is then told to use exactly that one;
//! - at response time ([`should_compress`]): whether this response qualifies (size threshold,
//!   content type allowlist, opt-out header, status, HEAD, Range, `no-transform`, event streams).
//!
//! brotli is encoded by tollgate itself ([`BrotliStream`]): Pingora 0.9.1's brotli encoder
//! flushes but never finishes the stream (no final meta-block), which strict decoders reject.

use crate::config::model::CompressionConfig;
use pingora_core::protocols::http::compression::Algorithm;
use pingora_http::{RequestHeader, ResponseHeader};

/// A route's compression policy, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Enabled algorithms with their levels, in server preference order (br, zstd, gzip).
    pub algorithms: Vec<(Algorithm, u32)>,
    /// Responses with a known length below this stay as they are.
    pub min_size: u64,
    /// Responses without a known length (chunked) are compressed too.
    pub chunked: bool,
    /// Content types compressed: `type/subtype`, `type/*` or a `+suffix` (e.g. `+json`).
    pub content_types: Vec<String>,
    /// Lower-case request header name that turns compression off for a request.
    pub opt_out_header: http::HeaderName,
    /// Decompress upstream-encoded responses for clients that do not accept the coding.
    pub decompress: bool,
}

impl Policy {
    /// Compile from config (validated: levels in range, header name valid).
    pub fn new(c: &CompressionConfig) -> Policy {
        let mut algorithms = Vec::new();
        if let Some(b) = &c.brotli {
            algorithms.push((Algorithm::Brotli, b.level.unwrap_or(4)));
        }
        if let Some(z) = &c.zstd {
            algorithms.push((Algorithm::Zstd, z.level.unwrap_or(3)));
        }
        if let Some(g) = &c.gzip {
            algorithms.push((Algorithm::Gzip, g.level.unwrap_or(6)));
        }
        if algorithms.is_empty() {
            algorithms.push((Algorithm::Gzip, 6));
        }
        Policy {
            algorithms,
            min_size: c.min_size,
            chunked: c.chunked,
            content_types: c
                .content_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            opt_out_header: http::HeaderName::from_bytes(c.opt_out_header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-no-compression")),
            decompress: c.decompress,
        }
    }

    /// Whether `content_type` (a full header value) is in the allowlist.
    pub fn type_allowed(&self, content_type: &str) -> bool {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some((top, sub)) = mime.split_once('/') else {
            return false;
        };
        self.content_types.iter().any(|pat| {
            if let Some(suffix) = pat.strip_prefix('+') {
                sub.ends_with(&format!("+{suffix}"))
            } else if let Some(ptop) = pat.strip_suffix("/*") {
                ptop == top
            } else {
                *pat == mime
            }
        })
    }
}

/// The coding token a client sends for an algorithm.
pub fn token(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Brotli => "br",
        Algorithm::Zstd => "zstd",
        _ => "gzip",
    }
}

/// Parse `Accept-Encoding` into `(coding, q)` pairs (lower-case coding; q in 0..=1).
pub fn parse_accept_encoding(value: &str) -> Vec<(String, f32)> {
    value
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            if coding.is_empty() {
                return None;
            }
            let mut q = 1.0f32;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        // Not a number is 0 (`nan` parses as an f32, and NaN survives `clamp`).
                        q = match v.trim().parse::<f32>() {
                            Ok(q) if !q.is_nan() => q.clamp(0.0, 1.0),
                            _ => 0.0,
                        };
                    }
                }
            }
            Some((coding, q))
        })
        .collect()
}

/// The algorithm to compress with for a request, or `None`: the client sent no
/// `Accept-Encoding`, or accepts none of the route's algorithms (`q=0` excludes; `*` covers
/// codings not listed). Highest `q` wins; ties go to the server's order (br, zstd, gzip).
pub fn negotiate(policy: &Policy, accept_encoding: Option<&str>) -> Option<(Algorithm, u32)> {
    let prefs = parse_accept_encoding(accept_encoding?);
    let star = prefs.iter().find(|(c, _)| c == "*").map(|(_, q)| *q);
    let mut best: Option<((Algorithm, u32), f32)> = None;
    for &(alg, level) in &policy.algorithms {
        let q = prefs
            .iter()
            .find(|(c, _)| c == token(alg) || (alg == Algorithm::Gzip && c == "x-gzip"))
            .map(|(_, q)| *q)
            .or(star)
            .unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some(((alg, level), q));
        }
    }
    best.map(|(a, _)| a)
}

/// The `Accept-Encoding` Pingora's module should see: the chosen coding first (the module takes
/// the first), then the other codings the client accepts, so a response the upstream already
/// encoded in one of them passes through instead of being decompressed.
pub fn module_accept_encoding(chosen: Option<Algorithm>, original: Option<&str>) -> String {
    let mut out: Vec<String> = Vec::new();
    if let Some(a) = chosen {
        out.push(token(a).to_string());
    }
    if let Some(orig) = original {
        for (c, q) in parse_accept_encoding(orig) {
            if q > 0.0 && c != "*" && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out.join(", ")
}

/// Why a response is left as it is, or `None` when it should be compressed.
pub fn should_compress(
    policy: &Policy,
    req: &RequestHeader,
    resp: &ResponseHeader,
) -> Result<(), &'static str> {
    if req.method == http::Method::HEAD {
        return Err("head");
    }
    if req.headers.contains_key(&policy.opt_out_header) {
        return Err("opt_out");
    }
    response_compressible(policy, resp)?;
    if req.headers.contains_key(http::header::RANGE) {
        return Err("range");
    }
    Ok(())
}

/// The response-side half of [`should_compress`]: whether this response could be compressed
/// for some client (status, existing coding, `no-transform`, type, length). Used before a
/// response is stored, where the request that fetched it is not the only one it will serve.
pub fn response_compressible(policy: &Policy, resp: &ResponseHeader) -> Result<(), &'static str> {
    use http::header::{
        CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    };
    let status = resp.status.as_u16();
    if !(200..300).contains(&status) || status == 204 || status == 206 {
        return Err("status");
    }
    if resp.headers.contains_key(CONTENT_RANGE) {
        return Err("range");
    }
    if resp
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err("already_encoded");
    }
    let no_transform = resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("no-transform"))
    });
    if no_transform {
        return Err("no_transform");
    }
    let ct = resp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        return Err("event_stream");
    }
    if !policy.type_allowed(ct) {
        return Err("content_type");
    }
    // Unknown length (chunked, streamed) is left alone unless the route opts in: Pingora's
    // encoders do not flush per chunk, so compressing would hold a streamed body (NDJSON, long
    // polls, LLM tokens) back until its end.
    match resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        None if policy.chunked => Ok(()),
        None => Err("unknown_length"),
        Some(len) if len < policy.min_size => Err("too_small"),
        Some(_) => Ok(()),
    }
}

/// Add `name` to `Vary` unless it (or `*`) is already listed.
pub fn add_vary(resp: &mut ResponseHeader, name: &str) -> pingora_core::Result<()> {
    let listed = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(name) || t.trim() == "*")
        })
    });
    if !listed {
        resp.append_header(http::header::VARY, name.to_string())?;
    }
    Ok(())
}

/// A brotli encoder for one response body, finished properly at the end of the body (the
/// part Pingora 0.9.1's encoder leaves out).
pub struct BrotliStream {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    /// Body bytes taken in.
    pub bytes_in: usize,
    /// Encoded bytes given out.
    pub bytes_out: usize,
}

impl BrotliStream {
    /// An encoder at `level` (0-11), with a 4 MiB window (lgwin 22, brotli's default).
    pub fn new(level: u32) -> Self {
        BrotliStream {
            writer: Some(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level.min(11),
                22,
            )),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Encode one chunk; with `end`, finish the stream. Returns what is ready to send (may be
    /// empty before the end: brotli buffers until it has a block).
    pub fn encode(&mut self, data: &[u8], end: bool) -> std::io::Result<bytes::Bytes> {
        use std::io::Write;
        let Some(w) = self.writer.as_mut() else {
            return Ok(bytes::Bytes::new());
        };
        self.bytes_in += data.len();
        w.write_all(data)?;
        let out = if end {
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(w.get_mut())
        };
        self.bytes_out += out.len();
        Ok(out.into())
    }
}

/// Rewrite a response's headers for a body tollgate encodes itself: the coding, no length (the
/// body is streamed encoded), a weak `ETag` (the bytes differ), no ranges.
pub fn set_encoded_headers(resp: &mut ResponseHeader, coding: &str) -> pingora_core::Result<()> {
    resp.insert_header(http::header::CONTENT_ENCODING, coding)?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.remove_header(&http::header::ACCEPT_RANGES);
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if let Some(etag) = resp.headers.get(http::header::ETAG).cloned() {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            resp.insert_header(http::header::ETAG, weak)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{AlgorithmConfig, CompressionConfig};

    fn policy(br: bool) -> Policy {
        // brotli is refused by validation (Pingora's encoder); the negotiation logic is generic.
        let c = CompressionConfig {
            gzip: Some(AlgorithmConfig { level: Some(6) }),
            brotli: br.then_some(AlgorithmConfig { level: Some(4) }),
            ..CompressionConfig::default()
        };
        Policy::new(&c)
    }

    #[test]
    fn negotiation_honours_q_values_identity_and_star() {
        let p = policy(true);
        let pick = |ae: &str| negotiate(&p, Some(ae)).map(|(a, _)| token(a));
        assert_eq!(pick("gzip"), Some("gzip"));
        assert_eq!(pick("gzip, br"), Some("br"), "tie: server order");
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Some("gzip"));
        assert_eq!(pick("br;q=0, gzip"), Some("gzip"));
        assert_eq!(pick("gzip;q=0"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("*"), Some("br"));
        assert_eq!(pick("*;q=0.1, gzip;q=0.5"), Some("gzip"));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(pick("x-gzip"), Some("gzip"));
        assert_eq!(
            negotiate(&p, None),
            None,
            "no Accept-Encoding: leave responses alone"
        );
        assert_eq!(
            negotiate(&policy(false), Some("br")),
            None,
            "br not enabled on the route"
        );
    }

    #[test]
    fn module_sees_the_chosen_coding_first() {
        assert_eq!(
            module_accept_encoding(Some(Algorithm::Brotli), Some("gzip;q=0.8, br, zstd;q=0")),
            "br, gzip"
        );
        assert_eq!(module_accept_encoding(None, Some("identity")), "identity");
    }

    #[test]
    fn content_type_allowlist() {
        let p = policy(false);
        for ok in [
            "text/html; charset=utf-8",
            "application/json",
            "application/problem+json",
            "image/svg+xml",
            "application/atom+xml",
            "application/javascript",
        ] {
            assert!(p.type_allowed(ok), "{ok}");
        }
        for no in [
            "image/png",
            "application/octet-stream",
            "",
            "application/zip",
        ] {
            assert!(!p.type_allowed(no), "{no}");
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn response_rules() {
        let p = policy(false);
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        let json = |len: &str| {
            resp(
                200,
                &[
                    ("content-type", "application/json"),
                    ("content-length", len),
                ],
            )
        };
        assert_eq!(should_compress(&p, &get, &json("1023")), Err("too_small"));
        assert_eq!(should_compress(&p, &get, &json("1024")), Ok(()));
        assert_eq!(should_compress(&p, &get, &json("1025")), Ok(()));
        let chunked = resp(200, &[("content-type", "application/json")]);
        assert_eq!(should_compress(&p, &get, &chunked), Err("unknown_length"));
        assert_eq!(should_compress(&p, &get, &resp(304, &[])), Err("status"));
        assert_eq!(
            should_compress(&p, &get, &resp(206, &[("content-type", "text/plain")])),
            Err("status")
        );
        let sse = resp(200, &[("content-type", "text/event-stream")]);
        assert_eq!(should_compress(&p, &get, &sse), Err("event_stream"));
        let enc = resp(
            200,
            &[("content-type", "text/plain"), ("content-encoding", "gzip")],
        );
        assert_eq!(should_compress(&p, &get, &enc), Err("already_encoded"));
        let nt = resp(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "public, no-transform"),
            ],
        );
        assert_eq!(should_compress(&p, &get, &nt), Err("no_transform"));
        let head = RequestHeader::build("HEAD", b"/", None).unwrap();
        assert_eq!(should_compress(&p, &head, &json("5000")), Err("head"));
        let mut opt = RequestHeader::build("GET", b"/", None).unwrap();
        opt.insert_header("x-no-compression", "1").unwrap();
        assert_eq!(should_compress(&p, &opt, &json("5000")), Err("opt_out"));
        let mut range = RequestHeader::build("GET", b"/", None).unwrap();
        range.insert_header("range", "bytes=0-10").unwrap();
        assert_eq!(should_compress(&p, &range, &json("5000")), Err("range"));
    }

    #[test]
    fn brotli_stream_is_finished_and_decodes_strictly() {
        use std::io::Read;
        let body: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let mut enc = BrotliStream::new(5);
        let mut out = Vec::new();
        for chunk in body.chunks(7_000) {
            out.extend_from_slice(&enc.encode(chunk, false).unwrap());
        }
        out.extend_from_slice(&enc.encode(&[], true).unwrap());
        assert_eq!((enc.bytes_in, enc.bytes_out), (body.len(), out.len()));
        let mut back = Vec::new();
        brotli::Decompressor::new(&out[..], 4096)
            .read_to_end(&mut back)
            .expect("complete stream");
        assert_eq!(back, body);
        // Without the final block, a strict reader fails: what Pingora 0.9.1's encoder sends.
        let mut cut = Vec::new();
        assert!(brotli::Decompressor::new(&out[..out.len() - 1], 4096)
            .read_to_end(&mut cut)
            .is_err());
    }
}
