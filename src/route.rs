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
//! Routes are sorted once at compile time so the first match in order is the winner. A large
//! table also gets an index by prefix, so finding a route does not cost a comparison per route.

use std::cmp::Reverse;
use std::collections::HashMap;

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
    /// From [`INDEX_FROM`] routes on: the entries by prefix (their positions in `entries`, in
    /// match order), and the prefix lengths there are, longest first.
    index: Option<PrefixIndex>,
}

/// Routes from which [`RouteTable::find`] looks prefixes up instead of trying each route in
/// turn. Below it a scan is cheaper than hashing the path: `benches/scaling.py` measured CPU per
/// request 1.01× the one-route figure at 10 routes, 1.04× at 100 and 1.19× at 1,000 with the
/// scan alone.
pub const INDEX_FROM: usize = 32;

#[derive(Debug)]
struct PrefixIndex {
    by_prefix: HashMap<Box<[u8]>, Vec<usize>, foldhash::fast::RandomState>,
    lengths: Vec<usize>,
}

impl PrefixIndex {
    fn new<R>(entries: &[(HostMatch, String, R)]) -> PrefixIndex {
        let mut by_prefix: HashMap<Box<[u8]>, Vec<usize>, _> =
            HashMap::with_hasher(foldhash::fast::RandomState::default());
        for (i, (_, prefix, _)) in entries.iter().enumerate() {
            by_prefix
                .entry(prefix.as_bytes().into())
                .or_insert_with(Vec::new)
                .push(i);
        }
        let mut lengths: Vec<usize> = by_prefix.keys().map(|p| p.len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        PrefixIndex { by_prefix, lengths }
    }
}

impl<R> RouteTable<R> {
    /// Build from `(host, path_prefix, route)` in file order.
    pub fn new(routes: Vec<(HostMatch, String, R)>) -> Self {
        let mut entries: Vec<(usize, (HostMatch, String, R))> =
            routes.into_iter().enumerate().collect();
        entries.sort_by_key(|(i, (h, p, _))| (Reverse(p.len()), Reverse(h.specificity()), *i));
        let entries: Vec<(HostMatch, String, R)> = entries.into_iter().map(|(_, e)| e).collect();
        let index = (entries.len() >= INDEX_FROM).then(|| PrefixIndex::new(&entries));
        RouteTable { entries, index }
    }

    /// The route for a request: `host` is the Host header or authority (port allowed).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&R> {
        let host = host.map(strip_port);
        let Some(index) = &self.index else {
            return self
                .entries
                .iter()
                .find(|(h, p, _)| path.starts_with(p.as_str()) && h.matches(host))
                .map(|(_, _, r)| r);
        };
        // The same order as the scan: longest prefix first, and within one prefix the entries
        // as sorted (host specificity, then file order).
        let path = path.as_bytes();
        index
            .lengths
            .iter()
            .filter(|&&len| len <= path.len())
            .filter_map(|&len| index.by_prefix.get(&path[..len]))
            .flat_map(|positions| positions.iter().map(|&i| &self.entries[i]))
            .find(|(h, _, _)| h.matches(host))
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

    /// The index finds what the scan finds, on a table big enough to have one.
    #[test]
    fn the_prefix_index_agrees_with_the_scan() {
        let hosts = [None, Some("a.com"), Some("*.a.com"), Some("b.com")];
        let mut routes = Vec::new();
        for i in 0..200 {
            let prefix = match i % 5 {
                0 => "/".to_string(),
                1 => format!("/r{}/", i % 37),
                2 => format!("/r{}", i % 11),
                3 => format!("/r{}/x/", i % 13),
                _ => format!("/é{}/", i % 7),
            };
            routes.push((HostMatch::parse(hosts[i % 4]), prefix, i));
        }
        let indexed = RouteTable::new(routes);
        assert!(indexed.index.is_some());
        let scan = |host: Option<&str>, path: &str| {
            let host = host.map(strip_port);
            indexed
                .entries
                .iter()
                .find(|(h, p, _)| path.starts_with(p.as_str()) && h.matches(host))
                .map(|(_, _, r)| r)
        };
        let mut checked = 0;
        for host in [
            None,
            Some("a.com"),
            Some("x.a.com:80"),
            Some("b.com"),
            Some("c.com"),
        ] {
            for i in 0..40 {
                for path in [
                    format!("/r{i}/x/y"),
                    format!("/r{i}"),
                    format!("/r{i}/"),
                    format!("/é{i}/z"),
                    format!("/é{i}"),
                    "/".to_string(),
                    "/nothing".to_string(),
                ] {
                    assert_eq!(
                        indexed.find(host, &path),
                        scan(host, &path),
                        "{host:?} {path}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 5 * 40 * 7);
        // Without a catch-all for the host, nothing.
        let small: Vec<_> = (0..40)
            .map(|i| (HostMatch::parse(Some("a.com")), format!("/r{i}/"), i))
            .collect();
        let t = RouteTable::new(small);
        assert_eq!(t.find(Some("a.com"), "/r39/x"), Some(&39));
        assert_eq!(t.find(Some("b.com"), "/r39/x"), None);
        assert_eq!(t.find(Some("a.com"), "/r40/x"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
