//! A small demo upstream bundled in the binary (`tollgate demo-upstream`), so a newcomer has
//! something to put tollgate in front of and curl. Not used by the proxy itself.
//!
//! Endpoints: `/` (index), `/api/hello`, `/api/echo` (shows the headers tollgate forwarded),
//! `/api/slow?ms=N`, `/api/status/N`, `/api/time` (the time of the answer: shows caching),
//! `/api/items?n=N` (a list of N items: a body worth compressing), `/health`. With a name
//! (`--name`), every answer says which instance served it (`X-Served-By`), so that two of them
//! behind one route show the balancing and the failover.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::time::Duration;

/// The demo app.
#[derive(Default)]
pub struct DemoUpstream {
    /// This instance's name, sent as `X-Served-By` and in `/api/hello` (none: not sent).
    pub name: Option<String>,
}

fn json(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&body).expect("json");
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("response")
}

/// Seconds since the Unix epoch, with milliseconds: two answers of `/api/time` differ.
fn now_text() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut response = self.answer(session).await;
        if let Some(name) = &self.name {
            if let Ok(value) = http::HeaderValue::from_str(name) {
                response.headers_mut().insert("x-served-by", value);
            }
        }
        response
    }
}

impl DemoUpstream {
    async fn answer(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header().clone();
        let mut body_len = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_len += chunk.len();
        }
        let path = req.uri.path();
        let header = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match path {
            "/" => json(
                200,
                serde_json::json!({
                    "service": "tollgate demo upstream",
                    "try": ["/api/hello", "/api/echo", "/api/time", "/api/items?n=100",
                            "/api/slow?ms=300", "/api/status/503"],
                }),
            ),
            "/health" => json(200, serde_json::json!({"status": "ok"})),
            "/api/hello" => json(
                200,
                serde_json::json!({
                    "hello": "world",
                    "served_by": self.name,
                    "request_id": header("x-request-id"),
                }),
            ),
            "/api/time" => json(
                200,
                serde_json::json!({"generated_at": now_text(), "served_by": self.name}),
            ),
            "/api/items" => {
                let n = query_param(req.uri.query(), "n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100u32)
                    .min(10_000);
                let items: Vec<_> = (1..=n)
                    .map(|i| serde_json::json!({"id": i, "name": format!("item {i}"), "in_stock": i % 3 != 0}))
                    .collect();
                json(200, serde_json::json!({"count": n, "items": items}))
            }
            "/api/echo" => {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect();
                json(
                    200,
                    serde_json::json!({
                        "method": req.method.as_str(),
                        "path": req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                        "headers": headers,
                        "body_bytes": body_len,
                    }),
                )
            }
            "/api/slow" => {
                let ms = query_param(req.uri.query(), "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(500u64)
                    .min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json(200, serde_json::json!({"slept_ms": ms}))
            }
            p if p.starts_with("/api/status/") => {
                let code = p["/api/status/".len()..]
                    .parse()
                    .unwrap_or(500u16)
                    .clamp(200, 599);
                json(code, serde_json::json!({"status": code}))
            }
            _ => json(404, serde_json::json!({"error": "not_found", "path": path})),
        }
    }
}
