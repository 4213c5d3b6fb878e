//! Upstream groups: their endpoints, how one is picked, and the Pingora peer that reaches it.
//!
//! Everything expensive (DNS resolution, timeout and TLS options, the selection structures) is
//! done once when the config is compiled; per request a group picks an endpoint with
//! pingora-load-balancing's selectors (weighted round robin, Ketama consistent hashing) and
//! hands out a clone of its prepared [`HttpPeer`]. Selection skips endpoints this request
//! already tried and endpoints whose circuit is open ([`breaker`]).
//!
//! Live state outlives a reload: a group compiled to replace one of the same name shares the
//! breakers of the endpoints it keeps and, when its health check is unchanged, the health
//! registry (verdicts and consecutive counts), so an edit elsewhere in the file does not send
//! traffic back to an endpoint known to be down.

pub mod attempts;
pub mod breaker;
pub mod budget;
pub mod compile;
pub mod spread;

use crate::config::model;
use arc_swap::ArcSwap;
use breaker::Breaker;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Timeouts of a group, resolved from config.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Between reads of the upstream response.
    pub read: Duration,
    /// Between writes of the request.
    pub write: Duration,
    /// Idle keep-alive connection lifetime in the pool.
    pub idle: Duration,
}

/// TLS settings of a group.
#[derive(Debug, Clone)]
pub struct Tls {
    /// SNI override; `None` uses each endpoint's host.
    pub sni: Option<String>,
    /// Verify certificate chain and host name.
    pub verify: bool,
}

/// One endpoint of a group.
#[derive(Debug)]
pub struct Endpoint {
    /// As written in the config (`host:port`): the label in logs and metrics.
    pub label: Arc<str>,
    /// Relative weight.
    pub weight: u32,
    /// Its resolved address.
    pub addr: SocketAddr,
    /// Passive health: consecutive failures and the open circuit (shared with the config this
    /// one replaced when the endpoint and its policy stayed the same).
    pub breaker: Arc<Breaker>,
    peer: HttpPeer,
}

impl Endpoint {
    /// Prepare an endpoint: `host` is what was written (used for SNI), `addr` its resolved address.
    pub fn new(
        label: String,
        host: &str,
        addr: SocketAddr,
        tls: Option<&Tls>,
        t: &Timeouts,
    ) -> Self {
        let sni = tls
            .map(|t| t.sni.clone().unwrap_or_else(|| host.to_string()))
            .unwrap_or_default();
        let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect * 2);
        o.read_timeout = Some(t.read);
        o.write_timeout = Some(t.write);
        o.idle_timeout = Some(t.idle);
        if let Some(tls) = tls {
            o.verify_cert = tls.verify;
            o.verify_hostname = tls.verify;
        }
        Endpoint {
            label: label.into(),
            weight: 1,
            addr,
            breaker: Arc::new(Breaker::default()),
            peer,
        }
    }

    /// The same endpoint with a weight and a breaker.
    pub fn with(mut self, weight: u32, breaker: Arc<Breaker>) -> Self {
        self.weight = weight;
        self.breaker = breaker;
        self
    }

    /// A peer for one request (a clone: Pingora takes ownership per attempt).
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// How a group picks an endpoint (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// In turn, weights ignored.
    RoundRobin,
    /// In turn, in proportion to the endpoints' weights.
    Weighted,
    /// The same key goes to the same endpoint while it is up (Ketama, weighted).
    ConsistentHash,
}

impl From<model::Balance> for Balance {
    fn from(b: model::Balance) -> Self {
        match b {
            model::Balance::RoundRobin => Balance::RoundRobin,
            model::Balance::Weighted => Balance::Weighted,
            model::Balance::ConsistentHash => Balance::ConsistentHash,
        }
    }
}

/// A group's active health check (`health_check:`), compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `Some(path)`: an HTTP GET of that path; `None`: a TCP connect.
    pub http_path: Option<String>,
    /// The status an HTTP check expects.
    pub expect_status: u16,
    /// How often each endpoint is checked.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive passes that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take it out.
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// Compile a validated `health_check:`.
    pub fn new(c: &model::HealthCheckConfig) -> Self {
        HealthCheck {
            http_path: match c.kind {
                model::HealthCheckKind::Http => Some(c.path.clone()),
                model::HealthCheckKind::Tcp => None,
            },
            expect_status: c.expect_status,
            interval: c.interval.get(),
            timeout: c.timeout.get(),
            healthy_threshold: c.healthy_threshold,
            unhealthy_threshold: c.unhealthy_threshold,
        }
    }
}

