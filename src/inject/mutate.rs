//! The one mutation behind `tollgate inject` and `tollgate inject-webhook`: a pod (or a workload's
//! pod template) in, the same pod with tollgate beside its app out, or the reason it was left
//! alone. Pure: no I/O, the same input always gives the same output, and a pod it injected comes
//! back unchanged (idempotent).
//!
//! What it adds (a Kubernetes native sidecar, k8s >= 1.29): an `initContainers` entry named
//! `tollgate` with `restartPolicy: Always`, so that it starts before the app and stops after it;
//! its config from a ConfigMap mounted as a directory (so edits hot-reload); probes on its admin
//! port; a `preStop` sleep on the app container and a `terminationGracePeriodSeconds` that covers
//! the app's old budget, that sleep and tollgate's drain. Traffic reaches it through the named
//! port `tollgate`, which the Service targets instead of the app's port: no iptables.
//!
//! Pod annotations (`tollgate.io/...`) choose per pod: `inject` (`"false"` opts out), `config`
//! (the ConfigMap), `app-port` (number or port name), `image`, `log-level`, `proxy-port`,
//! `admin-port`, `cpu-request`, `memory-request`, `cpu-limit`, `memory-limit`. The injector stamps
//! `tollgate.io/injected: <version>`.

use super::settings::{is_dns_label_or_subdomain, Settings, VERSION};
use serde_json::{json, Map, Value};

/// The annotation prefix.
pub const PREFIX: &str = "tollgate.io/";
/// The name of the container the injector adds.
pub const CONTAINER: &str = "tollgate";
/// The name of the volume holding the config.
pub const VOLUME: &str = "tollgate-config";
/// Where the config directory is mounted in the sidecar.
pub const CONFIG_DIR: &str = "/etc/tollgate";
/// The uid the image runs as (the Dockerfile's `USER`, the distroless "nonroot" uid).
pub const RUN_AS_USER: i64 = 65532;

/// What happened to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// tollgate was added; the pod was changed in place.
    Injected,
    /// The pod already has the sidecar this injector adds: unchanged.
    AlreadyInjected,
    /// `tollgate.io/inject: "false"`: unchanged.
    OptedOut,
    /// The pod cannot get the sidecar as it is; the message says why and what to change.
    Refused(String),
}

/// Injects tollgate into `pod`: a Pod or a pod template (`{metadata, spec}`), changed in place
/// only when the outcome is [`Outcome::Injected`].
pub fn inject(pod: &mut Value, settings: &Settings) -> Outcome {
    match plan(pod, settings) {
        Ok(Some(plan)) => {
            apply(pod, &plan, settings);
            Outcome::Injected
        }
        Ok(None) if opted_out(pod) => Outcome::OptedOut,
        Ok(None) => Outcome::AlreadyInjected,
        Err(message) => Outcome::Refused(message),
    }
}

/// What the sidecar will look like for this pod, settings and annotations merged.
struct Plan {
    app_port: u16,
    app_container: usize,
    proxy_port: u16,
    admin_port: u16,
    config_map: String,
    image: String,
    log_level: String,
    resources: Value,
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")?
        .get(format!("{PREFIX}{key}"))?
        .as_str()
}

fn opted_out(pod: &Value) -> bool {
    annotation(pod, "inject").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "disabled" | "no" | "off"
        )
    })
}

fn containers<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

fn ports_of(c: &Value) -> impl Iterator<Item = &Value> {
    c.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn port_annotation(pod: &Value, key: &str, default: u16) -> Result<u16, String> {
    match annotation(pod, key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("annotation {PREFIX}{key}: {v:?} is not a port (1-65535)")),
    }
}

