//! Observability: the metrics registry and request ids.

pub mod access_log;
pub mod metrics;
pub mod request_id;