/// What a `consistent_hash` group hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The caller's tenant (the client IP for anonymous callers).
    Tenant,
    /// The client IP.
    ClientIp,
    /// A request header's value.
    Header(http::HeaderName),
}

impl HashOn {
    /// Parse a validated `hash_on` value.
    pub fn parse(s: &str) -> HashOn {
        match s {
            "client_ip" => HashOn::ClientIp,
            s => match s
                .strip_prefix("header:")
                .and_then(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).ok())
            {
                Some(h) => HashOn::Header(h),
                None => HashOn::Tenant,
            },
        }
    }
}

/// Provider adapter: how requests are rewritten for this group.
#[derive(Debug, Default)]
pub struct Adapter {
    /// `Host` sent instead of the client's.
    pub host: Option<http::HeaderValue>,
    /// Removed from the start of the path.
    pub strip_prefix: Option<String>,
    /// Put in front of the path.
    pub add_prefix: Option<String>,
    /// Request headers set.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Adapter {
    /// From a validated group config.
    pub fn new(c: &model::UpstreamConfig) -> Adapter {
        Adapter {
            host: c
                .host
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
            strip_prefix: c.strip_prefix.clone(),
            add_prefix: c.add_prefix.clone(),
            headers: c
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    /// Rewrite a request for this group: its `Host`, path and headers.
    pub fn apply(&self, req: &mut pingora_http::RequestHeader) -> pingora_core::Result<()> {
        if let Some(h) = &self.host {
            req.insert_header(http::header::HOST, h.clone())?;
        }
        let original = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(p) = self.rewrite_path(original) {
            let uri: http::Uri = p.parse().map_err(|e| {
                pingora_core::Error::because(
                    pingora_core::ErrorType::InternalError,
                    "rewritten path",
                    e,
                )
            })?;
            req.set_uri(uri);
        }
        for (k, v) in &self.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
        Ok(())
    }

    /// The path and query to send, from the client's.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        if self.strip_prefix.is_none() && self.add_prefix.is_none() {
            return None;
        }
        let mut rest = path_and_query;
        if let Some(p) = &self.strip_prefix {
            if let Some(r) = rest.strip_prefix(p.as_str()) {
                // Only at a segment boundary: `/v1` strips `/v1/x` and `/v1`, not `/v10`.
                if r.is_empty() || r.starts_with(['/', '?']) {
                    rest = r;
                }
            }
        }
        let mut out = self.add_prefix.clone().unwrap_or_default();
        if rest.is_empty() || rest.starts_with('?') {
            if out.is_empty() {
                out.push('/');
            }
        } else if out.ends_with('/') && rest.starts_with('/') {
            out.pop();
        }
        out.push_str(rest);
        Some(out)
    }
}

/// pingora-load-balancing's selector for the group's balance.
enum Selector {
    /// Weighted round robin (weights all 1 for `round_robin`).
    RoundRobin(LoadBalancer<RoundRobin>),
    /// Ketama consistent hashing.
    Consistent(LoadBalancer<Consistent>),
}

impl Selector {
    /// A selector for `balance` over `endpoints`. With a registry, the view shares its health
    /// state (and its checks run through it); without, health is private and never checked.
    fn build(
        balance: Balance,
        endpoints: &[Endpoint],
        registry: Option<Arc<HealthRegistry>>,
    ) -> Selector {
        fn build<S>(
            set: BTreeSet<Backend>,
            registry: Option<Arc<HealthRegistry>>,
        ) -> LoadBalancer<S>
        where
            S: pingora_load_balancing::selection::BackendSelection + 'static,
            S::Iter: pingora_load_balancing::selection::BackendIter,
        {
            use futures_util::FutureExt;
            let discovery = Static::new(set);
            let backends = match registry {
                Some(r) => Backends::new_with_health_registry(discovery, r),
                None => Backends::new(discovery),
            };
            let lb = LoadBalancer::from_backends(backends);
            // Static discovery never waits: this completes at once.
            lb.update()
                .now_or_never()
                .expect("static discovery does not block")
                .expect("static discovery does not fail");
            lb
        }
        let set: BTreeSet<Backend> = endpoints
            .iter()
            .map(|e| {
                let weight = match balance {
                    Balance::RoundRobin => 1,
                    _ => e.weight as usize,
                };
                Backend::new_with_weight(&e.addr.to_string(), weight).expect("socket address")
            })
            .collect();
        match balance {
            Balance::ConsistentHash => Selector::Consistent(build(set, registry)),
            _ => Selector::RoundRobin(build(set, registry)),
        }
    }