/// A Kubernetes quantity such as `100m`, `0.5`, `128Mi`: a decimal number and an optional
/// suffix (the exponent forms, `1e3`, are not accepted). Checked so that a typo is refused here, with the annotation's name,
/// not by the API server after the patch.
fn is_quantity(v: &str) -> bool {
    let v = v.trim();
    let digits = v
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = v.split_at(digits);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

/// `None`: nothing to do (opted out or already injected).
fn plan(pod: &Value, settings: &Settings) -> Result<Option<Plan>, String> {
    if opted_out(pod) {
        return Ok(None);
    }
    if let Some(v) = annotation(pod, "inject") {
        if !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "enabled" | "yes" | "on"
        ) {
            return Err(format!(
                "annotation {PREFIX}inject: {v:?} is neither \"true\" nor \"false\""
            ));
        }
    }
    if pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return Err("the pod has no containers".into());
    }
    let marked = annotation(pod, "injected").is_some();
    let ours = containers(pod, "initContainers").any(|c| name_of(c) == CONTAINER);
    if ours && marked {
        return Ok(None);
    }
    if let Some(list) = ["containers", "initContainers"]
        .into_iter()
        .find(|list| containers(pod, list).any(|c| name_of(c) == CONTAINER))
    {
        return Err(format!(
            "the pod already has a container named `{CONTAINER}` in {list}, not added by the \
             injector: rename it, or opt the pod out with the annotation {PREFIX}inject: \"false\""
        ));
    }
    let has_volume = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|v| name_of(v) == VOLUME));
    if has_volume {
        return Err(format!(
            "the pod already has a volume named `{VOLUME}`: rename it, or opt the pod out with \
             the annotation {PREFIX}inject: \"false\""
        ));
    }

    let proxy_port = port_annotation(pod, "proxy-port", settings.proxy_port)?;
    let admin_port = port_annotation(pod, "admin-port", settings.admin_port)?;
    if proxy_port == admin_port {
        return Err(format!(
            "the proxy port and the admin port are both {proxy_port}: set {PREFIX}proxy-port or {PREFIX}admin-port"
        ));
    }

    // The app's port: a number, a port name, or the first port of the first container.
    let app: Vec<&Value> = containers(pod, "containers").collect();
    let (app_port, app_container) = match annotation(pod, "app-port") {
        Some(v) if v.trim().parse::<u16>().is_ok() => {
            let port: u16 = v.trim().parse().unwrap_or(0);
            if port == 0 {
                return Err(format!("annotation {PREFIX}app-port: 0 is not a port"));
            }
            let owner = app
                .iter()
                .position(|c| ports_of(c).any(|p| p["containerPort"].as_u64() == Some(port.into())))
                .unwrap_or(0);
            (port, owner)
        }
        Some(name) => {
            let found = app.iter().enumerate().find_map(|(i, c)| {
                ports_of(c)
                    .find(|p| p["name"].as_str() == Some(name.trim()))
                    .and_then(|p| p["containerPort"].as_u64())
                    .map(|port| (port as u16, i))
            });
            found.ok_or_else(|| {
                format!("annotation {PREFIX}app-port: no container declares a port named {name:?}")
            })?
        }
        None => {
            let first = ports_of(app[0])
                .next()
                .and_then(|p| p["containerPort"].as_u64());
            let port = first.ok_or_else(|| {
                format!(
                    "no app port: the first container (`{}`) declares no containerPort; set the \
                     annotation {PREFIX}app-port",
                    name_of(app[0])
                )
            })?;
            (port as u16, 0)
        }
    };
    for list in ["containers", "initContainers"] {
        for c in containers(pod, list) {
            for p in ports_of(c) {
                let port = p["containerPort"].as_u64();
                for (what, ours) in [("proxy", proxy_port), ("admin", admin_port)] {
                    if port == Some(ours.into()) {
                        return Err(format!(
                            "port {ours} (tollgate's {what} port) is taken by container `{}`: set the \
                             annotation {PREFIX}{what}-port to a free port",
                            name_of(c)
                        ));
                    }
                }
                if p["name"]
                    .as_str()
                    .is_some_and(|n| n == "tollgate" || n == "tollgate-admin")
                {
                    return Err(format!(
                        "container `{}` already has a port named {:?}, the name tollgate's port takes",
                        name_of(c),
                        p["name"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }

    // An app port given by number that no container declares.
    if app_port == proxy_port || app_port == admin_port {
        return Err(format!(
            "the app's port {app_port} is also tollgate's {} port: set {PREFIX}{}",
            if app_port == proxy_port {
                "proxy"
            } else {
                "admin"
            },
            if app_port == proxy_port {
                "proxy-port"
            } else {
                "admin-port"
            },
        ));
    }
    let config_map = annotation(pod, "config")
        .map(str::trim)
        .unwrap_or(&settings.config_map)
        .to_string();
    if !is_dns_label_or_subdomain(&config_map) {
        return Err(format!(
            "annotation {PREFIX}config: {config_map:?} is not a ConfigMap name"
        ));
    }
    let image = annotation(pod, "image").map_or(settings.image.clone(), |v| v.trim().to_string());
    if image.is_empty() {
        return Err(format!("annotation {PREFIX}image: empty"));
    }
    let log_level =
        annotation(pod, "log-level").map_or(settings.log_level.clone(), |v| v.trim().to_string());
    let mut resources = settings.resources.clone();
    for (key, side, resource) in [
        ("cpu-request", "requests", "cpu"),
        ("memory-request", "requests", "memory"),
        ("cpu-limit", "limits", "cpu"),
        ("memory-limit", "limits", "memory"),
    ] {
        if let Some(v) = annotation(pod, key) {
            if !is_quantity(v) {
                return Err(format!(
                    "annotation {PREFIX}{key}: {v:?} is not a quantity (e.g. 100m, 128Mi)"
                ));
            }
            let side = resources
                .as_object_mut()
                .expect("settings check: resources is a mapping")
                .entry(side)
                .or_insert_with(|| json!({}));
            if let Some(side) = side.as_object_mut() {
                side.insert(resource.into(), Value::String(v.trim().into()));
            }
        }
    }
    Ok(Some(Plan {
        app_port,
        app_container,
        proxy_port,
        admin_port,
        config_map,
        image,
        log_level,
        resources,
    }))
}

/// The sidecar container for a plan.
fn sidecar(plan: &Plan, settings: &Settings) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": "tollgate-admin"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        })
    };
    json!({
        "name": CONTAINER,
        "image": plan.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["run", "-c", format!("{CONFIG_DIR}/tollgate.yaml")],
        "env": [
            {"name": "TOLLGATE_LOG", "value": plan.log_level},
            {"name": "APP_ADDR", "value": format!("127.0.0.1:{}", plan.app_port)},
            {"name": "TOLLGATE_LISTEN", "value": format!("0.0.0.0:{}", plan.proxy_port)},
            {"name": "TOLLGATE_ADMIN_LISTEN", "value": format!("0.0.0.0:{}", plan.admin_port)},
        ],
        "ports": [
            {"name": "tollgate", "containerPort": plan.proxy_port, "protocol": "TCP"},
            {"name": "tollgate-admin", "containerPort": plan.admin_port, "protocol": "TCP"},
        ],
        "startupProbe": probe("/readyz", 1, 30),
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": plan.resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_USER,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": VOLUME, "mountPath": CONFIG_DIR, "readOnly": true}],
    })
}

fn object<'a>(parent: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let map = parent.as_object_mut().expect("checked: an object");
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("just made an object")
}

