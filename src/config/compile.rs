//! Validated [`Config`] -> [`RuntimeConfig`]: the indexed, ready-to-serve shape the proxy uses.

use super::error::ConfigError;
use super::model::Config;
use super::validate::{parse_endpoint, parse_listen, route_name};
use crate::route::{HostMatch, RouteTable};
use crate::upstream::{Endpoint, Timeouts, Tls, UpstreamGroup};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name (config `name`, or `route-<index>`): the metrics label.
    pub name: Arc<str>,
    /// The group that serves it.
    pub upstream: Arc<UpstreamGroup>,
}

/// The config as the proxy runs it. Immutable; a reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct RuntimeConfig {
    /// The model it was compiled from.
    pub source: Config,
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Routes in match order.
    pub routes: RouteTable<Arc<Route>>,
    /// Upstream groups by name.
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
}

/// Compile a validated config. Fails only on what validation cannot know (DNS resolution).
pub fn compile(config: Config) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut upstreams = HashMap::new();
    for (name, group) in &config.upstreams {
        let t = &group.timeouts;
        let timeouts = Timeouts {
            connect: t.connect.get(),
            read: t.read.get(),
            write: t.write.get(),
            idle: t.idle.get(),
        };
        let tls = group.tls.as_ref().map(|t| Tls {
            sni: t.sni.clone(),
            verify: t.verify,
        });
        let mut endpoints = Vec::new();
        for (i, ep) in group.endpoints.iter().enumerate() {
            let Ok((host, port)) = parse_endpoint(ep) else {
                continue;
            };
            match (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => endpoints.push(Endpoint::new(
                    ep.clone(),
                    &host,
                    addr,
                    tls.as_ref(),
                    &timeouts,
                )),
                Ok(None) => errors.push(ConfigError::at(
                    format!("upstreams.{name}.endpoints[{i}]"),
                    format!("`{host}` resolved to no address"),
                )),
                Err(e) => errors.push(ConfigError::at(
                    format!("upstreams.{name}.endpoints[{i}]"),
                    format!("cannot resolve `{host}`: {e}"),
                )),
            }
        }
        if !endpoints.is_empty() {
            upstreams.insert(
                name.clone(),
                Arc::new(UpstreamGroup::new(name.clone(), endpoints, timeouts)),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let route = Arc::new(Route {
                name: route_name(r.name.as_deref(), i).into(),
                upstream: upstreams[&r.upstream].clone(),
            });
            (
                HostMatch::parse(r.matcher.host.as_deref()),
                r.matcher.path_prefix.clone(),
                route,
            )
        })
        .collect();
    Ok(RuntimeConfig {
        listen: config
            .listen
            .iter()
            .map(|l| parse_listen(l).expect("validated"))
            .collect(),
        admin_listen: parse_listen(&config.admin.listen).expect("validated"),
        routes: RouteTable::new(routes),
        upstreams,
        source: config,
    })
}
