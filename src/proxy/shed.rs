//! Load shedding: a route's `max_in_flight` caps the requests it has in flight in this process;
//! past it, new ones are answered `503` with `Retry-After: 1` at once, before any upstream or
//! cache work, so a slow upstream cannot pile up unbounded waiting requests (and memory).
//!
//! The counts live in one pingora-limits [`Inflight`] keyed by route name, outside the
//! config, so a reload neither resets them nor lets requests of the old config escape them.

use super::ctx::RequestCtx;
use super::errors::{self, ProxyError};
use crate::observe::metrics;
use once_cell::sync::Lazy;
use pingora_http::ResponseHeader;
use pingora_limits::inflight::{Guard, Inflight};
use pingora_proxy::Session;

static IN_FLIGHT: Lazy<Inflight> = Lazy::new(Inflight::new);

/// A slot held by a request until it ends (dropping it gives the slot back).
pub type Slot = Guard;

/// `request_filter`: take a slot on a capped route, or answer 503. `Ok(true)`: answered.
pub async fn admit(session: &mut Session, ctx: &mut RequestCtx) -> pingora_core::Result<bool> {
    let Some(route) = ctx.route.as_ref() else {
        return Ok(false);
    };
    let Some(max) = route.max_in_flight else {
        return Ok(false);
    };
    let (slot, in_flight) = IN_FLIGHT.incr(&*route.name, 1);
    if in_flight <= isize::try_from(max).unwrap_or(isize::MAX) {
        ctx.in_flight_slot = Some(slot);
        return Ok(false);
    }
    drop(slot);
    metrics::REQUESTS_SHED_TOTAL
        .with_label_values(&[&route.name])
        .inc();
    let err = ProxyError::Overloaded;
    ctx.own_error = Some(err.code());
    let mut h = ResponseHeader::build(err.status(), Some(6))?;
    h.insert_header(http::header::RETRY_AFTER, "1")?;
    let msg = format!(
        "route `{}` has {max} requests in flight, its `max_in_flight`: retry after 1 second",
        route.name
    );
    let body = errors::body(err, &msg, &ctx.request_id);
    errors::respond_with(session, ctx, h, body).await?;
    Ok(true)
}
