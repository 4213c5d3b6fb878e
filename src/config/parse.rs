//! YAML text -> [`Config`], section by section, collecting every structural problem.
//!
//! serde stops at the first error, so the file is first read as a `serde_yaml::Value`, then each
//! section and each upstream or route is deserialized on its own: a typo in `routes[0]` and a bad
//! duration in `upstreams.app` are both reported in one run, each with its YAML path.
//!
//! [`parse`] reads the YAML (`read_yaml`), then hands each top-level key to its section
//! (`parse_section`): a section that is one value replaces its default (`replace`);
//! `upstreams`, `routes`, `tiers` and `tenants` are read entry by entry (`parse_upstreams`,
//! `parse_routes`, `parse_tiers`, `parse_tenants`).

use super::error::ConfigError;
use super::model::{
    AdminConfig, Config, IdentityConfig, ListenField, RateLimitConfig, RouteConfig, ServerConfig,
    TenantConfig, TierConfig, UpstreamConfig,
};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

/// Top-level keys, in the order the docs present them.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin",
    "server",
    "upstreams",
    "routes",
    "identity",
    "tiers",
    "tenants",
    "rate_limit",
    "observability",
    "cache",
    "redis",
    "llm",
];

/// Result of the structural pass: what could be read, plus the names of upstream groups that
/// exist in the file even if their body was broken (so routes naming them are not also flagged).
pub struct Parsed {
    /// The config with every section that deserialized; broken entries are left out.
    pub config: Config,
    /// Every upstream group name written in the file.
    pub upstream_names: Vec<String>,
    /// Every tier name written in the file (so tenants naming a broken tier are not also flagged).
    pub tier_names: Vec<String>,
    /// Indices of the routes that did not parse: `config.routes` holds a placeholder there.
    pub broken_routes: Vec<usize>,
}

/// Parse YAML text (already interpolated) into a [`Config`], collecting errors.
pub fn parse(text: &str, errors: &mut Vec<ConfigError>) -> Option<Parsed> {
    let map = top_level_mapping(read_yaml(text, errors)?, errors)?;
    let mut parsed = Parsed {
        config: defaults(),
        upstream_names: Vec::new(),
        tier_names: Vec::new(),
        broken_routes: Vec::new(),
    };
    let (mut saw_upstreams, mut saw_routes) = (false, false);
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            errors.push(ConfigError::file(format!(
                "top-level keys must be strings, found {}",
                describe(&key)
            )));
            continue;
        };
        saw_upstreams |= key == "upstreams";
        saw_routes |= key == "routes";
        parse_section(key, value, &mut parsed, errors);
    }
    if !saw_upstreams {
        errors.push(ConfigError::file(
            "missing required key `upstreams`: define at least one upstream group",
        ));
    }
    if !saw_routes {
        errors.push(ConfigError::file(
            "missing required key `routes`: define at least one route",
        ));
    }
    Some(parsed)
}

/// Read one top-level section into `parsed` (the keys in model order).
fn parse_section(key: &str, value: Value, parsed: &mut Parsed, errors: &mut Vec<ConfigError>) {
    let config = &mut parsed.config;
    match key {
        "listen" => {
            if let Some(ListenField(l)) = section(value, "listen", errors) {
                config.listen = l;
            }
        }
        "admin" => replace(&mut config.admin, value, "admin", errors),
        "server" => replace(&mut config.server, value, "server", errors),
        "upstreams" => {
            let names = &mut parsed.upstream_names;
            parse_upstreams(value, &mut config.upstreams, names, errors);
        }
        "routes" => {
            let broken = &mut parsed.broken_routes;
            parse_routes(value, &mut config.routes, broken, errors);
        }
        "identity" => replace(&mut config.identity, value, "identity", errors),
        "tiers" => parse_tiers(value, &mut config.tiers, &mut parsed.tier_names, errors),
        "tenants" => parse_tenants(value, &mut config.tenants, errors),
        "rate_limit" => replace(&mut config.rate_limit, value, "rate_limit", errors),
        "observability" => replace(&mut config.observability, value, "observability", errors),
        "cache" => replace(&mut config.cache, value, "cache", errors),
        "llm" => replace(&mut config.llm, value, "llm", errors),
        "redis" => {
            if let Some(r) = section(value, "redis", errors) {
                config.redis = Some(r);
            }
        }
        other => errors.push(ConfigError::at(
            other,
            format!(
                "unknown key `{other}`{} (top-level keys are: {})",
                suggest(other, TOP_LEVEL_KEYS),
                TOP_LEVEL_KEYS.join(", ")
            ),
        )),
    }
}

