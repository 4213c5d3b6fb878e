//! A typed builder for tollgate's YAML config (the schema is `src/config/model.rs`, documented
//! in `docs/config.md`).
//!
//! Names, addresses, prefixes and upstream lists are typed; what a section says beyond that is
//! YAML text the test writes itself (a flow mapping such as `"{ ttl: 60s }"`, or any scalar), so
//! the builder does not need to model every key:
//!
//! ```ignore
//! let tg = Config::new()
//!     .upstream(Group::new("app", [app.addr()]).retry("{ attempts: 3 }"))
//!     .tier("free", "{ rps: 0.01, burst: 5, daily: 1000 }")
//!     .tenant("acme", "free", ["sha256:..."])
//!     .route(Route::prefix("/api/").name("api").to("app").cache("{ ttl: 60s }"))
//!     .start()
//!     .await;
//! ```
//!
//! [`Config::render`] gives the YAML without `listen` and `admin.listen`: the harness
//! ([`crate::common::Tollgate`]) adds those on free ports, and a test-friendly `server:` section
//! ([`TEST_SERVER`]) unless the config sets server keys of its own (which then override those
//! defaults one by one).

use std::fmt::{self, Display, Write};
use std::net::SocketAddr;

/// The `server:` keys the harness runs tollgate with: one thread, no drain wait, a quick
/// shutdown, no file watching (tests that reload send SIGHUP or set `watch_interval`).
pub const TEST_SERVER: [(&str, &str); 4] = [
    ("threads", "1"),
    ("grace_period", "0s"),
    ("shutdown_timeout", "1s"),
    ("watch_interval", "0s"),
];

/// `s` as a YAML double-quoted scalar (a JSON string is one).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Ordered `key: value` pairs of one mapping; setting a key again replaces its value in place.
#[derive(Clone, Debug, Default)]
struct Keys(Vec<(String, String)>);

impl Keys {
    fn set(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// One `key: value` line per pair, each indented by `indent` spaces.
    fn write(&self, out: &mut String, indent: usize) {
        for (k, v) in &self.0 {
            let _ = writeln!(out, "{:indent$}{k}: {v}", "");
        }
    }
}

/// One endpoint of a group: an address (or `${VAR}` text), with an optional weight.
#[derive(Clone, Debug)]
pub struct Endpoint {
    address: String,
    weight: Option<u32>,
}

impl Endpoint {
    /// `{ address: ..., weight: ... }`.
    pub fn weighted(address: impl Display, weight: u32) -> Endpoint {
        Endpoint {
            address: address.to_string(),
            weight: Some(weight),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint {
            address: a.to_string(),
            weight: None,
        }
    }
}

impl From<&str> for Endpoint {
    fn from(a: &str) -> Endpoint {
        Endpoint {
            address: a.to_string(),
            weight: None,
        }
    }
}

impl Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            None => f.write_str(&quote(&self.address)),
            Some(w) => write!(f, "{{ address: {}, weight: {w} }}", quote(&self.address)),
        }
    }
}

/// One entry of `upstreams:`: a named group of endpoints and its settings.
#[derive(Clone, Debug)]
pub struct Group {
    name: String,
    endpoints: Vec<Endpoint>,
    keys: Keys,
    headers: Vec<(String, String)>,
}

impl Group {
    /// Group `name` over `endpoints` (socket addresses, `&str` addresses or [`Endpoint`]s).
    pub fn new<E: Into<Endpoint>>(name: &str, endpoints: impl IntoIterator<Item = E>) -> Group {
        Group {
            name: name.to_string(),
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            keys: Keys::default(),
            headers: Vec::new(),
        }
    }

    /// Any key of the group, `value` as YAML text (the escape hatch).
    pub fn set(mut self, key: &str, value: impl Display) -> Group {
        self.keys.set(key, value);
        self
    }

    /// `balance:` (`round_robin`, `weighted`, `consistent_hash`).
    pub fn balance(self, how: &str) -> Group {
        self.set("balance", how)
    }

