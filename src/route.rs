//! Route matching: which route serves a request, by host and longest path prefix.
//!
//! The rule (documented in docs/routing.md, "Route matching"):
//! 1. A route is a candidate when its `host` matches (absent = any host; `*.example.com` matches
//!    any subdomain of example.com at any depth, not example.com itself; case-insensitive, the
//!    port of the Host header ignored) and the request path starts with its `path_prefix`
//!    (a plain string prefix: `/api` also matches `/apix`, write `/api/` to mean the directory).
//! 2. Among candidates the longest `path_prefix` wins; on equal length an exact host beats a
//!    wildcard host, a wildcard beats no host; then the earlier route in the file wins.
//!
//! Routes are sorted once at compile time so the first match in order is the winner.

use std::cmp::Reverse;

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case).
    Exact(String),
    /// Any subdomain: holds the suffix with its leading dot, like `.example.com`.
    Wildcard(String),
}

impl HostMatch {
    /// Parse a config `host:` value.
    pub fn parse(host: Option<&str>) -> HostMatch {
        match host.map(str::to_ascii_lowercase) {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                None => HostMatch::Exact(h),
            },
        }
    }

    fn specificity(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 2,
            HostMatch::Wildcard(_) => 1,
            HostMatch::Any => 0,
        }
    }

    /// Whether `host` (already without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
            HostMatch::Wildcard(suffix) => host.is_some_and(|x| {
                x.len() > suffix.len()
                    && x.is_char_boundary(x.len() - suffix.len())
                    && x[x.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }),
        }
    }
}

/// A route table over any route type `R`: matching rules only, no knowledge of what a route does.
#[derive(Debug)]
pub struct RouteTable<R> {
    entries: Vec<(HostMatch, String, R)>,
}

impl<R> RouteTable<R> {
    /// Build from `(host, path_prefix, route)` in file order.
    pub fn new(routes: Vec<(HostMatch, String, R)>) -> Self {
        let mut entries: Vec<(usize, (HostMatch, String, R))> =
            routes.into_iter().enumerate().collect();
        entries.sort_by_key(|(i, (h, p, _))| (Reverse(p.len()), Reverse(h.specificity()), *i));
        RouteTable {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// The route for a request: `host` is the Host header or authority (port allowed).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&R> {
        let host = host.map(strip_port);
        self.entries
            .iter()
            .find(|(h, p, _)| path.starts_with(p.as_str()) && h.matches(host))
            .map(|(_, _, r)| r)
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Routes in match order.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.entries.iter().map(|(_, _, r)| r)
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        RouteTable::new(vec![
            (HostMatch::Any, "/".into(), "default"),
            (HostMatch::Any, "/api/".into(), "api"),
            (
                HostMatch::parse(Some("*.example.com")),
                "/api/".into(),
                "wild-api",
            ),
            (
                HostMatch::parse(Some("Admin.Example.com")),
                "/api/".into(),
                "admin-api",
            ),
            (HostMatch::Any, "/api/v2/".into(), "api-v2"),
        ])
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.find(None, "/api/v2/x"), Some(&"api-v2"));
        assert_eq!(t.find(None, "/api/v1"), Some(&"api"));
        assert_eq!(t.find(None, "/other"), Some(&"default"));
        assert_eq!(t.find(None, "/api"), Some(&"default"));
    }

    #[test]
    fn host_specificity_breaks_ties() {
        let t = table();
        assert_eq!(
            t.find(Some("admin.example.com:8080"), "/api/x"),
            Some(&"admin-api")
        );
        assert_eq!(t.find(Some("a.b.EXAMPLE.com"), "/api/x"), Some(&"wild-api"));
        assert_eq!(t.find(Some("example.com"), "/api/x"), Some(&"api"));
        assert_eq!(t.find(Some("evilexample.com"), "/api/x"), Some(&"api"));
        // A longer prefix beats a more specific host.
        assert_eq!(
            t.find(Some("admin.example.com"), "/api/v2/y"),
            Some(&"api-v2")
        );
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::new(vec![(HostMatch::parse(Some("a.com")), "/x".to_string(), 1)]);
        assert_eq!(t.find(Some("b.com"), "/x"), None);
        assert_eq!(t.find(None, "/x"), None);
        assert_eq!(t.find(Some("A.COM"), "/xyz"), Some(&1));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