/// The YAML document, or `None` with its syntax error (or its repeated keys) reported.
fn read_yaml(text: &str, errors: &mut Vec<ConfigError>) -> Option<Value> {
    match serde_yaml::from_str(text) {
        Ok(v) => Some(v),
        Err(e) if e.to_string().contains("duplicate entry") => {
            report_duplicates(text, &e, errors);
            None
        }
        Err(e) => {
            let mut err = ConfigError::file(format!(
                "YAML syntax error: {}",
                strip_location(&e.to_string())
            ));
            if let Some(loc) = e.location() {
                err.line = Some(loc.line());
                err.column = Some(loc.column());
            }
            errors.push(err);
            None
        }
    }
}

/// A key written twice: serde_yaml points at the enclosing mapping; name each repeated key and
/// its lines instead.
fn report_duplicates(text: &str, e: &serde_yaml::Error, errors: &mut Vec<ConfigError>) {
    let index = super::locate::LocationIndex::build(text);
    let mut reported: Vec<&str> = Vec::new();
    for d in index.duplicates() {
        // Children of a repeated key repeat too: report the key once.
        if reported.iter().any(|r| {
            d.path
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
        }) {
            continue;
        }
        reported.push(&d.path);
        let what = match d.path.strip_prefix("upstreams.") {
            Some(name) if !name.contains('.') => format!("duplicate upstream name `{name}`"),
            _ => format!(
                "duplicate key `{}`",
                d.path.rsplit('.').next().unwrap_or(&d.path)
            ),
        };
        let mut err = ConfigError::at(
            &d.path,
            format!("{what} (first defined on line {})", d.first_line),
        );
        err.line = Some(d.line);
        errors.push(err);
    }
    if index.duplicates().is_empty() {
        errors.push(ConfigError::file(format!(
            "YAML error: {}",
            strip_location(&e.to_string())
        )));
    }
}

/// The document's top level as a mapping, or `None` with why it is not one.
fn top_level_mapping(root: Value, errors: &mut Vec<ConfigError>) -> Option<Mapping> {
    match root {
        Value::Mapping(m) => Some(m),
        Value::Null => {
            errors.push(ConfigError::file(
                "the file is empty: a config needs at least `upstreams` and `routes`",
            ));
            None
        }
        _ => {
            errors.push(ConfigError::file(
                "the top level must be a mapping of keys (`listen:`, `upstreams:`, `routes:`, ...)",
            ));
            None
        }
    }
}

/// The config of a file that sets nothing but `upstreams` and `routes`.
fn defaults() -> Config {
    Config {
        listen: vec!["0.0.0.0:8080".into()],
        admin: AdminConfig::default(),
        server: ServerConfig::default(),
        upstreams: IndexMap::new(),
        routes: Vec::new(),
        identity: IdentityConfig::default(),
        tiers: IndexMap::new(),
        tenants: IndexMap::new(),
        rate_limit: RateLimitConfig::default(),
        observability: Default::default(),
        cache: Default::default(),
        redis: None,
        llm: Default::default(),
    }
}

/// A section that is one value (`admin`, `server`, ...): when it deserializes, it replaces the
/// default in `slot`; when not, the default stays and the error is reported.
fn replace<T: DeserializeOwned>(
    slot: &mut T,
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(v) = section(value, path, errors) {
        *slot = v;
    }
}

/// `upstreams:`, group by group. Every name is recorded, even of a group that does not parse.
fn parse_upstreams(
    value: Value,
    upstreams: &mut IndexMap<String, UpstreamConfig>,
    names: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(groups) = mapping_of(value, "upstreams", errors) else {
        return;
    };
    if groups.is_empty() {
        errors.push(ConfigError::at(
            "upstreams",
            "no upstream groups: define at least one",
        ));
    }
    for (name, body) in groups {
        let path = format!("upstreams.{name}");
        names.push(name.clone());
        if let Some(u) = section::<UpstreamConfig>(body, &path, errors) {
            upstreams.insert(name, u);
        }
    }
}

/// `routes:`, route by route. A route that does not parse leaves a placeholder, so that
/// `routes[i]` in later messages is still the i-th route of the file, and its index in `broken`.
fn parse_routes(
    value: Value,
    routes: &mut Vec<RouteConfig>,
    broken: &mut Vec<usize>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::Sequence(items) if items.is_empty() => errors.push(ConfigError::at(
            "routes",
            "no routes: define at least one route",
        )),
        Value::Sequence(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let path = format!("routes[{i}]");
                let route = section::<RouteConfig>(item, &path, errors).unwrap_or_else(|| {
                    broken.push(i);
                    placeholder_route()
                });
                routes.push(route);
            }
        }
        other => errors.push(ConfigError::at(
            "routes",
            format!(
                "expected a list of routes (`- match: ...`), found {}",
                describe(&other)
            ),
        )),
    }
}

