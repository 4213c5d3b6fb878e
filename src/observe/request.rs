//! What tollgate records of each request, in one place: the timing headers on every answer
//! (`X-Response-Time`, `Server-Timing`, proxied or tollgate's own), and when the request ends
//! its metrics (`tollgate_http_*`, cache outcome, compression bytes) and its access log line.
//!
//! The proxy hands over what it knows as a [`Finished`] (plain values, no Pingora session and
//! no request context), so this module depends on nothing of the proxy's; the per-request
//! switches come compiled in [`Settings`].

use super::access_log::{AccessLog, Entry};
use super::metrics;
use crate::config::model::ObservabilityConfig;
use pingora_http::ResponseHeader;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The observability switches read per request, compiled from `observability:` (a reload
/// replaces them; the restart-only ones live in [`crate::config::Startup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Count requests and observe their latency (`request_metrics`).
    pub request_metrics: bool,
    /// Add `X-Response-Time`.
    pub response_time_header: bool,
    /// Add `Server-Timing`.
    pub server_timing_header: bool,
    /// Tenants that get their own `tenant` label value (others count as `other`).
    pub tenant_label_allowlist: HashSet<String>,
    /// Write access log lines (when a log was opened at start).
    pub access_log: bool,
    /// Fraction of ordinary requests logged.
    pub sample_rate: f64,
    /// Requests at least this slow are always logged, marked `"slow": true`.
    pub slow_threshold: Duration,
}

impl Settings {
    /// Compile a validated `observability:` section.
    pub fn new(c: &ObservabilityConfig) -> Self {
        Settings {
            request_metrics: c.request_metrics,
            response_time_header: c.response_time_header,
            server_timing_header: c.server_timing_header,
            tenant_label_allowlist: c.tenant_label_allowlist.iter().cloned().collect(),
            access_log: c.access_log.enabled,
            sample_rate: c.access_log.sample_rate,
            slow_threshold: c.access_log.slow_threshold.get(),
        }
    }

