//! Invalidation: admin purges (`POST /cache/purge`) and the removal of a path's entries after a
//! non-error response to an unsafe (or unknown) method through the proxy (RFC 9111 §4.4).
//!
//! Admin purge body (JSON), one selector at least:
//! - `{"url": "/api/models?id=1"}`: that path with that query (as sent, or sorted); a `url`
//!   without a query removes every query of the path. Full URLs (`http://host/path`) work too
//!   and set `host`.
//! - `{"prefix": "/api/models"}`: every path starting with it.
//! - `{"tenant": "acme"}`: every entry of that tenant; with `url` or `prefix`, narrows them to it.
//! - `{"shared": true}`: only entries shared by all callers (not a tenant's).
//! - `{"host": "api.example"}`: narrows to one host.
//! - `{"all": true}`: everything.

use super::key::{normalize_query, tenant_scope, QueryKey, SHARED};
use super::storage::{EntryTag, MemoryStorage};
use super::RoutePolicy;
use serde::{Deserialize, Serialize};

/// A parsed admin purge request.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Exact path (and query, if given), or a full URL.
    pub url: Option<String>,
    /// Path prefix.
    pub prefix: Option<String>,
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only the shared entries.
    #[serde(default)]
    pub shared: bool,
    /// Only this host's entries.
    pub host: Option<String>,
    /// Everything.
    #[serde(default)]
    pub all: bool,
}

/// A purge request checked and normalized into a filter over entry tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    path: Option<String>,
    query: Option<String>,
    prefix: Option<String>,
    scope: Option<String>,
    host: Option<String>,
}

impl PurgeRequest {
    /// Check the request: a clear message for what is wrong.
    pub fn into_selector(self) -> Result<Selector, String> {
        if self.url.is_none() && self.prefix.is_none() && self.tenant.is_none() && !self.shared {
            if self.all {
                return Ok(Selector {
                    path: None,
                    query: None,
                    prefix: None,
                    scope: None,
                    host: self
                        .host
                        .as_deref()
                        .map(|h| super::key::normalize_host(Some(h))),
                });
            }
            return Err(
                "name what to purge: `url`, `prefix`, `tenant` or `shared` (or `all: true`)".into(),
            );
        }
        if self.url.is_some() && self.prefix.is_some() {
            return Err("give `url` or `prefix`, not both".into());
        }
        if self.tenant.is_some() && self.shared {
            return Err("give `tenant` or `shared: true`, not both".into());
        }
        let mut host = self
            .host
            .as_deref()
            .map(|h| super::key::normalize_host(Some(h)));
        let (mut path, mut query) = (None, None);
        if let Some(url) = self.url {
            let rest = match url.split_once("://") {
                Some((_, after)) => {
                    let (authority, p) = match after.find('/') {
                        Some(i) => after.split_at(i),
                        None => (after, "/"),
                    };
                    host = Some(super::key::normalize_host(Some(authority)));
                    p.to_string()
                }
                None => url,
            };
            if !rest.starts_with('/') {
                return Err(format!(
                    "`url` must be a path starting with `/` or a full URL, got `{rest}`"
                ));
            }
            match rest.split_once('?') {
                Some((p, q)) => {
                    path = Some(p.to_string());
                    query = Some(q.to_string());
                }
                None => path = Some(rest),
            }
        }
        if let Some(p) = &self.prefix {
            if !p.starts_with('/') {
                return Err(format!("`prefix` must start with `/`, got `{p}`"));
            }
        }
        let scope = match (self.tenant, self.shared) {
            (Some(t), _) => Some(tenant_scope(&t)),
            (None, true) => Some(SHARED.to_string()),
            _ => None,
        };
        Ok(Selector {
            path,
            query,
            prefix: self.prefix,
            scope,
            host,
        })
    }
}