/// `tiers:`, tier by tier. Every name is recorded, even of a tier that does not parse.
fn parse_tiers(
    value: Value,
    tiers: &mut IndexMap<String, TierConfig>,
    names: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(entries) = mapping_of(value, "tiers", errors) else {
        return;
    };
    for (name, body) in entries {
        names.push(name.clone());
        if let Some(t) = section::<TierConfig>(body, &format!("tiers.{name}"), errors) {
            tiers.insert(name, t);
        }
    }
}

/// `tenants:`, tenant by tenant.
fn parse_tenants(
    value: Value,
    tenants: &mut IndexMap<String, TenantConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(entries) = mapping_of(value, "tenants", errors) else {
        return;
    };
    for (name, body) in entries {
        if let Some(t) = section::<TenantConfig>(body, &format!("tenants.{name}"), errors) {
            tenants.insert(name, t);
        }
    }
}

/// A route that failed to parse: keeps `routes[i]` indices aligned; never compiled (the
/// config is rejected anyway).
fn placeholder_route() -> RouteConfig {
    RouteConfig {
        name: None,
        matcher: super::model::MatchConfig {
            host: None,
            path_prefix: String::new(),
        },
        upstream: String::new(),
        rate_limit: None,
        compression: None,
        cache: None,
        tokens: None,
        max_in_flight: None,
        max_request_body: None,
        request_buffering: None,
        upstreams: Vec::new(),
        group_balance: Default::default(),
        group_weights: Default::default(),
        retry_non_idempotent: false,
    }
}

/// A section of named entries (`upstreams`, `tiers`, `tenants`) as (name, body) pairs; a
/// non-string name is reported and skipped, an empty section (`tiers:`) has no entries.
fn mapping_of(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<(String, Value)>> {
    match value {
        Value::Mapping(m) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                match k.as_str() {
                    Some(s) => out.push((s.to_owned(), v)),
                    None => errors.push(ConfigError::at(
                        path,
                        format!("names must be strings, found {}", describe(&k)),
                    )),
                }
            }
            Some(out)
        }
        Value::Null => Some(Vec::new()),
        other => {
            errors.push(ConfigError::at(
                path,
                format!(
                    "expected a mapping of names to definitions, found {}",
                    describe(&other)
                ),
            ));
            None
        }
    }
}

/// Deserialize one section, reporting a failure with its full YAML path.
fn section<T: DeserializeOwned>(
    value: Value,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = join_path(e.path());
            let path = match (base.is_empty(), inner.is_empty()) {
                (_, true) => base.to_string(),
                (true, false) => inner,
                (false, false) if inner.starts_with('[') => format!("{base}{inner}"),
                (false, false) => format!("{base}.{inner}"),
            };
            errors.push(ConfigError::at(path, humanize(&e.into_inner().to_string())));
            None
        }
    }
}

/// serde_path_to_error's path written the way this crate writes YAML paths: `a.b[0].c`.
fn join_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// serde's messages, made a little friendlier for operators.
fn humanize(msg: &str) -> String {
    let msg = strip_location(msg);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, expected ") {
            // serde writes "`a`", "`a` or `b`" or "one of `a`, `b`, `c`": take the quoted names.
            let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            return format!(
                "unknown key `{field}`{} (allowed here: {})",
                suggest(field, &options),
                options.join(", ")
            );
        }
    }
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("missing required key `{field}`");
    }
    msg
}

/// ` (did you mean `x`?)` when a known name is within two edits of the typo.
fn suggest(typo: &str, options: &[&str]) -> String {
    options
        .iter()
        .map(|o| (edit_distance(typo, o), o))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, o)| format!(" (did you mean `{o}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A serde_yaml message without its ` at line N column M` (lines are reported separately).
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// What a YAML value is, for messages ("the number `5`", "a list").
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_small_typos() {
        assert_eq!(
            suggest("path_prefx", &["host", "path_prefix"]),
            " (did you mean `path_prefix`?)"
        );
        assert_eq!(suggest("zzzzzz", &["host", "path_prefix"]), "");
    }

    #[test]
    fn collects_errors_from_several_entries() {
        let mut errors = Vec::new();
        let parsed = parse(
            "upstreams:\n  a: { endpoints: [\"x:1\"], bogus: 1 }\n  b: { endpoints: [\"y:1\"], timeouts: { read: 5x } }\nroutes:\n  - { match: { path_prefx: / }, upstream: a }\n",
            &mut errors,
        )
        .unwrap();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("upstreams.a"), "{}", text[0]);
        assert!(text[0].contains("unknown key `bogus`"), "{}", text[0]);
        assert_eq!(errors[1].path, "upstreams.b.timeouts.read", "{}", text[1]);
        assert!(text[1].contains("invalid duration `5x`"), "{}", text[1]);
        assert!(
            text[2].contains("did you mean `path_prefix`"),
            "{}",
            text[2]
        );
        assert_eq!(parsed.upstream_names, vec!["a", "b"]);
    }
}
