//! Who is calling, found once per request where something needs it: a rate-limited route,
//! a cache with tenant-scoped entries, or a group that balances by tenant. The identity rules
//! live in [`crate::tenant`].

use super::ctx::RequestCtx;
use crate::fleet::keys::KeyStore;
use pingora_proxy::Session;

/// `early_request_filter`: identify the caller when the route needs it. An API key that no
/// tenant owns (and config rejects such keys) is noted for the limit step to refuse. With
/// `identity.key_store: redis`, a key the file does not hold is looked up in `keys` first.
pub async fn identify(session: &Session, ctx: &mut RequestCtx, keys: Option<&KeyStore>) {
    let Some(route) = &ctx.route else {
        return;
    };
    if !(route.limit.is_some()
        || route.tokens.is_some()
        || super::caching::needs_caller(ctx)
        || route.hashes_tenant)
    {
        return;
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let identity = &ctx.config.identity;
    let mut extra = None;
    if let (Some(keys), Some((digest, settings))) =
        (keys, identity.key_to_look_up(session.req_header()))
    {
        if let Some(record) = keys.lookup(&digest, &settings).await {
            extra = identity.tenant_from_record(&record).map(|t| (digest, t));
        }
    }
    match identity.resolve(session.req_header(), peer, extra.as_ref()) {
        Ok(caller) => ctx.caller = Some(caller),
        Err(_) => ctx.unknown_key = true,
    }
}
