//! The admin listener, on its own address: `/healthz`, `/readyz`, `/metrics`,
//! `/ratelimit/state?tenant=ID` (a tenant's live counts), and the token-protected
//! `POST /cache/purge`.
//!
//! It is a separate Pingora service so that probes and scrapes never queue behind proxy
//! traffic and the admin port can stay on loopback or a private interface.

use crate::config::RuntimeConfig;
use crate::observe::metrics;
use crate::ratelimit::Limiter;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The admin HTTP app.
pub struct AdminApp {
    config: Arc<ArcSwap<RuntimeConfig>>,
    limiter: Arc<Limiter>,
}

impl AdminApp {
    /// An admin app reporting on the live config and the limiter's state.
    pub fn new(config: Arc<ArcSwap<RuntimeConfig>>, limiter: Arc<Limiter>) -> Self {
        AdminApp { config, limiter }
    }

    /// `GET /ratelimit/state?tenant=ID`: a tenant's limits and what is left of them now, from
    /// the store the running config uses (Redis for a fleet).
    async fn ratelimit_state(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let tenant = query
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("tenant="))
            .filter(|t| !t.is_empty());
        let Some(tenant) = tenant else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "bad_request", "message": "name the tenant: /ratelimit/state?tenant=ID"}),
            );
        };
        let config = self.config.load_full();
        match crate::explain::live_state(&config, &self.limiter, tenant).await {
            Ok(state) => json(StatusCode::OK, state),
            Err(why) => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "unknown_tenant", "message": why}),
            ),
        }
    }
}

/// A Prometheus text exposition answer (`GET /metrics`).
pub(crate) fn prometheus_text(body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("response")
}

/// A JSON answer of an admin listener (tollgate's, and the injector's).
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).expect("json");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("response")
}

/// Ready when every proxy listener accepts a TCP connection: config loaded *and* listeners bound.
async fn listeners_accepting(listen: &[SocketAddr]) -> Result<(), String> {
    for addr in listen {
        let target = crate::admin_client::reachable(*addr);
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            // Connecting to a port nobody has bound yet can, rarely, pick that very port as its
            // own source port and "succeed" by TCP simultaneous open with itself.
            Ok(Ok(s)) if s.local_addr().ok() == s.peer_addr().ok() => {
                return Err(format!("listener {addr} not bound yet"))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("listener {addr} not accepting: {e}")),
            Err(_) => return Err(format!("listener {addr} not accepting: timed out")),
        }
    }
    Ok(())
}

/// Largest purge request body read.
const MAX_PURGE_BODY: usize = 64 * 1024;

/// Compare secrets without an early exit, so timing does not leak how much of a guess matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    /// `POST /cache/purge`: check the admin token, read the JSON selector, remove entries.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let config = self.config.load_full();
        let Some(token) = config.admin_token.as_deref() else {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "purge_disabled", "message": "admin actions are off: set `admin.token` (e.g. \"${TOLLGATE_ADMIN_TOKEN}\") to enable them"}),
            );
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "message": "send `Authorization: Bearer <admin.token>`"}),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_PURGE_BODY {
                        return json(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            serde_json::json!({"error": "too_large", "message": "purge requests are at most 64 KiB"}),
                        );
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "bad_request", "message": format!("cannot read the body: {e}")}),
                    )
                }
            }
        }
        let selector = serde_json::from_slice::<crate::cache::purge::PurgeRequest>(&body)
            .map_err(|e| {
                format!("the body must be a JSON object such as {{\"prefix\": \"/api/\"}}: {e}")
            })
            .and_then(|r| r.into_selector());
        let selector = match selector {
            Ok(s) => s,
            Err(why) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "bad_purge_request", "message": why}),
                )
            }
        };
        let Some(cache) = crate::cache::get() else {
            return json(
                StatusCode::OK,
                serde_json::json!({"purged": 0, "fleet": "off"}),
            );
        };
        let (purged, fleet) = cache.purge(&crate::cache::purge::PurgeOp::Select(selector.clone()));
        metrics::CACHE_PURGED_ENTRIES_TOTAL
            .with_label_values(&["admin"])
            .inc_by(purged as u64);
        tracing::info!(
            "cache purge {selector:?}: {purged} entries removed here; fleet: {}",
            fleet.label()
        );
        json(
            StatusCode::OK,
            serde_json::json!({"purged": purged, "fleet": fleet.label()}),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        if path == "/cache/purge" {
            if method == http::Method::POST {
                return self.purge(session).await;
            }
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "message": "/cache/purge takes POST"}),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return r;
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "message": "admin endpoints take GET"}),
            );
        }
        match path.as_str() {
            "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/ratelimit/state" => {
                let query = session.req_header().uri.query().map(str::to_string);
                self.ratelimit_state(query.as_deref()).await
            }
            "/readyz" => {
                let config = self.config.load_full();
                match listeners_accepting(&config.startup.listen).await {
                    Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "ready"})),
                    Err(why) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "not_ready", "reason": why}),
                    ),
                }
            }
            "/metrics" => {
                crate::cache::publish_stats();
                prometheus_text(metrics::render())
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": format!("no admin endpoint `{path}` (try /healthz, /readyz, /metrics, /ratelimit/state?tenant=ID, POST /cache/purge)")}),
            ),
        }
    }
}