impl Selector {
    /// Whether an entry is selected.
    pub fn matches(&self, tag: &EntryTag) -> bool {
        if self.scope.as_deref().is_some_and(|s| s != &*tag.scope)
            || self.host.as_deref().is_some_and(|h| h != &*tag.host)
        {
            return false;
        }
        if let Some(p) = &self.path {
            if p != &*tag.path {
                return false;
            }
            if let Some(q) = &self.query {
                let sorted = normalize_query(Some(q), QueryKey::Sort);
                if **q != *tag.query && sorted != *tag.query {
                    return false;
                }
            }
        }
        if let Some(prefix) = &self.prefix {
            if !tag.path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        true
    }

    /// Remove the selected entries; returns how many.
    pub fn apply(&self, storage: &MemoryStorage) -> usize {
        storage.purge_where(|tag| self.matches(tag))
    }
}

/// Methods RFC 9110 (§9.2.1) and the IANA method registry define as safe. Any other method,
/// `POST` and `DELETE` as much as one nobody registered, may change the resource.
const SAFE_METHODS: &[&str] = &[
    "GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH", "QUERY",
];

/// Whether a response to `method` removes the request URI's stored entries (RFC 9111 §4.4): a
/// non-error status (2xx or 3xx) to a method that is not known to be safe, including methods
/// whose safety is unknown. Method names are case-sensitive (`get` is not `GET`).
pub fn invalidates(method: &http::Method, status: http::StatusCode) -> bool {
    (status.is_success() || status.is_redirection()) && !SAFE_METHODS.contains(&method.as_str())
}

/// One invalidation, as it is applied here and sent to the other replicas of a fleet (see
/// [`super::bus`]): an admin purge's selector, or what a successful mutation removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeOp {
    /// An admin purge.
    Select(Selector),
    /// After a successful mutation of `path`: the path's entries (every query, every variant)
    /// and those under the route's related prefixes, in these scopes, on this host.
    Mutation {
        /// The caller's scope and the shared one.
        scopes: Vec<String>,
        /// Host as keyed.
        host: String,
        /// The mutated path.
        path: String,
        /// The route's `invalidate_prefixes`.
        prefixes: Vec<String>,
    },
}