fn array<'a>(parent: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    let map = parent.as_object_mut().expect("checked: an object");
    let slot = map.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("just made an array")
}

fn apply(pod: &mut Value, plan: &Plan, settings: &Settings) {
    let sidecar = sidecar(plan, settings);
    let metadata = object(pod, "metadata");
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(format!("{PREFIX}injected"), Value::String(VERSION.into()));
    }
    let spec = pod
        .as_object_mut()
        .expect("checked: an object")
        .entry("spec")
        .or_insert_with(|| json!({}));
    // First among the init containers, so that any later init container can already call out
    // through it, as Linkerd and Istio place theirs.
    array(spec, "initContainers").insert(0, sidecar);
    array(spec, "volumes").push(json!({"name": VOLUME, "configMap": {"name": plan.config_map}}));

    let sleep = settings.app_pre_stop_sleep_seconds;
    if sleep > 0 {
        if let Some(app) = spec
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.get_mut(plan.app_container))
        {
            let lifecycle = object(app, "lifecycle");
            lifecycle
                .entry("preStop")
                .or_insert_with(|| json!({"sleep": {"seconds": sleep}}));
        }
    }
    // The app keeps the budget it had (30 s when unset); the endpoints' propagation sleep and
    // tollgate's drain come on top, since they happen before and after it.
    let before = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    let wanted = before + u64::from(sleep) + u64::from(settings.drain_seconds);
    spec.as_object_mut()
        .expect("checked: an object")
        .insert("terminationGracePeriodSeconds".into(), json!(wanted));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value, containers: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"containers": containers},
        })
    }

    fn app(port: u16) -> Value {
        json!([{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": port}]}])
    }

    #[test]
    fn injects_a_native_sidecar_once() {
        let s = Settings::default();
        let mut p = pod(json!({"tollgate.io/config": "web-tollgate"}), app(8000));
        assert_eq!(inject(&mut p, &s), Outcome::Injected);
        let side = &p["spec"]["initContainers"][0];
        assert_eq!(side["name"], "tollgate");
        assert_eq!(side["restartPolicy"], "Always");
        assert_eq!(side["env"][1]["value"], "127.0.0.1:8000");
        assert_eq!(p["spec"]["volumes"][0]["configMap"]["name"], "web-tollgate");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30 + 5 + 15);
        assert_eq!(
            p["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
            5
        );
        assert_eq!(
            p["metadata"]["annotations"]["tollgate.io/injected"],
            VERSION
        );
        let once = p.clone();
        assert_eq!(inject(&mut p, &s), Outcome::AlreadyInjected);
        assert_eq!(p, once);
    }

    #[test]
    fn opt_out_and_refusals_leave_the_pod_alone() {
        let s = Settings::default();
        let mut p = pod(json!({"tollgate.io/inject": "false"}), app(8000));
        let before = p.clone();
        assert_eq!(inject(&mut p, &s), Outcome::OptedOut);
        assert_eq!(p, before);
        for (annotations, containers, says) in [
            (
                json!({}),
                app(8080),
                "port 8080 (tollgate's proxy port) is taken by container `app`",
            ),
            (
                json!({}),
                app(9901),
                "port 9901 (tollgate's admin port) is taken by container `app`",
            ),
            (
                json!({"tollgate.io/app-port": "9901"}),
                app(8000),
                "the app's port 9901 is also tollgate's admin port",
            ),
            (
                json!({}),
                json!([{"name": "tollgate", "image": "x"}]),
                "already has a container named `tollgate`",
            ),
            (
                json!({}),
                json!([{"name": "app", "image": "x"}]),
                "declares no containerPort",
            ),
            (
                json!({"tollgate.io/app-port": "web"}),
                app(8000),
                "no container declares a port named \"web\"",
            ),
            (
                json!({"tollgate.io/proxy-port": "99999"}),
                app(8000),
                "tollgate.io/proxy-port: \"99999\" is not a port",
            ),
            (
                json!({"tollgate.io/memory-limit": "lots"}),
                app(8000),
                "tollgate.io/memory-limit: \"lots\" is not a quantity",
            ),
            (
                json!({"tollgate.io/config": "Bad_Name"}),
                app(8000),
                "is not a ConfigMap name",
            ),
            (
                json!({"tollgate.io/inject": "maybe"}),
                app(8000),
                "is neither",
            ),
        ] {
            let mut p = pod(annotations, containers);
            let before = p.clone();
            match inject(&mut p, &s) {
                Outcome::Refused(m) => assert!(m.contains(says), "{m}"),
                other => panic!("{other:?}, wanted a refusal saying {says}"),
            }
            assert_eq!(p, before);
        }
    }

    #[test]
    fn annotations_override_the_settings() {
        let s = Settings::default();
        let mut p = pod(
            json!({"tollgate.io/app-port": "http", "tollgate.io/proxy-port": "8081",
                   "tollgate.io/cpu-limit": "500m", "tollgate.io/image": "tollgate:dev"}),
            app(8000),
        );
        assert_eq!(inject(&mut p, &s), Outcome::Injected);
        let side = &p["spec"]["initContainers"][0];
        assert_eq!(side["image"], "tollgate:dev");
        assert_eq!(side["ports"][0]["containerPort"], 8081);
        assert_eq!(side["resources"]["limits"]["cpu"], "500m");
        assert_eq!(side["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(side["env"][1]["value"], "127.0.0.1:8000");
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "128Mi", "1G", "2"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "10 Mi", "-1", "1Xi", "m"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