    /// The first backend for `key` that `accept(backend, healthy)` takes.
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Selector::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Selector::Consistent(lb) => lb.select_with(key, 256, accept),
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
    }
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Selector::RoundRobin(_) => "RoundRobin",
            Selector::Consistent(_) => "Consistent",
        })
    }
}

/// A named group of endpoints.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// Group name from the config.
    pub name: String,
    /// Its endpoints, never empty.
    pub endpoints: Vec<Endpoint>,
    /// How endpoints are picked.
    pub balance: Balance,
    /// What `consistent_hash` hashes.
    pub hash_on: HashOn,
    /// Most attempts per request, the first included.
    pub attempts: u32,
    /// Request rewriting for this group.
    pub adapter: Adapter,
    /// Statuses retried (idempotent requests).
    pub retry_on: Vec<u16>,
    /// Limits retries to a fraction of requests.
    pub budget: budget::RetryBudget,
    /// No new attempt after the request is this old.
    pub deadline: Option<Duration>,
    /// `circuit_breaker.fail_fast`: as a route's last group with every circuit open, refuse
    /// with 503 rather than call a failing endpoint anyway.
    pub fail_fast: bool,
    /// Active health checks, if the group has them.
    active_health: Option<ActiveHealth>,
    selector: Selector,
    by_addr: HashMap<SocketAddr, usize>,
}

/// A group's active health state, which a reload hands on when the check is unchanged:
/// pingora-load-balancing's registry (one check per endpoint, verdicts, consecutive counts)
/// and the endpoint labels its observer reports under.
struct ActiveHealth {
    /// The settings (interval, thresholds, ...).
    config: HealthCheck,
    registry: Arc<HealthRegistry>,
    labels: Arc<ArcSwap<HashMap<SocketAddr, Arc<str>>>>,
    /// Hash of everything the check's behaviour depends on (settings, TLS, Host, headers).
    fingerprint: u64,
}

impl std::fmt::Debug for ActiveHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("ActiveHealth")
    }
}