    /// The `tenant` label value of a tenant id: itself when allowlisted, else `other`.
    pub fn tenant_label<'a>(&self, tenant: Option<&'a str>) -> &'a str {
        match tenant {
            None => "none",
            Some(t) if self.tenant_label_allowlist.contains(t) => t,
            Some(_) => "other",
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Microsecond precision is plenty in a log line.
fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Add the timing headers `settings` asks for to an answer, measured from `started`;
/// `upstream_ttfb` is the upstream's time to response headers, when one answered.
pub fn add_timing_headers(
    h: &mut ResponseHeader,
    settings: &Settings,
    started: Instant,
    upstream_ttfb: Option<Duration>,
) -> pingora_core::Result<()> {
    if !(settings.response_time_header || settings.server_timing_header) {
        return Ok(());
    }
    let elapsed = started.elapsed();
    if settings.response_time_header {
        let mut value = String::with_capacity(16);
        crate::textfmt::push_millis(&mut value, elapsed);
        value.push_str("ms");
        h.insert_header("x-response-time", value)?;
    }
    if settings.server_timing_header {
        let mut value = String::with_capacity(48);
        if let Some(u) = upstream_ttfb {
            value.push_str("upstream;dur=");
            crate::textfmt::push_millis(&mut value, u);
            value.push_str(", ");
        }
        value.push_str("total;dur=");
        crate::textfmt::push_millis(&mut value, elapsed);
        h.insert_header("server-timing", value)?;
    }
    Ok(())
}

/// A request that has ended, as the proxy saw it: everything its metrics and log line say.
/// Built for every request, so it only borrows: text is made only for a line that is written.
pub struct Finished<'a> {
    /// The observability switches of the config the request ran on.
    pub settings: &'a Settings,
    /// When it started (monotonic, for the duration).
    pub started: Instant,
    /// When it ended (read once by the logging phase for every step that times the request).
    pub ended: Instant,
    /// The start on the wall clock, for the log line.
    pub started_at: SystemTime,
    /// Its request id (moved into the log line).
    pub request_id: String,
    /// The matched route's name (`None`: no route matched).
    pub route: Option<&'a Arc<str>>,
    /// The request method.
    pub method: &'a http::Method,
    /// The request path, without the query string.
    pub path: &'a str,
    /// The status sent (0: no response was sent).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// The caller's tenant id, when identified.
    pub tenant: Option<&'a Arc<str>>,
    /// The caller's tier, when one applied.
    pub tier: Option<&'a Arc<str>>,
    /// What the cache did (`hit`, `miss`, ...), on a caching route.
    pub cache: Option<&'static str>,
    /// The rate-limit decision label (`allowed`, `limited`, `shadow_limited`, `none`).
    pub ratelimit: &'static str,
    /// The endpoint of the last upstream attempt.
    pub upstream: Option<&'a Arc<str>>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The upstream's time to response headers.
    pub upstream_ttfb: Option<Duration>,
    /// Why it failed (Pingora's error), if it did.
    pub error: Option<&'a pingora_core::Error>,
    /// tollgate's own error code, when it answered with one (404, 429, ...).
    pub own_error: Option<&'static str>,
    /// Compression done for it: algorithm, bytes in, bytes out.
    pub compression: Option<(&'static str, usize, usize)>,
}

/// Record an ended request: request and cache metrics, compression bytes, and the access log
/// line (when `log` is open and the settings and sampling want it).
pub fn record(log: Option<&AccessLog>, f: Finished) {
    let settings = f.settings;
    let elapsed = f.ended.saturating_duration_since(f.started);
    let route = f.route.map_or("none", |r| &**r);
    let cache = f.cache.unwrap_or("none");
    if let Some(outcome) = f.cache {
        metrics::CACHE_REQUESTS_TOTAL
            .with_label_values(&[route, outcome])
            .inc();
    }
    if settings.request_metrics {
        let method = metrics::method_label(f.method);
        let class = metrics::status_class(f.status);
        let tier = f.tier.map_or("none", |t| &**t);
        let tenant = settings.tenant_label(f.tenant.map(|t| &**t));
        metrics::http_request_duration()
            .with_label_values(&[route, method, class, tier, cache])
            .observe(elapsed.as_secs_f64());
        metrics::count_request(route, method, class, f.status, tenant);
        if let Some(reason) = f.own_error {
            metrics::REQUESTS_REFUSED_TOTAL
                .with_label_values(&[route, reason])
                .inc();
        }
        if f.bytes > 0 {
            metrics::HTTP_RESPONSE_BODY_BYTES_TOTAL
                .with_label_values(&[route])
                .inc_by(f.bytes as u64);
        }
    }
    if let Some((algorithm, bytes_in, bytes_out)) = f.compression {
        metrics::COMPRESSION_INPUT_BYTES_TOTAL
            .with_label_values(&[algorithm])
            .inc_by(bytes_in as u64);
        metrics::COMPRESSION_OUTPUT_BYTES_TOTAL
            .with_label_values(&[algorithm])
            .inc_by(bytes_out as u64);
    }

    let Some(log) = log else { return };
    if !settings.access_log
        || !AccessLog::wanted(
            f.status,
            elapsed,
            settings.sample_rate,
            settings.slow_threshold,
        )
    {
        return;
    }
    log.log(Entry {
        time: f.started_at,
        request_id: f.request_id,
        tenant: f.tenant.cloned(),
        tier: f.tier.cloned(),
        route: f.route.cloned().unwrap_or_else(|| Arc::from("none")),
        method: f.method.as_str().to_string(),
        path: f.path.to_string(),
        status: f.status,
        bytes: f.bytes,
        duration_ms: round3(millis(elapsed)),
        upstream_ms: f.upstream_ttfb.map(|d| round3(millis(d))),
        upstream: f.upstream.cloned(),
        attempts: f.attempts,
        cache,
        ratelimit: f.ratelimit,
        // tollgate's own code first: a refusal carried by a Pingora error (408, 413, 503) is
        // named as the client saw it.
        error: f
            .own_error
            .map(str::to_owned)
            .or_else(|| f.error.map(|e| format!("{:?}", e.etype()))),
        slow: elapsed >= settings.slow_threshold,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_only_for_allowlisted_tenants() {
        let s = Settings::new(&ObservabilityConfig {
            tenant_label_allowlist: vec!["acme".into()],
            ..Default::default()
        });
        assert_eq!(s.tenant_label(Some("acme")), "acme");
        assert_eq!(s.tenant_label(Some("globex")), "other");
        assert_eq!(s.tenant_label(None), "none");
    }

    #[test]
    fn timing_headers_follow_the_settings() {
        let mut c = ObservabilityConfig {
            server_timing_header: true,
            ..Default::default()
        };
        let s = Settings::new(&c);
        let mut h = ResponseHeader::build(200, None).unwrap();
        let ttfb = Some(Duration::from_millis(2));
        add_timing_headers(&mut h, &s, Instant::now(), ttfb).unwrap();
        assert!(h.headers.get("x-response-time").is_some());
        let st = h.headers.get("server-timing").unwrap().to_str().unwrap();
        assert!(st.starts_with("upstream;dur=2.000, total;dur="), "{st}");

        c.response_time_header = false;
        c.server_timing_header = false;
        let mut h = ResponseHeader::build(200, None).unwrap();
        add_timing_headers(&mut h, &Settings::new(&c), Instant::now(), ttfb).unwrap();
        assert!(h.headers.is_empty());
    }
}
