//! Cache keys: what makes two requests share a stored response.
//!
//! The primary key covers the method (HEAD shares GET's entry: Pingora fetches HEAD misses
//! as GET), the host (lower-cased, port dropped, as routing sees it), the path, the query as
//! the route configures it (`keep`, `sort`, `ignore`) and the scope (`shared` or
//! `tenant:<id>`). Components are length-prefixed so no two different requests can frame
//! to the same bytes. `Vary` is honoured through Pingora's secondary (variance) keys.

use super::storage::EntryTag;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, VarianceBuilder};
use std::sync::Arc;

/// Whose entry a cached response is (a route's `cache.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Identified tenants get their own entries; anonymous callers share one.
    Tenant,
    /// One entry per URL for everybody.
    Shared,
}

/// How the query string enters the key (a route's `cache.query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKey {
    /// As the client sent it.
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry.
    Sort,
    /// Dropped: every query string shares the path's entry.
    Ignore,
}

/// The scope of a request's entries: identified tenants get their own on `tenant` routes.
pub fn scope_for(scope: Scope, tenant: Option<&str>) -> Arc<str> {
    match (scope, tenant) {
        (Scope::Tenant, Some(t)) => tenant_scope(t).into(),
        _ => Arc::from(SHARED),
    }
}

/// Scope name of entries shared by every caller.
pub const SHARED: &str = "shared";

/// The scope name of a tenant's entries.
pub fn tenant_scope(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The query as it enters the key.
pub fn normalize_query(query: Option<&str>, mode: QueryKey) -> String {
    let q = query.unwrap_or("");
    match mode {
        QueryKey::Keep => q.to_string(),
        QueryKey::Ignore => String::new(),
        QueryKey::Sort => {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            // Stable: repeated names keep their relative order (`a=1&a=2` differs from `a=2&a=1`).
            params.sort_by_key(|p| p.split('=').next().unwrap_or(""));
            params.join("&")
        }
    }
}

/// Lower-case host without port, as routing compares it ("" when the request names none).
pub fn normalize_host(host: Option<&str>) -> String {
    host.map(crate::route::strip_port)
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Build the key for a request. `method` is the request's (HEAD is keyed as GET).
pub fn build(method: &http::Method, tag: EntryTag) -> CacheKey {
    build_with(method, tag, std::iter::empty())
}

/// [`build`], with the values of a route's `key_headers` (`None`: the header is absent, which
/// is keyed apart from an empty value).
pub fn build_with<'a>(
    method: &http::Method,
    tag: EntryTag,
    extra: impl Iterator<Item = Option<&'a [u8]>>,
) -> CacheKey {
    let method = if *method == http::Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let mut primary = Vec::with_capacity(
        32 + tag.scope.len() + tag.host.len() + tag.path.len() + tag.query.len(),
    );
    for part in [method, &*tag.scope, &*tag.host, &*tag.path, &*tag.query] {
        primary.extend_from_slice(&(part.len() as u32).to_be_bytes());
        primary.extend_from_slice(part.as_bytes());
    }
    for value in extra {
        match value {
            Some(v) => {
                primary.push(1);
                primary.extend_from_slice(&(v.len() as u32).to_be_bytes());
                primary.extend_from_slice(v);
            }
            None => primary.push(0),
        }
    }
    let mut key = CacheKey::new(primary, tag.scope.to_string());
    key.extensions.insert(tag);
    key
}

/// The variant of a stored response this request wants: the values of the request headers
/// the response's `Vary` names. `header` looks a request header up (so the caller can
/// substitute the client's original value of a header tollgate rewrote).
pub fn variance<'a>(
    meta: &CacheMeta,
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for v in meta.headers().get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for name in v.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value = header(&name).unwrap_or(b"").to_vec();
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;

    fn tag(scope: &str, path: &str, query: &str) -> EntryTag {
        EntryTag::new(scope, "api.example", path, query)
    }

    #[test]
    fn key_headers_split_entries_by_value_and_by_absence() {
        let key = |v: Option<&[u8]>| {
            build_with(
                &http::Method::GET,
                tag("shared", "/a", ""),
                std::iter::once(v),
            )
            .combined()
        };
        let (alice, bob) = (key(Some(b"alice")), key(Some(b"bob")));
        assert_ne!(alice, bob);
        assert_eq!(alice, key(Some(b"alice")));
        assert_ne!(key(None), key(Some(b"")), "absent is not empty");
        assert_ne!(
            key(None),
            build(&http::Method::GET, tag("shared", "/a", "")).combined(),
            "a route with key_headers never shares a key with one without"
        );
    }

    #[test]
    fn query_modes() {
        assert_eq!(normalize_query(Some("b=1&a=2"), QueryKey::Keep), "b=1&a=2");
        assert_eq!(normalize_query(Some("b=1&a=2"), QueryKey::Sort), "a=2&b=1");
        assert_eq!(normalize_query(Some("a=2&a=1"), QueryKey::Sort), "a=2&a=1");
        assert_eq!(normalize_query(Some("b=1&a=2"), QueryKey::Ignore), "");
        assert_eq!(normalize_query(None, QueryKey::Sort), "");
    }

    #[test]
    fn keys_differ_by_every_component_and_head_shares_get() {
        let get = |t| build(&http::Method::GET, t).combined();
        let base = get(tag("shared", "/a", "x=1"));
        assert_ne!(base, get(tag("tenant:acme", "/a", "x=1")));
        assert_ne!(base, get(tag("shared", "/b", "x=1")));
        assert_ne!(base, get(tag("shared", "/a", "x=2")));
        // Framing: moving bytes between components changes the key.
        assert_ne!(get(tag("shared", "/a", "")), get(tag("shared", "/", "a")));
        assert_eq!(
            base,
            build(&http::Method::HEAD, tag("shared", "/a", "x=1")).combined()
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(&*scope_for(Scope::Tenant, Some("acme")), "tenant:acme");
        assert_eq!(&*scope_for(Scope::Tenant, None), SHARED);
        assert_eq!(&*scope_for(Scope::Shared, Some("acme")), SHARED);
        assert_eq!(normalize_host(Some("API.Example:8080")), "api.example");
    }
}