    /// `hash_on:` (e.g. `header:x-user`).
    pub fn hash_on(self, key: &str) -> Group {
        self.set("hash_on", quote(key))
    }

    /// `retry:` as YAML text, e.g. `"{ attempts: 1 }"`.
    pub fn retry(self, yaml: &str) -> Group {
        self.set("retry", yaml)
    }

    /// `circuit_breaker:` as YAML text, e.g. `"{ failures: 3, backoff: 60s, max_backoff: 60s }"`.
    pub fn circuit_breaker(self, yaml: &str) -> Group {
        self.set("circuit_breaker", yaml)
    }

    /// `circuit_breaker: { failures: 0 }`: no breaker, every endpoint stays in rotation.
    pub fn no_circuit_breaker(self) -> Group {
        self.circuit_breaker("{ failures: 0 }")
    }

    /// `health_check:` as YAML text, e.g. `"{ path: /health, interval: 100ms }"`.
    pub fn health_check(self, yaml: &str) -> Group {
        self.set("health_check", yaml)
    }

    /// `tls:` as YAML text, e.g. `"{ sni: localhost, verify: false }"`.
    pub fn tls(self, yaml: &str) -> Group {
        self.set("tls", yaml)
    }

    /// `timeouts:` as YAML text, e.g. `"{ connect: 1s, read: 200ms }"`.
    pub fn timeouts(self, yaml: &str) -> Group {
        self.set("timeouts", yaml)
    }

    /// `host:`, the Host header sent upstream.
    pub fn host(self, host: &str) -> Group {
        self.set("host", quote(host))
    }

    /// `strip_prefix:`, removed from the path before it goes upstream.
    pub fn strip_prefix(self, prefix: &str) -> Group {
        self.set("strip_prefix", quote(prefix))
    }

    /// `add_prefix:`, put in front of the path before it goes upstream.
    pub fn add_prefix(self, prefix: &str) -> Group {
        self.set("add_prefix", quote(prefix))
    }

    /// One entry of `headers:` (set on every upstream request; `${VAR}` allowed).
    pub fn header(mut self, name: &str, value: &str) -> Group {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn write(&self, out: &mut String) {
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(out, "  {}:", self.name);
        let _ = writeln!(out, "    endpoints: [{}]", endpoints.join(", "));
        self.keys.write(out, 4);
        if !self.headers.is_empty() {
            let _ = writeln!(out, "    headers:");
            for (k, v) in &self.headers {
                let _ = writeln!(out, "      {k}: {}", quote(v));
            }
        }
    }
}

/// One entry of `routes:`: what it matches, where it goes, and its per-route sections.
#[derive(Clone, Debug)]
pub struct Route {
    name: Option<String>,
    host: Option<String>,
    prefix: String,
    upstreams: Vec<String>,
    failover: bool,
    keys: Keys,
}

impl Route {
    /// A route matching `path_prefix` (any host). Name it with [`Route::name`] (metrics labels
    /// and logs use it), point it at a group with [`Route::to`].
    pub fn prefix(path_prefix: &str) -> Route {
        Route {
            name: None,
            host: None,
            prefix: path_prefix.to_string(),
            upstreams: Vec::new(),
            failover: false,
            keys: Keys::default(),
        }
    }

    /// `name:`.
    pub fn name(mut self, name: &str) -> Route {
        self.name = Some(name.to_string());
        self
    }

    /// `match.host:` (exact or `*.example.com`).
    pub fn host(mut self, host: &str) -> Route {
        self.host = Some(host.to_string());
        self
    }

    /// `upstream: group`.
    pub fn to(mut self, group: &str) -> Route {
        self.upstreams = vec![group.to_string()];
        self.failover = false;
        self
    }

    /// `upstreams: [a, b, ...]`: groups in failover order.
    pub fn failover<'a>(mut self, groups: impl IntoIterator<Item = &'a str>) -> Route {
        self.upstreams = groups.into_iter().map(str::to_string).collect();
        self.failover = true;
        self
    }

