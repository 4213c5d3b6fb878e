//! Who is calling, found once per request where something needs it: a rate-limited route,
//! a cache with tenant-scoped entries, or a group that balances by tenant. The identity rules
//! live in [`crate::tenant`].

use super::ctx::RequestCtx;
use pingora_proxy::Session;

/// `early_request_filter`: identify the caller when the route needs it. An API key that no
/// tenant owns (and config rejects such keys) is noted for the limit step to refuse.
pub fn identify(session: &Session, ctx: &mut RequestCtx) {
    let Some(route) = &ctx.route else {
        return;
    };
    if !(route.limit.is_some() || super::caching::needs_caller(ctx) || route.hashes_tenant) {
        return;
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    match ctx.config.identity.resolve(session.req_header(), peer) {
        Ok(caller) => ctx.caller = Some(caller),
        Err(_) => ctx.unknown_key = true,
    }
}
