//! Observability: the metrics registry, request ids, the access log, and what is recorded of
//! each request ([`request`]: timing headers, request metrics, the log line).

pub mod access_log;
pub mod metrics;
pub mod request;
pub mod request_id;