    /// Any key of the route, `value` as YAML text (the escape hatch).
    pub fn set(mut self, key: &str, value: impl Display) -> Route {
        self.keys.set(key, value);
        self
    }

    /// `cache:` as YAML text, e.g. `"{ ttl: 60s, stale_if_error: 5m }"` (`"{}"`: the defaults).
    pub fn cache(self, yaml: &str) -> Route {
        self.set("cache", yaml)
    }

    /// `compression:` as YAML text, e.g. `"{ gzip: { level: 6 } }"`.
    pub fn compression(self, yaml: &str) -> Route {
        self.set("compression", yaml)
    }

    /// `rate_limit:` as YAML text, e.g. `"{ cost: 2 }"`.
    pub fn rate_limit(self, yaml: &str) -> Route {
        self.set("rate_limit", yaml)
    }

    /// `retry_non_idempotent: true`.
    pub fn retry_non_idempotent(self) -> Route {
        self.set("retry_non_idempotent", true)
    }

    fn write(&self, out: &mut String) {
        let mut first = true;
        let mut line = |out: &mut String, text: String| {
            let lead = if first { "  - " } else { "    " };
            first = false;
            let _ = writeln!(out, "{lead}{text}");
        };
        if let Some(n) = &self.name {
            line(out, format!("name: {n}"));
        }
        let host = match &self.host {
            Some(h) => format!("host: {}, ", quote(h)),
            None => String::new(),
        };
        line(
            out,
            format!("match: {{ {host}path_prefix: {} }}", quote(&self.prefix)),
        );
        if self.failover {
            line(out, format!("upstreams: [{}]", self.upstreams.join(", ")));
        } else if let Some(u) = self.upstreams.first() {
            line(out, format!("upstream: {u}"));
        }
        for (k, v) in &self.keys.0 {
            line(out, format!("{k}: {v}"));
        }
    }
}

/// A whole tollgate config (without `listen`/`admin.listen`, which the harness fills in), plus
/// the environment variables it is run with.
#[derive(Clone, Debug, Default)]
pub struct Config {
    server: Keys,
    admin: Keys,
    upstreams: Vec<Group>,
    routes: Vec<Route>,
    tiers: Keys,
    tenants: Keys,
    /// Top-level mapping sections other than the above, in first-set order.
    sections: Vec<(String, Keys)>,
    raw: String,
    env: Vec<(String, String)>,
}

impl Config {
    /// An empty config: add groups and routes.
    pub fn new() -> Config {
        Config::default()
    }

    /// Add a group to `upstreams:`.
    pub fn upstream(mut self, group: Group) -> Config {
        self.upstreams.push(group);
        self
    }

