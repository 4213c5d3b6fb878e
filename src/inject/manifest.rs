//! `tollgate inject -f FILE`: the offline door, like `linkerd inject`. Reads Kubernetes manifests
//! (multi-document YAML, or a `List`), injects the pod of every Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job and CronJob with [`super::mutate`], and writes every document back,
//! the others unchanged. A report line per workload says what happened to it.

use super::mutate::{inject, Outcome};
use super::settings::Settings;
use serde::Deserialize as _;
use serde_json::Value;

/// What `tollgate inject` did to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `kind/name` of the workload.
    pub workload: String,
    /// What happened to its pod.
    pub outcome: Outcome,
}

/// The result of injecting a manifest file.
#[derive(Debug)]
pub struct Injected {
    /// The documents, as YAML, `---`-separated.
    pub yaml: String,
    /// One entry per workload with a pod.
    pub reports: Vec<Report>,
}

/// Where the pod is in a workload of this kind (a JSON pointer), or `None` for a kind that has
/// no pod.
fn pod_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn inject_object(object: &mut Value, settings: &Settings, reports: &mut Vec<Report>) {
    let kind = object["kind"].as_str().unwrap_or("").to_string();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, settings, reports);
            }
        }
        return;
    }
    let Some(pointer) = pod_pointer(&kind) else {
        return;
    };
    let workload = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        object["metadata"]["name"].as_str().unwrap_or("?")
    );
    let outcome = match object.pointer_mut(pointer) {
        Some(pod) if pod.is_object() => inject(pod, settings),
        _ => Outcome::Refused(format!("no pod at {pointer} of this {kind}")),
    };
    reports.push(Report { workload, outcome });
}

/// Injects every workload in `text` (YAML, one or more documents).
pub fn inject_manifests(text: &str, settings: &Settings) -> Result<Injected, String> {
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let mut object: Value = serde_json::to_value(&value)
            .map_err(|e| format!("document {}: not a Kubernetes object: {e}", i + 1))?;
        if !object.is_object() {
            return Err(format!(
                "document {}: not a Kubernetes object (a mapping with kind)",
                i + 1
            ));
        }
        inject_object(&mut object, settings, &mut reports);
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&object).expect("a JSON value is YAML"));
    }
    Ok(Injected { yaml: out, reports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_kind_and_lists() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  template:
    metadata: { annotations: { tollgate.io/config: web } }
    spec: { containers: [{ name: app, image: a, ports: [{ containerPort: 8000 }] }] }
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { ports: [{ port: 80, targetPort: 8000 }] }
---
apiVersion: v1
kind: List
items:
  - apiVersion: batch/v1
    kind: CronJob
    metadata: { name: nightly }
    spec:
      schedule: "0 3 * * *"
      jobTemplate:
        spec:
          template:
            spec: { containers: [{ name: job, image: j, ports: [{ containerPort: 7000 }] }] }
  - apiVersion: v1
    kind: Pod
    metadata: { name: opted, annotations: { tollgate.io/inject: "false" } }
    spec: { containers: [{ name: app, image: a, ports: [{ containerPort: 8000 }] }] }
"#;
        let out = inject_manifests(text, &Settings::default()).unwrap();
        let summary: Vec<(String, Outcome)> = out
            .reports
            .iter()
            .map(|r| (r.workload.clone(), r.outcome.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("deployment/web".to_string(), Outcome::Injected),
                ("cronjob/nightly".to_string(), Outcome::Injected),
                ("pod/opted".to_string(), Outcome::OptedOut),
            ]
        );
        assert_eq!(out.yaml.matches("\n---\n").count() + 1, 3);
        // Injecting the output again changes nothing.
        let again = inject_manifests(&out.yaml, &Settings::default()).unwrap();
        assert_eq!(again.yaml, out.yaml);
        assert!(again.reports.iter().all(|r| r.outcome != Outcome::Injected));
        let e = inject_manifests("- a\n- b\n", &Settings::default()).unwrap_err();
        assert!(e.contains("document 1: not a Kubernetes object"), "{e}");
    }
}
