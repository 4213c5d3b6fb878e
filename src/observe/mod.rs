//! Observability: the metrics registry, request ids, timing headers and the access log.

pub mod access_log;
pub mod metrics;
pub mod request_id;
pub mod timing;
