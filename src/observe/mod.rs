//! Observability: the metrics registry and request ids.

pub mod metrics;
pub mod request_id;
