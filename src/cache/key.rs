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

/// A route's `cache.key` for POST bodies (cached completions), compiled.
#[derive(Debug, Clone)]
pub struct BodyKeyPolicy {
    /// Top-level fields left out of the key.
    pub ignore_fields: Vec<String>,
    /// Largest body keyed.
    pub max_body: usize,
    /// Top-level values a request must have to use the cache (deterministic requests).
    pub store_when: Vec<(String, serde_json::Value)>,
}

/// Why a POST body cannot key the cache (the `Cache-Status` detail of the bypass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKeyMiss {
    /// Not read before the cache (too large, no `Content-Length`, or truncated).
    Unread,
    /// Not a JSON object.
    NotJson,
    /// A `store_when` value differs (e.g. `temperature: 0.7`).
    Nondeterministic,
}

impl BodyKeyMiss {
    /// The `Cache-Status` detail.
    pub fn detail(self) -> &'static str {
        match self {
            BodyKeyMiss::Unread => "body-unread",
            BodyKeyMiss::NotJson => "body-not-json",
            BodyKeyMiss::Nondeterministic => "nondeterministic",
        }
    }
}

impl BodyKeyPolicy {
    /// The SHA-256 of the body's canonical form (object keys sorted at every depth, no
    /// whitespace, ignored fields left out), when the body may key the cache.
    pub fn digest(&self, body: &[u8]) -> Result<[u8; 32], BodyKeyMiss> {
        use sha2::Digest;
        if body.len() > self.max_body {
            return Err(BodyKeyMiss::Unread);
        }
        let Ok(serde_json::Value::Object(mut fields)) =
            serde_json::from_slice::<serde_json::Value>(body)
        else {
            return Err(BodyKeyMiss::NotJson);
        };
        for (name, want) in &self.store_when {
            if !fields.get(name).is_some_and(|v| json_equal(v, want)) {
                return Err(BodyKeyMiss::Nondeterministic);
            }
        }
        for name in &self.ignore_fields {
            fields.remove(name);
        }
        let mut canonical = Vec::with_capacity(body.len());
        write_canonical(&serde_json::Value::Object(fields), &mut canonical);
        Ok(sha2::Sha256::digest(&canonical).into())
    }
}

/// JSON equality with numbers compared by value (`0`, `0.0` and `-0` are equal).
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| x == y)
        }
        _ => a == b,
    }
}

/// `v` in canonical JSON: object keys in byte order at every depth, no whitespace, numbers
/// and strings as serde_json writes them. Whatever order the map keeps its keys in.
fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        serde_json::Value::Number(n) => match n.as_f64() {
            // One spelling per value: `0`, `0.0` and `-0` are all `0`; `1e2` is `100`.
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.extend_from_slice((f as i64).to_string().as_bytes())
            }
            _ => serde_json::to_writer(&mut *out, n).expect("writing to a Vec"),
        },
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec"),
    }
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

    fn body_policy() -> BodyKeyPolicy {
        BodyKeyPolicy {
            ignore_fields: vec!["user".into()],
            max_body: 1024,
            store_when: vec![("temperature".into(), serde_json::json!(0))],
        }
    }

    #[test]
    fn bodies_key_by_canonical_json_without_ignored_fields() {
        let p = body_policy();
        let a = p
            .digest(br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#)
            .unwrap();
        let b = p
            .digest(b"{ \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"temperature\": 0.0, \"model\": \"m\", \"user\": \"u2\" }")
            .unwrap();
        assert_eq!(
            a, b,
            "key order, whitespace, 0 vs 0.0 and the ignored user do not matter"
        );
        let c = p
            .digest(
                br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hello"}]}"#,
            )
            .unwrap();
        assert_ne!(a, c);
        let arrays = p
            .digest(br#"{"model":"m","temperature":0,"messages":[{"content":"hi","role":"user"},{"content":"x","role":"user"}]}"#)
            .unwrap();
        let swapped = p
            .digest(br#"{"model":"m","temperature":0,"messages":[{"content":"x","role":"user"},{"content":"hi","role":"user"}]}"#)
            .unwrap();
        assert_ne!(arrays, swapped, "array order matters");
    }

    #[test]
    fn only_deterministic_small_json_objects_key() {
        let p = body_policy();
        assert_eq!(
            p.digest(br#"{"model":"m","temperature":0.7}"#),
            Err(BodyKeyMiss::Nondeterministic)
        );
        assert_eq!(
            p.digest(br#"{"model":"m"}"#),
            Err(BodyKeyMiss::Nondeterministic)
        );
        assert_eq!(p.digest(b"[1,2]"), Err(BodyKeyMiss::NotJson));
        assert_eq!(p.digest(b"{\"tempera"), Err(BodyKeyMiss::NotJson));
        assert_eq!(p.digest(&[b' '; 2000]), Err(BodyKeyMiss::Unread));
        let any = BodyKeyPolicy {
            store_when: Vec::new(),
            ..body_policy()
        };
        assert!(any.digest(br#"{"model":"m","temperature":0.7}"#).is_ok());
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