impl UpstreamGroup {
    /// A group over `endpoints` (must not be empty and must not repeat an address: validation
    /// and compile guarantee it).
    pub fn new(
        name: String,
        endpoints: Vec<Endpoint>,
        balance: Balance,
        hash_on: HashOn,
        attempts: u32,
    ) -> Self {
        assert!(!endpoints.is_empty(), "upstream group without endpoints");
        let by_addr = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.addr, i))
            .collect();
        // Report each breaker as it is: fresh ones closed, inherited ones as they stand.
        let now = crate::clock::mono_nanos();
        for e in &endpoints {
            crate::observe::metrics::UPSTREAM_CIRCUIT_OPEN
                .with_label_values(&[&name, &e.label])
                .set(i64::from(e.breaker.state(now) != breaker::State::Closed));
        }
        let selector = Selector::build(balance, &endpoints, None);
        UpstreamGroup {
            name,
            endpoints,
            balance,
            hash_on,
            attempts: attempts.max(1),
            adapter: Adapter::default(),
            retry_on: Vec::new(),
            budget: budget::RetryBudget::new(1.0, 1000),
            deadline: None,
            fail_fast: false,
            active_health: None,
            selector,
            by_addr,
        }
    }

    /// The same group with its retry statuses and budget.
    pub fn with_retry(
        mut self,
        deadline: Option<Duration>,
        on: Vec<u16>,
        budget: budget::RetryBudget,
    ) -> Self {
        self.deadline = deadline;
        self.retry_on = on;
        self.budget = budget;
        self
    }

    /// The same group, failing fast when all its circuits are open.
    pub fn with_fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// When every endpoint's circuit is open at `now` (monotonic ns): how long until the first
    /// lets a probe through, in ns. `None`: some endpoint would take a request.
    pub fn all_open_for(&self, now: u64) -> Option<u64> {
        let mut soonest = u64::MAX;
        for e in &self.endpoints {
            if e.breaker.would_allow(now) {
                return None;
            }
            soonest = soonest.min(e.breaker.open_for(now));
        }
        Some(soonest)
    }

    /// The same group with a provider adapter.
    pub fn with_adapter(mut self, adapter: Adapter) -> Self {
        self.adapter = adapter;
        self
    }

    /// The same group with active health checks (pingora-load-balancing's HTTP or TCP check;
    /// results feed selection). Run them with [`UpstreamGroup::run_health_checks`].
    ///
    /// The HTTP check sends the adapter's `Host` and headers (a provider's health path usually
    /// wants its key too) and uses the group's TLS settings (SNI, verification). When
    /// `previous` (the group this one replaces on a reload) checked the same way, its health
    /// registry is reused: verdicts and consecutive counts carry over.
    pub fn with_health_check(
        mut self,
        hc: Option<HealthCheck>,
        tls: Option<&Tls>,
        previous: Option<&UpstreamGroup>,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let Some(c) = hc else {
            return self;
        };
        let host = match &self.adapter.host {
            Some(h) => h.to_str().unwrap_or("localhost").to_string(),
            None => self.endpoints[0]
                .label
                .rsplit_once(':')
                .map_or("localhost".to_string(), |(h, _)| h.to_string()),
        };
        // A hash, not the text: the headers may hold a provider key.
        let fingerprint = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{c:?}").hash(&mut h);
            tls.map(|t| (t.sni.clone(), t.verify)).hash(&mut h);
            host.hash(&mut h);
            for (k, v) in &self.adapter.headers {
                (k.as_str(), v.as_bytes()).hash(&mut h);
            }
            h.finish()
        };
        let labels: HashMap<SocketAddr, Arc<str>> = self
            .endpoints
            .iter()
            .map(|e| (e.addr, e.label.clone()))
            .collect();
        let inherited = previous
            .and_then(|p| p.active_health.as_ref())
            .filter(|a| a.fingerprint == fingerprint);
        let active = match inherited {
            Some(a) => {
                a.labels.store(Arc::new(labels));
                ActiveHealth {
                    config: c,
                    registry: a.registry.clone(),
                    labels: a.labels.clone(),
                    fingerprint,
                }
            }
            None => {
                let labels = Arc::new(ArcSwap::from_pointee(labels));
                let registry = Arc::new(HealthRegistry::new());
                registry.set_health_check(self.health_check_for(&c, &host, tls, labels.clone()));
                ActiveHealth {
                    config: c,
                    registry,
                    labels,
                    fingerprint,
                }
            }
        };
        self.selector =
            Selector::build(self.balance, &self.endpoints, Some(active.registry.clone()));
        // New registries start every endpoint healthy (pingora-load-balancing's default) until
        // checked; an inherited one reports what it knows.
        for e in &self.endpoints {
            let backend = Backend::new(&e.addr.to_string()).expect("socket address");
            crate::observe::metrics::UPSTREAM_ENDPOINT_HEALTHY
                .with_label_values(&[&self.name, &e.label])
                .set(i64::from(self.selector.backends().ready(&backend)));
        }
        self.active_health = Some(active);
        self
    }

    /// Whether this group sends a request by its caller's tenant (`consistent_hash` on
    /// `tenant`), so requests routed to it need their caller identified.
    pub fn hashes_by_tenant(&self) -> bool {
        self.balance == Balance::ConsistentHash && self.hash_on == HashOn::Tenant
    }

    /// The group's active health check settings, if it has checks.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.active_health.as_ref().map(|a| &a.config)
    }

    /// pingora-load-balancing's check for `c`, reporting flips under `labels`.
    fn health_check_for(
        &self,
        c: &HealthCheck,
        host: &str,
        tls: Option<&Tls>,
        labels: Arc<ArcSwap<HashMap<SocketAddr, Arc<str>>>>,
    ) -> Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> {
        use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
        let observer = Box::new(HealthObserver {
            group: self.name.clone(),
            labels,
        });
        match &c.http_path {
            None => {
                let mut t = TcpHealthCheck::new();
                t.consecutive_success = c.healthy_threshold as usize;
                t.consecutive_failure = c.unhealthy_threshold as usize;
                t.peer_template.options.connection_timeout = Some(c.timeout);
                t.health_changed_callback = Some(observer);
                t
            }
            Some(path) => {
                let mut h = HttpHealthCheck::new(host, tls.is_some());
                h.consecutive_success = c.healthy_threshold as usize;
                h.consecutive_failure = c.unhealthy_threshold as usize;
                let o = &mut h.peer_template.options;
                o.connection_timeout = Some(c.timeout);
                o.read_timeout = Some(c.timeout);
                if let Some(tls) = tls {
                    o.verify_cert = tls.verify;
                    o.verify_hostname = tls.verify;
                    if let Some(sni) = &tls.sni {
                        h.peer_template.sni = sni.clone();
                    }
                }
                if let Ok(mut req) =
                    pingora_http::RequestHeader::build("GET", path.as_bytes(), None)
                {
                    let _ = req.append_header("Host", host);
                    let _ = req.append_header("User-Agent", "tollgate-health-check");
                    for (k, v) in &self.adapter.headers {
                        let _ = req.insert_header(k.clone(), v.clone());
                    }
                    h.req = req;
                }
                let expect = c.expect_status;
                h.validator = Some(Box::new(move |resp| {
                    if resp.status.as_u16() == expect {
                        Ok(())
                    } else {
                        pingora_core::Error::e_explain(
                            pingora_core::ErrorType::HTTPStatus(resp.status.as_u16()),
                            format!("expected status {expect}"),
                        )
                    }
                }));
                h.health_changed_callback = Some(observer);
                Box::new(h)
            }
        }
    }

    /// One endpoint and no active health check (a sidecar in front of its app): there is
    /// nothing to choose and nothing marks it unhealthy, so selection can skip the selector.
    fn is_single_unchecked(&self) -> bool {
        self.endpoints.len() == 1 && self.active_health.is_none()
    }

    /// The endpoint at `addr`, if the group has one.
    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.by_addr.get(&addr).map(|&i| &self.endpoints[i])
    }

    /// Check every endpoint once (in parallel). Selection skips the ones found unhealthy.
    pub async fn run_health_checks(&self) {
        self.selector.backends().run_health_check(true).await
    }

    /// The index of the endpoint behind a backend the selector returned.
    fn index_of(&self, b: &Backend) -> Option<usize> {
        b.addr.as_inet().and_then(|a| self.by_addr.get(a)).copied()
    }

    /// The first endpoint (by the selector's order for `key`) that `accept(index, healthy)`
    /// takes.
    fn pick(&self, key: &[u8], accept: impl Fn(usize, bool) -> bool) -> Option<usize> {
        let b = self.selector.select_with(key, |b, healthy| {
            self.index_of(b).is_some_and(|i| accept(i, healthy))
        })?;
        self.index_of(&b)
    }

    /// Pick an endpoint that is healthy, not open-circuited and not in `tried`, or `None`
    /// when the group has none left (the route then fails over to its next group).
    pub fn select_usable(&self, key: &[u8], tried: &[usize], now: u64) -> Option<usize> {
        if self.is_single_unchecked() {
            return (!tried.contains(&0) && self.endpoints[0].breaker.allows(now)).then_some(0);
        }
        self.pick(key, |i, healthy| {
            healthy && !tried.contains(&i) && self.endpoints[i].breaker.allows(now)
        })
    }

    /// Whether [`UpstreamGroup::select_usable`] would find an endpoint, without taking a
    /// half-open circuit's probe.
    pub fn has_usable(&self, key: &[u8], tried: &[usize], now: u64) -> bool {
        if self.is_single_unchecked() {
            return !tried.contains(&0) && self.endpoints[0].breaker.would_allow(now);
        }
        self.pick(key, |i, healthy| {
            healthy && !tried.contains(&i) && self.endpoints[i].breaker.would_allow(now)
        })
        .is_some()
    }

    /// Pick an endpoint for a request hashing to `key` (ignored unless `consistent_hash`),
    /// other than those in `tried`, whose circuit lets a request through at `now` (monotonic
    /// nanoseconds). Falls back to a tried or open endpoint rather than none when nothing else
    /// is left (a request is better sent than refused outright). Returns its index.
    pub fn select(&self, key: &[u8], tried: &[usize], now: u64) -> usize {
        if self.endpoints.len() == 1 {
            return 0;
        }
        self.select_usable(key, tried, now)
            .or_else(|| self.pick(key, |i, _| !tried.contains(&i)))
            .or_else(|| self.pick(key, |_, _| true))
            .unwrap_or(0)
    }
}