    /// Add a route to `routes:` (after the ones already there).
    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route);
        self
    }

    /// `tiers.<name>:` as YAML text, e.g. `"{ rps: 0.01, burst: 5, daily: 1000 }"`.
    pub fn tier(mut self, name: &str, yaml: &str) -> Config {
        self.tiers.set(name, yaml);
        self
    }

    /// `tenants.<name>: { tier, api_keys }`; a key is `sha256:<hex>` or `${VAR}`.
    pub fn tenant<K: AsRef<str>>(
        mut self,
        name: &str,
        tier: &str,
        api_keys: impl IntoIterator<Item = K>,
    ) -> Config {
        let keys: Vec<String> = api_keys.into_iter().map(|k| quote(k.as_ref())).collect();
        let value = format!("{{ tier: {tier}, api_keys: [{}] }}", keys.join(", "));
        self.tenants.set(name, value);
        self
    }

    /// `<section>.<key>: value` for any top-level mapping section (`value` as YAML text).
    pub fn set(mut self, section: &str, key: &str, value: impl Display) -> Config {
        match section {
            "server" => self.server.set(key, value),
            "admin" => self.admin.set(key, value),
            "tiers" => self.tiers.set(key, value),
            "tenants" => self.tenants.set(key, value),
            _ => match self.sections.iter_mut().find(|(s, _)| s == section) {
                Some((_, keys)) => keys.set(key, value),
                None => {
                    let mut keys = Keys::default();
                    keys.set(key, value);
                    self.sections.push((section.to_string(), keys));
                }
            },
        }
        self
    }

    /// `identity.<key>: value`.
    pub fn identity(self, key: &str, value: impl Display) -> Config {
        self.set("identity", key, value)
    }

    /// `rate_limit.<key>: value` (the global rate limit settings).
    pub fn rate_limit(self, key: &str, value: impl Display) -> Config {
        self.set("rate_limit", key, value)
    }

    /// `observability.<key>: value`.
    pub fn observability(self, key: &str, value: impl Display) -> Config {
        self.set("observability", key, value)
    }

    /// `cache.<key>: value` (the store: `max_size`, `max_object_size`, ...).
    pub fn cache(self, key: &str, value: impl Display) -> Config {
        self.set("cache", key, value)
    }

    /// `server.<key>: value`, over the harness's [`TEST_SERVER`] defaults.
    pub fn server(self, key: &str, value: impl Display) -> Config {
        self.set("server", key, value)
    }

    /// `admin.<key>: value` beside the `listen` the harness writes (e.g. `token`).
    pub fn admin(self, key: &str, value: impl Display) -> Config {
        self.set("admin", key, value)
    }

    /// YAML text appended verbatim after everything else (for what the builder cannot say).
    pub fn yaml(mut self, text: &str) -> Config {
        self.raw.push_str(text);
        self
    }

    /// An environment variable tollgate runs with (for `${VAR}` in the config).
    pub fn env(mut self, name: &str, value: &str) -> Config {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The YAML body: `server` (only when set), `upstreams`, `routes`, `tiers`, `tenants`, the
    /// other sections, then the raw text. No `listen`, no `admin`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.server.0.is_empty() {
            let mut server = Keys::default();
            for (k, v) in TEST_SERVER {
                server.set(k, v);
            }
            for (k, v) in &self.server.0 {
                server.set(k, v);
            }
            out.push_str("server:\n");
            server.write(&mut out, 2);
        }
        if !self.upstreams.is_empty() {
            out.push_str("upstreams:\n");
            for g in &self.upstreams {
                g.write(&mut out);
            }
        }
        if !self.routes.is_empty() {
            out.push_str("routes:\n");
            for r in &self.routes {
                r.write(&mut out);
            }
        }
        for (name, keys) in [("tiers", &self.tiers), ("tenants", &self.tenants)]
            .into_iter()
            .chain(self.sections.iter().map(|(s, k)| (s.as_str(), k)))
        {
            if !keys.0.is_empty() {
                let _ = writeln!(out, "{name}:");
                keys.write(&mut out, 2);
            }
        }
        out.push_str(&self.raw);
        out
    }

    /// The extra `admin:` lines (indented) the harness writes after `listen`.
    pub fn admin_lines(&self) -> String {
        let mut out = String::new();
        self.admin.write(&mut out, 2);
        out
    }

    /// Start tollgate on this config: [`crate::common::Tollgate::start`].
    pub async fn start(&self) -> crate::common::Tollgate {
        crate::common::Tollgate::start(self).await
    }
}

impl Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// What [`crate::common::Tollgate::start`] runs on: a [`Config`], or YAML text as written
/// (for the tests whose point is the text itself).
pub trait ConfigSource {
    /// The YAML body, without `listen` and `admin`.
    fn body(&self) -> String;
    /// Extra indented lines for the `admin:` section.
    fn admin_lines(&self) -> String {
        String::new()
    }
    /// Environment variables to run tollgate with.
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl ConfigSource for str {
    fn body(&self) -> String {
        self.to_string()
    }
}

impl ConfigSource for String {
    fn body(&self) -> String {
        self.clone()
    }
}

impl ConfigSource for Config {
    fn body(&self) -> String {
        self.render()
    }
    fn admin_lines(&self) -> String {
        Config::admin_lines(self)
    }
    fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }
}
