//! YAML text -> [`Config`], section by section, collecting every structural problem.
//!
//! serde stops at the first error, so the file is first read as a `serde_yaml::Value`, then each
//! section and each upstream or route is deserialized on its own: a typo in `routes[0]` and a bad
//! duration in `upstreams.app` are both reported in one run, each with its YAML path.

use super::error::ConfigError;
use super::model::{
    AdminConfig, Config, IdentityConfig, ListenField, RateLimitConfig, RouteConfig, ServerConfig,
    TenantConfig, TierConfig, UpstreamConfig,
};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

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
}

/// Parse YAML text (already interpolated) into a [`Config`], collecting errors.
pub fn parse(text: &str, errors: &mut Vec<ConfigError>) -> Option<Parsed> {
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("duplicate entry") => {
            // serde_yaml points at the enclosing mapping; name each repeated key and its lines.
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
                    Some(name) if !name.contains('.') => {
                        format!("duplicate upstream name `{name}`")
                    }
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
            return None;
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
            return None;
        }
    };
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => {
            errors.push(ConfigError::file(
                "the file is empty: a config needs at least `upstreams` and `routes`",
            ));
            return None;
        }
        _ => {
            errors.push(ConfigError::file(
                "the top level must be a mapping of keys (`listen:`, `upstreams:`, `routes:`, ...)",
            ));
            return None;
        }
    };

    let mut config = Config {
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
    };
    let mut upstream_names = Vec::new();
    let mut tier_names = Vec::new();
    let (mut saw_upstreams, mut saw_routes) = (false, false);

    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push(ConfigError::file(format!(
                "top-level keys must be strings, found {}",
                describe(&key)
            )));
            continue;
        };
        match key.as_str() {
            "listen" => {
                if let Some(ListenField(l)) = section(value, "listen", errors) {
                    config.listen = l;
                }
            }
            "admin" => {
                if let Some(a) = section(value, "admin", errors) {
                    config.admin = a;
                }
            }
            "server" => {
                if let Some(s) = section(value, "server", errors) {
                    config.server = s;
                }
            }
            "upstreams" => {
                saw_upstreams = true;
                let Some(groups) = mapping_of(value, "upstreams", errors) else {
                    continue;
                };
                if groups.is_empty() {
                    errors.push(ConfigError::at(
                        "upstreams",
                        "no upstream groups: define at least one",
                    ));
                }
                for (name, body) in groups {
                    let path = format!("upstreams.{name}");
                    upstream_names.push(name.clone());
                    if let Some(u) = section::<UpstreamConfig>(body, &path, errors) {
                        config.upstreams.insert(name, u);
                    }
                }
            }
            "routes" => {
                saw_routes = true;
                match value {
                    Value::Sequence(items) if items.is_empty() => errors.push(ConfigError::at(
                        "routes",
                        "no routes: define at least one route",
                    )),
                    Value::Sequence(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let path = format!("routes[{i}]");
                            if let Some(r) = section::<RouteConfig>(item, &path, errors) {
                                config.routes.push(r);
                            } else {
                                // Keep indices aligned with the file for later messages.
                                config.routes.push(placeholder_route());
                            }
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
            "identity" => {
                if let Some(i) = section(value, "identity", errors) {
                    config.identity = i;
                }
            }
            "rate_limit" => {
                if let Some(r) = section(value, "rate_limit", errors) {
                    config.rate_limit = r;
                }
            }
            "observability" => {
                if let Some(o) = section(value, "observability", errors) {
                    config.observability = o;
                }
            }
            "cache" => {
                if let Some(c) = section(value, "cache", errors) {
                    config.cache = c;
                }
            }
            "tiers" => {
                let Some(entries) = mapping_of(value, "tiers", errors) else {
                    continue;
                };
                for (name, body) in entries {
                    tier_names.push(name.clone());
                    if let Some(t) = section::<TierConfig>(body, &format!("tiers.{name}"), errors) {
                        config.tiers.insert(name, t);
                    }
                }
            }
            "tenants" => {
                let Some(entries) = mapping_of(value, "tenants", errors) else {
                    continue;
                };
                for (name, body) in entries {
                    if let Some(t) =
                        section::<TenantConfig>(body, &format!("tenants.{name}"), errors)
                    {
                        config.tenants.insert(name, t);
                    }
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
    Some(Parsed {
        config,
        upstream_names,
        tier_names,
    })
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
        upstreams: Vec::new(),
        retry_non_idempotent: false,
    }
}

/// Whether a route in `config.routes` is a placeholder for one that failed to parse.
pub fn is_placeholder(r: &RouteConfig) -> bool {
    r.upstream.is_empty() && r.matcher.path_prefix.is_empty()
}

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

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

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