/// Reports health flips of a group's endpoints: metric and log.
struct HealthObserver {
    group: String,
    /// Replaced on a reload that keeps the check (the endpoints' labels may have changed).
    labels: Arc<ArcSwap<HashMap<SocketAddr, Arc<str>>>>,
}

#[async_trait::async_trait]
impl pingora_load_balancing::health_check::HealthObserve for HealthObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let label = target
            .addr
            .as_inet()
            .and_then(|a| self.labels.load().get(a).cloned())
            .map_or_else(|| target.addr.to_string(), |l| l.to_string());
        crate::observe::metrics::UPSTREAM_ENDPOINT_HEALTHY
            .with_label_values(&[&self.group, &label])
            .set(i64::from(healthy));
        if healthy {
            tracing::info!(
                "upstream {} endpoint {label}: health check passing again",
                self.group
            );
        } else {
            tracing::warn!(
                "upstream {} endpoint {label}: failing its health check, taken out",
                self.group
            );
        }
    }
}

/// `n` loopback endpoints on ports `port..`, 1 s timeouts, each with its own breaker (opening
/// after `failures`, backing off `backoff` up to `max_backoff`): the unit tests' groups.
#[cfg(test)]
pub(crate) fn test_endpoints(
    n: u16,
    port: u16,
    failures: u32,
    backoff: Duration,
    max_backoff: Duration,
) -> Vec<Endpoint> {
    let t = Timeouts {
        connect: Duration::from_secs(1),
        read: Duration::from_secs(1),
        write: Duration::from_secs(1),
        idle: Duration::from_secs(1),
    };
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("127.0.0.1:{}", port + i).parse().unwrap();
            Endpoint::new(addr.to_string(), "127.0.0.1", addr, None, &t)
                .with(1, Arc::new(Breaker::new(failures, backoff, max_backoff)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u16) -> UpstreamGroup {
        let endpoints = test_endpoints(n, 3000, 1, Duration::from_secs(1), Duration::from_secs(1));
        UpstreamGroup::new(
            "app".into(),
            endpoints,
            Balance::RoundRobin,
            HashOn::Tenant,
            3,
        )
    }

    /// The one-endpoint shortcut answers as the selector does: not when tried, not while its
    /// circuit is open, and a half-open circuit lets exactly one probe through (asking whether
    /// one is usable takes none).
    #[test]
    fn one_endpoint_groups_select_like_the_selector() {
        const S: u64 = 1_000_000_000;
        // Endpoint 0's answers, in a group of one (the shortcut) and in a group of two whose
        // other endpoint was already tried (the selector).
        fn script(g: &UpstreamGroup, others: &[usize]) -> Vec<(bool, Option<usize>)> {
            let tried_0: Vec<usize> = others.iter().copied().chain([0]).collect();
            let mut out = vec![
                (
                    g.has_usable(b"", others, 0),
                    g.select_usable(b"", others, 0),
                ),
                (
                    g.has_usable(b"", &tried_0, 0),
                    g.select_usable(b"", &tried_0, 0),
                ),
            ];
            assert!(g.endpoints[0].breaker.failure(0), "one failure opens");
            out.push((
                g.has_usable(b"", others, S / 2),
                g.select_usable(b"", others, S / 2),
            ));
            // Half-open: asking twice takes no probe; the first select is the probe.
            out.push((
                g.has_usable(b"", others, S),
                g.has_usable(b"", others, S).then_some(0),
            ));
            out.push((
                g.has_usable(b"", others, S),
                g.select_usable(b"", others, S),
            ));
            out.push((
                g.has_usable(b"", others, S),
                g.select_usable(b"", others, S),
            ));
            out
        }
        let alone = script(&group(1), &[]);
        assert_eq!(alone, script(&group(2), &[1]));
        assert_eq!(
            alone,
            vec![
                (true, Some(0)),
                (false, None),
                (false, None),
                (true, Some(0)),
                (true, Some(0)),
                (false, None),
            ]
        );
    }
}