impl PurgeOp {
    /// What a successful mutation of `path` by a caller in `scope` removes on a route with
    /// `policy`: the path's entries (and the route's related prefixes) in the caller's scope
    /// and the shared scope.
    pub fn mutation(policy: &RoutePolicy, scope: &str, host: &str, path: &str) -> PurgeOp {
        let mut scopes = vec![SHARED.to_string()];
        if scope != SHARED {
            scopes.push(scope.to_string());
        }
        PurgeOp::Mutation {
            scopes,
            host: host.to_string(),
            path: path.to_string(),
            prefixes: policy
                .invalidate_prefixes
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }

    /// Everything (a purge whose content cannot be read is taken as this).
    pub fn everything() -> PurgeOp {
        PurgeOp::Select(Selector {
            path: None,
            query: None,
            prefix: None,
            scope: None,
            host: None,
        })
    }

    /// When this purge removes whole scopes: `Some(Some(scope))` for every entry of one
    /// scope (a tenant's, or the shared ones), `Some(None)` for everything; `None` when it
    /// names paths or hosts.
    pub fn whole_scope(&self) -> Option<Option<&str>> {
        match self {
            PurgeOp::Select(Selector {
                path: None,
                query: None,
                prefix: None,
                host: None,
                scope,
            }) => Some(scope.as_deref()),
            _ => None,
        }
    }

    /// For an admin purge, the one scope it is limited to (`Some(None)`: every scope); `None`
    /// for a mutation's invalidation.
    pub fn admin_scope(&self) -> Option<Option<&str>> {
        match self {
            PurgeOp::Select(s) => Some(s.scope.as_deref()),
            PurgeOp::Mutation { .. } => None,
        }
    }

    /// Whether an entry with this tag is removed.
    pub fn matches(&self, tag: &EntryTag) -> bool {
        match self {
            PurgeOp::Select(s) => s.matches(tag),
            PurgeOp::Mutation {
                scopes,
                host,
                path,
                prefixes,
            } => {
                scopes.iter().any(|s| **s == *tag.scope)
                    && **host == *tag.host
                    && (**path == *tag.path
                        || prefixes.iter().any(|p| tag.path.starts_with(p.as_str())))
            }
        }
    }

    /// Remove the entries it names from `storage`; returns how many. Mutations use the
    /// store's index (range scans); admin selectors scan.
    pub fn apply(&self, storage: &MemoryStorage) -> usize {
        match self {
            PurgeOp::Select(s) => s.apply(storage),
            PurgeOp::Mutation {
                scopes,
                host,
                path,
                prefixes,
            } => {
                let mut n = 0;
                for s in scopes {
                    n += storage.purge_path(s, host, path);
                    for prefix in prefixes {
                        n += storage.purge_prefix(s, host, prefix);
                    }
                }
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(scope: &str, path: &str, query: &str) -> EntryTag {
        EntryTag::new(scope, "api.example", path, query)
    }

    fn sel(json: &str) -> Result<Selector, String> {
        serde_json::from_str::<PurgeRequest>(json)
            .map_err(|e| e.to_string())?
            .into_selector()
    }

    #[test]
    fn selectors() {
        let s = sel(r#"{"url": "/a?y=2&x=1"}"#).unwrap();
        assert!(s.matches(&tag("shared", "/a", "y=2&x=1")));
        assert!(s.matches(&tag("tenant:t", "/a", "x=1&y=2")), "sorted query");
        assert!(!s.matches(&tag("shared", "/a", "x=1")));
        let s = sel(r#"{"url": "/a"}"#).unwrap();
        assert!(
            s.matches(&tag("shared", "/a", "x=1")),
            "no query: all queries"
        );
        assert!(!s.matches(&tag("shared", "/ab", "")));
        let s = sel(r#"{"url": "http://API.example:8080/a"}"#).unwrap();
        assert!(s.matches(&tag("shared", "/a", "")));
        let s = sel(r#"{"prefix": "/api/", "tenant": "acme"}"#).unwrap();
        assert!(s.matches(&tag("tenant:acme", "/api/x", "")));
        assert!(!s.matches(&tag("tenant:other", "/api/x", "")));
        assert!(!s.matches(&tag("shared", "/api/x", "")));
        let s = sel(r#"{"shared": true}"#).unwrap();
        assert!(s.matches(&tag("shared", "/x", "")));
        assert!(!s.matches(&tag("tenant:a", "/x", "")));
        assert!(sel(r#"{"all": true}"#)
            .unwrap()
            .matches(&tag("tenant:a", "/", "")));
    }

    #[test]
    fn unsafe_and_unknown_methods_invalidate_on_non_error_statuses() {
        let m = |s: &str| http::Method::from_bytes(s.as_bytes()).unwrap();
        let st = |c: u16| http::StatusCode::from_u16(c).unwrap();
        for method in ["POST", "PUT", "PATCH", "DELETE", "FOO", "LINK", "get"] {
            assert!(invalidates(&m(method), st(200)), "{method} 200");
            assert!(invalidates(&m(method), st(303)), "{method} 303");
            assert!(!invalidates(&m(method), st(404)), "{method} 404");
            assert!(!invalidates(&m(method), st(500)), "{method} 500");
        }
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "QUERY"] {
            assert!(!invalidates(&m(method), st(200)), "{method} is safe");
        }
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(sel("{}").unwrap_err().contains("name what to purge"));
        assert!(sel(r#"{"url": "/a", "prefix": "/b"}"#)
            .unwrap_err()
            .contains("not both"));
        assert!(sel(r#"{"prefix": "api"}"#)
            .unwrap_err()
            .contains("start with"));
        assert!(sel(r#"{"urll": "/a"}"#)
            .unwrap_err()
            .contains("unknown field"));
    }
}
